/**
 * What the log says while a store is down: the outage once, naming what it first refused, then
 * one line once it takes writes again with how much it refused meanwhile; not a stack trace per
 * refused frame or request (a client sending 10 frames a second wrote 50 lines a second, onto
 * the disk that was full), nor per socket whose presence or profile the store refused. What
 * clients are answered does not change. The server runs as a process of its own, its log read as
 * an operator reads it.
 *
 * The lines name the room a refused frame named.
 *
 * The full-disk tests mount a tmpfs, which needs root (and the right to mount): elsewhere they
 * are skipped, and their names say so.
 */

import { assert, assertEquals, delay, eventually } from "./assert.ts";
import { startTestServer, TEST_SECRET, TestClient, type TestServer } from "./helpers.ts";
import { holdWriteLock, mayMount, smallDisk, spawnServer, withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import type { Directory } from "../src/core/directory.ts";
import { SETTLE_MS } from "../src/core/failure_log.ts";

type Frame = Record<string, unknown>;

const ADMIN = "admin-token-for-the-outage-log-test";

const skip = !(await mayMount());

/** A test's name, which says so when it is skipped. */
const named = (name: string) => skip ? `${name} (SKIPPED: mounting a tmpfs needs root)` : name;

/** The lines of `log` that match `pattern`. */
const lines = (log: string, pattern: RegExp) => log.split("\n").filter((l) => pattern.test(l));

/**
 * Fails unless `log` holds no stack trace, whoever logged it, and at most `most` lines in all:
 * an outage is a line or two, not one per frame, request, socket or room it refuses.
 */
function assertNoFlood(log: string, most: number): void {
  const all = log.split("\n").filter((l) => l !== "");
  const stack = all.filter((l) => /^\s+at /.test(l)).length;
  assert(
    stack === 0 && all.length <= most,
    `${stack} stack-trace lines, ${all.length} lines in all (at most ${most} wanted):\n${log}`,
  );
}

/**
 * A test of `count` servers (with `env`) on a small tmpfs it fills and frees, all killed and the
 * tmpfs unmounted at its end; skipped without root.
 */
function onSmallDisk(
  name: string,
  env: Record<string, string>,
  fn: (servers: Spawned[], disk: SmallDisk) => Promise<void>,
  count = 1,
): void {
  Deno.test({
    name: named(name),
    ignore: skip,
    async fn() {
      const disk = await smallDisk();
      const servers = Array.from(
        { length: count },
        // No space reserve (see space_reserve.ts): these tests are of KV and the media volume
        // refusing writes, which a server meets once the reserve's room is gone as well.
        () => spawnServer({ DATA_DIR: disk.dir, SPACE_RESERVE_MB: "0", ...env }),
      );
      try {
        await fn(servers, disk);
      } finally {
        await Promise.all(servers.map((server) => server.kill("SIGKILL")));
        await disk.unmount();
      }
    },
  });
}

type Spawned = ReturnType<typeof spawnServer>;
type SmallDisk = Awaited<ReturnType<typeof smallDisk>>;

/** A native socket of `user` (1 by default), who may enter every ticket, joined to ticket:1. */
async function joined(url: string, user = "1"): Promise<TestClient> {
  const token = await signDevToken(TEST_SECRET, {
    sub: user,
    username: `u${user}`,
    rooms: ["ticket:*"],
  });
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
  assertEquals((await ws.next()).type, "welcome");
  ws.send({ type: "join", room: "ticket:1", ref: "join" });
  assertEquals((await ws.next((f) => f.ref === "join")).type, "joined");
  return ws;
}

/** Sends `frame` with `ref` and answers the reply that carries it. */
async function ask(ws: TestClient, frame: Frame, ref: string): Promise<Frame> {
  ws.send({ ...frame, ref });
  return await ws.next((f) => f.ref === ref);
}

/** `directory` failing every call with `error()` while `down()` says so, as pg's would. */
function failing(down: () => boolean, error: () => Error, only?: Set<string>) {
  return (directory: Directory): Directory =>
    new Proxy(directory, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        if (only && !only.has(String(prop))) return value.bind(target);
        return (...args: unknown[]) => down() ? Promise.reject(error()) : value.apply(target, args);
      },
    });
}

