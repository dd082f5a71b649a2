/** Token buckets per connection and per user: a burst is allowed, a flood is refused, then closed. */

/** Buckets a map holds before its first sweep of idle ones. */
const PRUNE_FROM = 10_000;

/** What to do with one inbound frame. */
export type RateVerdict = "ok" | "limited" | "close";

/**
 * A typing start repeated within this long of the last one taken says nothing new (clients send
 * one per keystroke; a held key repeats ~30 a second): dropped without taking from typing's own
 * limit. The others' indicators live far longer than this (`TYPING_TIMEOUT_SECONDS`).
 */
export const TYPING_REPEAT_MS = 1000;

/**
 * When a socket's typing starts were last taken, per key (a room), so that a start repeated
 * within {@link TYPING_REPEAT_MS} is dropped; a stop that went through forgets its key.
 */
export class TypingStarts {
  #at = new Map<string, number>();
  #max: number;

  /** Remembers up to `max` keys (past it, it starts over). */
  constructor(max = 100) {
    this.#max = max;
  }

  /** True while a start for `key` was taken and not stopped since. */
  typing(key: string): boolean {
    return this.#at.has(key);
  }

  /** True when a start for `key` now repeats one taken within {@link TYPING_REPEAT_MS}. */
  repeats(key: string, now: number): boolean {
    return now - (this.#at.get(key) ?? -Infinity) < TYPING_REPEAT_MS;
  }

  /** Notes a start for `key` taken at `now`. */
  started(key: string, now: number): void {
    if (!this.#at.has(key) && this.#at.size >= this.#max) this.#at.clear();
    this.#at.set(key, now);
  }

  /** Forgets `key`: its stop went through. */
  stopped(key: string): void {
    this.#at.delete(key);
  }
}

/** Limits: frames per second (sustained) for one connection and for all of a user's here. */
export interface RateLimits {
  /** Sustained frames per second per connection; bursts up to twice that. */
  perConnection: number;
  /** Sustained frames per second per user on this isolate; bursts up to twice that. */
  perUser: number;
}

/** Tokens a bucket holds, and when (performance.now()) that was last worked out. */
export interface TokenBucket {
  tokens: number;
  at: number;
}

/** Adds what `rate` tokens a second have brought since the bucket's last look, up to `burst`. */
export function refill(bucket: TokenBucket, rate: number, burst: number, now: number): void {
  bucket.tokens = Math.min(burst, bucket.tokens + (now - bucket.at) / 1000 * rate);
  bucket.at = now;
}

/**
 * Token buckets by key, each refilled at `rate` a second up to `burst` and created full. Full
 * buckets are swept out as the map grows: a full bucket is the same as none, so the map holds only
 * keys active in the last seconds, also keys no close ever forgets (the REST API's `api:<user>`,
 * a user's own). The next sweep waits until the map has doubled, so sweeping stays linear overall.
 */
export class TokenBuckets<B extends TokenBucket = TokenBucket> {
  #map = new Map<string, B>();
  #pruneAt = PRUNE_FROM;
  readonly #rate: number;
  readonly #burst: number;
  readonly #make: (tokens: number, at: number) => B;

  /** Buckets of `rate` tokens a second up to `burst`; `make` builds a new one with its fields. */
  constructor(rate: number, burst: number, make: (tokens: number, at: number) => B) {
    this.#rate = rate;
    this.#burst = burst;
    this.#make = make;
  }

  /** The key's bucket, refilled up to `now` (a new one is full). */
  get(key: string, now: number): B {
    let bucket = this.#map.get(key);
    if (bucket) {
      refill(bucket, this.#rate, this.#burst, now);
      return bucket;
    }
    if (this.#map.size >= this.#pruneAt) this.#prune(now);
    this.#map.set(key, bucket = this.#make(this.#burst, now));
    return bucket;
  }

  /** Takes up to `wanted` whole tokens from the key's bucket as of `now`; returns how many. */
  take(key: string, wanted: number, now: number): number {
    const bucket = this.get(key, now);
    const taken = Math.max(0, Math.min(wanted, Math.floor(bucket.tokens)));
    bucket.tokens -= taken;
    return taken;
  }

  /** Forgets the key's bucket. */
  delete(key: string): void {
    this.#map.delete(key);
  }

  /** Buckets held. */
  get size(): number {
    return this.#map.size;
  }

  #prune(now: number): void {
    for (const [key, bucket] of this.#map) {
      refill(bucket, this.#rate, this.#burst, now);
      if (bucket.tokens >= this.#burst) this.#map.delete(key);
    }
    this.#pruneAt = Math.max(PRUNE_FROM, this.#map.size * 2);
  }
}

interface Bucket extends TokenBucket {
  strikes: number;
  /** Typing frames refused since a frame was taken (see `RateLimiter.typing`). */
  typingStrikes: number;
}

const strikeBucket = (tokens: number, at: number): Bucket => ({
  tokens,
  at,
  strikes: 0,
  typingStrikes: 0,
});

/**
 * Refused frames count as strikes; a connection that keeps sending after as many refusals as its
 * burst size is told to close. Per-user buckets count this isolate's connections only.
 */
export class RateLimiter {
  #limits: RateLimits;
  #conns: TokenBuckets<Bucket>;
  #users: TokenBuckets<Bucket>;
  // Typing has buckets of its own: clients send it ahead of their messages (a start per
  // keystroke, a stop after each pause, a whole offline buffer of them on reconnect), and from the
  // same buckets it used up the burst the messages behind it needed.
  #typingConns: TokenBuckets;
  #typingUsers: TokenBuckets;
  #now: () => number;

  /** Uses `limits`; `now` is injectable for tests. */
  constructor(limits: RateLimits, now: () => number = () => performance.now()) {
    this.#limits = limits;
    this.#now = now;
    this.#conns = new TokenBuckets(limits.perConnection, limits.perConnection * 2, strikeBucket);
    this.#users = new TokenBuckets(limits.perUser, limits.perUser * 2, strikeBucket);
    const bucket = (tokens: number, at: number) => ({ tokens, at });
    this.#typingConns = new TokenBuckets(limits.perConnection, limits.perConnection * 2, bucket);
    this.#typingUsers = new TokenBuckets(limits.perUser, limits.perUser * 2, bucket);
  }

  /** Buckets held, connections' and users' together, typing's too (what the sweep's test checks). */
  get size(): number {
    return this.#conns.size + this.#users.size + this.#typingConns.size + this.#typingUsers.size;
  }

  /**
   * Takes a token for one frame of `connId` (owned by `user`); a refused frame counts as a strike
   * unless `strike` is false (a frame the caller drops at no cost).
   */
  take(user: string | number, connId: string, strike = true): RateVerdict {
    const now = this.#now();
    const conn = this.#conns.get(connId, now);
    const owner = this.#users.get(String(user), now);
    if (conn.tokens >= 1 && owner.tokens >= 1) {
      conn.tokens -= 1;
      owner.tokens -= 1;
      conn.strikes = 0;
      conn.typingStrikes = 0;
      return "ok";
    }
    if (strike) conn.strikes++;
    return conn.strikes > this.#limits.perConnection * 2 ? "close" : "limited";
  }

  /**
   * Takes a token for one typing frame of `connId` (owned by `user`) from buckets of its own, of
   * the same rates as the other frames', so that typing never takes what a message needs. With
   * `strike`, a refusal counts as a strike of the connection's typing (a client whose typing alone
   * runs past its own burst is flooding), which any frame taken clears, a typing one too; typing
   * never clears the strikes of other frames refused, so a flood of sends with typing between them
   * is still closed. The caller drops a refused one without an error.
   */
  typing(user: string | number, connId: string, strike = false): RateVerdict {
    const now = this.#now();
    const conn = this.#typingConns.get(connId, now);
    const owner = this.#typingUsers.get(String(user), now);
    if (conn.tokens >= 1 && owner.tokens >= 1) {
      conn.tokens -= 1;
      owner.tokens -= 1;
      // A fast typist's frames run past the rate now and then: only a flood refused throughout
      // adds up to a close.
      if (strike) this.#conns.get(connId, now).typingStrikes = 0;
      return "ok";
    }
    if (!strike) return "limited";
    const frames = this.#conns.get(connId, now);
    frames.typingStrikes++;
    return frames.typingStrikes > this.#limits.perConnection * 2 ? "close" : "limited";
  }

  /**
   * Takes a token for one frame of `connId` (owned by `user`) that waits for its turn rather than
   * being refused (a rejoin's joins): only while both buckets keep a quarter of their burst
   * besides, for the frames that are refused when over (a send made meanwhile). Returns 0 when it
   * took one, else the milliseconds until one may be taken. Never a strike, and clears none: a
   * flood of other frames between paced ones is still closed.
   */
  pace(user: string | number, connId: string): number {
    const now = this.#now();
    const conn = this.#conns.get(connId, now);
    const owner = this.#users.get(String(user), now);
    const { perConnection, perUser } = this.#limits;
    // What each bucket lacks for a token above its reserve (burst / 4, as burst is 2 × rate).
    const connShort = 1 + perConnection / 2 - conn.tokens;
    const ownerShort = 1 + perUser / 2 - owner.tokens;
    if (connShort <= 0 && ownerShort <= 0) {
      conn.tokens -= 1;
      owner.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil(Math.max(connShort / perConnection, ownerShort / perUser) * 1000));
  }

  /**
   * Counts a frame of `connId` refused for another reason than the rate (one past the bound of
   * the frames waiting their turn) as a strike, so that a flood of them is closed as one of
   * frames refused for the rate is.
   */
  strike(connId: string): RateVerdict {
    const conn = this.#conns.get(connId, this.#now());
    conn.strikes++;
    return conn.strikes > this.#limits.perConnection * 2 ? "close" : "limited";
  }

  /** Drops a closed connection's buckets. */
  forget(connId: string): void {
    this.#conns.delete(connId);
    this.#typingConns.delete(connId);
  }
}
