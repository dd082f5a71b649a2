/**
 * Engine.IO v4 server: sessions over HTTP long-polling and WebSocket, the polling → WebSocket
 * upgrade, heartbeats, and the cross-isolate relay for `deno serve --parallel`.
 *
 * @module
 */

import { utf8Length } from "../core/text.ts";
import { timerDelay } from "../core/time.ts";
import { QuietClose } from "../transport/close_when_quiet.ts";
import { decodePacket, encodeFrame, encodePayload, type Packet, SEPARATOR } from "./parser.ts";
import {
  BroadcastChannelRelay,
  type FrameSocket,
  type RelayOwner,
  type RelayReply,
  type SessionRelay,
} from "./relay.ts";

/** The transports this server speaks. */
export type TransportName = "polling" | "websocket";

/** Which browser origins may reach the server: all, a list, or a predicate. */
/**
 * Origins allowed for CORS and WebSocket: any, a list, or a predicate, which also gets the request
 * (a page of the server's own host, named by its `Host`, may be allowed that way).
 */
export type AllowedOrigins =
  | "*"
  | readonly string[]
  | ((origin: string, req: Request) => boolean);

/** Options of an {@linkcode EngineServer}. */
export interface EngineOptions {
  /** URL path the server answers under; default `/socket.io/`. */
  path?: string;
  /** Milliseconds between server pings; default 25 000. */
  pingInterval?: number;
  /** Milliseconds a client has to answer a ping; default 20 000. */
  pingTimeout?: number;
  /** Milliseconds an unfinished polling → WebSocket upgrade may take; default 10 000. */
  upgradeTimeout?: number;
  /** Largest HTTP body or WebSocket message in bytes; default 16 MiB. */
  maxPayload?: number;
  /** Largest long-polling POST body in bytes, when it should be under `maxPayload`. */
  maxPollingPayload?: number;
  /**
   * Largest WebSocket message in bytes a new session takes until the application raises its
   * {@linkcode EngineSocket.maxPayload} (say once the client has authenticated): Deno keeps a
   * socket's read buffer as large as the largest message it read; default `maxPayload`.
   */
  initialMaxPayload?: number;
  /**
   * Largest WebSocket message in bytes a session takes once past `initialMaxPayload`, until the
   * application raises its {@linkcode EngineSocket.maxPayload} (say a file a client queued while
   * offline and sends before it signs in); `initialLargeTaken` is told of each, and one more than
   * `initialLargeMessages`, or one after the first that `unsignedPostBytes` cannot hold, is refused
   * as one past `initialMaxPayload` is. Default none.
   */
  initialLargePayload?: number;
  /**
   * How many messages past `initialMaxPayload` (see `initialLargePayload`) a session takes until
   * the application raises its `maxPayload`; default 1.
   */
  initialLargeMessages?: number;
  /**
   * Told that a session took a message past `initialMaxPayload` (see `initialLargePayload`), just
   * before it is handled: Deno now keeps a read buffer that large for the socket, so the
   * application should close the session unless it raises its `maxPayload` soon. Told too, once
   * its packets are handled, of a polling POST that counts against `unsignedPostBytes`, which the
   * session holds until then.
   */
  initialLargeTaken?: (socket: EngineSocket) => void;
  /**
   * Bytes of long-polling POST bodies held, in all, for sessions whose
   * {@linkcode EngineSocket.maxPayload} the application has not raised (nobody has signed in) and
   * for POSTs relayed from another isolate: each is read whole before anyone knows whose it is.
   * A session's POSTs count until the application raises its `maxPayload` or it closes, as the
   * events they carried may wait for a sign-in (a relayed one counts as the session's own on its
   * owner, and on the isolate that read it until the owner has answered). A POST past it is
   * refused with 503 and its session ends (clients reconnect); the first 16 KiB of each are not
   * counted, and one that takes longer than `pingInterval + pingTimeout` to arrive is dropped. The
   * messages past `initialMaxPayload` a WebSocket session took (see `initialLargePayload`) but its
   * first count against it whole too. Default unlimited.
   */
  unsignedPostBytes?: number;
  /** Enabled transports; default both. */
  transports?: readonly TransportName[];
  /** Whether polling sessions may upgrade to WebSocket; default true. */
  allowUpgrades?: boolean;
  /** Origins allowed for CORS and WebSocket; default `*` (any origin is echoed). */
  allowedOrigins?: AllowedOrigins;
  /**
   * Cross-isolate relay: `true` for a `BroadcastChannel` relay named after the path, or a custom
   * implementation. Default none, for a single-isolate deployment.
   */
  relay?: boolean | SessionRelay;
  /**
   * Told of every WebSocket message's size (characters for text), and of each socket's close;
   * may close a quiet socket (through `reclaim`, a close without a code) to free what the
   * runtime keeps for the large frames it received.
   */
  frameBudget?: FrameBudgetHook;
  /**
   * Told of the packets written to clients and the bytes they sent, for metrics; called on every
   * write, so it should only count.
   */
  traffic?: TrafficHook;
  /**
   * Bytes a WebSocket peer may leave unread before it is closed as a slow consumer (code 4008;
   * Socket.IO clients reconnect); default unlimited.
   */
  maxBufferedBytes?: number;
  /**
   * Asked before each new session: a refusal (its text) is answered with 503 and Engine.IO's
   * error body, so that nothing is held for it (clients retry with their backoff). Default: all
   * are let in.
   */
  refuseHandshake?: () => string | null;
}

/** What {@linkcode EngineOptions.frameBudget} is given: the socket, which it may close. */
export interface FrameBudgetHook {
  /** A message of `size` bytes arrived on `socket`. */
  received(socket: { reclaim(): void }, size: number): void;
  /** `socket` closed. */
  forget(socket: { reclaim(): void }): void;
}

/** What {@linkcode EngineOptions.traffic} is told; a broadcast calls it once per recipient. */
export interface TrafficHook {
  /** `packets` were written to one client: a WebSocket frame each, or one polling response. */
  sent(packets: number): void;
  /** A client sent `bytes` (UTF-8): a WebSocket message, or a polling POST body. */
  received(bytes: number): void;
}

/** The first HTTP request of a session, kept for the application. */
export interface EngineRequest {
  /** Full request URL. */
  readonly url: string;
  /** Request headers. */
  readonly headers: Headers;
  /** Query parameters. */
  readonly query: URLSearchParams;
  /** Client address as the listener saw it, or an empty string. */
  readonly remoteAddress: string;
  /** Whether the request came over TLS. */
  readonly secure: boolean;
  /** When the session was opened. */
  readonly time: Date;
}

/** Why an Engine.IO session ended. */
export type EngineCloseReason =
  | "transport close"
  | "transport error"
  | "parse error"
  | "ping timeout"
  | "forced close"
  | "forced server close";