/** What this process logs through console.error and console.warn until `restore`, stacks included. */
function capture() {
  const logged: string[] = [];
  const [warn, error] = [console.warn, console.error];
  console.warn = console.error = (...args: unknown[]) =>
    logged.push(args.map((a) => a instanceof Error ? a.stack : String(a)).join(" "));
  return {
    logged,
    log: () => logged.join("\n"),
    restore() {
      console.warn = warn;
      console.error = error;
    },
  };
}

Deno.test("log: 10 API writes answered 503 while another process holds the SQLite directory's lock are one outage line, and one more with their count once a write goes through", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const server = spawn(env);
    const put = async (id: number) => {
      const res = await fetch(`${await server.url()}/api/users/${id}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ username: `u${id}` }),
      });
      return [res.status, res.headers.get("retry-after"), (await res.json()).message];
    };
    await server.url();
    const before = server.log().length;
    const lock = await holdWriteLock(`${dataDir}/directory.sqlite3`);
    try {
      for (let i = 0; i < 10; i++) {
        // Answered as before.
        assertEquals(await put(i), [503, "5", "The directory does not answer; try again shortly"]);
      }
      // The outage.
      assertNoFlood(server.log().slice(before), 1);
    } finally {
      await lock.release();
    }
    assertEquals((await put(10))[0], 200);
    await eventually(() => /outage over/.test(server.log()), 10_000, "the outage's end");
    const log = server.log().slice(before);
    // The outage and its end.
    assertNoFlood(log, 2);
    assertEquals(lines(log, /^outage/), [
      "outage: the directory does not answer: DirectoryUnavailable: The SQLite directory stayed " +
      "locked by another connection for 100 ms (cause: Error: database is locked). What needs it " +
      "is refused, and counted rather than logged, until it does (first: api: PUT " +
      "/api/users/{id} failed)",
      lines(log, /^outage over/)[0],
    ], log);
    assert(
      /^outage over: the directory answers again after \d+ s; 10 refused meanwhile$/.test(
        lines(log, /^outage over/)[0],
      ),
      log,
    );
    assert(!/\n\s+at /.test(log), `a stack trace: ${log}`);
  }, {
    prefix: "outage-log-",
    extra: { ADMIN_TOKEN: ADMIN, DATABASE_TIMEOUT_MS: "100" },
    stop: "SIGKILL",
  });
});

Deno.test("log: a server stopped during an outage says at its stop that it was still under way and how much it refused, which no later line would tell", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const server = spawn(env);
    await server.url();
    const before = server.log().length;
    const lock = await holdWriteLock(`${dataDir}/directory.sqlite3`);
    try {
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${await server.url()}/api/users/${i}`, {
          method: "PUT",
          headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
          body: JSON.stringify({ username: `u${i}` }),
        });
        assertEquals(res.status, 503);
        await res.body?.cancel();
      }
      assertEquals((await server.kill("SIGTERM")).code, 0);
    } finally {
      await lock.release();
    }
    const log = server.log().slice(before);
    assert(
      lines(log, /^outage/).length === 2 &&
        /^outage: the directory does not answer still at stop: 5 refused since \d{4}-\d\d-\d\dT[\d:.]+Z$/
          .test(lines(log, /^outage/)[1]),
      log,
    );
  }, {
    prefix: "outage-log-",
    extra: { ADMIN_TOKEN: ADMIN, DATABASE_TIMEOUT_MS: "100" },
    stop: "SIGKILL",
  });
});

