/** Our native protocol at /ws: rooms, acks, idempotency, recovery, history, presence, limits. */

import { assert, assertEquals, assertMatch, assertRejects, within } from "./assert.ts";
import {
  adminCall,
  eventually,
  listFiles,
  longCjkHistory,
  sendRawText,
  silentPeer,
  startTestServer,
  TEST_SECRET,
  TestClient,
  type TestServer,
  throttledLink,
} from "./helpers.ts";
import { withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

type Frame = Record<string, unknown>;

async function connect(server: TestServer, claims: object = {}) {
  const token = await server.token({
    sub: "1",
    username: "one",
    rooms: ["ticket:*", "chat:*"],
    ...claims,
  });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  assertEquals((await ws.next()).type, "welcome");
  return ws;
}

async function join(ws: TestClient, room: string, since?: number) {
  ws.send({ type: "join", room, since, ref: `j-${room}` });
  return await ws.next((f) => f.type === "joined" && f.room === room);
}

Deno.test("native: a file's announced mime is the Content-Type its URL serves, read from its bytes where its name says nothing", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    await join(a, "ticket:3");
    const jpeg = new Uint8Array(100).fill(1);
    jpeg.set([0xff, 0xd8, 0xff, 0xe0]);
    const m4v = new Uint8Array(100).fill(2);
    m4v.set([0, 0, 0, 0x18, 0x66, 0x74, 0x79, 0x70, 0x69, 0x73, 0x6f, 0x6d]);
    const files: [string, Uint8Array, string][] = [
      ["IMG_0042", jpeg, "image/jpeg"], // No extension: the bytes say.
      ["holiday.jfif", jpeg, "image/jpeg"], // Windows' name for a saved JPEG.
      ["clip.m4v", m4v, "video/mp4"],
      ["photo.png", jpeg, "image/png"], // The name says: served (and announced) by it.
      ["notes", new TextEncoder().encode("<script>x</script>"), "application/octet-stream"],
    ];
    a.send({
      type: "send",
      room: "ticket:3",
      files: files.map(([name, data]) => ({ name, data: data.toBase64() })),
    });
    const message = await a.next((f) => f.type === "message");
    const attachments = message.attachments as { name: string; mime: string; url: string }[];
    assertEquals(attachments.map((f) => [f.name, f.mime]), files.map(([n, , m]) => [n, m]));
    for (const file of attachments) {
      for (const method of ["GET", "HEAD"]) {
        const res = await fetch(file.url, { method });
        await res.body?.cancel();
        assertEquals(res.headers.get("content-type"), file.mime, `${method} ${file.name}`);
      }
    }
    // A range of a file read for its type still starts where it asks.
    const range = await fetch(attachments[0].url, { headers: { range: "bytes=2-5" } });
    assertEquals(new Uint8Array(await range.arrayBuffer()), jpeg.subarray(2, 6));
    const whole = await fetch(attachments[0].url);
    assertEquals(new Uint8Array(await whole.arrayBuffer()), jpeg);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: sends back to back share commits; replies keep frame order; history after them sees them", async () => {
  // Commits start 300 ms apart: one per send if each waited for its commit, two here.
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const metrics = server.app.context.metrics;
    const a = await connect(server);
    await join(a, "ticket:1");
    const before = metrics.commits;
    const frames = [
      { type: "send", room: "ticket:1", body: "one", ref: 1 },
      { type: "send", room: "ticket:1", body: "two", ref: 2 },
      { type: "send", room: "ticket:9", body: "not joined", ref: 3 },
      { type: "send", room: "ticket:1", body: "three", ref: 4 },
      { type: "send", room: "ticket:1", body: " ", ref: 5 },
      { type: "send", room: "ticket:1", body: "four", ref: 6 },
      { type: "history", room: "ticket:1", ref: 7 },
    ];
    for (const frame of frames) a.send(frame);
    const replies: Frame[] = [];
    for (let i = 0; i < frames.length; i++) replies.push(await a.next((f) => "ref" in f));
    assertEquals(replies.map((r) => [r.ref, r.type, r.seq ?? r.code ?? null]), [
      [1, "ack", 1],
      [2, "ack", 2],
      [3, "error", "not_found"],
      [4, "ack", 3],
      [5, "error", "empty_message"],
      [6, "ack", 4],
      [7, "history", null],
    ]);
    const history = replies[6].messages as Frame[];
    assertEquals(history.map((m) => m.body), ["one", "two", "three", "four"]);
    const commits = metrics.commits - before;
    assert(commits <= 2, `expected the four messages in at most two commits, got ${commits}`);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: send is acknowledged with id and seq, and reaches every member once", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    const b = await connect(server, { sub: "2", username: "two" });
    await join(a, "ticket:1");
    const joined = await join(b, "ticket:1");
    assertEquals(joined.head, 0);
    a.send({ type: "send", room: "ticket:1", body: "hello", client_id: "c1", ref: 7 });
    const ack = await a.next((f) => f.type === "ack");
    assertEquals([ack.ref, ack.room, ack.seq, ack.client_id, ack.duplicate], [
      7,
      "ticket:1",
      1,
      "c1",
      false,
    ]);
    assertMatch(ack.id as string, /^[0-9a-f]{24}$/);
    for (const ws of [a, b]) {
      const m = await ws.next((f) => f.type === "message");
      assertEquals([m.room, m.seq, m.body, m.id, m.client_id], [
        "ticket:1",
        1,
        "hello",
        ack.id,
        "c1",
      ]);
      assertEquals((m.sender as Frame).id, 1);
    }
    // The retry of the same client id gets the original back and nobody sees it twice.
    a.send({ type: "send", room: "ticket:1", body: "hello (retry)", client_id: "c1" });
    const again = await a.next((f) => f.type === "ack");
    assertEquals([again.seq, again.id, again.duplicate], [1, ack.id, true]);
    await b.nothing((f) => f.type === "message");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: one socket in several rooms; leave stops delivery", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    a.send({ type: "join", rooms: ["ticket:1", { room: "chat:9" }] });
    await a.next((f) => f.type === "joined" && f.room === "ticket:1");
    await a.next((f) => f.type === "joined" && f.room === "chat:9");
    a.send({ type: "send", room: "chat:9", body: "in chat" });
    assertEquals((await a.next((f) => f.type === "message")).room, "chat:9");
    a.send({ type: "leave", room: "chat:9", ref: "l" });
    assertEquals(await a.next((f) => f.type === "left"), {
      type: "left",
      room: "chat:9",
      ref: "l",
    });
    a.send({ type: "send", room: "chat:9", body: "nope" });
    const err = await a.next((f) => f.type === "error");
    assertEquals(err.code, "not_found");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: reconnecting with since gets exactly what was missed, in order", async () => {
  const server = await startTestServer();
  try {
    const writer = await connect(server, { sub: "2" });
    await join(writer, "ticket:5");
    let reader = await connect(server);
    await join(reader, "ticket:5");
    for (let i = 1; i <= 3; i++) writer.send({ type: "send", room: "ticket:5", body: `m${i}` });
    let last = 0;
    while (last < 3) last = (await reader.next((f) => f.type === "message")).seq as number;
    await reader.close();
    for (let i = 4; i <= 8; i++) writer.send({ type: "send", room: "ticket:5", body: `m${i}` });
    for (let i = 4; i <= 8; i++) await writer.next((f) => f.type === "ack");
    reader = await connect(server);
    await join(reader, "ticket:5", last);
    writer.send({ type: "send", room: "ticket:5", body: "m9" });
    const seqs: number[] = [];
    while (seqs.length < 6) {
      seqs.push((await reader.next((f) => f.type === "message")).seq as number);
    }
    assertEquals(seqs, [4, 5, 6, 7, 8, 9]);
    await reader.nothing((f) => f.type === "message");
    await reader.close();
    await writer.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a rejoin replaying hundreds of long messages is written as the socket drains, not closed as a slow consumer, in a socket's first room and its fifth; messages sent meanwhile come once, in order", async () => {
  const server = await startTestServer();
  try {
    const chat = server.app.context.chat;
    // A socket's first rooms are written to by the hub itself; the others through the session.
    for (const [room, before] of [["ticket:11", 0], ["ticket:12", 4]] as const) {
      // 5.7 MB of replay: written in one go it passed SLOW_CONSUMER_BYTES (4 MiB) before the
      // reader, on loopback, could read a byte of it.
      const body = "x".repeat(19_000);
      await Promise.all(
        Array.from({ length: 300 }, (_, i) => chat.send(null, room, { body: `${i + 1} ${body}` })),
      );
      const reader = await connect(server);
      for (let i = 0; i < before; i++) await join(reader, `room:other${i}`);
      reader.send({ type: "join", room, since: 0, ref: "j" });
      const seqs: number[] = [];
      let joined = false;
      let live: Promise<unknown> | undefined;
      while (!joined || seqs.length < 320) {
        // Sent while the replay waits for the socket to drain: the others get them live, this
        // socket from the store, as its replay reads on.
        if (seqs.length === 1 && !live) {
          live = Promise.all(
            Array.from({ length: 20 }, (_, i) => chat.send(null, room, { body: `${301 + i}` })),
          );
        }
        const f = await reader.next(() => true, 10_000).catch(async (e) => {
          const { code, reason } = await reader.closed;
          throw new Error(
            `${room}: closed ${code} ${reason} after ${seqs.length} messages: ${
              e.message.slice(0, 60)
            }`,
          );
        });
        if (f.type === "message" && f.room === room) seqs.push(f.seq as number);
        if (f.type === "joined" && f.room === room) joined = true;
      }
      await live;
      assertEquals(seqs, Array.from({ length: 320 }, (_, i) => i + 1), room);
      await reader.nothing((f) => f.type === "message");
      await reader.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("native: past retention the client is told to resync, never left with a silent gap", async () => {
  const server = await startTestServer({ HISTORY_LIMIT: "5" });
  try {
    const a = await connect(server);
    await join(a, "ticket:6");
    for (let i = 1; i <= 12; i++) a.send({ type: "send", room: "ticket:6", body: `m${i}` });
    for (let i = 1; i <= 12; i++) await a.next((f) => f.type === "ack");
    // Retention runs behind the commits: wait until it has dropped what it keeps no more.
    await eventually(async () => (await server.app.context.chat.tail("ticket:6")) === 8, 5000);
    const b = await connect(server);
    // The join's ref goes on its reply (`joined`), not on the resync before it.
    b.send({ type: "join", room: "ticket:6", since: 2, ref: "j6" });
    const resync = await b.next();
    assertEquals(resync, {
      type: "resync",
      room: "ticket:6",
      reason: "history_truncated",
      first_seq: 8,
      head: 12,
    });
    const seqs: number[] = [];
    while (seqs.length < 5) seqs.push((await b.next((f) => f.type === "message")).seq as number);
    assertEquals(seqs, [8, 9, 10, 11, 12]);
    assertEquals((await b.next((f) => f.type === "joined")).ref, "j6");
    // A client ahead of the store (it was reset) is told too.
    const c = await connect(server);
    c.send({ type: "join", room: "ticket:6", since: 99 });
    assertEquals((await c.next()).reason, "ahead_of_history");
    for (const ws of [a, b, c]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a join replays at most REPLAY_LIMIT messages, the rest left to history; rejoins draw on an allowance; a room listed twice is refused", async () => {
  const server = await startTestServer({ REPLAY_LIMIT: "4" });
  try {
    const a = await connect(server);
    await join(a, "ticket:7");
    for (let i = 1; i <= 10; i++) a.send({ type: "send", room: "ticket:7", body: `m${i}` });
    for (let i = 1; i <= 10; i++) await a.next((f) => f.type === "ack");
    const b = await connect(server);
    b.send({ type: "join", room: "ticket:7", since: 0, ref: "j" });
    assertEquals(await b.next(), {
      type: "resync",
      room: "ticket:7",
      reason: "replay_limited",
      first_seq: 7,
      head: 10,
    });
    const seqs: number[] = [];
    while (seqs.length < 4) seqs.push((await b.next((f) => f.type === "message")).seq as number);
    assertEquals(seqs, [7, 8, 9, 10]);
    assertEquals((await b.next()).type, "joined");
    // The ones before first_seq, by history.
    b.send({ type: "history", room: "ticket:7", after: 0, limit: 200, ref: "h" });
    const page = await b.next((f) => f.ref === "h");
    assertEquals((page.messages as Frame[]).map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // Rejoining over and over replays the allowance (ten joins' worth, refilled at one a
    // second) and then next to nothing, not the room again and again.
    const started = performance.now();
    let replayed = 4;
    for (let i = 0; i < 15; i++) {
      b.send({ type: "join", room: "ticket:7", since: 0, ref: `r${i}` });
      for (;;) {
        const f = await b.next();
        if (f.type === "message") replayed++;
        if (f.type === "joined") break;
      }
    }
    const refilled = Math.ceil((performance.now() - started) / 1000 * 4);
    assert(replayed >= 40 && replayed <= 40 + refilled, `${replayed} replayed`);
    // The allowance is the user's: a new socket of theirs gets what refilled since, not a fresh
    // allowance of its own.
    const drained = performance.now();
    const d = await connect(server);
    d.send({ type: "join", room: "ticket:7", since: 0, ref: "d0" });
    let again = 0;
    for (;;) {
      const f = await d.next();
      if (f.type === "message") again++;
      if (f.type === "joined") break;
    }
    const since = Math.floor((performance.now() - drained) / 1000 * 4) + 1;
    assert(again <= Math.min(since, 3), `a new socket of the same user replayed ${again}`);
    // One frame naming a room twice replays it once (another user, with an allowance of theirs).
    const c = await connect(server, { sub: "3" });
    c.send({ type: "join", rooms: [{ room: "ticket:7", since: 8 }, "ticket:7"], ref: "d" });
    assertEquals((await c.next((f) => f.type === "message")).seq, 9);
    assertEquals((await c.next((f) => f.type === "message")).seq, 10);
    assertEquals((await c.next()).type, "joined");
    assertEquals(await c.next(), {
      type: "error",
      code: "invalid_frame",
      message: 'Room "ticket:7" is listed twice',
      room: "ticket:7",
      ref: "d",
    });
    for (const ws of [a, b, c, d]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a limited replay past what retention kept says history_truncated before replay_limited", async () => {
  const server = await startTestServer({ HISTORY_LIMIT: "5", REPLAY_LIMIT: "2" });
  try {
    const a = await connect(server);
    await join(a, "ticket:8");
    for (let i = 1; i <= 10; i++) a.send({ type: "send", room: "ticket:8", body: `m${i}` });
    for (let i = 1; i <= 10; i++) await a.next((f) => f.type === "ack");
    // Retention runs behind the commits: wait until it has dropped what it keeps no more.
    await eventually(async () => (await server.app.context.chat.tail("ticket:8")) === 6, 5000);
    const b = await connect(server);
    b.send({ type: "join", room: "ticket:8", since: 0 });
    const frames: Frame[] = [];
    for (;;) {
      const f = await b.next();
      frames.push(f);
      if (f.type === "joined") break;
    }
    assertEquals(frames.map((f) => [f.type, f.reason ?? f.seq ?? null, f.first_seq ?? null]), [
      ["resync", "history_truncated", 6],
      ["resync", "replay_limited", 9],
      ["message", 9, null],
      ["message", 10, null],
      ["joined", null, null],
    ]);
    for (const ws of [a, b]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a lowered HISTORY_LIMIT drops a room's older messages and files at its next message", async () => {
  // Two servers in turn on one data directory: the KV file and the media directory outlive them.
  const dataDir = await Deno.makeTempDir({ prefix: "chat-retention-" });
  const history = async (ws: TestClient) => {
    ws.send({ type: "history", room: "ticket:9", limit: 100 });
    return ((await ws.next((f) => f.type === "history")).messages as Frame[]).map((m) => m.body);
  };
  try {
    const urls: string[] = [];
    const first = await startTestServer({ DATA_DIR: dataDir });
    try {
      const ws = await connect(first);
      await join(ws, "ticket:9");
      for (let i = 1; i <= 4; i++) {
        const data = new Uint8Array([i, i, i]).toBase64();
        ws.send({
          type: "send",
          room: "ticket:9",
          body: `m${i}`,
          files: [{ name: "f.bin", data }],
        });
        const message = await ws.next((f) => f.type === "message");
        urls.push((message.attachments as Frame[])[0].url as string);
      }
      await ws.close();
    } finally {
      await first.close();
    }
    const onDisk = (url: string) =>
      `${dataDir}/media/${new URL(url).pathname.slice("/media/".length)}`;
    for (const url of urls) await Deno.stat(onDisk(url));
    const second = await startTestServer({ DATA_DIR: dataDir, HISTORY_LIMIT: "2" });
    try {
      const ws = await connect(second);
      await join(ws, "ticket:9");
      assertEquals(
        await history(ws),
        ["m1", "m2", "m3", "m4"],
        "kept until the room's next message",
      );
      ws.send({ type: "send", room: "ticket:9", body: "m5" });
      await ws.next((f) => f.type === "ack");
      await eventually(async () => (await history(ws)).length === 2, 5000, "history trimmed");
      assertEquals(await history(ws), ["m4", "m5"]);
      const at = (url: string) => url.replace(/^http:\/\/[^/]+/, second.url);
      for (const url of urls.slice(0, 3)) {
        await eventually(async () => (await fetch(at(url))).status === 404, 5000, `${url} gone`);
        await assertRejects(() => Deno.stat(onDisk(url)));
      }
      const kept = await fetch(at(urls[3]));
      assertEquals(new Uint8Array(await kept.arrayBuffer()), new Uint8Array([4, 4, 4]));
      await ws.close();
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("native: a room deletion another server's crash cut short is finished by a server still running, whoever holds the media sweep's lease", async () => {
  const server = await startTestServer({}, { mediaSweepMs: 300 });
  try {
    const ws = await connect(server);
    await join(ws, "ticket:4");
    ws.send({ type: "send", room: "ticket:4", body: "m1" });
    await ws.next((f) => f.type === "message");
    // What the other server's purge stored before it was killed: the head it deletes up to. It
    // held the media sweep's lease too, and its lease seems held throughout.
    const kv = await Deno.openKv(`${server.dataDir}/chat.kv`);
    await kv.atomic().max(["purging", "ticket:4"], 1n).commit();
    const lease = setInterval(() => kv.set(["media_sweep"], Date.now()), 50);
    try {
      await eventually(
        async () => {
          ws.send({ type: "history", room: "ticket:4", ref: "h" });
          const page = await ws.next((f) => f.type === "history");
          return (page.messages as Frame[]).length === 0;
        },
        5000,
        "the deleted room's messages to go",
      );
    } finally {
      clearInterval(lease);
      kv.close();
    }
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a rejoin with the epoch of a room being deleted is refused room_deleted, also for a room of the directory and after a retried DELETE's 404; an outsider's made-up epoch gets forbidden", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  const server = await startTestServer({ ADMIN_TOKEN: admin });
  try {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(server.url, admin, method, path, json);
    assertEquals(
      await api("PUT", "/api/rooms/ticket/41", { participants: [{ user_id: "5" }] }),
      201,
    );
    let ws = await connect(server, { sub: "5", rooms: [] });
    const joined = await join(ws, "ticket:41");
    await ws.close();
    // Away (a network change) while the room is deleted: the directory no longer lets it in.
    assertEquals(await api("DELETE", "/api/rooms/ticket/41"), 204);
    // An operator's retry finds no room: it leaves the deletion's note where it was.
    assertEquals(await api("DELETE", "/api/rooms/ticket/41"), 404);
    ws = await connect(server, { sub: "5", rooms: [] });
    ws.send({ type: "join", room: "ticket:41", since: 0, epoch: joined.epoch, ref: "r" });
    const reply = await ws.next((f) => f.ref === "r");
    assertEquals([reply.type, reply.code], ["error", "room_deleted"]);
    await ws.close();
    // Created again: an outsider's made-up epoch learns nothing of the room's deletion.
    assertEquals(
      await api("PUT", "/api/rooms/ticket/41", { participants: [{ user_id: "6" }] }),
      201,
    );
    ws = await connect(server, { sub: "5", rooms: [] });
    ws.send({ type: "join", room: "ticket:41", epoch: 0, ref: "o" });
    const outsider = await ws.next((f) => f.ref === "o");
    assertEquals([outsider.type, outsider.code], ["error", "forbidden"]);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a room deletion a crash cut short is finished when the next server starts", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-purge-" });
  try {
    const first = await startTestServer({ DATA_DIR: dataDir });
    let url: string;
    try {
      const ws = await connect(first);
      await join(ws, "ticket:4");
      const data = new Uint8Array([7, 7, 7]).toBase64();
      ws.send({ type: "send", room: "ticket:4", body: "m1", files: [{ name: "f.bin", data }] });
      url = ((await ws.next((f) => f.type === "message")).attachments as Frame[])[0].url as string;
      await ws.close();
    } finally {
      await first.close();
    }
    // What a purge stores before it deletes anything: the head it deletes up to.
    const kv = await Deno.openKv(`${dataDir}/chat.kv`);
    await kv.atomic().max(["purging", "ticket:4"], 1n).commit();
    kv.close();
    const onDisk = `${dataDir}/media/${new URL(url).pathname.slice("/media/".length)}`;
    await Deno.stat(onDisk);

    const second = await startTestServer({ DATA_DIR: dataDir });
    try {
      const at = url.replace(/^http:\/\/[^/]+/, second.url);
      await eventually(
        async () => {
          const res = await fetch(at);
          await res.body?.cancel();
          return res.status === 404;
        },
        5000,
        "the file of the deleted room",
      );
      await assertRejects(() => Deno.stat(onDisk));
      const ws = await connect(second);
      await join(ws, "ticket:4");
      ws.send({ type: "history", room: "ticket:4", limit: 100 });
      assertEquals((await ws.next((f) => f.type === "history")).messages, []);
      await ws.close();
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("native: a socket closed while its join's access check is under way leaves no presence and no member behind", async () => {
  let checking!: () => void;
  const held = new Promise<void>((r) => checking = r);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const server = await startTestServer({}, {
    access: (inner) => ({
      async canAccess(user, room, options) {
        const ok = await inner.canAccess(user, room, options);
        if (room === "chat:slow") {
          checking();
          await gate;
        }
        return ok;
      },
    }),
  });
  try {
    const { chat, hub } = server.app.context;
    const a = await connect(server, { sub: "5", username: "five" });
    a.send({ type: "join", room: "chat:slow", ref: 1 });
    await held;
    await a.close();
    release();
    // The join goes on after the close: give it time to record what it would.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(await chat.present("chat:slow"), []);
    assertEquals(hub.members("chat:slow").size, 0);
    // Someone joining later does not see the closed socket's user there.
    const b = await connect(server, { sub: "6", username: "six" });
    const joined = await join(b, "chat:slow");
    assertEquals((joined.presence as Frame[]).map((u) => u.id), [6]);
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: history pages by cursor both ways; typing (is_typing true when absent), read and presence events", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    const b = await connect(server, { sub: "2", username: "two" });
    await join(a, "chat:1");
    const joinedB = await join(b, "chat:1");
    assertEquals((joinedB.presence as Frame[]).map((u) => u.id).sort(), [1, 2]);
    assertEquals(await a.next((f) => f.type === "presence"), {
      type: "presence",
      room: "chat:1",
      action: "join",
      user: { id: 2, username: "two", name: null, email: null, profile_image: null, role: null },
    });
    for (let i = 1; i <= 7; i++) a.send({ type: "send", room: "chat:1", body: `m${i}` });
    for (let i = 1; i <= 7; i++) await a.next((f) => f.type === "ack");
    a.send({ type: "history", room: "chat:1", limit: 3 });
    const newest = await a.next((f) => f.type === "history");
    assertEquals((newest.messages as Frame[]).map((m) => m.seq), [5, 6, 7]);
    assertEquals(newest.has_more, true);
    a.send({ type: "history", room: "chat:1", before: 5, limit: 3 });
    assertEquals(
      ((await a.next((f) => f.type === "history")).messages as Frame[]).map((m) => m.seq),
      [2, 3, 4],
    );
    a.send({ type: "history", room: "chat:1", after: 5, limit: 10 });
    const forward = await a.next((f) => f.type === "history");
    assertEquals((forward.messages as Frame[]).map((m) => m.seq), [6, 7]);
    assertEquals(forward.has_more, false);
    // A full page that reaches either end of the history says there is no more.
    for (const [query, seqs] of [[{ before: 4 }, [1, 2, 3]], [{ after: 4 }, [5, 6, 7]]] as const) {
      a.send({ type: "history", room: "chat:1", limit: 3, ...query });
      const page = await a.next((f) => f.type === "history");
      assertEquals([(page.messages as Frame[]).map((m) => m.seq), page.has_more], [seqs, false]);
    }
    a.send({ type: "history", room: "chat:1", after: 3, limit: 3 });
    assertEquals((await a.next((f) => f.type === "history")).has_more, true);
    // A limit outside 1 to 200 is refused, not quietly changed.
    for (const limit of [0, 201, 1000, 2.5, "10"]) {
      a.send({ type: "history", room: "chat:1", limit, ref: `limit ${limit}` });
      assertEquals(await a.next((f) => f.ref === `limit ${limit}`), {
        type: "error",
        code: "invalid_frame",
        message: 'Field "limit" must be a whole number from 1 to 200',
        ref: `limit ${limit}`,
      });
    }
    a.send({ type: "history", room: "chat:1", limit: 200 });
    assertEquals(((await a.next((f) => f.type === "history")).messages as Frame[]).length, 7);

    b.send({ type: "typing", room: "chat:1", is_typing: true });
    assertEquals((await a.next((f) => f.type === "typing")).is_typing, true);
    b.send({ type: "typing", room: "chat:1", is_typing: false });
    assertEquals((await a.next((f) => f.type === "typing")).is_typing, false);
    // is_typing defaults to true (docs/protocol.md).
    b.send({ type: "typing", room: "chat:1" });
    const typing = await a.next((f) => f.type === "typing");
    assertEquals([typing.room, (typing.user as Frame).id, typing.is_typing], ["chat:1", 2, true]);
    b.send({ type: "read", room: "chat:1", seq: 6 });
    assertEquals((await b.next((f) => f.type === "read_ok")).seq, 6);
    const read = await a.next((f) => f.type === "read");
    assertEquals([read.seq, (read.user as Frame).id], [6, 2]);
    // A cursor past the head stops at the head: it could never come back down.
    a.send({ type: "read", room: "chat:1", seq: 999 });
    assertEquals((await a.next((f) => f.type === "read_ok")).seq, 7);
    await b.close();
    const left = await a.next((f) => f.type === "presence");
    assertEquals([left.action, (left.user as Frame).id], ["leave", 2]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a history page of long CJK messages is cut to about 1 MiB, nearest the reader: a steady reader on a modest link is not closed as slow while the room is live, and paging by first_seq or last_seq reads every message once", async () => {
  const server = await startTestServer();
  const link = throttledLink(server.port, 2_000_000);
  try {
    await longCjkHistory(server, "chat:1", 200);
    const token = await server.token({ sub: "1", username: "one", rooms: ["chat:*"] });
    const reader = await TestClient.open(`ws://127.0.0.1:${link.port}/ws?token=${token}`);
    assertEquals((await reader.next()).type, "welcome");
    await join(reader, "chat:1");
    const writer = await connect(server, { sub: "2", username: "two" });
    await join(writer, "chat:1");
    const bytes = (frame: Frame) => new TextEncoder().encode(JSON.stringify(frame)).length;
    const range = (from: number, to: number) =>
      Array.from({ length: to - from + 1 }, (_, i) => from + i);

    // A page of 200 of them was one 12 MB frame, three times SLOW_CONSUMER_BYTES: read at
    // 2 MB/s, it was still mostly unsent when the live messages made the server look.
    reader.send({ type: "history", room: "chat:1", after: 0, limit: 200, ref: "h" });
    for (let i = 1; i <= 40; i++) {
      writer.send({ type: "send", room: "chat:1", body: `live ${i}`, ref: `live ${i}` });
      await new Promise((r) => setTimeout(r, 100));
    }
    const page = await reader.next((f) => f.ref === "h" || f.type === "error", 20_000);
    const live = reader.next((f) => f.body === "live 40", 20_000).then(() => "open", String);
    assertEquals(await Promise.race([live, reader.closed]), "open");
    const seqs = (page.messages as Frame[]).map((m) => m.seq as number);
    assertEquals(page.type, "history");
    assert(seqs.length > 1 && seqs.length < 200, `${seqs.length} messages`);
    assert(bytes(page) <= 1024 * 1024 + 1024, `a page of ${bytes(page)} bytes`);
    assertEquals([page.has_more, page.first_seq, page.last_seq], [true, 1, seqs.at(-1)]);
    assertEquals(seqs, range(1, seqs.length));
    await writer.next((f) => f.ref === "live 40");

    // Pages asked for back to back (a client reading several rooms' at once) go out as the
    // reader takes them: ten at once would be 10 MiB unsent.
    for (let k = 0; k < 10; k++) {
      reader.send({ type: "history", room: "chat:1", before: 200 - 20 * k, limit: 200, ref: k });
    }
    for (let k = 0; k < 10; k++) {
      const p = await reader.next((f) => f.ref === k, 20_000).catch(() => "closed");
      assertEquals(typeof p === "string" ? [p, await reader.closed] : p.has_more, true);
    }

    // Forwards from last_seq: the oldest of each page kept. Backwards from first_seq: the newest.
    let forward: number[] = [];
    let pages = 0;
    for (let after = 0, more = true; more; pages++) {
      writer.send({ type: "history", room: "chat:1", after, limit: 200, ref: `f${after}` });
      const p = await writer.next((f) => f.ref === `f${after}`);
      assert(bytes(p) <= 1024 * 1024 + 1024, `a page of ${bytes(p)} bytes`);
      forward = forward.concat((p.messages as Frame[]).map((m) => m.seq as number));
      [after, more] = [p.last_seq as number, p.has_more as boolean];
    }
    assertEquals(forward, range(1, 240));
    assert(pages > 10, `${pages} pages`);
    let backward: number[] = [];
    for (let before: number | undefined, more = true; more;) {
      writer.send({ type: "history", room: "chat:1", before, limit: 200, ref: `b${before}` });
      const p = await writer.next((f) => f.ref === `b${before}`);
      assert(bytes(p) <= 1024 * 1024 + 1024, `a page of ${bytes(p)} bytes`);
      backward = (p.messages as Frame[]).map((m) => m.seq as number).concat(backward);
      [before, more] = [p.first_seq as number, p.has_more as boolean];
    }
    assertEquals(backward, range(1, 240));
    await reader.close();
    await writer.close();
  } finally {
    await link.close();
    await server.close();
  }
});

Deno.test("native: joined lists the room's read cursors (absent readers' and ours), up to 100 readers", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    const b = await connect(server, { sub: "bob", username: "bob" });
    for (const c of [a, b]) await join(c, "chat:3");
    for (let i = 1; i <= 3; i++) a.send({ type: "send", room: "chat:3", body: `m${i}`, ref: i });
    await a.next((f) => f.ref === 3);
    b.send({ type: "read", room: "chat:3", seq: 2, ref: "r" });
    await b.next((f) => f.ref === "r");
    a.send({ type: "read", room: "chat:3", ref: "r" });
    await a.next((f) => f.ref === "r");
    await b.close();
    // A reload: bob is gone, his cursor is not; ids keep their types (1 a number, bob text).
    const again = await connect(server);
    const joined = await join(again, "chat:3");
    const reads = (joined.reads as Frame[]).toSorted((x, y) =>
      String(x.user_id) < String(y.user_id) ? -1 : 1
    );
    assertEquals(reads, [{ user_id: 1, seq: 3 }, { user_id: "bob", seq: 2 }]);
    assertEquals(
      (await join(await connect(server), "chat:4")).reads,
      [],
      "a room nobody read lists none",
    );
    // A room of more than 100 readers leaves the list out rather than cost each join a read per
    // reader.
    const chat = server.app.context.chat;
    for (let i = 0; i < 101; i++) {
      await chat.markRead({ id: `reader${i}`, username: `r${i}`, grants: [] } as never, "chat:3");
    }
    const crowded = await join(await connect(server), "chat:3");
    assertEquals("reads" in crowded, false);
    for (const c of [a, again]) await c.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a typing tab that closes ends its typing while the user's other tab stays", async () => {
  const server = await startTestServer({ TYPING_TIMEOUT_SECONDS: "30" });
  try {
    const a = await connect(server);
    const typingTab = await connect(server, { sub: "2", username: "two" });
    const otherTab = await connect(server, { sub: "2", username: "two" });
    for (const c of [a, typingTab, otherTab]) await join(c, "chat:1");
    typingTab.send({ type: "typing", room: "chat:1", is_typing: true });
    assertEquals((await a.next((f) => f.type === "typing")).is_typing, true);
    await typingTab.close();
    const stopped = await a.next(
      (f) => f.type === "typing" || (f.type === "presence" && f.action === "leave"),
      3000,
    );
    assertEquals([stopped.type, stopped.is_typing, (stopped.user as Frame).id], [
      "typing",
      false,
      2,
    ]);
    await otherTab.close();
    const left = await a.next((f) => f.type === "presence" && f.action === "leave");
    assertEquals((left.user as Frame).id, 2);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a batch join answers every entry, naming the room of each error, and lists 1 to 100 rooms; malformed files and is_typing are invalid_frame and store nothing", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    a.send({
      type: "join",
      rooms: ["chat:1", "service-chat:9", 42, { room: "chat:2", since: 0 }],
      ref: "batch",
    });
    const replies: Frame[] = [];
    while (replies.length < 4) {
      replies.push(await a.next((f) => f.type === "joined" || f.type === "error"));
    }
    assertEquals(replies.map((f) => [f.type, f.room, f.code, f.ref]), [
      ["joined", "chat:1", undefined, "batch"],
      ["error", "service-chat:9", "forbidden", "batch"],
      ["error", undefined, "invalid_frame", "batch"],
      ["joined", "chat:2", undefined, "batch"],
    ]);
    // 1 to 100 rooms (docs/protocol.md): 100 are each joined, 101 (and none) refused.
    const hundred = Array.from({ length: 100 }, (_, i) => `chat:${i + 1}`);
    a.send({ type: "join", rooms: hundred, ref: "hundred" });
    const joinedRooms = new Set<unknown>();
    while (joinedRooms.size < 100) {
      const f = await a.next((f) => f.ref === "hundred", 20_000);
      assertEquals(f.type, "joined", JSON.stringify(f));
      joinedRooms.add(f.room);
    }
    for (const rooms of [[], [...hundred, "chat:101"]]) {
      a.send({ type: "join", rooms, ref: "size" });
      assertEquals(await a.next((f) => f.ref === "size"), {
        type: "error",
        code: "invalid_frame",
        message: '"rooms" must list 1 to 100 rooms',
        ref: "size",
      });
    }
    const bad: [Frame, string][] = [
      [{ files: "x" }, '"files" must be a list of {name, data}'],
      [{ files: ["x"] }, 'Each entry of "files" must be {name, data}'],
      [{ files: [{ name: "a.txt" }] }, 'Each file needs its base64 "data"'],
    ];
    for (const [fields, message] of bad) {
      a.send({ type: "send", room: "chat:1", body: "with a bad file", ...fields });
      assertEquals(await a.next(), { type: "error", code: "invalid_frame", message });
    }
    // A name with nothing to show is no name, as a blank one is.
    for (const name of ["  ", "/", "\u0000\u202e", "dir/\u200f", "\u200b\u2060\ufeff"]) {
      a.send({ type: "send", room: "chat:1", files: [{ name, data: "QUJD" }] });
      assertEquals(await a.next(), {
        type: "error",
        code: "filename_required",
        message: "Filename is required with a file",
      });
    }
    a.send({ type: "typing", room: "chat:1", is_typing: "no" });
    assertEquals(await a.next(), {
      type: "error",
      code: "invalid_frame",
      message: '"is_typing" must be true or false',
    });
    a.send({ type: "history", room: "chat:1" });
    assertEquals((await a.next((f) => f.type === "history")).messages, []);
    // Chat 7 is `chat:7`, as /ws/chat/007/ and the API take it: `chat:007` is not a room apart.
    a.send({ type: "join", room: "chat:007", ref: "zeros" });
    assertEquals(await a.next(), {
      type: "error",
      code: "invalid_frame",
      message: 'Invalid room "chat:007": write it chat:7',
      ref: "zeros",
    });
    // What a client sent is quoted in an error only in part.
    const long = "x".repeat(100_000);
    for (
      const [frame, message] of [
        [
          { type: "join", room: long },
          `Invalid room "${"x".repeat(64)}…": expected kind:id, e.g. ticket:1`,
        ],
        [{ type: long }, `Unknown type "${"x".repeat(64)}…"`],
        [
          { type: "join", room: "room:.." },
          'Invalid room "room:..": expected kind:id, e.g. ticket:1',
        ],
        [{ type: "join", rooms: "room:a" }, '"rooms" must be a list of rooms or {room, since}'],
        [{ type: 5 }, 'Field "type" must be a string'],
      ] as const
    ) {
      a.send(frame);
      assertEquals(await a.next(), { type: "error", code: "invalid_frame", message });
    }
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: the access_token cookie does not sign in a page of another site (cross-site WebSocket hijacking)", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["chat:*"] });
    const host = new URL(server.url).host;
    const open = (origin: string) =>
      TestClient.open(`${server.wsUrl}/ws`, {
        headers: { cookie: `access_token=${token}`, origin },
      });
    const own = await open(`http://${host}`);
    assertEquals((await own.next()).type, "welcome");
    await own.close();
    const evil = await open("https://evil.example");
    // Refused: closed with 4001, no welcome first.
    const first = await evil.next().then((f) => f.type as string, () => "no frame");
    assertEquals(first, "no frame");
    assertEquals((await evil.closed).code, 4001);
  } finally {
    await server.close();
  }
});

Deno.test("native: errors come with codes; bad token 4001; no access is an error, not a close", async () => {
  const server = await startTestServer();
  try {
    assertEquals((await TestClient.connect(`${server.wsUrl}/ws?token=x`).closed).code, 4001);
    const a = await connect(server, { rooms: ["ticket:1"] });
    const cases: [unknown, string][] = [
      ["{", "invalid_json"],
      [{ type: "fly" }, "invalid_frame"],
      [{ type: "join", room: "nonsense" }, "invalid_frame"],
      [{ type: "join", room: "ticket:2" }, "forbidden"],
      [{ type: "join", room: "ticket:1", since: -1 }, "invalid_frame"],
      [{ type: "history", room: "ticket:2" }, "forbidden"],
    ];
    for (const [frame, code] of cases) {
      a.send(frame);
      const err = await a.next((f) => f.type === "error");
      assertEquals(err.code, code, JSON.stringify(frame));
      assert(typeof err.message === "string" && err.message.length > 0);
    }
    await join(a, "ticket:1");
    a.send({ type: "send", room: "ticket:1", body: "", ref: "e" });
    assertEquals(await a.next((f) => f.type === "error"), {
      type: "error",
      code: "empty_message",
      message: "Message body or file is required",
      ref: "e",
    });
    // A ref is a number, a string of up to 128 characters or null; anything else is refused, not
    // echoed, and nothing is stored.
    a.send({ type: "ping", ref: "r".repeat(128) });
    assertEquals(await a.next(), { type: "pong", ref: "r".repeat(128) });
    for (const ref of ["r".repeat(129), { big: "x".repeat(1000) }, [1, 2]]) {
      a.send({ type: "send", room: "ticket:1", body: "not stored", ref });
      assertEquals(await a.next(), {
        type: "error",
        code: "invalid_frame",
        message: 'Field "ref" must be a number or a string of at most 128 characters',
      });
    }
    // A 64-bit number (a Python or Go client's) would come back as another: refused, not echoed.
    a.send('{"type":"ping","ref":1152921504606846977}');
    assertEquals(await a.next(), {
      type: "error",
      code: "invalid_frame",
      message: 'Field "ref" is a number too large to be read exactly: send it as a string',
    });
    a.send('{"type":"ping","ref":9007199254740991}');
    assertEquals(await a.next(), { type: "pong", ref: 9007199254740991 });
    // Null is no ref (docs/protocol.md), so none comes back.
    a.send({ type: "ping", ref: null });
    assertEquals(await a.next(), { type: "pong" });
    a.send({ type: "history", room: "ticket:1", ref: 2.5 });
    const history = await a.next();
    assertEquals([history.type, history.ref, history.messages], ["history", 2.5, []]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: typing takes none of the sends' tokens: messages written offline with a pause to think in each, sent behind their typing starts and stops, are all taken", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    await join(a, "ticket:1");
    // What a client back online sends at once: a start and a stop around each of 10 pauses in
    // each of 5 messages, 100 typing frames in all, past the burst (40), then the messages.
    for (let i = 0; i < 5; i++) {
      for (let p = 0; p < 10; p++) {
        a.send({ type: "typing", room: "ticket:1" });
        a.send({ type: "typing", room: "ticket:1", is_typing: false });
      }
      a.send({ type: "send", room: "ticket:1", body: `m${i}`, ref: i });
    }
    const answers = [];
    for (let i = 0; i < 5; i++) answers.push((await a.next((f) => f.ref === i)).type);
    assertEquals(answers, ["ack", "ack", "ack", "ack", "ack"]);
    await a.nothing((f) => f.type === "error");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a held key (typing ~30/s) costs no errors and no tokens: the send right after is taken", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    const b = await connect(server, { sub: "3" });
    await join(a, "ticket:1");
    await join(b, "ticket:1");
    for (let i = 0; i < 60; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 33));
      a.send({ type: "typing", room: "ticket:1" });
    }
    a.send({ type: "typing", room: "ticket:1", is_typing: false });
    a.send({ type: "send", room: "ticket:1", body: "after typing", ref: 1 });
    assertEquals((await a.next((f) => f.ref === 1)).type, "ack");
    const told = b.frames.filter((f) => (f as Record<string, unknown>).type === "typing");
    // A start about once a second (the others' indicator needs no more), and the stop.
    assert(told.length >= 2 && told.length <= 5, `typing frames passed on: ${told.length}`);
    await a.nothing((f) => f.type === "error");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a flood of typing alone, past typing's own limit, is closed with 4029 too; nothing is said of the typing it drops", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    await join(a, "ticket:1");
    // Stops are never dropped as repeats: each takes from typing's limit (a burst of 10).
    for (let i = 0; i < 60; i++) a.send({ type: "typing", room: "ticket:1", is_typing: false });
    assertEquals((await within(a.closed, "the close")).code, 4029);
    assertEquals(a.frames.filter((f) => (f as Record<string, unknown>).type === "error"), []);
  } finally {
    await server.close();
  }
});

Deno.test("native: a flood is refused with rate_limited, then closed with 4029", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    const bystander = await connect(server, { sub: "3" });
    await join(a, "ticket:1");
    await join(bystander, "ticket:1");
    for (let i = 0; i < 60; i++) a.send({ type: "ping" });
    assertEquals((await a.next((f) => f.type === "error")).code, "rate_limited");
    assertEquals((await a.closed).code, 4029);
    bystander.send({ type: "send", room: "ticket:1", body: "unaffected" });
    assertEquals((await bystander.next((f) => f.type === "ack")).seq, 1);
    await bystander.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a flood still arriving when the server closes gets its replies and 4029, not a dropped connection", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    // Far more than the server reads before it decides to close: most are still on the way.
    for (let i = 0; i < 400; i++) a.send({ type: "ping", ref: i, pad: "x".repeat(200) });
    const closed = await within(a.closed, "the close");
    assertEquals(closed.code, 4029);
    const frames = a.frames as Frame[];
    assertEquals(frames.filter((f) => f.type === "pong").map((f) => f.ref), [...Array(10).keys()]);
    assertEquals(frames.at(-1)?.code, "rate_limited");
  } finally {
    await server.close();
  }
});

Deno.test("native: a closing socket waits for its peer to stop sending, but not through a large frame", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    // A peer that never stops: the close would wait its longest (2 s) for quiet.
    const ticker = setInterval(() => a.send({ type: "ping" }), 20);
    try {
      for (let i = 0; i < 40; i++) a.send({ type: "ping" });
      await a.next((f) => f.code === "rate_limited");
      await new Promise((r) => setTimeout(r, 100));
      // Deno would hold a buffer this large for the socket, out of the frame budget's sight.
      a.send({ type: "ping", pad: "x".repeat(200_000) });
      // Closed under a peer still sending, so with whatever code got through.
      await within(a.closed, "the close", 1500);
    } finally {
      clearInterval(ticker);
    }
  } finally {
    await server.close();
  }
});

Deno.test("native: a send's files are named in KV until its commit, so that a crash before it cannot leave them unowned", async () => {
  // The first commit starts at once, the next 1 s later: the second send waits in between.
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "1000",
  });
  const kv = await Deno.openKv(`${server.dataDir}/chat.kv`);
  const pending = async () =>
    (await Array.fromAsync(kv.list<{ files: { name: string }[] }>({ prefix: ["files_pending"] })))
      .flatMap((e) => e.value.files.map((f) => f.name));
  try {
    const a = await connect(server);
    await join(a, "ticket:7");
    const data = new TextEncoder().encode("x").toBase64();
    a.send({ type: "send", room: "ticket:7", body: "first", ref: 0 });
    a.send({
      type: "send",
      room: "ticket:7",
      files: [{ name: "a.txt", data }],
      client_id: "c",
      ref: 1,
    });
    await eventually(async () => (await pending()).length === 1, 900, "the named file");
    assertEquals((await pending()).map((name) => name.replace(/_[0-9a-f]{32}\./, ".")), ["a.txt"]);
    assertEquals((await a.next((f) => f.ref === 1)).duplicate, false);
    assertEquals(await pending(), [], "the commit took the name off");
    // A repeat's files are its own to delete, and so is their entry.
    a.send({
      type: "send",
      room: "ticket:7",
      files: [{ name: "b.txt", data }],
      client_id: "c",
      ref: 2,
    });
    assertEquals((await a.next((f) => f.ref === 2)).duplicate, true);
    assertEquals(await pending(), []);
    assertEquals(
      (await listFiles(`${server.dataDir}/media`)).map((n) => n.replace(/_[0-9a-f]{32}\./, ".")),
      ["native/ticket_7/a.txt"],
    );
    await a.close();
  } finally {
    kv.close();
    await server.close();
  }
});

Deno.test("native: a flood of malformed frames is refused with rate_limited, then closed with 4029", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await connect(server);
    for (let i = 0; i < 60; i++) a.send(i % 2 ? "not json" : `{"type":"ping","ref":${i}`);
    // Closed by the flood itself, not on a later well-formed frame.
    assertEquals((await within(a.closed, "the close")).code, 4029);
    const codes = (a.frames as Frame[]).filter((f) => f.type === "error").map((f) => f.code);
    assertEquals(codes.slice(0, 10), Array(10).fill("invalid_json"));
    assert(codes.includes("rate_limited"), "no frame was refused as rate limited before the close");
    assert(codes.length < 60, "every malformed frame was answered");
  } finally {
    await server.close();
  }
});

Deno.test("native: a flood of sends is closed with 4029 only after the acks of the sends it queued", async () => {
  // Commits start 300 ms apart, so the accepted sends are still committing when the flood
  // is told to close: their acks must come first, or the client cannot know what was stored.
  const server = await startTestServer({
    RATE_LIMIT_PER_SECOND: "5",
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const a = await connect(server);
    await join(a, "ticket:1");
    for (let i = 0; i < 40; i++) a.send({ type: "send", room: "ticket:1", body: `m${i}`, ref: i });
    assertEquals((await a.closed).code, 4029);
    const replies = a.frames.filter((f) => "ref" in (f as Frame)) as Frame[];
    const acks = replies.filter((f) => f.type === "ack");
    assert(acks.length > 0, "no send was accepted before the flood was refused");
    assert(replies.some((f) => f.code === "rate_limited"), "no send was refused before the close");
    // Every send made before the close got its reply, in order, and each ack names a stored seq.
    assertEquals(replies.map((f) => f.ref), replies.map((_, i) => i));
    assertEquals(acks.map((f) => f.seq), acks.map((_, i) => i + 1));
  } finally {
    await server.close();
  }
});

Deno.test("native: frames that waited behind a slow commit are rate limited as they were sent, not all at once", async () => {
  // The second send's commit starts 3 s after the first; the pings after it wait for it (they
  // answer after what the sends did). 4 a second is under the limits of 5 (bursts up to 10),
  // the user's too, with a frame from another socket of theirs in between.
  const server = await startTestServer({
    RATE_LIMIT_PER_SECOND: "5",
    RATE_LIMIT_USER_PER_SECOND: "5",
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "3000",
  });
  try {
    const a = await connect(server);
    const b = await connect(server);
    await join(a, "ticket:1");
    a.send({ type: "send", room: "ticket:1", body: "first", ref: "s0" });
    await a.next((f) => f.type === "ack");
    a.send({ type: "send", room: "ticket:1", body: "second", ref: "s1" });
    for (let i = 0; i < 16; i++) {
      await new Promise((r) => setTimeout(r, 250));
      a.send({ type: "ping", ref: i });
      if (i === 10) b.send({ type: "ping", ref: "b" });
    }
    assertEquals((await b.next((f) => f.ref === "b")).type, "pong");
    const pongs = [];
    while (pongs.length < 16) {
      const reply = await a.next((f) => typeof f.ref === "number", 10_000);
      assertEquals(reply.type, "pong", JSON.stringify(reply));
      // They did wait: the second send's ack came before the first pong.
      if (pongs.length === 0) assert(a.frames.some((f) => (f as Frame).ref === "s1"));
      pongs.push(reply.ref);
    }
    assertEquals(pongs, Array.from({ length: 16 }, (_, i) => i));
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: welcome tells what one send may carry, by the server's MAX_FILE_BYTES, the socket's rate and the heartbeat", async () => {
  const server = await startTestServer({
    MAX_FILE_BYTES: "1000",
    HEARTBEAT_SECONDS: "7",
    RATE_LIMIT_PER_SECOND: "25",
  });
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    const welcome = await ws.next();
    assertEquals([welcome.type, welcome.limits], ["welcome", {
      max_body_chars: 20_000,
      max_files: 10,
      max_file_bytes: 1000,
      max_frame_chars: 66944,
      frames_per_second: 25,
      user_frames_per_second: 50,
    }]);
    assertEquals(welcome.heartbeat_ms, 7000);
    // The frame limit told is the one kept: one character more is refused.
    const frame = { type: "ping", pad: "" };
    frame.pad = "x".repeat(66944 - JSON.stringify(frame).length);
    ws.send(frame);
    assertEquals((await ws.next()).type, "pong");
    frame.pad += "x";
    ws.send(frame);
    assertEquals((await within(ws.closed, "the close")).code, 1009);
  } finally {
    await server.close();
  }
});

Deno.test("native: a frame over the size cap is refused with close 1009", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "1000" });
  try {
    const a = await connect(server);
    a.send({ type: "ping", pad: "x".repeat(100_000) });
    assertEquals((await a.closed).code, 1009);
    // Told why before the close, in the protocol's error shape.
    assertEquals((a.frames as Frame[]).map((f) => [f.type, f.code]), [[
      "error",
      "frame_too_large",
    ]]);
    assertMatch(
      (a.frames as Frame[])[0].message as string,
      /^Message is too large: 1000\d\d characters, the limit is 66944$/,
    );
    assertEquals(server.app.context.metrics.errors.get("frame_too_large"), 1);
    const b = await connect(server);
    b.send({ type: "ping" });
    assertEquals((await b.next()).type, "pong");
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: sends made before an oversized frame get their replies before the 1009 close", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "1000" });
  try {
    const a = await connect(server);
    await join(a, "ticket:4");
    for (let i = 0; i < 3; i++) a.send({ type: "send", room: "ticket:4", body: `m${i}`, ref: i });
    a.send({ type: "ping", pad: "x".repeat(100_000) });
    a.send({ type: "send", room: "ticket:4", body: "after", ref: 9 });
    assertEquals((await a.closed).code, 1009);
    const acks = (a.frames as Frame[]).filter((f) => f.type === "ack");
    assertEquals(acks.map((f) => [f.ref, f.seq]), [[0, 1], [1, 2], [2, 3]]);
    // The refusal is the last thing said, after the replies to the frames before it.
    assertEquals((a.frames as Frame[]).at(-1)?.code, "frame_too_large");
    // Only the three sends before it were stored.
    const b = await connect(server);
    b.send({ type: "history", room: "ticket:4", ref: 1 });
    const history = (await b.next((f) => f.type === "history")).messages as Frame[];
    assertEquals(history.map((m) => m.body), ["m0", "m1", "m2"]);
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: file sends one at a time pass INBOUND_QUEUE_BYTES; a burst past it is answered up to the refused frame, stored exactly so, then closed 1008", async () => {
  // 200 kB frames against the bound's floor: one largest frame (265 kB) and 64 KiB. Commits start
  // 300 ms apart, so a frame that waits for an earlier send's reply waits that long.
  const server = await startTestServer({
    MAX_FILE_BYTES: "150000",
    INBOUND_QUEUE_BYTES: "1",
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const a = await connect(server);
    await join(a, "ticket:6");
    const data = new Uint8Array(150_000).fill(7).toBase64();
    const sendFile = (i: number) =>
      a.send({
        type: "send",
        room: "ticket:6",
        body: `m${i}`,
        files: [{ name: `f${i}.bin`, data }],
        ref: i,
      });
    // One file at a time, with a ping sent while each is handled: nothing is refused.
    for (let i = 0; i < 3; i++) {
      sendFile(i);
      a.send({ type: "ping", ref: 100 + i });
      assertEquals((await a.next((f) => f.ref === i)).type, "ack");
      assertEquals((await a.next((f) => f.ref === 100 + i)).type, "pong");
    }
    // A burst: the ping waits for m3's commit, so the files behind it pile up past the bound.
    sendFile(3);
    a.send({ type: "ping", ref: 103 });
    for (let i = 4; i < 12; i++) sendFile(i);
    await eventually(() => a.socket.readyState === WebSocket.CLOSED, 5000, "the close");
    assertEquals(await a.closed, { code: 1008, reason: "Too much data queued" });
    assertEquals((a.frames as Frame[]).at(-1), {
      type: "error",
      code: "rate_limited",
      message: "Too much data queued: send the next message after the reply to the last one",
    });
    // Every frame before the refused one got its reply, in order; none after it was read.
    const replies = (a.frames as Frame[]).filter((f) => typeof f.ref === "number");
    const acked = replies.filter((f) => f.type === "ack").map((f) => f.ref as number);
    assertEquals(replies.map((f) => f.ref), [3, 103, ...acked.slice(1)]);
    assertEquals(acked, acked.map((_, i) => i + 3));
    assert(acked.length < 9, "every file of the burst was taken");
    assertEquals(server.app.context.metrics.errors.get("too_much_queued"), 1);
    // History and the media directory hold exactly the acknowledged sends.
    const stored = 3 + acked.length;
    const b = await connect(server);
    b.send({ type: "history", room: "ticket:6", ref: 1, limit: 100 });
    const history = (await b.next((f) => f.type === "history")).messages as Frame[];
    assertEquals(history.map((m) => m.body), Array.from({ length: stored }, (_, i) => `m${i}`));
    assertEquals((await listFiles(`${server.dataDir}/media`)).length, stored);
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a reader that stops reading is closed with 4008; memory stays bounded; others unaffected", async () => {
  const server = await startTestServer({
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
    SLOW_CONSUMER_BYTES: String(1024 * 1024),
  });
  try {
    const token = await server.token({ sub: "9", rooms: ["ticket:*"] });
    // A raw socket that joins and then never reads again.
    const conn = await silentPeer(server.port, `/ws?token=${token}`);
    await sendRawText(conn, JSON.stringify({ type: "join", room: "ticket:3" }));
    await eventually(() => server.app.context.hub.members("ticket:3").size === 1, 3000, "join");

    const writer = await connect(server);
    const healthy = await connect(server, { sub: "4" });
    await join(writer, "ticket:3");
    await join(healthy, "ticket:3");
    const body = "y".repeat(19_000);
    let acked = 0;
    // 2,000 messages of 19 kB would be 38 MB for the stalled reader: far past any kernel buffer.
    while (acked < 2000 && server.app.context.hub.members("ticket:3").size === 3) {
      for (let i = 0; i < 25; i++) writer.send({ type: "send", room: "ticket:3", body });
      for (let i = 0; i < 25; i++) await writer.next((f) => f.type === "ack");
      acked += 25;
    }
    await eventually(() => server.app.context.hub.members("ticket:3").size === 2, 5000, "eviction");
    assert(acked < 2000, "the stalled reader was never closed");
    // The healthy reader got every message.
    const seqs = new Set<number>();
    while (seqs.size < acked) {
      seqs.add((await healthy.next((f) => f.type === "message")).seq as number);
    }
    assertEquals(seqs.size, acked);
    conn.close();
    await writer.close();
    await healthy.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a socket's first four rooms are written to directly, later ones through its own send, and all get every message", async () => {
  const server = await startTestServer();
  try {
    const hub = server.app.context.hub;
    const a = await connect(server);
    const rooms = Array.from({ length: 6 }, (_, i) => `ticket:${70 + i}`);
    for (const room of rooms) await join(a, room);
    const direct = rooms.map((room) => [...hub.members(room)].every((m) => m.direct));
    assertEquals(direct, [true, true, true, true, false, false]);
    // Leaving one of the first four and joining again: still at most four direct.
    a.send({ type: "leave", room: rooms[0] });
    await eventually(() => hub.members(rooms[0]).size === 0, 3000, "leave");
    await join(a, rooms[0]);
    assertEquals([...hub.members(rooms[0])].every((m) => !m.direct), true);
    const b = await connect(server, { sub: "2" });
    for (const room of rooms) await join(b, room);
    for (const room of rooms) {
      b.send({ type: "send", room, body: `in ${room}`, client_id: room });
      assertEquals(
        (await a.next((f) => f.type === "message" && f.room === room)).body,
        `in ${room}`,
      );
    }
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: an empty file is a file, stored and served with no bytes", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    await join(a, "chat:1");
    a.send({ type: "send", room: "chat:1", files: [{ name: "empty.txt", data: "" }], ref: "e" });
    const ack = await a.next((f) => f.ref === "e");
    assertEquals(ack.type, "ack", JSON.stringify(ack));
    const shown = await a.next((f) => f.type === "message");
    const file = (shown.attachments as Frame[])[0];
    assertEquals([file.name, file.size], ["empty.txt", 0]);
    const served = await fetch(file.url as string);
    assertEquals([served.status, (await served.arrayBuffer()).byteLength], [200, 0]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: sends (and a join) a client made just before closing its socket are stored, behind a slow frame", async () => {
  let held: { checking: () => void; gate: Promise<void> } | undefined;
  const server = await startTestServer({}, {
    access: (inner) => ({
      async canAccess(user, room, options) {
        const hold = held;
        if (hold && !options?.fresh && String(user.id) === "1") {
          held = undefined;
          hold.checking();
          await hold.gate;
        }
        return await inner.canAccess(user, room, options);
      },
    }),
  });
  try {
    const sender = await connect(server);
    await join(sender, "ticket:3");
    const observer = await connect(server, { sub: "2", username: "two" });
    await join(observer, "ticket:3");
    await join(observer, "ticket:4");
    let checking = () => {};
    let release = () => {};
    const checked = new Promise<void>((r) => checking = r);
    held = { checking, gate: new Promise<void>((r) => release = r) };
    // The first send's access check is slow; everything after it waits its turn.
    sender.send({ type: "send", room: "ticket:3", body: "in flight", client_id: "a" });
    sender.send({ type: "send", room: "ticket:3", body: "behind it", client_id: "b" });
    sender.send({ type: "join", room: "ticket:4", ref: "late join" });
    sender.send({ type: "send", room: "ticket:4", body: "after the join", client_id: "c" });
    sender.send({ type: "leave", room: "ticket:3", ref: "left" });
    sender.send({ type: "send", room: "ticket:3", body: "after leaving", client_id: "d" });
    await checked;
    sender.socket.close(1000);
    await sender.closed;
    release();
    const bodies = async (room: string) => {
      const got: unknown[] = [];
      for (;;) {
        const f = await observer.next((f) => f.type === "message" && f.room === room, 1500)
          .catch(() => undefined);
        if (!f) return got;
        got.push(f.body);
      }
    };
    assertEquals(await bodies("ticket:3"), ["in flight", "behind it"]);
    assertEquals(await bodies("ticket:4"), ["after the join"]);
    await observer.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a long frame nested deeper than any frame needs is refused as too complex, and the socket goes on", async () => {
  const server = await startTestServer();
  try {
    const ws = await connect(server);
    await join(ws, "ticket:5");
    const padding = "A".repeat(300_000);
    const deep = "[".repeat(100) + "]".repeat(100);
    ws.socket.send(
      `{"type":"send","room":"ticket:5","body":"deep","ref":"deep","x":${deep},"pad":"${padding}"}`,
    );
    // Unparsed, its `ref` is unknown: the error carries none.
    const refused = await ws.next((f) => f.type === "error");
    assertEquals(refused.code, "invalid_json");
    assertMatch(String(refused.message), /^JSON too complex: at most 64 levels/);
    ws.send({ type: "send", room: "ticket:5", body: "plain", ref: "plain" });
    assertEquals((await ws.next((f) => f.ref === "plain")).type, "ack");
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a file is stored under its name with a random tag, so its URL cannot be guessed from the name", async () => {
  const server = await startTestServer();
  try {
    const ws = await connect(server);
    await join(ws, "ticket:6");
    const bytes = crypto.getRandomValues(new Uint8Array(500));
    ws.send({
      type: "send",
      room: "ticket:6",
      files: [{ name: "passport scan.pdf", data: bytes.toBase64() }],
      ref: "f",
    });
    assertEquals((await ws.next((f) => f.ref === "f")).type, "ack");
    const message = await ws.next((f) => f.type === "message");
    const [file] = message.attachments as { name: string; url: string }[];
    assertEquals(file.name, "passport scan.pdf");
    assertMatch(file.url, /\/media\/native\/ticket_6\/passport%20scan_[0-9a-f]{32}\.pdf$/);
    assertEquals(new Uint8Array(await (await fetch(file.url)).arrayBuffer()), bytes);
    const guessed = await fetch(`${server.url}/media/native/ticket_6/passport%20scan.pdf`);
    await guessed.body?.cancel();
    assertEquals(guessed.status, 404);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a rejoin refused for access takes the socket out of the room it was in, with removed", async () => {
  let refusing = false;
  const server = await startTestServer({}, {
    access: (inner) => ({
      canAccess: (user, room, options) =>
        refusing && String(user.id) === "1"
          ? Promise.resolve(false)
          : inner.canAccess(user, room, options),
    }),
  });
  try {
    const ws = await connect(server);
    await join(ws, "ticket:8");
    refusing = true;
    ws.send({ type: "join", room: "ticket:8", since: 0, ref: "again" });
    const removed = await ws.next((f) => f.type === "removed" || f.ref === "again");
    assertEquals(removed, { type: "removed", room: "ticket:8", reason: "access_revoked" });
    const refused = await ws.next((f) => f.ref === "again");
    assertEquals([refused.type, refused.code], ["error", "forbidden"]);
    // Out of the room: it hears nothing of it, and may not send there.
    ws.send({ type: "send", room: "ticket:8", body: "still here?", ref: "s" });
    assertEquals((await ws.next((f) => f.ref === "s")).code, "not_found");
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a client_id with a lone surrogate is refused, so two such ids are never taken for one", async () => {
  const server = await startTestServer();
  try {
    const ws = await connect(server);
    await join(ws, "ticket:9");
    // JSON escapes keep the lone surrogates as they are until the server parses them.
    ws.socket.send(`{"type":"send","room":"ticket:9","body":"a","client_id":"\\ud800","ref":1}`);
    const refused = await ws.next((f) => f.ref === 1);
    assertEquals([refused.code, refused.message], [
      "invalid_frame",
      "client_id must be well-formed Unicode",
    ]);
    ws.socket.send(`{"type":"send","room":"ticket:9","body":"b","client_id":"\\ufffd","ref":2}`);
    assertEquals((await ws.next((f) => f.ref === 2)).duplicate, false);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: past its token's exp a socket keeps its rooms (sends, deliveries, history) but a join or another room's history closes it with 4001", async () => {
  const server = await startTestServer();
  try {
    const claims = { sub: "1", username: "one", rooms: ["ticket:*"] };
    // Expired, with the verifier's 5 s of clock tolerance, 6 s from now.
    const token = await server.token(claims, "1s");
    const open = async () => {
      const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
      assertEquals((await ws.next()).type, "welcome");
      return ws;
    };
    const [ws, joiner] = [await open(), await open()];
    await join(ws, "ticket:71");
    const other = await connect(server, { sub: "2" });
    await join(other, "ticket:71");
    await new Promise((r) => setTimeout(r, 6500));
    // The room it is in stays.
    ws.send({ type: "send", room: "ticket:71", body: "still here", ref: 1 });
    assertEquals((await ws.next((f) => f.type === "ack")).ref, 1);
    other.send({ type: "send", room: "ticket:71", body: "to you", ref: 2 });
    const delivered = await ws.next((f) => f.type === "message" && f.body === "to you");
    assertEquals(delivered.room, "ticket:71");
    ws.send({ type: "history", room: "ticket:71", ref: 3 });
    assertEquals(((await ws.next((f) => f.type === "history")).messages as Frame[]).length, 2);
    // Another room it is not in: the expired token opens nothing more.
    ws.send({ type: "history", room: "ticket:72", ref: 4 });
    assertEquals(await ws.closed, { code: 4001, reason: "Token expired" });
    joiner.send({ type: "join", room: "ticket:73", ref: 5 });
    assertEquals(await joiner.closed, { code: 4001, reason: "Token expired" });
    // As a new socket with it is refused.
    const again = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    assertEquals((await again.closed).code, 4001);
    await other.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a client ahead of the store is told first_seq and gets the room rebuilt from it", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    a.send({ type: "join", room: "ticket:9" });
    await a.next((f) => f.type === "joined");
    for (let i = 1; i <= 3; i++) a.send({ type: "send", room: "ticket:9", body: `m${i}` });
    for (let i = 1; i <= 3; i++) await a.next((f) => f.type === "ack");
    const c = await connect(server, { sub: "2" });
    c.send({ type: "join", room: "ticket:9", since: 99 });
    assertEquals(await c.next(), {
      type: "resync",
      room: "ticket:9",
      reason: "ahead_of_history",
      first_seq: 1,
      head: 3,
    });
    const seqs: unknown[] = [];
    for (let i = 0; i < 3; i++) seqs.push((await c.next((f) => f.type === "message")).seq);
    assertEquals(seqs, [1, 2, 3]);
    await c.next((f) => f.type === "joined");
    await a.close();
    await c.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: typing and read events go to the other members only, not back to the sender", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server, { sub: "1" });
    const b = await connect(server, { sub: "2" });
    for (const ws of [a, b]) {
      ws.send({ type: "join", room: "ticket:4" });
      await ws.next((f) => f.type === "joined");
    }
    a.send({ type: "send", room: "ticket:4", body: "x" });
    await a.next((f) => f.type === "ack");
    a.send({ type: "typing", room: "ticket:4" });
    await b.next((f) => f.type === "typing");
    a.send({ type: "read", room: "ticket:4", seq: 1 });
    await a.next((f) => f.type === "read_ok");
    await b.next((f) => f.type === "read");
    await a.nothing((f) => f.type === "typing" || f.type === "read");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a read reaches the reader's other sockets (their other devices) as well as the other members, but not the socket that sent it; typing does not", async () => {
  const server = await startTestServer();
  try {
    const phone = await connect(server, { sub: "1" });
    const laptop = await connect(server, { sub: "1" });
    const ben = await connect(server, { sub: "2", username: "ben" });
    for (const ws of [phone, laptop, ben]) await join(ws, "ticket:4");
    ben.send({ type: "send", room: "ticket:4", body: "are you there?" });
    await ben.next((f) => f.type === "ack");
    phone.send({ type: "typing", room: "ticket:4" });
    await ben.next((f) => f.type === "typing");
    phone.send({ type: "read", room: "ticket:4", seq: 1 });
    assertEquals((await phone.next((f) => f.type === "read_ok")).seq, 1);
    const onLaptop = await laptop.next((f) => f.type === "read");
    assertEquals([onLaptop.room, (onLaptop.user as Frame).id, onLaptop.seq], ["ticket:4", 1, 1]);
    await ben.next((f) => f.type === "read");
    await phone.nothing((f) => f.type === "typing" || f.type === "read");
    await laptop.nothing((f) => f.type === "typing");
    for (const ws of [phone, laptop, ben]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("native: a read on one server reaches the reader's socket on another server of the same KV file", async () => {
  await withDataDir(async ({ env, clients, spawn }) => {
    const [urlA, urlB] = await Promise.all([spawn(env).url(), spawn(env).url()]);
    const token = await signDevToken(TEST_SECRET, {
      sub: "1",
      username: "one",
      rooms: ["ticket:*"],
    });
    const open = async (url: string) => {
      const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
      clients.push(ws);
      assertEquals((await ws.next()).type, "welcome");
      await join(ws, "ticket:4");
      return ws;
    };
    const phone = await open(urlA);
    const laptop = await open(urlB);
    phone.send({ type: "send", room: "ticket:4", body: "a note to self" });
    await phone.next((f) => f.type === "ack");
    await laptop.next((f) => f.type === "message");
    phone.send({ type: "read", room: "ticket:4", seq: 1 });
    await phone.next((f) => f.type === "read_ok");
    const onLaptop = await laptop.next((f) => f.type === "read", 10_000);
    assertEquals([(onLaptop.user as Frame).id, onLaptop.seq], [1, 1]);
    await phone.nothing((f) => f.type === "read");
  }, { prefix: "native-reads-" });
});

Deno.test("native: a null ref counts as none: no reply echoes it", async () => {
  const server = await startTestServer();
  try {
    const a = await connect(server);
    const requests: [Frame, string][] = [
      [{ type: "join", room: "ticket:1", since: 0 }, "joined"],
      [{ type: "join", rooms: ["ticket:2"] }, "joined"],
      [{ type: "send", room: "ticket:1", body: "hi", client_id: "n1" }, "ack"],
      [{ type: "history", room: "ticket:1" }, "history"],
      [{ type: "read", room: "ticket:1" }, "read_ok"],
      [{ type: "ping" }, "pong"],
      [{ type: "leave", room: "ticket:2" }, "left"],
      [{ type: "send", room: "ticket:9", body: "not joined" }, "error"],
    ];
    for (const [request, reply] of requests) {
      a.send({ ...request, ref: null });
      const answer = await a.next((f) => f.type === reply);
      assert(!("ref" in answer), `${request.type}: ${JSON.stringify(answer)}`);
    }
  } finally {
    await server.close();
  }
});
