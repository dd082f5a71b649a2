/**
 * The TypeScript client (client/mod.ts) against a real server, and against a scripted socket for
 * the cases a healthy server never produces (a gap, a resync, a dead connection); the web routes
 * (page, assets, dev sign-in); and the committed browser bundles against their sources.
 */

import { type RunningServer, startServer } from "../main.ts";
import { loadConfig } from "../src/config.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import {
  type ChatAck,
  ChatClient,
  type ChatClientOptions,
  type ChatError,
  type ChatMessage,
  type PresenceEvent,
  type ReadEvent,
  type ReadsEvent,
  type StateEvent,
  type TypingEvent,
  type UploadProgress,
} from "../client/mod.ts";
import { bundle, BUNDLES, ROOT } from "../web/build.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
  delay,
  within,
} from "./assert.ts";
import {
  adminCall,
  eventually,
  freePort,
  longCjkHistory,
  rawExchange,
  startTestServer,
  tcpProxy,
  TEST_SECRET,
  type TestServer,
  throttledLink,
} from "./helpers.ts";

import { withDataDir } from "./server_process.ts";

const FAST = { minDelayMs: 30, maxDelayMs: 200, jitter: 0 };

/** A client whose every event is recorded. */
function recorder(options: ChatClientOptions) {
  const client = new ChatClient({ reconnect: FAST, ...options });
  const messages: ChatMessage[] = [];
  const states: StateEvent[] = [];
  const typing: TypingEvent[] = [];
  const reads: ReadEvent[] = [];
  const presence: PresenceEvent[] = [];
  client.on("message", (m) => messages.push(m));
  client.on("state", (s) => states.push(s));
  client.on("typing", (t) => typing.push(t));
  client.on("read", (r) => reads.push(r));
  client.on("presence", (p) => presence.push(p));
  const bodies = (room?: string) =>
    messages.filter((m) => !room || m.room === room).map((m) => m.body);
  const seqs = (room: string) => messages.filter((m) => m.room === room).map((m) => m.seq);
  return { client, messages, states, typing, reads, presence, bodies, seqs };
}

async function userClient(server: TestServer, sub: string, claims: object = {}) {
  const token = await server.token({
    sub,
    username: sub,
    rooms: ["ticket:*", "chat:*"],
    ...claims,
  });
  return recorder({ url: `${server.wsUrl}/ws`, token });
}

/** The server's ack of a scripted send frame, as seq `seq`. */
const ackOf = (f: Record<string, unknown>, seq: number) => ({
  type: "ack",
  room: "room:x",
  client_id: f.client_id,
  id: `id${seq}`,
  seq,
  created_at: "",
  duplicate: false,
  ref: f.ref,
});