onSmallDisk(
  "log: sends refused on a full disk are one outage line for KV and one for the media volume, then one each with their count once they take writes again",
  {
    RATE_LIMIT_PER_SECOND: "1000",
    RATE_LIMIT_USER_PER_SECOND: "1000",
  },
  async ([server], disk) => {
    const ws = await joined(await server.url());
    await disk.fill();
    const before = server.log().length;
    const file = { name: "a.txt", data: btoa("hello") };
    for (let i = 0; i < 20; i++) {
      const reply = await ask(ws, { type: "send", room: "ticket:1", body: `m${i}` }, `t${i}`);
      // Answered as before.
      assertEquals([reply.type, reply.code, reply.message], [
        "error",
        "internal",
        "Internal server error",
      ]);
    }
    for (let i = 0; i < 5; i++) {
      const reply = await ask(ws, { type: "send", room: "ticket:1", files: [file] }, `f${i}`);
      assertEquals([reply.type, reply.code, reply.message], [
        "error",
        "internal",
        "The file could not be stored: the server's storage is unavailable; try again later",
      ]);
    }
    // KV's outage and the media volume's.
    assertNoFlood(server.log().slice(before), 2);
    await disk.free();
    assertEquals((await ask(ws, { type: "send", room: "ticket:1", body: "back" }, "b")).seq, 1);
    const stored = { type: "send", room: "ticket:1", files: [file] };
    assertEquals((await ask(ws, stored, "bf")).type, "ack");
    await eventually(
      () => lines(server.log(), /^outage over/).length === 2,
      10_000,
      "both outages to end",
    );
    await ws.close();
    const log = server.log().slice(before);
    // And their ends.
    assertNoFlood(log, 4);
    // Which room the line names is the next test's.
    const outages = lines(log, /^outage/).map((l) =>
      l.replace(/after \d+ s/, "after N s").replace(/room \S+,/, "room R,")
        .replace(/^(outage over: KV .*; )\d+/, "$1N")
    );
    assertEquals(outages, [
      "outage: KV does not accept writes: TypeError: database or disk is full. What needs it " +
      "is refused, and counted rather than logged, until it does (first: Unexpected error " +
      "while handling a client frame (native, room R, user 1))",
      lines(log, /^outage: the media/)[0],
      "outage over: KV accepts writes again after N s; N refused meanwhile",
      "outage over: the media volume accepts files again after N s; 5 refused meanwhile",
    ], log);
    // The 20 sends, and the instance registry's heartbeat if one fell in the outage.
    const kvRefused = Number(/^outage over: KV .*; (\d+) refused/m.exec(log)?.[1]);
    assert(kvRefused === 20 || kvRefused === 21, log);
    assert(
      /^outage: the media volume does not accept files: Error: No space left on device \(os error 28\).* \(first: media: storing a file failed\)$/
        .test(lines(log, /^outage: the media/)[0]),
      log,
    );
  },
);

onSmallDisk(
  "log: a native send or read mark a store's outage refused is logged with the room its frame named, though its error frame names none",
  {},
  async ([server], disk) => {
    const ws = await joined(await server.url());
    const outages = () => lines(server.log(), /^outage: KV/);
    // A send: its reply waits for the commit.
    await disk.fill();
    const send = await ask(ws, { type: "send", room: "ticket:1", body: "lost" }, "s");
    assertEquals([send.type, send.code, send.room], ["error", "internal", undefined]);
    await disk.free();
    assertEquals((await ask(ws, { type: "send", room: "ticket:1", body: "kept" }, "k")).seq, 1);
    await eventually(() => /outage over/.test(server.log()), 10_000, "the outage's end");
    // A read mark: refused as the frame is handled.
    await disk.fill();
    const read = await ask(ws, { type: "read", room: "ticket:1", seq: 1 }, "r");
    assertEquals([read.type, read.code, read.room], ["error", "internal", undefined]);
    await ws.close();
    const refused = outages().map((l) => /\(first: (.*)\)$/.exec(l)?.[1]);
    assertEquals(refused, [
      "Unexpected error while handling a client frame (native, room ticket:1, user 1)",
      "Unexpected error while handling a client frame (native, room ticket:1, user 1)",
    ], server.log());
  },
);

