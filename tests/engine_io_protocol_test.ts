/**
 * Raw Engine.IO / Socket.IO protocol tests of `src/engine_io` with `fetch` and `WebSocket`,
 * for the edge cases a well-behaved client never produces.
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { delay, eventually } from "./assert.ts";
import { type Socket, SocketIOServer, type SocketIOServerOptions } from "../src/engine_io/mod.ts";

interface Context {
  io: SocketIOServer;
  /** `http://host:port/socket.io/` */
  base: string;
  /** `ws://host:port/socket.io/` */
  wsBase: string;
  sockets: Socket[];
  reasons: string[];
  events: unknown[][];
}

async function withServer(
  options: SocketIOServerOptions,
  fn: (ctx: Context) => Promise<void>,
): Promise<void> {
  // Long heartbeats by default so that no ping slips into the exact poll bodies asserted below;
  // the heartbeat tests set short ones.
  const io = new SocketIOServer({ pingInterval: 10_000, pingTimeout: 5_000, ...options });
  const ctx: Context = { io, base: "", wsBase: "", sockets: [], reasons: [], events: [] };
  io.on("connection", (socket) => {
    ctx.sockets.push(socket);
    socket.on("disconnect", (reason) => ctx.reasons.push(reason));
    socket.onAny((...args: unknown[]) => ctx.events.push(args));
    socket.on("echo", (...args: unknown[]) => {
      const ack = typeof args.at(-1) === "function"
        ? args.pop() as (...a: unknown[]) => void
        : null;
      if (ack) ack(...args);
      else socket.emit("echo", ...args);
    });
  });
  io.of("/custom");
  const server = Deno.serve({ port: 0, onListen() {} }, (req, info) => io.handleRequest(req, info));
  ctx.base = `http://localhost:${server.addr.port}/socket.io/`;
  ctx.wsBase = ctx.base.replace("http", "ws");
  try {
    await fn(ctx);
  } finally {
    await io.close();
    await server.shutdown();
  }
}

interface Reply {
  status: number;
  text: string;
  headers: Headers;
}

async function request(url: string, init?: RequestInit): Promise<Reply> {
  const res = await fetch(url, init);
  return { status: res.status, text: await res.text(), headers: res.headers };
}

function get(ctx: Context, query: string, init?: RequestInit): Promise<Reply> {
  return request(`${ctx.base}?${query}`, init);
}

async function handshake(
  ctx: Context,
  init?: RequestInit,
  query = "",
): Promise<{ sid: string; open: Record<string, unknown> }> {
  const reply = await get(ctx, `EIO=4&transport=polling${query}`, init);
  strictEqual(reply.status, 200);
  strictEqual(reply.text[0], "0");
  const open = JSON.parse(reply.text.slice(1));
  return { sid: open.sid, open };
}

/** A polling session that has joined `/` (its `40` posted and answered), by its sid. */
async function joined(ctx: Context, init?: RequestInit, query = ""): Promise<string> {
  const { sid } = await handshake(ctx, init, query);
  await post(ctx, sid, "40");
  match((await poll(ctx, sid)).text, /^40/);
  return sid;
}

function poll(ctx: Context, sid: string): Promise<Reply> {
  return get(ctx, `EIO=4&transport=polling&sid=${sid}`);
}

function post(ctx: Context, sid: string, body: BodyInit, headers?: HeadersInit): Promise<Reply> {
  return get(ctx, `EIO=4&transport=polling&sid=${sid}`, { method: "POST", body, headers });
}

/** A WebSocket whose messages are read in order with `next()`. */
class Peer {
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #queue: (string | Uint8Array)[] = [];
  #waiters: ((data: string | Uint8Array) => void)[] = [];

  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("websocket failed"));
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => this.ws.onclose = resolve);
    this.ws.onmessage = (event: MessageEvent<string | ArrayBuffer>) => {
      const data = typeof event.data === "string" ? event.data : new Uint8Array(event.data);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(data);
      else this.#queue.push(data);
    };
  }

  /** Next message that is not a ping (pings are answered). */
  async next(ms = 3000): Promise<string | Uint8Array> {
    for (;;) {
      const data = await this.#take(ms);
      if (data === "2") {
        this.ws.send("3");
        continue;
      }
      return data;
    }
  }

  #take(ms: number): Promise<string | Uint8Array> {
    const queued = this.#queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error("no message in time"));
      }, ms);
      const waiter = (data: string | Uint8Array) => {
        clearTimeout(timer);
        resolve(data);
      };
      this.#waiters.push(waiter);
    });
  }

  send(data: string | Uint8Array): void {
    this.ws.send(data);
  }

  async close(): Promise<void> {
    if (this.ws.readyState < WebSocket.CLOSING) this.ws.close();
    await this.closed;
  }
}

Deno.test("polling handshake advertises the session and its limits", async () => {
  await withServer({}, async (ctx) => {
    const reply = await get(ctx, "EIO=4&transport=polling");
    strictEqual(reply.status, 200);
    match(reply.headers.get("content-type") ?? "", /^text\/plain/);
    const open = JSON.parse(reply.text.slice(1));
    deepStrictEqual(Object.keys(open).sort(), [
      "maxPayload",
      "pingInterval",
      "pingTimeout",
      "sid",
      "upgrades",
    ]);
    deepStrictEqual(open.upgrades, ["websocket"]);
    strictEqual(open.pingInterval, 10_000);
    strictEqual(open.pingTimeout, 5_000);
    ok(open.maxPayload >= 14_500_000, "default maxPayload fits a 10 MiB file in base64");
    // Also reachable without the trailing slash.
    const bare = await request(ctx.base.slice(0, -1) + "?EIO=4&transport=polling");
    strictEqual(bare.status, 200);
  });
});

