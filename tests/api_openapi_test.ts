/**
 * The OpenAPI document: a well-formed OpenAPI 3.1 document, served at /api/openapi.json, and in
 * step with the routes Hono actually registers.
 */

import type { ApiDeps } from "../src/http/api/framework.ts";
import { loadConfig } from "../src/config.ts";
import { API_ROUTES, createApi, openApiDocument } from "../src/http/api/mod.ts";
import { BACKENDS, startApiServer } from "./api_helpers.ts";
import { assert, assertEquals, assertMatch } from "./assert.ts";

type Json = Record<string, unknown>;

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/** Every `$ref` value anywhere below `value`. */
function refs(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) { for (const v of value) refs(v, out); }
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k === "$ref" && typeof v === "string") out.push(v);
      else refs(v, out);
    }
  }
  return out;
}

/** Fails unless `schema` looks like a JSON Schema 2020-12 object OpenAPI 3.1 accepts. */
function assertSchema(schema: unknown, where: string): void {
  assert(schema && typeof schema === "object" && !Array.isArray(schema), `${where}: not an object`);
  const s = schema as Json;
  assert(
    "type" in s || "$ref" in s || "anyOf" in s || "oneOf" in s || "allOf" in s ||
      "enum" in s || "const" in s || Object.keys(s).length === 0 ||
      (Object.keys(s).length === 1 && "description" in s),
    `${where}: neither type, $ref nor a combinator: ${JSON.stringify(s)}`,
  );
  if ("$ref" in s) assertMatch(s.$ref as string, /^#\/components\/schemas\/\w+$/, where);
  if (s.type === "object" && s.properties) {
    for (const [name, p] of Object.entries(s.properties as Json)) {
      assertSchema(p, `${where}.${name}`);
    }
    for (const name of (s.required ?? []) as string[]) {
      assert(name in (s.properties as Json), `${where}: required "${name}" is not a property`);
    }
  }
  if (s.type === "array") assertSchema(s.items, `${where}[]`);
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    if (key in s) (s[key] as unknown[]).forEach((x, i) => assertSchema(x, `${where}.${key}${i}`));
  }
}

