/**
 * What the log says of failures that repeat. A store that is down (KV taking no writes, the
 * directory not answering, the media volume refusing files) fails every frame and request that
 * needs it: its outage is logged once, what it refused is counted, and a line says when it
 * answers again. Any other unexpected error is logged in full a few times a minute per message,
 * and the rest of that minute's are counted in one line. An outage on a full disk would
 * otherwise write a stack trace per refused frame onto the disk that is full.
 *
 * Nothing here starts a timer: `tick` (main.ts calls it every second) logs what a quiet spell
 * leaves owed, an outage's end and a minute's count; without it they are logged at the next
 * failure or answer.
 */

import { type Directory, DirectoryUnavailable } from "./directory.ts";

/** A store whose outage is logged once: KV, the directory, the media volume. */
export type Store = "kv" | "directory" | "media";

/** How each store's outage, and its end, read in the log. */
const OUTAGE_TEXT: Record<Store, { down: string; up: string }> = {
  kv: { down: "KV does not accept writes", up: "KV accepts writes again" },
  directory: { down: "the directory does not answer", up: "the directory answers again" },
  media: {
    down: "the media volume does not accept files",
    up: "the media volume accepts files again",
  },
};

/** Errors of one site and message logged in full in a minute; the rest are counted. */
export const FULL_PER_MINUTE = 3;

/** How long an outage that answered must refuse nothing before it is logged as over. */
export const SETTLE_MS = 2_000;

/** How often a long outage says it still refuses, and how much. */
export const STILL_EVERY_MS = 10 * 60_000;

/** Messages counted apart at once; beyond it, a site's other messages are counted together. */
const MAX_COUNTED = 200;

/**
 * Connection-class failures of the directory: network errors, Postgres's lost connections (08,
 * not 08P01, a protocol error that stays), its resources running out (disk full, out of memory
 * or lock table, too many connections), cancelled or shut down.
 */
const UNAVAILABLE_CODES =
  /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EPIPE|0800[0-46]|53[123]00|57014|57P0[1-3])$/;

/**
 * True for an error that says the directory could not be reached or answer in time: among them
 * a SQLite write lock another process (the application sharing the file) held past
 * DATABASE_TIMEOUT_MS ({@link DirectoryUnavailable}). The API answers these with 503.
 */
export function directoryUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const { code } = err as { code?: unknown };
  if (typeof code === "string" && UNAVAILABLE_CODES.test(code)) return true;
  if (err instanceof DirectoryUnavailable) return true;
  return /^(Query read timeout|timeout exceeded when trying to connect|Connection terminated)/i
    .test(err.message);
}

/**
 * SQLite's answers when it takes no write: a full or read-only volume, another's lock. Reads
 * still pass meanwhile.
 */
const SQLITE_REFUSED =
  /database or disk is full|disk I\/O error|readonly database|read-only file system|no space left|database is locked|SQLITE_(FULL|IOERR|READONLY|BUSY)/i;

/**
 * The store whose outage `err` is, if it is one: the directory's (see
 * {@link directoryUnavailable}, a connection the network or the OS refused, or its SQLite file
 * on a full volume) or KV's (Deno KV's SQLite refusing writes). The media volume's outage is
 * not told by its error: an OS code such as EACCES is as much pg's, for a unix socket it may
 * not open, so the media store says so itself ({@link FailureLog.refused}).
 */
export function unavailableStore(err: unknown): Store | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    const { code, syscall, address } = e as {
      code?: unknown;
      syscall?: unknown;
      address?: unknown;
    };
    if (directoryUnavailable(e)) return "directory";
    // node:net's errors (pg's, the directory's only network client): `connect EACCES
    // /var/run/postgresql/.s.PGSQL.5432`, a firewall's `connect EPERM`.
    if (syscall === "connect" || syscall === "getaddrinfo" || typeof address === "string") {
      return "directory";
    }
    // node:sqlite's errors carry this code; Deno KV's (TypeErrors) carry none.
    if (code === "ERR_SQLITE_ERROR") {
      return SQLITE_REFUSED.test(e.message) ? "directory" : undefined;
    }
    if (code === undefined && SQLITE_REFUSED.test(e.message)) return "kv";
  }
  return undefined;
}

/**
 * True when `err` refuses writes while reads still pass (another's lock; a full or read-only
 * volume under SQLite or KV; Postgres's disk full, 53100), so that only a write says it is over.
 */
function writesRefused(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    if (e instanceof DirectoryUnavailable || (e as { code?: unknown }).code === "53100") {
      return true;
    }
    if (SQLITE_REFUSED.test(e.message)) return true;
  }
  return false;
}