Deno.test("websocket handshake without polling advertises no upgrades", async () => {
  await withServer({}, async (ctx) => {
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    const open = JSON.parse(String(await peer.next()).slice(1));
    deepStrictEqual(open.upgrades, []);
    peer.send("40");
    match(String(await peer.next()), /^40\{"sid":"[^"]+"\}$/);
    peer.send('42["echo","over ws"]');
    strictEqual(await peer.next(), '42["echo","over ws"]');
    await peer.close();
  });
});

Deno.test("bad requests get 400 with a JSON error, Engine.IO's code and message", async () => {
  // The messages of Node's engine.io, by code.
  const messages = [
    "Transport unknown",
    "Session ID unknown",
    "Bad handshake method",
    "Bad request",
    "Forbidden",
    "Unsupported protocol version",
  ];
  await withServer({}, async (ctx) => {
    const cases: [string, RequestInit | undefined, number, number][] = [
      ["transport=polling", undefined, 400, 5],
      ["EIO=3&transport=polling", undefined, 400, 5],
      ["EIO=abc&transport=polling", undefined, 400, 5],
      ["EIO=4", undefined, 400, 0],
      ["EIO=4&transport=abc", undefined, 400, 0],
      ["EIO=4&transport=polling&sid=nope", undefined, 400, 1],
      ["EIO=4&transport=polling&sid=nope", { method: "POST", body: "4x" }, 400, 1],
      ["EIO=4&transport=polling", { method: "POST", body: "" }, 400, 2],
      ["EIO=4&transport=polling", { method: "PUT" }, 400, 2],
      // transport=websocket without an Upgrade header
      ["EIO=4&transport=websocket", undefined, 400, 3],
    ];
    for (const [query, init, status, code] of cases) {
      const reply = await get(ctx, query, init);
      strictEqual(reply.status, status, query);
      match(reply.headers.get("content-type") ?? "", /application\/json/);
      const body = JSON.parse(reply.text);
      deepStrictEqual(body, { code, message: messages[code] }, query);
    }
    const { sid } = await handshake(ctx);
    const put = await get(ctx, `EIO=4&transport=polling&sid=${sid}`, { method: "PUT" });
    strictEqual(put.status, 400);
    strictEqual(JSON.parse(put.text).code, 3);
    // Outside the path.
    const elsewhere = await request(ctx.base.replace("/socket.io/", "/other/") + "?EIO=4");
    strictEqual(elsewhere.status, 404);
  });
});

Deno.test("polling carries Socket.IO packets both ways, batched with the record separator", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    // An event right behind its CONNECT waits for the (asynchronous) middlewares, then arrives.
    const posted = await post(ctx, sid, '40\x1e42["echo","a"]');
    strictEqual(posted.status, 200);
    strictEqual(posted.text, "ok");
    const reply = await poll(ctx, sid);
    const packets = reply.text.split("\x1e");
    match(packets[0], /^40\{"sid":"[^"]+"\}$/);
    strictEqual(packets[1], '42["echo","a"]');
    // Ack ids are echoed.
    await post(ctx, sid, '4212["echo",1,{"x":true}]');
    strictEqual((await poll(ctx, sid)).text, '4312[1,{"x":true}]');
    // A parked GET is answered as soon as the server emits.
    const parked = poll(ctx, sid);
    await delay(20);
    ctx.sockets[0].emit("push", "late");
    strictEqual((await parked).text, '42["push","late"]');
  });
});

Deno.test("binary attachments: b-prefixed base64 over polling, binary frames over websocket", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    await post(ctx, sid, "40");
    await poll(ctx, sid);
    await post(ctx, sid, '451-["echo",{"_placeholder":true,"num":0}]\x1ebAQID');
    await eventually(() => ctx.events.length === 1);
    ok(ctx.events[0][1] instanceof Uint8Array);
    deepStrictEqual(ctx.events[0][1], new Uint8Array([1, 2, 3]));
    strictEqual(
      (await poll(ctx, sid)).text,
      '451-["echo",{"_placeholder":true,"num":0}]\x1ebAQID',
    );

    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("40");
    await peer.next();
    peer.send('452-["echo",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
    peer.send(new Uint8Array([1, 2, 3]));
    peer.send(new Uint8Array([4, 5, 6]));
    strictEqual(
      await peer.next(),
      '452-["echo",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
    );
    deepStrictEqual(await peer.next(), new Uint8Array([1, 2, 3]));
    deepStrictEqual(await peer.next(), new Uint8Array([4, 5, 6]));
    // Binary ack.
    peer.send('451-7["echo",{"_placeholder":true,"num":0}]');
    peer.send(new Uint8Array([9]));
    strictEqual(await peer.next(), '461-7[{"_placeholder":true,"num":0}]');
    deepStrictEqual(await peer.next(), new Uint8Array([9]));
    await peer.close();
  });
});

Deno.test("concurrent GETs on one sid close the session", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    const first = poll(ctx, sid);
    await delay(20);
    const second = await poll(ctx, sid);
    strictEqual(second.status, 400);
    strictEqual((await first).text, "6");
    strictEqual((await poll(ctx, sid)).status, 400);
  });
});

Deno.test("a server-side close ends a polling session with what was queued (or a noop) and a 400 for the next GET, never a close packet, which python-engineio takes for a deliberate close and does not reconnect from", async () => {
  await withServer({}, async (ctx) => {
    const joinedSocket = async () => {
      const sid = await joined(ctx);
      return { sid, socket: ctx.sockets.at(-1)! };
    };
    // Closed while its GET is parked: the GET gets a noop.
    const parkedSession = await joinedSocket();
    const parked = poll(ctx, parkedSession.sid);
    await delay(20);
    parkedSession.socket.conn.close();
    strictEqual((await parked).text, "6");
    strictEqual((await poll(ctx, parkedSession.sid)).status, 400);
    // Closed between GETs with a packet queued: the next GET takes it, alone.
    const queued = await joinedSocket();
    queued.socket.emit("last", "word");
    queued.socket.conn.close();
    strictEqual((await poll(ctx, queued.sid)).text, '42["last","word"]');
    strictEqual((await poll(ctx, queued.sid)).status, 400);
    // A server shutting down: the parked GET gets a noop too.
    const stopping = await joinedSocket();
    const atStop = poll(ctx, stopping.sid);
    await delay(20);
    await ctx.io.close();
    strictEqual((await atStop).text, "6");
    strictEqual((await poll(ctx, stopping.sid)).status, 400);
  });
});

