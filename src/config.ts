/** Environment → typed configuration, validated with zod; a bad value fails fast with a readable message. */

import { z } from "zod";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { parseDatabaseUrl } from "./directory/open.ts";
import { DEFAULT_COMMIT_INTERVAL_MS, DEFAULT_PAUSE_ABOVE_CPU } from "./store/kv_message_store.ts";

const optionalText = z.string().trim().optional().transform((v) => v === "" ? undefined : v);

/**
 * The most a setting that becomes a timer keeps, in ms and in seconds: a timer given more than
 * 2^31 - 1 ms fires at once, so "practically never" (weeks) would mean "now". Cut here, every
 * use of the setting (its thirds, its sums with others, the Postgres driver's timeouts) holds.
 */
const MAX_TIMER_MS = 2 ** 31 - 1;
const MAX_TIMER_SECONDS = Math.floor(MAX_TIMER_MS / 1000);

/** File name of the default KV file inside the data directory. */
export const DEFAULT_KV_FILE = "chat.kv";

/** The largest space reserve, in MiB: a file of zeros written at every start that lacks it. */
const MAX_SPACE_RESERVE_MB = 1024;

/** A positive whole number with a default, cut to `max` when given. */
const positiveInt = (fallback: number, max = Number.MAX_SAFE_INTEGER, min = 1, why = "") =>
  z.string().trim().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return fallback;
    if (!/^\d+$/.test(v) || Number(v) <= 0 || !Number.isSafeInteger(Number(v))) {
      ctx.addIssue({ code: "custom", message: `expected a positive whole number, got "${v}"` });
      return z.NEVER;
    }
    if (Number(v) < min) {
      ctx.addIssue({ code: "custom", message: `expected at least ${min}${why}, got "${v}"` });
      return z.NEVER;
    }
    return Math.min(Number(v), max);
  });

/** A whole number ≥ 0 with a default, cut to `max`; `zero` says what 0 means, in the error text. */
const wholeNumber = (fallback: number, zero: string, max = Number.MAX_SAFE_INTEGER) =>
  z.string().trim().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return fallback;
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
      ctx.addIssue({ code: "custom", message: `expected a whole number (${zero}), got "${v}"` });
      return z.NEVER;
    }
    return Math.min(Number(v), max);
  });

/** An on/off switch, off unless set: `1` or `true` turns it on, `0` or `false` off; nothing else. */
const onOff = z.string().trim().optional().transform((v, ctx) => {
  const value = v?.toLowerCase() ?? "";
  if (value === "" || value === "0" || value === "false") return false;
  if (value === "1" || value === "true") return true;
  ctx.addIssue({ code: "custom", message: `expected 1 or 0 (true or false), got "${v}"` });
  return z.NEVER;
});

/** Hosts a JWKS may be fetched from over plain HTTP: this machine only. */
const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]"]);

/**
 * An http(s) URL like `example`, without its trailing slash, that `check` has no problem with.
 * `new URL` takes far more (`chat.example.com:443` reads as the scheme `chat.example.com:`).
 */
const httpUrl = (example: string, check: (url: URL) => string | undefined) =>
  z.string().trim().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return undefined;
    let parsed: URL | undefined;
    try {
      parsed = new URL(v);
    } catch {
      // Reported below.
    }
    // Quoted without anything up to its last `@` but the scheme: a password (which may hold
    // `/`, `?` or `#`, and may come without a scheme) must not reach the log.
    const shown = v.replace(/^([a-z][a-z0-9+.-]*:\/\/)?.*@/i, "$1…@");
    // Neither of these URLs takes credentials. `svc:2024/#pass@host` parses as the host `svc`
    // with a port and a fragment: an `@` with a host no dot or colon names is taken for a
    // password too. An `@` in the path of a real host (`/@team/`) is fine.
    const authority = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(v)?.[1] ?? "";
    const credentials = authority.includes("@") ||
      (parsed !== undefined && (parsed.username !== "" || parsed.password !== "")) ||
      (v.includes("@") &&
        (parsed === undefined ||
          (!/[.:]/.test(parsed.hostname) && parsed.hostname !== "localhost")));
    const problem = credentials
      ? `expected no user name or password in it, got "${shown}"`
      : !parsed || !/^https?:$/.test(parsed.protocol) || parsed.host === ""
      ? `expected an http(s) URL like ${example}, got "${shown}"`
      : check(parsed);
    if (problem) {
      ctx.addIssue({ code: "custom", message: problem });
      return z.NEVER;
    }
    return parsed!.toString().replace(/\/$/, "");
  });

