/**
 * Revocations, access rechecks and room deletions for every process sharing the store: the broadcast channel
 * reaches only the isolates of one process, so these also go through a KV log, whose head every
 * server watches (and, on a local file shared with another process, reads now and then).
 */

import type { EvictionEvent } from "../core/types.ts";
import { type Poll, pollEvery } from "./poll.ts";
import { logHead, LogReader, LogWriter } from "./kv_log.ts";

/** The log every server follows. */
const PREFIX: Deno.KvKey = ["room_events"];

/**
 * How long an event is kept: a server that cannot read the store for longer misses it (its
 * sockets' access is still checked on every send).
 */
const EXPIRE_MS = 10 * 60_000;

/** Publishes evictions to the other processes and hands theirs to `onEvent`. */
export class KvRoomEvents {
  #kv: Deno.Kv;
  #writer: LogWriter<EvictionEvent>;
  #reader: LogReader<EvictionEvent>;
  #pollMs: number;
  #started = false;
  #watch?: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  #poll?: Poll;
  #closed = false;

  /**
   * Follows the log through `kv`; `origin` names this process (its own events reach its
   * isolates through the channel), `pollMs` is how often the head is read while polling.
   */
  constructor(
    kv: Deno.Kv,
    origin: string,
    onEvent: (event: EvictionEvent) => void,
    options: { pollMs?: number } = {},
  ) {
    this.#kv = kv;
    this.#writer = new LogWriter(kv, origin, { expireIn: EXPIRE_MS });
    this.#reader = new LogReader(kv, origin, (_, entry) => onEvent(entry.event));
    this.#pollMs = options.pollMs ?? 250;
  }

  /** Reads where the log stands (older events are not replayed) and starts watching it. */
  async start(): Promise<void> {
    const head = await this.#kv.get(logHead(PREFIX));
    this.#reader.follow(PREFIX);
    await this.#reader.heard(PREFIX, head);
    this.#started = true;
    this.#follow();
  }

  /**
   * Appends an event for the other processes; events published together share a commit, so
   * a burst (every participant of a room removed at once) is not a race between them.
   */
  publish(event: EvictionEvent): Promise<void> {
    return this.#writer.append(PREFIX, event);
  }

  /** Also reads the head every `pollMs` while `polling` (another process on a local file). */
  setPolling(polling: boolean): void {
    if (!polling || this.#closed) {
      this.#poll?.stop();
      this.#poll = undefined;
      return;
    }
    this.#poll ??= pollEvery(this.#pollMs, async () => {
      await this.#heard(await this.#kv.get(logHead(PREFIX)));
    });
  }

  /** Resolves once every event published so far is written (or failed). */
  flush(): Promise<void> {
    return this.#writer.idle();
  }

  /** Stops watching and polling. */
  close(): void {
    this.#closed = true;
    this.setPolling(false);
    this.#watch?.cancel().catch(() => {});
  }

  #heard(head: Deno.KvEntryMaybe<unknown>): Promise<void> {
    return this.#started ? this.#reader.heard(PREFIX, head) : Promise.resolve();
  }

  #follow(): void {
    if (this.#closed) return;
    const reader = this.#kv.watch([logHead(PREFIX)]).getReader();
    this.#watch = reader;
    (async () => {
      try {
        while (!this.#closed) {
          const { value, done } = await reader.read();
          if (done) break;
          await this.#heard(value[0]);
        }
      } catch (err) {
        if (!this.#closed) console.error("room events: watch failed, restarting:", err);
      }
      if (!this.#closed) setTimeout(() => this.#follow(), 500);
    })();
  }
}