/** Random bytes of any length (getRandomValues fills at most 64 KiB at a time). */
function randomBytes(size: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

function fixedServer(
  dataDir: string,
  port: number,
  env: Record<string, string> = {},
): Promise<RunningServer> {
  const config = loadConfig({
    PORT: String(port),
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    JWT_SECRET: TEST_SECRET,
    ...env,
  });
  return startServer(config, { log: () => {} });
}

/** A server on a fixed port and data directory that a test stops and starts again. */
async function restartable(env: Record<string, string> = {}) {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-client-" });
  const port = freePort();
  let server = await fixedServer(dataDir, port, env);
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    stop: () => server.close(),
    async start() {
      server = await fixedServer(dataDir, port, env);
    },
    async dispose() {
      await server.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
}

Deno.test("client: join with history, send with a client id and await the ack, each message once", async () => {
  const server = await startTestServer();
  const a = await userClient(server, "1");
  const b = await userClient(server, "2");
  try {
    await a.client.connect();
    await b.client.connect();
    await a.client.join("ticket:1");
    for (let i = 1; i <= 5; i++) await a.client.send("ticket:1", { body: `old ${i}` });
    // b joins two rooms; the newest 3 of ticket:1 first, then live messages, no gap between.
    const joined = await b.client.join("ticket:1", { history: 3 });
    assertEquals(joined.messages.map((m) => m.seq), [3, 4, 5]);
    assertEquals(joined.has_more, true);
    assertEquals((await b.client.join("chat:1", { history: 50 })).messages, []);
    assertEquals(b.bodies("ticket:1"), ["old 3", "old 4", "old 5"]);

    const ack = await a.client.send("ticket:1", { body: "hello", clientId: "c-1" });
    assertEquals([ack.seq, ack.client_id, ack.duplicate], [6, "c-1", false]);
    // The same client id again: the original's ack, and nobody sees a second message.
    const again = await a.client.send("ticket:1", { body: "hello again", clientId: "c-1" });
    assertEquals([again.seq, again.id, again.duplicate], [6, ack.id, true]);
    await b.client.send("chat:1", { body: "in chat" });
    await eventually(() => b.messages.length === 5 && a.bodies("ticket:1").length === 6);
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(b.seqs("ticket:1"), [3, 4, 5, 6]);
    assertEquals(b.bodies("chat:1"), ["in chat"]);
    assertEquals(a.bodies("ticket:1"), ["old 1", "old 2", "old 3", "old 4", "old 5", "hello"]);

    // Paging back from the oldest message b holds.
    const page = await b.client.history("ticket:1", { before: 3, limit: 10 });
    assertEquals([page.messages.map((m) => m.body), page.has_more], [["old 1", "old 2"], false]);

    // Errors carry the protocol's code.
    const err = await assertRejects(() => b.client.join("ticket:x!")) as ChatError;
    assertEquals(err.code, "invalid_frame");
    const denied = await assertRejects(() => b.client.history("service-chat:9")) as ChatError;
    assertEquals(denied.code, "forbidden");
    assertEquals(b.client.rooms().sort(), ["chat:1", "ticket:1"]);
  } finally {
    a.client.close();
    b.client.close();
    await server.close();
  }
});

Deno.test("client: presence, typing (throttled, ends by itself), read cursors", async () => {
  const server = await startTestServer();
  const a = await userClient(server, "1");
  const b = await userClient(server, "2");
  const typingFrames: unknown[] = [];
  try {
    await a.client.connect();
    await a.client.join("chat:3");
    await b.client.connect();
    const joined = await b.client.join("chat:3");
    assertEquals(joined.presence.map((u) => u.id).sort(), [1, 2]);
    await eventually(() => a.client.presence("chat:3").length === 2, 3000, "a sees b");
    assert(a.presence.some((p) => p.action === "join" && p.user?.id === 2));

    // Many keystrokes, one typing frame.
    const spy = server.app.context.chat;
    const original = spy.typing.bind(spy);
    spy.typing = (user, room, isTyping, connId) => {
      typingFrames.push({ user: user.id, isTyping });
      return original(user, room, isTyping, connId);
    };
    for (let i = 0; i < 10; i++) b.client.typing("chat:3");
    await eventually(() => a.client.typers("chat:3").length === 1, 3000, "typing shown");
    assertEquals(a.client.typers("chat:3")[0].id, 2);
    assertEquals(typingFrames, [{ user: 2, isTyping: true }]);
    b.client.typing("chat:3", false);
    await eventually(() => a.client.typers("chat:3").length === 0, 3000, "typing ended");
    assertEquals(a.typing.map((t) => t.is_typing), [true, false]);

    const ack = await a.client.send("chat:3", { body: "read me" });
    assertEquals(await b.client.read("chat:3", ack.seq), ack.seq);
    await eventually(() => a.reads.length === 1, 3000, "read event");
    assertEquals([a.reads[0].user.id, a.reads[0].seq], [2, ack.seq]);
    assertEquals(a.client.reads("chat:3"), [{ userId: 2, seq: ack.seq }]);
    // Another tab of user 1, opened later, learns the cursors from its join.
    const later = await userClient(server, "1");
    const listed: ReadsEvent[] = [];
    later.client.on("reads", (e) => listed.push(e));
    try {
      await later.client.connect();
      await later.client.join("chat:3");
      assertEquals(listed, [{ room: "chat:3", reads: [{ userId: 2, seq: ack.seq }] }]);
      assertEquals(later.client.reads("chat:3"), [{ userId: 2, seq: ack.seq }]);
    } finally {
      later.client.close();
    }

    await b.client.leave("chat:3");
    await eventually(() => a.client.presence("chat:3").length === 1, 3000, "b left");
    assertEquals(a.presence.at(-1)?.action, "leave");
  } finally {
    a.client.close();
    b.client.close();
    await server.close();
  }
});

Deno.test("client: a read on one of our devices moves our cursor in reads() there and, with a read event, on our others", async () => {
  const server = await startTestServer();
  const phone = await userClient(server, "1");
  const laptop = await userClient(server, "1");
  const ben = await userClient(server, "2");
  try {
    for (const c of [phone, laptop, ben]) {
      await c.client.connect();
      await c.client.join("ticket:1");
    }
    const ack = await ben.client.send("ticket:1", { body: "are you there?" });
    assertEquals(await phone.client.read("ticket:1", ack.seq), ack.seq);
    assertEquals(phone.client.reads("ticket:1"), [{ userId: 1, seq: ack.seq }]);
    await eventually(() => laptop.reads.length === 1, 3000, "the laptop's read event");
    assertEquals([laptop.reads[0].user.id, laptop.reads[0].seq], [1, ack.seq]);
    assertEquals(laptop.client.reads("ticket:1"), [{ userId: 1, seq: ack.seq }]);
    await eventually(() => ben.reads.length === 1, 3000, "ben's read event");
    // The phone has its answer: no event of its own read.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(phone.reads, []);
  } finally {
    for (const c of [phone, laptop, ben]) c.client.close();
    await server.close();
  }
});

Deno.test("client: reconnects after a dropped socket and recovers what it missed, once each", async () => {
  const server = await startTestServer();
  const reader = await userClient(server, "1");
  const writer = await userClient(server, "2");
  try {
    await reader.client.connect();
    await reader.client.join("ticket:7");
    await writer.client.connect();
    await writer.client.join("ticket:7");
    await writer.client.send("ticket:7", { body: "m1" });
    await eventually(() => reader.messages.length === 1);
    // The server drops the reader (as a slow consumer would be); the writer goes on.
    for (const conn of server.app.context.connections) {
      if (conn.open) {
        conn.close(4008, "Slow consumer");
        break;
      }
    }
    await eventually(() => reader.client.state !== "open" || writer.client.state !== "open");
    const writerDropped = writer.client.state !== "open";
    const sends: Promise<ChatAck>[] = [];
    for (let i = 2; i <= 6; i++) sends.push(writer.client.send("ticket:7", { body: `m${i}` }));
    // Sent while (maybe) offline too: queued and delivered once.
    sends.push(reader.client.send("ticket:7", { body: "from reader" }));
    await Promise.all(sends);
    await eventually(() => reader.messages.length === 7 && writer.messages.length === 7, 5000);
    await new Promise((r) => setTimeout(r, 150));
    for (const c of [reader, writer]) {
      assertEquals(c.seqs("ticket:7"), [1, 2, 3, 4, 5, 6, 7]);
      assertEquals(c.bodies().filter((b) => b === "from reader").length, 1);
    }
    const dropped = writerDropped ? writer : reader;
    assert(dropped.states.some((s) => s.state === "reconnecting"));
    assertEquals(dropped.client.state, "open");
  } finally {
    reader.client.close();
    writer.client.close();
    await server.close();
  }
});

Deno.test("client: more missed than one join replays is read back from history, each once, in order", async () => {
  const server = await startTestServer({ REPLAY_LIMIT: "3" });
  const reader = await userClient(server, "1");
  const writer = await userClient(server, "2");
  try {
    await writer.client.connect();
    await writer.client.join("ticket:7");
    for (let i = 1; i <= 10; i++) await writer.client.send("ticket:7", { body: `m${i}` });
    const resyncs: unknown[] = [];
    reader.client.on("resync", (r) => resyncs.push(r));
    await reader.client.connect();
    await reader.client.join("ticket:7", { since: 0 });
    await writer.client.send("ticket:7", { body: "m11" });
    await eventually(() => reader.messages.length >= 11, 5000);
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(reader.seqs("ticket:7"), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assertEquals(resyncs, []);
  } finally {
    reader.client.close();
    writer.client.close();
    await server.close();
  }
});

Deno.test("client: a long history in CJK, read back over a modest link while the room is live, comes across the server's cut pages once each, in order; paging back by first_seq too", async () => {
  const server = await startTestServer({ REPLAY_LIMIT: "10" });
  const link = throttledLink(server.port, 2_000_000);
  const token = await server.token({ sub: "1", username: "1", rooms: ["ticket:*"] });
  const reader = recorder({ url: `ws://127.0.0.1:${link.port}/ws`, token });
  const writer = await userClient(server, "2");
  try {
    // 12 MB: the 190 the replay leaves were read back in one frame, three times
    // SLOW_CONSUMER_BYTES, and the live messages had the reader closed as slow again and again.
    await longCjkHistory(server, "ticket:7", 200);
    await writer.client.connect();
    await writer.client.join("ticket:7");
    const resyncs: unknown[] = [];
    reader.client.on("resync", (r) => resyncs.push(r));
    await reader.client.connect();
    // Live traffic from the join on: 10 messages of 4 KB a second.
    const live = (async () => {
      for (let i = 1; i <= 50; i++) {
        await writer.client.send("ticket:7", { body: `live ${i} ${"x".repeat(4000)}` });
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await reader.client.join("ticket:7", { since: 0 });
    await live;
    const all = Array.from({ length: 250 }, (_, i) => i + 1);
    await eventually(() => reader.messages.length >= 250, 30_000, "every message");
    assertEquals(reader.seqs("ticket:7"), all);
    assertEquals(reader.bodies().map((b) => Number(b.split(" ")[b.startsWith("live") ? 1 : 0])), [
      ...all.slice(0, 200),
      ...all.slice(0, 50),
    ]);
    assertEquals(resyncs, []);
    assertEquals(reader.states.map((s) => s.state), ["connecting", "open"]);

    // An application paging back as the page tells it to: several pages of 200 asked for.
    let back: number[] = [];
    let pages = 0;
    for (let before: number | undefined, more = true; more; pages++) {
      const page = await writer.client.history("ticket:7", { before, limit: 200 });
      back = page.messages.map((m) => m.seq).concat(back);
      [before, more] = [page.first_seq ?? undefined, page.has_more];
    }
    assertEquals(back, all);
    assert(pages > 10, `${pages} pages`);
  } finally {
    reader.client.close();
    writer.client.close();
    await link.close();
    await server.close();
  }
});

Deno.test("client: gaps left by limited replays in many rooms at once are read back one page at a time, without being cut off for flooding", async () => {
  const admin = "an-admin-token-for-the-client-tests";
  const server = await startTestServer({ REPLAY_LIMIT: "1", ADMIN_TOKEN: admin });
  const reader = await userClient(server, "1");
  try {
    const rooms = Array.from({ length: 50 }, (_, i) => `ticket:${i + 1}`);
    for (const room of rooms) {
      for (let k = 1; k <= 4; k++) {
        await adminCall(server.url, admin, "POST", `/api/rooms/ticket/${room.slice(7)}/messages`, {
          body: `m${k}`,
        });
      }
    }
    const resyncs: unknown[] = [];
    reader.client.on("resync", (r) => resyncs.push(r));
    await reader.client.connect();
    await Promise.all(rooms.map((room) => reader.client.join(room, { since: 0 })));
    await eventually(() => reader.messages.length >= 200, 20_000, "every message");
    for (const room of rooms) assertEquals(reader.seqs(room), [1, 2, 3, 4], room);
    assertEquals(resyncs, []);
    assertEquals(reader.states.map((s) => s.state), ["connecting", "open"]);
  } finally {
    reader.client.close();
    await server.close();
  }
});

Deno.test("client: survives a server restart; sends made while it is down go out once", async () => {
  const server = await restartable();
  const url = server.url;
  const token = (sub: string) => signDevToken(TEST_SECRET, { sub, rooms: ["chat:*"] });
  const a = recorder({ url, token: await token("1") });
  const b = recorder({ url, token: await token("2") });
  try {
    await a.client.connect();
    await b.client.connect();
    await a.client.join("chat:5", { history: 20 });
    await b.client.join("chat:5", { history: 20 });
    await a.client.send("chat:5", { body: "before" });
    await eventually(() => b.messages.length === 1);

    await server.stop();
    await eventually(() => a.client.state === "reconnecting" && b.client.state === "reconnecting");
    const offline = a.client.send("chat:5", { body: "while down" });
    await new Promise((r) => setTimeout(r, 300));
    await server.start();
    assertEquals((await offline).seq, 2);
    await b.client.send("chat:5", { body: "after" });
    await eventually(() => a.messages.length === 3 && b.messages.length === 3, 5000);
    await new Promise((r) => setTimeout(r, 150));
    for (const c of [a, b]) {
      assertEquals(c.bodies(), ["before", "while down", "after"]);
      assertEquals(c.seqs("chat:5"), [1, 2, 3]);
      assertEquals(c.client.state, "open");
      assert(c.states.some((s) => s.state === "reconnecting" && s.code === 1001));
    }
    // Presence came back with the rejoin.
    await eventually(() => a.client.presence("chat:5").length === 2, 3000, "presence restored");
  } finally {
    a.client.close();
    b.client.close();
    await server.dispose();
  }
});

Deno.test("client: a send made while its room's join is still reading history waits for the join, online and offline", async () => {
  const server = await restartable();
  const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["chat:*"] });
  const a = recorder({ url: server.url, token });
  try {
    await a.client.connect();
    // Not awaited: the send is made while the join reads its history page.
    const joined = a.client.join("chat:6", { history: 20 });
    const sent = a.client.send("chat:6", { body: "right away" });
    assertEquals((await within(sent, "the send's ack")).seq, 1);
    await joined;
    // The same with the server away: both go out once it is back, the join first.
    await server.stop();
    await eventually(() => a.client.state === "reconnecting");
    const offJoin = a.client.join("chat:7", { history: 20 });
    const offSend = a.client.send("chat:7", { body: "while down" });
    await new Promise((r) => setTimeout(r, 300));
    await server.start();
    assertEquals((await within(offSend, "the offline send's ack")).seq, 1);
    await offJoin;
    const page = await a.client.history("chat:7");
    assertEquals(page.messages.map((m) => m.body), ["while down"]);
  } finally {
    a.client.close();
    await server.dispose();
  }
});

Deno.test("client: sends held for a join whose history read fails are refused at once; a leave during that read ends the join", async () => {
  const server = await startTestServer();
  const a = await userClient(server, "1", { rooms: ["chat:*"] });
  try {
    await a.client.connect();
    const refusedJoin = a.client.join("ticket:9", { history: 20 });
    const held = a.client.send("ticket:9", { body: "never" });
    assertEquals((await assertRejects(() => refusedJoin) as ChatError).code, "forbidden");
    assertEquals(
      (await within(assertRejects(() => held), "the held send's refusal") as ChatError)
        .code,
      "not_found",
    );
    // Left while the join read its history: not joined afterwards.
    const joining = a.client.join("chat:2", { history: 20 });
    await a.client.leave("chat:2");
    assertEquals((await assertRejects(() => joining) as ChatError).code, "left");
    assertEquals(a.client.rooms(), []);
  } finally {
    a.client.close();
    await server.close();
  }
});

Deno.test("client: a file sent over the upload route while the server is down goes out once it is back", async () => {
  const server = await restartable();
  const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["chat:*"] });
  const a = recorder({ url: server.url, token, inlineMaxBytes: 1024 });
  try {
    await a.client.connect();
    await a.client.join("chat:6");
    await server.stop();
    await eventually(() => a.client.state === "reconnecting");
    const bytes = randomBytes(50_000);
    const sending = a.client.sendFile("chat:6", { name: "while-down.bin", data: bytes });
    await new Promise((r) => setTimeout(r, 300));
    await server.start();
    const ack = await sending;
    assertEquals(ack.seq, 1);
    await eventually(() => a.messages.length === 1, 5000, "the message");
    const [file] = a.messages[0].attachments;
    const res = await fetch(file.url);
    assertEquals(new Uint8Array(await res.arrayBuffer()), bytes);
  } finally {
    a.client.close();
    await server.dispose();
  }
});

Deno.test("client: a room deleted while the client was away is not rejoined: removed, and what was queued for it refused", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  const server = await restartable({ ADMIN_TOKEN: admin });
  const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["chat:*"] });
  // The reconnect waits at its token until the room is gone.
  let gate: Promise<void> | undefined;
  const a = recorder({ url: server.url, token: async () => (await gate, token) });
  const removed: unknown[] = [];
  a.client.on("removed", (e) => removed.push(e));
  try {
    await a.client.connect();
    await a.client.join("chat:9");
    await a.client.send("chat:9", { body: "one" });
    await a.client.send("chat:9", { body: "two" });
    let open!: () => void;
    gate = new Promise((r) => open = r);
    await server.stop();
    await eventually(() => a.client.state === "reconnecting");
    const queued = a.client.send("chat:9", { body: "queued" }).then(
      () => "stored",
      (e: ChatError) => e.code,
    );
    await server.start();
    assertEquals(
      await adminCall(`http://127.0.0.1:${server.port}`, admin, "DELETE", "/api/rooms/chat/9"),
      204,
    );
    open();
    assertEquals(await queued, "room_deleted");
    assertEquals(removed, [{ room: "chat:9", reason: "room_deleted" }]);
    assertEquals(a.client.rooms(), []);
    // The room's next life holds nothing of the old one, nor the send queued for it.
    const b = recorder({ url: server.url, token });
    await b.client.connect();
    assertEquals((await b.client.join("chat:9", { history: 10 })).messages, []);
    b.client.close();
  } finally {
    a.client.close();
    await server.dispose();
  }
});