/** What python-engineio's `Client` sends with its handshake (requests' own User-Agent). */
const PYTHON_REQUESTS = { headers: { "user-agent": "python-requests/2.28.1" } };

Deno.test("a polling answer to python-engineio holds at most 16 packets, which it decodes (it drops a larger one whole, and the connection): the rest waits, in order and counted as unsent, for the next GETs, a closing session's too", async () => {
  await withServer({}, async (ctx) => {
    const sid = await joined(ctx, PYTHON_REQUESTS);
    const socket = ctx.sockets[0];
    const emitted = Array.from({ length: 40 }, (_, i) => `42["n",${i}]`);
    for (let i = 0; i < 40; i++) socket.emit("n", i);
    strictEqual(socket.conn.unsent(), emitted.join("").length - 40 * "4".length);
    const first = (await poll(ctx, sid)).text.split("\x1e");
    deepStrictEqual(first, emitted.slice(0, 16));
    // What waits still counts, for the slow-consumer bound and a large answer's pacing.
    strictEqual(socket.conn.unsent(), emitted.slice(16).join("").length - 24 * "4".length);
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(16, 32));
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(32));
    strictEqual(socket.conn.unsent(), 0);
    // A parked GET takes 16 of a burst written at once too.
    const parked = poll(ctx, sid);
    await delay(20);
    const burst = emitted.slice(0, 20).map((p) => ({ type: "message" as const, data: p.slice(1) }));
    socket.conn.sendPackets(burst);
    deepStrictEqual((await parked).text.split("\x1e"), emitted.slice(0, 16));
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(16, 20));
    // Closed with 20 queued: two answers carry them all, then the session ends.
    for (let i = 0; i < 20; i++) socket.emit("n", i);
    socket.conn.close();
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(0, 16));
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(16, 20));
    strictEqual((await poll(ctx, sid)).status, 400);
  });
});

Deno.test("python-engineio is told by its AsyncClient's User-Agent, or by its t parameter when the application set its own; any other client gets all that waits in one polling answer", async () => {
  await withServer({}, async (ctx) => {
    const emitted = Array.from({ length: 40 }, (_, i) => `42["n",${i}]`);
    const answer = async (init?: RequestInit, query = "") => {
      const sid = await joined(ctx, init, query);
      const socket = ctx.sockets.at(-1)!;
      for (let i = 0; i < 40; i++) socket.emit("n", i);
      return (await poll(ctx, sid)).text.split("\x1e");
    };
    const aiohttp = { headers: { "user-agent": "Python/3.11 aiohttp/3.8.4" } };
    deepStrictEqual(await answer(aiohttp, "&t=1795579301.794628"), emitted.slice(0, 16));
    const own = { headers: { "user-agent": "support-bot/1.0" } };
    deepStrictEqual(await answer(own, "&t=1795579301.5188787"), emitted.slice(0, 16));
    // socket.io-client's t (base 36, no dot), and Deno's fetch.
    deepStrictEqual(await answer(undefined, "&t=k2ti3hc0a1"), emitted);
    deepStrictEqual(await answer(), emitted);
  });
});

Deno.test("a ping to python-engineio goes ahead of the answers it is behind on, so that being behind does not end it by ping timeout", async () => {
  await withServer({ pingInterval: 300, pingTimeout: 3000 }, async (ctx) => {
    const sid = await joined(ctx, PYTHON_REQUESTS);
    const socket = ctx.sockets[0];
    const emitted = Array.from({ length: 40 }, (_, i) => `42["n",${i}]`);
    for (let i = 0; i < 40; i++) socket.emit("n", i);
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(0, 16));
    await delay(400);
    // The ping first, then the next 15 in order.
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), ["2", ...emitted.slice(16, 31)]);
    strictEqual((await post(ctx, sid, "3")).status, 200);
    deepStrictEqual((await poll(ctx, sid)).text.split("\x1e"), emitted.slice(31));
    deepStrictEqual(ctx.reasons, []);
  });
});

Deno.test("a close packet from the client releases the parked GET with a noop", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    const parked = poll(ctx, sid);
    await delay(20);
    strictEqual((await post(ctx, sid, "1")).status, 200);
    strictEqual((await parked).text, "6");
    strictEqual((await poll(ctx, sid)).status, 400);
  });
});

/**
 * A polling session joined to `/`, and a WebSocket that has probed its upgrade (`2probe` →
 * `3probe`, the parked GET released with a noop) and not yet sent `5`.
 */
async function probedUpgrade(ctx: Context): Promise<{ peer: Peer; sid: string }> {
  const sid = await joined(ctx);
  const parked = poll(ctx, sid);
  await delay(20);
  const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket&sid=${sid}`);
  await peer.opened;
  peer.send("2probe");
  strictEqual(await peer.next(), "3probe");
  strictEqual((await parked).text, "6");
  return { peer, sid };
}

Deno.test("probe and upgrade: 2probe/3probe, noop to the parked GET, 5, then websocket only", async () => {
  await withServer({}, async (ctx) => {
    const { peer, sid } = await probedUpgrade(ctx);
    // Packets emitted while the client pauses polling wait for the new transport.
    ctx.sockets[0].emit("during", "upgrade");
    peer.send("5");
    strictEqual(await peer.next(), '42["during","upgrade"]');
    await eventually(() => ctx.sockets[0].conn.transport === "websocket");
    peer.send('42["echo","after"]');
    strictEqual(await peer.next(), '42["echo","after"]');
    // Polling is over for this session, and a second WebSocket is refused.
    strictEqual((await poll(ctx, sid)).status, 400);
    strictEqual((await post(ctx, sid, '42["x"]')).status, 400);
    const intruder = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket&sid=${sid}`);
    await intruder.closed;
    peer.send('42["echo","still"]');
    strictEqual(await peer.next(), '42["echo","still"]');
    await peer.close();
    await eventually(() => ctx.reasons.length === 1);
    deepStrictEqual(ctx.reasons, ["transport close"]);
  });
});

