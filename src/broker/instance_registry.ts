/**
 * Which servers (instances, or isolates under `deno serve --parallel`) share this Deno KV store.
 * A server that shares it with nobody has no one to tell about its commits, so it skips the
 * cross-isolate channel and the KV watches, which together cost as much as the commits do.
 */

import { failureLog } from "../core/failure_log.ts";
import { type Broker, isEviction, type RoomEvent } from "../core/types.ts";
import { type Poll, pollEvery } from "./poll.ts";
import { commitRetryingLocks, isStorageError } from "../store/kv_reads.ts";

const ENTRY = (id: string): Deno.KvKey => ["instance", id];
const ENTRIES: Deno.KvKey = ["instance"];
/** Bumped whenever a server arrives or leaves: the one key every server watches. */
const EPOCH: Deno.KvKey = ["instance_epoch"];
/**
 * Set when another server removed some of server `id`'s presence entries, judging it dead: a
 * server misjudged (a pause it did not notice, a clock others read wrong) learns so at its next
 * heartbeat and writes its users back. Kept a day, longer than any pause a server comes back from.
 */
const SWEPT = (id: string): Deno.KvKey => ["instance_swept", id];
const SWEPT_KEEP_MS = 24 * 3600_000;

interface EntryValue {
  /** Milliseconds since the epoch of the last heartbeat. */
  seenAt: number;
  /** The process id, for logs. */
  pid: number;
  /** The process across hosts (see {@link PROCESS}); absent in entries of older versions. */
  process?: string;
  /**
   * The stale time its writer renews it within (its PRESENCE_TTL_SECONDS), by which the others
   * judge it; absent in entries of older versions, which are judged by the reader's own.
   */
  staleMs?: number;
  /**
   * True in entries of versions that list every read cursor they store in its user's rooms
   * (`["read_room"]`); absent in those of older versions, whose cursors a deletion cannot find.
   */
  readRooms?: boolean;
}

/**
 * The environment variable in which scripts/start_parallel.ts hands the isolates of the
 * `deno serve --parallel` process it starts one random id, read before the start time.
 */
export const PROCESS_ID_ENV = "CHAT_PROCESS_ID";

/** What tells this process apart from another of the same host name and pid, or "". */
const processKey = launcherId() || startTicks();

/**
 * This OS process as each of its isolates names it: host name, pid, and the id its launcher gave
 * it or its start time. Without either (Deno lets only `--allow-all` read /proc/self), processes
 * of other containers (all PID 1, on the host's name) may bear it too: it suits only what reaches
 * no other process anyway, as a `BroadcastChannel` does.
 */
export const PROCESS_NAME = `${hostName()}/${Deno.pid}/${processKey}`;

/**
 * This OS process, told apart from processes of other hosts and containers (see
 * {@link PROCESS_NAME}); a pid alone is not enough: containers sharing one KV volume often all
 * run as PID 1. Isolates of one `deno serve --parallel` share it when their launcher gave them an
 * id or the start time can be read; otherwise each isolate takes a random one of its own: a
 * sibling taken for another process costs KV reads, a 2 s later listen and a scrape that answers
 * for its own isolate alone, while another process taken for a sibling is never polled for its
 * commits.
 */
export const PROCESS = processKey ? PROCESS_NAME : PROCESS_NAME + crypto.randomUUID();

/** The id scripts/start_parallel.ts gave this process (see {@link PROCESS_ID_ENV}), or "". */
function launcherId(): string {
  try {
    // Asked first so that a run without the permission is never prompted for it.
    const granted = Deno.permissions.querySync({ name: "env", variable: PROCESS_ID_ENV }).state;
    return granted === "granted" ? Deno.env.get(PROCESS_ID_ENV)?.trim() ?? "" : "";
  } catch {
    return "";
  }
}

function hostName(): string {
  try {
    // Asked first so that a run without the permission is never prompted for it.
    const granted = Deno.permissions.querySync({ name: "sys", kind: "hostname" }).state;
    return granted === "granted" ? Deno.hostname() : "";
  } catch {
    return "";
  }
}