/** `err` in one line: its name and message, and its cause's, cut short. */
function brief(err: unknown): string {
  const one = (e: unknown) => {
    const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return (text.split("\n", 1)[0] ?? "").slice(0, 200);
  };
  const cause = err instanceof Error && err.cause !== undefined
    ? ` (cause: ${one(err.cause)})`
    : "";
  return one(err) + cause;
}

/** One store's outage under way. */
interface Outage {
  /** The log's clock at its first refusal. */
  since: number;
  /** Refusals, the first included. */
  refused: number;
  /** Refusals since the last line about it, and that line's time. */
  sinceLine: number;
  lineAt: number;
  /** The log's clock at its latest refusal. */
  lastRefusal: number;
  /** Only a write's answer ends it (another's lock, a full disk: reads pass all along). */
  writes: boolean;
  /** The log's clock at an answer since the latest refusal, which ends it once settled. */
  answeredAt?: number;
}

/** One message's errors in the current minute. */
interface Repeat {
  /** The log's clock when the minute began. */
  since: number;
  /** Errors of the minute, logged in full or not. */
  count: number;
  /** The site and message, for the count's line. */
  site: string;
  what: string;
}

/** Options of a {@link FailureLog}, for tests. */
export interface FailureLogOptions {
  /** Where lines go; console.error by default. */
  log?: (...data: unknown[]) => void;
  /**
   * The clock; by default the wall clock at the isolate's start plus the monotonic time since,
   * which a step of the wall clock (NTP) does not move: its minutes and settling stay minutes.
   */
  now?: () => number;
}

/** Rewrites a line before it is logged: stars out secrets (see {@link FailureLog.redactWith}). */
export type Redact = (text: string) => string;

/** The log of one isolate's failures; see the module comment. */
export class FailureLog {
  #log: (...data: unknown[]) => void;
  #now: () => number;
  #redact?: Redact;
  #outages = new Map<Store, Outage>();
  #repeats = new Map<string, Repeat>();
  #watchers = new Set<(store: Store, err: unknown) => void>();