// The presence sweep and the registry's heartbeat every 2 s.
onSmallDisk(
  "log: sockets closed on a full disk, whose presence exits the sweep retries every round, are one outage line, and one more once KV takes writes again",
  { PRESENCE_TTL_SECONDS: "6" },
  async ([server], disk) => {
    const url = await server.url();
    const sockets: TestClient[] = [];
    for (let user = 1; user <= 8; user++) sockets.push(await joined(url, String(user)));
    await disk.fill();
    const before = server.log().length;
    // Eight users close their tabs while the disk is full: each exit fails, and is retried.
    for (const ws of sockets) await ws.close();
    await delay(7_000);
    assertNoFlood(server.log().slice(before), 1);
    await disk.free();
    // Nobody writes: the heartbeat's write ends the outage.
    await eventually(() => /outage over/.test(server.log()), 15_000, "the outage's end");
    const log = server.log().slice(before);
    // The outage, its end, and the registry's entry written again after lapsing meanwhile.
    assertNoFlood(log, 3);
    const outages = lines(log, /^outage/);
    assertEquals(outages.length, 2, log);
    assert(
      outages[0].startsWith(
        "outage: KV does not accept writes: TypeError: database or disk is full. ",
      ),
      log,
    );
    // The 8 exits, their retries and the heartbeats.
    const refused = Number(/; (\d+) refused meanwhile$/.exec(outages[1])?.[1]);
    assert(/^outage over: KV accepts writes again after \d+ s;/.test(outages[1]), log);
    assert(refused >= 8 + 16, log);
  },
);

/** Opens and closes a native socket of `user` on `server`: welcomed as before, with its profile. */
async function openWelcomed(server: TestServer, user: number): Promise<void> {
  const token = await server.token({ sub: String(user), rooms: ["ticket:*"] });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  assertEquals((await ws.next()).type, "welcome");
  await ws.close();
}

/** What pg throws for a Postgres that refuses connections. */
const refused = () =>
  Object.assign(new Error("connect ECONNREFUSED 10.0.0.5:5432"), {
    code: "ECONNREFUSED",
    syscall: "connect",
    address: "10.0.0.5",
    port: 5432,
  });

Deno.test("log: 20 sockets opening while the directory refuses connections are one outage line, not a profile lookup's stack trace each, and one more once it answers", async () => {
  let down = false;
  // A Postgres that refuses connections: every call of the directory fails as pg's would.
  const server = await startTestServer({}, { directory: failing(() => down, refused) });
  const { logged, restore } = capture();
  const open = (user: number) => openWelcomed(server, user);
  try {
    down = true;
    for (let user = 1; user <= 20; user++) await open(user);
    assertNoFlood(logged.join("\n"), 1);
    down = false;
    await open(21);
    // Ended in this isolate's failure log too, which the next tests share.
    await eventually(() => logged.some((l) => /^outage over/.test(l)), 10_000, "the end");
  } finally {
    down = false;
    restore();
    await server.close();
  }
  const log = logged.join("\n");
  assertNoFlood(log, 2);
  assertEquals(lines(log, /^outage/).map((l) => l.replace(/after \d+ s/, "after N s")), [
    "outage: the directory does not answer: Error: connect ECONNREFUSED 10.0.0.5:5432. What " +
    "needs it is refused, and counted rather than logged, until it does (first: directory: " +
    "profile lookup failed (user 1))",
    "outage over: the directory answers again after N s; 20 refused meanwhile",
  ]);
});

Deno.test("log: a native send or history an unexpected error failed is logged with the room its frame named, though its error frame names none", async () => {
  const logged: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => logged.push(args.map(String).join(" "));
  let broken = false;
  const server = await startTestServer({}, {
    access: (inner) => ({
      canAccess: (user, room, options) =>
        broken
          ? Promise.reject(new TypeError("the access check broke"))
          : inner.canAccess(user, room, options),
    }),
  });
  try {
    const ws = await joined(server.url);
    broken = true;
    for (const frame of [{ type: "send", body: "x" }, { type: "history" }]) {
      const reply = await ask(ws, { ...frame, room: "ticket:1" }, frame.type);
      assertEquals([reply.type, reply.code, reply.room], ["error", "internal", undefined]);
    }
    await ws.close();
  } finally {
    console.error = error;
    await server.close();
  }
  assertEquals(lines(logged.join("\n"), /^Unexpected error/), [
    "Unexpected error while handling a client frame (native, room ticket:1, user 1): " +
    "TypeError: the access check broke",
    "Unexpected error while handling a client frame (native, room ticket:1, user 1): " +
    "TypeError: the access check broke",
  ]);
});

