/** Room events between the isolates of one process, one `BroadcastChannel` per room. */

import type { Broker, RoomEvent } from "../core/types.ts";

const IDLE_CLOSE_MS = 30_000;

interface RoomChannel {
  channel: BroadcastChannel;
  handlers: Set<(event: RoomEvent) => void>;
  idleTimer?: ReturnType<typeof setTimeout>;
}

/**
 * A channel never receives its own posts, so the hub delivers locally itself. Channels of rooms
 * nobody here subscribes to are kept for a while after a publish, then closed.
 */
export class BroadcastChannelBroker implements Broker {
  #rooms = new Map<string, RoomChannel>();
  #prefix: string;
  /**
   * Held open for the broker's lifetime. Deno (2.9) loses its per-isolate subscription when the
   * isolate's last BroadcastChannel closes and another opens in the same turn of the event loop:
   * the old receive loop ends afterwards and clears the new subscription, so every post throws
   * "expected i32" and nothing is received until yet another channel is created. A room's channel
   * closing when its last member leaves, then the leave's presence event opening one, is exactly
   * that; with this channel open the count never drops to zero.
   */
  #keepalive: BroadcastChannel;
  #idleCloseMs: number;

  /**
   * Channels are named after `namespace` (the KV location): two servers that share a process
   * but not a store must never see each other's rooms. A channel opened only to publish is closed
   * after `idleCloseMs` without a member here (30 s unless told).
   */
  constructor(namespace: string, { idleCloseMs = IDLE_CLOSE_MS } = {}) {
    this.#prefix = `chat:${namespace}:`;
    this.#idleCloseMs = idleCloseMs;
    this.#keepalive = new BroadcastChannel(`${this.#prefix}keepalive`);
  }

  #open(room: string): RoomChannel {
    let entry = this.#rooms.get(room);
    if (entry) return entry;
    const channel = new BroadcastChannel(this.#prefix + room);
    const created: RoomChannel = { channel, handlers: new Set() };
    channel.onmessage = (e: MessageEvent<RoomEvent>) => {
      for (const handler of created.handlers) handler(e.data);
    };
    entry = created;
    this.#rooms.set(room, entry);
    return entry;
  }

  #scheduleIdleClose(room: string, entry: RoomChannel): void {
    clearTimeout(entry.idleTimer);
    entry.idleTimer = setTimeout(() => {
      if (entry.handlers.size === 0 && this.#rooms.get(room) === entry) {
        entry.channel.close();
        this.#rooms.delete(room);
      }
    }, this.#idleCloseMs);
  }

  /** Posts the event to the room's channel in every other isolate. */
  publish(event: RoomEvent): void {
    const entry = this.#open(event.room);
    try {
      entry.channel.postMessage(event);
    } catch {
      // The same Deno bug across brokers (a server closed and another started at once): a new
      // channel subscribes the isolate again, for sending and receiving.
      new BroadcastChannel(`${this.#prefix}revive`).close();
      entry.channel.postMessage(event);
    }
    if (entry.handlers.size === 0) this.#scheduleIdleClose(event.room, entry);
  }

  /** Listens on the room's channel until the returned function is called. */
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void {
    const entry = this.#open(room);
    clearTimeout(entry.idleTimer);
    entry.handlers.add(handler);
    return () => {
      entry.handlers.delete(handler);
      if (entry.handlers.size === 0 && this.#rooms.get(room) === entry) {
        clearTimeout(entry.idleTimer);
        entry.channel.close();
        this.#rooms.delete(room);
      }
    };
  }

  /** Closes every channel. */
  close(): void {
    this.#keepalive.close();
    for (const entry of this.#rooms.values()) {
      clearTimeout(entry.idleTimer);
      entry.channel.close();
    }
    this.#rooms.clear();
  }
}