Deno.test("an abandoned upgrade times out and polling carries on", async () => {
  await withServer({ upgradeTimeout: 100 }, async (ctx) => {
    const { sid } = await handshake(ctx);
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket&sid=${sid}`);
    await peer.opened;
    await peer.closed;
    await post(ctx, sid, "40");
    match((await poll(ctx, sid)).text, /^40/);
  });
});

Deno.test("malformed Socket.IO packets close the connection", async () => {
  await withServer({}, async (ctx) => {
    for (const bad of ["4abc", "42{}", '42abc["echo",1]', "40/x,[1]"]) {
      const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
      await peer.next();
      if (bad !== "40/x,[1]") {
        peer.send("40");
        await peer.next();
      }
      peer.send(bad);
      await peer.closed;
    }
    // An invalid Engine.IO packet over websocket too.
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("abc");
    await peer.closed;

    // Over polling: a bad Engine.IO payload is a 400 and the end of the session...
    const first = await handshake(ctx);
    strictEqual((await post(ctx, first.sid, "abc")).status, 400);
    strictEqual((await poll(ctx, first.sid)).status, 400);
    // ...and a bad Socket.IO packet closes the session after flushing.
    const second = await handshake(ctx);
    await post(ctx, second.sid, "40");
    await poll(ctx, second.sid);
    strictEqual((await post(ctx, second.sid, "4abc")).status, 200);
    strictEqual((await poll(ctx, second.sid)).text, "6");
    strictEqual((await poll(ctx, second.sid)).status, 400);
    // A body that is not UTF-8 (Latin-1 "café") is no packet either, not text with U+FFFD.
    const third = await handshake(ctx);
    await post(ctx, third.sid, "40");
    await poll(ctx, third.sid);
    const latin1 = Uint8Array.from([
      ...new TextEncoder().encode('42["echo","caf'),
      0xe9,
      0x22,
      0x5d,
    ]);
    strictEqual((await post(ctx, third.sid, latin1)).status, 400);
    strictEqual((await poll(ctx, third.sid)).status, 400);
    await eventually(() => ctx.reasons.filter((r) => r === "parse error").length === 5);
  });
});

Deno.test("a client ping outside an upgrade probe ends the session: in v4 only the server pings", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    await post(ctx, sid, "40");
    await poll(ctx, sid);
    strictEqual((await post(ctx, sid, "2")).status, 200);
    await eventually(() => ctx.reasons.length > 0, 2000, "the session's end");
    deepStrictEqual(ctx.reasons, ["transport error"]);
    strictEqual((await poll(ctx, sid)).status, 400);
  });
});

Deno.test("a binary polling POST body (a v3 client's) is refused with 400 and ends the session", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    await post(ctx, sid, "40");
    await poll(ctx, sid);
    const binary = await post(ctx, sid, new Uint8Array([4, 1, 2, 3]), {
      "content-type": "application/octet-stream",
    });
    deepStrictEqual([binary.status, JSON.parse(binary.text)], [400, {
      code: 3,
      message: "Bad request",
    }]);
    await eventually(() => ctx.reasons.length > 0, 2000, "the session's end");
    deepStrictEqual(ctx.reasons, ["transport error"]);
    strictEqual((await poll(ctx, sid)).status, 400);
  });
});

Deno.test("namespaces: connect, unknown namespace, disconnect packets", async () => {
  await withServer({}, async (ctx) => {
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send('40/custom,{"token":"abc"}');
    match(String(await peer.next()), /^40\/custom,\{"sid":"[^"]+"\}$/);
    peer.send("40/random");
    strictEqual(await peer.next(), '44/random,{"message":"Invalid namespace"}');
    peer.send("40");
    match(String(await peer.next()), /^40\{"sid"/);
    peer.send("41/custom,");
    peer.send('42["echo","main still works"]');
    strictEqual(await peer.next(), '42["echo","main still works"]');
    peer.send("41");
    await eventually(() => ctx.reasons.length === 1);
    deepStrictEqual(ctx.reasons, ["client namespace disconnect"]);
    ctx.io.of("/custom").disconnectSockets();
    await peer.close();
  });
});

Deno.test("connectTimeout closes a connection that never joins a namespace", async () => {
  await withServer({ connectTimeout: 100 }, async (ctx) => {
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    await peer.closed;
    strictEqual(ctx.io.engine.clientsCount, 0);
  });
});

Deno.test("a connection that leaves its last namespace waits again, and connectTimeout closes it", async () => {
  await withServer({ connectTimeout: 300 }, async (ctx) => {
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    strictEqual(ctx.io.waitingConnections, 1);
    peer.send("40");
    match(String(await peer.next()), /^40/);
    strictEqual(ctx.io.waitingConnections, 0);
    // Past the first timeout in the namespace, then out of it: kept alive by pings alone before.
    await delay(400);
    peer.send("41");
    await eventually(() => ctx.io.waitingConnections === 1);
    await peer.closed;
    strictEqual(ctx.io.waitingConnections, 0);
  });
});

Deno.test("heartbeat: pings are answered over polling; a silent peer is dropped after interval + timeout", async () => {
  await withServer({ pingInterval: 100, pingTimeout: 100 }, async (ctx) => {
    // A live peer answering three pings.
    const live = await handshake(ctx);
    for (let i = 0; i < 3; i++) {
      strictEqual((await poll(ctx, live.sid)).text, "2");
      strictEqual((await post(ctx, live.sid, "3")).status, 200);
    }
    // A silent peer: handshake, join the namespace, then never poll nor pong.
    const silent = await handshake(ctx);
    await post(ctx, silent.sid, "40");
    await eventually(() => ctx.sockets.length === 1);
    const started = Date.now();
    await eventually(() => ctx.reasons.length === 1, 1000);
    const elapsed = Date.now() - started;
    deepStrictEqual(ctx.reasons, ["ping timeout"]);
    ok(elapsed <= 400, `dropped after ${elapsed} ms`);
    strictEqual((await poll(ctx, silent.sid)).status, 400);
    // Same over websocket: a peer that reads but never pongs gets closed.
    const peer = new WebSocket(`${ctx.wsBase}?EIO=4&transport=websocket`);
    const closed = new Promise((resolve) => peer.onclose = resolve);
    await closed;
  });
});

Deno.test("a 10 MiB attachment as base64 JSON fits maxPayload; a larger body is refused", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    await post(ctx, sid, "40");
    await poll(ctx, sid);
    const file = new Uint8Array(10 * 1024 * 1024);
    crypto.getRandomValues(file.subarray(0, 65536));
    const base64 = file.toBase64();
    ok(base64.length >= 10 * 1024 * 1024 * 4 / 3);
    const event = `42["echo",${JSON.stringify({ name: "f.bin", base64 })}]`;
    const accepted = await post(ctx, sid, event);
    strictEqual(accepted.status, 200);
    await eventually(() => ctx.events.length === 1);
    const [, received] = ctx.events[0] as [string, { base64: string }];
    strictEqual(received.base64.length, base64.length);
    deepStrictEqual(Uint8Array.fromBase64(received.base64), file);
    // The echo comes back as one long-polling response.
    strictEqual((await poll(ctx, sid)).text === event, true);

    const tooLarge = await post(ctx, sid, `42["echo","${"a".repeat(17 * 1024 * 1024)}"]`);
    strictEqual(tooLarge.status, 413);
    strictEqual((await poll(ctx, sid)).status, 400, "the session is closed");

    // The same event as one WebSocket message, echoed back whole.
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("40");
    await peer.next();
    peer.send(event);
    strictEqual(await peer.next(10_000) === event, true);
    peer.send(`42["echo","${"a".repeat(17 * 1024 * 1024)}"]`);
    await peer.closed;
  });
});

Deno.test("a broadcast is encoded once: every recipient gets the same packet objects", async () => {
  await withServer({}, async (ctx) => {
    const peers = [0, 1, 2].map(() => new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`));
    for (const peer of peers) {
      await peer.next();
      peer.send("40");
      await peer.next();
    }
    await eventually(() => ctx.sockets.length === 3);
    const sent: unknown[][] = [];
    for (const socket of ctx.sockets) {
      const conn = socket.conn;
      const original = conn.sendPackets.bind(conn);
      conn.sendPackets = (packets) => {
        sent.push([...packets]);
        original(packets);
      };
    }
    ctx.io.emit("news", { text: "hi" }, new Uint8Array([1, 2]));
    strictEqual(sent.length, 3);
    strictEqual(sent[0].length, 2, "text part and one attachment");
    for (const packets of sent.slice(1)) {
      strictEqual(packets[0], sent[0][0]);
      strictEqual(packets[1], sent[0][1]);
    }
    for (const peer of peers) {
      strictEqual(await peer.next(), '451-["news",{"text":"hi"},{"_placeholder":true,"num":0}]');
      deepStrictEqual(await peer.next(), new Uint8Array([1, 2]));
      await peer.close();
    }
  });
});

