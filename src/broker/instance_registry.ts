/**
 * Which servers (instances, or isolates under `deno serve --parallel`) share this Deno KV store.
 * A server that shares it with nobody has no one to tell about its commits, so it skips the
 * cross-isolate channel and the KV watches, which together cost as much as the commits do.
 */

import type { Broker, RoomEvent } from "../core/types.ts";

const ENTRY = (id: string): Deno.KvKey => ["instance", id];
const ENTRIES: Deno.KvKey = ["instance"];
/** Bumped whenever a server arrives or leaves: the one key every server watches. */
const EPOCH: Deno.KvKey = ["instance_epoch"];

interface EntryValue {
  /** Milliseconds since the epoch of the last heartbeat. */
  seenAt: number;
  /** The process, to tell isolates of one process from other instances in logs. */
  pid: number;
}

/** Settings of {@link InstanceRegistry.start}. */
export interface InstanceRegistryOptions {
  /** How often the entry is renewed and the others read again (default 10 s). */
  heartbeatMs?: number;
  /** An entry not renewed for this long belongs to a dead server (default 30 s). */
  staleMs?: number;
}

/**
 * Each server keeps an entry under `["instance", id]`, renewed every heartbeat, and watches one
 * epoch key that arrivals and departures bump, so others learn of a newcomer at once and of a
 * crashed server once its entry goes stale. A newcomer registers before it serves anything; the
 * servers already running find it within a watch round trip and then replay what they missed
 * from the store (the head watch reports current heads when it starts).
 */
export class InstanceRegistry {
  #kv: Deno.Kv;
  #id = crypto.randomUUID();
  #heartbeatMs: number;
  #staleMs: number;
  #others = 0;
  #listeners = new Set<(alone: boolean) => void>();
  #timer?: ReturnType<typeof setInterval>;
  #watch?: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  #closed = false;
  #refreshing: Promise<void> = Promise.resolve();

  private constructor(kv: Deno.Kv, options: InstanceRegistryOptions) {
    this.#kv = kv;
    this.#heartbeatMs = options.heartbeatMs ?? 10_000;
    this.#staleMs = options.staleMs ?? 30_000;
  }

  /** Registers this server in `kv`, reads who else is there, and starts following changes. */
  static async start(
    kv: Deno.Kv,
    options: InstanceRegistryOptions = {},
  ): Promise<InstanceRegistry> {
    const registry = new InstanceRegistry(kv, options);
    await registry.#announce(true);
    await registry.#refresh();
    registry.#follow();
    const timer = setInterval(() => {
      registry.#announce(false).then(() => registry.#refresh()).catch((err) => {
        if (!registry.#closed) console.error("instance registry: heartbeat failed:", err);
      });
    }, registry.#heartbeatMs);
    Deno.unrefTimer(timer);
    registry.#timer = timer;
    return registry;
  }

  /** This server's id in the registry. */
  get id(): string {
    return this.#id;
  }

  /** True while no other live server uses the store. */
  get alone(): boolean {
    return this.#others === 0;
  }

  /** Live servers besides this one. */
  get others(): number {
    return this.#others;
  }

  /** Ids of the servers alive now (this one included), read from the store, not a cache. */
  async live(): Promise<ReadonlySet<string>> {
    const cutoff = Date.now() - this.#staleMs;
    const out = new Set<string>([this.#id]);
    for await (const entry of this.#kv.list<EntryValue>({ prefix: ENTRIES })) {
      if (entry.value.seenAt >= cutoff) out.add(String(entry.key[1]));
    }
    return out;
  }

  /** Calls `listener` whenever {@link alone} changes; returns the function that stops it. */
  onChange(listener: (alone: boolean) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async #announce(arriving: boolean): Promise<void> {
    const value: EntryValue = { seenAt: Date.now(), pid: Deno.pid };
    const op = this.#kv.atomic().set(ENTRY(this.#id), value, { expireIn: this.#staleMs * 2 });
    // Only arrivals wake the others; a heartbeat changes nothing they need to act on.
    if (arriving) op.sum(EPOCH, 1n);
    await op.commit();
  }

  /** Reads the entries again; serialised so that a late answer never overwrites a newer one. */
  #refresh(): Promise<void> {
    this.#refreshing = this.#refreshing.then(async () => {
      if (this.#closed) return;
      const cutoff = Date.now() - this.#staleMs;
      let others = 0;
      for await (const entry of this.#kv.list<EntryValue>({ prefix: ENTRIES })) {
        if (entry.key[1] !== this.#id && entry.value.seenAt >= cutoff) others++;
      }
      const wasAlone = this.alone;
      this.#others = others;
      if (wasAlone !== this.alone && !this.#closed) {
        for (const listener of this.#listeners) listener(this.alone);
      }
    }).catch((err) => {
      if (!this.#closed) console.error("instance registry: reading the entries failed:", err);
    });
    return this.#refreshing;
  }

  #follow(): void {
    const reader = this.#kv.watch([EPOCH]).getReader();
    this.#watch = reader;
    (async () => {
      try {
        while (!this.#closed) {
          const { done } = await reader.read();
          if (done) return;
          await this.#refresh();
        }
      } catch (err) {
        if (this.#closed) return;
        console.error("instance registry: watch failed, restarting:", err);
        setTimeout(() => !this.#closed && this.#follow(), 500);
      }
    })();
  }

  /** Stops renewing and following without removing the entry, as a crash would (for tests). */
  abandon(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#watch?.cancel().catch(() => {});
    this.#listeners.clear();
  }

  /** Removes this server's entry and tells the others it left. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.abandon();
    try {
      await this.#kv.atomic().delete(ENTRY(this.#id)).sum(EPOCH, 1n).commit();
    } catch {
      // The store may already be closed; the entry then goes stale on its own.
    }
  }
}

/**
 * Publishes through `inner` only while the store is shared: with nobody else to receive them,
 * posting every message to a channel is pure cost. Subscriptions always go through, so a
 * newcomer's posts are heard at once.
 */
export class SharedOnlyBroker implements Broker {
  #inner: Broker;
  #shared: () => boolean;

  /** Wraps `inner`; `shared` says whether anyone else uses the store right now. */
  constructor(inner: Broker, shared: () => boolean) {
    this.#inner = inner;
    this.#shared = shared;
  }

  /** Posts the event when the store is shared, drops it otherwise. */
  publish(event: RoomEvent): void {
    if (this.#shared()) this.#inner.publish(event);
  }

  /** Subscribes through the inner broker. */
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void {
    return this.#inner.subscribe(room, handler);
  }

  /** Closes the inner broker. */
  close(): void {
    this.#inner.close();
  }
}