Deno.test("log: 20 ticket sockets refused before their upgrade while the directory refuses connections are one outage line, not one each, and one more once it answers", async () => {
  let down = false;
  const server = await startTestServer({}, { directory: failing(() => down, refused) });
  const { logged, restore } = capture();
  const open = async (ticket: number) => {
    const token = await server.token({ sub: String(ticket) });
    const res = await fetch(`${server.url}/ws/ticket/${ticket}/?token=${token}`, {
      headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-version": "13" },
    });
    await res.body?.cancel();
    return res.status;
  };
  try {
    down = true;
    // Answered as before.
    for (let ticket = 1; ticket <= 20; ticket++) assertEquals(await open(ticket), 503);
    assertNoFlood(logged.join("\n"), 1);
    down = false;
    const ws = await TestClient.open(
      `${server.wsUrl}/ws/ticket/21/?token=${await server.token({ sub: "21" })}`,
    );
    await ws.close();
    await eventually(() => logged.some((l) => /^outage over/.test(l)), 10_000, "the end");
  } finally {
    down = false;
    restore();
    await server.close();
  }
  const log = logged.join("\n");
  assertNoFlood(log, 2);
  const outages = lines(log, /^outage/);
  assertEquals(
    outages[0],
    "outage: the directory does not answer: Error: connect ECONNREFUSED 10.0.0.5:5432. What " +
      "needs it is refused, and counted rather than logged, until it does (first: directory: " +
      "profile lookup failed (user 1))",
  );
  // Each socket's profile lookup, and its access check before the upgrade.
  const counted = /^outage over: the directory answers again after \d+ s; (\d+) refused meanwhile$/
    .exec(outages[1] ?? "");
  assert(Number(counted?.[1]) >= 20, log);
});

Deno.test("log: a bug in the checks before 30 ticket sockets' upgrades (not an outage) is logged in full 3 times, naming each path, not once per room path", async () => {
  const broken = () => new TypeError("the access check broke");
  const server = await startTestServer({}, {
    directory: failing(() => true, broken, new Set(["roomAccess"])),
  });
  const { logged, restore } = capture();
  try {
    for (let ticket = 1; ticket <= 30; ticket++) {
      const token = await server.token({ sub: String(ticket) });
      const res = await fetch(`${server.url}/ws/ticket/${ticket}/?token=${token}`, {
        headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-version": "13" },
      });
      await res.body?.cancel();
      assertEquals(res.status, 503);
    }
  } finally {
    restore();
    await server.close();
  }
  const full = lines(logged.join("\n"), /the socket could not be opened/);
  assertEquals(full.length, 3, logged.join("\n"));
  assertEquals(
    full[0],
    'ws: the socket could not be opened (path "/ws/ticket/1/"): TypeError: the access check broke',
  );
});

Deno.test("log: a directory the OS refuses (pg's connect EACCES on its unix socket) is the directory's outage, not the media volume's, and /healthz's media probe does not end it", async () => {
  let down = false;
  const path = "/var/run/postgresql/.s.PGSQL.5432";
  const eacces = () =>
    Object.assign(new Error(`connect EACCES ${path}`), {
      code: "EACCES",
      errno: -13,
      syscall: "connect",
      address: path,
    });
  const server = await startTestServer({}, { directory: failing(() => down, eacces) });
  const { logged, restore } = capture();
  const open = (user: number) => openWelcomed(server, user);
  try {
    down = true;
    await open(1);
    // A load balancer's health checks, past the time an outage's answers take to settle: each
    // writes to the media volume, which answers.
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${server.url}/healthz`);
      await res.body?.cancel();
      assertEquals(res.status, 503);
      await delay(SETTLE_MS / 2 + 100);
    }
    assertEquals(lines(logged.join("\n"), /^outage/), [
      `outage: the directory does not answer: Error: connect EACCES ${path}. What needs it is ` +
      "refused, and counted rather than logged, until it does (first: directory: profile " +
      "lookup failed (user 1))",
    ]);
    down = false;
    await open(2);
    await eventually(() => logged.some((l) => /^outage over/.test(l)), 10_000, "the end");
  } finally {
    down = false;
    restore();
    await server.close();
  }
  assert(
    /^outage over: the directory answers again after \d+ s; [1-9]\d* refused meanwhile$/.test(
      lines(logged.join("\n"), /^outage over/)[0],
    ),
    logged.join("\n"),
  );
});

Deno.test("log: the SQLite directory on a full disk, whose reads pass while writes fail, is not logged as back at a read, only once a write goes through", async () => {
  let full = false;
  const diskFull = () =>
    Object.assign(new Error("database or disk is full"), { code: "ERR_SQLITE_ERROR" });
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, {
    directory: failing(() => full, diskFull, new Set(["upsertUser"])),
  });
  const { logged, restore } = capture();
  const call = async (method: "GET" | "PUT", id: number) => {
    const res = await fetch(`${server.url}/api/users/${id}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: method === "PUT" ? JSON.stringify({ username: `u${id}` }) : undefined,
    });
    await res.body?.cancel();
    return res.status;
  };
  try {
    assertEquals(await call("PUT", 1), 200);
    full = true;
    // Answered as before.
    assertEquals(await call("PUT", 2), 500);
    assertEquals(await call("GET", 1), 200);
    // Past the time an answer takes to settle, and the next tick.
    await delay(SETTLE_MS + 1_200);
    assertEquals(lines(logged.join("\n"), /^outage/), [
      "outage: the directory does not answer: Error: database or disk is full. What needs it " +
      "is refused, and counted rather than logged, until it does (first: api: PUT " +
      "/api/users/{id} failed)",
    ]);
    full = false;
    assertEquals(await call("PUT", 2), 200);
    await eventually(() => logged.some((l) => /^outage over/.test(l)), 10_000, "the end");
  } finally {
    full = false;
    restore();
    await server.close();
  }
  const log = logged.join("\n");
  assertNoFlood(log, 2);
  assert(
    /^outage over: the directory answers again after \d+ s; 1 refused meanwhile$/.test(
      lines(log, /^outage over/)[0],
    ),
    log,
  );
});

