/** Entry point for `deno serve --parallel`: every isolate runs this module and serves its export. */

import { buildApp } from "./main.ts";
import { loadConfig } from "./src/config.ts";

let app;
try {
  app = await buildApp(loadConfig(Deno.env.toObject()));
} catch (err) {
  console.error((err as Error).message);
  Deno.exit(1);
}
const ready = app;

export default {
  fetch: (req: Request, info: Deno.ServeHandlerInfo) => ready.fetch(req, info),
} satisfies Deno.ServeDefaultExport;
