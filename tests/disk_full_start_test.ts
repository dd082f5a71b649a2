/**
 * A server (re)started while DATA_DIR is full, as a real process on a small tmpfs. After a crash
 * (kill -9 leaves KV's -wal and -shm files, so SQLite opens the files with no space to spare) it
 * serves history, says 503 on /healthz, and once space returns registers with the others, says
 * 200 and stores sends again. After a clean stop SQLite cannot even open its files (it creates
 * the -shm file): the start fails with a message naming DATA_DIR, not only "disk I/O error".
 *
 * Mounting a tmpfs needs root (and the right to mount): elsewhere the tests are skipped, and
 * their names say so.
 */

import { assert, assertEquals, eventually } from "./assert.ts";
import { health, TEST_SECRET, TestClient } from "./helpers.ts";
import { mayMount, smallDisk, spawnServer } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { DatabaseSync } from "node:sqlite";

type Frame = Record<string, unknown>;

const skip = !(await mayMount());

/** A test's name, which says so when it is skipped. */
const named = (name: string) => skip ? `${name} (SKIPPED: mounting a tmpfs needs root)` : name;

/** A native socket of a user who may enter every ticket, past its welcome. */
async function nativeSocket(url: string): Promise<TestClient> {
  const token = await signDevToken(TEST_SECRET, { sub: "1", username: "one", rooms: ["ticket:*"] });
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
  assertEquals((await ws.next()).type, "welcome");
  return ws;
}

/**
 * How many keys in the KV file at `path` are due within `ms` (or past due): Deno KV's sweep
 * deletes each once due, a write, and ends the process when the volume refuses it (denokv's
 * table, read as SQLite, since a KV handle of the test's own would sweep too).
 */
function keysDueWithin(path: string, ms: number): number {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const sql = "select count(*) as n from kv where expiration_ms >= 0 and expiration_ms <= ?";
    const due = db.prepare(sql).get(Date.now() + ms);
    return Number(due?.n);
  } finally {
    db.close();
  }
}

Deno.test({
  name: named(
    "disk: a server killed with -9 starts again on a full DATA_DIR: history is served, /healthz says 503 until space returns, then it is known to the other server and sends are stored",
  ),
  ignore: skip,
  async fn() {
    const disk = await smallDisk();
    // The README's limit: Deno's sweep of a key that comes due while the volume is truly full can
    // end the process (the reserve only buys time). So none comes due then: the crashed server's
    // entry lapses in 2 s (the other server is soon alone) and is swept before the volume fills;
    // the others' (renewed every 3.3 s, gone 20 s after) and every other key that expires stand
    // longer than the volume stays full.
    const env = { DATA_DIR: disk.dir, PRESENCE_TTL_SECONDS: "10" };
    const fullForMs = 15_000;
    const servers: ReturnType<typeof spawnServer>[] = [];
    try {
      const first = spawnServer({ ...env, PRESENCE_TTL_SECONDS: "2" });
      servers.push(first);
      const a = await nativeSocket(await first.url());
      a.send({ type: "join", room: "ticket:1", ref: 0 });
      assertEquals((await a.next((f) => f.ref === 0)).type, "joined");
      a.send({ type: "send", room: "ticket:1", body: "kept", ref: 1 });
      assertEquals((await a.next((f) => f.ref === 1)).seq, 1);
      // A crash: the KV and directory files keep their -wal and -shm beside them.
      assertEquals((await first.kill("SIGKILL")).signal, "SIGKILL");
      await a.close();
      // Another server on the same KV, alone once the crashed one's entry lapsed: it watches no
      // head and posts nowhere until a newcomer registers.
      const other = spawnServer(env);
      servers.push(other);
      const otherUrl = await other.url();
      await eventually(
        async () => (await health(otherUrl)).body.peers === 0,
        10_000,
        "the crashed server's entry to lapse",
      );
      const c = await nativeSocket(otherUrl);
      c.send({ type: "join", room: "ticket:1", ref: 0 });
      assertEquals((await c.next((f) => f.ref === 0)).type, "joined");
      await eventually(
        () => keysDueWithin(`${disk.dir}/chat.kv`, fullForMs) === 0,
        10_000,
        "the crashed server's entry to expire and be swept",
      );
      const fullSince = performance.now();
      await disk.fill();
      // The running server deletes its space reserve as the volume fills (see
      // space_reserve.ts); something else takes that room too, and the volume is full.
      await eventually(
        () => /released the [\d.]+ MiB space reserve/.test(other.log()),
        5_000,
        "the running server to release its space reserve",
      );
      await disk.fill();

      const again = spawnServer(env);
      servers.push(again);
      const url = await again.url();
      const full = await health(url);
      assertEquals([full.status, full.body.status], [503, "error"], JSON.stringify(full.body));
      const b = await nativeSocket(url);
      b.send({ type: "history", room: "ticket:1", ref: 2 });
      const history = await b.next((f) => f.ref === 2);
      assertEquals((history.messages as Frame[]).map((m) => m.body), ["kept"]);
      assert(
        /KV file's volume is nearly full/.test(String(full.body.message)),
        JSON.stringify(full.body),
      );
      assert(
        /could not register, as KV takes no write/.test(again.log()),
        `the log does not say why: ${again.log()}`,
      );

      await disk.free();
      assert(
        performance.now() - fullSince < fullForMs,
        "the volume was full longer than the test's keys are sure not to come due",
      );
      // Healthy only once registered with the others: the check tries the registration itself.
      await eventually(
        async () => (await health(url)).status === 200,
        10_000,
        "/healthz to say 200 once space returned",
      );
      assert(/registered at last/.test(again.log()), again.log());
      await eventually(
        async () => (await health(otherUrl)).body.peers === 1,
        10_000,
        "the other server to learn of it",
      );
      b.send({ type: "join", room: "ticket:1", ref: 3 });
      assertEquals((await b.next((f) => f.ref === 3)).type, "joined");
      b.send({ type: "send", room: "ticket:1", body: "after", ref: 4 });
      assertEquals((await b.next((f) => f.ref === 4)).seq, 2);
      // The other server's socket gets it: it follows this server's commits now.
      const got = await c.next((f) => f.type === "message");
      assertEquals([got.seq, got.body], [2, "after"]);
      b.send({ type: "history", room: "ticket:1", ref: 5 });
      const after = await b.next((f) => f.ref === 5);
      assertEquals((after.messages as Frame[]).map((m) => m.body), ["kept", "after"]);
      await b.close();
      await c.close();
      assertEquals((await again.kill("SIGTERM")).code, 0, again.log());
    } finally {
      for (const server of servers) await server.kill("SIGKILL");
      await disk.unmount();
    }
  },
});

