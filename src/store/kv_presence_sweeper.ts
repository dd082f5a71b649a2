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
  /** The servers whose registry entries it read when it began, whose entries it kept. */
  live: string[];
  /** The servers its sweeper had seen go when it began, whose entries it deleted, all of them. */
  gone: string[];
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
 * Sweeps every room once a server's registry entry is gone (KV expires it two stale times
 * after its last renewal), and once after this server starts (for servers gone before then).
 * Only entries of servers whose registry entry is gone are deleted: one merely read as lapsed
 * may be a live server misjudged (a first read on a clock ahead of its own, a pause it has not
 * noticed yet), and it would never write back users it does not know it lost; a server whose
 * entry went writes them back when it next renews. One server sweeps for all: whoever sees the
 * need first takes the lease and the others wait for it to end, which serves them if it began
 * after they saw the server go and did not read its entry. The lease holds while its holder's
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
  /** The servers whose registry entries the last read found. */
  #lastPresent?: ReadonlySet<string>;
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
    const present = live.seen ?? live.ids;
    for (const id of this.#lastPresent ?? []) if (!present.has(id)) this.#want(id);
    // A server that came back writes its entries again itself.
    for (const id of this.#wanted.keys()) if (present.has(id)) this.#wanted.delete(id);
    this.#lastPresent = present;
    if (this.#wanted.size === 0) return;

    const held = await this.#kv.get<SweepLease>(SWEEP_KEY);
    const lease = held.value;
    const round = lease?.round ?? 0;
    for (const [id, since] of this.#wanted) {
      const after = since ?? round;
      this.#wanted.set(id, after);
      if (!lease?.done) continue;
      // A sweep begun by a server that had seen it gone deleted all its entries (its registry
      // entry stays gone: a return writes a new one, and its entries itself); so did one begun
      // after it was seen gone here, unless it still read the server's registry entry (KV had
      // not expired it yet there): then one more is due.
      if (round >= after && id !== "" && lease.gone?.includes(id)) this.#wanted.delete(id);
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
      live: [...present],
      gone: [...this.#wanted.keys()].filter((id) => id !== ""),
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
