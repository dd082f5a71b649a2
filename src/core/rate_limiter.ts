/** Token buckets per connection and per user: a burst is allowed, a flood is refused, then closed. */

/** Buckets a map holds before its first sweep of idle ones. */
const PRUNE_FROM = 10_000;

/** What to do with one inbound frame. */
export type RateVerdict = "ok" | "limited" | "close";

/** Limits: frames per second (sustained) for one connection and for all of a user's here. */
export interface RateLimits {
  /** Sustained frames per second per connection; bursts up to twice that. */
  perConnection: number;
  /** Sustained frames per second per user on this isolate; bursts up to twice that. */
  perUser: number;
}

/** One map of buckets, and the size at which it is next swept of idle ones (see `#prune`). */
interface Buckets {
  map: Map<string, Bucket>;
  pruneAt: number;
}

/** Tokens a bucket holds, and when (performance.now()) that was last worked out. */
export interface TokenBucket {
  tokens: number;
  at: number;
}

/** Adds what `rate` tokens a second have brought since the bucket's last look, up to `burst`. */
export function refill(bucket: TokenBucket, rate: number, burst: number, now: number): void {
  // A frame that arrived before the bucket's last look (another connection's frame was counted
  // first) brings nothing; counting it must not take back what was refilled.
  if (now <= bucket.at) return;
  bucket.tokens = Math.min(burst, bucket.tokens + (now - bucket.at) / 1000 * rate);
  bucket.at = now;
}

interface Bucket extends TokenBucket {
  strikes: number;
}

/**
 * Refused frames count as strikes; a connection that keeps sending after as many refusals as its
 * burst size is told to close. Per-user buckets count this isolate's connections only.
 */
export class RateLimiter {
  #limits: RateLimits;
  #conns: Buckets = { map: new Map(), pruneAt: PRUNE_FROM };
  #users: Buckets = { map: new Map(), pruneAt: PRUNE_FROM };
  #now: () => number;

  /** Uses `limits`; `now` is injectable for tests. */
  constructor(limits: RateLimits, now: () => number = () => performance.now()) {
    this.#limits = limits;
    this.#now = now;
  }

  #bucket(buckets: Buckets, key: string, rate: number, now: number): Bucket {
    let bucket = buckets.map.get(key);
    if (bucket) {
      refill(bucket, rate, rate * 2, now);
      return bucket;
    }
    if (buckets.map.size >= buckets.pruneAt) this.#prune(buckets, rate, now);
    buckets.map.set(key, bucket = { tokens: rate * 2, at: now, strikes: 0 });
    return bucket;
  }

  /**
   * Drops the buckets that have refilled: the same as no bucket (the next frame is let through
   * either way, which clears strikes), so the maps hold only senders active in the last seconds.
   * Keys no close ever forgets (the REST API's `api:<user>`, a user's own bucket) would otherwise
   * grow with every distinct caller. The next sweep waits until the map has doubled, so sweeping
   * stays linear overall.
   */
  #prune(buckets: Buckets, rate: number, now: number): void {
    for (const [key, bucket] of buckets.map) {
      refill(bucket, rate, rate * 2, now);
      if (bucket.tokens >= rate * 2) buckets.map.delete(key);
    }
    buckets.pruneAt = Math.max(PRUNE_FROM, buckets.map.size * 2);
  }

  /** Buckets held, connections' and users' together (what the sweep's test checks). */
  get size(): number {
    return this.#conns.map.size + this.#users.map.size;
  }

  /**
   * Takes a token for one frame of `connId` (owned by `user`), as of `at` (when the frame
   * arrived; now when left out).
   */
  take(user: string | number, connId: string, at?: number): RateVerdict {
    const now = at ?? this.#now();
    const conn = this.#bucket(this.#conns, connId, this.#limits.perConnection, now);
    const owner = this.#bucket(this.#users, String(user), this.#limits.perUser, now);
    if (conn.tokens >= 1 && owner.tokens >= 1) {
      conn.tokens -= 1;
      owner.tokens -= 1;
      conn.strikes = 0;
      return "ok";
    }
    conn.strikes++;
    return conn.strikes > this.#limits.perConnection * 2 ? "close" : "limited";
  }

  /** Drops a closed connection's bucket. */
  forget(connId: string): void {
    this.#conns.map.delete(connId);
  }
}