const EnvSchema = z.object({
  PORT: z.string().trim().optional().transform((v, ctx) => {
    if (v === undefined || v === "") return 8000;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n > 65535) {
      ctx.addIssue({ code: "custom", message: `expected a port from 0 to 65535, got "${v}"` });
      return z.NEVER;
    }
    return n;
  }),
  HOST: optionalText.transform((v) => v ?? "0.0.0.0"),
  DATA_DIR: optionalText.transform((v) => resolve(v ?? "./data")),
  MEDIA_DIR: optionalText,
  // The base of every file URL handed out: a query, a fragment or credentials would break them all.
  PUBLIC_URL: httpUrl(
    "https://chat.example.com",
    // An empty `?` or `#` leaves search and hash empty, yet stays in the URL.
    (u) => /[?#]/.test(u.href) ? `expected no query or fragment, got "${u.href}"` : undefined,
  ),
  // Anyone who reaches the server directly could name any host in these headers: opt-in.
  TRUST_PROXY: onOff,
  JWT_SECRET: optionalText,
  JWT_PUBLIC_KEY: optionalText,
  // Keys fetched in the clear could be swapped by anyone on the way: HTTPS, but for this machine.
  JWT_JWKS_URL: httpUrl(
    "https://idp.example.com/.well-known/jwks.json",
    (u) =>
      u.protocol !== "https:" && !LOOPBACK.has(u.hostname)
        ? `expected https (http only for localhost), got "${u.protocol}//${u.host}"`
        : undefined,
  ),
  JWT_ISSUER: optionalText,
  JWT_AUDIENCE: optionalText,
  MAX_FILE_BYTES: positiveInt(10 * 1024 * 1024),
  DEV_SIGN_IN: optionalText.transform((v, ctx) => {
    const mode = v ?? "local";
    if (mode !== "local" && mode !== "any" && mode !== "off") {
      ctx.addIssue({ code: "custom", message: `expected local, any or off, got "${v}"` });
      return z.NEVER;
    }
    return mode;
  }),
  ALLOWED_ORIGINS: optionalText.transform((v, ctx) => {
    const origins = (v ?? "").split(",").map((s) => s.trim().replace(/\/$/, "")).filter(Boolean);
    // Compared with the Origin header as is: anything but scheme://host[:port] never matches.
    for (const origin of origins) {
      let parsed: URL | undefined;
      try {
        parsed = new URL(origin);
      } catch {
        // Reported below.
      }
      if (!parsed || !/^https?:$/.test(parsed.protocol) || parsed.origin !== origin) {
        ctx.addIssue({
          code: "custom",
          message: `"${origin}" is not an origin like https://app.example.com`,
        });
      } else if (parsed.hostname.includes("*")) {
        // URLs take a `*` in a host, but no page's Origin is `https://*.example.com`.
        ctx.addIssue({
          code: "custom",
          message: `"${origin}": a * matches no origin (there are no wildcards); list each origin`,
        });
      }
    }
    return origins;
  }),
  HEARTBEAT_SECONDS: positiveInt(30, MAX_TIMER_SECONDS),
  HISTORY_ON_CONNECT: positiveInt(50),
  REPLAY_LIMIT: positiveInt(1000),
  // Clients renew typing every 2 s (the typed client; the server passes a repeated start on at
  // most once a second): a shorter timeout would end it between renewals, and it would flicker.
  TYPING_TIMEOUT_SECONDS: positiveInt(
    5,
    MAX_TIMER_SECONDS,
    3,
    " (typing is renewed every 2 s: a shorter timeout makes it flicker)",
  ),
  SOCKETIO_PING_INTERVAL_MS: positiveInt(25_000, MAX_TIMER_MS),
  SOCKETIO_PING_TIMEOUT_MS: positiveInt(20_000, MAX_TIMER_MS),
  SOCKETIO_AUTH_TIMEOUT_MS: positiveInt(60_000, MAX_TIMER_MS),
  SOCKETIO_MAX_UNAUTHENTICATED: positiveInt(10_000),
  RATE_LIMIT_PER_SECOND: positiveInt(20),
  SLOW_CONSUMER_BYTES: positiveInt(4 * 1024 * 1024),
  RATE_LIMIT_USER_PER_SECOND: positiveInt(50),
  SOCKETS_PER_USER: positiveInt(100),
  HISTORY_LIMIT: wholeNumber(0, "0 keeps everything"),
  COMMIT_PAUSE_CPU_PERCENT: wholeNumber(
    Math.round(DEFAULT_PAUSE_ABOVE_CPU * 100),
    "0 always pauses",
  ),
  COMMIT_INTERVAL_MS: wholeNumber(DEFAULT_COMMIT_INTERVAL_MS, "0 never pauses", MAX_TIMER_MS),
  FRAME_MEMORY_BUDGET_BYTES: wholeNumber(0, "0 turns the bound off"),
  // Refused rather than cut, as it is no timer: the reserve an operator sized is what they get.
  SPACE_RESERVE_MB: wholeNumber(4, "0 keeps no reserve").transform((v, ctx) => {
    if (v <= MAX_SPACE_RESERVE_MB) return v;
    ctx.addIssue({
      code: "custom",
      message: `expected at most ${MAX_SPACE_RESERVE_MB} (MiB; 0 keeps no reserve), got "${v}"`,
    });
    return z.NEVER;
  }),
  INBOUND_QUEUE_BYTES: positiveInt(0).transform((v) => v === 0 ? undefined : v),
  UPLOAD_MEMORY_BYTES: positiveInt(0).transform((v) => v === 0 ? undefined : v),
  UPLOAD_IDLE_SECONDS: positiveInt(20, MAX_TIMER_SECONDS),
  UPLOAD_TIMEOUT_SECONDS: positiveInt(300, MAX_TIMER_SECONDS),
  UPLOADS_PER_USER: positiveInt(2),
  PRESENCE_TTL_SECONDS: positiveInt(30, MAX_TIMER_SECONDS),
  DATABASE_URL: optionalText,
  DATABASE_POOL_MAX: positiveInt(10),
  DATABASE_TIMEOUT_MS: positiveInt(5_000, MAX_TIMER_MS),
  KV_PATH: optionalText,
  KV_OPEN_WAIT_MS: positiveInt(30_000, MAX_TIMER_MS),
  // A short static admin secret is guessable; the value itself is never echoed back.
  ADMIN_TOKEN: optionalText.refine((v) => v === undefined || v.length >= 16, {
    message: "expected at least 16 characters",
  }),
  CHAT_PATH_PROTOCOL: z.string().trim().optional().transform((v, ctx) => {
    if (v === undefined || v === "" || v === "conversations") return "conversations" as const;
    if (v === "rooms") return "rooms" as const;
    ctx.addIssue({ code: "custom", message: `expected "conversations" or "rooms", got "${v}"` });
    return z.NEVER;
  }),
});

