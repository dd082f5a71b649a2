/** Presence on Deno KV: one entry per connection, alive as long as the server that wrote it. */

import type { PresenceStore, UserId, UserProfile } from "../core/types.ts";
import { FreshReads, getManyChunked, isLocked } from "./kv_reads.ts";
import { utf8Length } from "../core/text.ts";

/** Who was alive at one read, and how to make a commit depend on it. */
export interface Liveness {
  /** Ids of the live servers, this one included. */
  ids: ReadonlySet<string>;
  /** Ids of every server read, live or lapsed; lapsed ones stay readable for a while. */
  seen?: ReadonlySet<string>;
  /** Adds a check to `op` that fails if server `id` renewed (or appeared) since the read. */
  check(op: Deno.AtomicOperation, id: string): void;
  /**
   * Adds to `op` the mark that tells server `id` some of its entries were removed: one judged
   * dead wrongly (a pause it did not notice, a clock read wrong) writes them back.
   */
  swept?(op: Deno.AtomicOperation, id: string): void;
}

/** The servers whose presence entries count: each entry names the one that wrote it. */
export interface PresenceLeases {
  /** The id this server writes into its entries. */
  readonly id: string;
  /** Which servers are alive now, read fresh. */
  live(): Promise<Liveness>;
  /**
   * Resolves once this server's own lease is written, rejects when it cannot be: entries are
   * written only after it, or others would sweep them as a dead server's (absent: always written).
   */
  register?(): Promise<void>;
}

interface ConnEntry {
  user: UserProfile;
  /** The server holding the socket. */
  instance?: string;
  /** Entries written before leases had a deadline of their own instead. */
  expiresAt?: number;
}

const connKey = (room: string, user: UserId, conn: string): Deno.KvKey => [
  "presence",
  room,
  String(user),
  conn,
];
const userPrefix = (room: string, user: UserId): Deno.KvKey => ["presence", room, String(user)];
const roomPrefix = (room: string): Deno.KvKey => ["presence", room];
/** Changed by every enter and exit of the user, so concurrent ones on other isolates conflict. */
const userLock = (room: string, user: UserId): Deno.KvKey => ["presence_user", room, String(user)];
const LOCK_TTL_MS = 5 * 60_000;
/** Users per commit: each adds a check of its lock, and Deno KV allows 100 checks. */
const MAX_USERS_PER_COMMIT = 100;
/** Changes per commit, well inside Deno KV's 1000 mutations. */
const MAX_CHANGES_PER_COMMIT = 200;
/** Key bytes per commit (checks and mutations together), under Deno KV's 80 KiB. */
const MAX_KEY_BYTES_PER_COMMIT = 60_000;
/** Value bytes per commit, well under Deno KV's 800 KiB of mutations. */
const MAX_VALUE_BYTES_PER_COMMIT = 400_000;
/** Failed checks a change may meet (another isolate changing the same user) before it fails. */
const MAX_CONFLICTS = 100;
/** How long the lease read that decides whether a sweep is needed is reused, ms. */
const DEFAULT_SWEEP_RECHECK_MS = 1000;
/** Every room is swept at least this often, whatever the leases say, ms. */
const DEFAULT_FULL_SWEEP_MS = 60_000;

/** One connection entering or leaving; resolves to `first` or `last`. */
interface Change {
  kind: "enter" | "exit";
  room: string;
  user: string;
  connId: string;
  /** An enter that writes a connection back: its own live entry counts (see `enter`). */
  again?: boolean;
  /** The entering user's profile, stored in the entry. */
  profile?: UserProfile;
}

interface Queued extends Change {
  /** Bytes of the user's lock key, which a commit checks and writes once per user. */
  lockBytes: number;
  /** Bytes of the entry's key. */
  keyBytes: number;
  /** Rough bytes of the entry's value. */
  valueBytes: number;
  /** Commits this change was part of that failed a check. */
  conflicts: number;
  resolve(result: boolean): void;
  reject(err: unknown): void;
}

/** The queued changes of one user in one room, in the order they came. */
interface Group {
  room: string;
  user: string;
  changes: Queued[];
}

/** Why a change fails once the store is stopped. */
const stoppedError = () =>
  new Error("Presence store stopped: the entry is left to the presence sweep");