Deno.test("client: an ack lost with the socket is recovered by resending the same client id", async () => {
  const server = await startTestServer();
  const a = await userClient(server, "1");
  const bystander = await userClient(server, "2");
  try {
    await bystander.client.connect();
    await bystander.client.join("ticket:9");
    const others = new Set(server.app.context.connections);
    await a.client.connect();
    await a.client.join("ticket:9");
    for (let round = 0; round < 5; round++) {
      const sending = a.client.send("ticket:9", { body: `round ${round}` });
      // Drop the socket right behind the frame: the server may or may not have stored it.
      await new Promise((r) => setTimeout(r, round * 3));
      for (const conn of server.app.context.connections) {
        if (!others.has(conn)) conn.close(4008, "Slow consumer");
      }
      await sending;
    }
    await eventually(() => a.messages.length === 5, 5000);
    const page = await a.client.history("ticket:9", { limit: 50 });
    assertEquals(page.messages.map((m) => m.body), [0, 1, 2, 3, 4].map((i) => `round ${i}`));
    assertEquals(a.seqs("ticket:9"), [1, 2, 3, 4, 5]);
    await eventually(() => bystander.messages.length === 5);
    assertEquals(bystander.seqs("ticket:9"), [1, 2, 3, 4, 5]);
  } finally {
    a.client.close();
    bystander.client.close();
    await server.close();
  }
});

Deno.test("client: files inline with progress; over the upload route with progress; bytes intact", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: "admin-secret-for-client-tests-0123456789" });
  const user = await userClient(server, "1");
  const admin = recorder({
    url: `${server.wsUrl}/ws`,
    token: await server.token({ sub: "99", username: "boss", role: "admin" }),
  });
  try {
    await user.client.connect();
    await user.client.join("ticket:4");
    const small = randomBytes(3000);
    const progress: UploadProgress[] = [];
    const ack = await user.client.sendFile(
      "ticket:4",
      new File([small], "small.bin", { type: "application/octet-stream" }),
      { body: "inline", onProgress: (p) => progress.push(p) },
    );
    assertEquals(progress[0], { loaded: 0, total: 3000, via: "inline" });
    assertEquals(progress.at(-1), { loaded: 3000, total: 3000, via: "inline" });
    await eventually(() => user.messages.length === 1);
    const inline = user.messages[0];
    assertEquals([inline.seq, inline.body, inline.attachments[0].name], [
      ack.seq,
      "inline",
      "small.bin",
    ]);
    const fetched = new Uint8Array(await (await fetch(inline.attachments[0].url)).arrayBuffer());
    assertEquals(fetched, small);

    // Over HTTP (an admin token: the route's own access rules decide who may upload).
    await admin.client.connect();
    await admin.client.join("ticket:4");
    const big = randomBytes(600 * 1024);
    const uploads: UploadProgress[] = [];
    const uploaded = await admin.client.sendFile(
      "ticket:4",
      { name: "big.bin", data: big },
      { clientId: "up-1", onProgress: (p) => uploads.push(p) },
    );
    assertEquals(uploads[0], { loaded: 0, total: big.length, via: "upload" });
    assertEquals(uploads.at(-1), { loaded: big.length, total: big.length, via: "upload" });
    assertEquals([uploaded.seq, uploaded.client_id, uploaded.duplicate], [2, "up-1", false]);
    await eventually(() => user.messages.length === 2);
    const viaHttp = user.messages[1];
    assertEquals([viaHttp.seq, viaHttp.attachments[0].size], [2, big.length]);
    const bigBack = new Uint8Array(await (await fetch(viaHttp.attachments[0].url)).arrayBuffer());
    assertEquals(bigBack, big);
    // Retrying the upload with its client id stores nothing new.
    const retried = await admin.client.upload("ticket:4", { name: "big.bin", data: big }, {
      clientId: "up-1",
    });
    assertEquals([retried.seq, retried.duplicate], [2, true]);

    // A large file from a user: over the route when it takes user tokens, else inline.
    const medium = randomBytes(300 * 1024);
    const userUpload = await user.client.sendFile("ticket:4", { name: "medium.bin", data: medium });
    await eventually(() => user.messages.length === 3);
    assertEquals([user.messages[2].seq, user.messages[2].attachments[0].size], [
      userUpload.seq,
      medium.length,
    ]);
  } finally {
    user.client.close();
    admin.client.close();
    await server.close();
  }
});

