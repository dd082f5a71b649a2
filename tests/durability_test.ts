/** Delivery you can count on: kill -9, SIGTERM, and two instances sharing one KV. */

import { assert, assertEquals, assertMatch, delay, eventually, within } from "./assert.ts";
import {
  adminCall,
  freePort,
  listFiles,
  rawExchange,
  startTestServer,
  TEST_SECRET,
  TestClient,
} from "./helpers.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { io } from "socket.io-client";
import { MemoryBroker } from "../src/broker/memory_broker.ts";
import type { AppOverrides } from "../main.ts";
import { type LogEntry, logHead, LogWriter } from "../src/broker/kv_log.ts";
import type { RoomEvent } from "../src/core/types.ts";

type Frame = Record<string, unknown>;

/** Runs main.ts as a separate process, as production does. */
async function spawnServer(dataDir: string, port: number, env: Record<string, string> = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../main.ts", import.meta.url).pathname],
    env: {
      PORT: String(port),
      HOST: "127.0.0.1",
      DATA_DIR: dataDir,
      JWT_SECRET: TEST_SECRET,
      RATE_LIMIT_PER_SECOND: "100000",
      RATE_LIMIT_USER_PER_SECOND: "100000",
      ...env,
    },
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  child.status.then(() => exited = true);
  const deadline = Date.now() + 30_000;
  while (true) {
    // Gone before it answered: most often the port was taken meanwhile (freePort only finds one
    // free at the moment it looks, and other tests' sockets take ports too).
    if (exited) throw new ServerExited(port);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      await res.body?.cancel();
      if (res.ok && !exited) return child;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("server did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The bodies a stopped server's KV file holds for `room`, in order. */
async function storedBodies(dataDir: string, room: string): Promise<string[]> {
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  try {
    const bodies: string[] = [];
    for await (const e of kv.list<{ body: string }>({ prefix: ["msg", room] })) {
      bodies.push(e.value.body);
    }
    return bodies;
  } finally {
    kv.close();
  }
}

/** A server process that exited before it answered. */
class ServerExited extends Error {
  constructor(port: number) {
    super(`the server on port ${port} exited before it answered`);
  }
}

/** Starts a server on a free port, trying another when the one found was taken meanwhile. */
async function spawnOnFreePort(dataDir: string, env: Record<string, string> = {}) {
  for (let attempt = 1;; attempt++) {
    const port = freePort();
    try {
      return { port, child: await spawnServer(dataDir, port, env) };
    } catch (err) {
      if (!(err instanceof ServerExited) || attempt >= 3) throw err;
    }
  }
}

/** Runs `count` server processes on one fresh data directory, as several instances would. */
async function withProcesses(
  count: number,
  env: Record<string, string>,
  fn: (ports: number[], dataDir: string) => Promise<void>,
) {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-procs-" });
  const servers: Deno.ChildProcess[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const { port, child } = await spawnOnFreePort(dataDir, env);
      ports.push(port);
      servers.push(child);
    }
    await fn(ports, dataDir);
  } finally {
    for (const server of servers) {
      server.kill("SIGKILL");
      await server.status.catch(() => {});
    }
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

async function nativeClient(port: number, sub = "1") {
  const token = await signDevToken(TEST_SECRET, { sub, rooms: ["ticket:*"] });
  const ws = await TestClient.open(`ws://127.0.0.1:${port}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

async function allMessages(ws: TestClient, room: string): Promise<Frame[]> {
  const out: Frame[] = [];
  let after = 0;
  while (true) {
    ws.send({ type: "history", room, after, limit: 200 });
    const page = (await ws.next((f) => f.type === "history")).messages as Frame[];
    if (page.length === 0) return out;
    out.push(...page);
    after = page.at(-1)!.seq as number;
  }
}

Deno.test("durability: kill -9 mid-stream loses no acknowledged message and retries store once", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-kill-" });
  let { port, child: server } = await spawnOnFreePort(dataDir);
  try {
    let ws = await nativeClient(port);
    ws.send({ type: "join", room: "ticket:1" });
    await ws.next((f) => f.type === "joined");
    const total = 400;
    const acked = new Map<string, number>();
    for (let i = 0; i < total; i++) {
      ws.send({ type: "send", room: "ticket:1", body: `m${i}`, client_id: `c${i}` });
    }
    while (acked.size < 60) {
      const ack = await ws.next((f) => f.type === "ack");
      acked.set(ack.client_id as string, ack.seq as number);
    }
    server.kill("SIGKILL");
    await server.status;
    await ws.closed;
    // Acks that were already on the wire count too.
    for (const f of ws.frames as Frame[]) {
      if (f.type === "ack") acked.set(f.client_id as string, f.seq as number);
    }
    assert(acked.size < total, "the kill came too late to test anything");

    server = await spawnServer(dataDir, port);
    ws = await nativeClient(port);
    ws.send({ type: "join", room: "ticket:1" });
    await ws.next((f) => f.type === "joined");
    for (let i = 0; i < total; i++) {
      if (!acked.has(`c${i}`)) {
        ws.send({ type: "send", room: "ticket:1", body: `m${i}`, client_id: `c${i}` });
      }
    }
    const retried = total - acked.size;
    for (let i = 0; i < retried; i++) {
      const ack = await ws.next((f) => f.type === "ack", 15_000);
      acked.set(ack.client_id as string, ack.seq as number);
    }
    const history = await allMessages(ws, "ticket:1");
    assertEquals(history.length, total);
    assertEquals(history.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1));
    assertEquals(new Set(history.map((m) => m.client_id)).size, total);
    for (const m of history) assertEquals(acked.get(m.client_id as string), m.seq);
    await ws.close();
  } finally {
    server.kill("SIGKILL");
    await server.status.catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: SIGTERM closes sockets with 1001, exits cleanly, and clients recover by seq", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-term-" });
  let { port, child: server } = await spawnOnFreePort(dataDir);
  try {
    const writer = await nativeClient(port, "2");
    let reader = await nativeClient(port);
    for (const ws of [writer, reader]) {
      ws.send({ type: "join", room: "ticket:2" });
      await ws.next((f) => f.type === "joined");
    }
    for (let i = 0; i < 20; i++) {
      writer.send({ type: "send", room: "ticket:2", body: `a${i}`, client_id: `a${i}` });
    }
    for (let i = 0; i < 20; i++) await writer.next((f) => f.type === "ack");
    let lastSeen = 0;
    while (lastSeen < 10) lastSeen = (await reader.next((f) => f.type === "message")).seq as number;

    server.kill("SIGTERM");
    assertEquals((await writer.closed).code, 1001);
    assertEquals((await reader.closed).code, 1001);
    assertEquals((await server.status).code, 0);

    server = await spawnServer(dataDir, port);
    reader = await nativeClient(port);
    reader.send({ type: "join", room: "ticket:2", since: lastSeen });
    await reader.next((f) => f.type === "joined");
    const seqs: number[] = [];
    while (seqs.length < 20 - lastSeen) {
      seqs.push((await reader.next((f) => f.type === "message")).seq as number);
    }
    assertEquals(seqs, Array.from({ length: 20 - lastSeen }, (_, i) => lastSeen + i + 1));
    await reader.close();
  } finally {
    server.kill("SIGKILL");
    await server.status.catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: two server processes on one local KV file deliver each other's messages in a quiet room", async () => {
  // Deno wakes a watch on a local file only for its own process's commits; these two share no
  // channel and no process, and nobody on the receiving side sends anything that would read back.
  await withProcesses(2, {}, async (ports) => {
    const [a, b] = await Promise.all(ports.map((port, i) => nativeClient(port, String(i + 1))));
    for (const ws of [a, b]) {
      ws.send({ type: "join", room: "ticket:7" });
      await ws.next((f) => f.type === "joined");
    }
    // Each way: the first server learns of the second only through the registry's own reads.
    for (const [from, to, body] of [[a, b, "from a"], [b, a, "from b"], [a, b, "again"]] as const) {
      from.send({ type: "send", room: "ticket:7", body });
      await from.next((f) => f.type === "ack");
      await to.next((f) => f.type === "message" && f.body === body, 5000);
    }
    await a.close();
    await b.close();
  });
});

/**
 * Typing, a read cursor and presence changes made on `from`'s server reach `to` on another one;
 * `join` opens a third user's socket on `from`'s server and joins it to the room.
 */
async function signalsCross(
  from: TestClient,
  to: TestClient,
  room: string,
  join: () => Promise<TestClient>,
) {
  // Until the servers have found each other (the registry is read every second on a local file),
  // a signal has nobody to go to: keep typing until one arrives.
  const typing = (f: Frame) => f.type === "typing" && f.is_typing === true;
  await eventually(
    async () => {
      from.send({ type: "typing", room });
      return await to.next(typing, 300).then(() => true, () => false);
    },
    10_000,
    "typing from the other server",
  );
  from.send({ type: "typing", room, is_typing: false });
  await to.next((f) => f.type === "typing" && f.is_typing === false, 5000);
  from.send({ type: "send", room, body: "to be read" });
  const { seq } = await to.next((f) => f.type === "message" && f.body === "to be read", 5000);
  from.send({ type: "read", room, seq });
  await to.next((f) => f.type === "read" && f.seq === seq, 5000);
  const third = await join();
  const ofThree = (action: string) => (f: Frame) =>
    f.type === "presence" && f.action === action && (f.user as Frame).id === 3;
  await to.next(ofThree("join"), 5000);
  await third.close();
  await to.next(ofThree("leave"), 5000);
}

Deno.test("durability: typing, read cursors and presence changes reach the sockets of another process on one local KV file", async () => {
  await withProcesses(2, {}, async (ports) => {
    const [a, b] = await Promise.all(ports.map((port, i) => nativeClient(port, String(i + 1))));
    for (const ws of [a, b]) {
      ws.send({ type: "join", room: "ticket:8" });
      await ws.next((f) => f.type === "joined");
    }
    const joinOn = (port: number) => async () => {
      const ws = await nativeClient(port, "3");
      ws.send({ type: "join", room: "ticket:8" });
      await ws.next((f) => f.type === "joined");
      return ws;
    };
    await signalsCross(b, a, "ticket:8", joinOn(ports[1]));
    await signalsCross(a, b, "ticket:8", joinOn(ports[0]));
    await a.close();
    await b.close();
  });
});

Deno.test("durability: a presence change from another process that the store no longer agrees with is not passed on", async () => {
  await withProcesses(2, {}, async (ports, dataDir) => {
    const observer = await nativeClient(ports[1], "1");
    const seven = await nativeClient(ports[1], "7");
    for (const ws of [observer, seven]) {
      ws.send({ type: "join", room: "ticket:9" });
      await ws.next((f) => f.type === "joined");
    }
    const user = (f: Frame) => (f.user as Frame).id;
    assertEquals(user(await observer.next((f) => f.type === "presence")), 7);
    // As another server would write them: user 7's leave there, older than the join here, then
    // a typing signal that shows the log was read past it.
    const kv = await Deno.openKv(`${dataDir}/chat.kv`);
    try {
      const log = new LogWriter<RoomEvent>(kv, "another-host/1/1");
      const profile = { id: 7, username: "user7" };
      await log.append(["signals", "ticket:9"], {
        type: "presence",
        room: "ticket:9",
        user: profile,
        action: "leave",
      });
      await log.append(["signals", "ticket:9"], {
        type: "typing",
        room: "ticket:9",
        user: { id: 8, username: "user8" },
        isTyping: true,
      });
      await observer.next((f) => f.type === "typing", 5000);
      await observer.nothing((f) => f.type === "presence", 300);
    } finally {
      kv.close();
    }
    await seven.close();
    assertEquals(
      user(await observer.next((f) => f.type === "presence" && f.action === "leave")),
      7,
    );
    await observer.close();
  });
});

Deno.test("durability: a burst of signals from another process that the room's first read finds is passed on whole", async () => {
  await withProcesses(1, {}, async (ports, dataDir) => {
    // In the room while its server is alone, which then writes no signals: the room's log is
    // first read once another process has come up.
    const observer = await nativeClient(ports[0], "1");
    observer.send({ type: "join", room: "ticket:11" });
    await observer.next((f) => f.type === "joined");
    const { child } = await spawnOnFreePort(dataDir);
    const kv = await Deno.openKv(`${dataDir}/chat.kv`);
    try {
      // As that server writes them (src/broker/kv_log.ts), in one commit, so that the room's
      // first read finds them all: the room's first signals, 100 users' read marks, all written
      // after the observer's server began following the room.
      const prefix = ["signals", "ticket:11"];
      const first = Date.now() * 1000;
      const op = kv.atomic().check({ key: logHead(prefix), versionstamp: null });
      for (let i = 0; i < 100; i++) {
        const event: RoomEvent = {
          type: "read",
          room: "ticket:11",
          user: { id: 100 + i, username: `user${100 + i}` },
          seq: 1,
        };
        const entry: LogEntry<RoomEvent> = {
          seq: first + i,
          origin: "another-host/1/1",
          at: Date.now(),
          event,
        };
        op.set([...prefix, "e", first + i], entry);
      }
      assert((await op.set(logHead(prefix), first + 99).commit()).ok);
      // Before, the first read took the newest 64 and the rest never came.
      const readers = new Set<unknown>();
      while (readers.size < 100) {
        readers.add(((await observer.next((f) => f.type === "read", 5000)).user as Frame).id);
      }
      await observer.close();
    } finally {
      kv.close();
      child.kill("SIGKILL");
      await child.status;
    }
  });
});

Deno.test("durability: every participant removed at once through one process is closed in another", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const users = Array.from({ length: 120 }, (_, i) => String(100 + i));
    const put = (participants: string[]) =>
      adminCall(`http://127.0.0.1:${ports[0]}`, admin, "PUT", "/api/rooms/ticket/12", {
        participants: participants.map((user_id) => ({ user_id })),
      });
    assertEquals(await put(users), 201);
    const sockets = await Promise.all(users.map(async (sub) =>
      await TestClient.open(
        `ws://127.0.0.1:${ports[1]}/ws/ticket/12/?token=${await signDevToken(TEST_SECRET, {
          sub,
        })}`,
      )
    ));
    assertEquals(await put([]), 200);
    // Each its own event, published at once: before, they raced for one key and most were lost.
    const codes = await within(Promise.all(sockets.map((ws) => ws.closed)), "every close");
    assertEquals(new Set(codes.map((c) => c.code)), new Set([4003]));
  });
});

