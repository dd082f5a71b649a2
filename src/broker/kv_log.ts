/**
 * Logs of events in KV that servers of other processes follow: each log is a prefix holding a
 * head key (the newest entry's seq) and one key per entry. Writers of one process queue their
 * events and write them a commit at a time, so a burst is a few commits, not a race between
 * hundreds; followers watch or read the head and list the entries committed since the last head
 * they handled, so a burst however large is read whole. A log whose keys expired starts over at
 * its next writer's clock, which may put it below the old one: followers order heads by their
 * versionstamps (KV's commit order), not by seq.
 */

import { commitUntilChecked } from "../store/kv_reads.ts";

/** One event in a log. */
export interface LogEntry<E> {
  /** Its place in the log; each entry's is one more than the one before it. */
  seq: number;
  /** The process that wrote it. */
  origin: string;
  /** When it was written, ms since the epoch, on the writer's clock. */
  at: number;
  /** What happened. */
  event: E;
}

/** The key of a log's head (the seq of its newest entry). */
export const logHead = (prefix: Deno.KvKey): Deno.KvKey => [...prefix, "head"];

const entryKey = (prefix: Deno.KvKey, seq: number): Deno.KvKey => [...prefix, "e", seq];

/** Entries per commit: within KV's 1,000 mutations and 80 KiB of keys for short prefixes. */
const MAX_PER_COMMIT = 400;

/** Bytes of events (as JSON) per commit: KV refuses a commit over 800 KiB in all. */
const MAX_COMMIT_BYTES = 512 * 1024;

/** Conflicting commits (another process writing the same log) a write sits out before it fails. */
const MAX_ATTEMPTS = 100;

interface Queued<E> {
  event: E;
  /** The event's size as JSON, an estimate of its stored size. */
  size: number;
  done: (error?: unknown) => void;
}

/** Appends events to logs, one commit at a time per log, each commit taking all that waits. */
export class LogWriter<E> {
  #kv: Deno.Kv;
  #origin: string;
  #expireIn?: number;
  /** Events waiting per log (by prefix), with their writers' callbacks. */
  #queued = new Map<string, Queued<E>[]>();
  /** The logs' writes under way, which a stop waits out before it closes the KV. */
  #draining = new Set<Promise<void>>();

  /**
   * Writes through `kv` as `origin`; with `expireIn` (ms) a log's keys go away that long after
   * they were written (a log that stays quiet then starts over).
   */
  constructor(kv: Deno.Kv, origin: string, options: { expireIn?: number } = {}) {
    this.#kv = kv;
    this.#origin = origin;
    this.#expireIn = options.expireIn;
  }

  /** Appends `event` to the log at `prefix`; resolves once it is committed. */
  append(prefix: Deno.KvKey, event: E): Promise<void> {
    return new Promise((resolve, reject) => {
      const id = JSON.stringify(prefix);
      const done = (error?: unknown) => error === undefined ? resolve() : reject(error);
      const item = { event, size: JSON.stringify(event)?.length ?? 0, done };
      const queue = this.#queued.get(id);
      if (queue) {
        queue.push(item);
        return;
      }
      const fresh = [item];
      this.#queued.set(id, fresh);
      const drain = this.#drain(id, prefix, fresh).catch(() => {});
      this.#draining.add(drain);
      drain.finally(() => this.#draining.delete(drain));
    });
  }

  /**
   * Resolves once every event appended so far is committed or failed: a process that stops
   * must not close the KV under them (a leave lost so would leave its user shown elsewhere).
   */
  async idle(): Promise<void> {
    while (this.#draining.size > 0) await Promise.all(this.#draining);
  }

  async #drain(id: string, prefix: Deno.KvKey, queue: Queued<E>[]): Promise<void> {
    while (queue.length > 0) {
      let count = 0;
      let bytes = 0;
      while (count < queue.length && count < MAX_PER_COMMIT) {
        if (count > 0 && bytes + queue[count].size > MAX_COMMIT_BYTES) break;
        bytes += queue[count++].size;
      }
      await this.#write(prefix, queue.splice(0, count));
    }
    this.#queued.delete(id);
  }

  /** Commits `batch`; one KV refuses as too large is halved, so that only an event it cannot hold fails. */
  async #write(prefix: Deno.KvKey, batch: Queued<E>[]): Promise<void> {
    try {
      await this.#commit(prefix, batch.map((b) => b.event));
    } catch (err) {
      // Only a refusal KV makes before writing anything: after another error the commit may
      // have landed, and writing its halves again would log their events twice.
      if (batch.length > 1 && isRefusedAsTooLarge(err)) {
        const half = Math.ceil(batch.length / 2);
        await this.#write(prefix, batch.slice(0, half));
        await this.#write(prefix, batch.slice(half));
        return;
      }
      for (const b of batch) b.done(err ?? new Error("log write failed"));
      return;
    }
    for (const b of batch) b.done();
  }

