/** Presence on Deno KV: one entry per connection, a per-user key that serialises join and leave. */

import type { PresenceStore, UserId, UserProfile } from "../core/types.ts";

interface ConnEntry {
  user: UserProfile;
  expiresAt: number;
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

/**
 * Entries carry their own deadline (KV deletes expired keys lazily, so reads filter by it) and are
 * renewed while the socket lives; a killed isolate's entries lapse after the TTL and the next
 * sweep reports those users as gone.
 */
export class KvPresenceStore implements PresenceStore {
  #kv: Deno.Kv;
  #ttlMs: number;

  /** Keeps entries for `ttlMs` after their last renewal. */
  constructor(kv: Deno.Kv, ttlMs = 30_000) {
    this.#kv = kv;
    this.#ttlMs = ttlMs;
  }

  async #live(room: string, user: UserId): Promise<Deno.KvEntry<ConnEntry>[]> {
    const now = Date.now();
    const out: Deno.KvEntry<ConnEntry>[] = [];
    for await (const e of this.#kv.list<ConnEntry>({ prefix: userPrefix(room, user) })) {
      if (e.value.expiresAt > now) out.push(e);
    }
    return out;
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
      op.set(userLock(room, user), Date.now(), { expireIn: this.#ttlMs * 4 });
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
      op.set(connKey(room, user.id, connId), { user, expiresAt: Date.now() + this.#ttlMs }, {
        expireIn: this.#ttlMs * 2,
      });
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

  /** Pushes the entry's deadline a TTL into the future. */
  async renew(room: string, user: UserProfile, connId: string): Promise<void> {
    await this.#kv.set(connKey(room, user.id, connId), {
      user,
      expiresAt: Date.now() + this.#ttlMs,
    }, { expireIn: this.#ttlMs * 2 });
  }

  /** The users with a live connection in the room, each once, in order of id. */
  async list(room: string): Promise<UserProfile[]> {
    const now = Date.now();
    const users = new Map<string, UserProfile>();
    for await (const e of this.#kv.list<ConnEntry>({ prefix: roomPrefix(room) })) {
      if (e.value.expiresAt > now && !users.has(String(e.key[2]))) {
        users.set(String(e.key[2]), e.value.user);
      }
    }
    return [...users.values()];
  }

  /** Deletes lapsed entries; users left with none are returned once, whichever isolate sweeps. */
  async sweep(room: string): Promise<UserProfile[]> {
    const now = Date.now();
    const byUser = new Map<string, Deno.KvEntry<ConnEntry>[]>();
    for await (const e of this.#kv.list<ConnEntry>({ prefix: roomPrefix(room) })) {
      const list = byUser.get(String(e.key[2])) ?? [];
      list.push(e);
      byUser.set(String(e.key[2]), list);
    }
    const gone: UserProfile[] = [];
    for (const entries of byUser.values()) {
      const lapsed = entries.filter((e) => e.value.expiresAt <= now);
      if (lapsed.length === 0) continue;
      const user = lapsed[0].value.user;
      const stillLive = entries.length > lapsed.length;
      const lock = await this.#kv.get(userLock(room, user.id));
      const op = this.#kv.atomic().check(lock);
      // Checking each lapsed entry means only one sweeper (or a racing renewal) wins.
      for (const e of lapsed) op.check(e).delete(e.key);
      op.set(userLock(room, user.id), now, { expireIn: this.#ttlMs * 4 });
      const res = await op.commit().catch(() => ({ ok: false }));
      if (res.ok && !stillLive) gone.push(user);
    }
    return gone;
  }
}
