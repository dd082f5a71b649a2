/**
 * The Socket.IO ticket chat (shared/specs/socketio-ticket-chat.md) on our Engine.IO / Socket.IO
 * server: `authenticate`, `join_ticket`, `get_messages`, `send_message`, typing, on room
 * `ticket:<id>`, the same room the ticket socket uses.
 */

import { isAdminRole } from "../../auth/principal.ts";
import { findToken } from "../../auth/token.ts";
import { KeySetUnavailable } from "../../auth/verifier.ts";
import {
  asChatError,
  ChatError,
  frameTooLarge,
  rateLimited,
  roomDeleted,
} from "../../core/errors.ts";
import type { QueuedSend } from "../../core/chat_service.ts";
import { failureLog } from "../../core/failure_log.ts";
import { type RateVerdict, TYPING_REPEAT_MS } from "../../core/rate_limiter.ts";
import { isValidRoomId, MAX_ROOMS_PER_SOCKET, roomKey } from "../../core/rooms.ts";
import { pollUntil, timerDelay } from "../../core/time.ts";
import type { FileInput, Message, Principal, RoomEvent, UserProfile } from "../../core/types.ts";
import { type EngineSocket, type Socket, SocketIOServer } from "../../engine_io/mod.ts";
import { type Member, spares } from "../../hub/hub.ts";
import { mediaUrlPath } from "../../media/local_media_store.ts";
import {
  admitSocket,
  basePath,
  baseUrlOf,
  cookieOrigins,
  type DialectContext,
  maxEventSize,
  maxFrameSize,
  maxQueuedBytes,
  socketOriginAllowed,
} from "../context.ts";
import { optionalClientId } from "../frames.ts";
import { fitHistory, frameBytes, historyBudget } from "../history_pages.ts";

/** The texts the document's clients match on. */
export const SIO_ERRORS = {
  notAuthenticated: "User not authenticated",
  accessDenied: "Access denied to this ticket",
  emptyMessage: "Message or at least one file is required",
  invalidToken: "Invalid token",
  authUnavailable: "Tokens cannot be checked now: try again shortly",
  tokenRequired: "Token is required",
  ticketRequired: "Ticket ID is required",
} as const;

/**
 * The text of a `send_message`: a number or boolean is taken as its text (as the reference's
 * string schema casts it), none as empty; anything else is refused rather than dropped.
 */
function messageText(value: unknown): string {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  throw new ChatError("invalid_frame", '"message" must be a string');
}

/** The refusal of a `join_ticket` past {@link MAX_ROOMS_PER_SOCKET} tickets on one socket. */
const TOO_MANY_TICKETS =
  `At most ${MAX_ROOMS_PER_SOCKET} tickets per connection: leave one (leave_ticket) first`;

/** A number past any seq a room reaches: a `before` this large is a time in ms since 1970. */
const EPOCH_MS_FROM = 1e11;

/**
 * A `get_messages` cursor: a message's `_id` (what the document's messages carry), a seq (a
 * number or its digits), or a time (ISO, or ms since 1970 as `Date.parse(createdAt)` gives);
 * none when absent. Anything else is refused: read as none, it answered the newest page again
 * with `hasMore`, and a client paging back until `hasMore` ended never did.
 */
function historyCursor(
  value: unknown,
): { seq?: number; time?: string; id?: string } | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value === "string" && /^[0-9a-f]{24}$/i.test(value)) {
    return { id: value.toLowerCase() };
  }
  const n = typeof value === "string" && /^\d+$/.test(value) ? Number(value) : value;
  // Past 8.64e15 ms no Date holds it.
  if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0 && n <= 8.64e15) {
    return n >= EPOCH_MS_FROM ? { time: new Date(n).toISOString() } : { seq: n };
  }
  if (typeof value === "string" && !Number.isNaN(Date.parse(value))) {
    return { time: new Date(value).toISOString() };
  }
  throw new ChatError(
    "invalid_frame",
    'Field "before" must be a message _id, a seq or a time (ISO, or ms since 1970)',
  );
}

/** Messages one `get_messages` returns, by default and at most. */
const HISTORY_DEFAULT = 500;
/** How long a `get_messages` answer waits for the reader to take the one before it, ms. */
const PAGE_WAIT_MS = 30_000;

/**
 * `get_messages` a socket may have waiting for their turn (one for every ticket it may be in, as
 * a rejoin asks for them all at once); past it, one is refused. Each holds only its request.
 */
const MAX_PAGES_WAITING = MAX_ROOMS_PER_SOCKET;

/**
 * Resolves to true once the session holds under `bytes` unsent, to false when it closed first or
 * has not got there within {@link PAGE_WAIT_MS} (a slow consumer); the amount is polled.
 */
function unsentBelow(conn: EngineSocket, bytes: number): Promise<boolean> {
  return pollUntil(() => conn.unsent() <= bytes, {
    timeoutMs: PAGE_WAIT_MS,
    gone: () => conn.readyState !== "open",
  });
}

/** Typing events: dropped when over the rate limit, since a lost one is harmless. */
const TYPING = new Set(["typing_start", "typing_stop"]);

/**
 * Events that wait for their turn under the rate limit rather than being refused: the
 * document's reconnect handler rejoins every open ticket at once (a `join_ticket` and a
 * `get_messages` each), and socket.io-client does not send a refused event again. A leave waits
 * in the same line, so that it never overtakes a join sent before it; and while the line holds
 * any, every other event of the socket waits in it too (see {@link Waiting}).
 */
const PACED = new Set(["join_ticket", "leave_ticket", "get_messages"]);

/**
 * An event waiting in its socket's line: a paced one for its token, any other behind it with the
 * verdict the rate limiter gave it on arrival (a send past the rate is refused, and a flood
 * closed, as without the line). Each starts when those sent before it have started, so that a
 * send never overtakes the join sent before it (the sender would miss its own `new_message`,
 * which the document's retry helper takes as sent) and typing no join.
 */
interface Waiting {
  /** The verdict on arrival; none for a paced event, which waits for a token. */
  verdict?: RateVerdict;
  /** What it holds, counted in `queuedBytes` while it waits. */
  size: number;
  /** Starts it with its verdict (`ok` for a paced one that got its token). */
  start: (verdict: RateVerdict) => void;
  /** An `authenticate`, which may be started ahead of the line (see `authenticateInLine`). */
  authenticate?: boolean;
}

/**
 * Events a socket may have waiting in line: a rejoin of every ticket it may be in (a join and a
 * `get_messages` each), twice. Past it each is refused, and counts towards the close as a
 * refusal for the rate does: no rejoin gets there, and a flood of joins would otherwise be
 * answered as fast as it comes, forever.
 */
const MAX_PACED_WAITING = 4 * MAX_ROOMS_PER_SOCKET;

/** The error event each client event is answered on when refused (none: only its ack). */
const ERROR_EVENTS: Record<string, string> = {
  authenticate: "authentication_error",
  join_ticket: "join_ticket_error",
  get_messages: "messages_error",
  send_message: "send_message_error",
};