/** One Engine.IO session as the layer above sees it. */
export interface EngineSocket {
  /** Session id (`sid`). */
  readonly id: string;
  /** The handshake request. */
  readonly request: EngineRequest;
  /** Current transport. */
  readonly transport: TransportName;
  /** `open` until a close starts, `closing` while buffered packets drain, then `closed`. */
  readonly readyState: "open" | "closing" | "closed";
  /** Receives each message, text or bytes. */
  onmessage: ((data: string | Uint8Array) => void) | null;
  /** Called once when the session ends. */
  onclose: ((reason: EngineCloseReason, description?: string) => void) | null;
  /** Called when the session has moved from polling to WebSocket. */
  onupgrade: (() => void) | null;
  /**
   * Called with the start of a WebSocket message refused for its size (`maxPayload`), or "" for
   * a binary one, and its size in bytes, just before the session closes for it: a last chance to
   * say why.
   */
  ontoolarge: ((head: string, size: number) => void) | null;
  /**
   * Largest WebSocket message in bytes this session takes from now on; once set, a polling POST
   * of this session may be as large too (when over the server's `maxPollingPayload`).
   */
  maxPayload: number;
  /** Queues one message. */
  send(data: string | Uint8Array): void;
  /**
   * Bytes of messages written and not yet taken by the peer (a polling client's unfetched ones,
   * a WebSocket's unsent ones), for a large answer to wait for its reader.
   */
  unsent(): number;
  /** Queues already built packets; the same objects may be handed to many sessions. */
  sendPackets(packets: readonly Packet[]): void;
  /** Flushes what is queued, then closes the session. */
  close(): void;
  /**
   * Resolves once the session's WebSocket on this isolate (if any) has let its connection go, or
   * `ms` after it is asked: a socket closed while its peer stopped reading holds its connection
   * until the peer reads or goes, and a peer that never answers the close, for good.
   */
  gone(ms: number): Promise<void>;
}

/** Engine.IO error codes sent in 400 bodies. */
export const ErrorCode = {
  UNKNOWN_TRANSPORT: 0,
  UNKNOWN_SID: 1,
  BAD_HANDSHAKE_METHOD: 2,
  BAD_REQUEST: 3,
  FORBIDDEN: 4,
  UNSUPPORTED_PROTOCOL_VERSION: 5,
} as const;

const ERROR_MESSAGES = [
  "Transport unknown",
  "Session ID unknown",
  "Bad handshake method",
  "Bad request",
  "Forbidden",
  "Unsupported protocol version",
];

const DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024;

type Timer = ReturnType<typeof setTimeout>;

type Reply = RelayReply;

interface ResolvedOptions {
  path: string;
  pingInterval: number;
  pingTimeout: number;
  upgradeTimeout: number;
  maxPayload: number;
  initialMaxPayload: number;
  initialLargePayload: number;
  initialLargeMessages: number;
  initialLargeTaken?: (socket: EngineSocket) => void;
  maxPollingPayload: number;
  transports: readonly TransportName[];
  allowUpgrades: boolean;
  allowedOrigins: AllowedOrigins;
  frameBudget?: FrameBudgetHook;
  traffic?: TrafficHook;
  maxBufferedBytes: number;
  refuseHandshake?: () => string | null;
}

/**
 * What the POSTs, and the large WebSocket messages, of sessions nobody signed in may hold at
 * once, in bytes.
 */
interface PostBudget {
  left: number;
  /** How long one such POST may take to arrive, ms: a stalled one gives its share back then. */
  deadlineMs: number;
}

/**
 * Bytes of each POST that its share of the budget does not count: a CONNECT or an
 * `authenticate` always fits, so POSTs that stall holding the whole budget lock nobody out.
 */
export const FREE_POST_BYTES = 16 * 1024;

/**
 * Milliseconds a polling POST's packets are handled for before other work gets its turn: a body
 * is bounded by its bytes alone (an offline buffer of a typing event per key pressed comes in one),
 * and 13 MB of tiny events, from a client without a token, held every other client for seconds.
 */
const POST_SLICE_MS = 10;

/** Packets handled between two looks at the clock (see {@link POST_SLICE_MS}). */
const POST_SLICE_CHECK = 32;

/**
 * Packets one long-polling answer to python-engineio holds at most: it refuses an answer of more
 * (`Payload.max_decode_packets`), losing every packet in it and the connection. The rest waits for
 * the next GET, which it sends as soon as it has handled an answer. Other clients get all there
 * is: one answer a round trip could not keep up with a busy room 80 ms away.
 */
const POLL_PACKETS = 16;

/**
 * User-Agents of the HTTP clients python-engineio (python-socketio 5.x) polls with: requests for
 * its `Client`, aiohttp for its `AsyncClient`.
 */
const PYTHON_USER_AGENT = /^(python-requests\/|Python\/\d+\.\d+ aiohttp\/)/;

/**
 * python-engineio's `t` parameter, `time.time()` written out; socket.io-client's has no dot. It
 * tells the client still when the application set its own User-Agent header.
 */
const PYTHON_TIMESTAMP = /^\d+\.\d+$/;

/** Packets a long-polling answer to the client of this handshake may hold. */
function pollPackets(request: EngineRequest): number {
  const python = PYTHON_USER_AGENT.test(request.headers.get("user-agent") ?? "") ||
    PYTHON_TIMESTAMP.test(request.query.get("t") ?? "");
  return python ? POLL_PACKETS : Infinity;
}

/**
 * Request headers a preflight never grants: those a reverse proxy may take its word from (the
 * client's address, scheme and host). Node's `cors` grants whatever a page asks for, and the
 * answer allows credentials, so a page of another site could add them to a request that carries
 * the user's cookie. Any other header a client's `extraHeaders` names is granted, as Node does.
 */
const PROXY_HEADERS = /^(forwarded|x-forwarded-[a-z0-9-]*|x-real-ip|x-client-ip|true-client-ip)$/;

const OK: Reply = { status: 200, body: "ok", contentType: "text/html" };
/** A POST the budget of unsigned POSTs could not hold: the client reconnects. */
const BUSY: Reply = {
  status: 503,
  body: "Server busy: try again",
  contentType: "text/plain; charset=utf-8",
};
const PING: Packet = { type: "ping" };
const NOOP: Packet = { type: "noop" };
const PONG_PROBE: Packet = { type: "pong", data: "probe" };

function errorReply(code: number, status = 400, message = ERROR_MESSAGES[code]): Reply {
  return { status, body: JSON.stringify({ code, message }), contentType: "application/json" };
}

/** Characters (or bytes) of a packet's data: what counts as unsent output. */
function dataSize(packet: Packet): number {
  const data = packet.data;
  return typeof data === "string" ? data.length : data?.byteLength ?? 0;
}

function dataReply(packets: readonly Packet[]): Reply {
  return { status: 200, body: encodePayload(packets), contentType: "text/plain; charset=UTF-8" };
}

function randomId(): string {
  return crypto.getRandomValues(new Uint8Array(15)).toBase64({ alphabet: "base64url" });
}

function report(error: unknown): void {
  console.error("engine.io: listener failed:", error);
}

