/** This isolate's connections by room: local delivery, seq bookkeeping, gap filling. */

import type { HeadWatcher } from "../broker/kv_head_watcher.ts";
import type { PresenceWatch } from "../broker/kv_room_signals.ts";
import { failureLog } from "../core/failure_log.ts";
import {
  type Broker,
  EVERY_ROOM,
  isEviction,
  type Message,
  type MessageStore,
  type Principal,
  type RoomEvent,
  type UserId,
} from "../core/types.ts";

/** A connection's membership of rooms, as the hub sees it. */
export interface Member {
  /** The authenticated user behind the connection. */
  readonly user: Principal;
  /** Members with the same key receive identical bytes, so a frame is rendered once per key. */
  readonly renderKey: string;
  /** False to skip an event for this member (its own typing, its own message in some dialects). */
  wants(event: RoomEvent): boolean;
  /** The frame for this event in the member's wire shape, or undefined to send nothing. */
  render(event: RoomEvent): string | undefined;
  /** Writes a frame to the socket. */
  send(frame: string): void;
  /**
   * Called when the room is closed or the member's access is revoked; a member that stands for
   * sockets of several users (one with `deliver`) gets every revocation and picks its sockets:
   * the user's, or with `principal` (a recheck refused that one), only those signed in by it.
   */
  evict(event: RoomEvent & { type: "closed" | "revoked" }, principal?: Principal): void;
  /**
   * Takes the event itself instead of `render` + `send`: for a member that stands for many
   * sockets and fans out further (the Socket.IO bridge encodes once for all its sockets).
   */
  deliver?(event: RoomEvent): void;
  /**
   * For a member with `deliver`: the users of the sockets it stands for, whose access a
   * `recheck` event checks again (the others' is `user`'s).
   */
  principals?(): Iterable<Principal>;
  /**
   * Set (for the whole membership) by a member that takes every message event and sends its
   * `render` unchanged: the hub then writes each message to all such members of a room in one
   * pass over an array of their sockets, instead of calling `wants`, `render` and `send` for each.
   */
  readonly direct?: DirectSocket;
  /**
   * Messages of the room were deleted (retention, a purge) before this member got them, while the
   * hub was behind the store: told before `firstSeq`, the next message it gets (`head` + 1 when
   * nothing up to `head` is left), with `head`, the newest seq the hub knows of.
   */
  gap?(firstSeq: number, head: number): void;
  /**
   * The room's generation (deletion count) the member joined under, for members that know it:
   * a deletion notice naming a generation evicts only members with an older one. A member that
   * stands for many sockets leaves it out and sorts them in `evict`.
   */
  readonly epoch?: number;
  /**
   * The socket a replay to this member waits on (see {@link Pacer}); without one the replay is
   * written a page at a time.
   */
  readonly pacer?: Pacer;
}

/**
 * A socket whose unsent bytes a replay (a join's `since`) keeps under its slow-consumer bound:
 * written in one go, hundreds of long messages pass it before the peer can read a byte.
 */
export interface Pacer {
  /** Bytes the socket may take now; 0 or less while it should drain first. */
  writable(): number;
  /** Resolves once it has drained enough to take more, to false when it closed first. */
  drained(): Promise<boolean>;
}

/** Anything a text frame can be written to (a WebSocket). */
export interface FrameWriter {
  /** Writes one frame. */
  send(frame: string): void;
}

/** A socket the hub writes message frames to itself, for a member with {@link Member.direct}. */
export interface DirectSocket {
  /** Writes a frame with none of the socket's per-frame bookkeeping (see `checkBuffer`). */
  readonly writer: FrameWriter;
  /** Closes the socket as a slow consumer if it has more unsent bytes than it allows. */
  checkBuffer(): void;
}

/**
 * A room's direct members with one render key. The arrays stay dense (a leaving member's slot
 * takes the last one), so a message is one loop over `writers`.
 */
interface Lane {
  members: Member[];
  writers: FrameWriter[];
  /** Each member's slot in the arrays. */
  slots: Map<Member, number>;
  /** Where the next message's buffer checks start. */
  cursor: number;
}

/**
 * Direct members have their outbound buffer checked in turns: each message checks this share of
 * a lane (more for large frames, 64 KiB's worth of frames per check), so every socket is checked
 * at least once in 32 of the room's messages, as a socket's own sends are in 32 of its frames. A
 * socket in several rooms is checked by each, so a dialect makes few of its rooms direct.
 */
