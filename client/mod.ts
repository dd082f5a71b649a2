/**
 * A typed client for the server's native protocol (docs/protocol.md), for browsers and Deno, with
 * no dependencies: one socket, many rooms, acknowledged idempotent sends, typing, read cursors,
 * history paging, presence and attachments. It reconnects by itself with backoff and recovers
 * every room by seq, so the application sees each room's messages once, in order, without gaps.
 *
 * ```ts
 * import { ChatClient } from "./client/mod.ts";
 * const chat = new ChatClient({ url: "ws://localhost:8000/ws", token });
 * chat.on("message", (m) => console.log(m.room, m.seq, m.sender?.username, m.body));
 * await chat.connect();
 * await chat.join("room:general", { history: 50 });
 * await chat.send("room:general", { body: "Hello" });
 * ```
 *
 * @module
 */

/** A user as the server shows it. */
export interface ChatUser {
  /** Stable id from the token. */
  id: string | number;
  /** Display handle. */
  username: string;
  /** Full name, when the token has one. */
  name: string | null;
  /** Email, when the token has one. */
  email: string | null;
  /** Avatar URL, when the token has one. */
  profile_image: string | null;
  /** Role such as `admin` or `support`. */
  role: string | null;
}

/** What the server takes in one message, as its `welcome` says. */
export interface ServerLimits {
  /** Longest `body`, in UTF-16 code units. */
  maxBodyChars: number;
  /** Most files in one message. */
  maxFiles: number;
  /** Largest file, in bytes (the server's MAX_FILE_BYTES). */
  maxFileBytes: number;
  /** Largest frame, in characters of its JSON: the files of one `send` share it, in base64. */
  maxFrameChars: number;
  /** Frames a second the server takes from one socket, in bursts of up to twice that. */
  framesPerSecond: number;
}

/** A stored file of a message. */
export interface ChatAttachment {
  /** Opaque id. */
  id: string;
  /** The name the sender gave, made safe. */
  name: string;
  /** Media type. */
  mime: string;
  /** Size in bytes. */
  size: number;
  /** Absolute URL of the file. */
  url: string;
}

/** A message, exactly as the `message` frame carries it. */
export interface ChatMessage {
  /** Always `"message"`. */
  type: "message";
  /** Room key, e.g. `room:general`. */
  room: string;
  /** Position in the room: 1, 2, 3, … with no gaps. */
  seq: number;
  /** Globally unique id. */
  id: string;
  /** Who sent it; null for system messages. */
  sender: ChatUser | null;
  /** Text; may be empty when there are attachments. */
  body: string;
  /** Files sent with it. */
  attachments: ChatAttachment[];
  /** Commit time, ISO 8601 UTC. */
  created_at: string;
  /** The sender's idempotency key, when one was given. */
  client_id: string | null;
}

/** The server's acknowledgement of a durable send. */
export interface ChatAck {
  /** Room key. */
  room: string;
  /** The idempotency key the message was stored under. */
  client_id: string | null;
  /** Message id. */
  id: string;
  /** The message's seq. */
  seq: number;
  /** Commit time. */
  created_at: string;
  /** True when this `client_id` had been stored before and this is the original's ack. */
  duplicate: boolean;
}

/** One page of a room's history, oldest first. */
export interface HistoryPage {
  /** The messages. */
  messages: ChatMessage[];
  /**
   * True when there are more in the direction asked: also on a page the server cut short of
   * `limit` (at about 1 MiB of messages), so page on with `first_seq` or `last_seq`, not counts.
   */
  has_more: boolean;
  /** Seq of the first message, or null for an empty page. */
  first_seq: number | null;
  /** Seq of the last message, or null for an empty page. */
  last_seq: number | null;
}

/** What {@link ChatClient.join} resolves with. */
export interface JoinResult {
  /** Room key. */
  room: string;
  /** Seq of the newest message when the socket went live in the room. */
  head: number;
  /** Users present. */
  presence: ChatUser[];
  /** The initial page asked for with `history`, already emitted as `message` events. */
  messages: ChatMessage[];
  /** True when the room has messages older than `messages`. */
  has_more: boolean;
}

/** Where the connection is. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A change of {@link ConnectionState}. */
export interface StateEvent {
  /** The new state. */
  state: ConnectionState;
  /** Reconnect attempts since the last successful connection. */
  attempt: number;
  /** Wait before the next attempt, when reconnecting. */
  delay_ms?: number;
  /** Close code of the socket that went away, when known. */
  code?: number;
  /** Why the client stopped, when it did (`unauthorized`, `closed`). */
  reason?: string;
}

/** Someone started or stopped typing; `typers` is everyone typing in the room now. */
export interface TypingEvent {
  /** Room key. */
  room: string;
  /** Who. */
  user: ChatUser;
  /** Whether they are typing now. */
  is_typing: boolean;
  /** Everyone else typing in the room now. */
  typers: ChatUser[];
}

/** A read cursor moved: another user's, or ours on another device. */
export interface ReadEvent {
  /** Room key. */
  room: string;
  /** Who read. */
  user: ChatUser;
  /** Newest seq they have read. */
  seq: number;
}

/** A read cursor: who has read a room up to which seq. */
export interface ReadCursor {
  /** The reader's user id (as `ChatUser.id`). */
  userId: string | number;
  /** Newest seq they have read. */
  seq: number;
}

/** A (re)join brought the room's read cursors, ours included (absent for rooms of over 100). */
export interface ReadsEvent {
  /** Room key. */
  room: string;
  /** Every cursor known for the room, as {@link ChatClient.reads} gives them. */
  reads: ReadCursor[];
}

/** Presence changed: a user came or went, or a (re)join brought the full list (`sync`). */
export interface PresenceEvent {
  /** Room key. */
  room: string;
  /** What happened. */
  action: "join" | "leave" | "sync";
  /** Who came or went; absent for `sync`. */
  user?: ChatUser;
  /** Everyone present now. */
  users: ChatUser[];
}

/** Messages between what the client had and `first_seq` are gone: drop the room's and rebuild. */
export interface ResyncEvent {
  /** Room key. */
  room: string;
  /**
   * `history_truncated` or `ahead_of_history` (from the server), or `history_unavailable`: the
   * client could not read the messages before `first_seq` back (its history reads kept failing).
   */
  reason: string;
  /** Seq of the next message the room delivers; the ones before it that the client lacks are gone. */
  first_seq: number;
  /** Newest seq the server knew of when it sent this. */
  head: number;
}

/** The server took the client out of a room. */
export interface RemovedEvent {
  /** Room key. */
  room: string;
  /** `access_revoked` or `room_deleted`. */
  reason: string;
}

/** Progress of an attachment on its way to the server. */
export interface UploadProgress {
  /** Bytes sent so far. */
  loaded: number;
  /** Bytes in all. */
  total: number;
  /** `inline` (in a `send` frame) or `upload` (the HTTP upload route). */
  via: "inline" | "upload";
}

/** Everything a {@link ChatClient} emits, by event name. */
export interface ChatEventMap {
  /** The connection state changed. */
  state: StateEvent;
  /** The server greeted a (re)connected socket. */
  welcome: ChatUser;
  /** A message, once, in seq order per room. */
  message: ChatMessage;
  /** Someone else started or stopped typing. */
  typing: TypingEvent;
  /** A read cursor moved: someone else's, or ours on another device. */
  read: ReadEvent;
  /** A (re)join brought the room's read cursors, so that receipts survive a reload. */
  reads: ReadsEvent;
  /** Presence changed. */
  presence: PresenceEvent;
  /** The room must be rebuilt from the messages that follow. */
  resync: ResyncEvent;
  /** The server took the client out of a room. */
  removed: RemovedEvent;
  /** An error no request was waiting for. */
  error: ChatError;
}

/** A file to attach: a Blob or File, or bytes with a name. */
export type FileSource = Blob | { name: string; data: Uint8Array | Blob; type?: string };

/** What to send. */
export interface SendOptions {
  /** Text. */
  body?: string;
  /** Files to send inline (each up to the server's MAX_FILE_BYTES). */
  files?: FileSource[];
  /** Idempotency key; a fresh one when absent. Reuse it to retry safely. */
  clientId?: string;
}

/** How to send a file. */
export interface SendFileOptions {
  /** Text to send with the file. */
  body?: string;
  /** Idempotency key; a fresh one when absent. */
  clientId?: string;
  /** Called as bytes go out. */
  onProgress?: (progress: UploadProgress) => void;
  /** Force a path: `inline` (a `send` frame) or `upload` (HTTP); by size when absent. */
  via?: "inline" | "upload";
}