/** Adapts a server-side `WebSocket` to a {@linkcode FrameSocket}, buffering until it opens. */
class LocalFrameSocket implements FrameSocket {
  onmessage: ((data: string | Uint8Array) => void) | null = null;
  onclose: ((code: number, reason: string) => void) | null = null;
  readonly closed: Promise<void>;
  #ws: WebSocket;
  #queue: (string | Uint8Array)[] | null = [];
  #closeRequest: { code?: number; reason?: string } | null = null;
  #maxBuffered: number;
  /** Frames and bytes written since `bufferedAmount` was last read. */
  #sinceCheck = { frames: 0, bytes: 0 };
  /** A close waits for the peer's answer, dropping its frames meanwhile. */
  #quiet = new QuietClose();

  constructor(
    ws: WebSocket,
    { frameBudget: budget, maxBufferedBytes }: Pick<
      ResolvedOptions,
      "frameBudget" | "maxBufferedBytes"
    >,
  ) {
    this.#ws = ws;
    this.#maxBuffered = maxBufferedBytes;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.closed = promise;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const queue = this.#queue ?? [];
      this.#queue = null;
      for (const data of queue) this.#write(data);
      if (this.#closeRequest) this.#shut(this.#closeRequest.code, this.#closeRequest.reason);
    };
    ws.onmessage = (event: MessageEvent<string | ArrayBuffer>) => {
      const data = event.data;
      const size = typeof data === "string" ? data.length : data.byteLength;
      // Closing: nothing more is taken.
      if (this.#quiet.frame(size)) return;
      if (!this.#closeRequest) budget?.received(this, size);
      this.onmessage?.(typeof data === "string" ? data : new Uint8Array(data));
    };
    // On an open socket an error is always followed by a close event, which is what matters.
    ws.onerror = () => {};
    ws.onclose = (event) => {
      budget?.forget(this);
      resolve();
      this.#gone(event.code, event.reason);
    };
  }

  unsent(): number {
    return this.#ws.bufferedAmount;
  }

  send(data: string | Uint8Array): void {
    if (this.#closeRequest) return;
    if (this.#queue) {
      this.#queue.push(data);
    } else {
      this.#write(data);
    }
  }

  /** Closes without a code (the client sees 1005): Socket.IO clients reconnect on a transport close. */
  reclaim(): void {
    this.close();
  }

  close(code?: number, reason?: string): void {
    if (this.#closeRequest) return;
    this.#closeRequest = { code, reason };
    if (this.#queue === null) this.#shut(code, reason);
  }

  #write(data: string | Uint8Array): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    try {
      this.#ws.send(data);
    } catch {
      // The peer went away between the state check and the write; onclose follows.
      return;
    }
    // Reading `bufferedAmount` is a call into the runtime: every 32 frames or 64 KiB.
    const since = this.#sinceCheck;
    since.bytes += typeof data === "string" ? data.length : data.byteLength;
    if (++since.frames >= 32 || since.bytes >= 65_536) {
      since.frames = 0;
      since.bytes = 0;
      if (this.#ws.bufferedAmount > this.#maxBuffered) {
        this.close(4008, "Slow consumer");
        // The close frame waits behind everything the peer has not read, so the close event may
        // not come for long: the session ends now.
        this.#gone(4008, "Slow consumer");
      }
    }
  }

  /** Tells the owner, once, that the socket is gone. */
  #gone(code: number, reason: string): void {
    const onclose = this.onclose;
    this.onclose = null;
    onclose?.(code, reason);
  }

  #shut(code?: number, reason?: string): void {
    if (this.#ws.readyState === WebSocket.CLOSING || this.#ws.readyState === WebSocket.CLOSED) {
      return;
    }
    // Script may only send 1000 or 3000-4999; other codes (1009, 1006, ...) become a plain close.
    const allowed = code === 1000 || (code !== undefined && code >= 3000 && code <= 4999);
    // Reading on until the peer answers, or what was just sent before the close would be lost.
    this.#quiet.close(this.#ws, allowed ? code : undefined, reason);
  }
}

/** Engine.IO framing over a {@linkcode FrameSocket}. */
class WebSocketTransport {
  onpacket: (packet: Packet) => void = () => {};
  onerror: (reason: string) => void = () => {};
  onclose: () => void = () => {};
  ontoolarge: (head: string, size: number) => void = () => {};
  /** A message of `size` bytes past `maxPayload` came: whether its session takes it. */
  onlarge: (size: number) => boolean = () => false;
  readonly frames: FrameSocket;
  /** Largest message taken; its session sets it. */
  maxPayload = 0;
  #closed = false;
  #traffic: TrafficHook | undefined;

  constructor(frames: FrameSocket, traffic: TrafficHook | undefined) {
    this.frames = frames;
    this.#traffic = traffic;
    frames.onmessage = (data) => this.#receive(data);
    frames.onclose = () => {
      this.#closed = true;
      this.onclose();
    };
  }

