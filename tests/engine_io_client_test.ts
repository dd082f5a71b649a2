/**
 * End-to-end tests of `src/engine_io` against the official `socket.io-client` from npm.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { delay, eventually, nextEvent as next } from "./assert.ts";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import {
  ConnectError,
  type Socket,
  SocketIOServer,
  type SocketIOServerOptions,
} from "../src/engine_io/mod.ts";

interface Harness {
  io: SocketIOServer;
  url: string;
  clients: ClientSocket[];
  client(path?: string, options?: Parameters<typeof connect>[1]): ClientSocket;
}

/** Runs `fn` against a fresh server on port 0 and tears everything down afterwards. */
async function withServer(
  options: SocketIOServerOptions,
  setup: (io: SocketIOServer) => void,
  fn: (h: Harness) => Promise<void>,
): Promise<void> {
  const io = new SocketIOServer({ pingInterval: 400, pingTimeout: 400, ...options });
  setup(io);
  const server = Deno.serve({ port: 0, onListen() {} }, (req, info) => io.handleRequest(req, info));
  const url = `http://localhost:${server.addr.port}`;
  const clients: ClientSocket[] = [];
  const harness: Harness = {
    io,
    url,
    clients,
    client(path = "/", clientOptions = {}) {
      const socket = connect(url + path, {
        forceNew: true,
        reconnectionDelay: 50,
        reconnectionDelayMax: 100,
        ...clientOptions,
      });
      clients.push(socket);
      return socket;
    },
  };
  try {
    await fn(harness);
  } finally {
    for (const client of clients) client.disconnect();
    await io.close();
    await server.shutdown();
    // Let the client's sockets observe the close before the sanitizers look.
    await delay(50);
  }
}

function bytes(size: number): Uint8Array {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (i * 31 + 7) & 0xff;
  return data;
}

function echoHandlers(io: SocketIOServer): void {
  io.on("connection", (socket) => {
    socket.on("echo", (payload: unknown, ack?: (value: unknown) => void) => ack?.(payload));
    socket.on("bounce", (payload: unknown) => socket.emit("bounced", payload));
  });
}

Deno.test("default options: polling first, then upgrade to websocket; events and acks both ways", async () => {
  const serverSockets: Socket[] = [];
  await withServer({}, (io) => {
    echoHandlers(io);
    io.on("connection", (socket) => {
      serverSockets.push(socket);
      socket.emit("welcome", { id: socket.id });
    });
  }, async (h) => {
    const client = h.client();
    const welcome = next<[{ id: string }]>(client, "welcome");
    await next(client, "connect");
    strictEqual((await welcome)[0].id, client.id);
    await eventually(() => client.io.engine.transport.name === "websocket");
    strictEqual(client.io.engine.transport.name, "websocket");
    await eventually(() => serverSockets[0]?.conn.transport === "websocket");

    // client → server with ack
    deepStrictEqual(await client.emitWithAck("echo", { n: 1, s: "é😀" }), { n: 1, s: "é😀" });
    // server → client with ack, with and without a timeout
    client.on("question", (n: number, ack: (answer: number) => void) => ack(n + 1));
    strictEqual(await serverSockets[0].timeout(2000).emitWithAck("question", 41), 42);
    const answer = await new Promise((resolve) => serverSockets[0].emit("question", 1, resolve));
    strictEqual(answer, 2);
    // plain events both ways
    const bounced = next<[string]>(client, "bounced");
    client.emit("bounce", "hello");
    strictEqual((await bounced)[0], "hello");
  });
});

Deno.test("websocket only: events, acks and a 1 MiB binary round trip", async () => {
  let received: unknown;
  await withServer({}, (io) => {
    echoHandlers(io);
    io.on("connection", (socket) => {
      socket.on("upload", (file: { name: string; data: Uint8Array }, ack: (r: unknown) => void) => {
        received = file.data;
        socket.emit("download", { name: file.name, data: file.data });
        ack({ size: file.data.byteLength });
      });
    });
  }, async (h) => {
    const client = h.client("/", { transports: ["websocket"] });
    await next(client, "connect");
    strictEqual(client.io.engine.transport.name, "websocket");
    const payload = bytes(1024 * 1024);
    const download = next<[{ name: string; data: Uint8Array }]>(client, "download");
    const ack = await client.emitWithAck("upload", { name: "a.bin", data: payload });
    deepStrictEqual(ack, { size: payload.byteLength });
    ok(received instanceof Uint8Array, "server receives a Uint8Array");
    deepStrictEqual(new Uint8Array(received as Uint8Array), payload);
    const [file] = await download;
    strictEqual(file.name, "a.bin");
    deepStrictEqual(new Uint8Array(file.data), payload);
    deepStrictEqual(await client.emitWithAck("echo", "plain"), "plain");
  });
});