Deno.test("durability: a participant removed, a room deleted, a claimed room taken over by the directory, an admin demoted or a user deleted, through one process is closed in another", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(`http://127.0.0.1:${ports[0]}`, admin, method, path, json);
    assertEquals(
      await api("PUT", "/api/rooms/ticket/7", {
        participants: [{ user_id: "3" }, { user_id: "4" }],
      }),
      201,
    );
    // Both on the second process; the API is asked on the first.
    const open = async (sub: string) =>
      await TestClient.open(
        `ws://127.0.0.1:${ports[1]}/ws/ticket/7/?token=${await signDevToken(TEST_SECRET, {
          sub,
        })}`,
      );
    const [three, four] = [await open("3"), await open("4")];
    three.send({ body: "both in" });
    await four.next((f) => f.body === "both in");
    assertEquals(await api("DELETE", "/api/rooms/ticket/7/participants/4"), 204);
    // Bounded: without a way across, the socket would stay open for good.
    assertEquals(await within(four.closed, "the revoked socket's close"), {
      code: 4003,
      reason: "Access revoked",
    });
    assertEquals(await api("DELETE", "/api/rooms/ticket/7"), 204);
    assertEquals(await within(three.closed, "the deleted room's close"), {
      code: 4004,
      reason: "Room deleted",
    });
    // A room token claims opened, taken over by the directory without its holder.
    const byClaim = await TestClient.open(
      `ws://127.0.0.1:${ports[1]}/ws/ticket/8/?token=${await signDevToken(TEST_SECRET, {
        sub: "3",
        rooms: ["ticket:8"],
      })}`,
    );
    byClaim.send({ body: "in by claim" });
    await byClaim.next((f) => f.body === "in by claim");
    assertEquals(
      await api("PUT", "/api/rooms/ticket/8", { participants: [{ user_id: "4" }] }),
      201,
    );
    assertEquals(await within(byClaim.closed, "the claim holder's close"), {
      code: 4003,
      reason: "Access revoked",
    });
    // An admin by the directory's say-so alone, demoted there.
    assertEquals(await api("PUT", "/api/users/20", { role: "admin" }), 200);
    const byRole = await TestClient.open(
      `ws://127.0.0.1:${ports[1]}/ws/ticket/8/?token=${await signDevToken(TEST_SECRET, {
        sub: "20",
      })}`,
    );
    byRole.send({ body: "in by role" });
    await byRole.next((f) => f.body === "in by role");
    assertEquals(await api("PUT", "/api/users/20", { role: null }), 200);
    assertEquals(await within(byRole.closed, "the demoted admin's close"), {
      code: 4003,
      reason: "Access revoked",
    });
    // A user deleted, in two rooms on one native socket that sends nothing.
    for (const ticket of ["9", "10"]) {
      const participants = [{ user_id: "6" }];
      assertEquals(await api("PUT", `/api/rooms/ticket/${ticket}`, { participants }), 201);
    }
    const six = await nativeClient(ports[1], "6");
    for (const room of ["ticket:9", "ticket:10"]) {
      six.send({ type: "join", room });
      await six.next((f) => f.type === "joined" && f.room === room);
    }
    assertEquals(await api("DELETE", "/api/users/6"), 204);
    const removed = [];
    for (let i = 0; i < 2; i++) {
      const frame = await within(six.next((f) => f.type === "removed"), "a removed frame");
      removed.push(`${frame.room} ${frame.reason}`);
    }
    assertEquals(removed.sort(), ["ticket:10 access_revoked", "ticket:9 access_revoked"]);
    await six.close();
  });
});