/** The server's settings. */
export interface Config {
  /** TCP port; 0 picks a free one. */
  port: number;
  /** Interface to listen on. */
  host: string;
  /** Root of every piece of local state (KV file, media, directory, dev secret). */
  dataDir: string;
  /** Where attachment files are written. */
  mediaDir: string;
  /**
   * Who the development sign-in (`POST /dev/token`, only without a JWT key) answers: requests
   * from this machine that no proxy forwarded (`local`), everyone (`any`), or nobody (`off`).
   */
  devSignIn: "local" | "any" | "off";
  /** Base of absolute file URLs; from the request's Host (see `trustProxy`) when unset. */
  publicUrl?: string;
  /**
   * Whether file URLs (without PUBLIC_URL) come from what a reverse proxy says it was asked for
   * (`Forwarded`, else `X-Forwarded-Proto` / `X-Forwarded-Host`) rather than from `Host`. Never
   * the server's own origin, which a page could otherwise name itself (see `trustedOrigin`).
   */
  trustProxy: boolean;
  /** HS256 shared secret. */
  jwtSecret?: string;
  /** PEM public key for RS256, or ES256, ES384 or ES512 by its curve. */
  jwtPublicKey?: string;
  /** JWKS endpoint. */
  jwtJwksUrl?: string;
  /** Required `iss`, when set. */
  jwtIssuer?: string;
  /** Required `aud`, when set. */
  jwtAudience?: string;
  /** Largest decoded attachment in bytes. */
  maxFileBytes: number;
  /** Origins allowed to open sockets; empty allows any. */
  allowedOrigins: string[];
  /** Seconds of silence before a ping, and again before a silent peer is dropped. */
  heartbeatSeconds: number;
  /** How many recent messages the chat-rooms protocol replays on connect. */
  historyOnConnect: number;
  /** Most messages one native join replays after `since`; older ones are left to `history`. */
  replayLimit: number;
  /** A socket whose unsent outbound bytes exceed this is closed as a slow consumer (4008). */
  slowConsumerBytes: number;
  /** Sustained inbound frames per second per connection (bursts up to twice that). */
  rateLimitPerSecond: number;
  /** Sustained inbound frames per second per user on one isolate; also sockets opened. */
  rateLimitUserPerSecond: number;
  /** Sockets one user may hold at once on one isolate, over every route. */
  socketsPerUser: number;
  /** Messages kept per room, oldest dropped first; 0 keeps everything. */
  historyLimit: number;
  /**
   * Process CPU, as a share of one core (`COMMIT_PAUSE_CPU_PERCENT` / 100), above which commits
   * start at least `commitIntervalMs` apart so that more sends share one commit and its fsync.
   */
  commitPauseAboveCpu: number;
  /** Shortest time between the starts of two commits while pausing, ms; 0 never pauses. */
  commitIntervalMs: number;
  /**
   * Bytes Deno may keep, per isolate, for the largest frames of open sockets before the quietest
   * of them are closed (1001; Socket.IO: a close without a code) to free it; 0 (the default)
   * leaves it unbounded, since not every protocol's clients reconnect.
   */
  frameMemoryBudgetBytes: number;
  /**
   * MiB of the file kept beside a local KV file and deleted when the volume fills up, so that
   * Deno KV's expiry sweep (which ends the process when its write fails) has room; 0 keeps none.
   */
  spaceReserveMb: number;
  /**
   * Bytes of received frames one socket may have waiting to be handled before it is closed
   * (1008; Socket.IO: the session ends); unset, four of the largest frames, and never under one
   * largest frame and 64 KiB.
   */
  inboundQueueBytes?: number;
  /** Bytes of API uploads one isolate reads at once (default: four of the largest). */
  uploadMemoryBytes?: number;
  /** Seconds an API upload may send nothing before it is ended with 408. */
  uploadIdleSeconds: number;
  /** Seconds an API upload's body may take in all before it is ended with 408. */
  uploadTimeoutSeconds: number;
  /** API uploads one user may have under way at once on one isolate; past it 429. */
  uploadsPerUser: number;
  /** Socket.IO: milliseconds between server pings. */
  socketIoPingIntervalMs: number;
  /** Socket.IO: milliseconds a client has to answer a ping before it is dropped. */
  socketIoPingTimeoutMs: number;
  /** Socket.IO: milliseconds a connection may stay without authenticating before it is closed. */
  socketIoAuthTimeoutMs: number;
  /** Socket.IO, per isolate: connections not yet authenticated past which handshakes get 503. */
  socketIoMaxUnauthenticated: number;
  /** A typing state not renewed within this many seconds ends by itself. */
  typingTimeoutSeconds: number;
  /** Presence entries lapse this long after their last renewal (a crashed isolate's users leave). */
  presenceTtlSeconds: number;
  /** Directory database: a path, `sqlite:` URL or `postgres://` URL. */
  databaseUrl?: string;
  /** Most connections of each isolate's Postgres pool. */
  databasePoolMax: number;
  /**
   * Milliseconds a Postgres connection or query may take before it fails; on SQLite, how long a
   * statement waits for another process's lock.
   */
  databaseTimeoutMs: number;
  /** Deno KV location: a path, `:memory:`, or a remote KV URL; DATA_DIR/chat.kv by default. */
  kvPath: string;
  /** How long a start waits for a KV file another process holds locked before it gives up. */
  kvOpenWaitMs: number;
  /** Static admin Bearer token for the REST API. */
  adminToken?: string;
  /** Which protocol `/ws/chat/<x>/` speaks. */
  chatPathProtocol: "conversations" | "rooms";
}