  async #commit(prefix: Deno.KvKey, events: E[]): Promise<void> {
    const options = this.#expireIn === undefined ? undefined : { expireIn: this.#expireIn };
    // Another process writing the same log, or another isolate holding the file's write lock,
    // is waited out, not a failure.
    await commitUntilChecked(
      async () => {
        const head = await this.#kv.get<number>(logHead(prefix));
        // A log that expired starts over; on a clock behind its last writer's, below where that
        // one ended, which followers see by the head's versionstamp.
        const first = typeof head.value === "number" ? head.value + 1 : Date.now() * 1000;
        const at = Date.now();
        const op = this.#kv.atomic().check(head);
        events.forEach((event, i) => {
          const entry: LogEntry<E> = { seq: first + i, origin: this.#origin, at, event };
          op.set(entryKey(prefix, first + i), entry, options);
        });
        return { op: op.set(logHead(prefix), first + events.length - 1, options) };
      },
      () => `${prefix.join("/")}: too many concurrent writers`,
      MAX_ATTEMPTS,
    );
  }
}

/** True for KV's refusal of a commit over its limits (sizes, mutation count): nothing was written. */
function isRefusedAsTooLarge(err: unknown): boolean {
  return err instanceof TypeError && /too large|too many/i.test(err.message);
}

/** A log's head as a watch or a read found it. */
interface Head {
  seq: number;
  /** Null for no head: every entry to come is newer. */
  versionstamp: string | null;
}

interface Followed {
  prefix: Deno.KvKey;
  /** The newest head handled; undefined until the head is first heard. */
  seen?: Head;
  /** With no `seen` yet, entries written from this time on (writer's clock, ms) are handed on. */
  since?: number;
  /** The newest head heard. */
  target?: Head;
  reading: boolean;
}

/** The entries of one read of a log (other processes' only, in order), and where one is among them. */
export interface ReadEntries<E> {
  entries: readonly LogEntry<E>[];
  index: number;
}

/**
 * Entries a first read lists at a time, going back from the head until one written before
 * following began: a follower most often starts within a few entries of the head.
 */
const FIRST_READ_PAGE = 64;

/** The most entries a later read lists at a time: within KV's limit of 1,000. */
const MAX_READ_PAGE = 500;

/**
 * Follows logs: told each head a watch or a read found, it lists the entries committed since the
 * last head it handled and hands on those other processes wrote, in order.
 */
export class LogReader<E> {
  #kv: Deno.Kv;
  #origin: string;
  #onEntry: (prefix: Deno.KvKey, entry: LogEntry<E>, read: ReadEntries<E>) => void;
  #followed = new Map<string, Followed>();

  /**
   * Lists through `kv`, skips entries `origin` wrote, and hands the others to `onEntry`, each
   * with the entries of the same read (what came after it in the log is in hand already).
   */
  constructor(
    kv: Deno.Kv,
    origin: string,
    onEntry: (prefix: Deno.KvKey, entry: LogEntry<E>, read: ReadEntries<E>) => void,
  ) {
    this.#kv = kv;
    this.#origin = origin;
    this.#onEntry = onEntry;
  }

  /**
   * Starts following the log at `prefix`. The first head heard is where it starts: with
   * `since` (ms since the epoch), the entries written from then on before it are handed on too,
   * so that one written between this call and that first read is not lost.
   */
  follow(prefix: Deno.KvKey, since?: number): void {
    const id = JSON.stringify(prefix);
    if (!this.#followed.has(id)) {
      this.#followed.set(id, { prefix, since, reading: false });
    }
  }

  /** Stops following the log at `prefix`. */
  forget(prefix: Deno.KvKey): void {
    this.#followed.delete(JSON.stringify(prefix));
  }

