import { assertEquals, assertRejects } from "../tests/assert.ts";
import { loadConfig } from "./config.ts";

Deno.test("loadConfig() fills the documented defaults", () => {
  const c = loadConfig({});
  assertEquals([c.port, c.host, c.maxFileBytes, c.chatPathProtocol], [
    8000,
    "0.0.0.0",
    10485760,
    "conversations",
  ]);
  assertEquals(c.mediaDir, `${c.dataDir}/media`);
  assertEquals(c.allowedOrigins, []);
});

Deno.test("loadConfig() names every bad value", async () => {
  const err = await assertRejects(() =>
    loadConfig({
      PORT: "eighty",
      MAX_FILE_BYTES: "-1",
      PUBLIC_URL: "not a url",
      CHAT_PATH_PROTOCOL: "x",
    })
  );
  for (const name of ["PORT", "MAX_FILE_BYTES", "PUBLIC_URL", "CHAT_PATH_PROTOCOL"]) {
    assertEquals(err.message.includes(name), true, err.message);
  }
});

Deno.test("loadConfig() splits origins and trims trailing slashes from URLs", () => {
  const c = loadConfig({
    ALLOWED_ORIGINS: "https://a.example/, https://b.example",
    PUBLIC_URL: "https://chat.example/",
  });
  assertEquals(c.allowedOrigins, ["https://a.example", "https://b.example"]);
  assertEquals(c.publicUrl, "https://chat.example");
});

Deno.test("loadConfig() bounds frame memory at 256 MiB by default, takes 0 as off, refuses the rest", async () => {
  assertEquals(loadConfig({}).frameMemoryBudgetBytes, 256 * 1024 * 1024);
  assertEquals(loadConfig({ FRAME_MEMORY_BUDGET_BYTES: "0" }).frameMemoryBudgetBytes, 0);
  const err = await assertRejects(() => loadConfig({ FRAME_MEMORY_BUDGET_BYTES: "1e9" }));
  assertEquals(
    err.message.includes(
      'FRAME_MEMORY_BUDGET_BYTES: expected a whole number (0 turns the bound off), got "1e9"',
    ),
    true,
    err.message,
  );
});