onSmallDisk(
  "log: typing on a full disk while another server shares DATA_DIR (each signal a KV write for it) is one outage line, not a stack trace per signal",
  {
    RATE_LIMIT_PER_SECOND: "1000",
    RATE_LIMIT_USER_PER_SECOND: "1000",
  },
  async ([a, b], disk) => {
    const url = await a.url();
    await b.url();
    // Typing goes through KV only once each knows of the other.
    await eventually(
      async () => {
        const res = await fetch(`${url}/healthz`);
        return (await res.json()).peers === 1;
      },
      10_000,
      "the servers to see each other",
    );
    const sockets: TestClient[] = [];
    for (let user = 1; user <= 4; user++) sockets.push(await joined(url, String(user)));
    await disk.fill();
    const before = a.log().length;
    for (let round = 0; round < 2; round++) {
      for (const ws of sockets) {
        ws.send({ type: "typing", room: "ticket:1", is_typing: true });
        ws.send({ type: "typing", room: "ticket:1", is_typing: false });
      }
      await delay(500);
    }
    await delay(500);
    for (const ws of sockets) await ws.close();
    const log = a.log().slice(before);
    assertNoFlood(log, 1);
    assert(
      lines(log, /^outage/)[0]?.startsWith(
        "outage: KV does not accept writes: TypeError: database or disk is full. ",
      ),
      log,
    );
  },
  2,
);

Deno.test("health: after the wall clock steps back an hour, a media volume that stops taking files turns /healthz to 503 within a second or two, as without the step", async () => {
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const clockFile = `${dataDir}/clock-offset`;
    await Deno.writeTextFile(clockFile, "0");
    const mediaDir = `${dataDir}/media`;
    const server = spawn({ ...env, MEDIA_DIR: mediaDir }, { clockFile });
    const health = async () => {
      const res = await fetch(`${await server.url()}/healthz`);
      await res.body?.cancel();
      return res.status;
    };
    assertEquals(await health(), 200);
    // NTP steps the clock an hour back.
    await Deno.writeTextFile(clockFile, String(-3600_000));
    await delay(300);
    // The media volume stops taking files: its directory is a file now.
    await Deno.remove(mediaDir, { recursive: true });
    await Deno.writeTextFile(mediaDir, "not a directory");
    const statuses: number[] = [];
    const until = performance.now() + 5000;
    while (performance.now() < until && statuses.at(-1) !== 503) {
      statuses.push(await health());
      await delay(250);
    }
    assertEquals(statuses.at(-1), 503, `statuses over 5 s: ${statuses}`);
  }, { prefix: "health-clock-", stop: "SIGKILL" });
});
