/** The ticket socket (shared/specs/ticket-socket.md) end to end against a real server. */

import { assert, assertEquals, assertMatch, assertRejects, delay, within } from "./assert.ts";
import {
  eventually,
  listFiles,
  sendRawText,
  silentPeer,
  startTestServer,
  TestClient,
  type TestServer,
} from "./helpers.ts";
import * as jose from "jose";

const MiB = 1024 * 1024;

async function withServer(fn: (s: TestServer) => Promise<void>, env: Record<string, string> = {}) {
  const server = await startTestServer(env);
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

async function ticketClient(server: TestServer, ticket: string | number, claims: object) {
  const token = await server.token({ rooms: [`ticket:${ticket}`], ...claims });
  return await TestClient.open(`${server.wsUrl}/ws/ticket/${ticket}/?token=${token}`);
}

/** Whether a socket of `token`'s user is let into the ticket (not closed within 300 ms). */
async function admitted(server: TestServer, ticket: number, token: string): Promise<boolean> {
  const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/${ticket}/?token=${token}`);
  const outcome = await Promise.race([ws.closed, delay(300).then(() => "open")]);
  await ws.close();
  return outcome === "open";
}

Deno.test("ticket socket: two users both receive a text message in the documented shape", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 1, {
      sub: "3",
      username: "user3",
      phone: "09123456789",
      profile_image: "http://cdn.example/p.png",
    });
    const b = await ticketClient(server, 1, { sub: "4", username: "user4" });
    a.send({ body: "Hello, this is a test message" });
    for (const client of [a, b]) {
      const msg = await client.next();
      assertEquals(Object.keys(msg).sort(), ["body", "created_at", "file", "pk", "sender"]);
      assertEquals(msg.body, "Hello, this is a test message");
      assertEquals(msg.pk, 1);
      assertEquals(msg.file, null);
      assertEquals(msg.sender, {
        id: 3,
        username: "user3",
        phone: "09123456789",
        profile_image: "http://cdn.example/p.png",
      });
      assertMatch(msg.created_at as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    }
    b.send({ body: "reply", file: "" });
    assertEquals((await a.next()).pk, 2);
    assertEquals((await b.next()).body, "reply");
    await a.close();
    await b.close();
  });
});

Deno.test("ticket socket: a file message reaches both users and its URL serves the exact bytes", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 7, { sub: 3, username: "user3" });
    const b = await ticketClient(server, 7, { sub: 4, username: "user4" });
    const bytes = new Uint8Array(200_000).map((_, i) => (i * 7919) % 256);
    bytes.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    a.send({ body: "", file: bytes.toBase64(), filename: "example.png" });
    const seen = [await a.next(), await b.next()];
    assertEquals(seen[0], seen[1]);
    // The client's name, in a folder of its own nobody can guess.
    assertMatch(
      seen[0].file as string,
      new RegExp(`^${server.url}/media/files/ticket_7/[0-9a-f]{32}/example\\.png$`),
    );
    const res = await fetch(seen[0].file as string);
    assertEquals(res.status, 200);
    assertEquals(res.headers.get("content-type"), "image/png");
    assertEquals(res.headers.get("x-content-type-options"), "nosniff");
    // Browsers may keep it; shared caches may not, or a deleted room's files would outlive it.
    assertEquals(res.headers.get("cache-control"), "private, max-age=3600");
    assertEquals(new Uint8Array(await res.arrayBuffer()), bytes);

    // The same name again is stored in another folder, not over the first file.
    a.send({ body: "again", file: new Uint8Array([1, 2, 3]).toBase64(), filename: "example.png" });
    const second = await b.next();
    assertMatch(second.file as string, /\/[0-9a-f]{32}\/example\.png$/);
    assert(second.file !== seen[0].file);
    // Guessing the name in the ticket's folder finds nothing.
    const guessed = await fetch(`${server.url}/media/files/ticket_7/example.png`);
    assertEquals(guessed.status, 404);
    await guessed.body?.cancel();
    const again = await fetch(seen[0].file as string);
    assertEquals((await again.arrayBuffer()).byteLength, bytes.length);
    await a.close();
    await b.close();
  });
});

Deno.test("ticket socket: a file's URL answers byte ranges (206, 416) and revalidation (ETag, 304)", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 8, { sub: 3 });
    const bytes = new Uint8Array(300_000).map((_, i) => (i * 31 + (i >> 8)) % 256);
    a.send({ body: "", file: bytes.toBase64(), filename: "clip.mp4" });
    const url = (await a.next()).file as string;
    const get = (headers: Record<string, string> = {}, method = "GET") =>
      fetch(url, { method, headers });

    const whole = await get();
    assertEquals(whole.headers.get("accept-ranges"), "bytes");
    const etag = whole.headers.get("etag")!;
    assertMatch(etag, /^"[^"]+"$/);
    assertEquals(new Uint8Array(await whole.arrayBuffer()), bytes);

    const cases: [string, number, number][] = [
      ["bytes=0-99", 0, 99],
      ["bytes=100000-", 100000, 299999],
      ["bytes=-500", 299500, 299999],
      ["bytes=299990-400000", 299990, 299999],
      // Past one read of the server's.
      ["bytes=1-200000", 1, 200000],
    ];
    for (const [range, start, end] of cases) {
      const res = await get({ range });
      assertEquals(res.status, 206, range);
      assertEquals(res.headers.get("content-range"), `bytes ${start}-${end}/300000`, range);
      assertEquals(res.headers.get("content-length"), String(end - start + 1), range);
      assertEquals(new Uint8Array(await res.arrayBuffer()), bytes.subarray(start, end + 1), range);
    }
    const head = await get({ range: "bytes=10-19" }, "HEAD");
    assertEquals([head.status, head.headers.get("content-length")], [206, "10"]);

    const past = await get({ range: "bytes=300000-" });
    assertEquals([past.status, past.headers.get("content-range")], [416, "bytes */300000"]);
    await past.body?.cancel();
    // Several ranges, another unit, a range the client's copy is not of: the whole file.
    const wholeAgain: Record<string, string>[] = [
      { range: "bytes=0-1,5-6" },
      { range: "items=0-1" },
      { range: "bytes=0-1", "if-range": '"another"' },
    ];
    for (const headers of wholeAgain) {
      const res = await get(headers);
      assertEquals(res.status, 200, JSON.stringify(headers));
      assertEquals((await res.arrayBuffer()).byteLength, 300000);
    }
    const ranged = await get({ range: "bytes=0-1", "if-range": etag });
    assertEquals(ranged.status, 206);
    await ranged.body?.cancel();

    const cached = await get({ "if-none-match": `W/"x", ${etag}` });
    assertEquals([cached.status, cached.headers.get("etag")], [304, etag]);
    assertEquals(await cached.text(), "");
    const stale = await get({ "if-none-match": '"x"' });
    assertEquals(stale.status, 200);
    await stale.body?.cancel();

    // Another file under the same path (put there by hand) is another version.
    const path = `${server.dataDir}/media/${new URL(url).pathname.slice("/media/".length)}`;
    await Deno.remove(path);
    await new Promise((r) => setTimeout(r, 5));
    await Deno.writeFile(path, new Uint8Array([1, 2, 3]));
    const replaced = await get({ "if-none-match": etag });
    assertEquals(replaced.status, 200);
    assertEquals(new Uint8Array(await replaced.arrayBuffer()), new Uint8Array([1, 2, 3]));
    await a.close();
  });
});

Deno.test("ticket socket: exactly 10 MiB is accepted, one byte more is refused with nothing written", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 2, { sub: 1 });
    const big = new Uint8Array(10 * MiB);
    for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
    a.send({ body: "big", file: big.toBase64(), filename: "big.bin" });
    const ok = await a.next(undefined, 20_000);
    assert(typeof ok.file === "string", JSON.stringify(ok));
    const res = await fetch(ok.file as string);
    assertEquals(new Uint8Array(await res.arrayBuffer()), big);
    // Wrapped every 76 characters, as MIME encoders (`base64`, Python's encodebytes) write it.
    const wrapped = big.toBase64().replace(/.{76}/g, "$&\r\n");
    a.send({ body: "wrapped", file: wrapped, filename: "wrapped.bin" });
    const wrappedOk = await a.next(undefined, 20_000);
    assert(typeof wrappedOk.file === "string", JSON.stringify(wrappedOk));
    const wrappedRes = await fetch(wrappedOk.file as string);
    assertEquals(new Uint8Array(await wrappedRes.arrayBuffer()), big);

    const before = await listFiles(`${server.dataDir}/media`);
    const tooBig = new Uint8Array(10 * MiB + 1);
    a.send({ body: "too big", file: tooBig.toBase64(), filename: "big2.bin" });
    const err = await a.next(undefined, 20_000);
    assertMatch(err.error as string, /too large/);
    assertEquals(await listFiles(`${server.dataDir}/media`), before);
    // The connection stays open and the history has only the accepted messages.
    a.send({ body: "still here" });
    assertEquals((await a.next()).pk, 3);
    await a.close();
  });
});

Deno.test("ticket socket: bad frames get {error} and the connection stays open", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 3, { sub: 1 });
    const b = await ticketClient(server, 3, { sub: 2 });
    const cases: [unknown, RegExp][] = [
      ["{not json", /^Invalid JSON$/],
      [{}, /^Either body or file is required$/],
      [{ body: "   " }, /^Either body or file is required$/],
      [{ body: "\n\t" }, /^Either body or file is required$/],
      [{ body: 5 }, /"body" must be a string/],
      [[1, 2], /JSON object/],
      [{ file: "@@@not-base64@@@", filename: "x.png" }, /not valid base64/],
      [{ file: "QUJD", filename: "" }, /Filename is required/],
      [{ file: "QUJD" }, /Filename is required/],
      [{ file: "QUJD", filename: "x".repeat(256) }, /Filename is too long/],
      // Raw control characters inside a long file: refused, whitespace as JSON, others as base64.
      [`{"file":"${"QUJD".repeat(70_000)}\n","filename":"x.png"}`, /^Invalid JSON$/],
      [`{"file":"${"QUJD".repeat(70_000)}\u0001","filename":"x.png"}`, /not valid base64/],
    ];
    for (const [frame, pattern] of cases) {
      a.send(frame);
      const reply = await a.next();
      assertEquals(Object.keys(reply), ["error"]);
      assertMatch(reply.error as string, pattern);
    }
    // A binary frame is read as UTF-8: bytes that are not (Latin-1 "café") are no JSON text.
    const utf8 = (text: string) => new TextEncoder().encode(text);
    a.socket.send(Uint8Array.from([...utf8('{"body":"caf'), 0xe9, ...utf8('"}')]));
    assertEquals(await a.next(), { error: "Invalid JSON" });
    await b.nothing();
    assertEquals(await listFiles(`${server.dataDir}/media`), []);
    a.send({ body: "fine" });
    assertEquals((await b.next()).pk, 1);
    a.socket.send(utf8('{"body":"café in a binary frame"}'));
    assertEquals((await b.next()).body, "café in a binary frame");
    await a.close();
    await b.close();
  });
});

Deno.test("ticket socket: hostile filenames stay inside the media directory", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 4, { sub: 1 });
    const names = ["../../etc/passwd", "a/b\\c.png", "..", "\u0000evil\u0007.txt", "..."];
    const urls: string[] = [];
    for (const filename of names) {
      a.send({ file: new TextEncoder().encode(filename).toBase64(), filename });
      const msg = await a.next();
      assert(typeof msg.file === "string", `${filename}: ${JSON.stringify(msg)}`);
      urls.push(msg.file as string);
    }
    // Each in a folder of its own under the ticket's, named as a safe part of what was sent.
    const folder = new RegExp(`^${server.url}/media/files/ticket_4/[0-9a-f]{32}/`);
    assert(urls.every((u) => folder.test(u)), urls.join(" "));
    assertEquals(urls.map((u) => u.replace(folder, "")), [
      "passwd",
      "c.png",
      "file",
      "evil.txt",
      "file",
    ]);
    const files = await listFiles(`${server.dataDir}/media`);
    assertEquals(
      files.map((f) => f.replace(/^files\/ticket_4\/[0-9a-f]{32}\//, "")).sort(),
      ["c.png", "evil.txt", "file", "file", "passwd"],
    );
    for (const url of urls) assertEquals((await fetch(url)).status, 200);
    // Traversal in the URL itself finds nothing outside the root.
    const escape = await fetch(`${server.url}/media/..%2f..%2fchat.kv`);
    assertEquals(escape.status, 404);
    await escape.body?.cancel();
    await a.close();
  });
});

Deno.test("ticket socket: a filename with a lone surrogate is stored well formed; the room's history stays readable", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 6, { sub: 1 });
    const b = await ticketClient(server, 6, { sub: 2 });
    // Valid JSON, but "\ud800" is half a character: no UTF-8 name on disk, no URL.
    a.send(`{"body":"x","file":"${btoa("hello")}","filename":"\\ud800.png"}`);
    const echo = await a.next();
    const seen = await b.next();
    assertEquals(seen.file, echo.file);
    assertMatch(echo.file as string, /\/%EF%BF%BD\.png$/);
    const res = await fetch(echo.file as string);
    assertEquals([res.status, await res.text()], [200, "hello"]);
    // The room's history, which renders every file's URL, still reads.
    const api = await fetch(`${server.url}/api/rooms/ticket/6/messages`, {
      headers: { authorization: "Bearer admin-token-for-this-test" },
    });
    assertEquals(api.status, 200);
    const page = await api.json();
    assertEquals(page.messages.length, 1, JSON.stringify(page));
    await a.close();
    await b.close();
  }, { ADMIN_TOKEN: "admin-token-for-this-test" });
});

Deno.test("ticket socket: files a browser would run are served as downloads", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 5, { sub: 1 });
    a.send({ file: btoa("<svg xmlns='http://www.w3.org/2000/svg'/>"), filename: "x.svg" });
    const msg = await a.next();
    const res = await fetch(msg.file as string);
    await res.body?.cancel();
    assertEquals(res.headers.get("content-type"), "image/svg+xml");
    assertMatch(res.headers.get("content-disposition") ?? "", /^attachment/);
    assertEquals(res.headers.get("x-content-type-options"), "nosniff");
    await a.close();
  });
});

Deno.test("ticket socket: bad tokens close with 4001, no access closes with 4003", async () => {
  await withServer(async (server) => {
    const url = `${server.wsUrl}/ws/ticket/9/`;
    const expect = async (target: string, code: number, init: object = {}) => {
      const client = TestClient.connect(target, init);
      const closed = await client.closed;
      assertEquals(closed.code, code, target);
    };
    await expect(url, 4001);
    await expect(`${server.wsUrl}/ws/ticket/9?token=garbage`, 4001);
    const wrongKey = await new jose.SignJWT({ sub: "1", rooms: ["ticket:9"] })
      .setProtectedHeader({ alg: "HS256" }).setExpirationTime("1h")
      .sign(new TextEncoder().encode("some-other-secret-entirely-different"));
    await expect(`${url}?token=${wrongKey}`, 4001);
    const expired = await server.token(
      { sub: "1", rooms: ["ticket:9"] },
      Math.floor(Date.now() / 1000) - 60,
    );
    await expect(`${url}?token=${expired}`, 4001);
    const none = new jose.UnsecuredJWT({ sub: "1", rooms: ["ticket:9"], role: "admin" })
      .setExpirationTime("1h").encode();
    await expect(`${url}?token=${none}`, 4001);
    const noSubject = await server.token({ rooms: ["ticket:9"] });
    await expect(`${url}?token=${noSubject}`, 4001);
    // A user id no directory can hold (Postgres cannot store a NUL) is no user id.
    const control = await server.token({ sub: "7\u00008", rooms: ["ticket:9"] });
    await expect(`${url}?token=${control}`, 4001);
    const other = await server.token({ sub: "1", rooms: ["ticket:10"] });
    await expect(`${url}?token=${other}`, 4003);
    // Admin roles and wildcard grants enter.
    for (const claims of [{ role: "admin" }, { role: "super_admin" }, { rooms: ["ticket:*"] }]) {
      const token = await server.token({ sub: "1", ...claims });
      const client = await TestClient.open(`${url}?token=${token}`);
      client.send({ body: "in" });
      assertEquals((await client.next()).body, "in");
      await client.close();
    }
  });
});

Deno.test("ticket socket: token from cookie, Authorization header and subprotocol", async () => {
  await withServer(async (server) => {
    const token = await server.token({ sub: 8, rooms: ["ticket:11"] });
    const url = `${server.wsUrl}/ws/ticket/11/`;
    const viaCookie = await TestClient.open(url, { headers: { cookie: `access_token=${token}` } });
    const viaHeader = await TestClient.open(url, { headers: { authorization: `Bearer ${token}` } });
    const viaProtocol = await TestClient.open(url, { protocols: ["chat", `bearer.${token}`] });
    assertEquals(viaProtocol.socket.protocol, "chat");
    const onlyBearer = await TestClient.open(url, { protocols: [`bearer.${token}`] });
    viaCookie.send({ body: "hi" });
    for (const c of [viaCookie, viaHeader, viaProtocol, onlyBearer]) {
      assertEquals((await c.next()).body, "hi");
      await c.close();
    }
  });
});

Deno.test("ticket socket: a silent peer is pinged, dropped and cleaned up", async () => {
  await withServer(async (server) => {
    const token = await server.token({ sub: 1, rooms: ["ticket:12"] });
    const conn = await silentPeer(server.port, `/ws/ticket/12/?token=${token}`);
    await eventually(() => server.app.context.metrics.openConnections === 1, 2000, "open");
    // Never answer: the server pings after a second of silence and closes without a pong.
    await eventually(() => server.app.context.metrics.openConnections === 0, 8000, "drop");
    assertEquals([...server.app.context.hub.members("ticket:12")].length, 0);
    // Counted once, though Deno reports that close twice.
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert(metrics.includes("\nchat_ping_timeouts_total 1\n"), metrics);
    conn.close();
  }, { HEARTBEAT_SECONDS: "1" });
});

Deno.test("ticket socket: a member that stops reading is closed as a slow consumer; the room goes on", async () => {
  await withServer(async (server) => {
    const hub = server.app.context.hub;
    const token = await server.token({ sub: 9, rooms: ["ticket:14"] });
    // Joins, then never reads: what the room sends it piles up in the server.
    const conn = await silentPeer(server.port, `/ws/ticket/14/?token=${token}`);
    await eventually(() => hub.members("ticket:14").size === 1, 3000, "join");
    const writer = await ticketClient(server, 14, { sub: 1 });
    const healthy = await ticketClient(server, 14, { sub: 2 });
    const body = "y".repeat(19_000);
    let sent = 0;
    // 2,000 frames of 19 kB would be 38 MB for the stalled reader: far past any kernel buffer.
    while (sent < 2000 && hub.members("ticket:14").size === 3) {
      for (let i = 0; i < 25; i++) writer.send({ body });
      for (let i = 0; i < 25; i++) await writer.next();
      sent += 25;
    }
    await eventually(() => hub.members("ticket:14").size === 2, 5000, "eviction");
    assert(sent < 2000, "the stalled reader was never closed");
    const pks = new Set<number>();
    while (pks.size < sent) pks.add((await healthy.next()).pk as number);
    assertEquals(pks.size, sent);
    conn.close();
    await writer.close();
    await healthy.close();
  }, {
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
    SLOW_CONSUMER_BYTES: String(MiB),
  });
});

Deno.test("ticket socket: a flood is refused with the rate-limit error, then closed with 4029; what was taken reaches the room", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 1, { sub: "3", username: "user3" });
    const bystander = await ticketClient(server, 1, { sub: "4", username: "user4" });
    for (let i = 0; i < 60; i++) a.send({ body: `m${i}` });
    assertEquals((await within(a.closed, "the close")).code, 4029);
    const stored = (a.frames as Record<string, unknown>[]).filter((f) => "pk" in f);
    assert(stored.length > 0 && stored.length < 60, `${stored.length} of 60 sends were taken`);
    assertEquals(stored.map((f) => f.body), stored.map((_, i) => `m${i}`));
    assertEquals(a.frames.at(-1), { error: "Too many messages: slow down" });
    // The other user got exactly what was stored and is not limited by the flood.
    for (const f of stored) assertEquals((await bystander.next()).pk, f.pk);
    bystander.send({ body: "unaffected" });
    assertEquals((await bystander.next()).body, "unaffected");
    await bystander.close();
  }, { RATE_LIMIT_PER_SECOND: "5" });
});

Deno.test("ticket socket: a flood of malformed frames is closed with 4029 too", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 1, { sub: "3", username: "user3" });
    for (let i = 0; i < 60; i++) a.send("not json");
    assertEquals((await within(a.closed, "the close")).code, 4029);
    const errors = (a.frames as Record<string, unknown>[]).map((f) => f.error);
    assert(errors.includes("Too many messages: slow down"), "no rate-limit error before the close");
    assert(errors.length < 60, "every malformed frame was answered");
  }, { RATE_LIMIT_PER_SECOND: "5" });
});

Deno.test("ticket socket: a plain GET to a socket URL is told to upgrade, and to what", async () => {
  await withServer(async (server) => {
    for (const path of ["/ws/ticket/1/", "/ws", "/ws/chat/1/"]) {
      const res = await fetch(`${server.url}${path}`);
      assertEquals([res.status, res.headers.get("upgrade")], [426, "websocket"], path);
      await res.body?.cancel();
    }
  });
});

Deno.test("ticket socket: frames sent back to back share commits, keep their order, and a bad one is answered", async () => {
  // Commits start 300 ms apart: a socket that waited for each commit before reading its next
  // frame would need five commits for five messages; read on while committing, two.
  await withServer(async (server) => {
    const metrics = server.app.context.metrics;
    const a = await ticketClient(server, 1, { sub: "3", username: "user3" });
    const b = await ticketClient(server, 1, { sub: "4", username: "user4" });
    const before = metrics.commits;
    for (const body of ["m1", "m2", "m3", "m4", "m5", ""]) a.send({ body });
    for (const client of [a, b]) {
      for (let pk = 1; pk <= 5; pk++) {
        const msg = await client.next((f) => "pk" in f);
        assertEquals([msg.pk, msg.body], [pk, `m${pk}`]);
      }
    }
    assertEquals(await a.next((f) => "error" in f), { error: "Either body or file is required" });
    const commits = metrics.commits - before;
    assert(commits <= 2, `expected the five messages in at most two commits, got ${commits}`);
    await b.nothing((f) => "error" in f);
    await a.close();
    await b.close();
  }, { COMMIT_PAUSE_CPU_PERCENT: "0", COMMIT_INTERVAL_MS: "300" });
});

Deno.test("ticket socket: with no request ids, an error comes between the echoes of the sends around it, in the order sent", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 1, { sub: "3", username: "user3" });
    for (let i = 0; i < 5; i++) {
      a.send({ body: `m${i}` });
      a.send("not json");
    }
    const seen: string[] = [];
    while (seen.length < 10) {
      const f = await a.next();
      seen.push("error" in f ? "error" : String(f.body));
    }
    assertEquals(seen, ["m0", "error", "m1", "error", "m2", "error", "m3", "error", "m4", "error"]);
    await a.close();
  }, { COMMIT_PAUSE_CPU_PERCENT: "0", COMMIT_INTERVAL_MS: "100" });
});

Deno.test("ticket socket: a send after a refused frame, just before the client closes, is still stored", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 2, { sub: "3", username: "user3" });
    for (let i = 0; i < 3; i++) a.send({ body: `first${i}` });
    a.send("not json");
    a.send({ body: "after the error" });
    await a.close();
    await eventually(
      async () => (await server.app.context.chat.history("ticket:2", { limit: 10 })).length === 4,
      5000,
      "the four messages stored",
    );
    const stored = await server.app.context.chat.history("ticket:2", { limit: 10 });
    assertEquals(stored.map((m) => m.body), ["first0", "first1", "first2", "after the error"]);
  }, { COMMIT_PAUSE_CPU_PERCENT: "0", COMMIT_INTERVAL_MS: "1000" });
});

Deno.test("ticket socket: a socket owes at most 64 replies; the frame after waits for them", async () => {
  // Commits start 300 ms apart. 100 messages back to back: the first commits alone, the next 63
  // share the second commit, and the 65th is read only once those are answered, so a third
  // commit is needed; without the bound two would do.
  await withServer(async (server) => {
    const metrics = server.app.context.metrics;
    const a = await ticketClient(server, 1, { sub: "3", username: "user3" });
    const before = metrics.commits;
    for (let i = 1; i <= 100; i++) a.send({ body: `m${i}` });
    for (let pk = 1; pk <= 100; pk++) {
      const msg = await a.next((f) => "pk" in f);
      assertEquals([msg.pk, msg.body], [pk, `m${pk}`]);
    }
    const commits = metrics.commits - before;
    assert(commits >= 3, `expected the 65th message to wait for a later commit, got ${commits}`);
    await a.close();
  }, {
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
    RATE_LIMIT_PER_SECOND: "1000",
    RATE_LIMIT_USER_PER_SECOND: "1000",
  });
});

Deno.test("ticket socket: a retried client_id stores one message and answers the retry with it", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 13, { sub: 1 });
    const b = await ticketClient(server, 13, { sub: 2 });
    a.send({ body: "once", client_id: "retry-1" });
    const first = await a.next();
    a.send({ body: "once", client_id: "retry-1" });
    assertEquals(await a.next(), first);
    assertEquals(await b.next(), first);
    await b.nothing();
    a.send({ body: "next" });
    assertEquals((await b.next()).pk, 2);
    await a.close();
    await b.close();
  });
});

Deno.test("ticket socket: a client_id over 128 characters, or a number too large to read exactly, is refused; the socket stays open and nothing is stored", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 14, { sub: 1 });
    a.send({ body: "too long an id", client_id: "x".repeat(129) });
    assertEquals(await a.next(), {
      error: 'Field "client_id" must be a string of at most 128 characters',
    });
    // The refused send took no seq: the next one is the room's first.
    a.send({ body: "fits", client_id: "x".repeat(128) });
    const echo = await a.next();
    assertEquals([echo.pk, echo.body], [1, "fits"]);
    // Two 64-bit ids (what a Python or Go client sends) that JavaScript would read as one: refused,
    // not taken for each other; the largest exact one is its digits.
    for (const id of ["1152921504606846977", "1152921504606846976", "1e400"]) {
      a.send(`{"body":"big id","client_id":${id}}`);
      assertEquals(await a.next(), {
        error: 'Field "client_id" is a number too large to be read exactly: send it as a string',
      });
    }
    a.send(`{"body":"exact","client_id":9007199254740991}`);
    a.send(`{"body":"exact again","client_id":"9007199254740991"}`);
    const exact = await a.next();
    assertEquals([exact.pk, exact.body], [2, "exact"]);
    assertEquals((await a.next()).pk, 2);
    await a.close();
  });
});

Deno.test("ticket socket: files of messages past HISTORY_LIMIT are deleted with them", async () => {
  await withServer(async (server) => {
    const a = await ticketClient(server, 8, { sub: 3, username: "user3" });
    const urls: string[] = [];
    for (const n of [1, 2, 3]) {
      a.send({ body: `file ${n}`, file: new Uint8Array([n, n, n]).toBase64(), filename: "f.bin" });
      urls.push((await a.next()).file as string);
    }
    const onDisk = (url: string) =>
      `${server.dataDir}/media/${new URL(url).pathname.replace(/^\/media\//, "")}`;
    // The third message pushed the first out of a two-message history: its file goes too.
    await eventually(async () => (await fetch(urls[0])).status === 404, 5000, "file 1 gone");
    await assertRejects(() => Deno.stat(onDisk(urls[0])));
    for (const url of urls.slice(1)) {
      const res = await fetch(url);
      assertEquals(res.status, 200);
      assertEquals((await res.arrayBuffer()).byteLength, 3);
      await Deno.stat(onDisk(url));
    }
    await a.close();
  }, { HISTORY_LIMIT: "2" });
});