Deno.test("maxPayload is enforced on streamed bodies and websocket messages", async () => {
  await withServer({ maxPayload: 1000 }, async (ctx) => {
    const { sid, open } = await handshake(ctx);
    strictEqual(open.maxPayload, 1000);
    // No Content-Length: the limit applies while reading.
    const chunk = new TextEncoder().encode(`42["echo","${"b".repeat(600)}`);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(chunk);
        controller.enqueue(chunk);
        controller.close();
      },
    });
    strictEqual((await post(ctx, sid, body)).status, 413);

    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("40");
    await peer.next();
    peer.send(`42["echo","${"é".repeat(600)}"]`); // 1200 bytes in UTF-8
    await peer.closed;
  });
});

Deno.test("maxPollingPayload bounds polling POSTs below maxPayload, unless the application set the session's maxPayload; WebSocket messages keep maxPayload", async () => {
  await withServer({ maxPayload: 4000, maxPollingPayload: 1000 }, async (ctx) => {
    const { sid, open } = await handshake(ctx);
    // The handshake tells clients the size to batch polling POSTs by.
    strictEqual(open.maxPayload, 1000);
    strictEqual((await post(ctx, sid, `42["echo","${"b".repeat(1200)}"]`)).status, 413);
    // A session whose maxPayload the application set (say once signed in) may POST that much.
    const second = await handshake(ctx);
    strictEqual((await post(ctx, second.sid, "40")).status, 200);
    await eventually(() => ctx.sockets.length === 1);
    ctx.sockets[0].conn.maxPayload = 4000;
    strictEqual((await post(ctx, second.sid, `42["echo","${"b".repeat(1200)}"]`)).status, 200);
    strictEqual((await post(ctx, second.sid, `42["echo","${"b".repeat(4200)}"]`)).status, 413);

    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("40");
    await peer.next();
    const big = `42["echo","${"c".repeat(3000)}"]`;
    peer.send(big);
    strictEqual(await peer.next(), big);
    peer.close();
  });
});

/** A POST whose first `bytes` have come, the rest held back until `finish`. */
async function heldPost(ctx: Context, bytes: number) {
  const { sid } = await handshake(ctx);
  let finish!: () => void;
  const rest = new Promise<void>((r) => finish = r);
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(new TextEncoder().encode(`42["echo","${"a".repeat(bytes - 11)}`));
      await rest;
      controller.enqueue(new TextEncoder().encode(`"]`));
      controller.close();
    },
  });
  return { reply: post(ctx, sid, body), finish };
}