/** The process's start time in clock ticks after boot (Linux), or "" where it cannot be read. */
function startTicks(): string {
  try {
    const path = "/proc/self/stat";
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return "";
    const stat = Deno.readTextFileSync(path);
    // The command name (field 2) is in parentheses and may hold spaces; counting from field 3
    // after it, the start time (field 22) is the 20th.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
  } catch {
    return "";
  }
}

/** An entry as last read by this server, on its monotonic clock. */
interface Observed {
  versionstamp: string;
  /** When the entry was last written, as far as this server can tell. */
  changedAt: number;
  /** When it was last read. */
  readAt: number;
}

/**
 * Why this server comes back as a newcomer: `onlySwept` when it had not lapsed, but another
 * server removed some of its presence entries (a misjudgement: a clock read wrong). Otherwise its
 * entry lapsed, and others may have shown its users gone without removing their entries (an exit
 * elsewhere that counted them dead).
 */
export interface LapseCause {
  /** True when it had not lapsed and only another server's removal of its entries says so. */
  onlySwept: boolean;
}

/** Who is alive, as read at one moment. */
export interface LeaseSnapshot {
  /** Ids of the live servers, this one included. */
  ids: ReadonlySet<string>;
  /** Ids of every entry read, live or lapsed (a lapsed one stays until KV expires it). */
  seen: ReadonlySet<string>;
  /** Ids of the live servers in this process (isolates of one `deno serve --parallel`), this one included. */
  here: ReadonlySet<string>;
  /** Adds to `op` a check that fails if server `id`'s entry changed since this read. */
  check(op: Deno.AtomicOperation, id: string): void;
  /** Adds to `op` the mark that tells server `id` some of its presence entries were removed. */
  swept(op: Deno.AtomicOperation, id: string): void;
}

/** Settings of {@link InstanceRegistry.start}. */
export interface InstanceRegistryOptions {
  /** How often the entry is renewed and the others read again (default 10 s). */
  heartbeatMs?: number;
  /**
   * This server's entry not renewed for this long belongs to a dead server (default 30 s); the
   * entry names it, and the others' entries are judged by the times they name.
   */
  staleMs?: number;
  /**
   * Also read the epoch key this often (ms): on a local KV file a commit by another OS process
   * wakes no watch here, so a newcomer there would otherwise be seen only at the next heartbeat.
   */
  pollMs?: number;
  /**
   * How often a first registration the volume refused is tried again (default 1 s; see
   * {@link InstanceRegistry.register}).
   */
  retryMs?: number;
}

/**
 * Each server keeps an entry under `["instance", id]`, renewed every heartbeat, and watches one
 * epoch key that arrivals and departures bump, so others learn of a newcomer at once and of a
 * crashed server once its entry goes stale. A newcomer registers before it serves anything; the
 * servers already running find it within a watch round trip and then replay what they missed
 * from the store (the head watch reports current heads when it starts). A server that stalled
 * past the stale time (its entry lapsed, others may have swept its presence) comes back as an
 * arrival and tells its `onLapse` listeners, which write their presence again.
 *
 * A server whose first registration the volume refuses (a full disk, a read-only mount) starts
 * anyway, unregistered: it reads the others' entries as usual, so it knows whom to watch, and it
 * tries again every `retryMs` and whenever {@link register} is called; reads (history) are served
 * meanwhile, while every write fails on that volume too. Until it is registered, the others do not
 * know it (a server alone posts to no channel and watches no head), so nothing that must reach
 * them may be written before: presence entries wait for {@link register}, and a message committed
 * in the moment between the disk's return and the registration reaches them when it lands, as
 * their head watches start by reporting the current heads. Registering late counts as a lapse.
 */