  /** Logs through `options.log` by `options.now`'s clock. */
  constructor(options: FailureLogOptions = {}) {
    const log = options.log ?? ((...data) => console.error(...data));
    // An error's text (a driver's message, its stack) may quote a secret the configuration
    // holds, a database URL's password: with a redactor, errors are logged as redacted text.
    this.#log = (...data) => {
      const redact = this.#redact;
      if (!redact) return log(...data);
      log(...data.map((d) => redact(typeof d === "string" ? d : Deno.inspect(d))));
    };
    this.#now = options.now ?? (() => performance.timeOrigin + performance.now());
  }

  /** Passes every line logged from now on through `redact` (main.ts: the database URL's). */
  redactWith(redact: Redact): void {
    this.#redact = redact;
  }

  /**
   * Logs `err`, which failed what `site` names (`where` adds the protocol, room and user): as
   * its store's outage when it is one, otherwise in full up to {@link FULL_PER_MINUTE} times a
   * minute per site and message, counted beyond.
   */
  failed(site: string, err: unknown, where?: string): void {
    const store = unavailableStore(err);
    if (store) return this.refused(store, err, site, where);
    this.tick();
    let what = brief(err);
    let key = `${site}\n${what}`;
    // Messages that name ids are many: past the bound, one count per site (the sites are the
    // code's, and the API's routes).
    if (!this.#repeats.has(key) && this.#repeats.size >= MAX_COUNTED) {
      what = "errors of other messages";
      key = `${site}\n`;
    }
    let repeat = this.#repeats.get(key);
    if (!repeat) {
      repeat = { since: this.#now(), count: 0, site, what };
      this.#repeats.set(key, repeat);
    }
    if (++repeat.count > FULL_PER_MINUTE) return;
    this.#log(`${site}${where ? ` (${where})` : ""}:`, err);
  }

  /**
   * Calls `watcher` with each refusal of a store's outage (main.ts: KV's full disk releases the
   * space reserve at once); returns what stops it.
   */
  watchRefusals(watcher: (store: Store, err: unknown) => void): () => void {
    this.#watchers.add(watcher);
    return () => this.#watchers.delete(watcher);
  }

  /** Counts a refusal of `store`'s outage, logging the outage when it begins, or now and then. */
  refused(store: Store, err: unknown, site: string, where?: string): void {
    for (const watcher of this.#watchers) watcher(store, err);
    this.tick();
    const now = this.#now();
    const outage = this.#outages.get(store);
    if (!outage) {
      this.#outages.set(store, {
        since: now,
        refused: 1,
        sinceLine: 0,
        lineAt: now,
        lastRefusal: now,
        writes: writesRefused(err),
      });
      this.#log(
        `outage: ${OUTAGE_TEXT[store].down}: ${brief(err)}. What needs it is refused, and ` +
          `counted rather than logged, until it does (first: ${site}${where ? ` (${where})` : ""})`,
      );
      return;
    }
    outage.refused++;
    outage.sinceLine++;
    outage.lastRefusal = now;
    outage.answeredAt = undefined;
    if (writesRefused(err)) outage.writes = true;
    if (now - outage.lineAt >= STILL_EVERY_MS) {
      this.#log(
        `outage: ${OUTAGE_TEXT[store].down} still (${brief(err)}): ${outage.sinceLine} refused ` +
          `in the last ${minutes(now - outage.lineAt)}, ${outage.refused} since ${
            new Date(outage.since).toISOString()
          }`,
      );
      outage.lineAt = now;
      outage.sinceLine = 0;
    }
  }

  /**
   * Tells that `store` answered (`read`: a read did, which does not end an outage of refused
   * writes, such as another's lock or a full disk): an outage under way is logged as over once
   * nothing more is refused for {@link SETTLE_MS}.
   */
  answered(store: Store, how: "read" | "write" = "write"): void {
    const outage = this.#outages.get(store);
    if (!outage || (how === "read" && outage.writes)) return;
    outage.answeredAt ??= this.#now();
    this.#settle(store, outage);
  }

  /** Logs what time has made due: outages that answered and settled, minutes' counts. */
  tick(): void {
    for (const [store, outage] of this.#outages) this.#settle(store, outage);
    const now = this.#now();
    for (const [key, repeat] of this.#repeats) {
      if (now - repeat.since < 60_000) continue;
      this.#repeats.delete(key);
      const more = repeat.count - FULL_PER_MINUTE;
      if (more > 0) {
        this.#log(
          `${repeat.site}: ${more} more in the minute after ${
            new Date(repeat.since).toISOString()
          }, not logged one by one: ${repeat.what}`,
        );
      }
    }
  }

  /**
   * Logs what a stop would otherwise lose: the counts of the minute under way, and each outage
   * still under way with what it refused.
   */
  flush(): void {
    const now = this.#now();
    for (const [store, outage] of this.#outages) {
      this.#log(
        `outage: ${OUTAGE_TEXT[store].down} still at stop: ${outage.refused} refused since ${
          new Date(outage.since).toISOString()
        }`,
      );
    }
    this.#outages.clear();
    for (const repeat of this.#repeats.values()) {
      const more = repeat.count - FULL_PER_MINUTE;
      if (more > 0) {
        this.#log(
          `${repeat.site}: ${more} more since ${new Date(repeat.since).toISOString()} (${
            minutes(now - repeat.since)
          } before the stop), not logged one by one: ${repeat.what}`,
        );
      }
    }
    this.#repeats.clear();
  }

  #settle(store: Store, outage: Outage): void {
    const now = this.#now();
    if (outage.answeredAt === undefined || now - outage.lastRefusal < SETTLE_MS) return;
    this.#outages.delete(store);
    this.#log(
      `outage over: ${OUTAGE_TEXT[store].up} after ${minutes(outage.answeredAt - outage.since)}; ` +
        `${outage.refused} refused meanwhile`,
    );
  }
}

/** A duration as the log says it: seconds under two minutes, then minutes. */
function minutes(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

/** This isolate's failure log. */
export const failureLog: FailureLog = new FailureLog();

/** Directory methods that only read: their answer does not end an outage of refused writes. */
const DIRECTORY_READS = new Set<string>(
  [
    "ping",
    "getUser",
    "userRooms",
    "getRoom",
    "listRooms",
    "listParticipants",
    "getParticipant",
    "roomAccess",
  ] satisfies (keyof Directory)[],
);

/**
 * `directory` telling `log` of each answer it gives, which ends an outage of the directory (see
 * {@link FailureLog.answered}): the directory has no other way of saying it is back.
 */
export function answeringDirectory(
  directory: Directory,
  log: FailureLog = failureLog,
): Directory {
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(directory, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== "function") return value;
      let method = wrapped.get(prop);
      if (method === undefined) {
        // Called on the directory itself, whose private fields the proxy does not have.
        const how = DIRECTORY_READS.has(String(prop)) ? "read" : "write";
        method = (...args: unknown[]) => {
          const result = value.apply(target, args);
          if (result instanceof Promise && prop !== "close") {
            result.then(() => log.answered("directory", how), () => {});
          }
          return result;
        };
        wrapped.set(prop, method);
      }
      return method;
    },
  });
}
