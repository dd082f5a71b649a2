/**
 * Follows rooms' head keys with `kv.watch`: the cross-instance bus and the net under the fast
 * path; and, when given a sink for them, the heads of the rooms' signals logs beside their own.
 */

import { KV_KEYS } from "../store/kv_message_store.ts";
import { type Poll, pollEvery } from "./poll.ts";
import { signalsHead } from "./kv_room_signals.ts";

/** Deno KV watches at most 10 keys per call. */
const KEYS_PER_WATCH = 10;

/**
 * How often heads are read where a watch cannot see the commits (other processes on a local KV
 * file): the most a message from there waits, beside the hub's catch-up delay.
 */
export const LOCAL_HEAD_POLL_MS = 50;

/**
 * Watch groups (of ten keys) read in one polling round: 100 rooms with signals, as the server
 * follows them (200 without), 400 reads a second at most. Each server pays that while another
 * process shares its file, however quiet its rooms; README.md gives the latencies it makes.
 */
const POLL_BUCKETS_PER_ROUND = 20;

/** Where the heads of followed rooms' signals logs go. */
export interface SignalsSink {
  /** The room is followed from now on. */
  follow(room: string): void;
  /** The head, as a watch or a read found it (its value null when there is none). */
  heard(room: string, head: Deno.KvEntryMaybe<unknown>): void;
  /** The room is no longer followed. */
  forget(room: string): void;
}

/** Tells the hub about new heads of the rooms it follows. */
export interface HeadWatcher {
  /** Starts following a room's head. */
  add(room: string): void;
  /** Stops following a room's head. */
  remove(room: string): void;
  /** Stops every watch. */
  close(): void;
}

interface Bucket {
  rooms: string[];
  reader?: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  /** Restarts since the watch last delivered: each waits twice as long, up to 30 s. */
  failures?: number;
}

/** How long to wait before restarting a watch that ended or failed `failures` times running. */
function backoffMs(failures: number): number {
  return Math.min(500 * 2 ** (failures - 1), 30_000);
}

/**
 * Rooms are grouped ten to a watch; adding or removing a room restarts only its group's watch.
 * Each commit bumps the head key, so a hub sees every commit of every instance sharing the KV,
 * including ones whose BroadcastChannel post it never got.
 */
export class KvHeadWatcher implements HeadWatcher {
  #kv: Deno.Kv;
  #onHead: (room: string, head: number) => void;
  #buckets: Bucket[] = [];
  #closed = false;
  #active: boolean;
  #pollMs?: number;
  #polling = false;
  #poll?: Poll;
  #pollCursor = 0;
  /** Versionstamps of the heads as last polled, so only a head that moved is reported. */
  #polled = new Map<string, string | null>();
  #signals?: SignalsSink;

  /**
   * Watches through `kv` and reports each new head to `onHead`. An inactive watcher only keeps
   * its list of rooms (see {@link setActive}); `pollMs` is how often heads are read while
   * {@link setPolling} says so; `signals` gets the heads of the rooms' signals logs, followed the same way.
   */
  constructor(
    kv: Deno.Kv,
    onHead: (room: string, head: number) => void,
    options: { active?: boolean; pollMs?: number; signals?: SignalsSink } = {},
  ) {
    this.#kv = kv;
    this.#onHead = onHead;
    this.#active = options.active ?? true;
    this.#pollMs = options.pollMs;
    this.#signals = options.signals;
  }

