/**
 * Servers sharing one KV file start side by side: one that opens the file while another process
 * holds it locked (creating it, or writing) waits for it instead of refusing to start.
 */

import { assert, assertEquals, eventually } from "./assert.ts";
import { holdWriteLock, withDataDir } from "./server_process.ts";

Deno.test("startup: a server opening the KV file while another process holds it locked past SQLite's 5 s wait (as one creating it does) starts once it is let go, and says it waited", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const lock = await holdWriteLock(`${dataDir}/chat.kv`, { creating: true });
    let released = false;
    const server = spawn(env);
    try {
      let exited = false;
      server.status.then(() => exited = true);
      // Told once SQLite's own 5 s busy timeout is past, which Deno's open gives up after.
      const waiting = () => /locked by another process/.test(server.log());
      await eventually(() => waiting() || exited, 20_000, "the server to wait or exit");
      assert(waiting() && !exited, server.log());
      await lock.release();
      released = true;
      const url = await server.url();
      const health = await fetch(`${url}/healthz`);
      assertEquals([health.status, (await health.json()).status], [200, "ok"]);
      assert(!/could not be opened/.test(server.log()), server.log());
    } finally {
      if (!released) await lock.release();
    }
  }, { prefix: "kv-locked-start-" });
});

Deno.test("startup: a server whose KV file another process keeps locked gives up after KV_OPEN_WAIT_MS, and says why", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const lock = await holdWriteLock(`${dataDir}/chat.kv`, { creating: true });
    // Past SQLite's own 5 s wait, which Deno's open takes before it tells of the lock.
    const server = spawn(env);
    try {
      const ended = await Promise.race([
        server.status,
        new Promise<"still waiting">((r) => setTimeout(() => r("still waiting"), 20_000)),
      ]);
      assert(ended !== "still waiting", `still waiting after 20 s: ${server.log()}`);
      assertEquals(ended.code, 1, server.log());
      assert(/Could not start: KV_PATH .* could not be opened/.test(server.log()), server.log());
    } finally {
      await lock.release();
    }
  }, { prefix: "kv-locked-start-", extra: { KV_OPEN_WAIT_MS: "2000" }, stop: "SIGKILL" });
});