Deno.test("openapi: a well-formed OpenAPI 3.1 document", () => {
  const doc = openApiDocument();
  assertMatch(doc.openapi as string, /^3\.1\.\d+$/);
  const info = doc.info as Json;
  assert(typeof info.title === "string" && typeof info.version === "string");
  const components = doc.components as Json;
  const schemas = components.schemas as Json;
  const schemes = components.securitySchemes as Json;
  assertEquals(doc.security, [{ bearerAuth: [] }]);
  assertEquals((schemes.bearerAuth as Json).type, "http");
  assertEquals((schemes.bearerAuth as Json).scheme, "bearer");
  for (const [name, schema] of Object.entries(schemas)) {
    assertMatch(name, /^[A-Za-z0-9._-]+$/);
    assert(!("$schema" in (schema as Json)) && !("$id" in (schema as Json)), name);
    assert(typeof (schema as Json).description === "string", `${name} has no description`);
    assertSchema(schema, `components.schemas.${name}`);
  }
  // Every reference resolves, and no schema points into a $defs the document does not have.
  for (const ref of refs(doc)) {
    assertMatch(ref, /^#\/components\/schemas\//);
    assert(ref.slice("#/components/schemas/".length) in schemas, `unresolved ${ref}`);
  }

  const tags = new Set(((doc.tags ?? []) as Json[]).map((t) => t.name));
  const operationIds = new Set<string>();
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    assertMatch(path, /^\/api\//);
    const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
    for (const [method, op] of Object.entries(item as Json)) {
      const where = `${method.toUpperCase()} ${path}`;
      assert(METHODS.includes(method), where);
      const operation = op as Json;
      assert(typeof operation.operationId === "string", where);
      assert(!operationIds.has(operation.operationId as string), `${where}: operationId repeats`);
      operationIds.add(operation.operationId as string);
      assert(typeof operation.summary === "string", where);
      for (const tag of operation.tags as string[]) assert(tags.has(tag), `${where}: tag ${tag}`);

      const params = (operation.parameters ?? []) as Json[];
      const inPath = params.filter((p) => p.in === "path");
      assertEquals(inPath.map((p) => p.name).sort(), templated, `${where}: path parameters`);
      for (const p of params) {
        assert(["path", "query"].includes(p.in as string), where);
        if (p.in === "path") assertEquals(p.required, true, where);
        assertSchema(p.schema, `${where} parameter ${p.name}`);
      }
      const seen = new Set(params.map((p) => `${p.in}:${p.name}`));
      assertEquals(seen.size, params.length, `${where}: a parameter repeats`);

      if (operation.requestBody) {
        const content = (operation.requestBody as Json).content as Json;
        assert(Object.keys(content).length === 1, where);
        for (const media of Object.values(content)) assertSchema((media as Json).schema, where);
      }
      const responses = operation.responses as Json;
      assert(Object.keys(responses).some((s) => /^2\d\d$/.test(s)), `${where}: no 2xx`);
      for (const [status, response] of Object.entries(responses)) {
        assertMatch(status, /^[1-5]\d\d$/);
        const r = response as Json;
        assert(typeof r.description === "string" && r.description !== "", `${where} ${status}`);
        if (r.content) {
          assertSchema(((r.content as Json)["application/json"] as Json).schema, where);
        } else {
          assert(status === "204", `${where} ${status}: no body documented`);
        }
        if (operation.security === undefined && status !== "204") assert(r.content, where);
      }
      if (operation.security === undefined) {
        assert("401" in responses && "403" in responses, `${where}: auth errors undocumented`);
      }
    }
  }
  assertEquals(JSON.parse(JSON.stringify(doc)), doc);
});

Deno.test("openapi: the document lists exactly the routes Hono registers", () => {
  const app = createApi({ config: loadConfig({}) } as ApiDeps);
  const registered = app.routes
    .filter((r) => r.method !== "ALL")
    .map((r) => `${r.method} ${r.path}`)
    .sort();
  const documented = Object.entries(openApiDocument().paths as Json)
    .flatMap(([path, item]) =>
      Object.keys(item as Json).map((m) =>
        `${m.toUpperCase()} ${path.replace(/\{([^}]+)\}/g, ":$1")}`
      )
    )
    .sort();
  assertEquals(registered, documented);
  assertEquals(API_ROUTES.length, documented.length);
  // CORS and the catch-all for unknown API paths are the only other routes.
  assertEquals(app.routes.filter((r) => r.method === "ALL").map((r) => r.path), [
    "/api/*",
    "/api/*",
  ]);
});

Deno.test("openapi: served at /api/openapi.json without credentials, and every route answers", async () => {
  const server = await startApiServer(BACKENDS[0]);
  try {
    const res = await fetch(`${server.url}/api/openapi.json`);
    assertEquals(res.status, 200);
    assertMatch(res.headers.get("content-type")!, /^application\/json/);
    assertEquals(await res.json(), openApiDocument());
    // Where the chat-rooms document links it; behind a proxy that serves the server under a
    // path, the browser stays under it.
    for (const path of ["/swagger/", "/swagger"]) {
      const moved = await fetch(`${server.url}${path}`, { redirect: "manual" });
      await moved.body?.cancel();
      assertEquals(moved.status, 302);
      const proxied = new URL(moved.headers.get("location")!, `https://example.com/chat${path}`);
      assertEquals(proxied.href, "https://example.com/chat/api/openapi.json");
      assertEquals(await (await fetch(`${server.url}${path}`)).json(), openApiDocument(), path);
    }
    // Each documented route exists on the live server: without credentials it is refused,
    // never unknown.
    for (const [path, item] of Object.entries(openApiDocument().paths as Json)) {
      for (const method of Object.keys(item as Json)) {
        if (path === "/api/openapi.json") continue;
        const concrete = path.replace("{kind}", "chat").replace(/\{[^}]+\}/g, "1");
        const answer = await server.api(method.toUpperCase(), concrete, { token: null });
        assertEquals(answer.status, 401, `${method} ${concrete}`);
      }
    }
  } finally {
    await server.close();
  }
});