Deno.test("unsignedPostBytes bounds what POSTs of sessions nobody signed in hold at once past their first 16 KiB; past it they get 503, a CONNECT never does, and signed-in sessions are not counted", async () => {
  await withServer(
    { maxPayload: 200_000, maxPollingPayload: 100_000, unsignedPostBytes: 60_000 },
    async (ctx) => {
      const signed = await handshake(ctx);
      strictEqual((await post(ctx, signed.sid, "40")).status, 200);
      await eventually(() => ctx.sockets.length === 1);
      ctx.sockets[0].conn.maxPayload = 200_000;
      // Each counts 46,384 - 16,384 = 30,000: the two hold the whole budget.
      const first = await heldPost(ctx, 46_384);
      const second = await heldPost(ctx, 46_384);
      try {
        await delay(300);
        const third = await handshake(ctx);
        const busy = await post(ctx, third.sid, `42["echo","${"t".repeat(20_000)}"]`);
        strictEqual(busy.status, 503);
        strictEqual(busy.headers.get("retry-after"), "1");
        // What fits the free part still goes: a CONNECT, an authenticate.
        const fourth = await handshake(ctx);
        strictEqual((await post(ctx, fourth.sid, "40")).status, 200);
        // A session signed in is not held to it.
        const big = `42["echo","${"s".repeat(80_000)}"]`;
        strictEqual((await post(ctx, signed.sid, big)).status, 200);
      } finally {
        first.finish();
        second.finish();
      }
      // Their ends find no budget left (until one of them gives its share back).
      for (const held of [first, second]) ok([200, 503].includes((await held.reply).status));
      // Given back once read.
      const fifth = await handshake(ctx);
      strictEqual((await post(ctx, fifth.sid, `42["echo","${"b".repeat(70_000)}"]`)).status, 200);
    },
  );
});

Deno.test("unsignedPostBytes: a session nobody signed in keeps its POSTs counted after they are read, until its maxPayload is raised or it closes", async () => {
  await withServer(
    { maxPayload: 200_000, maxPollingPayload: 100_000, unsignedPostBytes: 60_000 },
    async (ctx) => {
      // 46,384 bytes: each counts 30,000, two the whole budget.
      const big = `42["echo","${"h".repeat(46_384 - 13)}"]`;
      const open = async () => {
        const { sid } = await handshake(ctx);
        strictEqual((await post(ctx, sid, "40")).status, 200);
        // A session's first counts against nothing, as its first large WebSocket message.
        strictEqual((await post(ctx, sid, big)).status, 200);
        return sid;
      };
      // Each with its first taken already (a first is read within the budget too).
      const [first, second, third, fourth, fifth, sixth] = [
        await open(),
        await open(),
        await open(),
        await open(),
        await open(),
        await open(),
      ];
      await eventually(() => ctx.sockets.length === 6);
      strictEqual((await post(ctx, first, big)).status, 200);
      strictEqual((await post(ctx, second, big)).status, 200);
      // Read and handled, they are still held: their events may wait for a sign-in.
      strictEqual((await post(ctx, third, big)).status, 503);
      // Signed in, the first gives its share back.
      ctx.sockets[0].conn.maxPayload = 200_000;
      strictEqual((await post(ctx, fourth, big)).status, 200);
      strictEqual((await post(ctx, fifth, big)).status, 503);
      // Closed, the second gives its share back too.
      strictEqual((await post(ctx, second, "1")).status, 200);
      strictEqual((await post(ctx, sixth, big)).status, 200);
    },
  );
});

Deno.test("unsignedPostBytes: a POST whose session signs in while its body is still arriving gives its share back once read", async () => {
  const io = new SocketIOServer({
    pingInterval: 10_000,
    pingTimeout: 5_000,
    maxPayload: 200_000,
    maxPollingPayload: 100_000,
    unsignedPostBytes: 60_000,
  });
  const sockets: Socket[] = [];
  io.on("connection", (s) => void sockets.push(s));
  // POSTs that have reached the server: their bodies are read from then on.
  let posts = 0;
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, (req, info) => {
    if (req.method === "POST") posts++;
    return io.handleRequest(req, info);
  });
  const base = `http://127.0.0.1:${server.addr.port}/socket.io/?EIO=4&transport=polling`;
  const post = async (sid: string, body: BodyInit) => {
    const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body });
    await res.body?.cancel();
    return res.status;
  };
  // 46,384 bytes: each counts 30,000, two the whole budget.
  const big = `42["echo","${"s".repeat(46_384 - 13)}"]`;
  const open = async () => {
    const sid = JSON.parse((await (await fetch(base)).text()).slice(1)).sid as string;
    strictEqual(await post(sid, "40"), 200);
    // A session's first counts against nothing.
    strictEqual(await post(sid, big), 200);
    return sid;
  };
  try {
    const signing = await open();
    await eventually(() => sockets.length === 1);
    // Its next POST arrives in two parts; between them the session signs in.
    const bytes = new TextEncoder().encode(big);
    let rest!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        rest = controller;
        controller.enqueue(bytes.subarray(0, bytes.length - 1));
      },
    });
    const before = posts;
    const slow = post(signing, body);
    await eventually(() => posts > before, 5000, "the POST's arrival");
    sockets[0].conn.maxPayload = 200_000;
    rest.enqueue(bytes.subarray(bytes.length - 1));
    rest.close();
    strictEqual(await slow, 200);
    // The budget is whole again: another session's two counted POSTs fill it.
    const other = await open();
    strictEqual(await post(other, big), 200);
    strictEqual(await post(other, big), 200);
  } finally {
    await io.close();
    await server.shutdown();
  }
});

Deno.test("unsignedPostBytes: a POST that stalls longer than a session lasts without a poll is dropped, and its share given back", async () => {
  await withServer(
    {
      maxPayload: 200_000,
      maxPollingPayload: 100_000,
      unsignedPostBytes: 60_000,
      pingInterval: 300,
      pingTimeout: 300,
    },
    async (ctx) => {
      const first = await heldPost(ctx, 46_384);
      const second = await heldPost(ctx, 46_384);
      try {
        await delay(1000);
        // Past 600 ms both were dropped: the budget is whole again.
        const next = await handshake(ctx);
        const res = await post(ctx, next.sid, `42["echo","${"c".repeat(70_000)}"]`);
        strictEqual(res.status, 200);
      } finally {
        first.finish();
        second.finish();
      }
      strictEqual((await first.reply).status, 400);
      strictEqual((await second.reply).status, 400);
    },
  );
});