Deno.test("durability: a member of a room deleted through another process, sending before the notice arrives, is told the room was deleted, not that access was revoked", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(`http://127.0.0.1:${ports[0]}`, admin, method, path, json);
    for (let round = 0; round < 3; round++) {
      const ticket = 30 + round;
      assertEquals(
        await api("PUT", `/api/rooms/ticket/${ticket}`, { participants: [{ user_id: "5" }] }),
        201,
      );
      const token = await signDevToken(TEST_SECRET, { sub: "5" });
      const ws = await TestClient.open(
        `ws://127.0.0.1:${ports[1]}/ws/ticket/${ticket}/?token=${token}`,
      );
      ws.send({ body: "hello" });
      await ws.next((f) => f.body === "hello");
      const native = await nativeClient(ports[1], "5");
      native.send({ type: "join", room: `ticket:${ticket}` });
      await native.next((f) => f.type === "joined");
      // Quiet past the 250 ms the room's generation is held: the send reads it afresh.
      await delay(400);
      assertEquals(await api("DELETE", `/api/rooms/ticket/${ticket}`), 204);
      // Unaware, both send again at once.
      ws.send({ body: "still there?" });
      native.send({ type: "send", room: `ticket:${ticket}`, body: "still there?", ref: "s" });
      assertEquals(await within(ws.closed, "the close"), { code: 4004, reason: "Room deleted" });
      const removed = await native.next((f) => f.type === "removed");
      assertEquals(removed.reason, "room_deleted", `round ${round}`);
      await native.close();
    }
  });
});

