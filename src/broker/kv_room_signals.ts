/**
 * Typing, read cursors and presence changes for the other servers: the broadcast channel reaches
 * only the isolates of one process, and drops posts for an isolate that falls behind, so each
 * room also has a KV log of its signals, whose head the head watcher follows beside the room's
 * head. An isolate of the same process hears most of them twice and keeps the first.
 */

import { timerDelay } from "../core/time.ts";
import type { RoomEvent } from "../core/types.ts";
import { type LogEntry, logHead, LogReader, LogWriter, type ReadEntries } from "./kv_log.ts";

/** The events carried: the ephemeral ones that nothing stored brings later. */
export type SignalEvent = RoomEvent & { type: "typing" | "read" | "presence" };

/** A count of one user's presence changes in one room passed on to members, while watched. */
export interface PresenceWatch {
  /** How many were passed on since the oldest open watch of that user and room began. */
  changes(): number;
  /** Stops watching; the count goes with the last watch of that user and room. */
  end(): void;
}

/** A presence change. */
type PresenceSignal = SignalEvent & { type: "presence" };

const prefixOf = (room: string): Deno.KvKey => ["signals", room];

/** The key of the head of a room's signals log, which followers watch or read. */
export const signalsHead = (room: string): Deno.KvKey => logHead(prefixOf(room));

/** A quiet room's log goes away after this long, so rooms typed in once leave nothing behind. */
const EXPIRE_MS = 10 * 60_000;

/**
 * Signals written up to this long before a server started following a room (on the writer's
 * clock) still reach it: one written while its first read of the room was on the way.
 */
const FOLLOW_MARGIN_MS = 1000;

/**
 * A renewed typing state is passed on at most this often per user and room: each keystroke
 * renews it, and the other servers only need to keep their clients' indicators alive.
 */
export const TYPING_RENEW_MS = 1000;

/**
 * Presence checks under way at once: enough that a burst's checks overlap their reads, few
 * enough that a burst of thousands does not queue them all ahead of the store's other work.
 */
const CHECKS_AT_ONCE = 32;

/** True for the events that go through a room's signals log. */
export function isSignal(event: RoomEvent): event is SignalEvent {
  return event.type === "typing" || event.type === "read" || event.type === "presence";
}

/** Publishes a room's signals to the other processes and hands theirs to `onEvent`. */
export class KvRoomSignals {
  #writer: LogWriter<SignalEvent>;
  #reader: LogReader<SignalEvent>;
  #onEvent: (event: SignalEvent) => void;
  /** When a user's typing in a room was last passed on, while it lasts. */
  #typing = new Map<string, number>();
  /** Typing heard from other processes: the timer that ends it if its server never does. */
  #heardTyping = new Map<string, ReturnType<typeof setTimeout>>();
  #typingTimeoutMs: number;
  #holds?: (event: PresenceSignal) => Promise<boolean>;
  /** Per room, the signals being passed on while a presence check is under way, in order. */
  #pending = new Map<string, Promise<void>>();
  /** Presence checks under way, at most {@link CHECKS_AT_ONCE}. */
  #checking = 0;
  /** Checks waiting for one under way to end, first come first started. */
  #checkQueue: (() => void)[] = [];
  /** Per read, the positions of presence changes a later one of the same user and origin follows. */
  #superseded = new WeakMap<readonly LogEntry<SignalEvent>[], Set<number>>();
  #heardHere: (event: SignalEvent) => boolean;
  #watch?: (event: PresenceSignal) => PresenceWatch;

  /**
   * Reads and writes through `kv`; `origin` names this server (its own signals are skipped
   * here). A typing state heard from another server ends here `typingTimeoutMs` and a second
   * after its last renewal, in case its server died before it could say so. `heard` says which
   * signals already arrived by the channel, or are stale: those are skipped (`onEvent` must
   * drop those that became so meanwhile). With `holds`, a presence change from
   * elsewhere is passed on only if it says so (the presence store still agrees), unless the
   * same read holds a later change of that user from the same server: the changes of one server
   * come in order, and passing them all on keeps a join and a leave a moment apart from showing
   * as a lone leave. Signals of a room reach `onEvent` in their order, a check holding back
   * those after it; the checks themselves run side by side. With `watch` too, a checked change
   * is checked again before it is passed on if the watch (begun when it is heard) counted a
   * change of that user in that room meanwhile: this server's own (the user's tab opening here)
   * may have been written after the check read, and passed on before it.
   */
  constructor(
    kv: Deno.Kv,
    origin: string,
    onEvent: (event: SignalEvent) => void,
    options: {
      typingTimeoutMs?: number;
      holds?: (event: PresenceSignal) => Promise<boolean>;
      heard?: (event: SignalEvent) => boolean;
      watch?: (event: PresenceSignal) => PresenceWatch;
    } = {},
  ) {
    this.#writer = new LogWriter(kv, origin, { expireIn: EXPIRE_MS });
    this.#reader = new LogReader(kv, origin, (_, entry, read) => this.#heard(entry, read));
    this.#onEvent = onEvent;
    this.#typingTimeoutMs = options.typingTimeoutMs ?? 5000;
    this.#holds = options.holds;
    this.#heardHere = options.heard ?? (() => false);
    this.#watch = options.watch;
  }

