/**
 * The SQLite directory shared with another process (the application writing to it directly):
 * a write lock held past DATABASE_TIMEOUT_MS is the directory not answering in time, which the
 * API answers 503 with Retry-After, as for a Postgres that does not answer; not 500. A server
 * starting on a new file that another process holds locked waits for it.
 */

import { assert, assertEquals } from "./assert.ts";
import { startTestServer } from "./helpers.ts";
import { holdWriteLock, withDataDir } from "./server_process.ts";

const ADMIN = "admin-token-for-the-lock-test-0123";

Deno.test("directory: an API write that waits past DATABASE_TIMEOUT_MS for another process's SQLite lock is answered 503 with Retry-After, in about that time", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN, DATABASE_TIMEOUT_MS: "300" });
  const put = async () => {
    const started = performance.now();
    const res = await fetch(`${server.url}/api/users/42`, {
      method: "PUT",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({ username: "u42" }),
    });
    return {
      status: res.status,
      retryAfter: res.headers.get("retry-after"),
      body: await res.json(),
      ms: performance.now() - started,
    };
  };
  try {
    const lock = await holdWriteLock(`${server.dataDir}/directory.sqlite3`);
    let locked;
    try {
      locked = await put();
    } finally {
      await lock.release();
    }
    assertEquals([locked.status, locked.retryAfter, locked.body.message], [
      503,
      "5",
      "The directory does not answer; try again shortly",
    ]);
    // The wait is DATABASE_TIMEOUT_MS's, not SQLite's default of 5 s.
    assert(locked.ms < 3000, `answered after ${Math.round(locked.ms)} ms`);
    // Once the lock is let go, the same write goes through.
    assertEquals((await put()).status, 200);
  } finally {
    await server.close();
  }
});

Deno.test("directory: while an API write waits for another process's SQLite lock, the server goes on answering", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN, DATABASE_TIMEOUT_MS: "3000" });
  try {
    const lock = await holdWriteLock(`${server.dataDir}/directory.sqlite3`);
    let settled = false;
    let waiting: Promise<number>;
    try {
      waiting = fetch(`${server.url}/api/users/43`, {
        method: "PUT",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ username: "u43" }),
      }).then(async (res) => {
        await res.body?.cancel();
        settled = true;
        return res.status;
      });
      // The server holds the write; a timer here fires only once the isolate is free again.
      await new Promise((r) => setTimeout(r, 100));
      // Anything that needs no directory (which waits behind the write) is answered meanwhile.
      const doc = await fetch(`${server.url}/api/openapi.json`);
      await doc.body?.cancel();
      assertEquals([doc.status, settled], [200, false]);
    } finally {
      await lock.release();
    }
    // Let go within DATABASE_TIMEOUT_MS: the write goes through after all.
    assertEquals(await waiting, 200);
  } finally {
    await server.close();
  }
});

Deno.test("startup: a server whose new SQLite directory file another process holds the write lock of (a server starting beside it) waits for it and starts, rather than failing with database is locked", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    // A new, empty file: making it WAL reads its header and then needs the write lock, which
    // SQLite refuses at once, busy timeout or not, as two servers starting together meet it.
    const lock = await holdWriteLock(`${dataDir}/directory.sqlite3`);
    let released = false;
    const server = spawn(env);
    try {
      let exited = false;
      server.status.then(() => exited = true);
      // Time enough to reach the directory, which it opens first; within DATABASE_TIMEOUT_MS.
      await Promise.race([server.status, new Promise((r) => setTimeout(r, 3000))]);
      assert(!exited, server.log());
      await lock.release();
      released = true;
      const url = await server.url();
      const health = await fetch(`${url}/healthz`);
      assertEquals([health.status, (await health.json()).status], [200, "ok"]);
    } finally {
      if (!released) await lock.release();
    }
  }, { prefix: "directory-locked-start-", extra: { DATABASE_TIMEOUT_MS: "10000" } });
});
