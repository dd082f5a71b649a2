/** Shared pieces of the end-to-end tests: a real server on port 0 and a scripted WebSocket client. */

import { type AppOverrides, type RunningServer, startServer } from "../main.ts";
import { loadConfig } from "../src/config.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import type { PresenceStore } from "../src/core/types.ts";
import { eventually } from "./assert.ts";

/** The HS256 secret test servers verify with. */
export const TEST_SECRET = "test-secret-for-the-suite-only-0123456789";

/** A server on an ephemeral port with its own data directory, removed on close. */
export interface TestServer extends RunningServer {
  /** `ws://127.0.0.1:<port>`. */
  wsUrl: string;
  /** The data directory. */
  dataDir: string;
  /** Signs a token with the test secret. */
  token(claims: object, expiresIn?: string | number): Promise<string>;
}

/** Starts a real server on 127.0.0.1:0 with a fresh data directory. */
export async function startTestServer(
  env: Record<string, string> = {},
  overrides: AppOverrides = {},
): Promise<TestServer> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-test-" });
  const config = loadConfig({
    PORT: "0",
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    JWT_SECRET: TEST_SECRET,
    ...env,
  });
  const server = await startServer(config, { log: () => {}, ...overrides });
  return {
    ...server,
    wsUrl: server.url.replace(/^http/, "ws"),
    dataDir,
    token: (claims, expiresIn) =>
      signDevToken(env.JWT_SECRET ?? TEST_SECRET, claims as Record<string, unknown>, expiresIn),
    async close() {
      await server.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
}

/** A WebSocket client that queues every frame so a test can await them in order. */
export class TestClient {
  /** The underlying socket. */
  readonly socket: WebSocket;
  /** Frames received and not yet taken. */
  readonly frames: unknown[] = [];
  #waiters: (() => void)[] = [];
  /** Resolves with the close code and reason. */
  readonly closed: Promise<{ code: number; reason: string }>;
  /** Resolves once the socket is open (or rejects when it fails first). */
  readonly opened: Promise<void>;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    this.opened = new Promise((resolve, reject) => {
      socket.addEventListener("open", () => resolve(), { once: true });
      socket.addEventListener("error", () => reject(new Error("socket error before open")), {
        once: true,
      });
    });
    this.opened.catch(() => {});
    this.closed = new Promise((resolve) => {
      socket.addEventListener("close", (e) => {
        resolve({ code: e.code, reason: e.reason });
        this.#wake();
      });
    });
    socket.addEventListener("message", (e) => {
      this.frames.push(typeof e.data === "string" ? parseFrame(e.data) : e.data);
      this.#wake();
    });
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Opens a socket; `headers` and `protocols` are passed through. */
  static connect(
    url: string,
    options: { headers?: Record<string, string>; protocols?: string[] } = {},
  ): TestClient {
    const socket = options.headers
      ? new WebSocket(url, { headers: options.headers, protocols: options.protocols })
      : new WebSocket(url, options.protocols);
    return new TestClient(socket);
  }

  /** Opens a socket and waits until it is open. */
  static async open(
    url: string,
    options: { headers?: Record<string, string>; protocols?: string[] } = {},
  ): Promise<TestClient> {
    const client = TestClient.connect(url, options);
    await client.opened;
    return client;
  }

  /** Sends a JSON frame (or a raw string). */
  send(frame: unknown): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Takes the next frame matching `predicate`, failing after `timeoutMs`. */
  async next<T = Record<string, unknown>>(
    predicate: (frame: T) => boolean = () => true,
    timeoutMs = 5000,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const index = this.frames.findIndex((f) => predicate(f as T));
      if (index >= 0) return this.frames.splice(index, 1)[0] as T;
      if (this.socket.readyState === WebSocket.CLOSED) {
        throw new Error(`Socket closed while waiting; frames left: ${JSON.stringify(this.frames)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`Timed out waiting for a frame; frames: ${JSON.stringify(this.frames)}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }

  /** Asserts that no frame matching `predicate` arrives within `ms`. */
  async nothing(predicate: (frame: Record<string, unknown>) => boolean = () => true, ms = 300) {
    await new Promise((r) => setTimeout(r, ms));
    const found = this.frames.find((f) => predicate(f as Record<string, unknown>));
    if (found) throw new Error(`Unexpected frame: ${JSON.stringify(found)}`);
  }

  /** Closes (if needed) and waits for the close handshake to finish. */
  async close(): Promise<void> {
    if (this.socket.readyState === WebSocket.CONNECTING) {
      await this.opened.catch(() => {});
    }
    if (this.socket.readyState === WebSocket.OPEN) this.socket.close(1000);
    await this.closed;
  }
}

/**
 * Opens a ticket socket of `user` (a dev token) in `room` on the server at `server`, and waits
 * for the room's user list (up to `timeoutMs`); `users` is who it named, sorted.
 */
export async function joinRoom(
  server: string,
  room: string,
  user: string,
  timeoutMs = 5000,
): Promise<{ client: TestClient; users: string[] }> {
  const token = await signDevToken(TEST_SECRET, { sub: user, username: user }, "1h");
  const client = await TestClient.open(
    `${server.replace(/^http/, "ws")}/ws/rooms/${room}/?token=${token}`,
  );
  const list = await client.next((f) => f.type === "room_users_list", timeoutMs);
  const users = (list.users as { username: string }[]).map((u) => u.username).sort();
  return { client, users };
}

/** Polling wait, kept in assert.ts so that unit tests can use it without starting a server. */
export { eventually };

/** A server's /healthz: its status and body. */
export async function health(
  url: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/healthz`);
  return { status: res.status, body: await res.json() };
}

/** Waits until every server's `/healthz` counts all the others as peers. */
export async function peersFound(servers: { url: string }[]): Promise<void> {
  await eventually(
    async () => {
      const all = await Promise.all(servers.map((s) => health(s.url)));
      return all.every((h) => Number(h.body.peers) >= servers.length - 1);
    },
    10_000,
    "the servers finding each other",
  );
}

/**
 * A presence store that passes each call to `inner` (a class instance, whose methods a spread
 * does not copy): spread it and replace the methods a test watches.
 */
export function passPresence(inner: PresenceStore): PresenceStore {
  return {
    enter: (...args) => inner.enter(...args),
    exit: (...args) => inner.exit(...args),
    list: (...args) => inner.list(...args),
    sweep: (...args) => inner.sweep(...args),
    invalidateSweeps: () => inner.invalidateSweeps?.(),
  };
}

/** Lists every file below a directory, relative paths with forward slashes. */
export async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string, prefix: string) {
    let entries;
    try {
      entries = Deno.readDir(dir);
      for await (const e of entries) {
        if (e.isDirectory) await walk(`${dir}/${e.name}`, `${prefix}${e.name}/`);
        else out.push(prefix + e.name);
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  await walk(root, "");
  return out.sort();
}

/** JSON frames become values; plain text frames (a bare `pong`) stay strings. */
function parseFrame(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Calls the admin API at `base` with the bearer `token` and answers the status, body discarded. */
export async function adminCall(
  base: string,
  token: string,
  method: string,
  path: string,
  json?: unknown,
): Promise<number> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  await res.body?.cancel();
  return res.status;
}

/** A free TCP port on loopback, for servers that must bind a known port (restarts, `--parallel`). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Stores `count` messages in `room` (`m1`, `m2`, … unless `body` says otherwise), in order. */
export async function storeMessages(
  server: TestServer,
  room: string,
  count: number,
  body: (i: number) => string = (i) => `m${i}`,
): Promise<void> {
  const queued = [];
  for (let i = 1; i <= count; i++) {
    queued.push(await server.app.context.chat.queue(null, room, { body: body(i) }));
  }
  await Promise.all(queued.map((q) => q.result));
}

/**
 * Stores `count` messages of 20,000 characters (the most a message may have) in `room`, CJK text
 * of 60 KB of UTF-8 each, every one starting with its number: a long history, 12 MB per 200.
 */
export async function longCjkHistory(server: TestServer, room: string, count: number) {
  await storeMessages(server, room, count, (i) => `${i} ` + "漢".repeat(20_000 - `${i} `.length));
}

/**
 * A TCP proxy to `port` on 127.0.0.1 whose `pipe` carries each direction's bytes (`toClient`
 * says which), closing what is left open when the proxy closes.
 */
export function tcpProxy(
  port: number,
  pipe: (from: Deno.Conn, to: Deno.Conn, toClient: boolean) => Promise<void>,
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const closeAll = (list: Iterable<Deno.Conn>) => {
    for (const c of list) {
      try {
        c.close();
      } catch {
        // Closed already.
      }
      conns.delete(c);
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port });
      conns.add(upstream);
      Promise.all([pipe(conn, upstream, false), pipe(upstream, conn, true)])
        .finally(() => closeAll([conn, upstream]));
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await accepting;
      closeAll([...conns]);
    },
  };
}

/** What {@link reverseProxy} does to each request on its way to the server. */
export interface ReverseProxyOptions {
  /** The path the proxy serves the server under, stripped on the way (others get 404). */
  prefix?: string;
  /** The Host the server gets (nginx's default `$proxy_host` names the upstream); else the client's. */
  host?: string;
  /** Headers added to each request: X-Forwarded-*, Forwarded. */
  headers?: Record<string, string>;
  /** Request bodies declared larger get an HTML 413, as nginx's `client_max_body_size` answers. */
  maxBodyBytes?: number;
}

/** nginx's answer to a body over `client_max_body_size`. */
const NGINX_413 = "<html><head><title>413 Request Entity Too Large</title></head><body><center>" +
  "<h1>413 Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>\r\n";

/**
 * A reverse proxy in front of the server at `port`, as nginx is one (`location /chat/ {
 * proxy_pass http://backend/; }` with `options.prefix`): each request goes on its own connection
 * (`Connection: close`, WebSocket upgrades aside) with its head rewritten as `options` say;
 * bodies and WebSocket frames pass through as they are. With no `headers`, it adds no forwarding
 * headers, so the dev sign-in takes its requests as this machine's. `url` includes the prefix.
 */
export function reverseProxy(port: number, options: ReverseProxyOptions = {}) {
  const copy = async (from: Deno.Conn, to: Deno.Conn, first?: Uint8Array) => {
    try {
      if (first) {
        for (let off = 0; off < first.length;) off += await to.write(first.subarray(off));
      }
      const buf = new Uint8Array(64 * 1024);
      for (let n; (n = await from.read(buf)) !== null;) {
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // Closed under the read or write.
    }
    await to.closeWrite().catch(() => {});
  };
  const proxy = tcpProxy(port, async (from, to, toClient) => {
    if (toClient) return await copy(from, to);
    let bytes = new Uint8Array(0);
    let end = -1;
    const buf = new Uint8Array(16 * 1024);
    while (end < 0) {
      const n = await from.read(buf).catch(() => null);
      if (n === null) return await to.closeWrite().catch(() => {});
      bytes = new Uint8Array([...bytes, ...buf.subarray(0, n)]);
      end = new TextDecoder().decode(bytes).indexOf("\r\n\r\n");
    }
    const [line, ...fields] = new TextDecoder().decode(bytes.subarray(0, end)).split("\r\n");
    const rest = bytes.subarray(end + 4);
    let [method, target, version] = line.split(" ");
    const prefix = options.prefix ?? "";
    if (prefix) {
      const after = target.slice(prefix.length, prefix.length + 1);
      if (!target.startsWith(prefix) || (after !== "" && after !== "/" && after !== "?")) {
        await from.write(new TextEncoder().encode(
          "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )).catch(() => {});
        return await to.closeWrite().catch(() => {});
      }
      target = target.slice(prefix.length).replace(/^(?=\?|$)/, "/");
    }
    const upgrade = fields.some((f) => /^upgrade:\s*websocket\s*$/i.test(f));
    const length = Number(
      fields.find((f) => /^content-length:/i.test(f))?.replace(/^content-length:\s*/i, "") ?? 0,
    );
    if (options.maxBodyBytes !== undefined && length > options.maxBodyBytes) {
      // Read and dropped first, as nginx does, so that the client gets to read the answer.
      for (let left = length - rest.length, n; left > 0; left -= n) {
        if ((n = await from.read(buf).catch(() => null)) === null) break;
      }
      const page = NGINX_413;
      await from.write(new TextEncoder().encode(
        `HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: text/html\r\n` +
          `content-length: ${page.length}\r\nconnection: close\r\n\r\n${page}`,
      )).catch(() => {});
      return await to.closeWrite().catch(() => {});
    }
    const kept = fields.filter((f) =>
      !/^host:/i.test(f) && (upgrade || !/^(connection|keep-alive):/i.test(f))
    );
    const clientHost = fields.find((f) => /^host:/i.test(f))?.replace(/^host:\s*/i, "") ?? "";
    const head = [
      `${method} ${target} ${version}`,
      `Host: ${options.host ?? clientHost}`,
      ...kept,
      ...(upgrade ? [] : ["Connection: close"]),
      ...Object.entries(options.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
    ].join("\r\n") + "\r\n\r\n";
    await copy(from, to, new Uint8Array([...new TextEncoder().encode(head), ...rest]));
  });
  return { ...proxy, url: `http://127.0.0.1:${proxy.port}${options.prefix ?? ""}` };
}

/**
 * A TCP proxy to `port` that passes the server's bytes to the client at `bytesPerSecond` (the
 * other way unthrottled): a client on a modest link that reads steadily. With `direction` `up`,
 * the client's bytes to the server instead: a client on a slow uplink.
 */
export function throttledLink(
  port: number,
  bytesPerSecond: number,
  direction: "down" | "up" = "down",
) {
  return tcpProxy(port, async (from, to, toClient) => {
    const buf = new Uint8Array(16 * 1024);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        for (let off = 0; off < n;) off += await to.write(buf.subarray(off, n));
        if (toClient === (direction === "down")) {
          await new Promise((r) => setTimeout(r, (n / bytesPerSecond) * 1000));
        }
      }
    } catch {
      // Closed under the read or write.
    }
    await to.closeWrite().catch(() => {});
  });
}

/** Sends `request` (raw HTTP) to the server at `url` and reads until it closes the connection. */
export async function rawExchange(
  url: string,
  request: string,
  closeWrite = false,
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
  try {
    await conn.write(new TextEncoder().encode(request));
    if (closeWrite) await conn.closeWrite();
    // Up to the close, or a first answer's worth when the server keeps the connection.
    const buf = new Uint8Array(4096);
    let text = "";
    for (let n; text.length < 4096 && (n = await conn.read(buf)) !== null;) {
      text += new TextDecoder().decode(buf.subarray(0, n));
      if (!closeWrite) break;
    }
    return text;
  } finally {
    conn.close();
  }
}

/**
 * Opens a WebSocket by hand; resolves to the connection and the bytes the server sent after its
 * response head (frames, maybe the start of one).
 */
export async function rawUpgrade(
  port: number,
  path: string,
): Promise<{ conn: Deno.TcpConn; rest: Uint8Array<ArrayBuffer> }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${btoa("0123456789abcdef")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  ));
  let head: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  const buf = new Uint8Array(4096);
  for (let n; (n = await conn.read(buf)) !== null;) {
    head = concatBytes(head, buf.subarray(0, n));
    // The head is ASCII: its end is found in the bytes as in the text.
    const text = new TextDecoder().decode(head);
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) continue;
    if (!text.startsWith("HTTP/1.1 101")) {
      throw new Error(`Upgrade refused: ${text.split("\r\n")[0]}`);
    }
    return { conn, rest: head.slice(end + 4) };
  }
  throw new Error("The server closed the connection during the handshake");
}

/** `a` followed by `b`, in a new array. */
export function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * The first frame in `bytes` a server sent (unmasked) and the bytes it took; undefined while
 * it is not all there.
 */
export function serverFrame(
  bytes: Uint8Array,
): { opcode: number; payload: Uint8Array; size: number } | undefined {
  if (bytes.length < 2) return undefined;
  let length = bytes[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (bytes.length < 4) return undefined;
    length = (bytes[2] << 8) | bytes[3];
    offset = 4;
  } else if (length === 127) {
    if (bytes.length < 10) return undefined;
    length = Number(new DataView(bytes.buffer, bytes.byteOffset + 2, 8).getBigUint64(0));
    offset = 10;
  }
  if (bytes.length < offset + length) return undefined;
  return {
    opcode: bytes[0] & 0x0f,
    payload: bytes.slice(offset, offset + length),
    size: offset + length,
  };
}

/**
 * The frames a server sends on a raw WebSocket connection, each as it comes whole, starting with
 * those in `rest` (what came with the handshake); it ends when the server closes the connection,
 * and a failed read throws.
 */
export async function* serverFrames(
  conn: Deno.TcpConn,
  rest: Uint8Array = new Uint8Array(0),
  readSize = 64 * 1024,
): AsyncGenerator<{ opcode: number; payload: Uint8Array; size: number }> {
  let bytes = rest;
  const buf = new Uint8Array(readSize);
  while (true) {
    for (let frame; (frame = serverFrame(bytes)) !== undefined;) {
      bytes = bytes.subarray(frame.size);
      yield frame;
    }
    const n = await conn.read(buf);
    if (n === null) return;
    bytes = concatBytes(bytes, buf.subarray(0, n));
  }
}

/**
 * Opens a WebSocket by hand and then goes silent: it never reads, never answers pings. The
 * peer a browser tab becomes when its machine sleeps, or a reader that stalls.
 */
export async function silentPeer(port: number, path: string): Promise<Deno.TcpConn> {
  return (await rawUpgrade(port, path)).conn;
}

/** Sends one masked client frame of `opcode` (payload under 126 bytes) on a raw connection. */
export async function sendRawFrame(
  conn: Deno.TcpConn,
  opcode: number,
  payload: Uint8Array,
): Promise<void> {
  if (payload.length > 125) throw new RangeError("sendRawFrame() handles short frames only");
  const mask = [1, 2, 3, 4];
  await conn.write(
    new Uint8Array([
      0x80 | opcode,
      0x80 | payload.length,
      ...mask,
      ...payload.map((b, i) => b ^ mask[i % 4]),
    ]),
  );
}

/** Sends one masked client text frame (under 126 bytes) on a raw connection. */
export function sendRawText(conn: Deno.TcpConn, text: string): Promise<void> {
  return sendRawFrame(conn, 1, new TextEncoder().encode(text));
}

/**
 * A raw Engine.IO long-polling session of Socket.IO, for a client that fetches only when told:
 * `post` sends packets, `poll` fetches once and keeps the events (`42` packets) it brought.
 */
export async function pollingSession(serverUrl: string, token: string) {
  const base = `${serverUrl}/socket.io/?EIO=4&transport=polling`;
  const sid = JSON.parse((await (await fetch(`${base}&token=${token}`)).text()).slice(1))
    .sid as string;
  const events: [string, Record<string, unknown>][] = [];
  return {
    events,
    async post(body: string): Promise<number> {
      const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body });
      await res.body?.cancel();
      return res.status;
    },
    async poll(): Promise<void> {
      const text = await (await fetch(`${base}&sid=${sid}`)).text();
      for (const p of text.split("\x1e")) {
        if (p.startsWith("42")) events.push(JSON.parse(p.slice(2)));
      }
    },
  };
}

/**
 * The status of a request to `url` from a page of `origin` (with `extra` headers), as a WebSocket
 * handshake when `upgrade`.
 */
export async function originHandshake(
  url: string,
  origin: string,
  upgrade: boolean,
  extra: Record<string, string> = {},
): Promise<number> {
  const res = await fetch(url, {
    headers: {
      origin,
      ...extra,
      ...(upgrade
        ? {
          upgrade: "websocket",
          connection: "Upgrade",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          "sec-websocket-version": "13",
        }
        : {}),
    },
  });
  await res.body?.cancel();
  return res.status;
}