/** `path` with every link in its existing part followed; the rest as written. */
function realPath(path: string): string {
  const rest: string[] = [];
  let at = resolve(path);
  while (true) {
    try {
      return join(Deno.realPathSync(at), ...rest);
    } catch {
      const parent = dirname(at);
      if (parent === at) return resolve(path);
      rest.unshift(basename(at));
      at = parent;
    }
  }
}

/**
 * The JWT key settings that are set, in the order the verifier takes them: tokens are checked
 * with the first, the others are ignored.
 */
export function jwtKeySources(
  config: Pick<Config, "jwtJwksUrl" | "jwtPublicKey" | "jwtSecret">,
): ("JWT_JWKS_URL" | "JWT_PUBLIC_KEY" | "JWT_SECRET")[] {
  return ([
    ["JWT_JWKS_URL", config.jwtJwksUrl],
    ["JWT_PUBLIC_KEY", config.jwtPublicKey],
    ["JWT_SECRET", config.jwtSecret],
  ] as const).filter(([, value]) => value).map(([name]) => name);
}

/** False for what is not a file: an in-memory store or a URL. */
export function isLocalPath(path: string): boolean {
  return path !== ":memory:" && !/^[a-z][a-z0-9+.-]+:\/\//i.test(path);
}

/** The SQLite file a DATABASE_URL names, if it names one (read as the directory reads it). */
function localDatabaseFile(url: string | undefined, dataDir: string): string | undefined {
  // Unset: the default file is in DATA_DIR, checked on its own.
  if (!url?.trim()) return undefined;
  try {
    const target = parseDatabaseUrl(url, dataDir);
    return target.dialect === "sqlite" && isLocalPath(target.path) ? target.path : undefined;
  } catch {
    // A malformed URL stops the server when the directory opens, with its own message.
    return undefined;
  }
}

