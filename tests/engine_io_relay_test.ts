/**
 * Tests of the cross-isolate relay: two servers in one process stand for two isolates of
 * `deno serve --parallel` (they share a `BroadcastChannel` name), and requests of one session are
 * routed to both, as the kernel may do without sticky sessions.
 */

import { deepStrictEqual, match, ok, strictEqual } from "node:assert/strict";
import { delay, eventually, nextEvent as next } from "./assert.ts";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import {
  BODY_BYTES_PER_MS,
  BroadcastChannelRelay,
  type Socket,
  SocketIOServer,
  type SocketIOServerOptions,
} from "../src/engine_io/mod.ts";

interface Node {
  io: SocketIOServer;
  relay: BroadcastChannelRelay;
  server: Deno.HttpServer<Deno.NetAddr>;
  origin: string;
  base: string;
  /** Requests this node received for an existing sid, by kind. */
  hits: { get: number; post: number; websocket: number };
  sockets: Socket[];
  reasons: string[];
  closed: boolean;
}

interface Cluster {
  a: Node;
  b: Node;
  /** The relay's channel name. */
  name: string;
}

function setup(io: SocketIOServer, node: Pick<Node, "sockets" | "reasons">): void {
  io.on("connection", (socket) => {
    node.sockets.push(socket);
    socket.on("disconnect", (reason) => node.reasons.push(reason));
    socket.on("echo", (...args: unknown[]) => {
      const ack = typeof args.at(-1) === "function"
        ? args.pop() as (...a: unknown[]) => void
        : null;
      if (ack) ack(...args);
      else socket.emit("echo", ...args);
    });
  });
}

async function startNode(
  name: string,
  options: SocketIOServerOptions,
  ackTimeout = 200,
  giveUpMs?: number,
): Promise<Node> {
  const relay = new BroadcastChannelRelay({ name, ackTimeout, giveUpMs });
  const io = new SocketIOServer({ pingInterval: 10_000, pingTimeout: 5_000, ...options, relay });
  const node = {
    io,
    relay,
    hits: { get: 0, post: 0, websocket: 0 },
    sockets: [],
    reasons: [],
    closed: false,
  } as unknown as Node;
  setup(io, node);
  node.server = Deno.serve({ port: 0, onListen() {} }, (req, info) => {
    const url = new URL(req.url);
    if (url.searchParams.has("sid")) {
      if (req.headers.get("upgrade")) node.hits.websocket++;
      else if (req.method === "GET") node.hits.get++;
      else if (req.method === "POST") node.hits.post++;
    }
    return io.handleRequest(req, info);
  });
  node.origin = `http://localhost:${node.server.addr.port}`;
  node.base = `${node.origin}/socket.io/`;
  await Promise.resolve();
  return node;
}

async function stopNode(node: Node): Promise<void> {
  if (node.closed) return;
  node.closed = true;
  await node.io.close();
  await node.server.shutdown();
}

async function withCluster(
  // Long heartbeats unless a test needs short ones: exact poll bodies are asserted.
  options: SocketIOServerOptions,
  fn: (cluster: Cluster) => Promise<void>,
  ackTimeout?: number,
  giveUpMs?: number,
): Promise<void> {
  // A unique channel per test: parallel test workers of one process must not hear each other.
  const name = `engine.io-relay-test:${crypto.randomUUID()}`;
  const a = await startNode(name, options, ackTimeout, giveUpMs);
  const b = await startNode(name, options, ackTimeout, giveUpMs);
  try {
    await fn({ a, b, name });
  } finally {
    await stopNode(a);
    await stopNode(b);
  }
}

/**
 * A reverse proxy in front of both nodes; `route` picks the node of each request. WebSockets
 * are piped frame by frame.
 */