/** Whether `value` passes `schema`, for the few JSON Schema keywords request fields use. */
function accepts(schema: Json, value: unknown): boolean {
  if (schema.anyOf) return (schema.anyOf as Json[]).some((s) => accepts(s, value));
  const types = [schema.type ?? []].flat() as string[];
  const kind = value === null
    ? "null"
    : typeof value === "number" && Number.isInteger(value)
    ? "integer"
    : typeof value;
  if (
    types.length > 0 && !types.includes(kind) && !(kind === "integer" && types.includes("number"))
  ) {
    return false;
  }
  if (typeof value === "string" && value.length > ((schema.maxLength as number) ?? Infinity)) {
    return false;
  }
  if (typeof value === "number") {
    if (value < ((schema.minimum as number) ?? -Infinity)) return false;
    if (value > ((schema.maximum as number) ?? Infinity)) return false;
  }
  return true;
}

Deno.test("openapi: MessageInput.client_id takes what the server takes (a number, null)", async () => {
  const server = await startApiServer(BACKENDS[0]);
  try {
    const doc = (await server.api("GET", "/api/openapi.json", { token: null })).body;
    const schemas = (doc.components as Json).schemas as Json;
    const clientId = ((schemas.MessageInput as Json).properties as Json).client_id as Json;
    const cases: [unknown, unknown][] = [
      [42, "42"],
      ["k-1", "k-1"],
      [null, null],
      ["", null],
      [1e300, undefined],
      ["x".repeat(129), undefined],
    ];
    for (const [value, stored] of cases) {
      const res = await server.api("POST", "/api/rooms/room/general/messages", {
        json: { body: "hi", client_id: value },
      });
      const taken = res.status === 201 || res.status === 200;
      assertEquals(taken, stored !== undefined, `${JSON.stringify(value)}: ${res.status}`);
      if (taken) assertEquals(res.body.client_id, stored, JSON.stringify(value));
      assertEquals(
        accepts(clientId, value),
        taken,
        `the document and the server disagree on ${JSON.stringify(value)}: ` +
          JSON.stringify(clientId),
      );
    }
  } finally {
    await server.close();
  }
});

Deno.test("openapi: servers names PUBLIC_URL, its path included, and is left out without it", async () => {
  // README: a PUBLIC_URL with a path, the proxy serving the server under /chat/.
  const behind = await startApiServer(BACKENDS[0], { PUBLIC_URL: "https://example.com/chat/" });
  try {
    const doc = (await behind.api("GET", "/api/openapi.json", { token: null })).body;
    assertEquals(doc.servers, [{ url: "https://example.com/chat" }]);
    // OpenAPI appends each path to the server's URL.
    const [first] = Object.keys(doc.paths as Json);
    assertEquals(`${(doc.servers as Json[])[0].url}${first}`, `https://example.com/chat${first}`);
  } finally {
    await behind.close();
  }
  // At its host's root: OpenAPI's default server, "/" of wherever the document was fetched from.
  const direct = await startApiServer(BACKENDS[0]);
  try {
    const doc = (await direct.api("GET", "/api/openapi.json", { token: null })).body;
    assertEquals(doc.servers, undefined);
  } finally {
    await direct.close();
  }
});

Deno.test("openapi: the 405 a path answers a method it lacks is documented, Allow as it says", async () => {
  const server = await startApiServer(BACKENDS[0]);
  try {
    const doc = (await server.api("GET", "/api/openapi.json", { token: null })).body;
    const components = doc.components as Json;
    const documented = (components.responses as Json | undefined)?.MethodNotAllowed as
      | Json
      | undefined;
    assert(documented, `no 405 in components.responses: ${JSON.stringify(components.responses)}`);
    assert("Allow" in (documented.headers as Json), JSON.stringify(documented));
    assertEquals(
      (((documented.content as Json)["application/json"] as Json).schema as Json).$ref,
      "#/components/schemas/Error",
    );
    assertMatch((doc.info as Json).description as string, /405/);
    let tried = 0;
    for (const [path, item] of Object.entries(doc.paths as Json)) {
      const methods = Object.keys(item as Json);
      const missing = ["get", "put", "post", "delete"].find((m) => !methods.includes(m));
      if (!missing) continue;
      const concrete = path.replace("{kind}", "chat").replace(/\{[^}]+\}/g, "1");
      const answer = await server.api(missing.toUpperCase(), concrete, { token: null });
      assertEquals(answer.status, 405, `${missing} ${concrete}`);
      assertEquals(answer.body.status, 405);
      assertEquals(
        answer.headers.get("allow")!.split(", ").sort(),
        methods.map((m) => m.toUpperCase()).sort(),
        concrete,
      );
      tried++;
    }
    assert(tried > 0);
  } finally {
    await server.close();
  }
});