/** Rough encoded size of a KV key: its parts' UTF-8 plus a few bytes each. */
const keyBytes = (...parts: string[]) => parts.reduce((sum, p) => sum + utf8Length(p) + 3, 0);

/**
 * Takes the next batch off the queue: whole users (all their waiting changes, so each user's
 * stay in order), as many as one commit can hold; the rest stays queued, in order. The first
 * change is always taken, so a change too large for any commit fails alone.
 */
function takeBatch(queue: Queued[]): { batch: Group[]; rest: Queued[] } {
  const groups = new Map<string, Group>();
  // A user with a change left behind leaves the later ones behind too, so they stay in order.
  const behind = new Set<string>();
  const rest: Queued[] = [];
  let changes = 0;
  let keys = 0;
  let values = 0;
  let i = 0;
  // Once the commit is full nothing more fits: the queue past that point is not looked at, only
  // copied over whole, so a batch's work in JavaScript is what it takes, not a backlog's length.
  for (
    ;
    i < queue.length && changes < MAX_CHANGES_PER_COMMIT && groups.size < MAX_USERS_PER_COMMIT;
    i++
  ) {
    const change = queue[i];
    const id = `${change.room}\u0000${change.user}`;
    let group = behind.has(id) ? undefined : groups.get(id);
    const cost = change.keyBytes + (group ? 0 : 2 * change.lockBytes);
    const fits = changes === 0 ||
      (changes < MAX_CHANGES_PER_COMMIT && keys + cost <= MAX_KEY_BYTES_PER_COMMIT &&
        values + change.valueBytes <= MAX_VALUE_BYTES_PER_COMMIT &&
        (group !== undefined || groups.size < MAX_USERS_PER_COMMIT));
    if (!behind.has(id) && fits) {
      if (!group) groups.set(id, group = { room: change.room, user: change.user, changes: [] });
      group.changes.push(change);
      changes++;
      keys += cost;
      values += change.valueBytes;
    } else {
      behind.add(id);
      rest.push(change);
    }
  }
  // Not spread into a call: a backlog of 100,000 changes overflowed the stack.
  return { batch: [...groups.values()], rest: rest.concat(queue.slice(i)) };
}

/** Waits a random moment that grows with the attempts, so racing isolates fall out of step. */
const backoff = (attempt: number) =>
  new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 2)));

/**
 * Adds one change to `op`, given the user's live connections as they stand after the changes
 * before it in the batch (`conns`, updated here), and returns `first` or `last`.
 */
function apply(
  op: Deno.AtomicOperation,
  group: Group,
  change: Change,
  conns: Set<string>,
  instance: string,
): boolean {
  const key = connKey(group.room, change.user, change.connId);
  const others = conns.size > (conns.has(change.connId) && !change.again ? 1 : 0);
  if (change.kind === "enter") {
    const entry: ConnEntry = { user: change.profile!, instance };
    op.set(key, entry);
    conns.add(change.connId);
    return !others;
  }
  op.delete(key);
  const had = conns.delete(change.connId);
  return had && !others;
}

/**
 * An entry lives as long as the server that holds its socket: servers renew one lease each
 * (their instance registry entry), never an entry per connection, so ten thousand idle sockets
 * cost no writes at all. A killed server's lease lapses after the registry's stale time, and the
 * next sweep of a room removes its entries and reports the users who are gone; the sweep's
 * commit checks the lease it judged dead, so a server that renews meanwhile keeps its users.
 * Entries have no KV expiry (a socket may live for weeks): a dead server's entries in a room no
 * live server sweeps are found by {@link sweepPage}, a page of every room at a time, which
 * KvPresenceSweeper calls once a server died.
 *
 * Reads take the entries first and the leases second: a server registers before it writes any
 * entry, so an entry read is never judged by a lease list older than it.
 */