Deno.test("ticket socket: past FRAME_MEMORY_BUDGET_BYTES the quietest file sender is closed 1001 and may reconnect", async () => {
  await withServer(async (server) => {
    const [a, b, c] = await Promise.all(
      ["3", "4", "5"].map((sub) => ticketClient(server, 9, { sub, username: `user${sub}` })),
    );
    // Each frame carries ~1.07 MB of base64: two fit the 2.5 MB budget, a third does not.
    const bytes = (n: number) => new Uint8Array(800_000).map((_, i) => (i * n) % 251);
    const sendFile = async (from: TestClient, n: number) => {
      from.send({ body: `file ${n}`, file: bytes(n).toBase64(), filename: `f${n}.bin` });
      const url = (await from.next((f) => f.body === `file ${n}`)).file as string;
      assertEquals(new Uint8Array(await (await fetch(url)).arrayBuffer()), bytes(n));
    };
    const metric = async (name: string) => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      return Number(line?.slice(name.length + 1));
    };
    await sendFile(a, 1);
    await sendFile(b, 2);
    assert(await metric('chat_frame_buffer_bytes{state="open"}') > 2_000_000);
    // A small frame does not count, but it makes `a` the more recently active of the two.
    a.send({ body: "still here" });
    await a.next((f) => f.body === "still here");
    await sendFile(c, 3);
    await eventually(() => b.socket.readyState === WebSocket.CLOSED, 5000, "b closed");
    assertEquals(await b.closed, { code: 1001, reason: "Server reclaiming memory; reconnect" });
    assertEquals([a.socket.readyState, c.socket.readyState], [WebSocket.OPEN, WebSocket.OPEN]);
    assertEquals(await metric("chat_sockets_reclaimed_total"), 1);
    // `b` counts until its close completes; `a` and `c` still hold their ~1.07 MB each.
    await eventually(async () => await metric('chat_frame_buffer_bytes{state="closing"}') === 0);
    const open = await metric('chat_frame_buffer_bytes{state="open"}');
    assert(open > 2_000_000 && open < 2_500_000, String(open));
    // Nothing stored was lost, and the closed user is back with one reconnect.
    const again = await ticketClient(server, 9, { sub: "4", username: "user4" });
    again.send({ body: "back" });
    const back = await c.next<{ body: string; sender: { id: number } }>((f) => f.body === "back");
    assertEquals(back.sender.id, 4);
    for (const client of [a, c, again]) await client.close();
  }, { FRAME_MEMORY_BUDGET_BYTES: "2500000" });
});