const CHECK_SHARE = 1 / 32;
const CHECK_BYTES = 65_536;

interface RoomState {
  members: Set<Member>;
  /** Direct members by render key; created with the first. */
  lanes?: Map<string, Lane>;
  /** Members without `direct`, which message events reach one call at a time. */
  others: number;
  /** Joins queued and not yet done: the state must outlive them even with no members. */
  joining: number;
  /** Highest seq delivered to this room's members. */
  last: number;
  /** The store's head could not be read when the state was made: `last` means nothing yet. */
  headUnknown?: boolean;
  /** Serialises message delivery so seq order holds while gaps are read back. */
  chain: Promise<void>;
  unsubscribe: () => void;
}

/** Counters the metrics endpoint reads. */
export interface HubStats {
  /** Messages read back from the store to fill a gap. */
  gapFills: number;
  /** Events dropped as already delivered. */
  duplicatesDropped: number;
  /** Frames written to direct members' sockets (their own counters do not see them). */
  directFrames: number;
  /** Runs of messages found deleted before the hub could deliver them. */
  gapsReported: number;
  /** Events the broker refused to carry to the other isolates. */
  publishFailures: number;
  /** Events heard a second time (by the other route), or after a later one of their kind. */
  repeatsDropped: number;
}

const PAGE = 500;

/**
 * True for a deletion notice naming a generation a member joined under, or before: a notice
 * heard twice, or late, must not evict the room's next life.
 */
export function spares(event: RoomEvent, epoch: number): boolean {
  return event.type === "closed" && event.generation !== undefined && epoch >= event.generation;
}

/** What `#firstHearing` orders an event by: a user's signals in a room, or the event alone. */
function heardKey(event: RoomEvent): string {
  const what = event.type === "typing" || event.type === "read" || event.type === "presence"
    ? `${event.type}\u0000${event.user.id}`
    : `#${event.serial}`;
  return `${event.origin}\u0000${event.room}\u0000${what}`;
}

/**
 * How long, and how many, events heard are remembered (see `#firstHearing`): a KV log's copy of
 * an event follows the channel's by a watch's latency (well under a second, seconds when the
 * store is slow).
 */
const REMEMBER_EVENT_MS = 60_000;
const REMEMBER_EVENTS = 100_000;

/**
 * Access checks a `recheck` runs at once: a room of thousands must not send thousands of reads
 * to the directory together.
 */
const RECHECKS_AT_ONCE = 16;

/**
 * The first seq a history page shows after `after`, when messages before it are missing: seqs
 * are dense, so a page of `after < seq <= upTo` that starts past `after + 1` (or is empty) means
 * messages deleted before they were read. Only a page's start can show it: a page is one
 * snapshot read (PAGE is at most KV's batch of 500), and deletions take the oldest first.
 */
function gapBefore(page: Message[], after: number, upTo: number): number | undefined {
  const next = page.length > 0 ? page[0].seq : upTo + 1;
  return next > after + 1 ? next : undefined;
}

/**
 * Every message, local or from the broker, passes through the room's chain: a seq already
 * delivered is dropped, a seq beyond the next one first reads the missing ones from the store.
 * So each member gets every message once, in seq order, whatever the broker drops or repeats.
 */
export class Hub {
  #rooms = new Map<string, RoomState>();
  #store: MessageStore;
  #broker: Broker;
  #heads?: HeadWatcher;
  #catchUpDelayMs: number;
  #access?: (user: Principal, room: string) => Promise<boolean>;
  #heldHere?: (room: string, userId: UserId) => boolean;
  #unsubscribeEveryRoom: () => void;
  /** The rechecks under way, one after another. */
  #rechecks: Promise<void> = Promise.resolve();
  /**
   * The newest serial handed on here per origin and room, kind and user of signals (per event
   * for the others), least recently heard first, with when (see {@link RoomEvent.serial}).
   */
  #heard = new Map<string, { serial: number; at: number }>();
  /** Per room and user, while watched: presence changes handed on, and the watches open. */
  #presenceWatches = new Map<string, { changes: number; watches: number }>();
  /** Delivery counters. */
  readonly stats: HubStats = {
    gapFills: 0,
    duplicatesDropped: 0,
    directFrames: 0,
    gapsReported: 0,
    publishFailures: 0,
    repeatsDropped: 0,
  };