  /** The keys followed for a room: its head, then its signals log's head if signals are followed. */
  #keys(rooms: string[]): Deno.KvKey[] {
    return this.#signals
      ? rooms.flatMap((room) => [KV_KEYS.head(room), signalsHead(room)])
      : rooms.map(KV_KEYS.head);
  }

  /** Hands on what a watch or a read found for `rooms`, `entries` in the order of {@link #keys}. */
  #report(rooms: string[], entries: Deno.KvEntryMaybe<unknown>[], polled: boolean): void {
    const step = this.#signals ? 2 : 1;
    rooms.forEach((room, i) => {
      const head = entries[i * step];
      if (this.#signals) this.#signals.heard(room, entries[i * step + 1]);
      if (polled) {
        // The first read reports too: a commit there since the watch's first report woke nothing.
        if (this.#polled.get(room) === head.versionstamp) return;
        this.#polled.set(room, head.versionstamp);
      }
      if (typeof head.value === "number") this.#onHead(room, head.value);
    });
  }

  /**
   * Also reads the heads every `pollMs` while `polling` (active or not): on a local KV file, a
   * commit by another OS process wakes no watch here (Deno notifies only its own process).
   */
  setPolling(polling: boolean): void {
    this.#polling = polling && this.#pollMs !== undefined;
    this.#schedulePoll();
  }

  #schedulePoll(): void {
    // Apart from the watches: on a local file they may be off (no other isolate in this process)
    // while another process shares the file.
    const wanted = this.#polling && !this.#closed;
    if (!wanted) {
      this.#poll?.stop();
      this.#poll = undefined;
      this.#polled.clear();
      return;
    }
    this.#poll ??= pollEvery(this.#pollMs!, (poll) => this.#readHeads(poll));
  }

  /** One polling round of `poll`, which stops at once if polling stopped (or restarted). */
  async #readHeads(poll: Poll): Promise<void> {
    // A round reads at most POLL_BUCKETS_PER_ROUND groups, taking turns: with many rooms a room
    // is read less often, rather than the store more often.
    const buckets = this.#buckets;
    const count = Math.min(buckets.length, POLL_BUCKETS_PER_ROUND);
    for (let n = 0; n < count; n++) {
      const bucket = buckets[(this.#pollCursor + n) % buckets.length];
      const rooms = [...bucket.rooms];
      if (rooms.length === 0) continue;
      const entries = await this.#kv.getMany(this.#keys(rooms));
      if (poll.stopped) return;
      this.#report(rooms, entries, true);
    }
    this.#pollCursor = buckets.length === 0 ? 0 : (this.#pollCursor + count) % buckets.length;
  }

  /**
   * Starts or stops the watches. A server alone on its store stops them: nobody else commits.
   * Watches that start report the current heads first, so commits made meanwhile are caught up.
   */
  setActive(active: boolean): void {
    if (this.#active === active) return;
    this.#active = active;
    for (const bucket of this.#buckets) this.#restart(bucket);
    this.#schedulePoll();
  }

  #restart(bucket: Bucket): void {
    bucket.reader?.cancel().catch(() => {});
    bucket.reader = undefined;
    if (this.#closed || !this.#active || bucket.rooms.length === 0) return;
    const rooms = [...bucket.rooms];
    let reader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
    try {
      reader = this.#kv.watch(this.#keys(rooms)).getReader();
    } catch (err) {
      const failures = bucket.failures = (bucket.failures ?? 0) + 1;
      if (failures === 1) console.error("kv watch could not start, trying again:", err);
      const retry = setTimeout(
        () => bucket.reader === undefined && this.#restart(bucket),
        backoffMs(failures),
      );
      Deno.unrefTimer(retry);
      return;
    }
    bucket.reader = reader;
    // Ended or failed, and not by us: without a restart, this group's rooms would stop hearing
    // the other instances' commits, silently.
    const again = (why: string, err?: unknown) => {
      if (this.#closed || bucket.reader !== reader) return;
      // Logged once per run of failures: a store that is gone would otherwise fill the log.
      const failures = bucket.failures = (bucket.failures ?? 0) + 1;
      if (failures === 1) {
        console.error(`kv watch ${why}, restarting:`, ...(err === undefined ? [] : [err]));
      }
      const retry = setTimeout(
        () => bucket.reader === reader && this.#restart(bucket),
        backoffMs(failures),
      );
      Deno.unrefTimer(retry);
    };
    (async () => {
      try {
        while (true) {
          const { value, done } = await reader.read();
          if (done) return again("ended");
          bucket.failures = 0;
          this.#report(rooms, value, false);
        }
      } catch (err) {
        again("failed", err);
      }
    })();
  }

  /** Starts following a room's head. */
  add(room: string): void {
    if (this.#buckets.some((b) => b.rooms.includes(room))) return;
    const perWatch = this.#signals ? KEYS_PER_WATCH / 2 : KEYS_PER_WATCH;
    this.#signals?.follow(room);
    let bucket = this.#buckets.find((b) => b.rooms.length < perWatch);
    if (!bucket) this.#buckets.push(bucket = { rooms: [] });
    bucket.rooms.push(room);
    this.#restart(bucket);
  }

  /** Stops following a room's head. */
  remove(room: string): void {
    const bucket = this.#buckets.find((b) => b.rooms.includes(room));
    if (!bucket) return;
    bucket.rooms.splice(bucket.rooms.indexOf(room), 1);
    this.#polled.delete(room);
    this.#signals?.forget(room);
    this.#restart(bucket);
    if (bucket.rooms.length === 0) this.#buckets.splice(this.#buckets.indexOf(bucket), 1);
  }

  /** Stops every watch. */
  close(): void {
    this.#closed = true;
    this.#schedulePoll();
    for (const bucket of this.#buckets) bucket.reader?.cancel().catch(() => {});
    this.#buckets = [];
  }
}
