/**
 * Typing, read cursors and presence changes for the servers of other processes: the broadcast
 * channel reaches only the isolates of one process, so each room also keeps its recent signals
 * under one KV key, which the head watcher follows beside the room's head.
 */

import type { RoomEvent } from "../core/types.ts";
import { appendToLog, isLog, unseen } from "./kv_log.ts";

/** The events carried: the ephemeral ones that nothing stored brings later. */
export type SignalEvent = RoomEvent & { type: "typing" | "read" | "presence" };

/** The key of a room's recent signals. */
export const signalsKey = (room: string): Deno.KvKey => ["signals", room];

/** Signals a room's key keeps: a server that reads it less often than this many arrive misses some. */
const KEPT = 32;

/** A quiet room's key goes away after this long, so rooms typed in once leave nothing behind. */
const EXPIRE_MS = 10 * 60_000;

/**
 * A renewed typing state is passed on at most this often per user and room: each keystroke
 * renews it, and the other servers only need to keep their clients' indicators alive.
 */
export const TYPING_RENEW_MS = 1000;

/** True for the events that go through the room's signals key. */
export function isSignal(event: RoomEvent): event is SignalEvent {
  return event.type === "typing" || event.type === "read" || event.type === "presence";
}

/** Publishes a room's signals to the other processes and hands theirs to `onEvent`. */
export class KvRoomSignals {
  #kv: Deno.Kv;
  #origin: string;
  #onEvent: (event: SignalEvent) => void;
  /** The newest seq seen per followed room. */
  #seen = new Map<string, number>();
  /** Signals waiting for their room's write, which takes them all at once, in order. */
  #queued = new Map<string, SignalEvent[]>();
  /** When a user's typing in a room was last passed on, while it lasts. */
  #typing = new Map<string, number>();
  /** Typing heard from other processes: the timer that ends it if its server never does. */
  #heardTyping = new Map<string, ReturnType<typeof setTimeout>>();
  #typingTimeoutMs: number;

  /**
   * Reads and writes through `kv`; `origin` names this process (its own signals reach its
   * isolates through the channel and are skipped here). A typing state heard from another
   * process ends here `typingTimeoutMs` and a second after its last renewal, in case its server
   * died before it could say so.
   */
  constructor(
    kv: Deno.Kv,
    origin: string,
    onEvent: (event: SignalEvent) => void,
    options: { typingTimeoutMs?: number } = {},
  ) {
    this.#kv = kv;
    this.#origin = origin;
    this.#onEvent = onEvent;
    this.#typingTimeoutMs = options.typingTimeoutMs ?? 5000;
  }

  /**
   * Appends a signal to its room's key; a room's signals are written one commit at a time, so
   * they arrive in the order they happened. A typing renewal soon after the last is dropped.
   */
  publish(event: SignalEvent): Promise<void> {
    if (event.type === "typing") {
      const key = `${event.room}\u0000${event.user.id}`;
      const now = performance.now();
      if (!event.isTyping) this.#typing.delete(key);
      else if (now - (this.#typing.get(key) ?? -Infinity) < TYPING_RENEW_MS) {
        return Promise.resolve();
      } else this.#typing.set(key, now);
    }
    const queue = this.#queued.get(event.room);
    if (queue) {
      queue.push(event);
      return Promise.resolve();
    }
    this.#queued.set(event.room, [event]);
    return this.#write(event.room);
  }

  async #write(room: string): Promise<void> {
    const events = this.#queued.get(room)!;
    try {
      // Signals queued meanwhile go in the next commit, all at once.
      while (events.length > 0) {
        const taken = events.slice();
        await appendToLog(this.#kv, signalsKey(room), this.#origin, taken, {
          kept: KEPT,
          expireIn: EXPIRE_MS,
        });
        events.splice(0, taken.length);
      }
    } finally {
      this.#queued.delete(room);
    }
  }

  /**
   * Takes the value of a followed room's key, as a watch or a read found it; the first one seen
   * for a room only says where it stands (older signals are not replayed).
   */
  heard(room: string, value: unknown): void {
    const seen = this.#seen.get(room);
    if (seen === undefined) {
      this.#seen.set(room, isLog(value) ? value.seq : 0);
      return;
    }
    const fresh = unseen<SignalEvent>(value, seen, this.#origin);
    this.#seen.set(room, fresh.seen);
    for (const { event } of fresh.entries) {
      if (event.type === "typing") this.#expireTyping(event);
      this.#deliver(event);
    }
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
      this.#deliver({ ...event, isTyping: false });
    }, this.#typingTimeoutMs + TYPING_RENEW_MS);
    Deno.unrefTimer(timer);
    this.#heardTyping.set(key, timer);
  }

  /** Stops tracking a room nobody here follows any more. */
  forget(room: string): void {
    this.#seen.delete(room);
    for (const [key, timer] of this.#heardTyping) {
      if (key.startsWith(`${room}\u0000`)) {
        clearTimeout(timer);
        this.#heardTyping.delete(key);
      }
    }
  }

  /** Stops the timers of typing states heard from elsewhere. */
  close(): void {
    for (const timer of this.#heardTyping.values()) clearTimeout(timer);
    this.#heardTyping.clear();
  }
}