Deno.test("polling only: events, acks, binary, and heartbeats keep the session alive", async () => {
  let received: unknown;
  await withServer({ pingInterval: 150, pingTimeout: 300 }, (io) => {
    echoHandlers(io);
    io.on("connection", (socket) => {
      socket.on("upload", (data: Uint8Array, ack: (...r: unknown[]) => void) => {
        received = data;
        ack(data, data.byteLength);
      });
    });
  }, async (h) => {
    const client = h.client("/", { transports: ["polling"] });
    await next(client, "connect");
    strictEqual(client.io.engine.transport.name, "polling");
    const payload = bytes(1024 * 1024);
    const echoed = await new Promise<[Uint8Array, number]>((resolve) =>
      client.emit("upload", payload, (data: Uint8Array, size: number) => resolve([data, size]))
    );
    ok(received instanceof Uint8Array);
    deepStrictEqual(new Uint8Array(received as Uint8Array), payload);
    deepStrictEqual(new Uint8Array(echoed[0]), payload);
    strictEqual(echoed[1], payload.byteLength);
    // Several ping intervals pass; the session survives and still works.
    let disconnected = false;
    client.on("disconnect", () => disconnected = true);
    await delay(700);
    ok(!disconnected, "heartbeats keep the polling session open");
    strictEqual(client.io.engine.transport.name, "polling");
    strictEqual(await client.emitWithAck("echo", 5), 5);
  });
});

Deno.test("rooms and broadcasts reach the right sockets", async () => {
  await withServer({}, (io) => {
    io.on("connection", (socket) => {
      socket.on("join", (room: string, ack: () => void) => {
        socket.join(room);
        ack();
      });
      socket.on("leave", (room: string, ack: () => void) => {
        socket.leave(room);
        ack();
      });
      socket.on("shout", (room: string, text: string) => socket.to(room).emit("heard", text));
      socket.on("announce", (room: string, text: string) => io.to(room).emit("heard", text));
      socket.on("all-but-me", (text: string) => socket.broadcast.emit("heard", text));
    });
  }, async (h) => {
    const [a, b, c] = [h.client(), h.client(), h.client()];
    await Promise.all([a, b, c].map((s) => next(s, "connect")));
    const heard = new Map<string, string[]>();
    for (const [name, s] of [["a", a], ["b", b], ["c", c]] as const) {
      heard.set(name, []);
      s.on("heard", (text: string) => heard.get(name)!.push(text));
    }
    await a.emitWithAck("join", "room1");
    await b.emitWithAck("join", "room1");

    a.emit("shout", "room1", "one"); // b only
    a.emit("announce", "room1", "two"); // a and b
    await eventually(() => heard.get("a")!.length === 1 && heard.get("b")!.length === 2);
    c.emit("all-but-me", "three"); // a and b
    await eventually(() => heard.get("a")!.length === 2 && heard.get("b")!.length === 3);
    await b.emitWithAck("leave", "room1");
    a.emit("announce", "room1", "four"); // a only
    await eventually(() => heard.get("a")!.length === 3);
    await delay(50);
    deepStrictEqual(heard.get("a"), ["two", "three", "four"]);
    deepStrictEqual(heard.get("b"), ["one", "two", "three"]);
    deepStrictEqual(heard.get("c"), []);
    strictEqual(h.io.sockets.rooms.get("room1")?.size, 1);
  });
});

