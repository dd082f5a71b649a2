/**
 * The sweep of every room's presence entries: room sweeps visit only the rooms a live server has
 * members in, so a crashed server's entries in rooms nobody enters again would stay for good.
 */

import type { UserProfile } from "../core/types.ts";
import type { PresenceLeases } from "./kv_presence_store.ts";
import { commitRetryingLocks } from "./kv_reads.ts";

/** The KV key of the lease that lets one server at a time sweep every room. */
const SWEEP_KEY: Deno.KvKey = ["presence_sweep"];
/** Entries read per page: one page at a time, so a KV of any size costs bounded reads each. */
const DEFAULT_PAGE_SIZE = 500;

/** The last sweep of every room begun, as the lease records it. */
interface SweepLease {
  /** Counts the sweeps begun, so that a server can tell one begun after it asked for one. */
  round: number;
  /** The server that sweeps (or swept). */
  by: string;
  /** The servers alive when it began, whose entries it kept. */
  live: string[];
  /** The servers whose leases it read lapsed when it began, whose entries it deleted. */
  dead: string[];
  /** True once it went through every page. */
  done: boolean;
}

/** What the sweeper deletes with: a page of every room's entries at a time. */
export interface PresencePages {
  /** Deletes the dead servers' entries among the next page's, returning the users left with none. */
  sweepPage(
    cursor?: string,
    limit?: number,
  ): Promise<{ gone: { room: string; user: UserProfile }[]; cursor?: string }>;
}

/**
 * Sweeps every room once a server died, and once after this server starts (a server that died
 * before then left no lapsed lease to read). One server sweeps for all: whoever sees the need
 * first takes the lease and the others wait for it to end, which serves them if it began after
 * they saw the death and counted the dead server dead. The lease holds while its holder's
 * registry lease does, so a killed sweeper is followed by another, with no clock to trust.
 */
export class KvPresenceSweeper {
  #kv: Deno.Kv;
  #pages: PresencePages;
  #leases: PresenceLeases;
  #onGone: (room: string, user: UserProfile) => void;
  #pageSize: number;
  /**
   * Dead servers whose entries may be left, each with the round a sweep must come after (unset
   * until the lease is read); "" stands for those that died before this server started.
   */
  #wanted = new Map<string, number | undefined>([["", undefined]]);
  /** Servers seen lapsed: their leases stay readable for a while, and count as one death. */
  #seenDead = new Set<string>();
  #lastLive?: ReadonlySet<string>;
  #running?: Promise<void>;

  /** Sweeps with `pages`, telling `onGone` of each user a sweep left with no entry in a room. */
  constructor(
    kv: Deno.Kv,
    pages: PresencePages,
    leases: PresenceLeases,
    onGone: (room: string, user: UserProfile) => void,
    options: { pageSize?: number } = {},
  ) {
    this.#kv = kv;
    this.#pages = pages;
    this.#leases = leases;
    this.#onGone = onGone;
    this.#pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
  }

  /**
   * Reads the leases, and sweeps every room, a page at a time, when a death calls for it and no
   * other server is sweeping; stops between pages once `poll.stopped` is set. A call while a
   * round is under way shares it.
   */
  round(poll?: { readonly stopped: boolean }): Promise<void> {
    return this.#running ??= this.#round(poll).finally(() => this.#running = undefined);
  }

  async #round(poll?: { readonly stopped: boolean }): Promise<void> {
    const live = await this.#leases.live();
    for (const id of this.#lastLive ?? []) if (!live.ids.has(id)) this.#want(id);
    for (const id of this.#seenDead) if (!live.seen?.has(id)) this.#seenDead.delete(id);
    for (const id of live.seen ?? []) {
      if (live.ids.has(id) || this.#seenDead.has(id)) continue;
      this.#seenDead.add(id);
      this.#want(id);
    }
    // A server that came back writes its entries again itself.
    for (const id of this.#wanted.keys()) if (live.ids.has(id)) this.#wanted.delete(id);
    this.#lastLive = live.ids;
    if (this.#wanted.size === 0) return;

    const held = await this.#kv.get<SweepLease>(SWEEP_KEY);
    const lease = held.value;
    const round = lease?.round ?? 0;
    for (const [id, since] of this.#wanted) {
      const after = since ?? round;
      this.#wanted.set(id, after);
      if (!lease?.done) continue;
      // A sweep that read the server lapsed began after all its entries were written (one from
      // before the death was seen here may predate a return); one begun after the death was seen
      // deleted them too, unless it still read the server alive.
      if (round >= after && lease.dead.includes(id)) this.#wanted.delete(id);
      else if (round > after) {
        if (id === "" || !lease.live.includes(id)) this.#wanted.delete(id);
        else this.#wanted.set(id, round);
      }
    }
    if (this.#wanted.size === 0) return;
    // Another server sweeping: this one waits, and sweeps after it if it began too early.
    if (lease && !lease.done && lease.by !== this.#leases.id && live.ids.has(lease.by)) return;
    const mine: SweepLease = {
      round: round + 1,
      by: this.#leases.id,
      live: [...live.ids],
      dead: [...live.seen ?? []].filter((id) => !live.ids.has(id)),
      done: false,
    };
    // Isolates starting together write at once: the lease waits out SQLite's write lock.
    const taken = await commitRetryingLocks(this.#kv.atomic().check(held).set(SWEEP_KEY, mine));
    if (!taken.ok) return;
    let cursor: string | undefined;
    do {
      if (poll?.stopped) return;
      const page = await this.#pages.sweepPage(cursor, this.#pageSize);
      for (const { room, user } of page.gone) this.#onGone(room, user);
      cursor = page.cursor;
    } while (cursor !== undefined);
    // Unless another server took the lease over meanwhile (this one's had lapsed): it says.
    await commitRetryingLocks(
      this.#kv.atomic().check({ key: SWEEP_KEY, versionstamp: taken.versionstamp })
        .set(SWEEP_KEY, { ...mine, done: true }),
    );
  }

  #want(id: string): void {
    if (!this.#wanted.has(id)) this.#wanted.set(id, undefined);
  }
}