  /**
   * Creates a hub over the store it fills gaps from and the broker it shares events through.
   * `heads`, built with the hub's {@link Hub.headAdvanced} as its callback, reports commits the
   * broker did not bring (other instances, dropped posts, the last message of a burst).
   * `access` decides, past any cache, whether a member may stay when a `recheck` comes.
   * `heldHere` says whether this isolate holds a live connection of a user in a room: a leave
   * of such a user heard from elsewhere is dropped (see ChatService.presenceHolds).
   */
  constructor(
    store: MessageStore,
    broker: Broker,
    options: {
      heads?: (hub: Hub) => HeadWatcher;
      catchUpDelayMs?: number;
      access?: (user: Principal, room: string) => Promise<boolean>;
      heldHere?: (room: string, userId: UserId) => boolean;
    } = {},
  ) {
    this.#store = store;
    this.#broker = broker;
    this.#access = options.access;
    this.#heldHere = options.heldHere;
    this.#unsubscribeEveryRoom = broker.subscribe(EVERY_ROOM, (event) => this.receive(event));
    this.#heads = options.heads?.(this);
    this.#catchUpDelayMs = options.catchUpDelayMs ?? 25;
  }

  #state(room: string): RoomState {
    let state = this.#rooms.get(room);
    if (state) return state;
    const created: RoomState = {
      members: new Set(),
      others: 0,
      joining: 0,
      last: 0,
      chain: Promise.resolve(),
      unsubscribe: () => {},
    };
    state = created;
    this.#rooms.set(room, created);
    const unsubscribe = this.#broker.subscribe(room, (event) => this.#receive(created, event));
    this.#heads?.add(room);
    created.unsubscribe = () => {
      unsubscribe();
      this.#heads?.remove(room);
    };
    this.#enqueue(created, () => this.#learnHead(created, room));
    return created;
  }

  /**
   * Starts the room's view at the store's head. A failed read is tried again by the next task:
   * left at 0, `last` would have the next message replay the room's whole history to everyone.
   */
  async #learnHead(state: RoomState, room: string): Promise<void> {
    try {
      state.last = Math.max(state.last, await this.#store.head(room));
      state.headUnknown = false;
    } catch (err) {
      state.headUnknown = true;
      console.error("hub: reading a room's head failed:", err);
    }
  }

  /**
   * Before a delivery relies on `last` while the head is unknown: everything before `seq` is
   * taken as delivered. That may skip what this hub missed, where reading from 0 would repeat
   * the room's whole history to every member. (A read now would count the message itself.)
   */
  #knowHead(state: RoomState, seq: number): void {
    if (!state.headUnknown) return;
    state.last = Math.max(state.last, seq);
    state.headUnknown = false;
  }

  #enqueue<T = void>(state: RoomState, task: () => Promise<T> | T): Promise<T> {
    const next = state.chain.then(task);
    state.chain = next.then(() => {}, (err) => console.error("hub: delivery task failed:", err));
    return next;
  }

  #receive(state: RoomState, event: RoomEvent): void {
    if (!this.#firstHearing(event)) return;
    // The user is present, and this isolate's members know it: it holds their socket, and a
    // lapse's restore tells its join only elsewhere. A leave from elsewhere is wrong here, and a
    // join tells nothing (another server that lapsed with this one, restoring the same user,
    // announces it). A sibling isolate's channel post is not checked against the store; heard
    // all the same, so that its copy in the log, read once they have gone, is not either.
    if (event.type === "presence" && this.#heldHere?.(event.room, event.user.id)) return;
    this.#presenceChanged(event);
    if (event.type === "message") {
      this.#enqueue(state, () => this.#deliverInOrder(state, event.message));
    } else {
      this.#fanout(state, event);
    }
  }

  async #deliverInOrder(state: RoomState, message: Message): Promise<void> {
    this.#knowHead(state, message.seq - 1);
    if (message.seq <= state.last) {
      this.stats.duplicatesDropped++;
      return;
    }
    await this.#fillTo(state, message.room, message.seq - 1, message.seq);
    this.#fanout(state, { type: "message", room: message.room, message });
    state.last = message.seq;
  }

  /**
   * Reads and delivers every stored message after the last delivered one up to `seq`, which is
   * committed (`head`, the newest seq known, is at least that); messages deleted before they were
   * read are told to the members as a gap instead of being skipped.
   */
  async #fillTo(state: RoomState, room: string, seq: number, head = seq): Promise<void> {
    while (seq > state.last) {
      const missing = await this.#store.list(room, {
        after: state.last,
        before: seq + 1,
        limit: PAGE,
      });
      const next = gapBefore(missing, state.last, seq);
      if (next !== undefined) {
        this.stats.gapsReported++;
        for (const member of state.members) {
          try {
            member.gap?.(next, head);
          } catch (err) {
            console.error("hub: telling a member of a gap failed:", err);
          }
        }
        state.last = next - 1;
      }
      for (const m of missing) {
        if (m.seq <= state.last) continue;
        this.stats.gapFills++;
        this.#fanout(state, { type: "message", room: m.room, message: m });
        state.last = m.seq;
      }
    }
  }

  /**
   * A room's head moved to `head` (seen by a KV watch). After a short grace period for the
   * broker's copy to arrive, whatever is still missing is read from the store.
   */
  headAdvanced(room: string, head: number): void {
    const state = this.#rooms.get(room);
    if (!state || head <= state.last) return;
    setTimeout(() => {
      if (this.#rooms.get(room) !== state || head <= state.last) return;
      this.#enqueue(state, () => {
        this.#knowHead(state, head - 1);
        return this.#fillTo(state, room, head);
      });
    }, this.#catchUpDelayMs);
  }

  #fanout(state: RoomState, event: RoomEvent): void {
    // Messages, the per-message path, pass one test; the rare control events are handled apart.
    if (event.type !== "message" && this.#control(state, event)) return;
    const frames = new Map<string, string | undefined>();
    if (event.type === "message" && state.lanes) {
      for (const [key, lane] of state.lanes) {
        try {
          const frame = lane.members[0].render(event);
          frames.set(key, frame);
          if (frame !== undefined) this.#write(lane, frame);
        } catch (err) {
          console.error("hub: delivery to a member failed:", err);
        }
      }
      if (state.others === 0) return;
    }
    for (const member of state.members) {
      if (member.direct && event.type === "message") continue;
      try {
        if (!member.wants(event)) continue;
        if (member.deliver) {
          member.deliver(event);
          continue;
        }
        let frame = frames.get(member.renderKey);
        if (frame === undefined && !frames.has(member.renderKey)) {
          frame = member.render(event);
          frames.set(member.renderKey, frame);
        }
        if (frame !== undefined) member.send(frame);
      } catch (err) {
        console.error("hub: delivery to a member failed:", err);
      }
    }
  }

  /** Handles a recheck or an eviction; false for an event members receive (typing, ...). */
  #control(state: RoomState, event: RoomEvent): boolean {
    if (event.type === "recheck") {
      this.#recheck([[event.room, state]], event.userId);
      return true;
    }
    if (!isEviction(event)) return false;
    // Revocations name their rooms themselves and come to every room (see `receive`).
    if (event.type === "revocations") return true;
    for (const member of [...state.members]) {
      // A deletion notice naming a generation spares the members that joined under it or later
      // (a repeated or late notice must not evict the room's next life); a member that does not
      // know its epoch decides itself (see `evict`).
      if (member.epoch !== undefined && spares(event, member.epoch)) continue;
      if (
        event.type === "closed" || member.deliver !== undefined ||
        String(member.user.id) === String(event.userId)
      ) {
        // One member's failure must not leave the others in a room they may not see.
        try {
          member.evict(event);
        } catch (err) {
          console.error("hub: evicting a member failed:", err);
        }
      }
    }
    return true;
  }

  /**
   * Adds a member to a room. With `since`, the member first gets every stored message after that
   * seq, then live ones, with neither gap nor duplicate between the two. Resolves to the room's
   * head seq at the moment the member became live. Messages retention (or a purge) removed before
   * the replay read them are a gap the member cannot fill: `onGap` hears of it, with the first
   * seq still stored after it (head + 1 when none is) and the head, before that message is sent.
   */
  async join(
    room: string,
    member: Member,
    options: {
      since?: number;
      onGap?: (firstSeq: number, head: number) => void;
      /** True once the member is gone (its socket closed): the replay stops reading. */
      stopped?: () => boolean;
    } = {},
  ): Promise<number> {
    const state = this.#state(room);
    // Counted until the member is in: a teardown queued before (the last member left in this
    // tick, or while a delivery was under way) must not drop the state this member is joining.
    state.joining++;
    let counted = true;
    const paced = member.pacer;
    let head = 0;
    let after = options.since;
    // Once a replay has waited for its socket, pages are sized to what the socket takes: a full
    // page read for the megabyte it can take would be read again, in part, after every wait.
    let limit = PAGE;
    let chars = 0;
    let frames = 0;
    try {
      for (let first = true;; first = false) {
        // A replay that fills the socket goes on in a later task once it drained: the room's
        // chain delivers to the others meanwhile, and the replay reads on from the store up to
        // where the chain has got, so the member still gets each message once, in order.
        const suspended = await this.#enqueue(state, async () => {
          if (first) {
            if (state.headUnknown) await this.#learnHead(state, room);
            // Not knowing where the room stands, a replay would skip messages without a word.
            if (state.headUnknown && options.since !== undefined) {
              throw new Error(`The head of room "${room}" could not be read; try again`);
            }
            if (options.since !== undefined && options.since > state.last) {
              // The client has messages this hub has not delivered yet (committed elsewhere, on
              // their way here): delivered later, they would reach it a second time. Read up to
              // there now, as far as the store has them; the members already in need them too.
              const upTo = Math.min(options.since, await this.#store.head(room));
              if (upTo > state.last) await this.#fillTo(state, room, upTo);
            }
          }
          if (!first && frames > 0) {
            limit = Math.max(1, Math.min(PAGE, Math.ceil(paced!.writable() / (chars / frames))));
          }
          while (after !== undefined && after < state.last && !options.stopped?.()) {
            // Full already: no page is read that would be dropped.
            if (paced && paced.writable() <= 0) return true;
            const page = await this.#store.list(room, {
              after,
              before: state.last + 1,
              limit,
            });
            // Checked on what is read, not on an earlier look at the tail: retention may move it.
            const next = gapBefore(page, after, state.last);
            if (next !== undefined) options.onGap?.(next, state.last);
            if (page.length === 0) break;
            for (const m of page) {
              if (paced && paced.writable() <= 0) return true;
              const frame = member.render({ type: "message", room, message: m });
              if (frame !== undefined && member.wants({ type: "message", room, message: m })) {
                member.send(frame);
                chars += frame.length;
                frames++;
              }
              after = m.seq;
            }
          }
          state.joining--;
          counted = false;
          if (!state.members.has(member)) {
            state.members.add(member);
            if (member.direct) this.#addDirect(state, member);
            else state.others++;
          }
          head = state.last;
          return false;
        });
        if (!suspended) return head;
        // Closed meanwhile (the wait's own time limit closes it as slow): nothing more to write.
        if (!(await paced!.drained())) after = undefined;
      }
    } catch (err) {
      if (counted) state.joining--;
      this.#releaseIfEmpty(room, state);
      throw err;
    }
  }

  /** Writes a message frame to every socket of a lane, then checks a share of their buffers. */
  #write(lane: Lane, frame: string): void {
    const writers = lane.writers;
    for (let i = 0; i < writers.length; i++) {
      // One socket's failure (its resource gone before its close event) must not skip the rest.
      try {
        writers[i].send(frame);
      } catch (err) {
        console.error("hub: delivery to a member failed:", err);
      }
    }
    this.stats.directFrames += writers.length;
    const share = Math.max(CHECK_SHARE, frame.length / CHECK_BYTES);
    let checks = Math.min(writers.length, Math.ceil(writers.length * share));
    // A check that closes a socket takes its member out of the lane at once.
    for (let i = lane.cursor; checks > 0 && lane.members.length > 0; checks--) {
      if (i >= lane.members.length) i = 0;
      const member = lane.members[i];
      member.direct!.checkBuffer();
      // Closed: the last member moved into this slot, and its turn is next.
      if (lane.members[i] === member) i++;
      lane.cursor = i;
    }
  }

  #addDirect(state: RoomState, member: Member): void {
    state.lanes ??= new Map();
    let lane = state.lanes.get(member.renderKey);
    if (!lane) {
      lane = { members: [], writers: [], slots: new Map(), cursor: 0 };
      state.lanes.set(member.renderKey, lane);
    }
    lane.slots.set(member, lane.members.length);
    lane.members.push(member);
    lane.writers.push(member.direct!.writer);
  }

  #removeDirect(state: RoomState, member: Member): void {
    const lane = state.lanes?.get(member.renderKey);
    const slot = lane?.slots.get(member);
    if (!lane || slot === undefined) return;
    lane.slots.delete(member);
    const last = lane.members.length - 1;
    if (slot !== last) {
      const moved = lane.members[last];
      lane.members[slot] = moved;
      lane.writers[slot] = lane.writers[last];
      lane.slots.set(moved, slot);
    }
    lane.members.pop();
    lane.writers.pop();
    if (lane.members.length === 0) state.lanes!.delete(member.renderKey);
  }

  /** Removes a member from a room, releasing the room's channel when it was the last. */
  leave(room: string, member: Member): void {
    const state = this.#rooms.get(room);
    if (!state || !state.members.delete(member)) return;
    if (member.direct) this.#removeDirect(state, member);
    else state.others--;
    this.#releaseIfEmpty(room, state);
  }

  /** Drops a room's state once it has neither members nor joins under way. */
  #releaseIfEmpty(room: string, state: RoomState): void {
    if (state.members.size > 0 || state.joining > 0) return;
    // Let queued deliveries finish before the state goes; a later join creates a fresh one.
    this.#enqueue(state, () => {
      if (state.members.size === 0 && state.joining === 0 && this.#rooms.get(room) === state) {
        state.unsubscribe();
        this.#rooms.delete(room);
      }
    });
  }

  /** Delivers a freshly committed message here and publishes it to the other hubs. */
  committed(message: Message): void {
    this.#share({ type: "message", room: message.room, message });
    const state = this.#rooms.get(message.room);
    if (state) this.#enqueue(state, () => this.#deliverInOrder(state, message));
  }

  /**
   * Delivers an ephemeral event (typing, read, presence) here and publishes it; with
   * `elsewhereOnly`, only publishes it (still counted for the presence watches).
   */
  publish(event: RoomEvent, options: { elsewhereOnly?: boolean } = {}): void {
    const failure = this.#share(event);
    if (event.room === EVERY_ROOM) {
      if (!options.elsewhereOnly) this.receive(event);
    } else {
      this.#presenceChanged(event);
      const state = this.#rooms.get(event.room);
      if (state && !options.elsewhereOnly) this.#fanout(state, event);
    }
    // Nothing brings a lost eviction to the other isolates later: the caller must know.
    if (failure && isEviction(event)) throw failure.error;
  }

  /**
   * Publishes to the other hubs. A broker that throws must not cost this isolate's members the
   * event: a committed message still reaches the other isolates through their head watches.
   */
  #share(event: RoomEvent): { error: unknown } | undefined {
    try {
      this.#broker.publish(event);
    } catch (error) {
      this.stats.publishFailures++;
      console.error("hub: publishing to the other isolates failed:", error);
      return { error };
    }
  }

  /**
   * Evicts the members (only `userId`'s, when given) of `rooms` whose access is now refused.
   * Rechecks run one after another, so that all of them together make at most
   * {@link RECHECKS_AT_ONCE} checks at a time. One whose check fails stays (its next send checks
   * again): a directory hiccup must not throw a room's rightful members out.
   */
  #recheck(rooms: [string, RoomState][], userId?: UserId): void {
    const access = this.#access;
    if (!access) return;
    const checks: { room: string; state: RoomState; member: Member; user: Principal }[] = [];
    for (const [room, state] of rooms) {
      for (const member of state.members) {
        for (const user of member.deliver ? member.principals?.() ?? [] : [member.user]) {
          if (userId === undefined || String(user.id) === String(userId)) {
            checks.push({ room, state, member, user });
          }
        }
      }
    }
    if (checks.length === 0) return;
    const check = async ({ room, state, member, user }: (typeof checks)[number]) => {
      try {
        if (await access(user, room)) return;
      } catch (err) {
        // One per member: a directory that does not answer is logged once for all.
        failureLog.failed("hub: checking a member's access again failed", err, `room ${room}`);
        return;
      }
      if (!state.members.has(member)) return; // left meanwhile
      try {
        member.evict({ type: "revoked", room, userId: user.id }, user);
      } catch (err) {
        console.error("hub: evicting a member failed:", err);
      }
    };
    this.#rechecks = this.#rechecks.then(async () => {
      for (let i = 0; i < checks.length; i += RECHECKS_AT_ONCE) {
        await Promise.all(checks.slice(i, i + RECHECKS_AT_ONCE).map(check));
      }
    }).catch((err) => console.error("hub: recheck failed:", err));
  }

  /** Hands an event that arrived by another route (a KV watch) to the room, if it has members. */
  receive(event: RoomEvent): void {
    if (event.room === EVERY_ROOM) {
      if (event.type === "recheck" && this.#firstHearing(event)) {
        this.#recheck([...this.#rooms], event.userId);
      } else if (event.type === "revocations" && this.#firstHearing(event)) {
        for (const room of event.rooms) {
          const state = this.#rooms.get(room);
          if (state) this.#control(state, { type: "revoked", room, userId: event.userId });
        }
      }
      return;
    }
    const state = this.#rooms.get(event.room);
    if (state) this.#receive(state, event);
    else this.#presenceChanged(event);
  }

  /**
   * Counts the presence changes of `userId` in `room` handed on here from now on (this isolate's
   * own, and those heard by either route), until the watch ends: a change checked against the
   * store is out of date if one came while it waited (see KvRoomSignals). Only watched users
   * are counted, so the counts go with their watches.
   */
  watchPresence(room: string, userId: UserId): PresenceWatch {
    const key = `${room}\u0000${userId}`;
    let watched = this.#presenceWatches.get(key);
    if (!watched) this.#presenceWatches.set(key, watched = { changes: 0, watches: 0 });
    const entry = watched;
    entry.watches++;
    let open = true;
    return {
      changes: () => entry.changes,
      end: () => {
        if (!open) return;
        open = false;
        if (--entry.watches === 0 && this.#presenceWatches.get(key) === entry) {
          this.#presenceWatches.delete(key);
        }
      },
    };
  }

  /** Counts a presence change for the watches of its user and room. */
  #presenceChanged(event: RoomEvent): void {
    if (event.type !== "presence" || this.#presenceWatches.size === 0) return;
    const watched = this.#presenceWatches.get(`${event.room}\u0000${event.user.id}`);
    if (watched) watched.changes++;
  }

  /**
   * True when `event` was handed on here already, or a later one that makes it stale (a user's
   * typing, read or presence in a room, from the same origin).
   */
  heard(event: RoomEvent): boolean {
    if (event.origin === undefined || event.serial === undefined) return false;
    const last = this.#heard.get(heardKey(event));
    return last !== undefined && last.serial >= event.serial;
  }

  /** Remembers the event; false when it, or a later one it must not follow, was heard before. */
  #firstHearing(event: RoomEvent): boolean {
    if (event.origin === undefined || event.serial === undefined) return true;
    const key = heardKey(event);
    const last = this.#heard.get(key);
    if (last !== undefined && last.serial >= event.serial) {
      this.stats.repeatsDropped++;
      return false;
    }
    const now = performance.now();
    for (const [old, { at }] of this.#heard) {
      if (now - at < REMEMBER_EVENT_MS && this.#heard.size < REMEMBER_EVENTS) break;
      this.#heard.delete(old);
    }
    // Moved to the end: the map stays in the order keys were last heard.
    this.#heard.delete(key);
    this.#heard.set(key, { serial: event.serial, at: now });
    return true;
  }

  /** The members of a room on this isolate. */
  members(room: string): ReadonlySet<Member> {
    return this.#rooms.get(room)?.members ?? new Set();
  }

  /** Rooms with members on this isolate. */
  rooms(): IterableIterator<string> {
    return this.#rooms.keys();
  }

  /** Highest seq delivered in a room here, 0 when it has no members. */
  lastSeq(room: string): number {
    return this.#rooms.get(room)?.last ?? 0;
  }

  /** Waits for every queued delivery, for tests and shutdown. */
  async idle(): Promise<void> {
    await Promise.all([...this.#rooms.values()].map((s) => s.chain));
  }

  /** Drops every room and unsubscribes from the broker and the head watch. */
  close(): void {
    this.#unsubscribeEveryRoom();
    for (const state of this.#rooms.values()) state.unsubscribe();
    this.#rooms.clear();
    this.#heads?.close();
  }
}