Deno.test("client: a file's caption keeps its line breaks whichever way the file goes, and is counted alike", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    await user.client.join("ticket:5");
    const file = () => ({ name: "a.bin", data: new Uint8Array(10) });
    // 20,000 characters (the body limit), 1,000 of them line breaks: a form encoder sends each
    // as CRLF, 21,000 characters, which the upload route must not count nor store.
    const caption = ("x".repeat(19) + "\n").repeat(1000);
    assertEquals(caption.length, user.client.limits.maxBodyChars);
    const inline = await user.client.sendFile("ticket:5", file(), { body: caption, via: "inline" });
    const upload = await user.client.sendFile("ticket:5", file(), { body: caption, via: "upload" });
    assertEquals(upload.seq, inline.seq + 1);
    await eventually(() => user.messages.length === 2);
    assert(user.messages.every((m) => m.body === caption), "a caption was altered");
    const history = await user.client.history("ticket:5");
    assert(history.messages.every((m) => m.body === caption), "a stored caption was altered");
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: a file, body or frame larger than the server's welcome says is refused before sending; the socket stays", async () => {
  // Smaller than the client's own default (10 MiB), so only the welcome can tell it.
  const server = await startTestServer({ MAX_FILE_BYTES: "100000", RATE_LIMIT_PER_SECOND: "30" });
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    assertEquals(user.client.limits, {
      maxBodyChars: 20_000,
      maxFiles: 10,
      maxFileBytes: 100_000,
      maxFrameChars: 205_892,
      framesPerSecond: 30,
    });
    await user.client.join("ticket:5");
    const refused = async (send: () => Promise<unknown>) =>
      ((await within(assertRejects(send), "a refusal")) as ChatError).code;
    // Under the inline threshold (256 KiB): it would have gone in a frame the server closes on.
    const tooBig = { name: "big.bin", data: randomBytes(100_001) };
    assertEquals(await refused(() => user.client.sendFile("ticket:5", tooBig)), "file_too_large");
    assertEquals(await refused(() => user.client.upload("ticket:5", tooBig)), "file_too_large");
    // Two files the server takes, which one frame cannot carry together.
    const files = [1, 2].map((i) => ({ name: `${i}.bin`, data: randomBytes(90_000) }));
    assertEquals(await refused(() => user.client.send("ticket:5", { files })), "frame_too_large");
    const long = "x".repeat(20_001);
    assertEquals(
      await refused(() => user.client.send("ticket:5", { body: long })),
      "body_too_long",
    );
    // Each on its own goes; nothing refused was sent, and the socket never closed.
    await user.client.send("ticket:5", { files: files.slice(0, 1) });
    await user.client.sendFile("ticket:5", { name: "ok.bin", data: randomBytes(100_000) });
    await eventually(() => user.messages.length === 2);
    assertEquals(user.messages.map((m) => m.attachments.map((a) => a.size)), [[90_000], [
      100_000,
    ]]);
    assertEquals(user.states.filter((s) => s.state !== "open").map((s) => s.state), [
      "connecting",
    ]);
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: a refused token fails connect and stops; no reconnect loop", async () => {
  const server = await startTestServer();
  const c = recorder({ url: `${server.wsUrl}/ws`, token: "not-a-token" });
  try {
    const err = await assertRejects(() => c.client.connect()) as ChatError;
    assertEquals(err.code, "unauthorized");
    assertEquals(c.client.state, "closed");
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(c.states.filter((s) => s.state === "reconnecting").length, 0);
  } finally {
    c.client.close();
    await server.close();
  }
});

// ---- a scripted socket: what a healthy server never sends ----

class FakeSocket {
  static instances: FakeSocket[] = [];
  readyState = 0;
  bufferedAmount = 0;
  sent: Record<string, unknown>[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: ((e: { code: number }) => void) | null = null;
  onerror: (() => void) | null = null;
  constructor(readonly url: string, readonly protocols: string[]) {
    FakeSocket.instances.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.();
    });
  }
  send(data: string) {
    this.sent.push(JSON.parse(data));
    // Behind bytes not yet out, a frame waits too.
    if (this.bufferedAmount > 0) this.bufferedAmount += data.length;
  }
  close() {
    this.readyState = 3;
  }
  push(frame: Record<string, unknown>) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  async take(type: string): Promise<Record<string, unknown>> {
    await eventually(() => this.sent.some((f) => f.type === type), 2000, `a ${type} frame`);
    return this.sent.splice(this.sent.findIndex((f) => f.type === type), 1)[0];
  }
}

const USER = { id: 1, username: "one", name: null, email: null, profile_image: null, role: null };
const msg = (seq: number, body = `m${seq}`) => ({
  type: "message",
  room: "room:x",
  seq,
  id: `id${seq}`,
  sender: USER,
  body,
  attachments: [],
  created_at: new Date().toISOString(),
  client_id: null,
});

/**
 * A client on a scripted socket, connected (and joined to room:x unless told not to); `welcome`
 * adds fields to the server's greeting.
 */