export class InstanceRegistry {
  #kv: Deno.Kv;
  #id = crypto.randomUUID();
  #heartbeatMs: number;
  #staleMs: number;
  #others = 0;
  #elsewhere = 0;
  #lapsed = 0;
  #older = 0;
  #pollMs?: number;
  #poll?: Poll;
  #listeners = new Set<(alone: boolean) => void>();
  #lapseListeners = new Set<(how: LapseCause) => void>();
  #timer?: ReturnType<typeof setInterval>;
  #retryMs: number;
  #retryTimer?: ReturnType<typeof setInterval>;
  /** False until this server's entry is first written (see {@link register}). */
  #registered = false;
  #registering?: Promise<void>;
  #watch?: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  #closed = false;
  #refreshing: Promise<void> = Promise.resolve();
  #beating: Promise<void> = Promise.resolve();
  /** A heartbeat is under way (one whose commit waits out another's write lock, say). */
  #inBeat = false;
  /** When this server's entry was last written, on this server's monotonic clock. */
  #lastBeat = 0;
  /** The versionstamp of this server's swept mark when last read (none for a new id). */
  #sweptStamp: string | null = null;
  /** Each entry as last read here (see {@link live}). */
  #observed = new Map<string, Observed>();
  /** Servers whose clocks were found far from this one's, said once each. */
  #skewTold = new Set<string>();

  private constructor(kv: Deno.Kv, options: InstanceRegistryOptions) {
    this.#kv = kv;
    this.#heartbeatMs = options.heartbeatMs ?? 10_000;
    this.#staleMs = options.staleMs ?? 30_000;
    this.#pollMs = options.pollMs;
    this.#retryMs = options.retryMs ?? 1000;
  }

