/**
 * A short log of events under one KV key, which servers of other processes follow: each entry
 * has a seq that only grows and the process it came from, and the key keeps the newest few.
 */

/** One event in a log. */
export interface LogEntry<E> {
  /** Its place in the log; later entries have higher ones. */
  seq: number;
  /** The process that wrote it. */
  origin: string;
  /** What happened. */
  event: E;
}

/** The value under a log's key. */
export interface Log<E> {
  /** The seq of the newest entry. */
  seq: number;
  /** The newest entries, oldest first. */
  entries: LogEntry<E>[];
}

/** True for a value shaped as a log. */
export function isLog<E>(value: unknown): value is Log<E> {
  return typeof value === "object" && value !== null &&
    typeof (value as Log<E>).seq === "number" && Array.isArray((value as Log<E>).entries);
}

/**
 * Appends `events` from `origin` to the log under `key`, keeping its newest `kept` entries
 * (and the key for `expireIn` ms, when given); retries while other writers get there first.
 */
export async function appendToLog<E>(
  kv: Deno.Kv,
  key: Deno.KvKey,
  origin: string,
  events: E[],
  options: { kept: number; expireIn?: number },
): Promise<void> {
  for (let attempt = 0;; attempt++) {
    const current = await kv.get<Log<E>>(key);
    const log: Log<E> = isLog<E>(current.value) ? current.value : { seq: 0, entries: [] };
    // After an expired key a new log starts above any seq the old one reached.
    let seq = Math.max(log.seq, Date.now() * 1000);
    const added = events.map((event) => ({ seq: ++seq, origin, event }));
    const value: Log<E> = { seq, entries: [...log.entries, ...added].slice(-options.kept) };
    const done = await kv.atomic().check(current).set(
      key,
      value,
      options.expireIn === undefined ? undefined : { expireIn: options.expireIn },
    ).commit();
    if (done.ok) return;
    if (attempt >= 20) throw new Error(`${key.join("/")}: too many concurrent writers`);
  }
}

/**
 * The entries of `value` after `seen` written by processes other than `origin`, and the seq now
 * seen (`seen` when the value is no newer log).
 */
export function unseen<E>(
  value: unknown,
  seen: number,
  origin: string,
): { entries: LogEntry<E>[]; seen: number } {
  if (!isLog<E>(value) || value.seq <= seen) return { entries: [], seen };
  return {
    entries: value.entries.filter((e) => e.seq > seen && e.origin !== origin),
    seen: value.seq,
  };
}