Deno.test("initialMaxPayload holds until raised; raised during an upgrade, the WebSocket being probed gets it too", async () => {
  await withServer({ maxPayload: 8000, initialMaxPayload: 1000 }, async (ctx) => {
    const big = `42["echo","${"c".repeat(3000)}"]`;
    // Straight over WebSocket: refused until raised.
    const early = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    await early.next();
    early.send("40");
    await early.next();
    early.send(big);
    await early.closed;
    // Raised while the WebSocket is the upgrade's candidate (probed, not yet switched to).
    const { peer } = await probedUpgrade(ctx);
    const conn = ctx.sockets.at(-1)!.conn;
    strictEqual(conn.maxPayload, 1000);
    conn.maxPayload = 8000;
    peer.send("5");
    await eventually(() => conn.transport === "websocket");
    peer.send(big);
    strictEqual(await peer.next(), big);
    await peer.close();
  });
});

Deno.test("initialLargePayload: one message past initialMaxPayload is taken, and told of, before it is handled; a second, or a larger one, is refused", async () => {
  const told: unknown[] = [];
  let server: Context | undefined;
  await withServer({
    maxPayload: 8000,
    initialMaxPayload: 1000,
    initialLargePayload: 4000,
    initialLargeTaken: (conn) => told.push([conn.id, server?.events.length]),
  }, async (c) => {
    server = c;
    const large = `42["echo","${"c".repeat(3000)}"]`;
    const peer = new Peer(`${c.wsBase}?EIO=4&transport=websocket`);
    await peer.next();
    peer.send("40");
    await peer.next();
    peer.send(large);
    strictEqual(await peer.next(), large);
    // Told with the session's id, before the event was handled.
    deepStrictEqual(told, [[c.sockets[0].conn.id, 0]]);
    peer.send(large);
    await peer.closed;
    // Past initialLargePayload even the first is refused.
    const larger = new Peer(`${c.wsBase}?EIO=4&transport=websocket`);
    await larger.next();
    larger.send("40");
    await larger.next();
    larger.send(`42["echo","${"c".repeat(5000)}"]`);
    await larger.closed;
    strictEqual(told.length, 1);
  });
});

Deno.test("initialLargeMessages: a session takes its first message past initialMaxPayload whatever unsignedPostBytes holds, and the rest of that many while it holds them; its close, or its maxPayload raised, gives them back", async () => {
  await withServer({
    maxPayload: 8000,
    initialMaxPayload: 1000,
    initialLargePayload: 4000,
    initialLargeMessages: 3,
    // Beside each session's first, two large messages (3,012 bytes each), not three.
    unsignedPostBytes: 7000,
  }, async (c) => {
    const large = `42["echo","${"c".repeat(3000)}"]`;
    const open = async () => {
      const peer = new Peer(`${c.wsBase}?EIO=4&transport=websocket`);
      await peer.next();
      peer.send("40");
      await peer.next();
      return peer;
    };
    const first = await open();
    for (let i = 0; i < 3; i++) first.send(large);
    for (let i = 0; i < 3; i++) strictEqual(await first.next(), large);
    // The budget holds no more: another session's first is still taken, its second refused.
    const refused = await open();
    refused.send(large);
    strictEqual(await refused.next(), large);
    refused.send(large);
    await refused.closed;
    // Signed in, the first gives its share back, and takes large messages past the count.
    c.sockets[0].conn.maxPayload = 8000;
    first.send(large);
    strictEqual(await first.next(), large);
    const second = await open();
    for (let i = 0; i < 3; i++) second.send(large);
    for (let i = 0; i < 3; i++) strictEqual(await second.next(), large);
    // The budget is full again: a session's first goes, not its second.
    const third = await open();
    third.send(large);
    strictEqual(await third.next(), large);
    third.send(large);
    await third.closed;
    // The second's close gave back its two: two fit again.
    await second.close();
    await eventually(() => c.reasons.length === 3);
    const last = await open();
    for (let i = 0; i < 3; i++) last.send(large);
    for (let i = 0; i < 3; i++) strictEqual(await last.next(), large);
    await Promise.all([first.close(), last.close()]);
  });
});

Deno.test("CORS: origins are echoed with credentials, preflights answered, others refused", async () => {
  await withServer({}, async (ctx) => {
    const reply = await get(ctx, "EIO=4&transport=polling", {
      headers: { origin: "https://app.example" },
    });
    strictEqual(reply.status, 200);
    strictEqual(reply.headers.get("access-control-allow-origin"), "https://app.example");
    strictEqual(reply.headers.get("access-control-allow-credentials"), "true");
    const preflight = await get(ctx, "EIO=4&transport=polling", {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
      },
    });
    strictEqual(preflight.status, 204);
    strictEqual(preflight.headers.get("access-control-allow-origin"), "https://app.example");
    match(preflight.headers.get("access-control-allow-methods") ?? "", /POST/);
    strictEqual(preflight.headers.get("access-control-allow-headers"), "content-type");
    // What a client's extraHeaders name is granted, never what a proxy would take its word from.
    const asked = await get(ctx, "EIO=4&transport=polling", {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers":
          "Authorization, X-Forwarded-Host, forwarded, content-type, X-Client-Version, X-Real-IP",
      },
    });
    strictEqual(
      asked.headers.get("access-control-allow-headers"),
      "authorization,content-type,x-client-version",
    );
  });
  await withServer({ allowedOrigins: ["https://good.example"] }, async (ctx) => {
    const good = await get(ctx, "EIO=4&transport=polling", {
      headers: { origin: "https://good.example" },
    });
    strictEqual(good.status, 200);
    strictEqual(good.headers.get("access-control-allow-origin"), "https://good.example");
    const bad = await get(ctx, "EIO=4&transport=polling", {
      headers: { origin: "https://evil.example" },
    });
    strictEqual(bad.status, 403);
    strictEqual(JSON.parse(bad.text).code, 4);
    strictEqual(bad.headers.get("access-control-allow-origin"), null);
    // Requests without an Origin (non-browser clients) are not subject to CORS.
    strictEqual((await get(ctx, "EIO=4&transport=polling")).status, 200);
  });
});