  /**
   * Registers this server in `kv`, reads who else is there (failing the start when it cannot),
   * and starts following changes. A registration the volume refuses (full, read-only) does not
   * fail the start: it is tried again in the background (see {@link register}).
   */
  static async start(
    kv: Deno.Kv,
    options: InstanceRegistryOptions = {},
  ): Promise<InstanceRegistry> {
    const registry = new InstanceRegistry(kv, options);
    try {
      await registry.#announce(true);
      registry.#registered = true;
    } catch (err) {
      // A crashed server restarted on a full disk would otherwise stay down, history reads
      // included, until someone frees space; running, the same server rides it out.
      if (!isStorageError(err)) throw err;
      console.error(
        "instance registry: this server could not register, as KV takes no write; serving " +
          `reads, trying again every ${registry.#retryMs} ms (/healthz says 503 until then):`,
        err,
      );
      const retry = setInterval(() => registry.register().catch(() => {}), registry.#retryMs);
      Deno.unrefTimer(retry);
      registry.#retryTimer = retry;
    }
    registry.#count(await registry.live());
    registry.#follow();
    const timer = setInterval(() => {
      // One at a time: a beat that overtook one still committing would take that one's write
      // for a change by someone else, and this server for lapsed.
      if (registry.#inBeat) return;
      registry.#inBeat = true;
      registry.#beating = registry.#beat().catch((err) => {
        // Through the failure log: on a full disk every beat fails, as long as the outage lasts.
        if (!registry.#closed) failureLog.failed("instance registry: heartbeat failed", err);
      }).finally(() => registry.#inBeat = false);
    }, registry.#heartbeatMs);
    Deno.unrefTimer(timer);
    registry.#timer = timer;
    return registry;
  }

  /** True once this server's entry is written; false while a refused first registration waits. */
  get registered(): boolean {
    return this.#registered;
  }

  /**
   * Resolves once this server is registered: at once when it is, otherwise after trying to
   * write its entry now (shared by the callers that ask meanwhile), rejecting as that write does.
   * Anything the others must be able to judge by this server's entry (presence) waits for it.
   */
  register(): Promise<void> {
    if (this.#registered) return Promise.resolve();
    if (this.#closed) {
      return Promise.reject(new Error("instance registry: closed before this server registered"));
    }
    return this.#registering ??= (async () => {
      try {
        await this.#announce(true);
      } finally {
        this.#registering = undefined;
      }
      this.#registered = true;
      clearInterval(this.#retryTimer);
      if (this.#closed) return;
      console.warn("instance registry: registered at last (KV takes writes again)");
      // As after a lapse: the presence of sockets that joined meanwhile was never written.
      for (const listener of this.#lapseListeners) listener({ onlySwept: false });
      await this.#refresh();
    })();
  }

  /** This server's id in the registry. */
  get id(): string {
    return this.#id;
  }

  /** True while no other live server uses the store. */
  get alone(): boolean {
    return this.#others === 0;
  }

  /** Live servers besides this one. */
  get others(): number {
    return this.#others;
  }

  /** Live servers in other OS processes (other instances, not isolates of this process). */
  get elsewhere(): number {
    return this.#elsewhere;
  }

  /** Live servers in this OS process besides this one (isolates of `deno serve --parallel`). */
  get nearby(): number {
    return this.#others - this.#elsewhere;
  }

  /**
   * Other servers whose entries lapsed without their leaving, until KV expires them (two stale
   * times after their last renewal): a stall may end, and such a server comes back.
   */
  get lapsed(): number {
    return this.#lapsed;
  }

  /**
   * Live servers of versions that store read cursors without listing them in their users' rooms
   * (their entries lack `readRooms`): versions before the `["read_room"]` list, in a rolling
   * upgrade or after a rollback.
   */
  get older(): number {
    return this.#older;
  }

  /**
   * The servers alive now (this one included), read from the store, not a cache, a check that
   * fails an atomic operation if a given server's entry changed since (it renewed), and how many
   * others lapsed (see {@link InstanceRegistry.lapsed}) or are {@link InstanceRegistry.older}.
   */
  async live(): Promise<LeaseSnapshot & { lapsed: number; older: number }> {
    const ids = new Set<string>([this.#id]);
    const here = new Set<string>([this.#id]);
    const read = new Map<string, Deno.KvEntry<EntryValue>>();
    let lapsed = 0;
    let older = 0;
    for await (const entry of this.#kv.list<EntryValue>({ prefix: ENTRIES })) {
      read.set(String(entry.key[1]), entry);
      if (!this.#fresh(String(entry.key[1]), entry)) {
        // A server that left writes `seenAt` 0; this one's own is not counted.
        if (entry.value.seenAt > 0 && String(entry.key[1]) !== this.#id) lapsed++;
        continue;
      }
      ids.add(String(entry.key[1]));
      if (entry.value.readRooms !== true) older++;
      const { pid, process } = entry.value;
      if (process === undefined ? pid === Deno.pid : process === PROCESS) {
        here.add(String(entry.key[1]));
      }
    }
    for (const id of this.#observed.keys()) if (!read.has(id)) this.#observed.delete(id);
    return {
      ids,
      here,
      lapsed,
      older,
      seen: new Set(read.keys()),
      check: (op, id) => op.check(read.get(id) ?? { key: ENTRY(id), versionstamp: null }),
      swept: (op, id) => op.set(SWEPT(id), true, { expireIn: SWEPT_KEEP_MS }),
    };
  }

  /**
   * Whether a server's entry was renewed within the stale time its writer declared (servers
   * sharing a store may differ in it: a rolling restart that changes it), judged on this server's
   * own clock: the writer's `seenAt` is read on another host's clock, which may be ahead (its dead
   * entry would live on) or behind (its live one would count as dead, its users' presence swept).
   * An entry seen to change since the last read here was written since then, whatever its
   * `seenAt` says; only an entry never read before is aged by `seenAt` alone.
   */
  #fresh(id: string, entry: Deno.KvEntry<EntryValue>): boolean {
    const now = performance.now();
    const wallNow = Date.now();
    const { seenAt } = entry.value;
    const staleMs = this.#staleOf(entry.value);
    const known = this.#observed.get(id);
    let changedAt: number;
    if (known?.versionstamp === entry.versionstamp) changedAt = known.changedAt;
    else {
      const byClock = now - Math.max(0, wallNow - seenAt);
      changedAt = known === undefined ? byClock : Math.max(byClock, known.readAt);
      if (known !== undefined && seenAt > 0) {
        this.#sayIfSkewed(id, entry.value, known, now, staleMs);
      }
    }
    this.#observed.set(id, { versionstamp: entry.versionstamp, changedAt, readAt: now });
    // A server that left writes `seenAt` 0: dead at once, though its entry changed.
    return seenAt > 0 && now - changedAt < staleMs;
  }

  /**
   * The stale time an entry is judged by: its writer's, which renews it every third of that; by
   * this server's own, a writer with a longer one would be read as lapsed between its renewals.
   */
  #staleOf(value: EntryValue): number {
    const declared = value.staleMs;
    return typeof declared === "number" && declared > 0 ? declared : this.#staleMs;
  }

  /** Logs, once per server, a clock further from this one's than a third of its stale time. */
  #sayIfSkewed(
    id: string,
    value: EntryValue,
    known: Observed,
    now: number,
    staleMs: number,
  ): void {
    if (this.#skewTold.has(id)) return;
    const wallNow = Date.now();
    // Written between the last read and now, on this server's clock.
    const ahead = value.seenAt - wallNow;
    const behind = wallNow - (now - known.readAt) - value.seenAt;
    const skew = ahead > 0 ? ahead : behind > 0 ? -behind : 0;
    if (Math.abs(skew) < staleMs / 3) return;
    this.#skewTold.add(id);
    console.warn(
      `instance registry: the clock of server ${value.process ?? value.pid} is about ${
        Math.round(Math.abs(skew) / 1000)
      } s ${
        skew > 0 ? "ahead of" : "behind"
      } this one's; liveness is judged on each server's own ` +
        "clock, but message times (created_at) are each writer's: keep clocks in sync (NTP)",
    );
  }

  /**
   * Calls `listener` whenever {@link alone} changes, or whether any server is {@link elsewhere},
   * {@link nearby} or {@link older}; returns the function that stops it.
   */
  onChange(listener: (alone: boolean) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Calls `listener` when this server's own entry was written after a time without one: it had
   * lapsed, or the first registration was refused and succeeded later; or when another server
   * removed some of its presence entries though it had not lapsed (`onlySwept`).
   */
  onLapse(listener: (how: LapseCause) => void): () => void {
    this.#lapseListeners.add(listener);
    return () => this.#lapseListeners.delete(listener);
  }

  /**
   * Writes this server's entry; with `expected`, only if it is still that entry (false when it
   * changed or went meanwhile).
   */
  async #announce(arriving: boolean, expected?: Deno.KvEntryMaybe<unknown>): Promise<boolean> {
    const now = Date.now();
    const value: EntryValue = {
      seenAt: now,
      pid: Deno.pid,
      process: PROCESS,
      staleMs: this.#staleMs,
      readRooms: true,
    };
    const op = this.#kv.atomic().set(ENTRY(this.#id), value, { expireIn: this.#staleMs * 2 });
    if (expected) op.check(expected);
    // Only arrivals wake the others; a heartbeat changes nothing they need to act on.
    if (arriving) op.sum(EPOCH, 1n);
    // Isolates of one process starting together contend for the SQLite write lock.
    if (!(await commitRetryingLocks(op)).ok) return false;
    this.#lastBeat = performance.now();
    return true;
  }

  async #beat(): Promise<void> {
    if (this.#closed) return;
    // Not yet registered: the retries write the entry; the others are still read.
    if (!this.#registered) return await this.#refresh();
    // Others count an entry older than the stale time as dead: after a stall that long this
    // server must come back as a newcomer (they stopped listening) and restore its presence.
    // Judged by the entry itself as well: a pause the monotonic clock did not count (a host's
    // suspend) can still have outlasted it, and an entry that expired just after this read is
    // written again only as a newcomer's (the check), since sweeps may have removed this
    // server's users. Another server that removed some of this one's presence entries (it
    // judged this one dead) said so in the swept mark: this one writes them back.
    const [own, swept] = await this.#kv.getMany([ENTRY(this.#id), SWEPT(this.#id)]);
    let overdue = performance.now() - this.#lastBeat >= this.#staleMs || own.value === null;
    const marked = swept.versionstamp !== null && swept.versionstamp !== this.#sweptStamp;
    let lapsed = overdue || marked;
    if (!await this.#announce(lapsed, lapsed ? undefined : own)) {
      lapsed = overdue = true;
      await this.#announce(lapsed);
    }
    // Coming back, every mark set so far is covered by the restore that follows (a sweep after
    // this write fails its check of the entry): read again, as one may have come while this
    // write waited out another's lock.
    this.#sweptStamp = lapsed
      ? (await this.#kv.get(SWEPT(this.#id))).versionstamp
      : swept.versionstamp;
    // A write went through: a KV outage's end is logged even when no client writes.
    failureLog.answered("kv");
    if (lapsed && !this.#closed) {
      console.warn("instance registry: this server's entry had lapsed; registered again");
      for (const listener of this.#lapseListeners) listener({ onlySwept: !overdue });
    }
    await this.#refresh();
  }

  #count(live: LeaseSnapshot & { lapsed: number; older: number }): void {
    this.#others = live.ids.size - 1;
    this.#elsewhere = live.ids.size - live.here.size;
    this.#lapsed = live.lapsed;
    this.#older = live.older;
  }

  /** Reads the entries again; serialised so that a late answer never overwrites a newer one. */
  #refresh(): Promise<void> {
    this.#refreshing = this.#refreshing.then(async () => {
      if (this.#closed) return;
      const live = await this.live();
      const state = () =>
        `${this.alone}|${this.#elsewhere > 0}|${this.nearby > 0}|${this.#older > 0}`;
      const was = state();
      this.#count(live);
      if (was !== state() && !this.#closed) {
        for (const listener of this.#listeners) listener(this.alone);
      }
    }).catch((err) => {
      // Not knowing, the server keeps what it knew; the next heartbeat reads again.
      if (!this.#closed) console.error("instance registry: reading the entries failed:", err);
    });
    return this.#refreshing;
  }

  #follow(): void {
    if (this.#pollMs !== undefined && this.#poll === undefined) {
      let seen: string | null | undefined;
      this.#poll = pollEvery(this.#pollMs, async () => {
        const { versionstamp } = await this.#kv.get(EPOCH);
        // The first read too: a server may have arrived since the start's own read.
        if (versionstamp !== seen) await this.#refresh();
        seen = versionstamp;
      });
    }
    const reader = this.#kv.watch([EPOCH]).getReader();
    this.#watch = reader;
    (async () => {
      try {
        while (!this.#closed) {
          const { done } = await reader.read();
          if (done) return;
          await this.#refresh();
        }
      } catch (err) {
        if (this.#closed) return;
        console.error("instance registry: watch failed, restarting:", err);
        setTimeout(() => !this.#closed && this.#follow(), 500);
      }
    })();
  }

  /** Stops renewing and following without removing the entry, as a crash would (for tests). */
  abandon(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    clearInterval(this.#retryTimer);
    this.#poll?.stop();
    this.#watch?.cancel().catch(() => {});
    this.#listeners.clear();
    this.#lapseListeners.clear();
  }

  /** Removes this server's entry and tells the others it left. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.abandon();
    // A heartbeat under way would write the entry back after the delete.
    await this.#beating;
    await this.#registering?.catch(() => {});
    // Never written: there is nothing to take back (and the volume may still refuse writes).
    if (!this.#registered) return;
    try {
      // A lapsed entry rather than none: a server that reads the registry only after this one
      // came and went still sees that it died, and sweeps what it may have left behind.
      const tombstone: EntryValue = { seenAt: 0, pid: Deno.pid, process: PROCESS };
      await commitRetryingLocks(
        this.#kv.atomic().set(ENTRY(this.#id), tombstone, { expireIn: this.#staleMs * 2 })
          .sum(EPOCH, 1n),
      );
    } catch {
      // The store may already be closed; the entry then goes stale on its own.
    }
  }
}

/**
 * Publishes through `inner` only while the store is shared: with nobody else to receive them,
 * posting every message to a channel is pure cost. Subscriptions always go through, so a
 * newcomer's posts are heard at once.
 */
export class SharedOnlyBroker implements Broker {
  #inner: Broker;
  #shared: () => boolean;

  /** Wraps `inner`; `shared` says whether anyone else uses the store right now. */
  constructor(inner: Broker, shared: () => boolean) {
    this.#inner = inner;
    this.#shared = shared;
  }

  /**
   * Posts the event when the store is shared, drops it otherwise. Revocations and deletions
   * always go: they are rare, and a newcomer not yet known must not miss one.
   */
  publish(event: RoomEvent): void {
    if (this.#shared() || isEviction(event)) {
      this.#inner.publish(event);
    }
  }

  /** Subscribes through the inner broker. */
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void {
    return this.#inner.subscribe(room, handler);
  }

  /** Closes the inner broker. */
  close(): void {
    this.#inner.close();
  }
}