Deno.test("durability: a participant removed on another process is told access was revoked, also in a room deleted or not found a moment before it was created", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(`http://127.0.0.1:${ports[0]}`, admin, method, path, json);
    for (const before of ["nothing", "a deletion", "a deletion of no room"]) {
      const ticket = { "nothing": 80, "a deletion": 81, "a deletion of no room": 82 }[before]!;
      if (before === "a deletion") {
        assertEquals(await api("PUT", `/api/rooms/ticket/${ticket}`, { participants: [] }), 201);
        assertEquals(await api("DELETE", `/api/rooms/ticket/${ticket}`), 204);
      }
      if (before === "a deletion of no room") {
        assertEquals(await api("DELETE", `/api/rooms/ticket/${ticket}`), 404);
      }
      const participants = [{ user_id: "5" }, { user_id: "6" }];
      assertEquals(await api("PUT", `/api/rooms/ticket/${ticket}`, { participants }), 201);
      const token = await signDevToken(TEST_SECRET, { sub: "6" });
      const ws = await TestClient.open(
        `ws://127.0.0.1:${ports[1]}/ws/ticket/${ticket}/?token=${token}`,
      );
      ws.send({ body: "hello" });
      await ws.next((f) => f.body === "hello");
      assertEquals(await api("DELETE", `/api/rooms/ticket/${ticket}/participants/6`), 204);
      // Past the 25 ms the directory's change token may lag, before the removal's notice comes.
      await delay(60);
      ws.send({ body: "still there?" });
      assertEquals((await within(ws.closed, "the close")).code, 4003, `after ${before}`);
    }
  });
});

Deno.test("durability: a Socket.IO member of a room deleted through another process, sending before the notice arrives, is told the room was deleted", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(`http://127.0.0.1:${ports[0]}`, admin, method, path, json);
    for (let round = 0; round < 3; round++) {
      const ticket = String(60 + round);
      assertEquals(
        await api("PUT", `/api/rooms/ticket/${ticket}`, { participants: [{ user_id: "5" }] }),
        201,
      );
      const token = await signDevToken(TEST_SECRET, { sub: "5" });
      const sio = io(`http://127.0.0.1:${ports[1]}`, {
        forceNew: true,
        reconnection: false,
        transports: ["websocket"],
        auth: { token },
      });
      try {
        const next = <T>(event: string) =>
          within(new Promise<T>((resolve) => sio.once(event, resolve)), event);
        await next("authenticated");
        sio.emit("join_ticket", { ticketId: ticket });
        await next("joined_ticket");
        // Quiet past the 250 ms the room's generation is held: the send reads it afresh.
        await delay(400);
        assertEquals(await api("DELETE", `/api/rooms/ticket/${ticket}`), 204);
        const error = next<{ message: string }>("send_message_error");
        sio.emit("send_message", { ticketId: ticket, message: "still there?" });
        assertEquals((await error).message, "This room was deleted", `round ${round}`);
      } finally {
        sio.disconnect();
      }
    }
  });
});

Deno.test("durability: a room's epoch given out right after its deletion on another process is the new one, so the rejoin with it is taken", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withProcesses(2, { ADMIN_TOKEN: admin }, async (ports) => {
    const token = await signDevToken(TEST_SECRET, { sub: "5", rooms: ["ticket:*"] });
    const open = async (port: number) => {
      const ws = await TestClient.open(`ws://127.0.0.1:${port}/ws?token=${token}`);
      await ws.next((f) => f.type === "welcome");
      return ws;
    };
    const join = async (ws: TestClient, frame: Frame = {}) => {
      ws.send({ type: "join", room: "ticket:77", ref: "j", ...frame });
      return await ws.next((f) => f.ref === "j");
    };
    const a = await open(ports[0]);
    await join(a);
    a.send({ type: "send", room: "ticket:77", body: "old life", ref: "s" });
    await a.next((f) => f.ref === "s");
    // The second process reads the room's epoch (0) for a join just before the deletion.
    const b = await open(ports[1]);
    assertEquals((await join(b)).epoch, 0);
    assertEquals(
      await adminCall(`http://127.0.0.1:${ports[0]}`, admin, "DELETE", "/api/rooms/ticket/77"),
      204,
    );
    // Joined there after the deletion, then back through the first process with what it was told.
    const c = await open(ports[1]);
    const joined = await join(c);
    assertEquals(joined.epoch, 1);
    const again = await open(ports[0]);
    const rejoin = await join(again, { since: joined.head, epoch: joined.epoch });
    assertEquals([rejoin.type, rejoin.epoch], ["joined", 1]);
    // While one that held the room's previous life is told so.
    const old = await open(ports[0]);
    const stale = await join(old, { since: 1, epoch: 0 });
    assertEquals([stale.type, stale.code], ["error", "room_deleted"]);
    for (const ws of [a, b, c, again, old]) await ws.close();
  });
});

/**
 * A test server whose next send can be held at its access check: `hold()` resolves, once a send
 * is waiting there, to the function that lets it go on.
 */
async function serverHoldingASend(env: Record<string, string> = {}) {
  let held: { checking: () => void; gate: Promise<void> } | undefined;
  const server = await startTestServer(env, {
    access: (inner) => ({
      async canAccess(user, room, options) {
        const hold = held;
        if (hold && !options?.fresh) {
          held = undefined;
          hold.checking();
          await hold.gate;
        }
        return await inner.canAccess(user, room, options);
      },
    }),
  });
  const hold = (): { checked: Promise<void>; release: () => void } => {
    let checking!: () => void;
    let release!: () => void;
    const checked = new Promise<void>((r) => checking = r);
    held = { checking, gate: new Promise<void>((r) => release = r) };
    return { checked, release };
  };
  return { server, hold };
}

Deno.test("durability: a shutdown answers the frame being handled before it closes the socket with 1001", async () => {
  // The send's access check is held open, so the frame is being handled when the stop begins.
  const { server, hold } = await serverHoldingASend();
  let closing: Promise<void> | undefined;
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:5"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/5/?token=${token}`);
    ws.send({ body: "before" });
    assertEquals((await ws.next()).body, "before");
    const { checked, release } = hold();
    ws.send({ body: "in flight" });
    await checked;
    closing = server.close();
    await new Promise((r) => setTimeout(r, 100));
    // Meanwhile nothing new is taken, and a load balancer is told to look elsewhere.
    for (const path of ["/healthz", "/socket.io/?EIO=4&transport=polling"]) {
      const res = await fetch(`${server.url}${path}`);
      await res.body?.cancel();
      assertEquals(res.status, 503, path);
    }
    release();
    assertEquals((await ws.next()).body, "in flight");
    assertEquals((await ws.closed).code, 1001);
  } finally {
    await (closing ?? server.close());
  }
});