/** Backoff between reconnect attempts. */
export interface ReconnectOptions {
  /** First delay (ms). */
  minDelayMs?: number;
  /** Longest delay (ms). */
  maxDelayMs?: number;
  /** Growth per attempt. */
  factor?: number;
  /** Share of each delay that is random, 0 to 1, so clients do not all return at once. */
  jitter?: number;
}

/** Settings of a {@link ChatClient}. */
export interface ChatClientOptions {
  /**
   * `ws(s)://host/ws`, or `ws(s)://host/prefix/ws` behind a proxy that mounts the server under a
   * path; an `http(s)://host` base works too.
   */
  url: string;
  /** The JWT, or a function that returns a fresh one before each connection. */
  token: string | (() => string | Promise<string>);
  /**
   * Base of the HTTP routes (uploads), such as `https://host/prefix`; when absent, `url` without
   * its trailing `/ws` and its query (`wss://host/chat/ws` → `https://host/chat`).
   */
  httpUrl?: string;
  /** Backoff settings. */
  reconnect?: ReconnectOptions;
  /**
   * Interval of application pings that detect a dead connection (ms); 0 turns them off. Shortened
   * to a third of the server's `heartbeat_ms`, so that the server never needs to ping.
   */
  heartbeatMs?: number;
  /**
   * How long a ping, or a connection attempt, may go unanswered before reconnecting (ms); a
   * connection still sending a large frame gets more time for as long as it makes progress.
   */
  timeoutMs?: number;
  /**
   * The step of the waits before a request or join the server failed (`internal`) or refused as
   * too fast (`rate_limited`) goes again: the n-th retry waits n steps, up to a bound (ms).
   */
  retryMs?: number;
  /** Files up to this size go inline in a `send` frame; larger ones over HTTP. */
  inlineMaxBytes?: number;
  /** Largest file the server takes (its MAX_FILE_BYTES) until its `welcome` says. */
  maxFileBytes?: number;
  /** How often a continuing typing state is renewed (ms); the server ends it after 5 s. */
  typingRenewMs?: number;
  /** Typing stops by itself after this long without a `typing(room)` call (ms). */
  typingIdleMs?: number;
  /**
   * A send not acknowledged this long after it was made (offline all along, say) is refused with
   * `send_expired` instead of going again (ms; 23 hours by default): the server recognises a
   * `client_id` for 24 hours, and a later resend of one already stored would be stored twice.
   * Such a send may or may not have been stored.
   */
  sendExpiryMs?: number;
  /** WebSocket constructor, for environments without a global one. */
  WebSocket?: typeof WebSocket;
}

/** An error from the server (`code` as in docs/protocol.md) or from the client itself. */
export class ChatError extends Error {
  /** Protocol error code (`forbidden`, `not_found`, …) or `closed`, `unauthorized`, `http`. */
  readonly code: string;
  /** HTTP status for upload errors. */
  readonly status?: number;

  /** Builds an error with a code. */
  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = "ChatError";
    this.code = code;
    this.status = status;
  }
}