Deno.test("ticket socket: a socket closed as a slow consumer still counts against its user's SOCKETS_PER_USER while its peer holds the connection unread", async () => {
  await withServer(async (server) => {
    const hub = server.app.context.hub;
    const token = await server.token({ sub: 9, rooms: ["ticket:15"] });
    const conn = await silentPeer(server.port, `/ws/ticket/15/?token=${token}`);
    await eventually(() => hub.members("ticket:15").size === 1, 3000, "join");
    const writer = await ticketClient(server, 15, { sub: 1 });
    const body = "y".repeat(19_000);
    for (let sent = 0; sent < 2000 && hub.members("ticket:15").size === 2; sent += 25) {
      for (let i = 0; i < 25; i++) writer.send({ body });
      for (let i = 0; i < 25; i++) await writer.next();
    }
    await eventually(() => hub.members("ticket:15").size === 1, 5000, "eviction");
    // Closed by the server, but its close frame waits behind what the peer never read: the
    // connection, its descriptor and its buffers are still held, and still user 9's.
    const another = await TestClient.open(`${server.wsUrl}/ws/ticket/15/?token=${token}`);
    assertEquals((await within(another.closed, "the refusal", 3000)).code, 4029);
    // Once the peer lets go, so does the server, and the user may connect again.
    conn.close();
    await eventually(() => admitted(server, 15, token), 5000, "the slot given back");
    await writer.close();
  }, {
    SOCKETS_PER_USER: "1",
    SLOW_CONSUMER_BYTES: String(MiB),
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
  });
});