export class KvPresenceStore implements PresenceStore {
  #kv: Deno.Kv;
  #leases: PresenceLeases;
  #queue: Queued[] = [];
  #writing = false;
  /** The drain under way, which {@link stop} waits for. */
  #draining: Promise<void> = Promise.resolve();
  #stopped = false;
  #livenessReads = new FreshReads<Liveness>();
  #listReads = new FreshReads<UserProfile[]>();
  // Sweeps read every room they cover; with nobody dead there is nothing to find, so a room
  // swept since the last death is skipped. Deaths are seen in the lease reads: a live server
  // gone from the next read, or a lapsed entry (it stays readable for a while) not seen before.
  /** Rooms swept with nothing left to remove since the last death seen. */
  #sweptRooms = new Set<string>();
  /** Servers seen lapsed (not live) in a lease read. */
  #knownDead = new Set<string>();
  #lastLive?: ReadonlySet<string>;
  #recheckedAt = -Infinity;
  #fullSweepAt = -Infinity;
  /** Counts the times every room became due for a sweep. */
  #rounds = 0;
  #skipping = false;
  #recheckMs: number;
  #fullSweepMs: number;

  /**
   * Writes entries under `leases.id` and counts those of live servers only. `recheckMs` and
   * `fullSweepMs` tune how sweeps skip rooms (see {@link sweep}).
   */
  constructor(
    kv: Deno.Kv,
    leases: PresenceLeases,
    options: { recheckMs?: number; fullSweepMs?: number } = {},
  ) {
    this.#kv = kv;
    this.#leases = leases;
    this.#recheckMs = options.recheckMs ?? DEFAULT_SWEEP_RECHECK_MS;
    this.#fullSweepMs = options.fullSweepMs ?? DEFAULT_FULL_SWEEP_MS;
  }