  send(packets: readonly Packet[]): void {
    if (this.#closed) return;
    for (const packet of packets) this.frames.send(encodeFrame(packet));
    this.#traffic?.sent(packets.length);
  }

  close(code?: number): void {
    if (this.#closed) return;
    this.#closed = true;
    this.frames.close(code);
  }

  #receive(data: string | Uint8Array): void {
    if (this.#closed) return;
    const max = this.maxPayload;
    const traffic = this.#traffic;
    // Characters are enough for the limit when even three bytes each would fit; the metric
    // wants the bytes.
    const size = typeof data !== "string"
      ? data.byteLength
      : data.length * 3 <= max && !traffic
      ? data.length
      : utf8Length(data);
    if (size > max && !this.onlarge(size)) {
      // A message packet ("4..."): the start is enough to tell which event it carried. A binary
      // message is an attachment of a packet whose start came before it.
      if (typeof data !== "string") this.ontoolarge("", size);
      else if (data.startsWith("4")) this.ontoolarge(data.slice(1, 513), size);
      this.onerror("payload too large");
      return;
    }
    traffic?.received(size);
    let packet: Packet;
    try {
      packet = decodePacket(data);
    } catch {
      this.onerror("parse error");
      return;
    }
    this.onpacket(packet);
  }
}

interface SessionHost {
  readonly options: ResolvedOptions;
  /** What sessions nobody signed in may hold (see `unsignedPostBytes`), shared by all. */
  readonly unsigned: PostBudget;
  forget(id: string): void;
}

/** An Engine.IO session; long-polling state lives here, WebSocket framing in its transport. */
class Session implements EngineSocket {
  readonly id: string;
  readonly request: EngineRequest;
  onmessage: ((data: string | Uint8Array) => void) | null = null;
  onclose: ((reason: EngineCloseReason, description?: string) => void) | null = null;
  onupgrade: (() => void) | null = null;
  ontoolarge: ((head: string, size: number) => void) | null = null;
  #host: SessionHost;
  #state: "open" | "closing" | "closed" = "open";
  #ws: WebSocketTransport | null = null;
  #candidate: WebSocketTransport | null = null;
  /** The upgrade candidate the session's close closed, whose connection `gone` waits for. */
  #closedCandidate: WebSocketTransport | null = null;
  /** Resolved once the session has closed. */
  #ended = Promise.withResolvers<void>();
  #probed = false;
  #maxPayload: number;
  /** How many more of those it takes (see `initialLargeMessages`). */
  #largeLeft: number;
  /**
   * Bytes of those taken, and of its polling POSTs past their free part, held of the host's
   * `unsigned` budget until it signs in or closes.
   */
  #largeHeld = 0;
  /** Whether its first large WebSocket message or counted POST, outside the budget, was taken. */
  #firstTaken = false;
  /** Largest polling POST past `maxPollingPayload`: what the application set as `maxPayload`. */
  #maxPost = 0;
  #poll: ((reply: Reply) => void) | null = null;
  #posting = false;
  #buffer: Packet[] = [];
  /** Packets one polling answer may hold: {@link POLL_PACKETS} for python-engineio. */
  #pollPackets: number;
  /** Bytes of message data in `#buffer`: what a polling client has not fetched yet. */
  #buffered = 0;
  #pingTimer: Timer | undefined;
  #pongTimer: Timer | undefined;
  #upgradeTimer: Timer | undefined;
  #closeTimer: Timer | undefined;

  constructor(
    host: SessionHost,
    id: string,
    request: EngineRequest,
    ws: WebSocketTransport | null,
  ) {
    this.#host = host;
    this.id = id;
    this.request = request;
    this.#pollPackets = pollPackets(request);
    const options = host.options;
    this.#maxPayload = options.initialMaxPayload;
    this.#largeLeft = options.initialLargeMessages;
    if (ws) {
      ws.maxPayload = this.#maxPayload;
      this.#useWebSocket(ws);
    }
    const canUpgrade = !ws && options.allowUpgrades && options.transports.includes("websocket");
    const open = {
      sid: id,
      upgrades: canUpgrade ? ["websocket"] : [],
      pingInterval: options.pingInterval,
      pingTimeout: options.pingTimeout,
      // Clients size their polling batches by it; WebSocket messages are sent one by one.
      maxPayload: options.maxPollingPayload,
    };
    const handshake: Packet = { type: "open", data: JSON.stringify(open) };
    // Counted as any packet is: an answer that takes it takes its size off.
    this.#buffer.push(handshake);
    this.#buffered += dataSize(handshake);
    this.#flush();
    this.#schedulePing();
  }

  get transport(): TransportName {
    return this.#ws ? "websocket" : "polling";
  }

  get readyState(): "open" | "closing" | "closed" {
    return this.#state;
  }

  get maxPayload(): number {
    return this.#maxPayload;
  }

  set maxPayload(bytes: number) {
    this.#maxPayload = bytes;
    this.#maxPost = bytes;
    this.#largeLeft = 0;
    // Signed in: what it holds is its user's now, bounded as any signed-in session's is.
    this.#releaseLarge();
    if (this.#ws) this.#ws.maxPayload = bytes;
    if (this.#candidate) this.#candidate.maxPayload = bytes;
  }

  /** Gives back what its large messages and POSTs held of the budget of unsigned sessions. */
  #releaseLarge(): void {
    this.#host.unsigned.left += this.#largeHeld;
    this.#largeHeld = 0;
  }

  /** Largest polling POST the application allowed this session (0: the server's limit). */
  get maxPost(): number {
    return this.#maxPost;
  }

  /**
   * Whether this polling session holds packets no GET has taken yet: what it was told waits for
   * the client's next GET, which a server about to stop must still be there to answer.
   */
  get unfetched(): boolean {
    return this.#state !== "closed" && !this.#ws && this.#buffer.length > 0;
  }

  /** Whether another WebSocket may still try to take over this polling session. */
  get upgradable(): boolean {
    return this.#state === "open" && !this.#ws && !this.#candidate;
  }

  send(data: string | Uint8Array): void {
    this.sendPackets([{ type: "message", data }]);
  }

  unsent(): number {
    return this.#ws ? this.#ws.frames.unsent?.() ?? 0 : this.#buffered;
  }

  sendPackets(packets: readonly Packet[]): void {
    if (this.#state !== "open") return;
    for (const packet of packets) {
      this.#buffer.push(packet);
      this.#buffered += dataSize(packet);
    }
    this.#flush();
    // Still buffered after the flush: a polling client that sends but does not fetch. Pongs in
    // its POSTs keep it from timing out, so only this bound ends it.
    if (this.#buffered > this.#host.options.maxBufferedBytes) {
      this.#close("transport error", "slow consumer");
    }
  }

  close(): void {
    if (this.#state !== "open") return;
    this.#state = "closing";
    // Its events are answered: what it held of the budget of unsigned sessions goes now, not with
    // a next GET that a client which never polls would not send.
    this.#releaseLarge();
    this.#candidate?.close();
    if (this.#ws) {
      // What was said before the close goes first, as a parked GET gets it before the session ends.
      this.#flush();
      this.#ws.close();
      this.#close("forced close");
    } else {
      this.#flush();
      if (this.readyState === "closed") return;
      // The session ends with the GET that takes what is left (a parked one took at most
      // POLL_PACKETS from python-engineio); a client that never polls again is dead anyway.
      const { pingInterval, pingTimeout } = this.#host.options;
      this.#closeTimer = setTimeout(
        () => this.#close("forced close"),
        Math.min(pingInterval + pingTimeout, 30_000),
      );
    }
  }

  gone(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timerDelay(ms));
      Deno.unrefTimer(timer);
    });
    // The session first (the layer above may let go of it before it closes, and a probe may
    // still complete an upgrade), then its WebSocket and the one being probed when it closed.
    const held = async () => {
      await this.#ended.promise;
      const frames = [this.#ws, this.#closedCandidate]
        .map((t) => t?.frames)
        .filter((f): f is LocalFrameSocket => f instanceof LocalFrameSocket);
      await Promise.all(frames.map((f) => f.closed));
    };
    return Promise.race([held(), late]).finally(() => clearTimeout(timer));
  }

  /** Ends the session at once for a server shutdown; a parked GET gets a noop, the next 400. */
  shutdown(): Promise<void> {
    const frames = this.#ws?.frames;
    this.#close("forced server close");
    return frames instanceof LocalFrameSocket ? frames.closed : Promise.resolve();
  }

  /** Closes the session because the client misbehaved or went away. */
  fail(reason: EngineCloseReason, description?: string): void {
    this.#close(reason, description);
  }

  /** Serves a long-polling GET. */
  poll(): Promise<Reply> {
    if (this.#state === "closed") return Promise.resolve(errorReply(ErrorCode.UNKNOWN_SID));
    if (this.#ws) return Promise.resolve(errorReply(ErrorCode.BAD_REQUEST));
    if (this.#poll) {
      // Two GETs at once would reorder packets; the protocol answers by closing the session.
      this.#close("transport error", "overlapping GET requests");
      return Promise.resolve(errorReply(ErrorCode.BAD_REQUEST));
    }
    return new Promise((resolve) => {
      this.#poll = resolve;
      this.#flush();
    });
  }

  /** Marks a POST as in flight; false (and the session closed) when one already is. */
  beginPost(): boolean {
    if (this.#posting) {
      this.#close("transport error", "overlapping POST requests");
      return false;
    }
    this.#posting = true;
    return true;
  }

  /** Marks the POST in flight as done. */
  endPost(): void {
    this.#posting = false;
  }

  /**
   * Handles the body of a long-polling POST, in slices that let other work run between them
   * (see {@link POST_SLICE_MS}); resolves once every packet has been handled. `held`: what it
   * holds already of the budget of unsigned sessions, read here; without it (relayed from another
   * isolate), the session takes its share itself.
   */
  async post(body: string, held?: number): Promise<Reply> {
    const budget = this.#host.unsigned;
    const bytes = utf8Length(body);
    // Not signed in, its events wait for a sign-in (and its text until they are handled): its
    // bytes stay counted, as its large WebSocket messages are, until it signs in or closes.
    let counted = 0;
    const share = held ?? Math.max(0, bytes - FREE_POST_BYTES);
    if (this.#state === "closed" || this.#ws || this.#maxPost > 0) {
      budget.left += held ?? 0;
    } else if (share > 0 && !this.#firstTaken) {
      // The session's first, as its first large WebSocket message: a client reconnecting over
      // polling with photos written offline must not lose them to others filling the budget.
      this.#firstTaken = true;
      budget.left += held ?? 0;
    } else if (held !== undefined) {
      counted = held;
    } else {
      counted = share;
      if (counted > budget.left) {
        this.#close("transport error", "server busy");
        return BUSY;
      }
      budget.left -= counted;
    }
    this.#largeHeld += counted;
    if (this.#state === "closed") return errorReply(ErrorCode.UNKNOWN_SID);
    if (this.#ws) return errorReply(ErrorCode.BAD_REQUEST);
    // Counted by the session's owner, as its WebSocket messages are, wherever the POST arrived.
    this.#host.options.traffic?.received(bytes);
    // Bounded by its bytes alone, as Node's server is: socket.io-client sizes its batches by the
    // handshake's maxPayload, so what a client queued while offline (a typing event for every key
    // pressed) comes in one POST. Walked a packet at a time, never split whole: a body of millions
    // of two-byte packets would otherwise take hundreds of MB.
    let slice = performance.now();
    for (let at = 0, n = 0; at <= body.length; n++) {
      if (n % POST_SLICE_CHECK === 0 && performance.now() - slice >= POST_SLICE_MS) {
        // A timer, not a microtask: requests and frames of other clients wait in the event loop.
        await new Promise((resolve) => setTimeout(resolve, 0));
        slice = performance.now();
      }
      if (this.readyState === "closed") break;
      let end = body.indexOf(SEPARATOR, at);
      if (end < 0) end = body.length;
      let packet: Packet;
      try {
        packet = decodePacket(body.slice(at, end));
      } catch {
        this.#close("parse error");
        return errorReply(ErrorCode.BAD_REQUEST);
      }
      at = end + 1;
      if (packet.type === "close") {
        // The client leaves on its own: its parked GET is released with a noop.
        this.#close("transport close");
        break;
      }
      this.#receive(packet);
    }
    // Held past its free part, as a large WebSocket message before sign-in is: the application
    // hears of it, to end the session if nobody signs in for it (it would otherwise hold its
    // share until the session closes, up to the application's own sign-in timeout).
    if (counted > 0 && this.#maxPost === 0 && this.#state === "open" && !this.#ws) {
      try {
        this.#host.options.initialLargeTaken?.(this);
      } catch (error) {
        report(error);
      }
    }
    return OK;
  }

  /** Takes a WebSocket that wants to replace polling; false when that is not possible now. */
  upgrade(ws: WebSocketTransport): boolean {
    if (!this.upgradable) return false;
    ws.maxPayload = this.#maxPayload;
    this.#candidate = ws;
    this.#probed = false;
    const abandon = () => {
      clearTimeout(this.#upgradeTimer);
      this.#upgradeTimer = undefined;
      ws.onpacket = () => {};
      ws.onerror = () => {};
      ws.onclose = () => {};
      ws.close();
      if (this.#candidate === ws) {
        this.#candidate = null;
        this.#probed = false;
      }
    };
    this.#upgradeTimer = setTimeout(abandon, this.#host.options.upgradeTimeout);
    ws.onerror = abandon;
    ws.onclose = abandon;
    ws.onpacket = (packet) => {
      if (packet.type === "ping" && packet.data === "probe") {
        ws.send([PONG_PROBE]);
        this.#probed = true;
        // Release a parked GET so the client can pause polling and finish the upgrade.
        this.#flush();
      } else if (packet.type === "upgrade" && this.#state !== "closed") {
        clearTimeout(this.#upgradeTimer);
        this.#upgradeTimer = undefined;
        this.#candidate = null;
        this.#probed = false;
        this.#answerPoll([NOOP]);
        this.#useWebSocket(ws);
        try {
          this.onupgrade?.();
        } catch (error) {
          report(error);
        }
        this.#flush();
        if (this.#state === "closing") {
          ws.close();
          this.#close("forced close");
        }
      } else {
        abandon();
      }
    };
    return true;
  }

  #useWebSocket(ws: WebSocketTransport): void {
    this.#ws = ws;
    ws.onpacket = (packet) => this.#receive(packet);
    ws.ontoolarge = (head, size) => {
      try {
        this.ontoolarge?.(head, size);
      } catch (error) {
        report(error);
      }
    };
    ws.onlarge = (size) => {
      // Deno has read it whole already, but it is held until an application signs the session in
      // (or ends it): past the count, or what all unsigned sessions may hold, it is refused. But
      // the session's first, bounded by the sessions the application lets wait, as one a session
      // took before there were more: others filling the budget must not cost a client its one.
      if (this.#largeLeft === 0 || size > this.#host.options.initialLargePayload) return false;
      const first = !this.#firstTaken;
      const budget = this.#host.unsigned;
      if (!first && size > budget.left) return false;
      this.#largeLeft--;
      this.#firstTaken = true;
      if (!first) {
        budget.left -= size;
        this.#largeHeld += size;
      }
      try {
        this.#host.options.initialLargeTaken?.(this);
      } catch (error) {
        report(error);
      }
      return true;
    };
    ws.onerror = (reason) => {
      this.#close(reason === "parse error" ? "parse error" : "transport error", reason);
    };
    ws.onclose = () => this.#close("transport close");
  }

  #receive(packet: Packet): void {
    switch (packet.type) {
      case "pong":
        clearTimeout(this.#pongTimer);
        this.#pongTimer = undefined;
        this.#schedulePing();
        break;
      case "message":
        try {
          this.onmessage?.(packet.data ?? "");
        } catch (error) {
          report(error);
        }
        break;
      case "close":
        this.#close("transport close");
        break;
      case "ping":
        // In v4 only the server pings; a client ping outside an upgrade probe is a protocol error.
        this.#close("transport error", "invalid heartbeat direction");
        break;
      default:
        break;
    }
  }

  #schedulePing(): void {
    clearTimeout(this.#pingTimer);
    const { pingInterval, pingTimeout } = this.#host.options;
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = undefined;
      if (this.#pollPackets < Infinity && this.#state === "open") {
        // Ahead of what waits: an answer of at most POLL_PACKETS a round trip may leave a client
        // in a busy room behind, which must not end it by ping timeout.
        this.#buffer.unshift(PING);
        this.#flush();
      } else {
        this.sendPackets([PING]);
      }
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => this.#close("ping timeout"), timerDelay(pingTimeout));
    }, timerDelay(pingInterval));
  }

  #flush(): void {
    if (this.#state === "closed") return;
    if (this.#ws) {
      if (this.#buffer.length === 0) return;
      const packets = this.#buffer;
      this.#buffer = [];
      this.#buffered = 0;
      this.#ws.send(packets);
      return;
    }
    if (!this.#poll) return;
    const closing = this.#state === "closing";
    if (this.#buffer.length === 0 && !closing && !this.#probed) return;
    let packets = this.#buffer;
    if (packets.length <= this.#pollPackets) {
      this.#buffer = [];
      this.#buffered = 0;
    } else {
      packets = packets.slice(0, this.#pollPackets);
      this.#buffer = this.#buffer.slice(this.#pollPackets);
      // What is left still counts as unfetched, towards the slow-consumer bound.
      for (const packet of packets) this.#buffered -= dataSize(packet);
    }
    // Never a close packet: python-engineio takes one for a deliberate close, and python-socketio
    // then never reconnects. A closing session ends with the answer that takes its last packets;
    // its next GET's 400 is a lost transport, which every client reconnects from.
    if (packets.length === 0) packets.push(NOOP);
    this.#answerPoll(packets);
    if (closing && this.#buffer.length === 0) this.#close("forced close");
  }

  #answerPoll(packets: readonly Packet[]): void {
    const poll = this.#poll;
    if (!poll) return;
    this.#poll = null;
    poll(dataReply(packets));
    this.#host.options.traffic?.sent(packets.length);
  }

  #close(reason: EngineCloseReason, description?: string): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    clearTimeout(this.#pingTimer);
    clearTimeout(this.#pongTimer);
    clearTimeout(this.#upgradeTimer);
    clearTimeout(this.#closeTimer);
    this.#buffer = [];
    this.#buffered = 0;
    // A noop, not a close packet, whoever ends it (see #flush): the next GET gets 400.
    this.#answerPoll([NOOP]);
    this.#ws?.close();
    this.#candidate?.close();
    this.#closedCandidate = this.#candidate;
    this.#candidate = null;
    this.#releaseLarge();
    this.#ended.resolve();
    this.#host.forget(this.id);
    try {
      this.onclose?.(reason, description);
    } catch (error) {
      report(error);
    }
  }
}

type BodyResult =
  /** `held`: bytes still taken from the budget, which the caller gives back once it is handled. */
  | { ok: true; text: string; held: number }
  | { ok: false; tooLarge: boolean; busy?: boolean; notUtf8?: boolean };

// Packets are text: bytes that are not UTF-8 are no packets (a lenient decoder stored U+FFFD).
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A body's text, or the refusal of one that is not UTF-8. */
function bodyText(bytes: Uint8Array): BodyResult {
  try {
    return { ok: true, text: utf8.decode(bytes), held: 0 };
  } catch {
    return { ok: false, tooLarge: false, notUtf8: true };
  }
}

/**
 * Reads a POST body of at most `limit` bytes; with a `budget`, its bytes past
 * {@link FREE_POST_BYTES} are taken from it as they come (a body read whole keeps them, as its
 * `held`, for its caller to give back; a refused one gives them back), a body it cannot hold is
 * refused as `busy`, and one that takes longer than its deadline is dropped.
 */
async function readBody(req: Request, limit: number, budget?: PostBudget): Promise<BodyResult> {
  const declared = Number(req.headers.get("content-length"));
  if (declared > limit) {
    await req.body?.cancel().catch(() => {});
    return { ok: false, tooLarge: true };
  }
  if (budget && declared - FREE_POST_BYTES > budget.left) {
    await req.body?.cancel().catch(() => {});
    return { ok: false, tooLarge: false, busy: true };
  }
  if (!req.body) return { ok: true, text: "", held: 0 };
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let taken = 0;
  let late = false;
  const deadline = budget
    ? setTimeout(() => {
      late = true;
      reader.cancel().catch(() => {});
    }, budget.deadlineMs)
    : undefined;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (late) return { ok: false, tooLarge: false };
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        return { ok: false, tooLarge: true };
      }
      if (budget) {
        const more = Math.max(0, size - FREE_POST_BYTES) - taken;
        if (more > budget.left) {
          await reader.cancel().catch(() => {});
          return { ok: false, tooLarge: false, busy: true };
        }
        budget.left -= more;
        taken += more;
      }
      chunks.push(value);
    }
  } catch {
    return { ok: false, tooLarge: false };
  } finally {
    clearTimeout(deadline);
    if (budget) budget.left += taken;
  }
  let all = chunks[0];
  if (chunks.length > 1) {
    all = new Uint8Array(size);
    let offset = 0;
    for (const chunk of chunks) {
      all.set(chunk, offset);
      offset += chunk.byteLength;
    }
  }
  const body = all ? bodyText(all) : { ok: true as const, text: "", held: 0 };
  // Taken again, with nothing run in between: its text is still held until it has been handled.
  if (budget && body.ok) {
    budget.left -= taken;
    body.held = taken;
  }
  return body;
}

function pipe(a: FrameSocket, b: FrameSocket): void {
  a.onmessage = (data) => b.send(data);
  b.onmessage = (data) => a.send(data);
  a.onclose = (code, reason) => b.close(code, reason);
  b.onclose = (code, reason) => a.close(code, reason);
}

/** An Engine.IO v4 server answering `Request`s under one path. */
export class EngineServer {
  /** Called for every new session, before the handshake response leaves. */
  onconnection: ((socket: EngineSocket) => void) | null = null;
  #options: ResolvedOptions;
  #base: string;
  #sessions = new Map<string, Session>();
  #relay: SessionRelay | null;
  #nodeId: string;
  #closed = false;
  #host: SessionHost;
  /** What POSTs nobody has signed in for may still hold (see `unsignedPostBytes`). */
  #unsignedPosts: PostBudget;

  /** Creates a server; it handles nothing until requests are passed to `handleRequest`. */
  constructor(options: EngineOptions = {}) {
    let path = options.path ?? "/socket.io/";
    if (!path.startsWith("/")) path = "/" + path;
    if (!path.endsWith("/")) path += "/";
    // The largest message of any session: no other limit goes past it.
    const maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.#options = {
      path,
      pingInterval: options.pingInterval ?? 25_000,
      pingTimeout: options.pingTimeout ?? 20_000,
      upgradeTimeout: options.upgradeTimeout ?? 10_000,
      maxPayload,
      initialMaxPayload: Math.min(options.initialMaxPayload ?? Infinity, maxPayload),
      initialLargePayload: Math.min(options.initialLargePayload ?? 0, maxPayload),
      initialLargeMessages: options.initialLargeMessages ?? 1,
      initialLargeTaken: options.initialLargeTaken,
      maxPollingPayload: Math.min(options.maxPollingPayload ?? Infinity, maxPayload),
      transports: options.transports ?? ["polling", "websocket"],
      allowUpgrades: options.allowUpgrades ?? true,
      allowedOrigins: options.allowedOrigins ?? "*",
      frameBudget: options.frameBudget,
      traffic: options.traffic,
      maxBufferedBytes: options.maxBufferedBytes ?? Infinity,
      refuseHandshake: options.refuseHandshake,
    };
    // As long as a session lasts without a poll: a POST still arriving then is a stalled one.
    this.#unsignedPosts = {
      left: options.unsignedPostBytes ?? Infinity,
      deadlineMs: this.#options.pingInterval + this.#options.pingTimeout,
    };
    this.#base = path.slice(0, -1);
    const relay = options.relay === true
      ? new BroadcastChannelRelay({ name: `engine.io-relay:${path}` })
      : options.relay || null;
    this.#relay = relay;
    this.#nodeId = relay?.nodeId ?? `n${randomId().slice(0, 8)}`;
    const sessions = this.#sessions;
    this.#host = {
      options: this.#options,
      unsigned: this.#unsignedPosts,
      forget: (id) => sessions.delete(id),
    };
    relay?.attach(this.#relayOwner());
  }

  /** The path this server answers under, with a trailing slash. */
  get path(): string {
    return this.#options.path;
  }

  /** Number of open sessions held by this isolate. */
  get clientsCount(): number {
    return this.#sessions.size;
  }

  /**
   * Long-polling sessions of this isolate holding packets their client has not fetched yet: a
   * shutdown waits for their next GETs before it closes the sessions, which drops those packets.
   */
  get unfetchedSessions(): number {
    let n = 0;
    for (const session of this.#sessions.values()) if (session.unfetched) n++;
    return n;
  }

  /** Answers any request under the path: handshakes, polls, posts, WebSocket upgrades, preflights. */
  async handleRequest(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const url = new URL(req.url);
    if (url.pathname !== this.#base && !url.pathname.startsWith(this.#options.path)) {
      return this.#respond(errorReply(ErrorCode.BAD_REQUEST, 404, "Not found"), null);
    }
    const origin = req.headers.get("origin");
    if (origin !== null && !this.#originAllowed(origin, req)) {
      return this.#respond(errorReply(ErrorCode.FORBIDDEN, 403), null);
    }
    if (req.method === "OPTIONS") return this.#preflight(req, origin);
    const fail = (code: number) => this.#respond(errorReply(code), origin);
    if (this.#closed) return fail(ErrorCode.BAD_REQUEST);
    const query = url.searchParams;
    if (query.get("EIO") !== "4") return fail(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION);
    const transport = query.get("transport");
    if (
      (transport !== "polling" && transport !== "websocket") ||
      !this.#options.transports.includes(transport)
    ) {
      return fail(ErrorCode.UNKNOWN_TRANSPORT);
    }
    const isUpgrade = req.headers.get("upgrade")?.toLowerCase() === "websocket";
    if ((transport === "websocket") !== isUpgrade) return fail(ErrorCode.BAD_REQUEST);
    const sid = query.get("sid");

    if (sid === null) {
      if (req.method !== "GET") return fail(ErrorCode.BAD_HANDSHAKE_METHOD);
      const refusal = this.#options.refuseHandshake?.() ?? null;
      if (refusal !== null) {
        return this.#respond(errorReply(ErrorCode.FORBIDDEN, 503, refusal), origin);
      }
      // Captured before any upgrade: an upgraded request no longer exposes headers or address.
      const addr = info?.remoteAddr;
      const request: EngineRequest = {
        url: req.url,
        headers: new Headers(req.headers),
        query: new URLSearchParams(url.searchParams),
        remoteAddress: addr && "hostname" in addr ? addr.hostname : "",
        secure: url.protocol === "https:" || url.protocol === "wss:",
        time: new Date(),
      };
      if (transport === "websocket") {
        let upgraded: { socket: WebSocket; response: Response };
        try {
          upgraded = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
        } catch {
          return fail(ErrorCode.BAD_REQUEST);
        }
        const frames = new LocalFrameSocket(upgraded.socket, this.#options);
        this.#open(request, new WebSocketTransport(frames, this.#options.traffic));
        return upgraded.response;
      }
      const session = this.#open(request, null);
      return this.#respond(await session.poll(), origin);
    }

    const session = this.#sessions.get(sid);
    if (!session) return this.#forward(req, sid, transport, origin);
    if (transport === "websocket") {
      if (!this.#options.allowUpgrades || !session.upgradable) return fail(ErrorCode.BAD_REQUEST);
      let upgraded: { socket: WebSocket; response: Response };
      try {
        upgraded = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
      } catch {
        return fail(ErrorCode.BAD_REQUEST);
      }
      const frames = new LocalFrameSocket(upgraded.socket, this.#options);
      session.upgrade(new WebSocketTransport(frames, this.#options.traffic));
      return upgraded.response;
    }
    if (session.transport !== "polling") return fail(ErrorCode.BAD_REQUEST);
    if (req.method === "GET") return this.#respond(await session.poll(), origin);
    if (req.method !== "POST") return fail(ErrorCode.BAD_REQUEST);
    if (req.headers.get("content-type")?.startsWith("application/octet-stream")) {
      // Protocol v4 carries binary as base64 text; a binary body is a v3 client or garbage.
      session.fail("transport error", "binary POST body");
      return fail(ErrorCode.BAD_REQUEST);
    }
    if (!session.beginPost()) return fail(ErrorCode.BAD_REQUEST);
    // A session whose `maxPayload` the application set (it trusts it: it signed in) may POST as
    // much as it may send in one WebSocket message; the others keep the polling limit.
    const limit = Math.max(this.#options.maxPollingPayload, session.maxPost);
    const body = await readBody(req, limit, session.maxPost > 0 ? undefined : this.#unsignedPosts);
    if (!body.ok) {
      session.endPost();
      if (body.notUtf8) session.fail("parse error", "a POST that is not UTF-8");
      else {
        session.fail(
          "transport error",
          body.tooLarge ? "payload too large" : body.busy ? "server busy" : "POST aborted",
        );
      }
      if (body.busy) return this.#busy(origin);
      return body.tooLarge ? this.#payloadTooLarge(origin) : fail(ErrorCode.BAD_REQUEST);
    }
    // Still one POST in flight until its packets have been handled; the session keeps its bytes
    // counted until then, or until it signs in or closes if nobody has signed in yet.
    let reply: Reply;
    try {
      reply = await session.post(body.text, body.held);
    } finally {
      session.endPost();
    }
    return this.#respond(reply, origin);
  }

  /** Closes every session and the relay; resolves once local WebSockets have closed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing = [...this.#sessions.values()].map((session) => session.shutdown());
    this.#sessions.clear();
    await this.#relay?.close();
    // A peer that never completes the closing handshake must not hold the shutdown hostage.
    const { promise: deadline, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(resolve, 1000);
    await Promise.race([Promise.all(closing), deadline]);
    clearTimeout(timer);
  }

  #open(request: EngineRequest, ws: WebSocketTransport | null): Session {
    const id = `${this.#nodeId}.${randomId()}`;
    const session = new Session(this.#host, id, request, ws);
    this.#sessions.set(id, session);
    try {
      this.onconnection?.(session);
    } catch (error) {
      report(error);
    }
    return session;
  }

  async #forward(
    req: Request,
    sid: string,
    transport: TransportName,
    origin: string | null,
  ): Promise<Response> {
    const relay = this.#relay;
    const unknown = () => this.#respond(errorReply(ErrorCode.UNKNOWN_SID), origin);
    if (!relay || sid.startsWith(this.#nodeId + ".")) return unknown();
    if (transport === "websocket") {
      if (!this.#options.allowUpgrades) {
        return this.#respond(errorReply(ErrorCode.BAD_REQUEST), origin);
      }
      const bridge = await relay.openWebSocket(sid);
      if (!bridge) return unknown();
      let upgraded: { socket: WebSocket; response: Response };
      try {
        upgraded = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
      } catch {
        bridge.close();
        return this.#respond(errorReply(ErrorCode.BAD_REQUEST), origin);
      }
      pipe(new LocalFrameSocket(upgraded.socket, this.#options), bridge);
      return upgraded.response;
    }
    let reply: Reply | null;
    if (req.method === "GET") {
      const { pingInterval, pingTimeout } = this.#options;
      // The owner answers a parked GET at the latest with its next ping.
      reply = await relay.poll(sid, pingInterval + pingTimeout + 5_000);
    } else if (req.method === "POST") {
      if (req.headers.get("content-type")?.startsWith("application/octet-stream")) {
        return this.#respond(errorReply(ErrorCode.BAD_REQUEST), origin);
      }
      // Whose it is, only the owner knows: it counts as nobody's sign-in.
      const body = await readBody(req, this.#options.maxPollingPayload, this.#unsignedPosts);
      if (!body.ok && body.busy) return this.#busy(origin);
      if (!body.ok && !body.tooLarge && !body.notUtf8) {
        return this.#respond(errorReply(ErrorCode.BAD_REQUEST), origin);
      }
      // A body refused here ends the session there, as it would have on the owner; one taken is
      // held here until the owner has handled it (and answered).
      reply = await relay.post(sid, body.ok ? body.text : body.notUtf8 ? false : null);
      if (body.ok) this.#unsignedPosts.left += body.held;
    } else {
      return this.#respond(errorReply(ErrorCode.BAD_REQUEST), origin);
    }
    return reply ? this.#respond(reply, origin) : unknown();
  }

  #relayOwner(): RelayOwner {
    const find = (sid: string) => {
      const session = this.#sessions.get(sid);
      return session && session.readyState !== "closed" ? session : null;
    };
    return {
      relayPoll: (sid) => {
        const session = find(sid);
        if (!session) return Promise.resolve(errorReply(ErrorCode.UNKNOWN_SID));
        return session.poll();
      },
      relayPost: async (sid, body) => {
        const session = find(sid);
        if (!session) return errorReply(ErrorCode.UNKNOWN_SID);
        if (body === null) {
          session.fail("transport error", "payload too large");
          return this.#payloadTooLargeReply();
        }
        if (body === false) {
          session.fail("parse error", "a POST that is not UTF-8");
          return errorReply(ErrorCode.BAD_REQUEST);
        }
        // Handled in slices: another POST meanwhile would interleave its packets with these.
        if (!session.beginPost()) return errorReply(ErrorCode.BAD_REQUEST);
        try {
          return await session.post(body);
        } finally {
          session.endPost();
        }
      },
      relayWebSocket: (sid, frames) => {
        const session = find(sid);
        if (!session || !this.#options.allowUpgrades) return false;
        return session.upgrade(new WebSocketTransport(frames, this.#options.traffic));
      },
    };
  }

  #payloadTooLargeReply(): Reply {
    return errorReply(ErrorCode.BAD_REQUEST, 413, "Payload too large");
  }

  /** 503 for a POST the budget of unsigned POSTs could not hold: the client reconnects. */
  #busy(origin: string | null): Response {
    return this.#respond(BUSY, origin);
  }

  #payloadTooLarge(origin: string | null): Response {
    return this.#respond(this.#payloadTooLargeReply(), origin);
  }

  #originAllowed(origin: string, req: Request): boolean {
    const allowed = this.#options.allowedOrigins;
    if (allowed === "*") return true;
    if (typeof allowed === "function") return allowed(origin, req);
    return allowed.includes(origin);
  }

  #corsHeaders(headers: Headers, origin: string | null): void {
    if (origin === null) return;
    headers.set("access-control-allow-origin", origin);
    headers.set("access-control-allow-credentials", "true");
    headers.set("vary", "Origin");
  }

  #preflight(req: Request, origin: string | null): Response {
    const headers = new Headers();
    this.#corsHeaders(headers, origin);
    if (origin !== null) {
      headers.set("access-control-allow-methods", "GET, POST, OPTIONS");
      // The ones asked for that are granted: a header left out fails the browser's request.
      const granted = (req.headers.get("access-control-request-headers") ?? "")
        .split(",").map((name) => name.trim().toLowerCase())
        .filter((name) => name !== "" && !PROXY_HEADERS.test(name));
      headers.set("access-control-allow-headers", granted.join(",") || "content-type");
      headers.set("access-control-max-age", "86400");
    }
    return new Response(null, { status: 204, headers });
  }

  #respond(reply: Reply, origin: string | null): Response {
    const headers = new Headers({
      "content-type": reply.contentType,
      "cache-control": "no-store",
    });
    this.#corsHeaders(headers, origin);
    // Every 503 here is a refusal that passes by itself (busy, stopping): say when to come back,
    // like the REST API does, so proxies and HTTP clients that honour it do not hammer.
    if (reply.status === 503) headers.set("retry-after", "1");
    return new Response(reply.body, { status: reply.status, headers });
  }
}
