/**
 * The README's `/metrics` list names every family a server publishes, so an operator working
 * from it knows each one exists (two were missing once).
 */

import { assertEquals } from "./assert.ts";
import { startTestServer } from "./helpers.ts";

Deno.test("metrics: the README names every family /metrics publishes", async () => {
  const server = await startTestServer();
  try {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const families = [...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]);
    const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
    assertEquals(families.filter((name) => !readme.includes(`\`${name}\``)), []);
  } finally {
    await server.close();
  }
});