async function scripted(
  options: Partial<ChatClientOptions> = {},
  join = true,
  welcome: Record<string, unknown> = {},
) {
  FakeSocket.instances = [];
  const c = recorder({
    url: "ws://fake/ws",
    token: "t",
    heartbeatMs: 0,
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    ...options,
  });
  const connecting = c.client.connect();
  await eventually(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.instances[0];
  socket.push({ type: "welcome", user: USER, conn_id: "x", ...welcome });
  await connecting;
  if (join) {
    const joining = c.client.join("room:x");
    const frame = await socket.take("join");
    socket.push({ type: "joined", room: "room:x", head: 0, presence: [USER], ref: frame.ref });
    await joining;
  }
  return { c, socket };
}

Deno.test("client: fills a gap from history, drops duplicates, rebuilds on resync, detects a dead socket", async () => {
  FakeSocket.instances = [];
  const c = recorder({
    url: "ws://fake/ws",
    token: "t",
    heartbeatMs: 60,
    timeoutMs: 150,
    WebSocket: FakeSocket as unknown as typeof WebSocket,
  });
  const resyncs: unknown[] = [];
  c.client.on("resync", (e) => resyncs.push(e));
  try {
    const connecting = c.client.connect();
    await eventually(() => FakeSocket.instances.length === 1);
    let socket = FakeSocket.instances[0];
    assertEquals(socket.protocols, ["bearer.t"]);
    socket.push({ type: "welcome", user: USER, conn_id: "x" });
    await connecting;

    const joining = c.client.join("room:x");
    const join = await socket.take("join");
    assertEquals(join.since, undefined);
    socket.push({ type: "joined", room: "room:x", head: 0, presence: [USER], ref: join.ref });
    await joining;
    socket.push(msg(1));
    socket.push(msg(3));
    const fill = await socket.take("history");
    assertEquals([fill.after, fill.limit], [1, 1]);
    socket.push(msg(2));
    socket.push(msg(3));
    socket.push({
      type: "history",
      room: "room:x",
      messages: [msg(2)],
      has_more: false,
      first_seq: 2,
      last_seq: 2,
      ref: fill.ref,
    });
    socket.push(msg(4));
    await eventually(() => c.messages.length === 4);
    assertEquals(c.seqs("room:x"), [1, 2, 3, 4]);

    // Disconnected: a send waits, the room is rejoined from seq 4 before the send goes out.
    socket.drop();
    const sending = c.client.send("room:x", { body: "queued", clientId: "q1" });
    await eventually(() => FakeSocket.instances.length === 2, 2000, "a reconnect");
    socket = FakeSocket.instances[1];
    socket.push({ type: "welcome", user: USER, conn_id: "y" });
    const rejoin = await socket.take("join");
    assertEquals(rejoin.since, 4);
    const send = await socket.take("send");
    assertEquals(send.client_id, "q1");
    // History was cut past 4: the server says so and replays from 10.
    socket.push({
      type: "resync",
      room: "room:x",
      reason: "history_truncated",
      first_seq: 10,
      head: 11,
      ref: rejoin.ref,
    });
    socket.push(msg(10));
    socket.push(msg(11));
    socket.push({ type: "joined", room: "room:x", head: 11, presence: [USER], ref: rejoin.ref });
    socket.push(ackOf(send, 12));
    socket.push(msg(12, "queued"));
    assertEquals((await sending).seq, 12);
    await eventually(() => c.messages.length === 7);
    assertEquals(c.seqs("room:x"), [1, 2, 3, 4, 10, 11, 12]);
    assertEquals(resyncs.length, 1);

    // No pong: the client gives up on the socket and connects again.
    await socket.take("ping");
    await eventually(() => FakeSocket.instances.length === 3, 2000, "reconnect after silence");
  } finally {
    c.client.close();
  }
});

Deno.test("client: pings a third of the server's heartbeat_ms apart, so the server never pings it", async () => {
  // The default of 25 s would leave the socket silent past the server's 15 s (half of 30 s).
  const { c, socket } = await scripted({ heartbeatMs: undefined, timeoutMs: 5000 }, false, {
    heartbeat_ms: 600,
  });
  try {
    const started = performance.now();
    for (let i = 0; i < 3; i++) {
      await socket.take("ping");
      socket.push({ type: "pong" });
    }
    const elapsed = performance.now() - started;
    // Three pings 200 ms apart (each `take` waits at most 2 s, far from the default's 25 s).
    assert(elapsed >= 500, `three pings in ${elapsed} ms: more often than asked`);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a gap history can no longer fill is reported with resync, not passed over", async () => {
  const { c, socket } = await scripted();
  const resyncs: unknown[] = [];
  c.client.on("resync", (e) => resyncs.push(e));
  try {
    socket.push(msg(1));
    socket.push(msg(5));
    // 2 and 3 are gone: history has only 4.
    const fill = await socket.take("history");
    socket.push({
      type: "history",
      room: "room:x",
      messages: [msg(4)],
      has_more: false,
      first_seq: 4,
      last_seq: 4,
      ref: fill.ref,
    });
    // Is 1 still there (a restored backup's jump, not a loss)? It is gone too: history starts at 4.
    const check = await socket.take("history");
    assertEquals([check.after, check.limit], [0, 1]);
    socket.push({
      type: "history",
      room: "room:x",
      messages: [msg(4)],
      has_more: true,
      first_seq: 4,
      last_seq: 4,
      ref: check.ref,
    });
    await eventually(() => c.messages.length === 3);
    assertEquals(c.seqs("room:x"), [1, 4, 5]);
    assertEquals(resyncs, [
      { room: "room:x", reason: "history_truncated", first_seq: 4, head: 5 },
    ]);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a send refused as too fast waits, with every request and join after it, then goes again in order", async () => {
  const { c, socket } = await scripted({ retryMs: 200 });
  try {
    const first = c.client.send("room:x", { body: "one", clientId: "c1" });
    const refused = await socket.take("send");
    socket.push({ type: "error", code: "rate_limited", message: "slow down", ref: refused.ref });
    await new Promise((r) => setTimeout(r, 20));
    // The application goes on sending and joining: nothing is written until the wait is over.
    const second = c.client.send("room:x", { body: "two", clientId: "c2" });
    const joining = c.client.join("room:y");
    await new Promise((r) => setTimeout(r, 120));
    assertEquals(socket.sent.filter((f) => f.type === "send" || f.type === "join"), []);
    const again = await socket.take("send");
    const next = await socket.take("send");
    assertEquals([again.client_id, again.ref, next.client_id], ["c1", refused.ref, "c2"]);
    socket.push(ackOf(again, 1));
    socket.push(ackOf(next, 2));
    assertEquals([(await first).seq, (await second).seq], [1, 2]);
    const join = await socket.take("join");
    socket.push({ type: "joined", room: "room:y", head: 0, presence: [USER], ref: join.ref });
    await joining;
  } finally {
    c.client.close();
  }
});

Deno.test("client: a send the server failed goes again before the sends made after it", async () => {
  const { c, socket } = await scripted({ retryMs: 100 });
  try {
    const first = c.client.send("room:x", { body: "one", clientId: "c1" });
    const failed = await socket.take("send");
    socket.push({ type: "error", code: "internal", message: "kv hiccup", ref: failed.ref });
    await new Promise((r) => setTimeout(r, 10));
    const second = c.client.send("room:x", { body: "two", clientId: "c2" });
    const [a, b] = [await socket.take("send"), await socket.take("send")];
    assertEquals([a.client_id, b.client_id], ["c1", "c2"]);
    socket.push(ackOf(a, 1));
    socket.push(ackOf(b, 2));
    assertEquals([(await first).seq, (await second).seq], [1, 2]);
  } finally {
    c.client.close();
  }
});

Deno.test("client: the grace of a large frame ends with its answer; a dead connection after it is noticed", async () => {
  const { c, socket } = await scripted({ heartbeatMs: 50, timeoutMs: 100 });
  try {
    const sending = c.client.sendFile("room:x", { name: "a.bin", data: new Uint8Array(200_000) });
    socket.push(ackOf(await socket.take("send"), 1));
    await sending;
    // Silent from now on: no pong.
    await eventually(() => FakeSocket.instances.length >= 2, 2000, "reconnect after silence");
  } finally {
    c.client.close();
  }
});

Deno.test("client: read cursors come with each join, replace what the last one said, and move with read events", async () => {
  const { c, socket: first } = await scripted({}, false);
  try {
    const joining = c.client.join("room:x");
    const join = await first.take("join");
    first.push({
      type: "joined",
      room: "room:x",
      head: 5,
      presence: [USER],
      reads: [{ user_id: 2, seq: 5 }, { user_id: "bob", seq: 3 }],
      ref: join.ref,
    });
    await joining;
    first.push({ type: "read", room: "room:x", user: { ...USER, id: "bob" }, seq: 4 });
    await eventually(() => c.reads.length === 1);
    assertEquals(c.client.reads("room:x"), [{ userId: 2, seq: 5 }, { userId: "bob", seq: 4 }]);
    // A read frame older than what is known does not move a cursor back.
    first.push({ type: "read", room: "room:x", user: { ...USER, id: "bob" }, seq: 2 });
    await eventually(() => c.reads.length === 2);
    assertEquals(c.client.reads("room:x")[1], { userId: "bob", seq: 4 });
    // After a reconnect the rejoin's list is the whole truth (the room was purged meanwhile).
    first.drop();
    await eventually(() => FakeSocket.instances.length === 2, 2000, "a reconnect");
    const socket = FakeSocket.instances[1];
    socket.push({ type: "welcome", user: USER, conn_id: "y" });
    const rejoin = await socket.take("join");
    socket.push({
      type: "joined",
      room: "room:x",
      head: 0,
      presence: [],
      reads: [],
      ref: rejoin.ref,
    });
    await eventually(() => c.client.reads("room:x").length === 0, 2000, "the cursors dropped");
  } finally {
    c.client.close();
  }
});

Deno.test("client: a send queued behind a rejoin the server keeps failing goes out once the room is back", async () => {
  const { c, socket: first } = await scripted({ retryMs: 10 });
  try {
    first.drop();
    const sending = c.client.send("room:x", { body: "queued", clientId: "q1" });
    await eventually(() => FakeSocket.instances.length === 2, 2000, "a reconnect");
    const socket = FakeSocket.instances[1];
    socket.push({ type: "welcome", user: USER, conn_id: "y" });
    // The join fails, and the send written behind it is refused as the server does: join first.
    for (let i = 0; i < 8; i++) {
      const join = await socket.take("join");
      socket.push({ type: "error", code: "internal", message: "db down", ref: join.ref });
      const send = await socket.take("send");
      socket.push({
        type: "error",
        code: "not_found",
        message: 'Join room "room:x" first',
        ref: send.ref,
      });
    }
    const join = await socket.take("join");
    socket.push({ type: "joined", room: "room:x", head: 0, presence: [USER], ref: join.ref });
    socket.push(ackOf(await socket.take("send"), 1));
    assertEquals((await sending).seq, 1);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a rejoin the server keeps failing is tried until it succeeds; the room is kept", async () => {
  const { c, socket: first } = await scripted({ retryMs: 10 });
  const errors: ChatError[] = [];
  c.client.on("error", (e) => errors.push(e));
  try {
    first.drop();
    await eventually(() => FakeSocket.instances.length === 2, 2000, "a reconnect");
    const socket = FakeSocket.instances[1];
    socket.push({ type: "welcome", user: USER, conn_id: "y" });
    // Eight failures in a row (more than the five a request gets), then the server is back.
    for (let i = 0; i < 8; i++) {
      const failing = await socket.take("join");
      socket.push({ type: "error", code: "internal", message: "db down", ref: failing.ref });
    }
    const rejoin = await socket.take("join");
    socket.push({ type: "joined", room: "room:x", head: 1, presence: [USER], ref: rejoin.ref });
    socket.push(msg(1, "after the trouble"));
    await eventually(() => c.messages.length === 1, 2000, "the message after the rejoin");
    assertEquals(c.client.rooms(), ["room:x"]);
    assertEquals(errors.map((e) => e.code), ["internal"]);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a ping held up behind a large frame that is still going out does not end the connection", async () => {
  const { c, socket } = await scripted({ heartbeatMs: 50, timeoutMs: 100 }, false);
  try {
    // A 1 MB frame drains at 10 KB a tick: the pings behind it go unanswered for a second.
    socket.bufferedAmount = 1_000_000;
    const draining = setInterval(() => {
      socket.bufferedAmount = Math.max(0, socket.bufferedAmount - 10_000);
    }, 10);
    try {
      await new Promise((r) => setTimeout(r, 600));
      assertEquals(FakeSocket.instances.length, 1, "no reconnect while the frame drains");
    } finally {
      clearInterval(draining);
    }
    // Stuck: nothing drains any more, and no pong comes.
    socket.bufferedAmount = 500;
    await eventually(() => FakeSocket.instances.length === 2, 2000, "reconnect once stuck");
  } finally {
    c.client.close();
  }
});

Deno.test("client: a large frame just written holds off the dead-connection check while it may still be going out", async () => {
  const { c, socket } = await scripted({ heartbeatMs: 50, timeoutMs: 100 });
  try {
    // The network stack took the 100 KB frame at once (nothing buffered); no pong comes back.
    const files = [{ name: "a.bin", data: new Uint8Array(75_000) }];
    c.client.send("room:x", { files }).catch(() => {});
    await socket.take("send");
    await new Promise((r) => setTimeout(r, 600));
    assertEquals(FakeSocket.instances.length, 1, "no reconnect while the frame may be crossing");
  } finally {
    c.client.close();
  }
});

// ---- web routes ----

Deno.test("web: the page and its assets are served; the dev sign-in mints working tokens", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-web-" });
  // No JWT key: the server creates a development secret and offers the dev sign-in.
  const server = await startServer(
    loadConfig({ PORT: "0", HOST: "127.0.0.1", DATA_DIR: dataDir }),
    { log: () => {} },
  );
  try {
    assert(server.app.devSecret);
    const page = await fetch(`${server.url}/`);
    assertEquals(page.status, 200);
    assert(page.headers.get("content-type")!.startsWith("text/html"));
    assert(page.headers.get("content-security-policy")!.includes("script-src 'self'"));
    const html = await page.text();
    assert(html.includes('data-dev-sign-in="on"'));
    for (const [path, type] of [["/app.js", "text/javascript"], ["/styles.css", "text/css"]]) {
      const res = await fetch(`${server.url}${path}`);
      assertEquals(res.status, 200, path);
      assert(res.headers.get("content-type")!.startsWith(type));
      // The page's own bundle and styles are for its own origin.
      assertEquals(res.headers.get("access-control-allow-origin"), null, path);
      await res.body?.cancel();
    }
    // Imported by applications' pages on their own origins, fetched in CORS mode there.
    const clientRes = await fetch(`${server.url}/client.js`);
    assertEquals(clientRes.headers.get("access-control-allow-origin"), "*");
    const clientJs = await clientRes.text();
    assert(clientJs.includes("class ChatClient") || clientJs.includes("ChatClient = class"));
    assertEquals((await fetch(`${server.url}/index.html/../../deno.json`)).status, 404);

    const res = await fetch(`${server.url}/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "Zoë Ann" }),
    });
    assertEquals(res.status, 200);
    const { token, user } = await res.json();
    assertEquals(user, { id: "dev-zoe-ann", username: "zoe-ann", name: "Zoë Ann" });
    // Names that differ only in letters the slug leaves out are different people.
    const idOf = async (name: string) =>
      (await (await fetch(`${server.url}/dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
      })).json()).user.id as string;
    for (const [a, b] of [["Иван (QA)", "Олег (QA)"], ["王伟 2", "李娜 2"], ["王伟", "李娜"]]) {
      const [ia, ib] = [await idOf(a), await idOf(b)];
      assert(ia !== ib, `"${a}" and "${b}" are one user ${ia}`);
      assertEquals(ia, await idOf(a.normalize("NFD")), "the same name, decomposed, is one user");
    }
    assertMatch(await idOf("Иван (QA)"), /^dev-qa-[0-9a-f]{12}$/);
    // Latin letters NFKD keeps whole are spelled out, not dropped: Weiß is not Wei.
    assertEquals(await idOf("Søren"), "dev-soren");
    assertEquals([await idOf("Weiß"), await idOf("Wei")], ["dev-weiss", "dev-wei"]);
    assertEquals(await idOf("Jærgen Łukasz"), "dev-jaergen-lukasz");
    // Other letters the slug cannot spell call for the hash too: Əli is not Li.
    assertMatch(await idOf("Əli"), /^dev-li-[0-9a-f]{12}$/);
    const [one, two] = [await idOf("Tester ١"), await idOf("Tester ٢")];
    assert(one !== two && one !== "dev-tester", `${one}, ${two}`);
    const [smile, cool] = [await idOf("Ann 🙂"), await idOf("Ann 😎")];
    assert(smile !== cool && smile !== "dev-ann", `${smile}, ${cool}`);
    // Spaces and punctuation are the slug's dashes, with no hash.
    assertEquals(await idOf("Ann-Marie O'Neil"), "dev-ann-marie-o-neil");
    // A long name of Latin letters is cut, without a hash.
    const long = "Christopher Alexander Montgomery Wellington III";
    assertEquals(await idOf(long), "dev-christopher-alexander-montgomery-welling");
    const chat = recorder({ url: `${server.url.replace("http", "ws")}/ws`, token });
    try {
      const me = await chat.client.connect();
      assertEquals([me.id, me.username, me.name], ["dev-zoe-ann", "zoe-ann", "Zoë Ann"]);
      await chat.client.join("room:lobby");
      await chat.client.join("ticket:12");
      const denied = await assertRejects(() => chat.client.join("service-chat:1")) as ChatError;
      assertEquals(denied.code, "forbidden");
    } finally {
      chat.client.close();
    }
    // Asked-for grants replace the defaults.
    const narrow = await (await fetch(`${server.url}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ name: "Amir", rooms: ["service-chat:1"] }),
    })).json();
    const claims = JSON.parse(
      atob(narrow.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")),
    );
    assertEquals([claims.sub, claims.rooms], ["dev-amir", ["service-chat:1"]]);
    // Names without latin letters still get a stable id.
    const cyrillic = await (await fetch(`${server.url}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ name: "Аня" }),
    })).json();
    assert(/^dev-[0-9a-f]{12}$/.test(cyrillic.user.id), cyrillic.user.id);

    for (const body of ["{", "[]", '{"name": ""}', '{"name": 5}', '{"name": "x", "rooms": "*"}']) {
      const bad = await fetch(`${server.url}/dev/token`, { method: "POST", body });
      assertEquals(bad.status, 400, body);
      assert(typeof (await bad.json()).error === "string");
    }
    // The route needs no token, so a huge body is refused rather than read whole.
    const huge = await fetch(`${server.url}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ name: "x".repeat(100_000) }),
    });
    assertEquals(huge.status, 413);
    assert(/too large/.test((await huge.json()).error));
  } finally {
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("web: the dev sign-in answers only this machine's unforwarded requests unless DEV_SIGN_IN says otherwise", async () => {
  const signIn = (url: string, headers: Record<string, string> = {}) =>
    fetch(`${url}/dev/token`, { method: "POST", headers, body: JSON.stringify({ name: "Eve" }) });
  const page = async (url: string, headers: Record<string, string> = {}) =>
    /data-dev-sign-in="(on|off)"/.exec(await (await fetch(`${url}/`, { headers })).text())![1];
  // An address of this machine that is not loopback, when it has one: a request to it comes
  // from it too, as a neighbour's would.
  const outward = Deno.networkInterfaces().find((i) =>
    i.family === "IPv4" && !i.address.startsWith("127.")
  )?.address;
  for (const mode of ["local", "any", "off"]) {
    const dataDir = await Deno.makeTempDir({ prefix: "chat-web-" });
    const server = await startServer(
      loadConfig({ PORT: "0", HOST: "0.0.0.0", DATA_DIR: dataDir, DEV_SIGN_IN: mode }),
      { log: () => {} },
    );
    try {
      const local = `http://127.0.0.1:${server.port}`;
      // The name the request was sent to, which fetch does not let a caller choose: a page whose
      // name an attacker points at 127.0.0.1 (DNS rebinding) sends its own.
      const body = '{"name":"Eve"}';
      const statusFor = async (host: string) =>
        Number(
          (await rawExchange(
            local,
            `POST /dev/token HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\n` +
              `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
          )).split(" ")[1],
        );
      for (const name of ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"]) {
        assertEquals(await statusFor(`${name}:${server.port}`), mode === "off" ? 404 : 200, name);
      }
      for (const name of ["attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io"]) {
        const expected = { local: 403, any: 200, off: 404 }[mode];
        assertEquals(await statusFor(`${name}:${server.port}`), expected, `${mode} ${name}`);
      }
      const minted = await signIn(local);
      assertEquals(minted.status, mode === "off" ? 404 : 200, mode);
      await minted.body?.cancel();
      assertEquals(await page(local), mode === "off" ? "off" : "on", mode);
      const proxied: Record<string, string>[] = [
        { "x-forwarded-for": "203.0.113.9" },
        { forwarded: "for=203.0.113.9" },
        // nginx with only `proxy_set_header X-Forwarded-Proto $scheme;`, a CDN's client header.
        { "x-forwarded-proto": "https" },
        { "true-client-ip": "203.0.113.9" },
      ];
      for (const forwarded of proxied) {
        const res = await signIn(local, forwarded);
        assertEquals(res.status, { local: 403, any: 200, off: 404 }[mode], mode);
        if (res.status === 403) assert(/JWT key/.test((await res.json()).error));
        else await res.body?.cancel();
        assertEquals(await page(local, forwarded), mode === "any" ? "on" : "off", mode);
      }
      if (outward) {
        const from = `http://${outward}:${server.port}`;
        const res = await signIn(from);
        assertEquals(
          res.status,
          { local: 403, any: 200, off: 404 }[mode],
          `${mode} via ${outward}`,
        );
        await res.body?.cancel();
      }
    } finally {
      await server.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  }
  assert(loadConfig({ DEV_SIGN_IN: "local" }).devSignIn === "local");
  let refused = "";
  try {
    loadConfig({ DEV_SIGN_IN: "yes" });
  } catch (err) {
    refused = (err as Error).message;
  }
  assert(/DEV_SIGN_IN: expected local, any or off/.test(refused), refused);
});

Deno.test("web: with a JWT key configured there is no dev sign-in, and the page asks for a token", async () => {
  const server = await startTestServer();
  try {
    assertEquals(server.app.devSecret, undefined);
    const res = await fetch(`${server.url}/dev/token`, {
      method: "POST",
      body: JSON.stringify({ name: "Mallory" }),
    });
    assertEquals(res.status, 404);
    await res.body?.cancel();
    const html = await (await fetch(`${server.url}/`)).text();
    assert(html.includes('data-dev-sign-in="off"'));
  } finally {
    await server.close();
  }
});

Deno.test("web: with JWT_ISSUER or JWT_AUDIENCE and no JWT key, the dev sign-in's tokens carry them, and the server takes them", async () => {
  const settings: Record<string, string>[] = [
    { JWT_ISSUER: "https://auth.example.com" },
    { JWT_AUDIENCE: "chat" },
  ];
  for (const env of settings) {
    const server = await startTestServer({ JWT_SECRET: "", ...env });
    try {
      const res = await fetch(`${server.url}/dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "Ann", rooms: ["room:*"] }),
      });
      assertEquals(res.status, 200);
      const { token } = await res.json();
      const chat = recorder({ url: `${server.wsUrl}/ws`, token });
      try {
        const me = await chat.client.connect();
        assertEquals(me.id, "dev-ann", JSON.stringify(env));
      } finally {
        chat.client.close();
      }
    } finally {
      await server.close();
    }
  }
});

Deno.test("web: the committed bundles web/app.js and web/client.js match their sources (run `deno run -A web/build.ts`)", async () => {
  for (const { entry, output } of BUNDLES) {
    const committed = await Deno.readTextFile(new URL(output, ROOT));
    const fresh = await bundle(entry);
    assert(
      committed === fresh,
      `${output} is stale: run \`deno run -A web/build.ts\` and commit the result`,
    );
  }
});

/** Answers `first` and every history read that follows (retries included) with an error. */
async function failHistoryReads(socket: FakeSocket, first?: Record<string, unknown>) {
  for (let read = first;; read = undefined) {
    read ??= await socket.take("history").catch(() => undefined);
    if (!read) return;
    socket.push({ type: "error", code: "internal", message: "store hiccup", ref: read.ref });
  }
}

Deno.test("client: a gap its history reads cannot fill is told as a resync, not passed over quietly", async () => {
  const { c, socket } = await scripted({ retryMs: 1 });
  const resyncs: unknown[] = [];
  c.client.on("resync", (e) => resyncs.push(e));
  try {
    socket.push(msg(1));
    socket.push(msg(5));
    // Every read of the missing 2-4 fails, the retries included.
    await failHistoryReads(socket);
    await eventually(() => c.seqs("room:x").length === 2);
    assertEquals(c.seqs("room:x"), [1, 5]);
    assertEquals(resyncs, [{
      room: "room:x",
      reason: "history_unavailable",
      first_seq: 5,
      head: 5,
    }]);
    // What follows comes in order, as after any resync.
    socket.push(msg(6));
    await eventually(() => c.seqs("room:x").length === 3);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a room left while its gap was being read delivers nothing more, and says nothing of the gap", async () => {
  const { c, socket } = await scripted({ retryMs: 1 });
  const resyncs: unknown[] = [];
  c.client.on("resync", (e) => resyncs.push(e));
  try {
    socket.push(msg(1));
    socket.push(msg(5));
    const first = await socket.take("history");
    const leaving = c.client.leave("room:x");
    const leave = await socket.take("leave");
    socket.push({ type: "left", room: "room:x", ref: leave.ref });
    await leaving;
    await failHistoryReads(socket, first);
    await new Promise((r) => setTimeout(r, 200));
    assertEquals(resyncs, []);
    assertEquals(c.seqs("room:x"), [1]);
  } finally {
    c.client.close();
  }
});

/** A TCP proxy to `port` that delays every chunk `delayMs` each way, keeping order. */
function slowLink(port: number, delayMs: number) {
  return tcpProxy(port, async (from, to) => {
    let chain = Promise.resolve();
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        const chunk = buf.slice(0, n);
        const due = performance.now() + delayMs;
        chain = chain.then(async () => {
          const wait = due - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          for (let off = 0; off < chunk.length;) off += await to.write(chunk.subarray(off));
        }).catch(() => {});
      }
    } catch {
      // Closed under the read.
    }
    await chain;
    await to.closeWrite().catch(() => {});
  });
}

Deno.test("client: sends past the rate limit over a slow link are stored in the order sent", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "10" });
  const link = slowLink(server.port, 100);
  const { client } = recorder({
    url: `ws://127.0.0.1:${link.port}/ws`,
    token: await server.token({ sub: "1", rooms: ["ticket:*"] }),
    timeoutMs: 30_000,
  });
  try {
    await client.connect();
    await client.join("ticket:1");
    // 25 a second against 10 (bursts of 20): refusals after the first second; the sends after a
    // refused one are already on the wire when it is refused.
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 80; i++) {
      sends.push(client.send("ticket:1", { body: `m${i}` }));
      await new Promise((r) => setTimeout(r, 40));
    }
    await within(Promise.all(sends), "every send", 30_000);
    const page = await client.history("ticket:1", { limit: 200 });
    assertEquals(page.messages.map((m) => m.body), Array.from({ length: 80 }, (_, i) => `m${i}`));
  } finally {
    client.close();
    await server.close();
    await link.close();
  }
});

