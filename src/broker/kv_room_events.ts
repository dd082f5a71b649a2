/**
 * Revocations and room deletions for every process sharing the store: the broadcast channel
 * reaches only the isolates of one process, so these also go through one KV key, which every
 * server watches (and, on a local file shared with another process, reads now and then).
 */

import type { RoomEvent } from "../core/types.ts";
import { type Poll, pollEvery } from "./poll.ts";
import { appendToLog, isLog, unseen } from "./kv_log.ts";

/** The events carried: the ones that must close sockets wherever they are. */
export type EvictionEvent = RoomEvent & { type: "revoked" | "closed" };

/** The key every server follows. */
const KEY = ["room_events"];

/** How many recent events the key keeps: a server that was slower than this misses the rest. */
const KEPT = 100;

/** Publishes evictions to the other processes and hands theirs to `onEvent`. */
export class KvRoomEvents {
  #kv: Deno.Kv;
  #origin: string;
  #onEvent: (event: EvictionEvent) => void;
  #pollMs: number;
  #seen?: number;
  #reader?: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  #poll?: Poll;
  #closed = false;

  /**
   * Follows the key through `kv`; `origin` names this process (its own events reach its
   * isolates through the channel), `pollMs` is how often the key is read while polling.
   */
  constructor(
    kv: Deno.Kv,
    origin: string,
    onEvent: (event: EvictionEvent) => void,
    options: { pollMs?: number } = {},
  ) {
    this.#kv = kv;
    this.#origin = origin;
    this.#onEvent = onEvent;
    this.#pollMs = options.pollMs ?? 250;
  }

  /** Reads where the log stands (older events are not replayed) and starts watching it. */
  async start(): Promise<void> {
    const first = await this.#kv.get(KEY);
    this.#seen = isLog(first.value) ? first.value.seq : 0;
    this.#watch();
  }

  /** Appends an event for the other processes. */
  publish(event: EvictionEvent): Promise<void> {
    return appendToLog(this.#kv, KEY, this.#origin, [event], { kept: KEPT });
  }

  /** Also reads the key every `pollMs` while `polling` (another process on a local file). */
  setPolling(polling: boolean): void {
    if (!polling || this.#closed) {
      this.#poll?.stop();
      this.#poll = undefined;
      return;
    }
    this.#poll ??= pollEvery(this.#pollMs, async () => {
      this.#apply((await this.#kv.get(KEY)).value);
    });
  }

  /** Stops watching and polling. */
  close(): void {
    this.#closed = true;
    this.setPolling(false);
    this.#reader?.cancel().catch(() => {});
  }

  #watch(): void {
    if (this.#closed) return;
    const reader = this.#kv.watch([KEY]).getReader();
    this.#reader = reader;
    (async () => {
      try {
        while (!this.#closed) {
          const { value, done } = await reader.read();
          if (done) break;
          this.#apply(value[0].value);
        }
      } catch (err) {
        if (!this.#closed) console.error("room events: watch failed, restarting:", err);
      }
      if (!this.#closed) setTimeout(() => this.#watch(), 500);
    })();
  }

  #apply(value: unknown): void {
    if (this.#seen === undefined) return;
    const fresh = unseen<EvictionEvent>(value, this.#seen, this.#origin);
    this.#seen = fresh.seen;
    for (const { event } of fresh.entries) {
      try {
        this.#onEvent(event);
      } catch (err) {
        console.error("room events: handling an event failed:", err);
      }
    }
  }
}