Deno.test("connect middleware sees auth, query and headers, and refuses with CONNECT_ERROR", async () => {
  const seen: { auth: unknown; query: string | undefined; ua: string | undefined }[] = [];
  await withServer({}, (io) => {
    io.use((socket, next) => {
      seen.push({
        auth: socket.handshake.auth,
        query: socket.handshake.query.room,
        ua: socket.handshake.headers["x-test"],
      });
      if (socket.handshake.auth.token !== "good") {
        return next(new ConnectError("unauthorized", { code: 401 }));
      }
      socket.data.user = "alice";
      next();
    });
    io.use(async (socket, next) => {
      await delay(5);
      if (socket.handshake.auth.late === true) throw new Error("rejected late");
      next();
    });
    io.on("connection", (socket) => {
      socket.on("whoami", (ack: (user: unknown) => void) => ack(socket.data.user));
    });
  }, async (h) => {
    const refused = h.client("/", {
      auth: { token: "bad" },
      reconnection: false,
      extraHeaders: { "x-test": "yes" },
    });
    const [error] = await next<[Error & { data?: unknown }]>(refused, "connect_error");
    strictEqual(error.message, "unauthorized");
    deepStrictEqual(error.data, { code: 401 });
    ok(!refused.connected);

    const late = h.client("/", { auth: { token: "good", late: true }, reconnection: false });
    strictEqual((await next<[Error]>(late, "connect_error"))[0].message, "rejected late");

    const accepted = h.client("/", { auth: { token: "good" }, query: { room: "r1" } });
    await next(accepted, "connect");
    strictEqual(await accepted.emitWithAck("whoami"), "alice");
    deepStrictEqual(seen[0], { auth: { token: "bad" }, query: undefined, ua: "yes" });
    deepStrictEqual(seen[2], { auth: { token: "good" }, query: "r1", ua: undefined });
  });
});

Deno.test("custom namespaces multiplex one connection; an unknown namespace is refused", async () => {
  await withServer({}, (io) => {
    echoHandlers(io);
    const admin = io.of("/admin");
    admin.use((socket, next) =>
      next(socket.handshake.auth.admin ? undefined : new Error("admins only"))
    );
    admin.on("connection", (socket) => {
      socket.on("echo", (v: unknown, ack: (v: unknown) => void) => ack({ admin: v }));
    });
  }, async (h) => {
    const main = h.client("/", { transports: ["websocket"] });
    await next(main, "connect");
    const admin = main.io.socket("/admin", { auth: { admin: true } });
    h.clients.push(admin);
    admin.connect();
    await next(admin, "connect");
    deepStrictEqual(await admin.emitWithAck("echo", 1), { admin: 1 });
    strictEqual(await main.emitWithAck("echo", 2), 2);
    strictEqual(h.io.engine.clientsCount, 1, "both namespaces share one Engine.IO session");

    const unknown = main.io.socket("/nope");
    h.clients.push(unknown);
    unknown.connect();
    strictEqual((await next<[Error]>(unknown, "connect_error"))[0].message, "Invalid namespace");
    // A second socket for an already connected namespace needs its own manager.
    const other = h.client("/admin", { auth: {}, reconnection: false });
    strictEqual((await next<[Error]>(other, "connect_error"))[0].message, "admins only");
    strictEqual(await main.emitWithAck("echo", 3), 3, "refusals do not hurt other namespaces");
  });
});

Deno.test("the client reconnects by itself after the server drops the transport", async () => {
  let connections = 0;
  const reasons: string[] = [];
  await withServer({}, (io) => {
    echoHandlers(io);
    io.on("connection", (socket) => {
      connections++;
      socket.on("disconnect", (reason) => reasons.push(reason));
      if (connections === 1) setTimeout(() => socket.conn.close(), 20);
    });
  }, async (h) => {
    for (const transports of [["polling", "websocket"], ["websocket"]]) {
      connections = 0;
      reasons.length = 0;
      const client = h.client("/", { transports });
      await next(client, "connect");
      const [reason] = await next<[string]>(client, "disconnect");
      strictEqual(reason, "transport close");
      await next(client, "connect");
      strictEqual(connections, 2);
      deepStrictEqual(reasons, ["forced close"]);
      strictEqual(await client.emitWithAck("echo", "again"), "again");
      client.disconnect();
      await eventually(() => h.io.engine.clientsCount === 0);
    }
  });
});

Deno.test("server-side disconnect: namespace only, then the whole connection", async () => {
  const reasons: string[] = [];
  await withServer({}, (io) => {
    io.on("connection", (socket) => {
      socket.on("disconnect", (reason) => reasons.push(reason));
      socket.on("kick", (close: boolean) => socket.disconnect(close));
    });
  }, async (h) => {
    const client = h.client();
    await next(client, "connect");
    client.emit("kick", false);
    strictEqual((await next<[string]>(client, "disconnect"))[0], "io server disconnect");
    client.connect();
    await next(client, "connect");
    client.emit("kick", true);
    strictEqual((await next<[string]>(client, "disconnect"))[0], "io server disconnect");
    deepStrictEqual(reasons, ["server namespace disconnect", "server namespace disconnect"]);
    await eventually(() => h.io.engine.clientsCount === 0);
  });
});