interface SocketState {
  user?: Principal;
  /** The handshake carried a token, not in a cookie, that did not verify: told once connected. */
  badToken?: boolean;
  /** The handshake's token could not be checked (the JWKS does not answer): told once connected. */
  authUnavailable?: boolean;
  baseUrl: string;
  /** Ticket ids this socket joined. */
  tickets: Set<string>;
  /** Each joined ticket's generation (deletion count) when its join read it. */
  epochs?: Map<string, number>;
  /**
   * Each joined ticket's last message broadcast before the socket was in its room (seq): the
   * broadcasts of later ones reach it. None while its join waits for the ticket's bridge.
   */
  heardAfter?: Map<string, number>;
  /**
   * How many joins of each ticket are under way, from their arrival (waiting in line too) to
   * their answer: a send to the ticket stored meanwhile tells its sender itself.
   */
  joining?: Map<string, number>;
  /** Who the handshake's token names, signed in once the socket connects. */
  handshakeUser?: Principal;
  /** Ticket ids this socket said it is typing in without joining them (the document allows it). */
  typingOutside?: Set<string>;
  /** The last send's way to the store (see `inTurn`). */
  sendTurn?: Promise<void>;
  /** The last join, leave or typing event per ticket (see `inTicketTurn`). */
  ticketTurns?: Map<string, Promise<void>>;
  /** Characters and bytes of the events received and not yet answered. */
  queuedBytes: number;
  /** Events being handled, each settled once answered. */
  handling: Set<Promise<void>>;
  /** An event was refused: the session ends once `handling` is done. */
  ending?: boolean;
  /** The last typing event taken was a start (see the rate limit in `on`), for which ticket, when. */
  typing?: boolean;
  typingStart?: { ticket: unknown; at: number };
  /** Settles once every send made so far is stored or refused (see `get_messages`). */
  sendsDone?: Promise<void>;
  /** Settles once the `get_messages` answers asked for so far are written (one at a time). */
  pagesDone?: Promise<void>;
  /** `get_messages` asked for and not yet answered (see {@link MAX_PAGES_WAITING}). */
  pagesWaiting: number;
  /** Events waiting in line (see {@link Waiting}), oldest first, a paced one first of all. */
  paced: Waiting[];
  /** The wake-up of the paced events' next turn, while some wait. */
  pacedTimer?: ReturnType<typeof setTimeout>;
  /** The connection's first `authenticate` came, free of the rate limit (see `on`). */
  authenticateTaken?: boolean;
  /** The `authenticate` being handled: events after it wait for it, as they were sent after it. */
  authenticating?: Promise<void>;
  /** Events sent before any `authenticate` wait for one (see `PRE_AUTH_WAIT_MS`) on this. */
  early?: {
    promise: Promise<void>;
    release: () => void;
    hold: () => void;
    heard: () => void;
  };
}

/**
 * How long events sent before any `authenticate` wait for one after the last event the socket
 * received: socket.io-client sends what was emitted while it was offline as soon as it connects,
 * before its `connect` handler (the document's) emits `authenticate`, and on a slow uplink that
 * buffer alone may take longer than this to arrive.
 */
const PRE_AUTH_WAIT_MS = 2000;

/**
 * How long they wait in all, from the first: a client without a token that kept sending would
 * otherwise hold them (and its large frame outside the server-wide bound) until
 * `SOCKETIO_AUTH_TIMEOUT_MS`, a minute by default.
 */
const PRE_AUTH_MAX_WAIT_MS = 10_000;

/** The wait of events sent before any `authenticate` (see {@link PRE_AUTH_WAIT_MS}). */
function awaitAuthenticate(s: SocketState): Promise<void> {
  if (s.early) return s.early.promise;
  const { promise, resolve } = Promise.withResolvers<void>();
  const deadline = performance.now() + PRE_AUTH_MAX_WAIT_MS;
  let heardAt = performance.now();
  // Due 2 s after the last event heard, 10 s after the first at most: an event only notes its
  // time (an offline buffer is thousands of them), and the timer sets itself again when it fires.
  const due = () => {
    const left = Math.min(heardAt + PRE_AUTH_WAIT_MS, deadline) - performance.now();
    if (left > 0) timer = setTimeout(due, left);
    else early.release();
  };
  let timer: ReturnType<typeof setTimeout> | undefined = setTimeout(due, PRE_AUTH_WAIT_MS);
  const early = {
    promise,
    release: () => {
      clearTimeout(timer);
      if (s.early === early) s.early = undefined;
      resolve();
    },
    // An `authenticate` came: they wait for it, however long its check takes.
    hold: () => {
      clearTimeout(timer);
      timer = undefined;
    },
    // The client is still sending what it held, its `authenticate` behind it: counted anew.
    heard: () => {
      heardAt = performance.now();
    },
  };
  s.early = early;
  return promise;
}

/**
 * Characters of every string and bytes of every binary value in an event's arguments (keys
 * included): about what its packets held. Walked without recursion, as the depth is the client's.
 */
function eventBytes(args: unknown[]): number {
  let size = 0;
  const stack: unknown[] = [...args];
  while (stack.length > 0) {
    const value = stack.pop();
    if (typeof value === "string") size += value.length;
    else if (value instanceof Uint8Array || value instanceof ArrayBuffer) size += value.byteLength;
    else if (Array.isArray(value)) {
      // Not spread into push: a long array would overflow the call's arguments.
      for (const item of value) stack.push(item);
    } else if (typeof value === "object" && value !== null) {
      for (const [key, item] of Object.entries(value)) {
        size += key.length;
        stack.push(item);
      }
    }
  }
  return size;
}

/** `Client` or `SuperAdmin`, the Mongo model the source system keeps senders in. */
const senderModel = (user: UserProfile | null) =>
  user === null ? "System" : isAdminRole(user.role) ? "SuperAdmin" : "Client";

/** A stored message in the Socket.IO ticket chat's shape. */
export function socketIoMessage(message: Message, ticketId: string, baseUrl: string) {
  const s = message.sender;
  return {
    _id: message.id,
    ticketId,
    sender: s
      ? {
        _id: String(s.id),
        name: s.name ?? s.username,
        email: s.email ?? null,
        company: s.company ?? null,
      }
      : { _id: null, name: "System", email: null, company: null },
    senderModel: senderModel(s),
    message: message.body,
    attachments: message.attachments.map((a) => ({
      filename: a.name,
      originalname: a.originalName,
      mimetype: a.mime,
      size: a.size,
      // Root-relative, so under PUBLIC_URL's path too when a proxy serves the server there.
      path: basePath(baseUrl) + mediaUrlPath(a.key),
      url: baseUrl + mediaUrlPath(a.key),
      uploadedAt: a.uploadedAt,
    })),
    createdAt: message.createdAt,
  };
}

// The source system's ids are Mongo ObjectIds, strings everywhere; a numeric `sub` is rendered as
// a string too, so `message.sender._id === user.id` holds as it did there.
const publicUser = (user: Principal) => ({
  id: String(user.id),
  name: user.name ?? user.username,
  email: user.email ?? null,
  type: senderModel(user),
});

/** The `ticketId` of an event payload as sent, for comparing two typing events. */
function ticketKey(payload: unknown): unknown {
  return typeof payload === "object" && payload !== null
    ? (payload as Record<string, unknown>).ticketId
    : undefined;
}

/** Reads `ticketId` from an event payload. */
function ticketIdOf(payload: unknown): string {
  const raw = ticketKey(payload);
  if (typeof raw === "number" && Number.isSafeInteger(raw)) return String(raw);
  if (typeof raw !== "string" || raw.trim() === "") {
    throw new ChatError("invalid_frame", SIO_ERRORS.ticketRequired);
  }
  if (!isValidRoomId(raw)) throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
  return raw;
}

/** Settings of the Socket.IO server. */
export interface SocketIoTicketOptions {
  /** Relay polling requests between the isolates of `deno serve --parallel`. */
  relay: boolean;
  /** Milliseconds between server pings. */
  pingInterval?: number;
  /** Milliseconds a client has to answer a ping. */
  pingTimeout?: number;
  /** The socket.io-client browser bundle to serve at `/socket.io/socket.io.js` (and `.min.js`). */
  clientBundle?: string;
}

