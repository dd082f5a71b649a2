/** The admin REST API under /api: a Hono app built from the route table. */

import { Hono } from "hono";
import { cors } from "hono/cors";
import { cookieOrigins } from "../../dialects/context.ts";
import { type ApiDeps, errorJson } from "./framework.ts";
import { honoPath } from "./openapi.ts";
import { API_ROUTES } from "./routes.ts";

export { ApiCounters, type ApiDeps } from "./framework.ts";
export { API_ROUTES, openApiDocument } from "./routes.ts";

const patterns = API_ROUTES.map((r) => ({
  method: r.method.toUpperCase(),
  pattern: new URLPattern({ pathname: honoPath(r.path) }),
}));

/** Builds the Hono app of the admin API; its routes carry their full `/api/...` paths. */
export function createApi(deps: ApiDeps): Hono {
  const app = new Hono();
  // Pages on other origins may call the API (the browser client's uploads): it takes only an
  // Authorization header, never a cookie, so a page can act only with a token it was given.
  // ALLOWED_ORIGINS narrows it as it does the sockets; PUBLIC_URL alone does not.
  const origins = deps.config.allowedOrigins;
  app.use(
    "/api/*",
    cors({
      origin: origins.length > 0 ? cookieOrigins(deps.config) : "*",
      allowMethods: ["GET", "HEAD", "PUT", "POST", "DELETE"],
      allowHeaders: ["authorization", "content-type"],
      exposeHeaders: ["retry-after", "allow"],
      maxAge: 600,
    }),
  );
  for (const route of API_ROUTES) {
    app.on(route.method.toUpperCase(), honoPath(route.path), (c) => route.run(c, deps));
  }
  // Unknown paths and methods answer in the API's JSON error shape, not Hono's plain text.
  app.all("/api/*", (c) => {
    const { method, url } = c.req.raw;
    const path = new URL(url).pathname;
    const allowed = patterns.filter((p) => p.pattern.test({ pathname: path })).map((p) => p.method);
    const response = allowed.length > 0
      ? errorJson(405, `Method ${method} is not allowed on ${path}; use ${allowed.join(", ")}`)
      : errorJson(404, `No API route ${method} ${path}`);
    if (allowed.length > 0) response.headers.set("allow", allowed.join(", "));
    deps.counters?.count(method, response.status);
    return response;
  });
  return app;
}