Deno.test("ticket socket: a socket whose peer took the server's close frame and never answered stops counting for its user two heartbeat periods later", async () => {
  await withServer(async (server) => {
    const token = await server.token({ sub: 9, rooms: ["ticket:16"] });
    const conn = await silentPeer(server.port, `/ws/ticket/16/?token=${token}`);
    // A flood: the server answers, then closes with 4029; the peer's kernel takes the close frame
    // and the peer, gone quiet, never answers it.
    for (let i = 0; i < 40; i++) await sendRawText(conn, '{"body":"x"}');
    await eventually(() => server.app.context.metrics.openConnections === 0, 3000, "the close");
    const refused = await TestClient.open(`${server.wsUrl}/ws/ticket/16/?token=${token}`);
    assertEquals((await within(refused.closed, "the refusal", 3000)).code, 4029);
    // Two heartbeat periods (2 s here) after the close, the slot is the user's again.
    await eventually(() => admitted(server, 16, token), 6000, "the slot given back");
    conn.close();
  }, { SOCKETS_PER_USER: "1", HEARTBEAT_SECONDS: "1", RATE_LIMIT_PER_SECOND: "5" });
});

Deno.test("ticket socket: an access_token cookie from an ALLOWED_ORIGINS page signs in the ticket socket", async () => {
  const server = await startTestServer({ ALLOWED_ORIGINS: "https://app.example" });
  try {
    const token = await server.token({ sub: "3", username: "u3", rooms: ["ticket:1"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/1/`, {
      headers: { cookie: `access_token=${token}`, origin: "https://app.example" },
    });
    ws.send({ body: "hello" });
    assertEquals((await ws.next()).body, "hello");
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("ticket socket: a Keycloak offline token (typ Offline, a refresh token) is refused with 4001", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:1"], typ: "Offline" });
    const ws = TestClient.connect(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
    assertEquals((await within(ws.closed, "the 4001 close")).code, 4001);
  } finally {
    await server.close();
  }
});

Deno.test("ticket socket: with JWT_AUDIENCE set, a token for another audience is refused with 4001", async () => {
  const server = await startTestServer({ JWT_AUDIENCE: "chat" });
  try {
    const good = await server.token({ sub: "3", rooms: ["ticket:1"], aud: "chat" });
    const ok = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${good}`);
    ok.send({ body: "in" });
    assertEquals((await ok.next()).body, "in");
    await ok.close();
    const other = await server.token({ sub: "3", rooms: ["ticket:1"], aud: "billing" });
    const ws = TestClient.connect(`${server.wsUrl}/ws/ticket/1/?token=${other}`);
    assertEquals((await within(ws.closed, "the 4001 close")).code, 4001);
  } finally {
    await server.close();
  }
});

Deno.test("ticket socket: unpadded base64 and a data: URL that is not base64 are refused, nothing stored", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:1"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
    for (const file of ["QUJDRA", "data:text/plain,QUJD"]) {
      ws.send({ body: "f", file, filename: "a.bin" });
      assertEquals(await ws.next(), { error: "File is not valid base64" }, file);
    }
    assertEquals(await server.app.context.chat.head("ticket:1"), 0);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("socket paths: a percent-encoded id names the room it encodes, as the REST API reads it", async () => {
  await withServer(async (server) => {
    const claims = { sub: "3", username: "u3", rooms: ["ticket:*", "service-chat:*"] };
    const token = await server.token(claims);
    // What encodeURIComponent("a@b") builds, and the raw form, are one ticket.
    const encoded = await TestClient.open(`${server.wsUrl}/ws/ticket/a%40b/?token=${token}`);
    const raw = await TestClient.open(`${server.wsUrl}/ws/ticket/a@b/?token=${token}`);
    encoded.send({ body: "via %40" });
    assertEquals((await raw.next()).body, "via %40");
    const history = await fetch(`${server.url}/api/rooms/ticket/a%40b/messages`, {
      headers: { authorization: "Bearer admin-token-for-path-test" },
    });
    assertEquals(history.status, 200);
    assertEquals(
      ((await history.json()).messages as { body: string }[]).map((m) => m.body),
      ["via %40"],
    );
    // "%37" is service chat 7, however it is written.
    const seven = await TestClient.open(`${server.wsUrl}/ws/service-chats/%37?token=${token}`);
    // The document's broadcast skips the sender: the other socket is another user's.
    const other = await server.token({ ...claims, sub: "4", username: "u4" });
    const plain = await TestClient.open(`${server.wsUrl}/ws/service-chats/7?token=${other}`);
    seven.send({ type: "message", content: "to seven" });
    assertEquals((await plain.next((f) => f.type === "message")).content, "to seven");
    // A broken escape names no room: the route's own invalid-id close.
    const broken = TestClient.connect(`${server.wsUrl}/ws/ticket/a%E0%A4%A/?token=${token}`);
    assertEquals((await within(broken.closed, "the broken escape's close")).code, 4003);
    for (const ws of [encoded, raw, seven, plain]) await ws.close();
  }, { ADMIN_TOKEN: "admin-token-for-path-test" });
});
