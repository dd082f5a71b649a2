/** Presence on Deno KV: one entry per connection, alive as long as the server that wrote it. */

import type { PresenceStore, UserId, UserProfile } from "../core/types.ts";

/** Who was alive at one read, and how to make a commit depend on it. */
export interface Liveness {
  /** Ids of the live servers, this one included. */
  ids: ReadonlySet<string>;
  /** Adds a check to `op` that fails if server `id` renewed (or appeared) since the read. */
  check(op: Deno.AtomicOperation, id: string): void;
}

/** The servers whose presence entries count: each entry names the one that wrote it. */
export interface PresenceLeases {
  /** The id this server writes into its entries. */
  readonly id: string;
  /** Which servers are alive now, read fresh. */
  live(): Promise<Liveness>;
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

/**
 * An entry lives as long as the server that holds its socket: servers renew one lease each
 * (their instance registry entry), never an entry per connection, so ten thousand idle sockets
 * cost no writes at all. A killed server's lease lapses after the registry's stale time, and the
 * next sweep of a room removes its entries and reports the users who are gone; the sweep's
 * commit checks the lease it judged dead, so a server that renews meanwhile keeps its users.
 * Entries have no KV expiry (a socket may live for weeks): a dead server's entries in a room
 * nobody visits again stay on disk, counted by nobody, until a sweep of that room.
 *
 * Reads take the entries first and the leases second: a server registers before it writes any
 * entry, so an entry read is never judged by a lease list older than it.
 */
export class KvPresenceStore implements PresenceStore {
  #kv: Deno.Kv;
  #leases: PresenceLeases;

  /** Writes entries under `leases.id` and counts those of live servers only. */
  constructor(kv: Deno.Kv, leases: PresenceLeases) {
    this.#kv = kv;
    this.#leases = leases;
  }

  #alive(entry: ConnEntry, live: ReadonlySet<string>, now: number): boolean {
    if (entry.instance !== undefined) return live.has(entry.instance);
    return (entry.expiresAt ?? 0) > now;
  }

  async #read(prefix: Deno.KvKey): Promise<[Deno.KvEntry<ConnEntry>[], Liveness]> {
    const entries = await Array.fromAsync(this.#kv.list<ConnEntry>({ prefix }));
    return [entries, await this.#leases.live()];
  }

  async #live(room: string, user: UserId): Promise<Deno.KvEntry<ConnEntry>[]> {
    const [entries, live] = await this.#read(userPrefix(room, user));
    const now = Date.now();
    return entries.filter((e) => this.#alive(e.value, live.ids, now));
  }

  async #serialised<T>(
    room: string,
    user: UserId,
    build: (op: Deno.AtomicOperation, live: Deno.KvEntry<ConnEntry>[]) => T,
  ): Promise<T> {
    for (let attempt = 0;; attempt++) {
      const lock = await this.#kv.get(userLock(room, user));
      const live = await this.#live(room, user);
      const op = this.#kv.atomic().check(lock);
      const result = build(op, live);
      op.set(userLock(room, user), Date.now(), { expireIn: LOCK_TTL_MS });
      try {
        if ((await op.commit()).ok) return result;
      } catch (err) {
        if (!/database is locked/i.test((err as Error).message) || attempt > 100) throw err;
      }
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 2)));
    }
  }

  /** Records a connection; `first` when the user had no other live one in the room. */
  enter(room: string, user: UserProfile, connId: string): Promise<{ first: boolean }> {
    return this.#serialised(room, user.id, (op, live) => {
      const entry: ConnEntry = { user, instance: this.#leases.id };
      op.set(connKey(room, user.id, connId), entry);
      return { first: !live.some((e) => e.key[3] !== connId) };
    });
  }

  /** Removes a connection; `last` when no other live one of the user remains in the room. */
  exit(room: string, userId: UserId, connId: string): Promise<{ last: boolean }> {
    return this.#serialised(room, userId, (op, live) => {
      op.delete(connKey(room, userId, connId));
      const had = live.some((e) => e.key[3] === connId);
      return { last: had && !live.some((e) => e.key[3] !== connId) };
    });
  }

  /** The users with a live connection in the room, each once, in order of id. */
  async list(room: string): Promise<UserProfile[]> {
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
   * Deletes lapsed entries, and this server's own entries whose connection `open` says is gone
   * (an enter that lost a race with its exit); users left with none are returned once, whichever
   * isolate sweeps.
   */
  async sweep(room: string, open?: (connId: string) => boolean): Promise<UserProfile[]> {
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
    for (const entries of byUser.values()) {
      const lapsed = entries.filter(dead);
      if (lapsed.length === 0) continue;
      const user = lapsed[0].value.user;
      const stillLive = entries.length > lapsed.length;
      const lock = await this.#kv.get(userLock(room, user.id));
      const op = this.#kv.atomic().check(lock);
      // Checking each lapsed entry means only one sweeper wins; checking the leases judged dead,
      // that a server which renewed after all keeps its users.
      for (const e of lapsed) op.check(e).delete(e.key);
      const servers = new Set(lapsed.map((e) => e.value.instance).filter((i) => i !== undefined));
      servers.delete(this.#leases.id);
      for (const server of servers) live.check(op, server);
      op.set(userLock(room, user.id), now, { expireIn: LOCK_TTL_MS });
      const res = await op.commit().catch(() => ({ ok: false }));
      if (res.ok && !stillLive) gone.push(user);
    }
    return gone;
  }
}