function startProxy(
  route: (req: Request, url: URL, count: number) => Node,
): { url: string; stop(): Promise<void> } {
  let count = 0;
  const pipes = new Set<{ client: WebSocket; upstream: WebSocket }>();
  const server = Deno.serve({ port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const node = route(req, url, count++);
    const target = node.origin + url.pathname + url.search;
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      const { socket: client, response } = Deno.upgradeWebSocket(req);
      const upstream = new WebSocket(target.replace("http", "ws"));
      client.binaryType = upstream.binaryType = "arraybuffer";
      const pipe = { client, upstream };
      pipes.add(pipe);
      const early: (string | ArrayBuffer)[] = [];
      upstream.onopen = () => {
        for (const data of early) upstream.send(data);
        early.length = 0;
      };
      client.onmessage = (e) => {
        if (upstream.readyState === WebSocket.OPEN) upstream.send(e.data);
        else early.push(e.data);
      };
      upstream.onmessage = (e) => {
        if (client.readyState === WebSocket.OPEN) client.send(e.data);
      };
      const shut = () => {
        for (const ws of [client, upstream]) {
          if (ws.readyState === WebSocket.OPEN) ws.close();
        }
        pipes.delete(pipe);
      };
      client.onclose = upstream.onclose = shut;
      client.onerror = upstream.onerror = () => {};
      return response;
    }
    const headers = new Headers(req.headers);
    headers.delete("host");
    headers.delete("connection");
    const body = req.method === "GET" || req.method === "HEAD"
      ? undefined
      : await req.arrayBuffer();
    const res = await fetch(target, { method: req.method, headers, body });
    return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
  });
  return {
    url: `http://localhost:${server.addr.port}`,
    async stop() {
      for (const { client, upstream } of pipes) {
        for (const ws of [client, upstream]) {
          if (ws.readyState === WebSocket.OPEN) ws.close();
        }
      }
      await eventually(() => pipes.size === 0).catch(() => {});
      await server.shutdown();
    },
  };
}

async function request(url: string, init?: RequestInit): Promise<{ status: number; text: string }> {
  const res = await fetch(url, init);
  return { status: res.status, text: await res.text() };
}

function poll(node: Node, sid: string) {
  return request(`${node.base}?EIO=4&transport=polling&sid=${sid}`);
}

