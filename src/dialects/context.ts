/** What every dialect gets from the composition root. */

import type { Authenticator } from "../auth/authenticator.ts";
import { requestOrigin, saysForwarded } from "../auth/request_origin.ts";
import { trustedOrigin } from "../auth/token.ts";
import type { Config } from "../config.ts";
import { type ChatService, MAX_FILES_PER_MESSAGE } from "../core/chat_service.ts";
import type { Metrics } from "../core/metrics.ts";
import type { Attachment } from "../core/types.ts";
import { mediaUrlPath } from "../media/local_media_store.ts";
import type { RateLimiter } from "../core/rate_limiter.ts";
import { SOCKET_REFUSALS, type UserSockets } from "../core/user_sockets.ts";
import type { Hub } from "../hub/hub.ts";
import type { FrameBudget } from "../transport/frame_budget.ts";
import type { Connection, SocketOptions } from "../transport/websocket.ts";

/** Shared services, one set per isolate. */
export interface DialectContext {
  /** Settings. */
  config: Config;
  /** The core commands. */
  chat: ChatService;
  /** Local delivery. */
  hub: Hub;
  /** Token verification. */
  auth: Authenticator;
  /** Counters. */
  metrics: Metrics;
  /** Every open socket of this isolate. */
  connections: Set<Connection>;
  /** Inbound frame budgets per connection and per user. */
  limiter: RateLimiter;
  /** Sockets per user, and how fast a user opens them. */
  sockets: UserSockets;
  /** Bounds what the runtime keeps for sockets' large frames. */
  frames?: FrameBudget;
}

/** A WebSocket route: a URL pattern and the handler that upgrades matching requests. */
export interface WsRoute {
  /** Matched against the request URL's path. */
  pattern: URLPattern;
  /** Upgrades (or refuses) the request. */
  handle(req: Request, params: Record<string, string | undefined>): Promise<Response>;
}

const interned = new Map<string, string>();
/** Longest string kept: an origin's host is the client's to choose, and DNS names fit in this. */
const MAX_INTERNED = 300;

/**
 * One shared copy of a string that every idle socket would otherwise hold its own of (origins,
 * render keys). The copy is flat, so it never keeps a longer string (a request URL) alive.
 */
export function intern(text: string): string {
  if (text.length > MAX_INTERNED) return text;
  const known = interned.get(text);
  if (known !== undefined) return known;
  if (interned.size >= 1000) interned.clear();
  const flat = (" " + text).slice(1);
  interned.set(flat, flat);
  return flat;
}

/** Origins besides the server's own host whose pages may sign in by the `access_token` cookie. */
export function cookieOrigins(config: Config): string[] {
  return config.publicUrl
    ? [...config.allowedOrigins, new URL(config.publicUrl).origin]
    : config.allowedOrigins;
}

/**
 * Whether a page of `origin` may open a socket: any without ALLOWED_ORIGINS; with it, the origins
 * whose cookie signs in ({@link cookieOrigins} and the server's own host, whose chat page at `/`
 * must keep working), so that a page is never refused a socket its cookie would sign in.
 */
export function socketOriginAllowed(config: Config, origin: string, req: Request): boolean {
  if (config.allowedOrigins.length === 0) return true;
  if (trustedOrigin(origin, req, cookieOrigins(config))) return true;
  // Behind a proxy that rewrites Host the public page is refused too, TRUST_PROXY or not.
  warnProxyWithoutPublicUrl(config, req, true);
  return false;
}

/**
 * Base of absolute URLs for a request: PUBLIC_URL, else the origin its client sent it to (see
 * {@link requestOrigin}: with TRUST_PROXY, what a proxy says; else the request's own). Each
 * socket keeps its own, so a client's `Host` or forwarded headers change only the URLs it gets.
 */
export function baseUrlOf(config: Config, req: Request): string {
  if (config.publicUrl !== undefined) return config.publicUrl;
  warnProxyWithoutPublicUrl(config, req, false);
  // The origin is a slice of the request's whole URL (token included), which a session would
  // keep alive for as long as it lasts.
  return intern(requestOrigin(req, config.trustProxy));
}

/**
 * The path of a base URL from {@link baseUrlOf} (PUBLIC_URL's, without its trailing slash; empty
 * for an origin), which the root-relative file paths some protocols send start with, so that
 * they lead to the file through a proxy that serves the server under that path.
 */
export function basePath(baseUrl: string): string {
  const slash = baseUrl.indexOf("/", baseUrl.indexOf("//") + 2);
  return slash < 0 ? "" : baseUrl.slice(slash);
}

let warnedProxy = false;

/**
 * Says once that requests come through a proxy while PUBLIC_URL is unset: without TRUST_PROXY
 * their file URLs name `Host` (the upstream's address, or `http:` behind TLS), and their pages'
 * origin is checked against `Host` either way (`refusedOrigin`: a page was just refused for it),
 * which the operator would otherwise learn from users.
 */
function warnProxyWithoutPublicUrl(config: Config, req: Request, refusedOrigin: boolean): void {
  if (warnedProxy || config.publicUrl !== undefined) return;
  if ((config.trustProxy && !refusedOrigin) || !saysForwarded(req)) return;
  warnedProxy = true;
  console.warn(
    "http: requests carry a proxy's headers (Forwarded, X-Forwarded-*, X-Real-IP and the " +
      "like), but PUBLIC_URL is not set: the " +
      "server's own origin, whose pages may open sockets and sign in by cookie, is the Host " +
      `header's (never a forwarded host)${config.trustProxy ? "" : ", and so are file URLs"}. ` +
      "Behind a reverse proxy set PUBLIC_URL (TRUST_PROXY=1 sets the file URLs only)",
  );
}