Deno.test({
  name: named(
    "disk: a server stopped cleanly cannot start on a full DATA_DIR, and its message says DATA_DIR may be full",
  ),
  ignore: skip,
  async fn() {
    // The directory's SQLite file is opened first; elsewhere, KV's is the one that fails.
    for (const directoryElsewhere of [false, true]) {
      const disk = await smallDisk();
      const elsewhere = await Deno.makeTempDir({ prefix: "disk-full-directory-" });
      const env: Record<string, string> = { DATA_DIR: disk.dir };
      if (directoryElsewhere) env.DATABASE_URL = `${elsewhere}/directory.sqlite3`;
      const servers: ReturnType<typeof spawnServer>[] = [];
      try {
        const first = spawnServer(env);
        servers.push(first);
        await first.url();
        assertEquals((await first.kill("SIGTERM")).code, 0, first.log());
        await disk.fill();
        const again = spawnServer(env);
        servers.push(again);
        const status = await again.status;
        const log = again.log();
        assertEquals(status.code, 1, log);
        const store = directoryElsewhere
          ? `KV_PATH (${disk.dir}/chat.kv) could not be opened`
          : "The directory's SQLite file in DATA_DIR: the directory could not be opened";
        assert(log.includes(`Could not start: ${store}`), log);
        // SQLite's own words, and what they mean here.
        assert(/disk I\/O error|database or disk is full/.test(log), log);
        assert(log.includes(`DATA_DIR (${disk.dir}) may be full or not writable`), log);
        assert(!/\n\s+at /.test(log), `a stack trace: ${log}`);
      } finally {
        for (const server of servers) await server.kill("SIGKILL");
        await disk.unmount();
        await Deno.remove(elsewhere, { recursive: true });
      }
    }
  },
});

Deno.test({
  name: named(
    "disk: a start without a JWT key that fails on a full DATA_DIR after creating dev-jwt-secret does not keep the next one from starting with a working secret",
  ),
  ignore: skip,
  async fn() {
    const disk = await smallDisk();
    const path = `${disk.dir}/dev-jwt-secret`;
    const servers: ReturnType<typeof spawnServer>[] = [];
    try {
      await disk.fill();
      // The file takes an inode, which the full tmpfs still has; its secret takes a page.
      const first = spawnServer({ DATA_DIR: disk.dir, JWT_SECRET: "" });
      servers.push(first);
      assertEquals((await first.status).code, 1, first.log());
      assertEquals(
        await Deno.readTextFile(path),
        "",
        "the first start was to fail after creating the file",
      );

      await disk.free();
      const again = spawnServer({ DATA_DIR: disk.dir, JWT_SECRET: "" });
      servers.push(again);
      const url = await again.url();
      assert(
        again.log().includes(`${path} was empty`),
        `the log does not say the leftover was replaced: ${again.log()}`,
      );
      const secret = (await Deno.readTextFile(path)).trim();
      assert(secret.length >= 43, `not a secret: ${JSON.stringify(secret)}`);
      const minted = await fetch(`${url}/dev/token`, {
        method: "POST",
        body: JSON.stringify({ name: "Ann" }),
      });
      assertEquals(minted.status, 200);
      const { token } = await minted.json();
      const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
      assertEquals((await ws.next()).type, "welcome");
      await ws.close();
      assertEquals((await again.kill("SIGTERM")).code, 0, again.log());
      // The failed start said what to do.
      assert(first.log().includes(`Could not start: Development secret ${path}`), first.log());
      assert(first.log().includes(`DATA_DIR (${disk.dir}) may be full`), first.log());
      assert(first.log().includes("set JWT_SECRET"), first.log());
    } finally {
      for (const server of servers) await server.kill("SIGKILL");
      await disk.unmount();
    }
  },
});
