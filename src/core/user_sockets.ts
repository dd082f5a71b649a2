/**
 * How many sockets each user holds on this isolate, and how fast they open them: one token must
 * not be able to open thousands of sockets (each replays history and writes presence), nor
 * churn them faster than presence can be written.
 */

import { type TokenBucket, TokenBuckets } from "./rate_limiter.ts";

/** Why a socket was refused. */
export type SocketRefusal = "too_many" | "too_fast";

/** The close reason (and error text) of each refusal. */
export const SOCKET_REFUSALS: Record<SocketRefusal, string> = {
  too_many: "Too many connections for this user",
  too_fast: "Connecting too fast: try again shortly",
};

/** Open sockets per user on this isolate, and a token bucket of opens per user. */
export class UserSockets {
  #max: number;
  #open = new Map<string, number>();
  #opens: TokenBuckets;
  #now: () => number;

  /**
   * At most `maxPerUser` sockets per user at once, opened at `opensPerSecond` on average (bursts
   * of twice that); `now` is injectable for tests.
   */
  constructor(
    maxPerUser: number,
    opensPerSecond: number,
    now: () => number = () => performance.now(),
  ) {
    this.#max = maxPerUser;
    this.#now = now;
    this.#opens = new TokenBuckets<TokenBucket>(
      opensPerSecond,
      opensPerSecond * 2,
      (tokens, at) => ({ tokens, at }),
    );
  }

  /** Counts a new socket of `user`, or says why it may not open; `release` it once closed. */
  admit(user: string | number): SocketRefusal | undefined {
    const key = String(user);
    const open = this.#open.get(key) ?? 0;
    if (open >= this.#max) return "too_many";
    if (this.#opens.take(key, 1, this.#now()) < 1) return "too_fast";
    this.#open.set(key, open + 1);
    return undefined;
  }

  /** Uncounts a socket `admit` counted. */
  release(user: string | number): void {
    const key = String(user);
    const open = this.#open.get(key) ?? 0;
    if (open <= 1) this.#open.delete(key);
    else this.#open.set(key, open - 1);
  }

  /** Sockets `user` holds here. */
  openOf(user: string | number): number {
    return this.#open.get(String(user)) ?? 0;
  }
}