/**
 * A `send_message`'s `attachments`: absent, or a list of `{name, data}` whose data is bytes or a
 * (base64) string. Refused when malformed: stored as it was, a file without data became an empty
 * file, and attachments that were not a list were dropped while the text went out.
 */
function attachmentsOf(value: unknown): FileInput[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) {
    throw new ChatError("invalid_frame", '"attachments" must be a list of {name, data}');
  }
  return value.map((item) => {
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new ChatError("invalid_frame", 'Each entry of "attachments" must be {name, data}');
    }
    const a = item as Record<string, unknown>;
    const data = a.data instanceof Uint8Array
      ? a.data
      : a.data instanceof ArrayBuffer
      ? new Uint8Array(a.data)
      : typeof a.data === "string"
      ? a.data
      : undefined;
    if (data === undefined) {
      throw new ChatError("invalid_frame", 'Each attachment needs its "data" (bytes or base64)');
    }
    return { name: typeof a.name === "string" ? a.name : undefined, data };
  });
}

/**
 * True while an event of any socket of `io` is being handled, or taken and waiting in its line
 * behind paced ones (a send): a shutdown waits for them.
 */
export function socketIoBusy(io: SocketIOServer): boolean {
  for (const socket of io.of("/").sockets.values()) {
    const s = socket.data as Partial<SocketState>;
    if ((s.handling?.size ?? 0) > 0) return true;
    if (s.paced?.some((waiting) => waiting.verdict !== undefined)) return true;
  }
  return false;
}

/**
 * Empties a socket's line: the events that had their verdict on arrival (a send taken, a
 * refusal) start at once, in the order sent, when `start`; the paced ones still waiting for a
 * token are dropped, as the client rejoins when it reconnects.
 */
function emptyLine(s: SocketState, start: boolean): void {
  clearTimeout(s.pacedTimer);
  s.pacedTimer = undefined;
  const line = s.paced;
  s.paced = [];
  for (const waiting of line) {
    s.queuedBytes -= waiting.size;
    if (start && waiting.verdict !== undefined) waiting.start(waiting.verdict);
  }
}

/**
 * Counts a `join_ticket` of the ticket `payload` names in `s.joining` as it arrives (`by` 1), or
 * as it is answered (-1). One dropped from the line is never answered: its session is ending.
 */
function countJoining(s: SocketState, payload: unknown, by: 1 | -1): void {
  let id: string;
  try {
    id = ticketIdOf(payload);
  } catch {
    // Refused in the join itself, never under way.
    return;
  }
  const joining = s.joining ??= new Map();
  const count = (joining.get(id) ?? 0) + by;
  if (count > 0) joining.set(id, count);
  else joining.delete(id);
}

/**
 * Takes no more events on `io`, for a shutdown (see SocketIOServer.takeNoMore), and starts at
 * once every event its sockets took and hold in line behind paced ones, which are dropped: a
 * send there would otherwise wait past the drain, neither stored nor answered. Each is stored
 * within the drain or refused as the server stops, and told which.
 */
export function socketIoTakeNoMore(io: SocketIOServer): void {
  io.takeNoMore();
  for (const socket of io.of("/").sockets.values()) {
    const s = socket.data as Partial<SocketState>;
    if ((s.paced?.length ?? 0) > 0) emptyLine(s as SocketState, true);
  }
}

/** The hub member through which the Socket.IO sockets in one ticket (and base URL) hear it. */
interface Bridge {
  member: Member;
  /** The hub join, resolving to the room's head as the bridge became live. */
  joined: Promise<number>;
  /** The seq of the last message broadcast (or the head it joined at); none until live. */
  delivered?: number;
  /** Sockets told of a message (by seq) by its send, whom its broadcast must skip. */
  skip?: Map<number, string[]>;
}

/** Tickets a socket's typing outside its joined ones is remembered for (past it, the timeout ends it). */
const MAX_TYPING_OUTSIDE = 100;

/** Largest WebSocket message of a session whose client has not authenticated (64 KiB). */
export const UNAUTHENTICATED_MAX_BYTES = 64 * 1024;

/**
 * Messages past {@link UNAUTHENTICATED_MAX_BYTES} a session takes before it signs in: a photo a
 * message, or a file a frame, emitted while offline and sent before the `authenticate`. The bytes
 * they hold, all sessions' together, are bounded by `unsignedPostBytes`; a bound of 10, one
 * message's files, lost all of a user's eleven photos written offline.
 */
export const UNAUTHENTICATED_LARGE_MESSAGES = 100;

/** What a socket in a ticket that was deleted is told, on `join_ticket_error`. */
const TICKET_DELETED = "This ticket no longer exists";

/**
 * Builds the Socket.IO server for the ticket chat. Fan-out uses one hub member per ticket (and
 * base URL) on this isolate: the bridge encodes each event once for every Socket.IO socket in
 * the ticket here.
 */