function post(node: Node, sid: string, body: string) {
  return request(`${node.base}?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body });
}

async function handshake(node: Node): Promise<string> {
  const reply = await request(`${node.base}?EIO=4&transport=polling`);
  strictEqual(reply.status, 200);
  return JSON.parse(reply.text.slice(1)).sid;
}

Deno.test("relay: GETs and POSTs that reach the non-owner are served by the owner", async () => {
  await withCluster({}, async ({ a, b }) => {
    const sid = await handshake(a);
    // CONNECT through B; the CONNECT reply is collected through B as well.
    strictEqual((await post(b, sid, "40")).text, "ok");
    match((await poll(b, sid)).text, /^40\{"sid":"[^"]+"\}$/);
    strictEqual(a.sockets.length, 1, "the session lives on A");
    strictEqual(b.sockets.length, 0);
    strictEqual(b.io.engine.clientsCount, 0);

    // An event posted to B runs A's handler; its answer is polled from B.
    await post(b, sid, '42["echo","via b"]\x1e451-["echo",{"_placeholder":true,"num":0}]\x1ebAQID');
    strictEqual(
      (await poll(b, sid)).text,
      '42["echo","via b"]\x1e451-["echo",{"_placeholder":true,"num":0}]\x1ebAQID',
    );

    // A GET parked on B is answered when A emits.
    const parked = poll(b, sid);
    await delay(30);
    a.sockets[0].emit("push", { n: 1 });
    strictEqual((await parked).text, '42["push",{"n":1}]');

    // The owner still sees overlapping GETs even when they arrive at different isolates.
    const first = poll(a, sid);
    await delay(30);
    strictEqual((await poll(b, sid)).status, 400);
    strictEqual((await first).text, "6");
    strictEqual((await poll(b, sid)).status, 400);
    deepStrictEqual(a.reasons, ["transport error"]);
  });
});

Deno.test("relay: a POST that is not UTF-8 ends the session as a parse error, whichever isolate it reaches", async () => {
  const latin1 = Uint8Array.from([...new TextEncoder().encode('42["echo","caf'), 0xe9, 0x22, 0x5d]);
  for (const via of ["owner", "other isolate"]) {
    await withCluster({}, async ({ a, b }) => {
      const sid = await handshake(a);
      strictEqual((await post(a, sid, "40")).text, "ok");
      await poll(a, sid);
      const target = via === "owner" ? a : b;
      const url = `${target.base}?EIO=4&transport=polling&sid=${sid}`;
      strictEqual((await request(url, { method: "POST", body: latin1 })).status, 400, via);
      await eventually(() => a.reasons.length > 0, 2000, "the session's end");
      deepStrictEqual(a.reasons, ["parse error"], via);
      strictEqual((await poll(a, sid)).status, 400, via);
    });
  }
});

Deno.test("relay: a polling POST over maxPayload is refused 413 and ends the session, whichever isolate it reaches", async () => {
  const big = `42["echo","${"x".repeat(5000)}"]`;
  for (const via of ["owner", "other isolate"]) {
    await withCluster({ maxPayload: 1000 }, async ({ a, b }) => {
      const sid = await handshake(a);
      strictEqual((await post(a, sid, "40")).text, "ok");
      await poll(a, sid);
      strictEqual((await post(via === "owner" ? a : b, sid, big)).status, 413, via);
      await eventually(() => a.reasons.length > 0, 2000, "the session's end");
      deepStrictEqual(a.reasons, ["transport error"], via);
      strictEqual((await poll(a, sid)).status, 400, via);
    });
  }
});

Deno.test("relay: a POST relayed for a session nobody signed in counts against its owner's unsignedPostBytes until the session signs in", async () => {
  await withCluster(
    { maxPayload: 200_000, maxPollingPayload: 100_000, unsignedPostBytes: 60_000 },
    async ({ a, b }) => {
      // 46,384 bytes: each counts 30,000, two the whole budget.
      const big = `42["echo","${"r".repeat(46_384 - 13)}"]`;
      const open = async () => {
        const sid = await handshake(a);
        strictEqual((await post(a, sid, "40")).text, "ok");
        // A session's first counts against nothing, as its first large WebSocket message.
        strictEqual((await post(b, sid, big)).status, 200);
        return sid;
      };
      const [first, second, third] = [await open(), await open(), await open()];
      // B reads each and gives its share back once A has answered; A holds them as its own.
      strictEqual((await post(b, first, big)).status, 200);
      strictEqual((await post(b, second, big)).status, 200);
      strictEqual((await post(b, third, big)).status, 503);
      await eventually(() => a.reasons.length === 1, 2000, "the session's end");
      deepStrictEqual(a.reasons, ["transport error"]);
      // Signed in on A, the first gives its share back.
      a.sockets[0].conn.maxPayload = 200_000;
      strictEqual((await post(b, await open(), big)).status, 200);
    },
  );
});

Deno.test("relay: a POST relayed while one of the session is still being handled on its owner is refused and ends the session; their packets never interleave", async () => {
  await withCluster({}, async ({ a, b }) => {
    const sid = await handshake(a);
    strictEqual((await post(a, sid, "40")).text, "ok");
    await eventually(() => a.sockets.length === 1);
    const count = 500_000;
    const events: unknown[] = [];
    // Relayed once the first packet of the long POST on A has been handled: that POST is still
    // in flight, hundreds of thousands of packets from its end.
    let second: Promise<{ status: number; text: string }> | undefined;
    a.sockets[0].onAny((event: unknown, n: unknown) => {
      events.push(event);
      if (event === "e" && n === 0) second = post(b, sid, '42["second"]');
    });
    const body = Array.from({ length: count }, (_, n) => `42["e",${n}]`).join("\x1e");
    strictEqual((await post(a, sid, body)).status, 200);
    ok(second, "the second POST was sent");
    strictEqual((await second).status, 400);
    ok(events.length < count, "the session ended before the first POST's last packet");
    deepStrictEqual(events.filter((event) => event !== "e"), []);
    deepStrictEqual(a.reasons, ["transport error"]);
  });
});

Deno.test("relay: heartbeats through the non-owner keep the session alive", async () => {
  await withCluster({ pingInterval: 100, pingTimeout: 200 }, async ({ a, b }) => {
    const sid = await handshake(a);
    await post(b, sid, "40");
    match((await poll(b, sid)).text, /^40/);
    for (let i = 0; i < 4; i++) {
      const node = i % 2 ? a : b;
      strictEqual((await poll(node, sid)).text, "2");
      strictEqual((await post(node, sid, "3")).status, 200);
    }
    strictEqual(a.reasons.length, 0);
    // Silence, even with a GET parked on the non-owner, ends in a ping timeout on the owner.
    const parked = poll(b, sid);
    strictEqual((await parked).text, "2");
    await eventually(() => a.reasons.length === 1, 1000);
    deepStrictEqual(a.reasons, ["ping timeout"]);
    strictEqual((await poll(b, sid)).status, 400);
  });
});

Deno.test("relay: unknown sids fail at once, or after the ack timeout when the owner is gone", async () => {
  await withCluster({}, async ({ a, b }) => {
    // Minted by B itself but unknown: no relay round trip.
    const own = `${b.relay.nodeId}.AAAAAAAAAAAAAAAAAAAA`;
    let started = Date.now();
    strictEqual((await poll(b, own)).status, 400);
    ok(Date.now() - started < 150);
    // Minted by another process (a previous run): nobody here can own it.
    const foreign = `p${(Deno.pid + 1).toString(36)}n0123abcd.AAAAAAAAAAAAAAAAAAAA`;
    started = Date.now();
    strictEqual((await poll(b, foreign)).status, 400);
    ok(Date.now() - started < 150);
    // Without a sid prefix at all.
    strictEqual((await poll(b, "plain")).status, 400);

    // A GET parked on B gets a noop when A shuts down...
    const sid = await handshake(a);
    const parked = poll(b, sid);
    await delay(30);
    started = Date.now();
    await stopNode(a);
    strictEqual((await parked).text, "6");
    ok(Date.now() - started < 500);
    // ...and afterwards B waits for the ack timeout and then says "unknown sid".
    started = Date.now();
    const reply = await poll(b, sid);
    const elapsed = Date.now() - started;
    strictEqual(reply.status, 400);
    strictEqual(JSON.parse(reply.text).code, 1);
    ok(elapsed >= 150 && elapsed < 1000, `answered after ${elapsed} ms`);
    strictEqual((await post(b, sid, "40")).status, 400);
    // A large body gets longer: the owner's channel carries it first (a millisecond per
    // BODY_BYTES_PER_MS characters), so that its upload is not called unknown while it crosses.
    const large = `4${"x".repeat(300 * BODY_BYTES_PER_MS)}`;
    started = Date.now();
    strictEqual((await post(b, sid, large)).status, 400);
    ok(Date.now() - started >= 200 + 300, `answered after ${Date.now() - started} ms`);
  });
});

/**
 * A proxy that sends handshakes to A, WebSocket upgrades to B, and every other request to A and
 * B in turn: a session whose owner is A, its requests and transport on both isolates.
 */
const alternating = (a: Node, b: Node) =>
  startProxy((req, url, count) => {
    if (!url.searchParams.has("sid")) return a;
    if (req.headers.get("upgrade")) return b;
    return count % 2 ? a : b;
  });

/** socket.io-client at `url` over long-polling only, not reconnecting. */
const pollingClient = (url: string): ClientSocket =>
  connect(url, { transports: ["polling"], forceNew: true, reconnection: false });

Deno.test("relay: socket.io-client over polling, requests alternating between the isolates", async () => {
  await withCluster({ pingInterval: 200, pingTimeout: 400 }, async ({ a, b }) => {
    // Handshakes go to A so the owner is known; everything else alternates.
    const proxy = alternating(a, b);
    const client = pollingClient(proxy.url);
    try {
      await next(client, "connect");
      strictEqual(a.sockets.length, 1);
      strictEqual(b.sockets.length, 0);
      deepStrictEqual(await client.emitWithAck("echo", { hello: "relay" }), { hello: "relay" });
      const bytes = new Uint8Array(256 * 1024).map((_, i) => i & 0xff);
      const echoed = await client.emitWithAck("echo", bytes);
      deepStrictEqual(new Uint8Array(echoed), bytes);
      const pushed = next<[string]>(client, "push");
      a.sockets[0].emit("push", "from the owner");
      strictEqual((await pushed)[0], "from the owner");
      client.on("question", (n: number, ack: (v: number) => void) => ack(n * 2));
      strictEqual(await a.sockets[0].timeout(2000).emitWithAck("question", 21), 42);
      // Let heartbeats run through both isolates.
      await delay(800);
      ok(client.connected);
      strictEqual(a.reasons.length, 0);
      ok(b.hits.get > 0 && b.hits.post > 0, `B served ${JSON.stringify(b.hits)}`);
      ok(a.hits.get > 0 && a.hits.post > 0, `A served ${JSON.stringify(a.hits)}`);
      strictEqual(client.io.engine.transport.name, "polling");
    } finally {
      client.disconnect();
      await eventually(() => a.reasons.length === 1).catch(() => {});
      await proxy.stop();
    }
    deepStrictEqual(a.reasons, ["client namespace disconnect"]);
  });
});

Deno.test("relay: a websocket upgrade that lands on the non-owner is bridged to the owner, its frames addressed to it alone", async () => {
  await withCluster({ pingInterval: 200, pingTimeout: 400 }, async ({ a, b, name }) => {
    // A third isolate of the process: frames of up to 64 MiB must not be copied to it.
    const bystander = new BroadcastChannel(name);
    let overheard = 0;
    bystander.onmessage = () => overheard++;
    const proxy = alternating(a, b);
    const client: ClientSocket = connect(proxy.url, { forceNew: true, reconnection: false });
    try {
      await next(client, "connect");
      await eventually(() => client.io.engine.transport.name === "websocket");
      strictEqual(b.hits.websocket, 1, "the upgrade reached B");
      await eventually(() => a.sockets[0]?.conn.transport === "websocket");
      strictEqual(b.io.engine.clientsCount, 0, "B holds no session, only the bridge");
      deepStrictEqual(await client.emitWithAck("echo", ["over", "the", "bridge"]), [
        "over",
        "the",
        "bridge",
      ]);
      const bytes = new Uint8Array(512 * 1024).map((_, i) => (i * 7) & 0xff);
      deepStrictEqual(new Uint8Array(await client.emitWithAck("echo", bytes)), bytes);
      strictEqual(overheard, 0, "messages heard by an isolate they were not for");
      client.on("question", (n: number, ack: (v: number) => void) => ack(n + 1));
      strictEqual(await a.sockets[0].timeout(2000).emitWithAck("question", 1), 2);
      // Pings and pongs cross the bridge; the session outlives several heartbeats.
      await delay(1000);
      ok(client.connected);
      strictEqual(a.reasons.length, 0);
      strictEqual(client.io.engine.transport.name, "websocket");
      // Closing from the server side travels back over the bridge.
      const closed = next<[string]>(client, "disconnect");
      a.sockets[0].conn.close();
      strictEqual((await closed)[0], "transport close");
    } finally {
      client.disconnect();
      bystander.close();
      await proxy.stop();
    }
    deepStrictEqual(a.reasons, ["forced close"]);
  });
});

Deno.test("relay: frames, confirmations and the close a bridge loses between isolates are posted again, so the client misses nothing", async () => {
  await withCluster({}, async ({ a, b }) => {
    const proxy = alternating(a, b);
    const client: ClientSocket = connect(proxy.url, { forceNew: true, reconnection: false });
    // Deno's channel drops posts for an isolate that falls behind; here the next few of a kind.
    const post = BroadcastChannel.prototype.postMessage;
    const dropping = new Map<string, number>();
    BroadcastChannel.prototype.postMessage = function (message: unknown) {
      const kind = (message as { k?: string }).k ?? "";
      const left = dropping.get(kind) ?? 0;
      if (left > 0) {
        dropping.set(kind, left - 1);
        return;
      }
      return post.call(this, message);
    };
    const pushed: string[] = [];
    client.on("push", (text: string) => pushed.push(text));
    try {
      await next(client, "connect");
      await eventually(() => client.io.engine.transport.name === "websocket");
      await eventually(() => a.sockets[0]?.conn.transport === "websocket");
      deepStrictEqual(await client.emitWithAck("echo", "before"), "before");
      // A run of frames lost both ways, then the confirmations of what came after.
      dropping.set("frame", 3);
      for (let i = 1; i <= 5; i++) a.sockets[0].emit("push", `p${i}`);
      deepStrictEqual(await client.timeout(5000).emitWithAck("echo", "after"), "after");
      dropping.set("fack", 2);
      deepStrictEqual(await client.timeout(5000).emitWithAck("echo", "again"), "again");
      await eventually(() => pushed.length === 5, 5000, "every push");
      deepStrictEqual(pushed, ["p1", "p2", "p3", "p4", "p5"]);
      ok(client.connected);
      deepStrictEqual(a.reasons, []);
      // The client's socket closing, its close lost once, still ends the session on the owner.
      dropping.set("close", 1);
      client.io.engine.close();
      await eventually(() => a.reasons.length === 1, 5000, "the session's end");
      deepStrictEqual([dropping.get("close"), a.reasons], [0, ["transport close"]]);
    } finally {
      BroadcastChannel.prototype.postMessage = post;
      client.disconnect();
      await proxy.stop();
    }
  });
});

Deno.test("relay: a bridge whose other isolate confirms nothing ends, and the session with it", async () => {
  await withCluster(
    {},
    async ({ a, b }) => {
      const proxy = alternating(a, b);
      const client: ClientSocket = connect(proxy.url, { forceNew: true, reconnection: false });
      const post = BroadcastChannel.prototype.postMessage;
      let stuck = false;
      BroadcastChannel.prototype.postMessage = function (message: unknown) {
        // The client's isolate has stopped reading: its frames go out, nothing reaches it.
        if (stuck && (message as { to?: string }).to === b.relay.nodeId) return;
        return post.call(this, message);
      };
      try {
        await next(client, "connect");
        await eventually(() => client.io.engine.transport.name === "websocket");
        await eventually(() => a.sockets[0]?.conn.transport === "websocket");
        stuck = true;
        a.sockets[0].emit("push", "never confirmed");
        // Long before a heartbeat would tell (10 s and 5 s here).
        await eventually(() => a.reasons.length === 1, 5000, "the owner's end of the session");
        deepStrictEqual(a.reasons, ["transport close"]);
      } finally {
        BroadcastChannel.prototype.postMessage = post;
        client.disconnect();
        await proxy.stop();
      }
    },
    undefined,
    1000,
  );
});

Deno.test("relay: requests, answers, acks and confirmations the channel drops are posted again, so a polling session loses nothing", async () => {
  await withCluster({ pingInterval: 1000, pingTimeout: 2000 }, async ({ a, b }) => {
    const proxy = alternating(a, b);
    const client = pollingClient(proxy.url);
    // Deno's channel drops posts for an isolate that falls behind; here the next of a kind is.
    const post = BroadcastChannel.prototype.postMessage;
    const dropping = new Set<string>();
    const dropped: string[] = [];
    BroadcastChannel.prototype.postMessage = function (message: unknown) {
      const kind = (message as { k?: string }).k ?? "";
      if (dropping.delete(kind)) {
        dropped.push(kind);
        return;
      }
      return post.call(this, message);
    };
    const pushed: number[] = [];
    client.on("push", (n: number) => pushed.push(n));
    try {
      await next(client, "connect");
      let n = 0;
      for (const kind of ["res", "req", "ack", "got", "res", "res"]) {
        dropping.add(kind);
        // A push from the owner rides a poll's answer; the echo, a POST and a poll.
        a.sockets[0].emit("push", ++n);
        strictEqual(await client.timeout(5000).emitWithAck("echo", `${kind} ${n}`), `${kind} ${n}`);
        await eventually(() => pushed.length === n, 5000, `push ${n}`);
      }
      deepStrictEqual(dropped, ["res", "req", "ack", "got", "res", "res"]);
      deepStrictEqual(pushed, [1, 2, 3, 4, 5, 6]);
      ok(client.connected);
      deepStrictEqual(a.reasons, []);
      ok(b.hits.get > 0 && b.hits.post > 0, `B served ${JSON.stringify(b.hits)}`);
    } finally {
      BroadcastChannel.prototype.postMessage = post;
      client.disconnect();
      await eventually(() => a.reasons.length === 1).catch(() => {});
      await proxy.stop();
    }
    // A request is posted again a quarter of a second on: its ack must be awaited longer.
  }, 1000);
});
