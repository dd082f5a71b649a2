/** Token buckets per connection and per user: a burst is allowed, a flood is refused, then closed. */

/** What to do with one inbound frame. */
export type RateVerdict = "ok" | "limited" | "close";

/** Limits: frames per second (sustained) for one connection and for all of a user's here. */
export interface RateLimits {
  /** Sustained frames per second per connection; bursts up to twice that. */
  perConnection: number;
  /** Sustained frames per second per user on this isolate; bursts up to twice that. */
  perUser: number;
}

interface Bucket {
  tokens: number;
  at: number;
  strikes: number;
}

/**
 * Refused frames count as strikes; a connection that keeps sending after as many refusals as its
 * burst size is told to close. Per-user buckets count this isolate's connections only.
 */
export class RateLimiter {
  #limits: RateLimits;
  #conns = new Map<string, Bucket>();
  #users = new Map<string, Bucket>();
  #now: () => number;

  /** Uses `limits`; `now` is injectable for tests. */
  constructor(limits: RateLimits, now: () => number = () => performance.now()) {
    this.#limits = limits;
    this.#now = now;
  }

  #refill(bucket: Bucket, rate: number, now: number): void {
    bucket.tokens = Math.min(rate * 2, bucket.tokens + (now - bucket.at) / 1000 * rate);
    bucket.at = now;
  }

  #bucket(map: Map<string, Bucket>, key: string, rate: number, now: number): Bucket {
    let bucket = map.get(key);
    if (!bucket) map.set(key, bucket = { tokens: rate * 2, at: now, strikes: 0 });
    else this.#refill(bucket, rate, now);
    return bucket;
  }

  /** Takes a token for one frame of `connId` (owned by `user`). */
  take(user: string | number, connId: string): RateVerdict {
    const now = this.#now();
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

  /** Drops a closed connection's bucket (and idle user buckets now and then). */
  forget(connId: string): void {
    this.#conns.delete(connId);
    if (this.#users.size > 10_000) {
      const now = this.#now();
      for (const [user, bucket] of this.#users) {
        this.#refill(bucket, this.#limits.perUser, now);
        if (bucket.tokens >= this.#limits.perUser * 2) this.#users.delete(user);
      }
    }
  }
}