/** A fresh idempotency key; works outside secure contexts too, where `randomUUID` is missing. */
export function newClientId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Encodes bytes as standard base64, without relying on `Uint8Array.prototype.toBase64`. */
export function bytesToBase64(bytes: Uint8Array): string {
  const native = (bytes as Uint8Array & { toBase64?: () => string }).toBase64;
  if (typeof native === "function") return native.call(bytes);
  let binary = "";
  // Chunks keep String.fromCharCode's argument list far below engine limits.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Human-readable size: `512 B`, `1.5 KB`, `2.0 MB`. */
export function formatBytes(size: number): string {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

/** A frame this large (characters) may take longer to send than a ping may wait for its pong. */
const LARGE_FRAME_CHARS = 64 * 1024;
/** The slowest uplink a large frame is given time for, bytes per second. */
const SLOWEST_UPLINK_BYTES_PER_S = 4096;
/** The longest a missing pong is let pass after large frames, ms. */
const MAX_GRACE_MS = 120_000;

/**
 * The server's cap on a frame, in characters: 64 MiB (what Deno reads of one message, in UTF-8
 * bytes) less twice 64 KiB, as the text beside a file's base64 may take 3 bytes a character.
 */
const MAX_FRAME_CHARS = 64 * 1024 * 1024 - 2 * 64 * 1024;

const DEFAULTS = {
  minDelayMs: 250,
  maxDelayMs: 10_000,
  factor: 2,
  jitter: 0.3,
  heartbeatMs: 25_000,
  timeoutMs: 10_000,
  retryMs: 500,
  inlineMaxBytes: 256 * 1024,
  maxFileBytes: 10 * 1024 * 1024,
  maxBodyChars: 20_000,
  maxFiles: 10,
  typingRenewMs: 2_000,
  typingIdleMs: 3_000,
  // Under the server's 24 hours of recognising a client_id, with an hour to spare.
  sendExpiryMs: 23 * 3600_000,
  // The server's RATE_LIMIT_PER_SECOND by default, for servers whose welcome does not say it.
  framesPerSecond: 20,
};

/** How many timeouts frames still arriving may stand for a missing pong (see `#armDeadline`). */
const MAX_HEARD_TIMEOUTS = 6;
/** Rooms one join frame may name (the server's most per socket). */
const MAX_ROOMS_PER_JOIN = 100;
/** The share of the server's rate that waiting frames take: pings, typing and reads need some. */
const RATE_SHARE = 0.8;

// Close codes after which reconnecting with the same token cannot help.
const UNAUTHORIZED = 4001;
const RATE_LIMITED = 4029;
// Typing states of others expire here too, in case their `is_typing: false` never comes.
const TYPING_EXPIRY_MS = 7_000;

type Frame = Record<string, unknown>;
type Listener<T> = (event: T) => void;

interface Pending {
  frame: Frame;
  resolve(frame: Frame): void;
  reject(err: ChatError): void;
  /** Room the request needs to be joined first (`send`, `read`). */
  needsRoom?: string;
  /** Socket generation it was last written on. */
  sentOn: number;
  retries: number;
  /** Why its room was dropped after it was written: the server's "join first" means this. */
  dropped?: ChatError;
  /**
   * When it was made (Date.now(): the wall clock, which counts a device's sleep, as the server's
   * 24 hours of memory of a `client_id` do; the monotonic clock would not).
   */
  madeAt: number;
  /** The limits a `send` was last checked against. */
  checkedAgainst?: ServerLimits;
  /** True once it was written on some socket (the server may have stored it). */
  written?: boolean;
}

interface RoomState {
  /** Newest seq delivered to the application. */
  lastSeq?: number;
  /** The socket generation a join frame went out on. */
  joinSentOn: number;
  /** Joins the server failed (not refused) in a row. */
  joinRetries: number;
  /** A failed join goes again from this time on (performance.now()). */
  joinAfter: number;
  /** True once `joined` arrived on the current socket. */
  live: boolean;
  /** The last `joined` frame. */
  joinedFrame?: Frame;
  /** The room's deletion count in the last `joined`: a rejoin under a newer one is refused. */
  epoch?: number;
  presence: Map<string, ChatUser>;
  /** Read cursors by user id as text, from `joined` and `read` frames. */
  reads: Map<string, ReadCursor>;
  typers: Map<string, { user: ChatUser; timer: ReturnType<typeof setTimeout> }>;
  /** Deliveries of the room, one after another, so a gap can be filled before what follows. */
  chain: Promise<void>;
  waiters: { resolve(frame: Frame): void; reject(err: ChatError): void }[];
  /** When our typing was last sent (performance.now()); -Infinity while not typing. */
  typingSentAt: number;
  typingIdle?: ReturnType<typeof setTimeout>;
}

/**
 * A connection to the server's native protocol that survives disconnects: rooms are rejoined
 * with `since`, unacknowledged requests are resent (sends keep their `client_id`, so none is
 * stored twice), and messages reach the application once each, in seq order per room.
 */
export class ChatClient {
  #options: ChatClientOptions;
  /** `options.url`, absolute. */
  #url: string;
  #socket: WebSocket | null = null;
  #generation = 0;
  #state: ConnectionState = "idle";
  #attempt = 0;
  #user: ChatUser | null = null;
  #limits?: ServerLimits;
  #listeners = new Map<keyof ChatEventMap, Set<Listener<never>>>();
  #rooms = new Map<string, RoomState>();
  #pending = new Map<number, Pending>();
  /** The rooms each join frame on this socket named, by its ref, until each has its reply. */
  #joinRefs = new Map<number, Set<string>>();
  /** Rooms whose join is to be written: together, in as few frames as the server takes. */
  #joinQueue = new Map<string, RoomState>();
  #joinFlushQueued = false;
  /**
   * Frames this socket may still write at once: the server refuses a socket's frames past its
   * rate, and closes one that goes on (4029), so what waited (rejoins, sends queued offline) is
   * paced to stay under it.
   */
  #bucket = { tokens: 0, at: 0 };
  #nextRef = 1;
  #reconnectTimer?: ReturnType<typeof setTimeout>;
  #heartbeatTimer?: ReturnType<typeof setInterval>;
  /** The server's heartbeat period from `welcome`, ms. */
  #serverHeartbeatMs?: number;
  #deadline?: ReturnType<typeof setTimeout>;
  /** When the current socket last brought a frame (performance.now()). */
  #heardAt = -Infinity;
  /** Characters written to the current socket, to tell a slow upload from a dead connection. */
  #written = 0;
  /**
   * Until this time (performance.now()) a missing pong does not end the connection: a large frame just
   * written may still be crossing a slow uplink, with the pings queued behind it.
   */
  #graceUntil = 0;
  /** The ref of the last large frame: its reply ends the grace, as every frame before it arrived. */
  #graceRef?: unknown;
  /** Requests are not written before this time (performance.now()): the server said to slow down. */
  #holdUntil = 0;
  /** Gap fills, one history read at a time (see `#fillTurn`). */
  #fills: Promise<unknown> = Promise.resolve();
  #flushTimer?: ReturnType<typeof setTimeout>;
  /** When `#flushTimer` fires (performance.now()). */
  #flushTimerAt = 0;
  /** Rooms whose join is reading its first history page: joins under way, and a leave since. */
  #joining = new Map<string, { joins: number; left: boolean }>();

  get #retryMs(): number {
    return this.#options.retryMs ?? DEFAULTS.retryMs;
  }
  #connectWaiters: { resolve(user: ChatUser): void; reject(err: ChatError): void }[] = [];
  #retriedToken = false;
  #onOnline = () => {
    if (this.#state === "reconnecting") this.#retryNow();
  };

  /** Creates a client; nothing happens until {@link connect}. */
  constructor(options: ChatClientOptions) {
    this.#options = options;
    // Checked here, where a mistake can be thrown at its caller: a page may give "/ws".
    const base = (globalThis as { location?: { href?: string } }).location?.href;
    let url: URL | undefined;
    try {
      url = new URL(options.url, base);
    } catch {
      // Said below.
    }
    // `localhost:8000/ws` parses, as the scheme `localhost:`, and WebSockets refuse a fragment:
    // a socket would never open.
    if (
      !url || !/^(wss?|https?):$/.test(url.protocol) || url.host === "" || url.href.includes("#")
    ) {
      throw new TypeError(`ChatClient: "${options.url}" is not a URL the client can connect to`);
    }
    this.#url = url.toString();
  }

  /** Where the connection is now. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The user the server greeted us as, once connected. */
  get user(): ChatUser | null {
    return this.#user;
  }

  /** What the server takes in one message: its `welcome`'s word, or the options' until then. */
  get limits(): ServerLimits {
    if (this.#limits) return this.#limits;
    const maxFileBytes = this.#options.maxFileBytes ?? DEFAULTS.maxFileBytes;
    // The server's rule: one file's base64, room for a line break every 76 characters, 64 KiB,
    // up to MAX_FRAME_CHARS.
    const base64 = Math.ceil(maxFileBytes / 3) * 4;
    return {
      maxBodyChars: DEFAULTS.maxBodyChars,
      maxFiles: DEFAULTS.maxFiles,
      maxFileBytes,
      maxFrameChars: Math.min(base64 + Math.ceil(base64 / 76) * 4 + 64 * 1024, MAX_FRAME_CHARS),
      framesPerSecond: DEFAULTS.framesPerSecond,
    };
  }

  /** Base URL of the HTTP routes: the `httpUrl` option, else `url` without its trailing `/ws`. */
  get httpUrl(): string {
    if (this.#options.httpUrl) return this.#options.httpUrl.replace(/\/$/, "");
    const url = new URL(this.#url);
    url.protocol = url.protocol === "wss:"
      ? "https:"
      : url.protocol === "ws:"
      ? "http:"
      : url.protocol;
    // A proxy that mounts the server under a path (`wss://host/chat/ws`) routes only that path to
    // it: the origin alone would send uploads where the proxy answers 404.
    const path = url.pathname.replace(/\/$/, "");
    return url.origin + (path.endsWith("/ws") ? path.slice(0, -"/ws".length) : "");
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof ChatEventMap>(type: K, listener: Listener<ChatEventMap[K]>): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = new Set());
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  /** Opens the socket; resolves with our user at the first welcome and reconnects from then on. */
  connect(): Promise<ChatUser> {
    const promise = new Promise<ChatUser>((resolve, reject) => {
      this.#connectWaiters.push({ resolve, reject });
    });
    if (this.#state === "open" && this.#user) {
      this.#settleConnect(this.#user);
    } else if (this.#state === "idle" || this.#state === "closed") {
      this.#attempt = 0;
      globalThis.addEventListener?.("online", this.#onOnline);
      this.#open();
    }
    return promise;
  }

  /** Closes the socket for good: no reconnect; waiting requests fail with code `closed`. */
  close(): void {
    globalThis.removeEventListener?.("online", this.#onOnline);
    clearTimeout(this.#reconnectTimer);
    this.#stopTimers();
    const socket = this.#socket;
    this.#socket = null;
    this.#generation++;
    if (socket && socket.readyState <= 1) socket.close(1000, "Client closed");
    this.#failAll(new ChatError("closed", "The client was closed"));
    for (const [name, room] of this.#rooms) this.#clearTypers(name, room);
    this.#rooms.clear();
    this.#setState({ state: "closed", attempt: this.#attempt, reason: "closed" });
  }

  /** Rooms joined (or being joined). */
  rooms(): string[] {
    return [...this.#rooms.keys()];
  }

  /** Users present in a room, as of the last join and presence events. */
  presence(room: string): ChatUser[] {
    return [...(this.#rooms.get(room)?.presence.values() ?? [])];
  }

  /** Read cursors of a room (ours included), as of its last join and the `read` events since. */
  reads(room: string): ReadCursor[] {
    return [...(this.#rooms.get(room)?.reads.values() ?? [])];
  }

  /** Other users typing in a room now. */
  typers(room: string): ChatUser[] {
    return [...(this.#rooms.get(room)?.typers.values() ?? [])].map((t) => t.user);
  }

  /** Newest seq of a room delivered to the application. */
  lastSeq(room: string): number | undefined {
    return this.#rooms.get(room)?.lastSeq;
  }

  /**
   * Joins a room. `history: n` (1 to 200) first delivers the newest n messages (fewer when they
   * pass the server's page of about 1 MiB: see `has_more`) as `message` events, then everything
   * after them; `since: seq` delivers everything after that seq. With neither, only messages
   * committed from now on. Either way, messages follow on without gap or duplicate, and after a
   * reconnect the room is rejoined from the last seq delivered.
   */
  async join(
    room: string,
    options: { since?: number; history?: number } = {},
  ): Promise<JoinResult> {
    // No connection will come to answer it (close(), or a token the server refused).
    if (this.#state === "closed") {
      throw new ChatError("closed", "Not connected: call connect() first");
    }
    let messages: ChatMessage[] = [];
    let hasMore = false;
    let state = this.#rooms.get(room);
    if (!state) {
      let since = options.since;
      if (since === undefined && options.history) {
        // Sends to the room made meanwhile wait for its join instead of going out before it.
        const joining = this.#joining.get(room) ?? { joins: 0, left: false };
        joining.joins++;
        this.#joining.set(room, joining);
        let page: HistoryPage;
        try {
          page = await this.history(room, { limit: options.history });
        } catch (err) {
          // What waited for this join goes now, to be refused by the server.
          this.#doneJoining(room, true);
          throw err;
        }
        if (joining.left && !this.#rooms.has(room)) {
          this.#doneJoining(room, true);
          throw new ChatError("left", `Left room "${room}"`);
        }
        // No flush: the join below goes out first, and its own flush sends what waited.
        this.#doneJoining(room, false);
        messages = page.messages;
        hasMore = page.has_more;
        since = page.last_seq ?? 0;
        if (this.#rooms.has(room)) return await this.join(room, options);
      }
      state = this.#newRoom(since);
      this.#rooms.set(room, state);
      for (const m of messages) this.#emit("message", m);
    }
    const current = state;
    const joined = current.live && current.joinedFrame
      ? Promise.resolve(current.joinedFrame)
      : new Promise<Frame>((resolve, reject) => current.waiters.push({ resolve, reject }));
    if (current.joinSentOn !== this.#generation) this.#sendJoin(room, current);
    const frame = await joined;
    return {
      room,
      head: frame.head as number,
      presence: frame.presence as ChatUser[],
      messages,
      has_more: hasMore,
    };
  }

  /** Ends one join's history phase; `flush` sends what waited when no other join of it is left. */
  #doneJoining(room: string, flush: boolean): void {
    const joining = this.#joining.get(room)!;
    if (--joining.joins > 0) return;
    this.#joining.delete(room);
    if (flush) this.#flush();
  }

  /** Leaves a room: no more messages, presence or typing from it. */
  async leave(room: string): Promise<void> {
    const state = this.#rooms.get(room);
    if (!state) {
      // A join still reading its history page ends there instead of joining after the leave.
      const joining = this.#joining.get(room);
      if (joining) joining.left = true;
      return;
    }
    this.#clearTypers(room, state);
    this.#rooms.delete(room);
    for (const w of state.waiters) w.reject(new ChatError("left", `Left room "${room}"`));
    if (this.#ready()) await this.#request({ type: "leave", room }).catch(() => {});
  }

  /**
   * Sends a message and resolves with the server's ack once it is durable. Queued while
   * disconnected and resent with the same `client_id` after reconnecting, so it is stored once.
   */
  async send(room: string, options: SendOptions): Promise<ChatAck> {
    const limits = this.limits;
    const body = options.body ?? "";
    if (body.length > limits.maxBodyChars) {
      throw new ChatError(
        "body_too_long",
        `Message is too long: ${body.length} characters, the limit is ${limits.maxBodyChars}`,
      );
    }
    for (const file of options.files ?? []) this.#checkFileSize(file);
    const files = await Promise.all((options.files ?? []).map(encodeFile));
    const frame: Frame = {
      type: "send",
      room,
      body,
      client_id: options.clientId ?? newClientId(),
    };
    if (files.length > 0) frame.files = files;
    // The server closes a socket whose frame is too large, and the frame would go again after
    // every reconnect: it is refused here instead (counted with the largest ref it may get).
    const size = JSON.stringify({ ...frame, ref: Number.MAX_SAFE_INTEGER }).length;
    if (size > limits.maxFrameChars) throw tooLarge(size, limits.maxFrameChars);
    const ack = await this.#request(frame, { needsRoom: room, checkedAgainst: limits });
    const { type: _type, ref: _ref, ...rest } = ack;
    return rest as unknown as ChatAck;
  }

  /**
   * Sends one file: inline in a `send` frame up to `inlineMaxBytes`, else over the HTTP upload
   * route with progress events (in browsers; Deno reports the start and the end). When the
   * upload route is missing, refuses the token, or a proxy's body cap refuses the file (a 413 that
   * is not the server's), a file one `send` frame carries goes inline.
   */
  async sendFile(room: string, file: FileSource, options: SendFileOptions = {}): Promise<ChatAck> {
    this.#checkFileSize(file);
    const blob = toBlob(file);
    const clientId = options.clientId ?? newClientId();
    const inlineMax = this.#options.inlineMaxBytes ?? DEFAULTS.inlineMaxBytes;
    const via = options.via ?? (blob.size <= inlineMax ? "inline" : "upload");
    if (via === "upload") {
      try {
        return await this.#uploadRetrying(room, file, { ...options, clientId });
      } catch (err) {
        const status = err instanceof ChatError ? err.status : undefined;
        // A server without the route, or one that keeps it for admins, still takes the file
        // inline; a room the user may not post in refuses the inline send just the same. A
        // proxy's body cap (nginx's client_max_body_size, 1 MiB by default) does not apply to
        // socket frames; the server's own 413 says the file is too large either way.
        const routeUnusable = status === 401 || status === 403 || status === 404 ||
          status === 405 || status === 501 ||
          (status === 413 && !SERVER_REFUSALS.has(err as Error));
        const limits = this.limits;
        const frameChars = inlineFrameChars(
          room,
          fileName(file),
          blob.size,
          options.body,
          clientId,
        );
        if (
          !routeUnusable || blob.size > limits.maxFileBytes || frameChars > limits.maxFrameChars
        ) {
          throw err;
        }
      }
    }
    return await this.#sendInline(room, file, blob, clientId, options);
  }

  /** Refuses a file larger than the server takes, before a byte of it is sent. */
  #checkFileSize(file: FileSource): void {
    const size = toBlob(file).size;
    const max = this.limits.maxFileBytes;
    if (size > max) {
      throw new ChatError(
        "file_too_large",
        `File "${fileName(file)}" is too large: ${formatBytes(size)}, the limit is ${
          formatBytes(max)
        }`,
      );
    }
  }

  /**
   * {@link upload}, queued as sends are: it waits for the connection, and an upload the network
   * or a server going down cut short goes again (same client id) once the client is connected
   * again, up to five times.
   */
  async #uploadRetrying(
    room: string,
    file: FileSource,
    options: SendFileOptions,
  ): Promise<ChatAck> {
    for (let attempt = 1;; attempt++) {
      await this.#whenOpen();
      try {
        return await this.upload(room, file, options);
      } catch (err) {
        const status = err instanceof ChatError ? err.status : undefined;
        const passing = err instanceof ChatError &&
          (err.code === "network" || status === 429 || status === 502 || status === 503 ||
            status === 504);
        if (!passing || attempt >= 5 || this.#state === "closed") throw err;
        await new Promise((r) => setTimeout(r, this.#retryMs * attempt));
      }
    }
  }

  /** Resolves once the socket is open; rejects if the client is closed (or was never connected). */
  #whenOpen(): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    const closed = () => new ChatError("closed", "Not connected: call connect() first");
    if (this.#state === "closed" || this.#state === "idle") return Promise.reject(closed());
    return new Promise((resolve, reject) => {
      const off = this.on("state", (s) => {
        if (s.state === "open") {
          off();
          resolve();
        } else if (s.state === "closed") {
          off();
          reject(closed());
        }
      });
    });
  }

  /**
   * Uploads one file over `POST /api/rooms/{kind}/{id}/attachments` (multipart, field `file`,
   * optional `body` and `client_id`) and resolves with the stored message's ack; the message
   * itself also arrives as a `message` event.
   */
  async upload(room: string, file: FileSource, options: SendFileOptions = {}): Promise<ChatAck> {
    this.#checkFileSize(file);
    const blob = toBlob(file);
    const name = fileName(file);
    const at = room.indexOf(":");
    const url = `${this.httpUrl}/api/rooms/${encodeURIComponent(room.slice(0, at))}/${
      encodeURIComponent(room.slice(at + 1))
    }/attachments`;
    const form = new FormData();
    form.append("file", blob, name);
    if (options.body) form.append("body", options.body);
    const clientId = options.clientId ?? newClientId();
    form.append("client_id", clientId);
    const token = await this.#token();
    let reported = -1;
    const progress = (loaded: number) => {
      if (loaded === reported) return;
      reported = loaded;
      options.onProgress?.({ loaded, total: blob.size, via: "upload" });
    };
    const { status, text } = await postWithProgress(
      url,
      form,
      token,
      (share) => progress(Math.round(share * blob.size)),
    );
    let json: Frame = {};
    try {
      json = JSON.parse(text);
    } catch {
      // A non-JSON answer (a proxy's error page) is reported by status below.
    }
    if (status < 200 || status >= 300) {
      const message = typeof json.message === "string"
        ? json.message
        : typeof json.error === "string"
        ? json.error
        : `Upload failed with HTTP ${status}`;
      const code = typeof json.code === "string" ? json.code : "http";
      const err = new ChatError(code, message, status);
      // The server's own error body, `{status, message, code?}`; a proxy answers in its own words.
      if (typeof json.status === "number" && typeof json.message === "string") {
        SERVER_REFUSALS.add(err);
      }
      throw err;
    }
    progress(blob.size);
    const message =
      (json.message && typeof json.message === "object" ? json.message : json) as Frame;
    return {
      room: (message.room as string) ?? room,
      client_id: (message.client_id as string | null) ?? clientId,
      id: message.id as string,
      seq: message.seq as number,
      created_at: message.created_at as string,
      // The route answers 201 for a new message and 200 with the original for a repeated client_id.
      duplicate: json.duplicate === true || status === 200,
    };
  }

  /**
   * Says we are typing (default) or stopped. Call it on every keystroke: it sends at most one
   * frame per `typingRenewMs`, renews while typing goes on, and stops by itself when it pauses.
   */
  typing(room: string, isTyping = true): void {
    const state = this.#rooms.get(room);
    if (!state) return;
    clearTimeout(state.typingIdle);
    const now = performance.now();
    if (isTyping) {
      const renew = this.#options.typingRenewMs ?? DEFAULTS.typingRenewMs;
      if (
        now - state.typingSentAt >= renew && this.#write({ type: "typing", room, is_typing: true })
      ) {
        state.typingSentAt = now;
      }
      state.typingIdle = setTimeout(
        () => this.typing(room, false),
        this.#options.typingIdleMs ?? DEFAULTS.typingIdleMs,
      );
    } else if (state.typingSentAt !== -Infinity) {
      state.typingSentAt = -Infinity;
      this.#write({ type: "typing", room, is_typing: false });
    }
  }

  /** Moves our read cursor forward (to the room's head without `seq`); resolves with it. */
  async read(room: string, seq?: number): Promise<number> {
    const reply = await this.#request({ type: "read", room, seq }, { needsRoom: room });
    // The server tells our other devices, not this one: `reads(room)` must show it here too.
    const state = this.#rooms.get(room);
    if (state && this.#user) moveCursor(state.reads, this.#user.id, reply.seq as number);
    return reply.seq as number;
  }

  /** Reads a page of history, oldest first: the newest, `before` a seq, or `after` one. */
  async history(
    room: string,
    options: { before?: number; after?: number; limit?: number } = {},
  ): Promise<HistoryPage> {
    const reply = await this.#request({ type: "history", room, ...options });
    return {
      messages: reply.messages as ChatMessage[],
      has_more: reply.has_more as boolean,
      first_seq: reply.first_seq as number | null,
      last_seq: reply.last_seq as number | null,
    };
  }

  // ---- connection ----

  async #open(): Promise<void> {
    const generation = ++this.#generation;
    // A reconnect was announced when it was scheduled, with its delay.
    if (this.#attempt === 0) this.#setState({ state: "connecting", attempt: 0 });
    let token: string;
    try {
      token = await this.#token();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#scheduleReconnect(undefined, err);
      return;
    }
    if (generation !== this.#generation) return;
    const Ctor = this.#options.WebSocket ?? globalThis.WebSocket;
    const url = new URL(this.#url);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (url.pathname === "/") url.pathname = "/ws";
    let socket: WebSocket;
    try {
      // The token rides in a subprotocol so it stays out of URLs and access logs.
      socket = new Ctor(url.toString(), [`bearer.${token}`]);
    } catch (err) {
      this.#scheduleReconnect(undefined, err);
      return;
    }
    this.#socket = socket;
    this.#written = 0;
    this.#heardAt = -Infinity;
    this.#graceUntil = 0;
    this.#graceRef = undefined;
    this.#armDeadline(socket);
    socket.onmessage = (e) => {
      if (this.#socket !== socket) return;
      this.#heardAt = performance.now();
      let frame: Frame;
      try {
        frame = JSON.parse(typeof e.data === "string" ? e.data : "");
      } catch {
        return;
      }
      this.#handle(frame);
    };
    socket.onclose = (e) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#disconnected(e.code);
    };
    socket.onerror = () => {
      // A close event always follows; reconnecting happens there.
    };
  }

  #disconnected(code: number): void {
    this.#stopTimers();
    this.#generation++;
    this.#joinRefs.clear();
    this.#joinQueue.clear();
    for (const [name, room] of this.#rooms) {
      room.live = false;
      room.typingSentAt = -Infinity;
      this.#clearTypers(name, room);
    }
    if (code === UNAUTHORIZED) {
      // A token function may have a fresh token; a fixed token will not get better.
      if (typeof this.#options.token === "function" && !this.#retriedToken) {
        this.#retriedToken = true;
        this.#scheduleReconnect(code);
        return;
      }
      const err = new ChatError("unauthorized", "The server refused the token");
      this.#failAll(err);
      this.#setState({ state: "closed", attempt: this.#attempt, code, reason: "unauthorized" });
      return;
    }
    this.#scheduleReconnect(code);
  }

  #scheduleReconnect(code?: number, err?: unknown): void {
    if (err) console.warn("chat client: connection attempt failed:", err);
    const r = { ...DEFAULTS, ...this.#options.reconnect };
    this.#attempt++;
    let delay = Math.min(r.maxDelayMs, r.minDelayMs * r.factor ** (this.#attempt - 1));
    if (code === RATE_LIMITED) delay = Math.max(delay, 5_000);
    delay = Math.round(delay * (1 - r.jitter * Math.random()));
    this.#setState({ state: "reconnecting", attempt: this.#attempt, delay_ms: delay, code });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }

  #retryNow(): void {
    clearTimeout(this.#reconnectTimer);
    if (this.#socket) return;
    this.#open();
  }

  #armDeadline(socket: WebSocket, since = performance.now()): void {
    clearTimeout(this.#deadline);
    const timeout = this.#options.timeoutMs ?? DEFAULTS.timeoutMs;
    // What would be left unsent now if nothing drained from here on: below it at the deadline,
    // the connection is moving (a large frame on a slow uplink holds the pong up behind it).
    const outstanding = socket.bufferedAmount - this.#written;
    this.#deadline = setTimeout(() => {
      if (this.#socket !== socket) return;
      const buffered = socket.bufferedAmount;
      const draining = buffered > 0 && buffered < outstanding + this.#written;
      // Frames still arriving while a join is answered (its replay, which the pong waits
      // behind) say it is alive too, for a while: they say nothing of the uplink otherwise.
      const hearing = this.#joinRefs.size > 0 && performance.now() - this.#heardAt < timeout &&
        performance.now() - since < MAX_HEARD_TIMEOUTS * timeout;
      const graced = performance.now() < this.#graceUntil;
      if (draining || hearing || graced) {
        // Only hearing keeps its first time: frames alone stand for a pong a while, no longer.
        this.#armDeadline(socket, draining || graced ? undefined : since);
        return;
      }
      // No welcome or pong in time: the connection is dead even if the socket does not know it.
      this.#socket = null;
      try {
        socket.close(4000, "Timed out");
      } catch {
        // Closing a socket that never opened can throw; it is abandoned either way.
      }
      this.#disconnected(1006);
    }, timeout);
  }

  #stopTimers(): void {
    clearTimeout(this.#deadline);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    this.#deadline = undefined;
    this.#heartbeatTimer = undefined;
  }

  #welcomed(user: ChatUser): void {
    clearTimeout(this.#deadline);
    this.#deadline = undefined;
    this.#user = user;
    this.#attempt = 0;
    this.#retriedToken = false;
    this.#setState({ state: "open", attempt: 0 });
    this.#emit("welcome", user);
    let heartbeat = this.#options.heartbeatMs ?? DEFAULTS.heartbeatMs;
    // Often enough that the server never pings this socket (see docs/protocol.md, Heartbeat).
    if (heartbeat > 0 && this.#serverHeartbeatMs !== undefined) {
      heartbeat = Math.min(heartbeat, Math.max(100, Math.floor(this.#serverHeartbeatMs / 3)));
    }
    if (heartbeat > 0) {
      const socket = this.#socket;
      this.#heartbeatTimer = setInterval(() => {
        if (!socket || this.#socket !== socket) return;
        this.#write({ type: "ping" });
        if (this.#deadline === undefined) this.#armDeadline(socket);
      }, heartbeat);
    }
    // Rooms first, then every unanswered request in its original order: the server handles a
    // socket's frames one after another, so each send finds its room joined.
    const rate = this.limits.framesPerSecond;
    this.#bucket = { tokens: burstOf(rate), at: performance.now() };
    for (const [room, state] of this.#rooms) this.#joinQueue.set(room, state);
    this.#flush();
    this.#settleConnect(user);
  }

  #settleConnect(user: ChatUser): void {
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) w.resolve(user);
  }

  #ready(): boolean {
    return this.#state === "open" && this.#socket !== null;
  }

  async #token(): Promise<string> {
    const t = this.#options.token;
    return typeof t === "function" ? await t() : t;
  }

  #setState(event: StateEvent): void {
    this.#state = event.state;
    this.#emit("state", event);
  }

  // ---- requests ----

  #request(
    frame: Frame,
    options: { needsRoom?: string; checkedAgainst?: ServerLimits } = {},
  ): Promise<Frame> {
    if (this.#state === "closed" || this.#state === "idle") {
      return Promise.reject(new ChatError("closed", "Not connected: call connect() first"));
    }
    const ref = this.#nextRef++;
    return new Promise<Frame>((resolve, reject) => {
      const pending: Pending = {
        frame: { ...frame, ref },
        resolve,
        reject,
        needsRoom: options.needsRoom,
        checkedAgainst: options.checkedAgainst,
        sentOn: -1,
        retries: 0,
        madeAt: Date.now(),
      };
      this.#pending.set(ref, pending);
      this.#flush();
    });
  }

  /**
   * Writes the joins due, then every request not yet written on this socket whose room is joined
   * (or being joined), as fast as the server's rate takes them.
   */
  #flush(): void {
    if (!this.#ready()) return;
    const now = performance.now();
    // The server said to slow down: joins wait too (they would be refused the same way).
    if (now < this.#holdUntil) return this.#flushAt(this.#holdUntil);
    this.#writeJoins(now);
    const expiry = this.#options.sendExpiryMs ?? DEFAULTS.sendExpiryMs;
    const limits = this.limits;
    for (const [ref, pending] of this.#pending) {
      if (pending.sentOn === this.#generation) continue;
      // Checked against the limits it was made under; a server since come back with lower ones
      // would close the socket for it (1009) after every reconnect.
      if (pending.frame.type === "send" && pending.checkedAgainst !== limits) {
        pending.checkedAgainst = limits;
        const size = JSON.stringify(pending.frame).length;
        if (size > limits.maxFrameChars) {
          this.#pending.delete(ref);
          // One written before may have been stored, its ack lost with the connection: sent
          // again as told, it would be stored twice.
          pending.reject(
            pending.written
              ? new ChatError(
                "send_unconfirmed",
                `Sent before the connection dropped and now over the server's frame limit ` +
                  `(${size} characters, the limit is ${limits.maxFrameChars}): it may have ` +
                  `been stored; look for client_id ${pending.frame.client_id} in the history`,
              )
              : tooLarge(size, limits.maxFrameChars),
          );
          continue;
        }
      }
      if (pending.frame.type === "send" && Date.now() - pending.madeAt > expiry) {
        this.#pending.delete(ref);
        pending.reject(
          new ChatError(
            "send_expired",
            "Not acknowledged in time to be sent again safely: it may or may not have been stored",
          ),
        );
        continue;
      }
      const room = pending.needsRoom ? this.#rooms.get(pending.needsRoom) : undefined;
      if (room && room.joinSentOn !== this.#generation) continue;
      if (!room && pending.needsRoom && this.#joining.has(pending.needsRoom)) continue;
      // The rest wait for the bucket, in their order (a later one never overtakes).
      if (!this.#takeToken(now)) return;
      if (this.#write(pending.frame)) {
        pending.sentOn = this.#generation;
        pending.written = true;
      }
    }
  }

  /** Takes one frame from the bucket, or arranges a flush for when it holds one again. */
  #takeToken(now: number): boolean {
    const rate = this.limits.framesPerSecond * RATE_SHARE;
    const b = this.#bucket;
    b.tokens = Math.min(
      burstOf(this.limits.framesPerSecond),
      b.tokens + (now - b.at) / 1000 * rate,
    );
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens--;
      return true;
    }
    this.#flushAt(now + Math.ceil((1 - b.tokens) / rate * 1000));
    return false;
  }

  /** Writes the queued joins that are due, up to the server's most rooms per frame in each. */
  #writeJoins(now: number): void {
    let later = Infinity;
    const due: [string, RoomState][] = [];
    for (const [room, state] of this.#joinQueue) {
      if (this.#rooms.get(room) !== state || state.joinSentOn === this.#generation) {
        this.#joinQueue.delete(room);
      } else if (state.joinAfter > now) later = Math.min(later, state.joinAfter);
      else due.push([room, state]);
    }
    if (later < Infinity) this.#flushAt(later);
    for (let i = 0; i < due.length; i += MAX_ROOMS_PER_JOIN) {
      if (!this.#takeToken(now)) return;
      const chunk = due.slice(i, i + MAX_ROOMS_PER_JOIN);
      const ref = this.#nextRef++;
      const entries = chunk.map(([room, state]) => {
        const entry: Frame = { room };
        if (state.lastSeq !== undefined) {
          entry.since = state.lastSeq;
          // What is held belongs to this life of the room: a deletion since must not go unnoticed.
          if (state.epoch !== undefined) entry.epoch = state.epoch;
        }
        return entry;
      });
      const frame: Frame = entries.length === 1
        ? { type: "join", ...entries[0], ref }
        : { type: "join", rooms: entries, ref };
      if (!this.#write(frame)) return;
      this.#joinRefs.set(ref, new Set(chunk.map(([room]) => room)));
      for (const [room, state] of chunk) {
        state.joinSentOn = this.#generation;
        this.#joinQueue.delete(room);
      }
    }
  }

  /**
   * Flushes again at `time` (performance.now()), unless a flush is already due by then: the earliest
   * wins (a token a moment away must not wait for a failed join's retry), and each flush arranges
   * the next one it needs.
   */
  #flushAt(time: number): void {
    if (this.#flushTimer !== undefined && this.#flushTimerAt <= time) return;
    clearTimeout(this.#flushTimer);
    this.#flushTimerAt = time;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      this.#flush();
    }, Math.max(0, time - performance.now()));
  }

  #write(frame: Frame): boolean {
    const socket = this.#socket;
    if (!socket || socket.readyState !== 1 || this.#state !== "open") return false;
    const text = JSON.stringify(frame);
    socket.send(text);
    this.#written += text.length;
    // The network stack takes a large frame at once and sends it at the uplink's pace, which
    // the socket cannot show: the frame gets the time the slowest uplink would need.
    if (text.length > LARGE_FRAME_CHARS) {
      const now = performance.now();
      this.#graceUntil = Math.min(
        Math.max(this.#graceUntil, now) + text.length / SLOWEST_UPLINK_BYTES_PER_S * 1000,
        now + MAX_GRACE_MS,
      );
      this.#graceRef = frame.ref;
    }
    return true;
  }

  /**
   * Queues the room's join; the joins asked for in one turn (a `Promise.all` of joins) go out
   * together, in one frame.
   */
  #sendJoin(room: string, state: RoomState): void {
    this.#joinQueue.set(room, state);
    if (this.#joinFlushQueued) return;
    this.#joinFlushQueued = true;
    queueMicrotask(() => {
      this.#joinFlushQueued = false;
      this.#flush();
    });
  }

  #failAll(err: ChatError): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    this.#joinRefs.clear();
    for (const p of pending) p.reject(err);
    for (const room of this.#rooms.values()) {
      for (const w of room.waiters) w.reject(err);
      room.waiters = [];
    }
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  // ---- incoming frames ----

  #handle(frame: Frame): void {
    const ref = typeof frame.ref === "number" ? frame.ref : undefined;
    // The answer to the last large frame: it arrived, and so did everything before it.
    if (ref !== undefined && ref === this.#graceRef) this.#graceUntil = 0;
    switch (frame.type) {
      case "welcome":
        this.#limits = parseLimits(frame.limits) ?? this.#limits;
        this.#serverHeartbeatMs = typeof frame.heartbeat_ms === "number" && frame.heartbeat_ms > 0
          ? frame.heartbeat_ms
          : undefined;
        this.#welcomed(frame.user as ChatUser);
        return;
      case "pong":
        clearTimeout(this.#deadline);
        this.#deadline = undefined;
        return;
      case "message":
        this.#enqueue(
          frame.room as string,
          (room) => this.#deliver(room, frame as unknown as ChatMessage),
        );
        return;
      case "resync":
        this.#enqueue(frame.room as string, (room) => {
          const firstSeq = frame.first_seq as number;
          // More had come than one join replays: nothing is lost, the older ones are read back
          // from history before the replay goes on.
          if (frame.reason === "replay_limited") {
            return this.#fillGap(room, { room: frame.room, seq: firstSeq } as ChatMessage);
          }
          // Everything from first_seq follows; what the application holds must be rebuilt.
          room.lastSeq = firstSeq - 1;
          this.#emit("resync", frame as unknown as ResyncEvent);
        });
        return;
      case "joined":
        if (ref !== undefined && this.#joinRefs.has(ref)) {
          this.#answeredJoin(ref, frame.room);
          this.#joined(frame);
          return;
        }
        break;
      case "presence":
        this.#presence(frame);
        return;
      case "typing":
        this.#typingEvent(frame);
        return;
      case "read": {
        const user = frame.user as ChatUser | undefined;
        if (!user) return;
        const state = this.#rooms.get(frame.room as string);
        if (state) moveCursor(state.reads, user.id, frame.seq as number);
        this.#emit("read", frame as unknown as ReadEvent);
        return;
      }
      case "removed": {
        const state = this.#rooms.get(frame.room as string);
        if (state) {
          const err = new ChatError(String(frame.reason), `Removed from "${frame.room}"`);
          this.#dropRoom(frame.room as string, state, err);
        }
        this.#emit("removed", frame as unknown as RemovedEvent);
        return;
      }
      case "error":
        if (ref !== undefined && this.#joinRefs.has(ref)) {
          const rooms = this.#joinRefs.get(ref)!;
          // Replies come in the frame's order: an error naming no room (one whose name the server
          // could not read) answers the first entry not yet answered, unless the frame was
          // refused whole for its rate.
          const failed = typeof frame.room === "string"
            ? (rooms.has(frame.room) ? [frame.room] : [])
            : frame.code === "rate_limited"
            ? [...rooms]
            : [...rooms].slice(0, 1);
          for (const room of failed) this.#answeredJoin(ref, room);
          for (const room of failed) this.#joinFailed(room, frame);
          return;
        }
        if (ref !== undefined && this.#pending.has(ref)) {
          this.#requestFailed(ref, frame);
          return;
        }
        this.#emit("error", new ChatError(String(frame.code), String(frame.message)));
        return;
    }
    if (ref !== undefined) {
      const pending = this.#pending.get(ref);
      if (pending) {
        this.#pending.delete(ref);
        pending.resolve(frame);
      }
    }
  }

  #requestFailed(ref: number, frame: Frame): void {
    const pending = this.#pending.get(ref)!;
    const code = String(frame.code);
    // Too fast, or the server failed: the same frame (and client_id) goes again a little
    // later, and every request waits with it, so that none overtakes it (the requests after
    // this one would be refused too).
    const again = code === "rate_limited"
      ? pending.retries < 20
      : code === "internal" && pending.retries < 5;
    if (again) {
      pending.retries++;
      pending.sentOn = -1;
      this.#holdUntil = Math.max(
        this.#holdUntil,
        performance.now() + this.#retryMs * Math.min(pending.retries, 4),
      );
      this.#flushAt(this.#holdUntil);
      return;
    }
    // The room's join failed in front of this request and is being retried: wait for it.
    const room = pending.needsRoom ? this.#rooms.get(pending.needsRoom) : undefined;
    if (
      code === "not_found" && room && !room.live && (pending.retries < 5 || room.joinRetries > 0)
    ) {
      // A join the server keeps failing is retried for as long as it takes: so is this.
      if (room.joinRetries === 0) pending.retries++;
      pending.sentOn = -1;
      return;
    }
    this.#pending.delete(ref);
    pending.reject(
      code === "not_found" && pending.dropped
        ? pending.dropped
        : new ChatError(code, String(frame.message)),
    );
  }

  #joined(frame: Frame): void {
    const name = frame.room as string;
    const state = this.#rooms.get(name);
    if (!state) return;
    state.live = true;
    state.joinRetries = 0;
    state.joinedFrame = frame;
    if (typeof frame.epoch === "number") state.epoch = frame.epoch;
    state.presence = new Map((frame.presence as ChatUser[]).map((u) => [String(u.id), u]));
    this.#emit("presence", { room: name, action: "sync", users: this.presence(name) });
    if (Array.isArray(frame.reads)) {
      // The whole list, read with the socket in the room: what it leaves out is gone (a purge).
      state.reads = new Map();
      for (const r of frame.reads as { user_id: string | number; seq: number }[]) {
        moveCursor(state.reads, r.user_id, r.seq);
      }
      this.#emit("reads", { room: name, reads: this.reads(name) });
    }
    // Through the chain: replayed messages queued before this frame are delivered first.
    this.#enqueue(name, (room) => {
      if (room.lastSeq === undefined) room.lastSeq = frame.head as number;
      const waiters = room.waiters;
      room.waiters = [];
      for (const w of waiters) w.resolve(frame);
    });
    // Requests the server refused for arriving before the join (`not_found`) go again now.
    this.#flush();
  }

  #joinFailed(name: string, frame: Frame): void {
    const state = this.#rooms.get(name);
    if (!state) return;
    const code = String(frame.code);
    if (code === "internal" || code === "rate_limited") {
      // The server failed, not the request: join again a little later on this socket, for as
      // long as it takes (the room must not be dropped for a passing failure). The application
      // hears of it once the failures go on.
      state.joinRetries++;
      state.joinSentOn = -1;
      if (state.joinRetries === 5) this.#emit("error", new ChatError(code, String(frame.message)));
      // Queued rather than timed one by one: rooms refused together go again together.
      state.joinAfter = performance.now() + this.#retryMs * Math.min(state.joinRetries, 10);
      this.#joinQueue.set(name, state);
      this.#flushAt(state.joinAfter);
      return;
    }
    const err = new ChatError(code, String(frame.message));
    // Told through the join's own promise when one waits; an automatic rejoin has only events.
    const waited = state.waiters.length > 0;
    // A refused join will be refused again after a reconnect: forget the room.
    this.#dropRoom(name, state, err);
    if (code === "room_deleted") this.#emit("removed", { room: name, reason: code });
    else if (!waited) this.#emit("error", err);
  }

  /** Notes that the join frame `ref` has its reply for `room`. */
  #answeredJoin(ref: number, room: unknown): void {
    const rooms = this.#joinRefs.get(ref)!;
    rooms.delete(room as string);
    if (rooms.size === 0) this.#joinRefs.delete(ref);
  }

  /**
   * Forgets a room the client may no longer be in: its join waiters and the requests waiting
   * for it (sends queued while disconnected, say) fail with `err` rather than go out.
   */
  #dropRoom(name: string, state: RoomState, err: ChatError): void {
    this.#clearTypers(name, state);
    this.#rooms.delete(name);
    for (const w of state.waiters) w.reject(err);
    for (const [ref, pending] of this.#pending) {
      if (pending.needsRoom !== name) continue;
      // One already written gets the server's answer (it may have been stored before).
      if (pending.sentOn === this.#generation) {
        pending.dropped = err;
        continue;
      }
      this.#pending.delete(ref);
      pending.reject(err);
    }
  }

  #enqueue(name: string, task: (room: RoomState) => void | Promise<void>): void {
    const room = this.#rooms.get(name);
    if (!room) return;
    room.chain = room.chain.then(() => {
      if (this.#rooms.get(name) === room) return task(room);
    }).catch((err) => console.error("chat client: delivery failed:", err));
  }

  async #deliver(room: RoomState, message: ChatMessage): Promise<void> {
    if (room.lastSeq !== undefined) {
      if (message.seq <= room.lastSeq) return;
      if (message.seq > room.lastSeq + 1) await this.#fillGap(room, message);
      // Left (or left and joined again) while the gap was read: this room is no longer followed.
      if (this.#rooms.get(message.room) !== room) return;
    }
    if (room.lastSeq !== undefined && message.seq <= room.lastSeq) return;
    room.lastSeq = message.seq;
    this.#emit("message", message);
  }

  /**
   * Runs one gap's history read after the others': gaps in many rooms at once (a rejoin past the
   * server's replay limit) would otherwise send a burst of requests the rate limit refuses.
   */
  #fillTurn<T>(read: () => Promise<T>): Promise<T> {
    const run = this.#fills.then(read, read);
    this.#fills = run.catch(() => {});
    return run;
  }

  /** The server promises no gaps; should one appear anyway, read it back before going on. */
  async #fillGap(room: RoomState, upTo: ChatMessage): Promise<void> {
    while (room.lastSeq !== undefined && room.lastSeq + 1 < upTo.seq) {
      let page: HistoryPage;
      try {
        const after = room.lastSeq;
        page = await this.#fillTurn(() =>
          this.history(upTo.room, { after, limit: Math.min(200, upTo.seq - after - 1) })
        );
      } catch {
        // Left, or the client closed, meanwhile: nothing is owed to a room no longer followed.
        if (this.#rooms.get(upTo.room) !== room) return;
        // Its retries spent: said, so that the application knows it holds a hole (which its own
        // `history` may read later) rather than missing it quietly.
        room.lastSeq = upTo.seq - 1;
        this.#emit("resync", {
          room: upTo.room,
          reason: "history_unavailable",
          first_seq: upTo.seq,
          head: upTo.seq,
        });
        return;
      }
      if (this.#rooms.get(upTo.room) !== room) return;
      const older = page.messages.filter((m) => m.seq < upTo.seq && m.seq > room.lastSeq!);
      // A restored backup's rooms skip a million seqs (README "Backup and restore"): a skip after
      // a message still stored is that jump, as retention deletes the oldest first. Asked only
      // when the page starts past the next seq.
      const first = older[0]?.seq ?? upTo.seq;
      let jump = first > room.lastSeq + 1 && room.lastSeq > 0 &&
        await this.#stored(upTo.room, room.lastSeq);
      if (this.#rooms.get(upTo.room) !== room) return;
      // History no longer has some (retention deleted them): said as the server says it, so
      // that the application knows it holds a hole rather than missing it quietly.
      const skip = (next: number) => {
        if (next <= room.lastSeq! + 1) return;
        room.lastSeq = next - 1;
        if (jump) return;
        this.#emit("resync", {
          room: upTo.room,
          reason: "history_truncated",
          first_seq: next,
          head: upTo.seq,
        });
      };
      for (const m of older) {
        skip(m.seq);
        room.lastSeq = m.seq;
        // Within one read, a skip after a message is the jump too.
        jump = true;
        this.#emit("message", m);
      }
      if (older.length === 0) skip(upTo.seq);
    }
  }

  /** Whether `room`'s history still has the message at `seq` (false when it cannot be read). */
  async #stored(room: string, seq: number): Promise<boolean> {
    try {
      const page = await this.#fillTurn(() => this.history(room, { after: seq - 1, limit: 1 }));
      return page.messages[0]?.seq === seq;
    } catch {
      return false;
    }
  }

  #presence(frame: Frame): void {
    const name = frame.room as string;
    const state = this.#rooms.get(name);
    if (!state || !frame.user) return;
    const user = frame.user as ChatUser;
    const action = frame.action === "leave" ? "leave" : "join";
    if (action === "join") state.presence.set(String(user.id), user);
    else state.presence.delete(String(user.id));
    this.#emit("presence", { room: name, action, user, users: this.presence(name) });
  }

  #typingEvent(frame: Frame): void {
    const name = frame.room as string;
    const state = this.#rooms.get(name);
    if (!state || !frame.user) return;
    const user = frame.user as ChatUser;
    const key = String(user.id);
    clearTimeout(state.typers.get(key)?.timer);
    const isTyping = frame.is_typing === true;
    if (isTyping) {
      const timer = setTimeout(() => {
        state.typers.delete(key);
        this.#emit("typing", { room: name, user, is_typing: false, typers: this.typers(name) });
      }, TYPING_EXPIRY_MS);
      state.typers.set(key, { user, timer });
    } else {
      state.typers.delete(key);
    }
    this.#emit("typing", { room: name, user, is_typing: isTyping, typers: this.typers(name) });
  }

  /** Others' typing states end with the socket that brought them: nobody renews them now. */
  #clearTypers(name: string, room: RoomState): void {
    for (const t of room.typers.values()) clearTimeout(t.timer);
    clearTimeout(room.typingIdle);
    const had = [...room.typers.values()];
    room.typers.clear();
    for (const t of had) {
      this.#emit("typing", { room: name, user: t.user, is_typing: false, typers: [] });
    }
  }

  #newRoom(since?: number): RoomState {
    return {
      lastSeq: since,
      joinSentOn: -1,
      joinAfter: 0,
      joinRetries: 0,
      live: false,
      presence: new Map(),
      reads: new Map(),
      typers: new Map(),
      chain: Promise.resolve(),
      waiters: [],
      typingSentAt: -Infinity,
    };
  }

  #emit<K extends keyof ChatEventMap>(type: K, event: ChatEventMap[K]): void {
    for (const listener of this.#listeners.get(type) ?? []) {
      try {
        (listener as Listener<ChatEventMap[K]>)(event);
      } catch (err) {
        console.error(`chat client: ${type} listener failed:`, err);
      }
    }
  }

  async #sendInline(
    room: string,
    file: FileSource,
    blob: Blob,
    clientId: string,
    options: SendFileOptions,
  ): Promise<ChatAck> {
    const total = blob.size;
    const report = (loaded: number) => options.onProgress?.({ loaded, total, via: "inline" });
    report(0);
    // The socket's outgoing buffer drains as the frame goes out: that is the inline progress.
    const socket = this.#socket;
    const before = socket?.bufferedAmount ?? 0;
    let seen = false;
    const poll = setInterval(() => {
      if (!socket || this.#socket !== socket) return;
      // Base64 makes the frame 4/3 of the file; until it is queued there is nothing to report.
      const left = Math.max(0, socket.bufferedAmount - before) * 3 / 4;
      if (left > 0) seen = true;
      if (seen) report(Math.max(0, Math.min(total, Math.round(total - left))));
    }, 100);
    try {
      const ack = await this.send(room, { body: options.body, files: [file], clientId });
      report(total);
      return ack;
    } finally {
      clearInterval(poll);
    }
  }
}

function fileName(file: FileSource): string {
  if (file instanceof Blob) return (file as Blob & { name?: string }).name || "file";
  return file.name;
}

/** Moves a user's cursor forward (cursors never go back; frames may come in any order). */
function moveCursor(reads: Map<string, ReadCursor>, userId: string | number, seq: number): void {
  if (typeof seq !== "number") return;
  const known = reads.get(String(userId));
  if (!known || known.seq < seq) reads.set(String(userId), { userId, seq });
}

/** Upload errors whose body was the server's own (`{status, message, code?}`), not a proxy's. */
const SERVER_REFUSALS = new WeakSet<Error>();

/**
 * The characters of the `send` frame that carries one file inline, counted as `send` counts them,
 * without encoding the file: its base64 needs no escaping in JSON.
 */
function inlineFrameChars(
  room: string,
  name: string,
  size: number,
  body: string | undefined,
  clientId: string,
): number {
  const frame = {
    type: "send",
    room,
    body: body ?? "",
    client_id: clientId,
    files: [{ name, data: "" }],
    ref: Number.MAX_SAFE_INTEGER,
  };
  return JSON.stringify(frame).length + Math.ceil(size / 3) * 4;
}

/** The limits a `welcome` frame carries, or undefined when it has none (or they are malformed). */
/** The refusal of a `send` frame longer than the server takes. */
function tooLarge(size: number, max: number): ChatError {
  return new ChatError(
    "frame_too_large",
    `Message is too large: ${size} characters, the limit is ${max}; ` +
      "send large files one per message (sendFile)",
  );
}

/** Frames the client writes at once on a new socket: the server's burst, less a few for pings. */
const burstOf = (framesPerSecond: number) => Math.max(1, 2 * framesPerSecond - 4);

function parseLimits(value: unknown): ServerLimits | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const limits = {
    maxBodyChars: v.max_body_chars,
    maxFiles: v.max_files,
    maxFileBytes: v.max_file_bytes,
    maxFrameChars: v.max_frame_chars,
    // Servers before it said nothing of their rate: theirs was the default.
    framesPerSecond: v.frames_per_second ?? DEFAULTS.framesPerSecond,
  };
  const valid = Object.values(limits).every((n) => typeof n === "number" && n > 0);
  return valid ? limits as ServerLimits : undefined;
}

function toBlob(file: FileSource): Blob {
  if (file instanceof Blob) return file;
  return file.data instanceof Blob
    ? file.data
    : new Blob([file.data as Uint8Array<ArrayBuffer>], { type: file.type ?? "" });
}

async function encodeFile(file: FileSource): Promise<{ name: string; data: string }> {
  const name = fileName(file);
  const bytes = !(file instanceof Blob) && file.data instanceof Uint8Array
    ? file.data
    : new Uint8Array(await toBlob(file).arrayBuffer());
  return { name, data: bytesToBase64(bytes) };
}

// The few members of XMLHttpRequest used here; Deno has no XHR and its types do not declare one.
interface Xhr {
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body: FormData): void;
  upload: {
    onprogress: ((e: { loaded: number; total: number; lengthComputable: boolean }) => void) | null;
  };
  onload: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
  status: number;
  responseText: string;
}

/**
 * POSTs a form; XHR in browsers for upload progress, fetch elsewhere (progress at start and end).
 * `progress` gets the share of the request sent, 0 to 1.
 */
function postWithProgress(
  url: string,
  form: FormData,
  token: string,
  progress: (share: number) => void,
): Promise<{ status: number; text: string }> {
  const XhrCtor = (globalThis as unknown as { XMLHttpRequest?: new () => Xhr }).XMLHttpRequest;
  progress(0);
  if (!XhrCtor) {
    return fetch(url, { method: "POST", body: form, headers: { authorization: `Bearer ${token}` } })
      .then(async (res) => ({ status: res.status, text: await res.text() }))
      .catch((err) => {
        throw new ChatError("network", `Upload failed: ${(err as Error).message}`);
      });
  }
  return new Promise((resolve, reject) => {
    const xhr = new XhrCtor();
    xhr.open("POST", url);
    xhr.setRequestHeader("authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => {
      // The request body is the file plus multipart framing: report the share, in file bytes.
      if (e.lengthComputable && e.total > 0) progress(e.loaded / e.total);
    };
    xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
    xhr.onerror = () => reject(new ChatError("network", "Upload failed: network error"));
    xhr.onabort = () => reject(new ChatError("network", "Upload aborted"));
    xhr.send(form);
  });
}