Deno.test("client: a send still unacknowledged past sendExpiryMs is refused, not sent again; a fresher one goes", async () => {
  const server = await restartable();
  const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["chat:*"] });
  const a = recorder({ url: server.url, token, sendExpiryMs: 600 });
  try {
    await a.client.connect();
    await a.client.join("chat:6", { history: 20 });
    await server.stop();
    await eventually(() => a.client.state === "reconnecting");
    const stale = a.client.send("chat:6", { body: "too old" });
    stale.catch(() => {});
    await new Promise((r) => setTimeout(r, 700));
    const fresh = a.client.send("chat:6", { body: "fresh" });
    await server.start();
    assertEquals((await assertRejects(() => stale) as ChatError).code, "send_expired");
    assertEquals((await fresh).seq, 1);
    const page = await a.client.history("chat:6", { limit: 10 });
    assertEquals(page.messages.map((m) => m.body), ["fresh"]);
  } finally {
    a.client.close();
    await server.dispose();
  }
});

Deno.test("client: a join after its token expired reconnects with a fresh token from the token function, joins, and keeps its other rooms", async () => {
  const server = await startTestServer();
  let calls = 0;
  const chat = recorder({
    url: `${server.wsUrl}/ws`,
    // The first token expires (with the server's 5 s tolerance) 6 s from now.
    token: () => server.token({ sub: "1", rooms: ["ticket:*"] }, ++calls === 1 ? "1s" : "1h"),
  });
  const other = await userClient(server, "2");
  try {
    await chat.client.connect();
    await chat.client.join("ticket:81");
    await other.client.connect();
    await other.client.join("ticket:81");
    await new Promise((r) => setTimeout(r, 6500));
    const joined = await chat.client.join("ticket:82");
    assertEquals(joined.room, "ticket:82");
    assertEquals(calls, 2);
    assertEquals(chat.client.rooms().sort(), ["ticket:81", "ticket:82"]);
    await other.client.send("ticket:81", { body: "after the new token" });
    await eventually(() => chat.bodies("ticket:81").includes("after the new token"));
  } finally {
    chat.client.close();
    other.client.close();
    await server.close();
  }
});