Deno.test("only the enabled transports are served", async () => {
  await withServer({ transports: ["websocket"] }, async (ctx) => {
    const reply = await get(ctx, "EIO=4&transport=polling");
    strictEqual(reply.status, 400);
    strictEqual(JSON.parse(reply.text).code, 0);
    const peer = new Peer(`${ctx.wsBase}?EIO=4&transport=websocket`);
    match(String(await peer.next()), /^0\{/);
    await peer.close();
  });
  await withServer({ allowUpgrades: false }, async (ctx) => {
    const { open } = await handshake(ctx);
    deepStrictEqual(open.upgrades, []);
  });
});

Deno.test("a polling POST is bounded by its bytes alone: thousands of events a client queued arrive in order, and a flood of tiny packets is taken without splitting it whole", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    strictEqual((await post(ctx, sid, "40")).status, 200);
    await eventually(() => ctx.sockets.length === 1);
    // What socket.io-client sends on a reconnect after a user typed a while offline.
    const queued = Array.from({ length: 3000 }, (_, n) => `42["typing",${n}]`);
    strictEqual((await post(ctx, sid, queued.join("\x1e"))).status, 200);
    await eventually(() => ctx.events.length === 3000);
    deepStrictEqual(ctx.events, Array.from({ length: 3000 }, (_, n) => ["typing", n]));
    // 8 MB of noops: split whole, it took hundreds of MB.
    const before = Deno.memoryUsage().rss;
    strictEqual((await post(ctx, sid, "6\x1e".repeat(4_000_000) + "6")).status, 200);
    const grew = Deno.memoryUsage().rss - before;
    ok(grew < 150_000_000, `grew ${grew} bytes`);
    deepStrictEqual(ctx.reasons, []);
  });
});

Deno.test("a long polling POST is handled in slices: timers run meanwhile, its packets stay in order, and it is answered once all are handled", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    strictEqual((await post(ctx, sid, "40")).status, 200);
    await eventually(() => ctx.sockets.length === 1);
    const count = 1_000_000;
    const body = Array.from({ length: count }, (_, n) => `42["e",${n}]`).join("\x1e");
    // A timer that runs while some of its packets are handled and some are not: one loop over
    // them all held every timer, and every other client, for the whole POST.
    let between = 0;
    const ticks = setInterval(() => {
      if (ctx.events.length > 0 && ctx.events.length < count) between++;
    }, 1);
    let reply: Reply;
    try {
      reply = await post(ctx, sid, body);
    } finally {
      clearInterval(ticks);
    }
    strictEqual(reply.status, 200);
    strictEqual(ctx.events.length, count);
    ok(ctx.events.every((event, n) => event[1] === n), "in the order sent");
    ok(between > 0, "no timer ran while the POST was handled");
  });
});

Deno.test("a polling POST sent while another of the session is still being handled is refused and ends the session, as Node's server does: their packets never interleave", async () => {
  await withServer({}, async (ctx) => {
    const { sid } = await handshake(ctx);
    strictEqual((await post(ctx, sid, "40")).status, 200);
    await eventually(() => ctx.sockets.length === 1);
    const count = 500_000;
    // Sent once the first packet of the long POST has been handled: that POST is still in
    // flight, hundreds of thousands of packets from its end.
    let second: Promise<Reply> | undefined;
    ctx.sockets[0].on("e", (n: unknown) => {
      if (n === 0) second = post(ctx, sid, '42["second"]');
    });
    const body = Array.from({ length: count }, (_, n) => `42["e",${n}]`).join("\x1e");
    const first = await post(ctx, sid, body);
    strictEqual(first.status, 200);
    ok(second, "the second POST was sent");
    strictEqual((await second).status, 400);
    ok(ctx.events.length < count, "the session ended before the first POST's last packet");
    deepStrictEqual(ctx.events.filter((event) => event[0] !== "e"), []);
    deepStrictEqual(ctx.reasons, ["transport error"]);
  });
});

Deno.test("an initialLargeTaken that throws is reported, and the polling POST that told it is answered and ends nothing", async () => {
  const io = new SocketIOServer({
    pingInterval: 10_000,
    pingTimeout: 5_000,
    maxPollingPayload: 100_000,
    unsignedPostBytes: 1_000_000,
    initialLargeTaken() {
      throw new Error("application bug");
    },
  });
  const reasons: string[] = [];
  io.on("connection", (s) => s.on("disconnect", (r) => reasons.push(r)));
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    (req, info) => io.handleRequest(req, info),
  );
  const base = `http://127.0.0.1:${server.addr.port}/socket.io/?EIO=4&transport=polling`;
  const post = async (sid: string, body: string) => {
    const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body });
    return `${res.status} ${await res.text()}`;
  };
  const reported = console.error;
  const reports: unknown[] = [];
  console.error = (...args: unknown[]) => void reports.push(args);
  try {
    const sid = JSON.parse((await (await fetch(base)).text()).slice(1)).sid as string;
    strictEqual(await post(sid, "40"), "200 ok");
    // Past the free 16 KiB: counted, and the application told (the session's first is free).
    const statuses = [
      await post(sid, `42["echo","${"x".repeat(40_000)}"]`),
      await post(sid, `42["echo","${"y".repeat(40_000)}"]`),
      await post(sid, `42["echo","small"]`),
    ];
    deepStrictEqual({ statuses, reasons, reports: reports.length }, {
      statuses: ["200 ok", "200 ok", "200 ok"],
      reasons: [],
      reports: 1,
    });
  } finally {
    console.error = reported;
    await io.close();
    await server.shutdown();
  }
});