export function createSocketIoTicketChat(
  ctx: DialectContext,
  options: SocketIoTicketOptions,
): SocketIOServer {
  const io: SocketIOServer = new SocketIOServer({
    path: "/socket.io/",
    maxPayload: maxEventSize(ctx.config),
    // A polling POST is read whole, before anyone is authenticated, and under `--parallel` may
    // be relayed by an isolate that does not know the session: one file's frame. A session
    // signed in here may POST as much as a WebSocket message (`signedIn` raises its limit).
    maxPollingPayload: maxFrameSize(ctx.config),
    // And all such POSTs, counted until their session signs in or ends (the events they carry
    // wait for an `authenticate`), with the large WebSocket messages held before sign-in past each
    // session's first (below), hold at most two files' frames: a client queues its emits while
    // offline and may send them with its `authenticate`, but thousands of clients without a token
    // sending files would otherwise hold gigabytes. (Each session's first, a large message or a
    // counted POST, is bounded by the sessions not signed in, SOCKETIO_MAX_UNAUTHENTICATED, and
    // their wait: `PRE_AUTH_MAX_WAIT_MS` at most.)
    unsignedPostBytes: 2 * maxFrameSize(ctx.config),
    // Until the client has authenticated, nothing it may send is large (`authenticate` carries a
    // token): Deno keeps a socket's read buffer as large as the largest message it read, so one
    // big frame from a client without a token would hold that memory as long as it stays.
    initialMaxPayload: UNAUTHENTICATED_MAX_BYTES,
    // Except messages of the size a polling POST may have before sign-in, as long as
    // `unsignedPostBytes` holds them: socket.io-client sends what was emitted while offline (a
    // photo each, or a message's binary files, one frame each) before its `connect` handler
    // authenticates. They wait for an `authenticate` as other early events do; with none in time,
    // the session ends (see `largeBeforeSignIn`), and one past the count ends it at once.
    initialLargePayload: maxFrameSize(ctx.config),
    initialLargeMessages: UNAUTHENTICATED_LARGE_MESSAGES,
    initialLargeTaken(conn) {
      const socket = sockets.get(conn);
      // Before its CONNECT was taken: socket.io-client holds its emits until it is connected.
      if (!socket) return conn.close();
      largeBeforeSignIn(socket, state(socket));
    },
    pingInterval: options.pingInterval,
    pingTimeout: options.pingTimeout,
    // The same pages as the native and single-room sockets, the server's own page included.
    allowedOrigins: ctx.config.allowedOrigins.length > 0
      ? (origin, req) => socketOriginAllowed(ctx.config, origin, req)
      : "*",
    relay: options.relay,
    frameBudget: ctx.frames,
    traffic: ctx.metrics.socketIoTraffic,
    maxBufferedBytes: ctx.config.slowConsumerBytes,
    clientBundle: options.clientBundle,
    // A connection is held for a while before anyone knows whose it is (up to the connect
    // timeout before it joins, up to the auth timeout after): without a bound, handshakes alone
    // fill the memory. Past it new ones are refused, and clients retry with their backoff.
    refuseHandshake: (): string | null =>
      io.waitingConnections + unsigned.size >= ctx.config.socketIoMaxUnauthenticated
        ? "Server busy: too many connections waiting to authenticate; try again shortly"
        : null,
    // The session still ends, as Node's does over its limit, but the client is told why on the
    // event's own error event (and its ack) rather than left with a bare "transport close".
    oversized(socket, event, size, ack) {
      const { code, message } = state(socket).user
        ? frameTooLarge(size, "bytes", maxEventSize(ctx.config))
        : { code: "not_authenticated", message: SIO_ERRORS.notAuthenticated };
      ctx.metrics.error(code);
      // The client names the event: `constructor` is no key of ours.
      const errorEvent = Object.hasOwn(ERROR_EVENTS, event) ? ERROR_EVENTS[event] : undefined;
      if (errorEvent) socket.emit(errorEvent, { message });
      ack?.({ error: message });
    },
  });
  const nsp = io.of("/");
  /** The socket of each session in the namespace, from its CONNECT on. */
  const sockets = new WeakMap<EngineSocket, Socket>();
  /** Sockets in the namespace whose client has not authenticated, with their deadlines. */
  const unsigned = new Map<Socket, ReturnType<typeof setTimeout>>();
  /** Bridge members by engine room, with the hub join each one waits for. */
  const bridges = new Map<string, Bridge>();
  const state = (socket: Socket) => socket.data as SocketState;
  /**
   * Counts the socket among `user`'s sockets (a signed-in socket is counted for its user); throws
   * when that user holds too many, or opens them too fast. Only for a connected socket: its
   * `disconnect` gives the count back. Followed by `signedIn`.
   */
  const admitAs = (socket: Socket, user: Principal) => {
    const current = state(socket).user;
    if (current && String(current.id) === String(user.id)) return;
    const refused = admitSocket(ctx, user.id);
    if (refused) throw new ChatError("rate_limited", refused);
    if (current) ctx.sockets.release(current.id);
  };
  /** Makes the socket `user`'s and lets its session take events as large as a message's files. */
  const signedIn = (socket: Socket, user: Principal) => {
    state(socket).user = user;
    socket.conn.maxPayload = maxEventSize(ctx.config);
    clearTimeout(unsigned.get(socket));
    unsigned.delete(socket);
  };
  const queueBound = maxQueuedBytes(ctx.config, maxEventSize(ctx.config));
  const engineRoom = (ticketId: string, baseUrl: string) => `ticket:${ticketId}\u0000${baseUrl}`;
  const userRoom = (user: Principal) => `user:${user.id}`;

  function bridge(ticketId: string, baseUrl: string): Promise<number> {
    const name = engineRoom(ticketId, baseUrl);
    const room = roomKey("ticket", ticketId);
    const member: Member = {
      user: { id: "socket.io-bridge", username: "socket.io", grants: [] },
      renderKey: name,
      wants: (event) => event.type === "message" || event.type === "typing",
      render: () => undefined,
      send: () => {},
      deliver(event: RoomEvent) {
        if (event.type === "message") {
          const { seq } = event.message;
          entry.delivered = seq;
          const skipped = entry.skip?.get(seq);
          if (entry.skip) {
            // Delivered in order: the senders told of earlier ones will hear of them no more.
            for (const key of entry.skip.keys()) if (key <= seq) entry.skip.delete(key);
          }
          (skipped ? nsp.to(name).except(skipped) : nsp.to(name)).emit("new_message", {
            data: socketIoMessage(event.message, ticketId, baseUrl),
          });
        } else if (event.type === "typing") {
          nsp.to(name).except(`user:${event.user.id}`).emit(
            event.isTyping ? "user_typing" : "user_stopped_typing",
            {
              userId: String(event.user.id),
              userName: event.user.name ?? event.user.username,
              ticketId,
            },
          );
        }
      },
      *principals() {
        for (const socket of nsp.rooms.get(name) ?? []) {
          const user = state(socket).user;
          if (user) yield user;
        }
      },
      evict(event, principal) {
        for (const socket of [...nsp.rooms.get(name) ?? []]) {
          const s = state(socket);
          if (event.type === "revoked" && String(s.user?.id) !== String(event.userId)) continue;
          // Joined under the generation the deletion raised the room to, or a later one.
          if (spares(event, s.epochs?.get(ticketId) ?? -1)) continue;
          // A recheck refused one token: the user's other sockets may hold a better one.
          if (principal && s.user !== principal) continue;
          leaveTicket(socket, ticketId);
          socket.emit("join_ticket_error", {
            message: event.type === "closed" ? TICKET_DELETED : SIO_ERRORS.accessDenied,
          });
        }
      },
    };
    const joined = ctx.hub.join(room, member);
    const entry: Bridge = { member, joined };
    bridges.set(name, entry);
    // A leave or disconnect while the join was under way found no member to take out of the
    // room; left there, it would deliver every message a second time beside a later bridge.
    joined.then((head) => {
      entry.delivered = Math.max(entry.delivered ?? head, head);
      const current = bridges.get(name);
      if (current === entry && (nsp.rooms.get(name)?.size ?? 0) > 0) return;
      if (current === entry) bridges.delete(name);
      ctx.hub.leave(room, member);
    }, () => {
      if (bridges.get(name) === entry) bridges.delete(name);
    });
    return joined;
  }

  /**
   * Keeps the broadcast of message `seq`, if the ticket's bridge has yet to make it, from the
   * socket `socketId`, told of it already: it may join the ticket meanwhile. A bridge that joins
   * the hub later starts past it (the message is committed, its delivery queued before).
   */
  function skipBroadcast(name: string, seq: number, socketId: string): void {
    const entry = bridges.get(name);
    if (!entry || (entry.delivered ?? -1) >= seq) return;
    const skip = entry.skip ??= new Map();
    skip.set(seq, [...skip.get(seq) ?? [], socketId]);
  }

  /** Ends the socket's typing in a ticket, if it is typing there. */
  function stopTypingIn(socket: Socket, ticketId: string): void {
    const user = state(socket).user;
    if (user) ctx.chat.stopTyping(user, roomKey("ticket", ticketId), socket.id);
  }

  function leaveTicket(socket: Socket, ticketId: string): void {
    const s = state(socket);
    const name = engineRoom(ticketId, s.baseUrl);
    const user = s.user;
    // Out of presence once, whatever takes it out (a leave_ticket, a failed join, an eviction,
    // a sign-in as someone else, the end of its session); the exit waits for the join's enter.
    if (s.tickets.delete(ticketId) && user) {
      ctx.chat.exit(user, roomKey("ticket", ticketId), socket.id).catch((err) =>
        failureLog.failed(
          "socket.io: presence exit failed",
          err,
          `ticket ${ticketId}, user ${user.id}`,
        )
      );
    }
    s.epochs?.delete(ticketId);
    s.heardAfter?.delete(ticketId);
    socket.leave(name);
    stopTypingIn(socket, ticketId);
    if ((nsp.rooms.get(name)?.size ?? 0) === 0) {
      const entry = bridges.get(name);
      if (entry) {
        bridges.delete(name);
        ctx.hub.leave(roomKey("ticket", ticketId), entry.member);
      }
    }
  }

  /**
   * True while the socket is still signed in as `user` (the same id; an `authenticate` with the
   * same user's token keeps its tickets): one signed in as someone else meanwhile has left every
   * ticket, and what was checked for the first user is not the new one's.
   */
  function stillSignedInAs(socket: Socket, user: Principal): boolean {
    const now = state(socket).user;
    return now !== undefined && String(now.id) === String(user.id);
  }

  async function authorize(
    socket: Socket,
    payload: unknown,
    options: { fresh?: boolean; as?: Principal } = {},
  ): Promise<{ user: Principal; room: string; id: string }> {
    const user = options.as ?? state(socket).user;
    if (!user) throw new ChatError("not_authenticated", SIO_ERRORS.notAuthenticated);
    const id = ticketIdOf(payload);
    const room = roomKey("ticket", id);
    if (!(await ctx.chat.canAccess(user, room, options))) {
      // Deleted on another server, its notice still on the way: gone, not turned away.
      if (await ctx.chat.deleting(room)) throw roomDeleted();
      throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
    }
    return { user, room, id };
  }

  /**
   * Runs a socket's sends' way to the store one after another, in the order the events came:
   * Socket.IO runs handlers side by side, and a file's save must not let the text sent after it
   * be stored first. Only the commits overlap.
   */
  function inTurn<T>(s: SocketState, task: () => Promise<T>): Promise<T> {
    const run = (s.sendTurn ?? Promise.resolve()).then(task);
    s.sendTurn = run.then(() => {}, () => {});
    return run;
  }

  /**
   * Runs a join, leave or typing event after the socket's earlier ones for the same ticket, as
   * Socket.IO runs handlers side by side and a leave must not overtake its join, nor a stop its
   * start. Other tickets' events do not wait: a slow join holds up nothing else. A `join`,
   * counted in `s.joining` as it arrived (see `on`), is no longer once answered.
   */
  function inTicketTurn(
    s: SocketState,
    payload: unknown,
    task: () => Promise<void>,
    join = false,
  ) {
    let key: string;
    try {
      key = ticketIdOf(payload);
    } catch {
      // Refused the same way inside the task, with nothing to order it after.
      return task();
    }
    const turns = s.ticketTurns ??= new Map();
    const run = (turns.get(key) ?? Promise.resolve()).then(task);
    const settled = run.then(() => {}, () => {});
    turns.set(key, settled);
    settled.then(() => {
      if (turns.get(key) === settled) turns.delete(key);
    });
    if (join) settled.then(() => countJoining(s, payload, -1));
    return run;
  }

  /** The socket's join, leave or typing of the ticket `payload` names under way, if any. */
  function ticketTurnOf(s: SocketState, payload: unknown): Promise<void> | undefined {
    try {
      return s.ticketTurns?.get(ticketIdOf(payload));
    } catch {
      // Refused in the send itself.
      return undefined;
    }
  }

  /**
   * Takes no more events from the socket and ends its session once the ones taken are answered,
   * with a transport close (after a Socket.IO disconnect the client would never reconnect);
   * `last` says why, just before.
   */
  function endSession(s: SocketState, socket: Socket, last?: () => void): void {
    s.ending = true;
    // Answered before the close, as they would have been without the line.
    emptyLine(s, true);
    Promise.allSettled(s.handling).then(() => {
      last?.();
      socket.conn.close();
    });
  }

  /**
   * Ends the session of a socket that took large messages before signing in (see
   * `initialLargePayload`) unless an `authenticate` signs it in within the wait of the events
   * sent before one: Deno keeps a read buffer that large for the socket as long as it stays. The
   * events that waited are refused first, as without it.
   */
  async function largeBeforeSignIn(socket: Socket, s: SocketState): Promise<void> {
    await (s.authenticating ?? awaitAuthenticate(s));
    // One sent meanwhile holds the wait, however long its check takes.
    await s.authenticating;
    if (!s.user && !s.ending && socket.conn.readyState === "open") endSession(s, socket);
  }

  /**
   * Starts the first `authenticate` waiting in the socket's line, if the socket is still not
   * signed in (the one before it failed): every event ahead of it was sent before any sign-in and
   * waits for one anyway, while in line it would hold them, and the large frames taken before
   * sign-in (see `largeBeforeSignIn`), for as long as the line takes.
   */
  function authenticateInLine(s: SocketState): void {
    if (s.user || s.ending) return;
    const i = s.paced.findIndex((w) => w.authenticate);
    if (i < 0) return;
    const [waiting] = s.paced.splice(i, 1);
    s.queuedBytes -= waiting.size;
    waiting.start(waiting.verdict ?? "ok");
  }

  /**
   * What an event starting now waits for (a socket's events start in the order sent, see
   * {@link Waiting}). The client sent it after its `authenticate`, usually without waiting for
   * the answer (`connect` → authenticate, join_ticket): it is handled as signed in, if that
   * succeeds. A second `authenticate` waits for the first too, so the last one sent is who it is.
   * Sent before any, it waits for one a moment, and is handled right after it.
   */
  function waitsFor(s: SocketState, event: string): Promise<void> | undefined {
    return s.authenticating ??
      (!s.user && event !== "authenticate" ? awaitAuthenticate(s) : undefined);
  }

  /**
   * Starts the socket's paced events (see {@link PACED}) as the rate limit gives them tokens,
   * oldest first, and wakes up again when the next one may have its token.
   */
  function pacedTurns(socket: Socket, s: SocketState): void {
    s.pacedTimer = undefined;
    while (s.paced.length > 0) {
      const head = s.paced[0];
      if (head.verdict === undefined) {
        const wait = ctx.limiter.pace(s.user?.id ?? socket.id, socket.id);
        if (wait > 0) {
          s.pacedTimer = setTimeout(() => pacedTurns(socket, s), wait);
          return;
        }
      }
      s.paced.shift();
      s.queuedBytes -= head.size;
      // Dropped as events that come then are: the server's session is ending.
      if (!s.ending && socket.connected && !io.takingNoMore) head.start(head.verdict ?? "ok");
    }
  }

  /** Runs a handler, answering failures on the event's error event (and the ack, when there is one). */
  function on(
    socket: Socket,
    event: string,
    handler: (
      payload: unknown,
      ack: ((...args: unknown[]) => void) | undefined,
      beforeSignIn: boolean,
    ) => Promise<void>,
  ): void {
    const errorEvent = ERROR_EVENTS[event];
    socket.on(event, (...args: unknown[]) => {
      const s = state(socket);
      // Past a refused event nothing more is taken: the session ends once the ones before it are
      // answered.
      if (s.ending) return;
      // Any event, even one dropped below, says the client's buffer is still arriving.
      s.early?.heard();
      // An event holds its arguments until answered: a flood of files waits in memory whole.
      // Refused like a frame past the bound on a WebSocket: the events before it are answered,
      // then the session ends (the client reconnects, as after a packet over the size limit).
      const size = eventBytes(args);
      // Sent before the socket was signed in (emitted while offline, say), however long it then
      // waits in line: the send handler tells such a sender of its message itself.
      const beforeSignIn = !s.user;
      if (s.queuedBytes > 0 && s.queuedBytes + size > queueBound) {
        ctx.metrics.error("too_much_queued");
        endSession(s, socket);
        return;
      }
      // Counted as it arrives, in the order sent.
      const typing = TYPING.has(event);
      // Typing is sent on every keystroke by the document's own advice. A start repeated for the
      // same ticket within a second of the last one taken says nothing new, and is dropped
      // without taking a token a message needs.
      const start = event === "typing_start"
        ? { ticket: ticketKey(args[0]), at: performance.now() }
        : undefined;
      const last = s.typingStart;
      if (
        start && s.typing && last !== undefined && last.ticket === start.ticket &&
        start.at - last.at < TYPING_REPEAT_MS
      ) return;
      /** Ends the session of a flood, telling the client why on the event's error event. */
      const closeFlood = () => {
        ctx.metrics.error("rate_limited");
        endSession(s, socket, () => {
          if (errorEvent) socket.emit(errorEvent, { message: rateLimited().message });
        });
      };
      // The first `authenticate` of a connection is taken whatever went before it: events emitted
      // while offline, which socket.io-client sends ahead of it, may have used up the burst, and
      // the document's client authenticates only on `connect`, so a refusal would leave it
      // signed out until the auth timeout. Later ones are limited as any event: each costs a
      // signature check.
      const free = event === "authenticate" && !s.authenticateTaken;
      if (free) s.authenticateTaken = true;
      if (s.paced.length >= MAX_PACED_WAITING && !free) {
        if (typing) return;
        if (ctx.limiter.strike(socket.id) === "close") return closeFlood();
        // Answered at once: held in line, a flood's refusals would have no bound.
        return begin(args, size, "limited", beforeSignIn);
      }
      const key = s.user?.id ?? socket.id;
      /** Puts the event in the socket's line (see {@link Waiting}), counted as it arrives. */
      const waitInLine = (verdict?: RateVerdict) => {
        s.queuedBytes += size;
        s.paced.push({
          verdict,
          size,
          start: (v) => begin(args, size, v, beforeSignIn),
          authenticate: event === "authenticate",
        });
      };
      if (PACED.has(event)) {
        if (event === "join_ticket") countJoining(s, args[0], 1);
        // Never refused for the rate, so never a strike (only past the line's bound, above).
        if (s.paced.length === 0 && ctx.limiter.pace(key, socket.id) === 0) {
          return begin(args, size, "ok", beforeSignIn);
        }
        waitInLine();
        if (s.pacedTimer === undefined) pacedTurns(socket, s);
        return;
      }
      // Typing from buckets of its own (see `RateLimiter.typing`): a page that paused to think in
      // each message written offline sends a start and a stop per pause ahead of its sends.
      let verdict: RateVerdict = free
        ? "ok"
        : typing
        ? ctx.limiter.typing(key, socket.id)
        : ctx.limiter.take(key, socket.id);
      if (verdict !== "ok" && typing) {
        // A start past the limit is dropped, without counting towards the close a flood of
        // other events earns. A stop after a start that went through still goes (once), or the
        // others would see the user typing until the typing timeout.
        if (event === "typing_start" || !s.typing) return;
        verdict = "ok";
      }
      if (typing) s.typing = event === "typing_start";
      if (start) s.typingStart = start;
      if (verdict === "close") return closeFlood();
      // Behind paced events sent before it, which it must not overtake; but for an `authenticate`
      // before sign-in: the events ahead of it, all sent before any sign-in, wait for one anyway
      // and are handled after it, and in line it would hold them (and the large frames taken
      // before sign-in, see `largeBeforeSignIn`) for as long as the line takes, past the wait.
      // Not while another is being checked: those sent after that one are its user's (should it
      // fail, this one goes ahead then, see `authenticateInLine`).
      if (s.paced.length === 0 || (event === "authenticate" && !s.user && !s.authenticating)) {
        return begin(args, size, verdict, beforeSignIn);
      }
      waitInLine(verdict);
    });

    /**
     * Handles an event taken, counting its bytes. It starts once those sent before it have: what
     * it waits for (an `authenticate` sent before it, or one to come) is the socket's now.
     */
    function begin(
      args: unknown[],
      size: number,
      verdict: RateVerdict,
      beforeSignIn: boolean,
    ): void {
      const s = state(socket);
      const after = waitsFor(s, event);
      s.queuedBytes += size;
      // What later events wait for: this `authenticate`, then the events that waited for one.
      let gate: Promise<void> | undefined;
      const run: Promise<void> =
        (after
          ? after.then(() => handle(args, verdict, beforeSignIn))
          : handle(args, verdict, beforeSignIn))
          .catch((err) => failureLog.failed(`socket.io: ${event} failed`, err))
          .finally(() => {
            s.queuedBytes -= size;
            s.handling.delete(run);
            if (s.authenticating === gate) s.authenticating = undefined;
            if (event === "authenticate" && !s.authenticating) authenticateInLine(s);
          });
      s.handling.add(run);
      if (event === "authenticate") {
        const early = s.early;
        early?.hold();
        gate = early ? run.finally(early.release) : run;
        s.authenticating = gate;
      }
    }

    async function handle(
      args: unknown[],
      verdict: RateVerdict,
      beforeSignIn: boolean,
    ): Promise<void> {
      const ack = typeof args.at(-1) === "function"
        ? args.pop() as (...a: unknown[]) => void
        : undefined;
      try {
        if (verdict === "limited") {
          throw rateLimited();
        }
        await handler(args[0], ack, beforeSignIn);
      } catch (err) {
        const error = asChatError(err, `socket.io, user ${state(socket).user?.id ?? "none"}`);
        ctx.metrics.error(error.code);
        if (errorEvent) socket.emit(errorEvent, { message: error.message });
        ack?.({ error: error.message });
      }
    }
  }

  // A handshake token is our addition: the document authenticates with the `authenticate` event
  // only. So a bad one never refuses the connection (the client would stop there, never
  // reconnecting): the socket connects unauthenticated and can still send `authenticate`. A bad
  // token the client sent on purpose is reported with `authentication_error`; a stale
  // `access_token` cookie, which another app on the host may have left, is passed over quietly.
  nsp.use(async (socket, next) => {
    const req = socket.conn.request;
    const request = new Request(req.url, { headers: req.headers });
    const fromAuth = socket.handshake.auth?.token;
    const found = typeof fromAuth === "string" && fromAuth !== ""
      ? { token: fromAuth, source: "auth" }
      : findToken(request, cookieOrigins(ctx.config));
    const data: SocketState = {
      baseUrl: baseUrlOf(ctx.config, request),
      tickets: new Set(),
      queuedBytes: 0,
      handling: new Set(),
      pagesWaiting: 0,
      paced: [],
    };
    socket.data = data;
    sockets.set(socket.conn, socket);
    if (found.token) {
      let user;
      try {
        user = await ctx.auth.authenticate(found.token);
      } catch (err) {
        // Connected unsigned and told so, not refused (a refused handshake stops the client)
        // and not told its token is invalid: it may `authenticate` again once the keys answer.
        if (!(err instanceof KeySetUnavailable)) throw err;
        data.authUnavailable = true;
      }
      // Signed in (and counted) once connected: a handshake that never completes has no
      // `disconnect` to give the count back.
      if (user) data.handshakeUser = user;
      else if (!data.authUnavailable) data.badToken = found.source !== "cookie";
    }
    next();
  });

  nsp.on("connection", (socket) => {
    ctx.metrics.connection("socket.io", 1);
    const s = state(socket);
    const handshakeUser = s.handshakeUser;
    s.handshakeUser = undefined;
    let refused: string | undefined;
    if (handshakeUser) {
      try {
        admitAs(socket, handshakeUser);
        signedIn(socket, handshakeUser);
      } catch (err) {
        // Connected unsigned, as with a bad token: a refused handshake (`connect_error`) would
        // stop the client for good, and the limit is one to wait out.
        refused = (err as Error).message;
      }
    }
    if (s.user) {
      socket.join(userRoom(s.user));
      socket.emit("authenticated", { user: publicUser(s.user) });
    } else if (refused) {
      socket.emit("authentication_error", { message: refused });
    } else if (s.badToken) {
      socket.emit("authentication_error", { message: SIO_ERRORS.invalidToken });
    } else if (s.authUnavailable) {
      socket.emit("authentication_error", { message: SIO_ERRORS.authUnavailable });
    }
    if (!s.user) {
      // Closed as a transport would be, so that the client reconnects (and may authenticate
      // then) rather than stop as after a server-side disconnect.
      unsigned.set(
        socket,
        setTimeout(() => {
          if (!s.user) socket.conn.close();
        }, timerDelay(ctx.config.socketIoAuthTimeoutMs)),
      );
    }

    // Rate-limited like every other event but the connection's first (see `on`): it is the one
    // a socket without a token may send, and each costs a signature check.
    on(socket, "authenticate", async (payload, ack) => {
      const token = typeof payload === "object" && payload !== null
        ? (payload as Record<string, unknown>).token
        : undefined;
      let user = null;
      try {
        if (typeof token === "string" && token !== "") user = await ctx.auth.authenticate(token);
      } catch (err) {
        // Not the token's fault: the text says so, and the client may try again.
        if (err instanceof KeySetUnavailable) {
          throw new ChatError("internal", SIO_ERRORS.authUnavailable);
        }
        throw err;
      }
      if (!user) {
        throw new ChatError(
          "not_authenticated",
          typeof token === "string" && token !== ""
            ? SIO_ERRORS.invalidToken
            : SIO_ERRORS.tokenRequired,
        );
      }
      // Gone while the token was checked: its `disconnect` has run, and would not give back a
      // count taken now.
      if (!socket.connected) return;
      admitAs(socket, user);
      if (s.user && !stillSignedInAs(socket, user)) {
        for (const id of [...s.tickets]) leaveTicket(socket, id);
        // The first user's typing in tickets it never joined ends too, while it is still the
        // one signed in: the disconnect would end it as the new user, which nobody is.
        for (const id of s.typingOutside ?? []) stopTypingIn(socket, id);
        s.typingOutside?.clear();
        socket.leave(userRoom(s.user));
      }
      signedIn(socket, user);
      socket.join(userRoom(user));
      socket.emit("authenticated", { user: publicUser(user) });
      ack?.({ user: publicUser(user) });
    });

    on(
      socket,
      "join_ticket",
      (payload, ack) =>
        inTicketTurn(s, payload, async () => {
          // Refused before any read when nobody signed in.
          if (!s.user) throw new ChatError("not_authenticated", SIO_ERRORS.notAuthenticated);
          // The generation read with the check (a cached one: one deletion older only closes a
          // socket that joined as the room was deleted): a deletion after it is found, once the
          // socket is in the room, as a generation past this one (below).
          const [{ user, room, id }, epoch] = await Promise.all([
            authorize(socket, payload),
            Promise.resolve().then(() =>
              ctx.chat.generation(roomKey("ticket", ticketIdOf(payload)))
            ),
          ]);
          // Gone while its access was checked: its disconnect has already left every ticket.
          if (!socket.connected) return;
          // Signed in as someone else while the first user's access was checked: that
          // `authenticate` left every ticket, and the new user has not asked for this one.
          if (!stillSignedInAs(socket, user)) {
            throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
          }
          if (!s.tickets.has(id)) {
            // Each ticket holds a bridge and a room of this socket's for as long as it stays:
            // bounded as the native protocol bounds a socket's rooms.
            if (s.tickets.size >= MAX_ROOMS_PER_SOCKET) {
              throw new ChatError("invalid_frame", TOO_MANY_TICKETS);
            }
            s.tickets.add(id);
            (s.epochs ??= new Map()).set(id, epoch);
            const name = engineRoom(id, s.baseUrl);
            socket.join(name);
            // What the live bridge has broadcast so far did not reach this socket; a bridge not
            // yet in the hub broadcasts what comes after its head, the socket in the room.
            const live = bridges.get(name)?.delivered;
            // Counted for presence as the ticket socket and the native protocol count theirs,
            // from the moment it is among the ticket's: `leaveTicket` exits.
            const entered = ctx.chat.enter(user, room, socket.id);
            // Awaited once the bridge is live (what it broadcast from then on is marked heard
            // at once); a leave before that has its exit, which waits for it.
            entered.catch(() => {});
            try {
              // `joined_ticket` only once the bridge is live, so nothing sent after it is missed.
              const head = await (bridges.get(name)?.joined ?? bridge(id, s.baseUrl));
              if (s.tickets.has(id)) (s.heardAfter ??= new Map()).set(id, live ?? head);
              await entered;
              // Access removed since the check above was published before this socket was in
              // the room to be evicted: asked again, past any cache, now that a later removal
              // will find it.
              if (!(await ctx.chat.canAccess(user, room, { fresh: true }))) {
                throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
              }
              // The same for a deletion: its notices went before this socket was in the room,
              // or spared it as joined under the new generation, which it was not.
              if (await ctx.chat.deletedSince(room, epoch)) {
                throw new ChatError("room_deleted", TICKET_DELETED);
              }
              // Signed in as someone else meanwhile, which left every ticket, this one too: the
              // join was the first user's, and the new one has not asked for it.
              if (!s.tickets.has(id) || !stillSignedInAs(socket, user)) {
                throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
              }
            } catch (err) {
              // Not left half joined: a later join_ticket must try again, not be acked at once.
              if (s.tickets.has(id)) leaveTicket(socket, id);
              throw err;
            }
          }
          socket.emit("joined_ticket", { ticketId: id });
          ack?.({ ticketId: id });
        }, true),
    );

    on(socket, "leave_ticket", (payload, ack) =>
      inTicketTurn(s, payload, () => {
        const id = ticketIdOf(payload);
        if (s.tickets.has(id)) leaveTicket(socket, id);
        ack?.({ ticketId: id });
        return Promise.resolve();
      }));

    on(socket, "get_messages", async (payload, ack) => {
      // After the sends this socket made before asking, as the native protocol answers: a
      // client that sends and then loads the ticket sees its message.
      const sends = s.sendsDone;
      const { room, id } = await authorize(socket, payload);
      const record = payload as Record<string, unknown>;
      // The document's clients load a ticket's messages with no paging, so the default is a
      // ticket's whole history as far as one event sensibly carries it; `hasMore` tells the rest.
      // Floored, as a bad limit is clamped, not refused: KV's list throws on a fraction.
      const limit = Math.floor(Math.min(
        Math.max(Number(record.limit ?? HISTORY_DEFAULT) || HISTORY_DEFAULT, 1),
        HISTORY_DEFAULT,
      ));
      const cursor = historyCursor(record.before);
      let before = cursor?.seq;
      // One answer after another, each read and written once the reader has taken most of the
      // one before: a client loading several tickets at once would otherwise pass the bound
      // with them. Read after the wait, a page holds what was sent meanwhile; and only so many
      // wait, each holding nothing but its request.
      if (s.pagesWaiting >= MAX_PAGES_WAITING) throw rateLimited();
      s.pagesWaiting++;
      const previous = s.pagesDone;
      const { promise: written, resolve } = Promise.withResolvers<void>();
      s.pagesDone = written;
      try {
        await previous;
        if (!(await unsentBelow(socket.conn, ctx.config.slowConsumerBytes / 4))) {
          // Not read for that long: a slow consumer, closed as the transport closes one.
          socket.conn.close();
          return;
        }
        // Asked again, past any cache, for whoever is signed in on the socket now: the wait may
        // have outlasted the access (a removal, the ticket's deletion, another sign-in), and the
        // page is read only now.
        const { user } = await authorize(socket, payload, { fresh: true });
        if (cursor?.time !== undefined) before = await ctx.chat.seqBefore(room, cursor.time);
        if (cursor?.id !== undefined) {
          before = await ctx.chat.seqOfId(room, cursor.id);
          if (before === undefined) {
            throw new ChatError("invalid_frame", 'Field "before" names no message of this ticket');
          }
        }
        await sends;
        // Whatever cursor this page was asked by, the next may be its oldest message's time.
        const page = await ctx.chat.historyPageByTime(room, { before, limit });
        // Signed in as someone else since the check: the page was read for the first user.
        if (!stillSignedInAs(socket, user)) {
          throw new ChatError("forbidden", SIO_ERRORS.accessDenied);
        }
        // Messages of up to 20,000 characters: the newest that fit in about 1 MiB, so that one
        // answer, written twice at once (event and ack), stays within half of
        // SLOW_CONSUMER_BYTES and a reader on loopback is not closed as slow before a byte of it
        // went out. Counted in the UTF-8 of their JSON, as the socket counts them: CJK text is
        // 3 bytes a character.
        // The event's frame is the larger (its ack's holds no ticketId): `42` and its JSON.
        const around = 2 +
          frameBytes(["messages_loaded", { messages: [], ticketId: id, hasMore: false }]);
        const fitted = fitHistory(
          page.messages,
          (m) => socketIoMessage(m, id, s.baseUrl),
          historyBudget(ctx.config.slowConsumerBytes),
          "newest",
          around,
        );
        let messages = fitted.rendered;
        // Cut between messages of one time (see historyPageByTime), a next page by that time
        // would skip the ones left out: those of it kept go too, unless they are all it holds.
        const left = page.messages[page.messages.length - fitted.messages.length - 1];
        if (left && left.createdAt === fitted.messages[0].createdAt) {
          const from = fitted.messages.findIndex((m) => m.createdAt !== left.createdAt);
          if (from > 0) messages = messages.slice(from);
        }
        const hasMore = page.hasMore || fitted.cut;
        socket.emit("messages_loaded", { messages, ticketId: id, hasMore });
        ack?.({ messages, hasMore });
      } finally {
        s.pagesWaiting--;
        resolve();
        if (s.pagesDone === written) s.pagesDone = undefined;
      }
    });

    on(socket, "send_message", async (payload, ack, beforeSignIn) => {
      // After the join, leave or typing of its ticket sent before it, which are handled side by
      // side with it: a client that joins and at once sends gets its own `new_message`.
      const ticketTurn = ticketTurnOf(s, payload);
      // Whoever is signed in as it starts (in the order sent) sent it: an authenticate sent
      // after it may be done by the time its turn comes.
      const sender = s.user;
      const sending = inTurn(s, async () => {
        await ticketTurn;
        return await queueSend(payload, sender);
      });
      const stored = sending.then(({ queued }) => queued.result);
      const done = Promise.allSettled([s.sendsDone, stored]).then(() => {});
      s.sendsDone = done;
      done.then(() => {
        if (s.sendsDone === done) s.sendsDone = undefined;
      });
      const { id } = await sending;
      const result = await stored;
      const message = socketIoMessage(result.message, id, s.baseUrl);
      // The document's client marks a send as sent when its `new_message` comes: the sender gets
      // it once, broadcast or from here. Here when the broadcast does not reach it and its page
      // is about to show the ticket: in the ticket, but joined after the broadcast (or its join
      // waits for the ticket's bridge); or not in it, but sent before sign-in (emitted while
      // offline, stored before the join the page sends on `authenticated`) or ahead of a join
      // still under way, or dropped by a stop or the end of its session. A send to a ticket the
      // page neither is in nor joins is not: the document's handler would show it in the ticket
      // on screen. A retry of a stored client id gets the original back, as in every protocol:
      // the first attempt's broadcast may be what it missed. Never to someone else signed in on
      // the socket since.
      const after = s.heardAfter?.get(id);
      const missed = s.tickets.has(id)
        ? after === undefined || after >= result.message.seq
        : beforeSignIn || s.joining?.has(id) === true || io.takingNoMore || s.ending === true;
      const own = sender !== undefined && stillSignedInAs(socket, sender);
      if ((result.duplicate || missed) && own && socket.connected) {
        socket.emit("new_message", { data: message });
        skipBroadcast(engineRoom(id, s.baseUrl), result.message.seq, socket.id);
      }
      ack?.(message);
    });

    /**
     * Checks a `send_message` of `sender` (who was signed in as it started) and queues it for the
     * store; the commit is not waited for.
     */
    async function queueSend(
      payload: unknown,
      sender: Principal | undefined,
    ): Promise<{ id: string; queued: QueuedSend }> {
      if (!sender) throw new ChatError("not_authenticated", SIO_ERRORS.notAuthenticated);
      const { user, room, id } = await authorize(socket, payload, { as: sender });
      const record = payload as Record<string, unknown>;
      const text = messageText(record.message);
      const files = attachmentsOf(record.attachments);
      if (text.trim() === "" && files.length === 0) {
        throw new ChatError("empty_message", SIO_ERRORS.emptyMessage);
      }
      // Refused past 128 characters, as in every protocol: cut short, two ids could become one,
      // and the second send would be answered with the first message instead of being stored.
      const clientId = optionalClientId(record, "clientId", "client_id");
      const queued = await ctx.chat.queue(user, room, {
        body: text,
        files,
        mediaDir: "uploads/chat",
        // The document's `"filename": "unique-filename.jpg"`: one folder holds every ticket's
        // files and serves them without a token, so a name like `invoice.pdf` must not find one.
        names: "random",
        clientId,
      });
      return { id, queued };
    }

    for (const [event, isTyping] of [["typing_start", true], ["typing_stop", false]] as const) {
      on(socket, event, (payload) => {
        // Whoever is signed in as it starts (in the order sent) is the one typing.
        const typist = s.user;
        return inTicketTurn(s, payload, async () => {
          if (!typist) throw new ChatError("not_authenticated", SIO_ERRORS.notAuthenticated);
          const { user, room, id } = await authorize(socket, payload, { as: typist });
          // Queued behind a join and run after the disconnect: nobody is typing any more. Or
          // after the socket became someone else's, who left the first user's tickets and
          // typing: shown now, the first user's typing would stay until the typing timeout.
          if (!socket.connected || !stillSignedInAs(socket, user)) return;
          ctx.chat.typing(user, room, isTyping, socket.id);
          // Ended by the disconnect like a joined ticket's, not a typing timeout later.
          if (!s.tickets.has(id)) {
            const outside = s.typingOutside ??= new Set();
            if (!isTyping) outside.delete(id);
            else if (outside.size < MAX_TYPING_OUTSIDE) outside.add(id);
          }
        });
      });
    }

    socket.on("disconnect", () => {
      s.early?.release();
      // What waits in line is dropped, a send too: its answer has nowhere to go, and stored now
      // it would show in the rejoin's get_messages while the client's helper still has it as
      // sending, and resends it. The client rejoins when it reconnects, and resends what was
      // never answered (once only, with a clientId).
      emptyLine(s, false);
      clearTimeout(unsigned.get(socket));
      unsigned.delete(socket);
      ctx.metrics.connection("socket.io", -1);
      ctx.limiter.forget(socket.id);
      if (s.user) {
        const id = s.user.id;
        // Still the user's while Deno holds the connection (a peer that stopped reading), up to
        // a ping interval and timeout: as long as a silent polling session would have lasted.
        const { socketIoPingIntervalMs: interval, socketIoPingTimeoutMs: timeout } = ctx.config;
        socket.conn.gone(interval + timeout).then(() => ctx.sockets.release(id));
      }
      for (const id of [...s.tickets]) leaveTicket(socket, id);
      for (const id of s.typingOutside ?? []) stopTypingIn(socket, id);
    });
  });

  return io;
}