/** How a promise came out within `ms`: "resolved", "rejected: <code>", or still pending. */
const outcomeOf = (p: Promise<unknown>, ms = 2000) =>
  Promise.race([
    p.then(() => "resolved", (e: ChatError) => `rejected: ${e.code}`),
    new Promise((r) => setTimeout(() => r(`pending after ${ms} ms`), ms)),
  ]);

const ROOMS_90 = Array.from({ length: 90 }, (_, i) => `room:r${i + 1}`);

Deno.test("client: 90 rooms joined at once, and rejoined after the server drops the socket, are each joined without a flood close", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    await within(Promise.all(ROOMS_90.map((room) => user.client.join(room))), "90 joins", 10_000);
    const synced = () => user.presence.filter((p) => p.action === "sync").length;
    assertEquals(synced(), 90);
    for (const conn of server.app.context.connections) conn.close(4008, "Slow consumer");
    await eventually(() => synced() === 180, 10_000, "the 90 rooms joined again");
    // Until the rejoins are answered, and a little after, nothing closes the socket for them.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(user.states.filter((s) => s.code === 4029), []);
    assertEquals(user.client.state, "open");
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: 100 sends queued while offline are stored once each, in order, paced under the socket's rate", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    await user.client.join("room:q");
    const dropped = new Promise<void>((resolve) => {
      const off = user.client.on("state", (s) => s.state === "reconnecting" && (off(), resolve()));
    });
    for (const conn of server.app.context.connections) conn.close(4008, "Slow consumer");
    await dropped;
    const acks = await within(
      Promise.all(
        Array.from({ length: 100 }, (_, i) => user.client.send("room:q", { body: `q${i}` })),
      ),
      "the acks",
      15_000,
    );
    assertEquals(acks.map((a) => a.seq), Array.from({ length: 100 }, (_, i) => i + 1));
    assertEquals(user.states.filter((s) => s.code === 4029), []);
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: a send made before the welcome that is over the server's frame limit is refused, not written after every reconnect", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "100000" });
  const user = await userClient(server, "1");
  try {
    const connecting = user.client.connect();
    const joining = user.client.join("room:a");
    // Checked against the client's own defaults (10 MiB): the welcome has not come yet.
    const sending = outcomeOf(
      user.client.send("room:a", { files: [{ name: "big.bin", data: new Uint8Array(300_000) }] }),
      4000,
    );
    await connecting;
    await joining;
    assertEquals(await sending, "rejected: frame_too_large");
    assertEquals(user.states.filter((s) => s.code === 1009), []);
    assertEquals(user.client.state, "open");
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: join() after close() or after the server refused the token rejects with closed; a refused join is told by its promise alone", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1", { rooms: ["ticket:1"] });
  const errors: string[] = [];
  user.client.on("error", (e) => errors.push(e.code));
  const refused = new ChatClient({ url: `${server.wsUrl}/ws`, token: "not-a-token" });
  try {
    await user.client.connect();
    assertEquals(await outcomeOf(user.client.join("ticket:2")), "rejected: forbidden");
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(errors, []);
    user.client.close();
    assertEquals(await outcomeOf(user.client.join("ticket:1")), "rejected: closed");
    assertEquals(await outcomeOf(refused.connect()), "rejected: unauthorized");
    assertEquals(await outcomeOf(refused.join("room:a")), "rejected: closed");
  } finally {
    user.client.close();
    refused.close();
    await server.close();
  }
});