/** The Error listing every bad value of a configuration that did not parse. */
function invalidConfiguration(error: z.ZodError): Error {
  const lines = error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
  return new Error(`Invalid configuration:\n${lines.join("\n")}`);
}

/**
 * PORT and HOST alone, read and refused as {@link loadConfig} reads them, for a launcher that
 * hands them to `deno serve` (whose own refusal names its flag, not the setting).
 */
export function loadListenAddress(
  env: Record<string, string | undefined>,
): Pick<Config, "port" | "host"> {
  const parsed = EnvSchema.pick({ PORT: true, HOST: true }).safeParse(env);
  if (!parsed.success) throw invalidConfiguration(parsed.error);
  return { port: parsed.data.PORT, host: parsed.data.HOST };
}

/**
 * A HOST as a URL (or `deno serve --host`) takes it: an IPv6 address in brackets, whether or not
 * it came in them; any other as it is.
 */
export function urlHost(host: string): string {
  const bare = host.replace(/^\[(.*)\]$/, "$1");
  return bare.includes(":") ? `[${bare}]` : bare;
}

/** Reads the configuration from an environment map; throws an Error listing every bad value. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) throw invalidConfiguration(parsed.error);
  const e = parsed.data;
  // The handshake hands both to the client, whose timer waits their sum: past 2^31 - 1 ms a
  // timer fires at once, and every session would end at its first ping.
  if (e.SOCKETIO_PING_INTERVAL_MS + e.SOCKETIO_PING_TIMEOUT_MS > MAX_TIMER_MS) {
    throw new Error(
      "Invalid configuration:\n  SOCKETIO_PING_INTERVAL_MS + SOCKETIO_PING_TIMEOUT_MS: expected " +
        "at most 2147483647 ms together (about 24.8 days, the longest a timer holds), got " +
        `${e.SOCKETIO_PING_INTERVAL_MS + e.SOCKETIO_PING_TIMEOUT_MS}`,
    );
  }
  const mediaDir = e.MEDIA_DIR ? resolve(e.MEDIA_DIR) : join(e.DATA_DIR, "media");
  const kvPath = e.KV_PATH ?? join(e.DATA_DIR, DEFAULT_KV_FILE);
  // Everything under the media directory is served to anyone: the data directory holds the
  // development secret and the SQLite files, the KV file every message. Compared with links
  // followed, as the media route follows them.
  const media = realPath(mediaDir);
  const served = (path: string) => {
    const from = relative(media, realPath(path));
    return from === "" || (from !== ".." && !from.startsWith(`..${sep}`) && !isAbsolute(from));
  };
  const sqliteFile = localDatabaseFile(e.DATABASE_URL, e.DATA_DIR);
  const exposed = [
    ...(served(e.DATA_DIR) ? [`DATA_DIR (${e.DATA_DIR})`] : []),
    ...(isLocalPath(kvPath) && served(kvPath) ? [`KV_PATH (${kvPath})`] : []),
    ...(sqliteFile && served(sqliteFile) ? [`DATABASE_URL (${sqliteFile})`] : []),
  ];
  if (exposed.length > 0) {
    throw new Error(
      `Invalid configuration:\n  MEDIA_DIR: ${mediaDir} is served over HTTP and must not contain ${
        exposed.join(" or ")
      }`,
    );
  }
  return {
    port: e.PORT,
    host: e.HOST,
    dataDir: e.DATA_DIR,
    mediaDir,
    devSignIn: e.DEV_SIGN_IN,
    publicUrl: e.PUBLIC_URL,
    trustProxy: e.TRUST_PROXY,
    jwtSecret: e.JWT_SECRET,
    jwtPublicKey: e.JWT_PUBLIC_KEY,
    jwtJwksUrl: e.JWT_JWKS_URL,
    jwtIssuer: e.JWT_ISSUER,
    jwtAudience: e.JWT_AUDIENCE,
    maxFileBytes: e.MAX_FILE_BYTES,
    allowedOrigins: e.ALLOWED_ORIGINS,
    heartbeatSeconds: e.HEARTBEAT_SECONDS,
    historyOnConnect: e.HISTORY_ON_CONNECT,
    replayLimit: e.REPLAY_LIMIT,
    typingTimeoutSeconds: e.TYPING_TIMEOUT_SECONDS,
    socketIoPingIntervalMs: e.SOCKETIO_PING_INTERVAL_MS,
    socketIoPingTimeoutMs: e.SOCKETIO_PING_TIMEOUT_MS,
    socketIoAuthTimeoutMs: e.SOCKETIO_AUTH_TIMEOUT_MS,
    socketIoMaxUnauthenticated: e.SOCKETIO_MAX_UNAUTHENTICATED,
    rateLimitPerSecond: e.RATE_LIMIT_PER_SECOND,
    slowConsumerBytes: e.SLOW_CONSUMER_BYTES,
    rateLimitUserPerSecond: e.RATE_LIMIT_USER_PER_SECOND,
    socketsPerUser: e.SOCKETS_PER_USER,
    historyLimit: e.HISTORY_LIMIT,
    commitPauseAboveCpu: e.COMMIT_PAUSE_CPU_PERCENT / 100,
    commitIntervalMs: e.COMMIT_INTERVAL_MS,
    frameMemoryBudgetBytes: e.FRAME_MEMORY_BUDGET_BYTES,
    spaceReserveMb: e.SPACE_RESERVE_MB,
    inboundQueueBytes: e.INBOUND_QUEUE_BYTES,
    uploadMemoryBytes: e.UPLOAD_MEMORY_BYTES,
    uploadIdleSeconds: e.UPLOAD_IDLE_SECONDS,
    uploadTimeoutSeconds: e.UPLOAD_TIMEOUT_SECONDS,
    uploadsPerUser: e.UPLOADS_PER_USER,
    presenceTtlSeconds: e.PRESENCE_TTL_SECONDS,
    databaseUrl: e.DATABASE_URL,
    databasePoolMax: e.DATABASE_POOL_MAX,
    databaseTimeoutMs: e.DATABASE_TIMEOUT_MS,
    kvPath,
    kvOpenWaitMs: e.KV_OPEN_WAIT_MS,
    adminToken: e.ADMIN_TOKEN,
    chatPathProtocol: e.CHAT_PATH_PROTOCOL,
  };
}