/**
 * A text-only protocol's body for a message with files it has no field for: the absolute URLs
 * of `files`, one per line after `body`, so a client shows links rather than nothing.
 */
export function bodyWithFileUrls(body: string, files: Attachment[], baseUrl: string): string {
  if (files.length === 0) return body;
  const urls = files.map((a) => baseUrl + mediaUrlPath(a.key));
  return (body === "" ? urls : [body, ...urls]).join("\n");
}

/** The largest WebSocket message Deno reads, in UTF-8 bytes: past it, it closes the socket. */
export const DENO_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Characters a frame has beside its files' base64: the JSON, the text, the file names. */
const FRAME_TEXT_ROOM = 64 * 1024;

/**
 * The most characters (UTF-16 units) a frame may have: its files' base64 is one byte a character,
 * but the rest may be up to 3 (CJK text, names), so that a frame within the limit is within what
 * Deno reads even then, and gets its error, never a dropped connection.
 */
export const MAX_FRAME_CHARS = DENO_MAX_MESSAGE_BYTES - 2 * FRAME_TEXT_ROOM;

/**
 * The frame that carries a file of `fileBytes`: its base64, wrapped as MIME writes it (a line
 * break every 76 characters, `\r\n` in a JSON string: what `base64`, Python's `encodebytes` and
 * Java's MIME encoder give), plus room for the JSON around it.
 */
function fileFrameSize(fileBytes: number): number {
  const base64 = Math.ceil(fileBytes / 3) * 4;
  return base64 + Math.ceil(base64 / 76) * 4 + FRAME_TEXT_ROOM;
}

/** The largest file whose frame is within {@link MAX_FRAME_CHARS}: 47,674,980 bytes. */
const LARGEST_SOCKET_FILE = (() => {
  let low = 0;
  let high = MAX_FRAME_CHARS;
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    if (fileFrameSize(mid) <= MAX_FRAME_CHARS) low = mid;
    else high = mid - 1;
  }
  return low;
})();

/**
 * Largest inbound frame: the frame of the biggest attachment (see {@link fileFrameSize}), and
 * never past {@link MAX_FRAME_CHARS}: a larger limit would be advertised and counted while Deno
 * drops the connection, with no error, on any frame past 64 MiB of UTF-8.
 */
export function maxFrameSize(config: Config): number {
  return Math.min(fileFrameSize(config.maxFileBytes), MAX_FRAME_CHARS);
}

/**
 * Largest file a socket frame is sure to carry: MAX_FILE_BYTES, or, past what fits in the 64 MiB
 * Deno reads of one WebSocket message, 47,674,980 bytes; larger files take the upload route.
 */
export function socketMaxFileBytes(config: Config): number {
  return Math.min(config.maxFileBytes, LARGEST_SOCKET_FILE);
}

/**
 * Largest Socket.IO event: as many files as a message may carry, each up to MAX_FILE_BYTES, as
 * far as Deno reads one message (64 MiB: four files of 10 MiB), never under one largest frame.
 * Its document sends every selected file in one `send_message`.
 */
export function maxEventSize(config: Config): number {
  const all = MAX_FILES_PER_MESSAGE * (maxFrameSize(config) - FRAME_TEXT_ROOM) + FRAME_TEXT_ROOM;
  // Counted in bytes (Engine.IO measures UTF-8), so Deno's own bound is the cap.
  return Math.max(maxFrameSize(config), Math.min(all, DENO_MAX_MESSAGE_BYTES));
}

/**
 * Most bytes of received frames a socket may have waiting to be handled: four of the largest
 * frames unless configured, so a client may send a few files back to back, not a flood of them;
 * never under the `largest` message the socket may send and 64 KiB, so a client that waits for
 * each reply (and pings or types meanwhile) is never refused.
 */
export function maxQueuedBytes(config: Config, largest = maxFrameSize(config)): number {
  return Math.max(config.inboundQueueBytes ?? 4 * maxFrameSize(config), largest + 64 * 1024);
}

const optionSets = new WeakMap<DialectContext, Map<string, SocketOptions>>();

/**
 * Socket options for a dialect's connections: one shared object per protocol and subprotocol,
 * except for a subprotocol that carries a token (`bearer.<token>`), which is never kept.
 */
export function socketOptions(
  ctx: DialectContext,
  protocol: string,
  subprotocol?: string,
): SocketOptions {
  let sets = optionSets.get(ctx);
  if (!sets) optionSets.set(ctx, sets = new Map());
  const key = subprotocol === undefined
    ? protocol
    : subprotocol.length <= 64 && !subprotocol.startsWith("bearer.")
    ? `${protocol}\n${subprotocol}`
    : undefined;
  const known = key === undefined ? undefined : sets.get(key);
  if (known) return known;
  const options: SocketOptions = {
    protocol,
    maxFrameSize: maxFrameSize(ctx.config),
    maxQueuedBytes: maxQueuedBytes(ctx.config),
    maxBufferedBytes: ctx.config.slowConsumerBytes,
    idleTimeout: ctx.config.heartbeatSeconds,
    subprotocol,
    metrics: ctx.metrics,
    registry: ctx.connections,
    frames: ctx.frames,
  };
  // Clients name their subprotocols: a few dozen sets at most are kept.
  if (key !== undefined && sets.size < 64) sets.set(key, options);
  return options;
}

/**
 * Counts a new socket of `user` (give it back with `ctx.sockets.release` once it closes), or
 * says, counted in the metrics, why it may not open.
 */
export function admitSocket(ctx: DialectContext, user: string | number): string | undefined {
  const refusal = ctx.sockets.admit(user);
  if (!refusal) return undefined;
  ctx.metrics.error("too_many_sockets");
  return SOCKET_REFUSALS[refusal];
}
