/** An in-process broker for tests: hubs attached to one bus see each other's events. */

import type { Broker, RoomEvent } from "../core/types.ts";

/** The shared medium several {@link MemoryBroker}s attach to. */
export class MemoryBus {
  /** Every attached broker. */
  readonly brokers = new Set<MemoryBroker>();
}

/** Delivers published events to the other brokers on its bus, asynchronously like a real one. */
export class MemoryBroker implements Broker {
  #bus: MemoryBus;
  #handlers = new Map<string, Set<(event: RoomEvent) => void>>();

  /** Attaches to a bus (a fresh private one by default). */
  constructor(bus = new MemoryBus()) {
    this.#bus = bus;
    bus.brokers.add(this);
  }

  /** Queues the event for every other broker on the bus. */
  publish(event: RoomEvent): void {
    const copy = structuredClone(event);
    for (const broker of this.#bus.brokers) {
      if (broker !== this) queueMicrotask(() => broker.#receive(copy));
    }
  }

  #receive(event: RoomEvent): void {
    for (const handler of this.#handlers.get(event.room) ?? []) handler(event);
  }

  /** Registers a handler for the room's events. */
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void {
    let set = this.#handlers.get(room);
    if (!set) this.#handlers.set(room, set = new Set());
    set.add(handler);
    return () => {
      set.delete(handler);
      if (set.size === 0) this.#handlers.delete(room);
    };
  }

  /** Detaches from the bus. */
  close(): void {
    this.#bus.brokers.delete(this);
    this.#handlers.clear();
  }
}