  #alive(entry: ConnEntry, live: ReadonlySet<string>, now: number): boolean {
    if (entry.instance !== undefined) return live.has(entry.instance);
    return (entry.expiresAt ?? 0) > now;
  }

  /**
   * True for an entry whose server's registry entry is gone (KV expired it, two stale times
   * after its last renewal or its stop), or an old-format one past its own expiry: the only
   * ones a sweep of every room deletes. An entry merely judged lapsed may be a live server's
   * misjudged (its first read, on a clock ahead of its writer's; a pause it has not noticed).
   */
  #gone(entry: ConnEntry, live: Liveness, now: number): boolean {
    if (entry.instance === undefined) return !this.#alive(entry, live.ids, now);
    return !(live.seen ?? live.ids).has(entry.instance);
  }

  async #read(prefix: Deno.KvKey): Promise<[Deno.KvEntry<ConnEntry>[], Liveness]> {
    const entries = await Array.fromAsync(this.#kv.list<ConnEntry>({ prefix }));
    return [entries, await this.#liveness()];
  }

  /**
   * Queues a change of one connection's entry; changes waiting together commit together, so a
   * burst of joins costs a few commits (each one an fsync) instead of one per join.
   */
  #change(change: Change): Promise<boolean> {
    if (this.#stopped) return Promise.reject(stoppedError());
    return new Promise<boolean>((resolve, reject) => {
      this.#queue.push({
        ...change,
        lockBytes: keyBytes("presence_user", change.room, change.user),
        keyBytes: keyBytes("presence", change.room, change.user, change.connId),
        valueBytes: change.profile ? JSON.stringify(change.profile).length + 64 : 0,
        conflicts: 0,
        resolve,
        reject,
      });
      if (!this.#writing) {
        this.#writing = true;
        this.#draining = this.#drain();
      }
    });
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        if (this.#stopped) {
          this.#failQueued();
          break;
        }
        const { batch, rest } = takeBatch(this.#queue);
        this.#queue = rest;
        try {
          // A server whose first registration the volume refused writes none until it is in.
          await this.#leases.register?.();
          await this.#commit(batch);
        } catch (err) {
          for (const group of batch) for (const c of group.changes) c.reject(err);
        }
      }
    } catch (err) {
      // Nothing above should throw; if it does, the waiting changes fail rather than wait for
      // ever, and the process goes on (an unhandled rejection would end it).
      const stuck = this.#queue;
      this.#queue = [];
      for (const c of stuck) c.reject(err);
    } finally {
      // In the same turn as the last look at the queue: a change queued after it starts anew.
      this.#writing = false;
    }
  }

  /**
   * Commits the changes of a batch, each user's in order, on the entries as read now. The
   * commit checks each user's lock; when another isolate changed some of these users meanwhile,
   * the rest commit at once and those go back to the front of the queue, to be read again, so
   * one busy user holds nobody else up. A batch that breaks a KV limit is halved.
   */
  async #commit(batch: Group[]): Promise<void> {
    for (let attempt = 0;; attempt++) {
      let locks: Deno.KvEntryMaybe<unknown>[];
      let results: boolean[][];
      let ok = false;
      try {
        // Locks before entries: a change committed after the lock read fails the lock's check.
        locks = await getManyChunked(this.#kv, batch.map((g) => userLock(g.room, g.user)));
        const entries = await Promise.all(
          batch.map((g) =>
            Array.fromAsync(this.#kv.list<ConnEntry>({ prefix: userPrefix(g.room, g.user) }))
          ),
        );
        const live = await this.#liveness();
        const now = Date.now();
        const op = this.#kv.atomic();
        results = [];
        for (const [i, group] of batch.entries()) {
          op.check(locks[i]);
          const conns = new Set<string>();
          for (const e of entries[i]) {
            if (this.#alive(e.value, live.ids, now)) conns.add(String(e.key[3]));
          }
          results.push(group.changes.map((c) => apply(op, group, c, conns, this.#leases.id)));
          op.set(userLock(group.room, group.user), now, { expireIn: LOCK_TTL_MS });
        }
        ok = (await op.commit()).ok;
      } catch (err) {
        // Stopped, it gives up: the stop waits for this commit, and nothing was written yet.
        if (isLocked(err) && attempt < 100 && !this.#stopped) {
          await backoff(attempt);
          continue;
        }
        // Deno KV's limits (key or value size, totals per commit) throw TypeError.
        if (err instanceof TypeError && this.#split(batch)) continue;
        throw err;
      }
      if (ok) {
        for (const [i, group] of batch.entries()) {
          group.changes.forEach((c, k) => c.resolve(results[i][k]));
        }
        return;
      }
      const current = await getManyChunked(this.#kv, batch.map((g) => userLock(g.room, g.user)));
      const moved = batch.filter((_, i) => current[i].versionstamp !== locks[i].versionstamp);
      const stay = batch.filter((g) => !moved.includes(g));
      if (moved.length === 0 || stay.length === 0) {
        this.#requeue(batch);
        batch.length = 0;
        await backoff(attempt);
        return;
      }
      this.#requeue(moved);
      batch.splice(0, batch.length, ...stay);
    }
  }

  /**
   * Starts no more commits: the changes queued and those asked for later fail at once, their
   * entries left to the presence sweep; resolves when the commit under way has ended. A server
   * stopping calls it before its last flush of the leaves: a commit landing after that would take
   * its users' entries out, and their leaves would never be written for the other servers.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#failQueued();
    await this.#draining;
  }

  /** Fails the changes queued, once stopped. */
  #failQueued(): void {
    const queued = this.#queue;
    this.#queue = [];
    for (const c of queued) c.reject(stoppedError());
  }

  /** Puts the changes of `groups` back at the front of the queue, failing those tried too often. */
  #requeue(groups: Group[]): void {
    const back: Queued[] = [];
    for (const group of groups) {
      for (const change of group.changes) {
        if (++change.conflicts <= MAX_CONFLICTS) back.push(change);
        else change.reject(new Error(`Presence of user ${change.user} is changing too often`));
      }
    }
    this.#queue = back.concat(this.#queue);
  }

  /** Moves the back half of the batch (users, or one user's changes) to the queue's front. */
  #split(batch: Group[]): boolean {
    if (batch.length > 1) {
      this.#queue = batch.splice(batch.length >> 1).flatMap((g) => g.changes).concat(this.#queue);
      return true;
    }
    const changes = batch[0]?.changes;
    if (!changes || changes.length < 2) return false;
    this.#queue = changes.splice(changes.length >> 1).concat(this.#queue);
    return true;
  }

  /** Which servers are alive: one read shared by the callers waiting for one. */
  #liveness(): Promise<Liveness> {
    return this.#livenessReads.read("", () => this.#leases.live());
  }

  /** Records a connection; `first` when the user had no other live one in the room. */
  async enter(
    room: string,
    user: UserProfile,
    connId: string,
    options: { again?: boolean } = {},
  ): Promise<{ first: boolean }> {
    return {
      first: await this.#change({
        kind: "enter",
        room,
        user: String(user.id),
        connId,
        profile: user,
        again: options.again,
      }),
    };
  }

  /** Removes a connection; `last` when no other live one of the user remains in the room. */
  async exit(room: string, userId: UserId, connId: string): Promise<{ last: boolean }> {
    try {
      return { last: await this.#change({ kind: "exit", room, user: String(userId), connId }) };
    } catch (err) {
      // The entry may be left behind: the next sweep must look, and a sweep under way, which
      // may have read the connection as open, must not mark the room clean.
      this.invalidateSweeps();
      throw err;
    }
  }

  /**
   * The users with a live connection in the room, each once, in order of id. Callers that ask
   * while a read of the room is under way share the next one: a burst of joins to one room
   * reads it a few times, not once per join.
   */
  async list(room: string): Promise<UserProfile[]> {
    return [...await this.#listReads.read(room, () => this.#list(room))];
  }

  async #list(room: string): Promise<UserProfile[]> {
    const [entries, live] = await this.#read(roomPrefix(room));
    const now = Date.now();
    const users = new Map<string, UserProfile>();
    for (const e of entries) {
      if (this.#alive(e.value, live.ids, now) && !users.has(String(e.key[2]))) {
        users.set(String(e.key[2]), e.value.user);
      }
    }
    return [...users.values()];
  }

  /**
   * Whether the user has a live connection in the room, read fresh from that user's entries
   * alone: a check per presence change heard from another server must not cost a read of a room
   * of thousands.
   */
  async isPresent(room: string, userId: UserId): Promise<boolean> {
    const [entries, live] = await this.#read(userPrefix(room, userId));
    const now = Date.now();
    return entries.some((e) => this.#alive(e.value, live.ids, now));
  }

  /**
   * Deletes lapsed entries, and this server's own entries whose connection `open` says is gone
   * (an enter that lost a race with its exit); users left with none are returned once, whichever
   * isolate sweeps. A room swept clean is skipped until the leases show a death, an exit fails,
   * {@link invalidateSweeps} is called or `fullSweepMs` has passed.
   */
  async sweep(room: string, open?: (connId: string) => boolean): Promise<UserProfile[]> {
    if (!(await this.#mayNeedSweep(room))) return [];
    const round = this.#rounds;
    const [all, live] = await this.#read(roomPrefix(room));
    const now = Date.now();
    const dead = (e: Deno.KvEntry<ConnEntry>) =>
      !this.#alive(e.value, live.ids, now) ||
      (open !== undefined && e.value.instance === this.#leases.id && !open(String(e.key[3])));
    const byUser = new Map<string, Deno.KvEntry<ConnEntry>[]>();
    for (const e of all) {
      const list = byUser.get(String(e.key[2])) ?? [];
      list.push(e);
      byUser.set(String(e.key[2]), list);
    }
    const gone: UserProfile[] = [];
    // Entries of servers from before leases lapse by their own clock: look again next time.
    let clean = !all.some((e) => e.value.instance === undefined);
    for (const entries of byUser.values()) {
      const lapsed = entries.filter(dead);
      if (lapsed.length === 0) continue;
      const res = await this.#remove(room, entries, lapsed, live, now);
      if (res.ok && res.gone) gone.push(res.gone);
      if (!res.ok) clean = false;
    }
    // A death seen while this sweep ran may have come after its read: no mark then.
    if (clean && round === this.#rounds) this.#sweptRooms.add(room);
    return gone;
  }

  /**
   * Deletes `lapsed`, some of one user's `entries` in a room, unless another sweeper, an enter or
   * exit of the user, or a renewal of a lease judged dead came first; `gone` names the user when
   * none of the entries is left.
   */
  async #remove(
    room: string,
    entries: Deno.KvEntry<ConnEntry>[],
    lapsed: Deno.KvEntry<ConnEntry>[],
    live: Liveness,
    now: number,
  ): Promise<{ ok: boolean; gone?: UserProfile }> {
    const user = lapsed[0].value.user;
    const stillLive = entries.length > lapsed.length;
    const lock = await this.#kv.get(userLock(room, user.id));
    const op = this.#kv.atomic().check(lock);
    // Checking each lapsed entry means only one sweeper wins; checking the leases judged dead,
    // that a server which renewed after all keeps its users.
    for (const e of lapsed) op.check(e).delete(e.key);
    const servers = new Set(lapsed.map((e) => e.value.instance).filter((i) => i !== undefined));
    servers.delete(this.#leases.id);
    for (const server of servers) {
      live.check(op, server);
      live.swept?.(op, server);
    }
    op.set(userLock(room, user.id), now, { expireIn: LOCK_TTL_MS });
    const res = await op.commit().catch(() => ({ ok: false }));
    return { ok: res.ok, gone: res.ok && !stillLive ? user : undefined };
  }

  /**
   * Deletes the entries of dead servers among the next `limit` entries of every room, after
   * `cursor` (from the start when absent), as {@link sweep} does in one room; returns the users
   * this left with no entry in a room, and the cursor of the next page (absent after the last).
   * It finds what room sweeps cannot: a crashed server's entries in rooms no live server holds.
   */
  async sweepPage(
    cursor?: string,
    limit = 500,
  ): Promise<{ gone: { room: string; user: UserProfile }[]; cursor?: string }> {
    const iter = this.#kv.list<ConnEntry>({ prefix: ["presence"] }, { limit, cursor });
    const page = await Array.fromAsync(iter);
    // Entries first, leases second, as every read here: an entry is never judged by older ones.
    const live = await this.#liveness();
    const now = Date.now();
    const users = new Map<string, { room: string; user: string }>();
    for (const e of page) {
      if (!this.#gone(e.value, live, now)) continue;
      const [, room, user] = e.key.map(String);
      users.set(`${room}\u0000${user}`, { room, user });
    }
    const gone: { room: string; user: UserProfile }[] = [];
    for (const { room, user } of users.values()) {
      // Nobody sweeps this room again soon: a commit that failed (the user entered meanwhile, or
      // KV expired the dead server's lease under the check) is tried again on fresh reads.
      for (let attempt = 0, leases = live; attempt < 3; attempt++) {
        // All of the user's entries, some of which may be on the pages around this one. Read
        // after the leases, a server that registered since is judged dead, but its check fails.
        const entries = await Array.fromAsync(
          this.#kv.list<ConnEntry>({ prefix: userPrefix(room, user) }),
        );
        if (attempt > 0) leases = await this.#liveness();
        const lapsed = entries.filter((e) => this.#gone(e.value, leases, now));
        if (lapsed.length === 0) break;
        const res = await this.#remove(room, entries, lapsed, leases, now);
        if (res.gone) gone.push({ room, user: res.gone });
        if (res.ok) break;
      }
    }
    return { gone, cursor: page.length < limit ? undefined : iter.cursor };
  }

  /**
   * False when `room` was swept clean since the last death seen in the leases (read at most
   * every `recheckMs`), and within `fullSweepMs` of the last full round.
   */
  async #mayNeedSweep(room: string): Promise<boolean> {
    const now = performance.now();
    if (now - this.#recheckedAt >= this.#recheckMs) {
      this.#recheckedAt = now;
      const live = await this.#liveness();
      let death = this.#lastLive !== undefined &&
        [...this.#lastLive].some((id) => !live.ids.has(id));
      if (this.#knownDead.size > 1000) this.#knownDead.clear();
      for (const id of live.seen ?? []) {
        if (live.ids.has(id) || this.#knownDead.has(id)) continue;
        this.#knownDead.add(id);
        death = true;
      }
      this.#lastLive = live.ids;
      // Leases that cannot name the dead leave nothing to go by: every sweep reads its room.
      this.#skipping = live.seen !== undefined;
      if (death || now - this.#fullSweepAt >= this.#fullSweepMs) {
        this.invalidateSweeps();
        this.#fullSweepAt = now;
      }
    }
    return !this.#skipping || !this.#sweptRooms.has(room);
  }

  /** Forgets which rooms were swept clean, so the next sweep reads every room. */
  invalidateSweeps(): void {
    this.#sweptRooms.clear();
    this.#rounds++;
  }
}