Deno.test("durability: a shutdown also waits for the frames of a socket its client just closed", async () => {
  const { server, hold } = await serverHoldingASend();
  let closing: Promise<void> | undefined;
  try {
    const open = async (sub: string) =>
      await TestClient.open(
        `${server.wsUrl}/ws/ticket/6/?token=${await server.token({ sub, rooms: ["ticket:6"] })}`,
      );
    const [sender, observer] = [await open("1"), await open("2")];
    const { checked, release } = hold();
    sender.send({ body: "in flight" });
    sender.send({ body: "behind it" });
    await checked;
    sender.socket.close(1000);
    await sender.closed;
    closing = server.close();
    await new Promise((r) => setTimeout(r, 100));
    release();
    assertEquals((await observer.next()).body, "in flight");
    assertEquals((await observer.next()).body, "behind it");
    assertEquals((await observer.closed).code, 1001);
  } finally {
    await (closing ?? server.close());
  }
});

Deno.test("durability: a shutdown waits for a send still writing its files, refuses it and leaves none of them", async () => {
  // The send's first file is written and linked under its name when the stop begins; the rest
  // of the send comes only once its socket has closed. The stores closed under it (and the
  // process exited): a temporary file and a served one no message names were left behind.
  let reached!: () => void;
  const noting = new Promise<void>((r) => reached = r);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const dataDir = await Deno.makeTempDir({ prefix: "chat-files-stop-" });
  const server = await startTestServer({ DATA_DIR: dataDir }, {
    pending: (inner) => ({
      note: async (id, files) => {
        reached();
        await gate;
        return await inner.note(id, files);
      },
      forget: (id) => inner.forget(id),
    }),
  });
  let closing: Promise<void> | undefined;
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:6"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/6/?token=${token}`);
    ws.send({ body: "file", file: btoa("written as the server stops"), filename: "late.txt" });
    await noting;
    assert((await listFiles(`${dataDir}/media`)).length > 0, "the file is not written yet");
    closing = server.close();
    assertEquals((await ws.closed).code, 1001);
    setTimeout(release, 200);
    await closing;
    assertEquals(await listFiles(`${dataDir}/media`), []);
    assertEquals(await storedBodies(dataDir, "ticket:6"), []);
  } finally {
    release();
    await (closing ?? server.close());
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: a send the room's deletion overtakes is refused, not kept for the room's next life", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  const { server, hold } = await serverHoldingASend({ ADMIN_TOKEN: admin });
  try {
    // Token claims open the room, before and after its deletion, so only the deletion refuses.
    const token = await server.token({ sub: "1", rooms: ["ticket:8"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    ws.send({ type: "join", room: "ticket:8", ref: "j" });
    await ws.next((f) => f.type === "joined");
    ws.send({ type: "send", room: "ticket:8", body: "before", ref: "s1" });
    assertEquals((await ws.next((f) => f.ref === "s1")).seq, 1);
    const { checked, release } = hold();
    ws.send({ type: "send", room: "ticket:8", body: "overtaken", ref: "s2" });
    await checked;
    assertEquals(await adminCall(server.url, admin, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals(await ws.next((f) => f.type === "removed"), {
      type: "removed",
      room: "ticket:8",
      reason: "room_deleted",
    });
    release();
    const refused = await ws.next((f) => f.ref === "s2");
    assertEquals([refused.type, refused.code], ["error", "room_deleted"]);
    // The room's next life starts empty, and takes messages again.
    ws.send({ type: "join", room: "ticket:8", since: 0, ref: "j2" });
    assertEquals((await ws.next((f) => f.ref === "j2")).head, 1);
    ws.send({ type: "history", room: "ticket:8", ref: "h" });
    assertEquals((await ws.next((f) => f.ref === "h")).messages, []);
    ws.send({ type: "send", room: "ticket:8", body: "after", ref: "s3" });
    assertEquals((await ws.next((f) => f.ref === "s3")).seq, 2);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("durability: a socket whose checks before the upgrade fail (the directory down) is refused with 503, a malformed handshake with 400", async () => {
  const server = await startTestServer({}, {
    access: (inner) => ({
      canAccess(user, room, options) {
        if (room === "ticket:13") return Promise.reject(new Error("connect ECONNREFUSED"));
        return inner.canAccess(user, room, options);
      },
    }),
  });
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:13"] });
    const head = await rawExchange(
      server.url,
      `GET /ws/ticket/13/?token=${token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n` +
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n\r\n",
    );
    assert(head.startsWith("HTTP/1.1 503"), head);
    assert(/\r\nretry-after: 5\r\n/i.test(head), head);
    // A handshake no client library sends is the client's fault: 400, not 503.
    const bad = await fetch(`${server.url}/ws/ticket/5/?token=${token}`, {
      headers: { upgrade: "websocket", connection: "Upgrade" },
    });
    await bad.body?.cancel();
    assertEquals(bad.status, 400);
  } finally {
    await server.close();
  }
});

/**
 * Two servers on one KV with separate brokers, so that only kv.watch on the rooms' head keys links
 * them, and a native client of each joined to `room`.
 */
async function twoInstancesIn(
  room: string,
  env: Record<string, string> = {},
  bOverrides: AppOverrides = {},
) {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-two-" });
  const shared = {
    DATA_DIR: dataDir,
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
    ...env,
  };
  const a = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/dir-a.sqlite3` }, {
    broker: new MemoryBroker(),
  });
  const b = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/dir-b.sqlite3` }, {
    broker: new MemoryBroker(),
    ...bOverrides,
  });
  const clients: TestClient[] = [];
  const close = async () => {
    for (const ws of clients) await ws.close();
    await a.close();
    await b.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  };
  try {
    for (const [server, sub] of [[a, "1"], [b, "2"]] as const) {
      const ws = await nativeClient(server.port, sub);
      clients.push(ws);
      ws.send({ type: "join", room });
      await ws.next((f) => f.type === "joined");
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { onA: clients[0], onB: clients[1], b, close };
}

Deno.test("durability: two instances on one KV with no shared broadcast channel see each other's messages", async () => {
  const { onA, onB, close } = await twoInstancesIn("ticket:3");
  try {
    for (let i = 0; i < 50; i++) {
      (i % 2 ? onA : onB).send({ type: "send", room: "ticket:3", body: `m${i}` });
    }
    for (const ws of [onA, onB]) {
      const seqs: number[] = [];
      while (seqs.length < 50) {
        seqs.push((await ws.next((f) => f.type === "message")).seq as number);
      }
      assertEquals(seqs, Array.from({ length: 50 }, (_, i) => i + 1));
    }
  } finally {
    await close();
  }
});

Deno.test("durability: an instance that falls behind retention tells its native clients with a resync", async () => {
  // B learns of A's commits only through its head watch, and waits 1.5 s before reading them:
  // by then retention has deleted all but A's last five messages.
  const { onA, onB, close } = await twoInstancesIn("ticket:8", { HISTORY_LIMIT: "5" }, {
    catchUpDelayMs: 1500,
  });
  try {
    for (let i = 0; i < 30; i++) {
      onA.send({ type: "send", room: "ticket:8", body: `m${i}`, ref: i });
    }
    for (let i = 0; i < 30; i++) await onA.next((f) => f.type === "ack");
    // B's client gets the five kept messages, and before the first of them a resync saying
    // where its view starts again: no silent jump.
    let last = 0;
    const resyncs: Frame[] = [];
    while (last < 30) {
      const f = await onB.next((f) => f.type === "message" || f.type === "resync", 10_000);
      if (f.type === "resync") {
        resyncs.push(f);
        continue;
      }
      const seq = f.seq as number;
      assert(
        seq === last + 1 || resyncs.at(-1)?.first_seq === seq,
        `seq ${seq} after ${last} with no resync: ${JSON.stringify(resyncs)}`,
      );
      last = seq;
    }
    // The head watch may have seen a head below 30 (commits are shared), so the last resync
    // names the first kept message and a head of at least that.
    const lastResync = resyncs.at(-1);
    assert(lastResync, "no resync");
    assertEquals([lastResync.reason, lastResync.first_seq], ["history_truncated", 26]);
    assert((lastResync.head as number) >= 26 && (lastResync.head as number) <= 30);
  } finally {
    await close();
  }
});

Deno.test("durability: a client that rejoins with a seq this instance has not delivered yet does not get those messages again", async () => {
  // B learns of A's commits only through its head watch, 1.5 s late.
  const { onA, onB, b, close } = await twoInstancesIn("ticket:12", {}, { catchUpDelayMs: 1500 });
  let moved: TestClient | undefined;
  try {
    for (let i = 1; i <= 3; i++) onA.send({ type: "send", room: "ticket:12", body: `m${i}` });
    for (let i = 1; i <= 3; i++) await onA.next((f) => f.type === "ack");
    // A client that had seq 3 from A comes back on B before B has delivered it.
    moved = await nativeClient(b.port, "3");
    moved.send({ type: "join", room: "ticket:12", since: 3, ref: "j" });
    assertEquals((await moved.next((f) => f.ref === "j")).type, "joined");
    // B's own client still gets all three, once each.
    const seqs: number[] = [];
    while (seqs.length < 3) seqs.push((await onB.next((f) => f.type === "message")).seq as number);
    assertEquals(seqs, [1, 2, 3]);
    onA.send({ type: "send", room: "ticket:12", body: "m4" });
    // Past B's catch-up delay: anything of 1..3 still owed would have come by now.
    const next = await moved.next((f) => f.type === "message", 10_000);
    assertEquals([next.seq, next.body], [4, "m4"]);
    await moved.nothing((f) => f.type === "message", 1800);
  } finally {
    await moved?.close();
    await close();
  }
});

Deno.test("durability: a file linked by a send that a crash cuts short before its name is recorded is found and removed by the media sweep", async () => {
  // The record of the send's files is held where a kill -9 lands under load: the file has its
  // name, and nothing in KV names it yet.
  let reached!: () => void;
  const noting = new Promise<void>((r) => reached = r);
  let fail!: (err: Error) => void;
  const held = new Promise<void>((_, reject) => fail = reject);
  held.catch(() => {});
  const server = await startTestServer({}, {
    pending: (inner) => ({
      note: () => {
        reached();
        return held;
      },
      forget: (id) => inner.forget(id),
    }),
  });
  const mediaDir = `${server.dataDir}/media`;
  const files = async () => {
    const out: string[] = [];
    const walk = async (dir: string) => {
      for await (const e of Deno.readDir(dir)) {
        if (e.isDirectory) await walk(`${dir}/${e.name}`);
        else out.push(e.name);
      }
    };
    await walk(mediaDir);
    return out.sort();
  };
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:6"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/6/?token=${token}`);
    ws.send({ body: "file", file: btoa("crash window"), filename: "cut.txt" });
    await noting;
    // As the restarted server would, once the temporary file is old enough.
    const { LocalMediaStore } = await import("../src/media/local_media_store.ts");
    assertEquals(await new LocalMediaStore(mediaDir).sweepTemporary(-60_000), 1);
    // The file, its temporary name and its folder of its own are gone.
    assertEquals(await files(), []);
    assertEquals([...Deno.readDirSync(`${mediaDir}/files/ticket_6`)], []);
    fail(new Error("the store stopped"));
    assertEquals((await ws.next()).error !== undefined, true);
    await ws.close();
  } finally {
    fail(new Error("the store stopped"));
    await server.close();
  }
});

Deno.test("durability: the media sweep comes again while the server runs, for what a crash left younger than its hour at the start", async () => {
  const server = await startTestServer({}, { mediaSweepMs: 300 });
  try {
    // Left by a crash just before this start: too young for the first sweep.
    const dir = `${server.dataDir}/media/ticket_7`;
    await Deno.mkdir(dir, { recursive: true });
    const temp = `${dir}/.upload-left-by-a-crash`;
    await Deno.writeTextFile(temp, "half");
    await delay(1000);
    assertEquals((await Deno.stat(temp)).isFile, true);
    // An hour later, as far as its age goes.
    const old = new Date(Date.now() - 2 * 60 * 60_000);
    await Deno.utime(temp, old, old);
    await eventually(() => Deno.stat(temp).then(() => false, () => true), 10_000, "the sweep");
  } finally {
    await server.close();
  }
});

Deno.test("durability: a SIGTERM under a stream of sends echoes every message it stored to its sender", async () => {
  // A send that slips in after the drain saw every socket idle was stored with its socket
  // already closed: the sender, told nothing, sends it again. Racy by nature: several rounds.
  for (let round = 0; round < 3; round++) {
    const dataDir = await Deno.makeTempDir({ prefix: "chat-stop-" });
    const { port, child: server } = await spawnOnFreePort(dataDir);
    const clients: TestClient[] = [];
    const timers: ReturnType<typeof setInterval>[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const token = await signDevToken(TEST_SECRET, { sub: String(i + 1), rooms: ["ticket:*"] });
        clients.push(
          await TestClient.open(`ws://127.0.0.1:${port}/ws/ticket/${90 + i}/?token=${token}`),
        );
      }
      clients.forEach((c, i) => {
        let k = 0;
        timers.push(setInterval(() => {
          if (c.socket.readyState === WebSocket.OPEN) c.send({ body: `c${i}-${k++}` });
        }, 5));
      });
      await delay(300);
      server.kill("SIGTERM");
      await Promise.all(clients.map((c) => c.closed));
      timers.forEach(clearInterval);
      assertEquals((await server.status).code, 0);
      for (const [i, c] of clients.entries()) {
        const echoed = new Set(c.frames.map((f) => (f as Frame).body));
        const stored = await storedBodies(dataDir, `ticket:${90 + i}`);
        assert(stored.length > 0, "nothing was stored");
        assertEquals(stored.filter((b) => !echoed.has(b)), [], `round ${round}, client ${i}`);
      }
    } finally {
      timers.forEach(clearInterval);
      try {
        server.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await server.status.catch(() => {});
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  }
});

Deno.test("durability: a SIGTERM on a server behind its commits answers every message it stores and refuses the rest, in every protocol", async () => {
  // Commits 4.5 s apart (the first at once): at the signal each socket has sends queued for a
  // commit that comes only after the drain's wait. They were stored once the sockets had closed,
  // their senders never answered (the ticket socket, Socket.IO and the others have no client id:
  // the user typing it again stored it twice); now they are refused, and the senders told.
  const dataDir = await Deno.makeTempDir({ prefix: "chat-behind-" });
  const { port, child: server } = await spawnOnFreePort(dataDir, {
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "4500",
  });
  const sio = io(`http://127.0.0.1:${port}`, { transports: ["websocket"], reconnection: false });
  let timer: ReturnType<typeof setInterval> | undefined;
  try {
    const token = (sub: string) => signDevToken(TEST_SECRET, { sub, rooms: ["ticket:*"] });
    // Ticket socket: the room's echo is the sender's only answer.
    const ticket = await TestClient.open(
      `ws://127.0.0.1:${port}/ws/ticket/1/?token=${await token("1")}`,
    );
    const native = await nativeClient(port, "2");
    native.send({ type: "join", room: "ticket:2" });
    await native.next((f) => f.type === "joined");
    if (!sio.connected) await new Promise<void>((r) => sio.once("connect", () => r()));
    sio.emit("authenticate", { token: await token("3") });
    await new Promise<void>((r) => sio.once("authenticated", () => r()));
    sio.emit("join_ticket", { ticketId: "3" });
    await new Promise<void>((r) => sio.once("joined_ticket", () => r()));
    const sioAnswered = new Set<string>();
    let sioRefused = 0;
    sio.on("new_message", (d: { data: { message: string } }) => sioAnswered.add(d.data.message));
    sio.on("send_message_error", () => sioRefused++);
    let i = 0;
    timer = setInterval(() => {
      if (ticket.socket.readyState === WebSocket.OPEN) ticket.send({ body: `t${i}` });
      if (native.socket.readyState === WebSocket.OPEN) {
        native.send({ type: "send", room: "ticket:2", body: `n${i}`, client_id: `n${i}`, ref: i });
      }
      if (sio.connected) sio.emit("send_message", { ticketId: "3", message: `s${i}` });
      i++;
    }, 100);
    await delay(600);
    server.kill("SIGTERM");
    const closes = await Promise.all([ticket.closed, native.closed]);
    clearInterval(timer);
    assertEquals((await server.status).code, 0);
    assertEquals(closes.map((c) => c.code), [1001, 1001]);
    await delay(100);
    const frames = (c: TestClient) => c.frames as Frame[];
    const nativeAcked = new Set(
      frames(native).filter((f) => f.type === "ack").map((f) => f.client_id),
    );
    const stored = {
      ticket: await storedBodies(dataDir, "ticket:1"),
      native: await storedBodies(dataDir, "ticket:2"),
      socketio: await storedBodies(dataDir, "ticket:3"),
    };
    const answered = {
      ticket: new Set(frames(ticket).map((f) => f.body)),
      native: nativeAcked,
      socketio: sioAnswered,
    };
    assert(Object.values(stored).flat().length > 0, "nothing was stored");
    for (const [protocol, bodies] of Object.entries(stored)) {
      const has = answered[protocol as keyof typeof answered];
      assertEquals(bodies.filter((b) => !has.has(b)), [], `${protocol}: stored, never answered`);
    }
    // The sends still queued were refused, and their senders told so in each protocol's error.
    const refusal = "The server is shutting down: the message was not stored; send it again";
    assert(frames(ticket).some((f) => f.error === refusal), "no refusal on the ticket socket");
    assert(
      frames(native).some((f) =>
        f.type === "error" && f.code === "internal" && f.ref !== undefined
      ),
      "no refusal on the native socket",
    );
    assert(sioRefused > 0, "no refusal on Socket.IO");
  } finally {
    clearInterval(timer);
    sio.close();
    try {
      server.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await server.status.catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: a SIGTERM on a server behind its commits answers a Socket.IO long-polling client too: every message stored, every send refused", async () => {
  // A polling client gets what it is told only with its next GET: the drain's replies waited for
  // events being handled only, then the listener's shutdown refused that GET and the sessions'
  // close dropped what it would have fetched (the refusals, the last commit's new_message).
  // Commits 4.5 s apart leave the drain only refusals to tell; 1.5 s apart, with nothing sent
  // after the signal, its last step is a commit whose answers are the last packets.
  for (const [interval, quietAtSignal] of [["4500", false], ["1500", true]] as const) {
    const dataDir = await Deno.makeTempDir({ prefix: "chat-polling-stop-" });
    const { port, child: server } = await spawnOnFreePort(dataDir, {
      COMMIT_PAUSE_CPU_PERCENT: "0",
      COMMIT_INTERVAL_MS: interval,
    });
    const clients: ReturnType<typeof io>[] = [];
    let timer: ReturnType<typeof setInterval> | undefined;
    try {
      const answered: Set<string>[] = [];
      const refused: number[] = [];
      const sent: number[] = [];
      for (let c = 0; c < 3; c++) {
        const sio = io(`http://127.0.0.1:${port}`, {
          transports: ["polling"],
          reconnection: false,
        });
        clients.push(sio);
        if (!sio.connected) await new Promise<void>((r) => sio.once("connect", () => r()));
        sio.emit("authenticate", {
          token: await signDevToken(TEST_SECRET, { sub: String(10 + c), rooms: ["ticket:*"] }),
        });
        await new Promise<void>((r) => sio.once("authenticated", () => r()));
        sio.emit("join_ticket", { ticketId: String(30 + c) });
        await new Promise<void>((r) => sio.once("joined_ticket", () => r()));
        answered.push(new Set());
        refused.push(0);
        sent.push(0);
        sio.on(
          "new_message",
          (d: { data: { message: string } }) => answered[c].add(d.data.message),
        );
        sio.on("send_message_error", () => refused[c]++);
      }
      let i = 0;
      timer = setInterval(() => {
        clients.forEach((sio, c) => {
          if (!sio.connected) return;
          sio.emit("send_message", { ticketId: String(30 + c), message: `s${c}-${i}` });
          sent[c]++;
        });
        i++;
      }, 100);
      await delay(600);
      // Each of these was taken before the drain stopped taking events: answered or refused.
      const beforeSignal = [...sent];
      if (quietAtSignal) clearInterval(timer);
      server.kill("SIGTERM");
      assertEquals((await server.status).code, 0);
      clearInterval(timer);
      await delay(300);
      for (let c = 0; c < clients.length; c++) {
        const what = `commits ${interval} ms apart, client ${c}`;
        const stored = await storedBodies(dataDir, `ticket:${30 + c}`);
        assertEquals(stored.filter((b) => !answered[c].has(b)), [], `${what}: never answered`);
        const told = answered[c].size + refused[c];
        assert(
          told >= beforeSignal[c],
          `${what}: ${beforeSignal[c]} sent before the signal, ${answered[c].size} answered, ` +
            `${refused[c]} refused`,
        );
      }
    } finally {
      clearInterval(timer);
      for (const sio of clients) sio.close();
      try {
        server.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await server.status.catch(() => {});
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  }
});

Deno.test("durability: a SIGTERM during a download a slow player reads, or a JSON body still arriving, exits with 0 at once", async () => {
  // Deno's graceful shutdown waits for every exchange under way: the stop took the 5 s of the
  // fallback timer and exited with 1, which systemd and Docker record as a failed stop.
  const admin = "admin-token-0123456789";
  const dataDir = await Deno.makeTempDir({ prefix: "chat-http-stop-" });
  const { port, child: server } = await spawnOnFreePort(dataDir, { ADMIN_TOKEN: admin });
  const url = `http://127.0.0.1:${port}`;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    const form = new FormData();
    form.append("file", new Blob([new Uint8Array(8_000_000)]), "clip.mp4");
    const up = await fetch(`${url}/api/rooms/ticket/5/attachments`, {
      method: "POST",
      headers: { authorization: `Bearer ${admin}` },
      body: form,
    });
    assertEquals(up.status, 201);
    const download = await fetch((await up.json()).attachments[0].url);
    reader = download.body!.getReader();
    // A player reads as it plays: one chunk, then nothing for a while.
    await reader.read();
    await conn.write(new TextEncoder().encode(
      "POST /api/rooms/ticket/5/messages HTTP/1.1\r\nHost: x\r\n" +
        `Authorization: Bearer ${admin}\r\nContent-Type: application/json\r\n` +
        'Content-Length: 40\r\n\r\n{"body":',
    ));
    await delay(200);
    const answer = (async () => {
      const buf = new Uint8Array(4096);
      let text = "";
      try {
        for (let n; (n = await conn.read(buf)) !== null;) {
          text += new TextDecoder().decode(buf.subarray(0, n));
        }
      } catch {
        // Reset by the exit.
      }
      return text;
    })();
    const started = Date.now();
    server.kill("SIGTERM");
    const { code } = await server.status;
    const took = Date.now() - started;
    assertEquals(code, 0);
    assert(took < 3000, `the stop took ${took} ms`);
    // The body cut off is answered a retryable 503, not a 500 (logged with a stack trace).
    const text = await answer;
    assert(text.startsWith("HTTP/1.1 503 Service Unavailable"), text);
    assertMatch(text, /retry-after: 1/i);
  } finally {
    await reader?.cancel().catch(() => {});
    conn.close();
    try {
      server.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await server.status.catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: once a shutdown's drain is over, a frame is dropped, not stored with its socket about to close", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-drained-" });
  const server = await startTestServer({ DATA_DIR: dataDir });
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:8"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${token}`);
    ws.send({ body: "before" });
    assertEquals((await ws.next()).body, "before");
    await server.app.drain();
    ws.send({ body: "too late" });
    await ws.nothing(undefined, 500);
    await server.close();
    assertEquals(await storedBodies(dataDir, "ticket:8"), ["before"]);
  } finally {
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: a REST send still waiting for its commit when the drain ends is refused with 503 and Retry-After, not stored", async () => {
  const admin = "admin-token-0123456789";
  const dataDir = await Deno.makeTempDir({ prefix: "chat-drained-" });
  const server = await startTestServer({
    DATA_DIR: dataDir,
    ADMIN_TOKEN: admin,
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "60000",
  });
  try {
    const post = (body: string) =>
      fetch(`${server.url}/api/rooms/ticket/4/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
        body: JSON.stringify({ body }),
      });
    const first = await post("first");
    await first.body?.cancel();
    assertEquals(first.status, 201);
    // The next commit may start only a minute after the first.
    const second = post("second");
    await delay(100);
    await server.app.drain();
    const res = await second;
    assertEquals(
      [res.status, res.headers.get("retry-after"), (await res.json()).code],
      [503, "1", "internal"],
    );
    await server.close();
    assertEquals(await storedBodies(dataDir, "ticket:4"), ["first"]);
  } finally {
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: a socket whose upgrade was under way when the drain began takes no frames either", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-drained-" });
  // The upgrade's access check for user 2 is held open across the start of the drain.
  let reached!: () => void;
  const checking = new Promise<void>((r) => reached = r);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let held = false;
  const server = await startTestServer({ DATA_DIR: dataDir }, {
    access: (inner) => ({
      async canAccess(user, room, options) {
        if (String(user.id) === "2" && !held) {
          held = true;
          reached();
          await gate;
        }
        return await inner.canAccess(user, room, options);
      },
    }),
  });
  try {
    const token = await server.token({ sub: "2", rooms: ["ticket:9"] });
    const opening = TestClient.open(`${server.wsUrl}/ws/ticket/9/?token=${token}`);
    await checking;
    await server.app.drain();
    release();
    const ws = await opening;
    ws.send({ body: "too late" });
    await ws.nothing(undefined, 500);
    await server.close();
    assertEquals(await storedBodies(dataDir, "ticket:9"), []);
  } finally {
    release();
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("durability: a socket asked for once the shutdown's drain has begun is refused with 503, so a balancer sends it elsewhere", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:1"] });
    const draining = server.app.drain();
    const res = await fetch(`${server.url}/ws/ticket/1/?token=${token}`, {
      headers: {
        upgrade: "websocket",
        connection: "Upgrade",
        "sec-websocket-key": btoa("0123456789abcdef"),
        "sec-websocket-version": "13",
      },
    });
    await res.body?.cancel();
    assertEquals([res.status, res.headers.get("retry-after")], [503, "5"]);
    // Socket.IO's handshake the same way.
    const sio = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
    await sio.body?.cancel();
    assertEquals([sio.status, sio.headers.get("retry-after")], [503, "5"]);
    await draining;
  } finally {
    await server.close();
  }
});