Deno.test("client: each reconnect attempt is announced once; a url it cannot connect to is refused by the constructor", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    const from = user.states.length;
    for (const conn of server.app.context.connections) conn.close(4008, "Slow consumer");
    await eventually(() => user.client.state === "open" && user.states.length > from, 5000, "back");
    assertEquals(user.states.slice(from).map((s) => s.state), ["reconnecting", "open"]);
  } finally {
    user.client.close();
    await server.close();
  }
  // Deno has no page to resolve it against.
  const err = assertThrows(() => new ChatClient({ url: "/ws", token: "t" }), TypeError);
  assert(err.message.includes('"/ws" is not a URL'), err.message);
});

Deno.test("client: of rooms joined at once, one the server cannot read fails alone", async () => {
  const server = await startTestServer();
  const user = await userClient(server, "1");
  try {
    await user.client.connect();
    const outcomes = await Promise.all(
      ["room:a", "room:not valid", "room:b"].map((room) => outcomeOf(user.client.join(room))),
    );
    assertEquals(outcomes, ["resolved", "rejected: invalid_frame", "resolved"]);
    assertEquals(user.client.rooms().sort(), ["room:a", "room:b"]);
  } finally {
    user.client.close();
    await server.close();
  }
});

Deno.test("client: a send written before a reconnect that the new welcome's limits no longer take is refused as unconfirmed (it may be stored), one never written as too large", async () => {
  const { c, socket: first } = await scripted();
  try {
    const file = { name: "a.bin", data: new Uint8Array(300_000) };
    const written = outcomeOf(c.client.send("room:x", { files: [file], clientId: "w" }), 3000);
    await first.take("send");
    // Its ack is lost with the connection; the next send is made while the client is away.
    first.drop();
    const queued = outcomeOf(c.client.send("room:x", { files: [file], clientId: "q" }), 3000);
    await eventually(() => FakeSocket.instances.length === 2, 2000, "a reconnect");
    const socket = FakeSocket.instances[1];
    // The server came back with a lower MAX_FILE_BYTES.
    socket.push({
      type: "welcome",
      user: USER,
      conn_id: "y",
      limits: {
        max_body_chars: 20_000,
        max_files: 10,
        max_file_bytes: 100_000,
        max_frame_chars: 200_000,
      },
    });
    assertEquals([await written, await queued], [
      "rejected: send_unconfirmed",
      "rejected: frame_too_large",
    ]);
    assertEquals(socket.sent.filter((f) => f.type === "send"), []);
  } finally {
    c.client.close();
  }
});

Deno.test("client: a url with no WebSocket scheme or host is refused by the constructor", () => {
  for (const url of ["localhost:8000/ws", "ftp://chat.example/ws", "mailto:chat@example.com"]) {
    const err = assertThrows(() => new ChatClient({ url, token: "t" }), TypeError);
    assert(err.message.includes("is not a URL the client can connect to"), err.message);
  }
});

Deno.test("client: a request waiting for the rate's next frame is not held until a failed join's later retry", async () => {
  const { c, socket } = await scripted({ retryMs: 5_000 }, true, {
    // One frame a second: the room's join took the only one.
    limits: {
      max_body_chars: 20_000,
      max_files: 10,
      max_file_bytes: 100_000,
      max_frame_chars: 200_000,
      frames_per_second: 1,
    },
  });
  try {
    const joining = c.client.join("room:y").catch(() => {});
    const join = await socket.take("join");
    socket.push({
      type: "error",
      code: "internal",
      message: "kv hiccup",
      room: "room:y",
      ref: join.ref,
    });
    // Its retry is due in 5 s; the send's frame is due as soon as the rate allows one.
    const asked = Date.now();
    const sending = c.client.send("room:x", { body: "hi", clientId: "s" });
    sending.catch(() => {});
    const send = await socket.take("send").catch(() => null);
    assert(send !== null, "the send waited for the join's retry");
    assert(Date.now() - asked < 2_000, `written after ${Date.now() - asked} ms`);
    socket.push(ackOf(send, 1));
    await sending;
    c.client.close();
    await joining;
  } finally {
    c.client.close();
  }
});

Deno.test("client: frames still arriving while a join is answered keep a connection whose pong is late (behind its replay) open; silence still ends it, and so do frames alone when no reply is due", async () => {
  const { c, socket } = await scripted({ heartbeatMs: 100, timeoutMs: 300 });
  try {
    // A join whose replay is long: no pong comes (it waits behind), but the messages do.
    const joining = c.client.join("room:y", { since: 0 }).catch(() => {});
    await socket.take("join");
    for (let seq = 1; seq <= 12; seq++) {
      socket.push({ type: "message", room: "room:y", seq, body: `m${seq}`, sender: USER });
      await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals(c.states.filter((s) => s.state === "reconnecting"), []);
    assertEquals(FakeSocket.instances.length, 1);
    // Nothing at all, past the timeout: dead.
    await eventually(() => FakeSocket.instances.length === 2, 3000, "a reconnect after silence");
    c.client.close();
    await joining;
  } finally {
    c.client.close();
  }
  // Room traffic alone, no join answered: it says nothing of the uplink.
  const other = await scripted({ heartbeatMs: 100, timeoutMs: 300 });
  try {
    for (let seq = 1; seq <= 10 && FakeSocket.instances.length === 1; seq++) {
      other.socket.push({ type: "message", room: "room:x", seq, body: `m${seq}`, sender: USER });
      await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals(FakeSocket.instances.length, 2, "a dead uplink went unnoticed");
  } finally {
    other.c.client.close();
  }
});

Deno.test("client: a url with a fragment, which WebSockets refuse, is refused by the constructor", () => {
  const err = assertThrows(
    () => new ChatClient({ url: "ws://chat.example/ws#chat", token: "t" }),
    TypeError,
  );
  assert(err.message.includes("is not a URL the client can connect to"), err.message);
});

Deno.test("client: the device's clock stepping back 10 minutes (an NTP correction) stalls no send and stops no typing", async () => {
  // A process of its own: the step is the client's, not the server's.
  await withDataDir(async ({ env, spawn }) => {
    const server = spawn(env);
    const realNow = Date.now;
    const url = `${(await server.url()).replace(/^http/, "ws")}/ws`;
    const client = async (sub: string) => {
      const chat = new ChatClient({
        url,
        token: await signDevToken(TEST_SECRET, { sub, username: `u${sub}` }, "1h"),
      });
      await chat.connect();
      await chat.join("room:clock");
      return chat;
    };
    const [ann, ben] = [await client("1"), await client("2")];
    try {
      assertEquals((await ann.send("room:clock", { body: "before the step" })).seq, 1);
      Date.now = () => realNow() - 10 * 60_000;
      const sent = await Promise.race([
        ann.send("room:clock", { body: "after the step" }).then((m) => m.seq),
        delay(5000).then(() => "still waiting after 5 s"),
      ]);
      assertEquals(sent, 2);
      // Typing on past the server's typing timeout (5 s): renewed all along.
      const until = realNow() + 6500;
      while (realNow() < until) {
        ann.typing("room:clock");
        await delay(150);
      }
      assertEquals(ben.typers("room:clock").map((u) => u.username), ["u1"]);
    } finally {
      Date.now = realNow;
      ann.close();
      ben.close();
    }
  }, { prefix: "client-clock-" });
});

Deno.test("client: a send queued before the device slept past sendExpiryMs is refused send_expired, not sent again (the monotonic clock does not count a sleep)", async () => {
  const port = freePort();
  await withDataDir(async ({ env, spawn }) => {
    let server = spawn(env);
    await server.url();
    const realNow = performance.now.bind(performance);
    // 600 ms stand for the 23 hours, a 700 ms sleep for a weekend's.
    const client = new ChatClient({
      url: `ws://127.0.0.1:${port}/ws`,
      token: await signDevToken(TEST_SECRET, { sub: "1", rooms: ["chat:*"] }),
      sendExpiryMs: 600,
      reconnect: { minDelayMs: 30, maxDelayMs: 200, jitter: 0 },
    });
    try {
      await client.connect();
      await client.join("chat:6");
      await server.kill("SIGTERM");
      await eventually(() => client.state === "reconnecting", 5000, "the reconnect");
      const outcome = client.send("chat:6", { body: "written before the sleep" })
        .then((m) => `stored as seq ${m.seq}`, (e: ChatError) => e.code);
      // Asleep: the monotonic clock stands still, the wall clock goes on.
      const frozen = realNow();
      performance.now = () => frozen;
      await delay(700);
      performance.now = () => realNow() - 700;
      server = spawn(env);
      await server.url();
      assertEquals(await outcome, "send_expired");
    } finally {
      performance.now = realNow;
      client.close();
    }
  }, { prefix: "client-sleep-", extra: { PORT: String(port) } });
});