  /**
   * Takes a followed log's head as a watch or a read found it; the entries committed since the
   * last one handled are read. Without `since`, the first head heard (or its absence) is where
   * the log is followed from.
   */
  heard(prefix: Deno.KvKey, head: Deno.KvEntryMaybe<unknown>): Promise<void> {
    const state = this.#followed.get(JSON.stringify(prefix));
    if (!state) return Promise.resolve();
    const seq = typeof head.value === "number" ? head.value : undefined;
    if (state.seen === undefined && state.since === undefined) {
      state.seen = seq === undefined
        ? { seq: 0, versionstamp: null }
        : { seq, versionstamp: head.versionstamp };
      return Promise.resolve();
    }
    // Gone (expired): the log's next head says where it starts over.
    if (seq === undefined || head.versionstamp === null) return Promise.resolve();
    // By commit, not by seq: a read that answered late brings an older head, and a log that
    // expired and started over on a slower clock a newer one with a lower seq.
    const newest = state.target ?? state.seen;
    if (newest && !isAfter(head.versionstamp, newest.versionstamp)) return Promise.resolve();
    state.target = { seq, versionstamp: head.versionstamp };
    if (state.reading) return Promise.resolve();
    return this.#read(state);
  }

  async #read(state: Followed): Promise<void> {
    state.reading = true;
    try {
      while (state.target !== undefined && state.target !== state.seen) {
        const target = state.target;
        const entries = state.seen === undefined
          ? await this.#newest(state.prefix, target.seq, state.since!)
          : await this.#after(state.prefix, state.seen, target);
        // Forgotten meanwhile: nobody here follows the room any more.
        if (this.#followed.get(JSON.stringify(state.prefix)) !== state) return;
        state.seen = target;
        const others = entries.filter((e) => e.origin !== this.#origin);
        for (let index = 0; index < others.length; index++) {
          const entry = others[index];
          try {
            this.#onEntry(state.prefix, entry, { entries: others, index });
          } catch (err) {
            console.error("kv log: handling an entry failed:", err);
          }
        }
      }
    } finally {
      state.reading = false;
    }
  }

  /**
   * The entries up to `head` committed after `seen`, in order (gone ones, expired, are not
   * there). Listed back from the head to the first one `seen` covers, not on from `seen`'s seq:
   * a log that started over since may be below it.
   */
  async #after(prefix: Deno.KvKey, seen: Head, head: Head): Promise<LogEntry<E>[]> {
    const out: LogEntry<E>[] = [];
    // Most often one page: the entries past `seen` in the same log and `seen`'s own, which ends it.
    const expected = head.seq > seen.seq ? head.seq - seen.seq + 1 : FIRST_READ_PAGE;
    const list = this.#kv.list<LogEntry<E>>(
      { start: [...prefix, "e"], end: entryKey(prefix, head.seq + 1) },
      { reverse: true, batchSize: Math.min(expected, MAX_READ_PAGE) },
    );
    for await (const { value, versionstamp } of list) {
      if (!isAfter(versionstamp, seen.versionstamp)) break;
      // Written after `head`, in a log that started over below it: read with its own head.
      if (head.versionstamp !== null && isAfter(versionstamp, head.versionstamp)) continue;
      out.push(value);
    }
    return out.reverse();
  }

  /** Every entry up to `head` written at `since` or later, in order. */
  async #newest(prefix: Deno.KvKey, head: number, since: number): Promise<LogEntry<E>[]> {
    const out: LogEntry<E>[] = [];
    // Paged, not cut at a page: a log first read long after following began (a room's first
    // signals, from a server that came up meanwhile) may hold hundreds written since then.
    const list = this.#kv.list<LogEntry<E>>(
      { start: [...prefix, "e"], end: entryKey(prefix, head + 1) },
      { reverse: true, batchSize: FIRST_READ_PAGE },
    );
    for await (const { value } of list) {
      if (value.at < since) break;
      out.push(value);
    }
    return out.reverse();
  }
}

/** Whether a commit's versionstamp is later than `than`'s (null: none, before every commit). */
function isAfter(versionstamp: string, than: string | null): boolean {
  // Fixed-length hex, so text order is commit order.
  return than === null || versionstamp > than;
}