  /**
   * Appends a signal to its room's log; a room's signals are written a commit at a time, so they
   * arrive in the order they happened. A typing renewal soon after the last is dropped.
   */
  publish(event: SignalEvent): Promise<void> {
    if (event.type === "typing") {
      const key = `${event.room}\u0000${event.user.id}`;
      const now = performance.now();
      if (!event.isTyping) this.#typing.delete(key);
      else if (now - (this.#typing.get(key) ?? -Infinity) < TYPING_RENEW_MS) {
        return Promise.resolve();
      } else {
        // A stop that never came through here (no other process then) would leave its entry:
        // ones past the renewal interval throttle nothing and go.
        if (this.#typing.size >= 1000) {
          for (const [k, at] of this.#typing) {
            if (now - at >= TYPING_RENEW_MS) this.#typing.delete(k);
          }
        }
        this.#typing.set(key, now);
      }
    }
    return this.#writer.append(prefixOf(event.room), event);
  }

  /** Starts following a room: signals from about now on reach `onEvent`. */
  follow(room: string): void {
    this.#reader.follow(prefixOf(room), Date.now() - FOLLOW_MARGIN_MS);
  }

  /** Takes the head of a followed room's log, as a watch or a read found it. */
  heard(room: string, head: Deno.KvEntryMaybe<unknown>): void {
    this.#reader.heard(prefixOf(room), head).catch((err) =>
      console.error(`room signals: reading ${room}'s failed:`, err)
    );
  }

  /** Stops following a room. */
  forget(room: string): void {
    this.#reader.forget(prefixOf(room));
    for (const [key, timer] of this.#heardTyping) {
      if (key.startsWith(`${room}\u0000`)) {
        clearTimeout(timer);
        this.#heardTyping.delete(key);
      }
    }
  }

  /** Resolves once every signal published so far is written (or failed). */
  flush(): Promise<void> {
    return this.#writer.idle();
  }

  /** Stops the timers of typing states heard from elsewhere. */
  close(): void {
    for (const timer of this.#heardTyping.values()) clearTimeout(timer);
    this.#heardTyping.clear();
  }

  #heard(entry: LogEntry<SignalEvent>, read: ReadEntries<SignalEvent>): void {
    const event = entry.event;
    if (event.type === "typing") this.#expireTyping(event);
    // An isolate of this process wrote it, and the channel brought it (or a later one) already;
    // `onEvent` drops one that became so while it waited.
    if (this.#heardHere(event)) return;
    const check = event.type === "presence" && this.#holds !== undefined &&
      !this.#supersededIn(read).has(read.index);
    const room = event.room;
    const before = this.#pending.get(room);
    if (!check && !before) return this.#deliver(event);
    // Begun before the check reads, so that it counts every change the read may have missed.
    const watch = check ? this.#watch?.(event as PresenceSignal) : undefined;
    let seen = watch?.changes();
    // Started now, not once the signals before it are passed on: a burst of a thousand joins
    // checked one after another held the room's typing and reads for as long.
    const agrees = check ? this.#check(event as PresenceSignal) : Promise.resolve(true);
    const pass = async () => {
      try {
        let holds = await agrees;
        // A change of the user passed on here while this one waited (their tab opening here as
        // the one there closed) may be newer than what the check read: passed on after it, this
        // one would undo it. Read again, so that the last one shown is the store's.
        while (holds && watch && watch.changes() !== seen) {
          seen = watch.changes();
          holds = await this.#check(event as PresenceSignal);
        }
        if (holds) this.#deliver(event);
      } finally {
        watch?.end();
      }
    };
    const next = before ? before.then(pass) : pass();
    this.#pending.set(room, next);
    next.finally(() => {
      if (this.#pending.get(room) === next) this.#pending.delete(room);
    });
  }

  /** Whether the presence store still agrees with `event`; false when it cannot say. */
  async #check(event: PresenceSignal): Promise<boolean> {
    if (this.#checking < CHECKS_AT_ONCE) this.#checking++;
    // The slot of a check that ends is handed on, so none starts past the bound meanwhile.
    else await new Promise<void>((start) => this.#checkQueue.push(start));
    try {
      return await this.#holds!(event);
    } catch (err) {
      console.error("room signals: checking a presence change failed:", err);
      return false;
    } finally {
      const next = this.#checkQueue.shift();
      if (next) next();
      else this.#checking--;
    }
  }

  /** The positions of a read's presence changes that a later one of the same user and origin follows. */
  #supersededIn(read: ReadEntries<SignalEvent>): Set<number> {
    let found = this.#superseded.get(read.entries);
    if (found) return found;
    found = new Set();
    const last = new Map<string, number>();
    read.entries.forEach(({ event, origin }, i) => {
      if (event.type !== "presence") return;
      const key = `${origin}\u0000${event.user.id}`;
      const previous = last.get(key);
      if (previous !== undefined) found!.add(previous);
      last.set(key, i);
    });
    this.#superseded.set(read.entries, found);
    return found;
  }

  #deliver(event: SignalEvent): void {
    try {
      this.#onEvent(event);
    } catch (err) {
      console.error("room signals: handling a signal failed:", err);
    }
  }

  /** Starts, renews or clears the timer that ends a typing state heard from elsewhere. */
  #expireTyping(event: SignalEvent & { type: "typing" }): void {
    const key = `${event.room}\u0000${event.user.id}`;
    clearTimeout(this.#heardTyping.get(key));
    this.#heardTyping.delete(key);
    if (!event.isTyping) return;
    const timer = setTimeout(() => {
      this.#heardTyping.delete(key);
      // Ordered right after the start it ends: a later event of that origin (a renewal the
      // channel brought) makes it stale.
      const serial = event.serial === undefined ? undefined : event.serial + 0.5;
      this.#deliver({ ...event, isTyping: false, serial });
    }, timerDelay(this.#typingTimeoutMs + TYPING_RENEW_MS));
    Deno.unrefTimer(timer);
    this.#heardTyping.set(key, timer);
  }
}
