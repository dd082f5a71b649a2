/** Presence leased by servers: sweeps, orphans, a renewal racing a sweep, exit after enter. */

import { assertEquals } from "../../tests/assert.ts";
import { ChatService } from "../core/chat_service.ts";
import type { Fanout, PresenceStore, RoomEvent } from "../core/types.ts";
import { KvPresenceStore, type Liveness, type PresenceLeases } from "./kv_presence_store.ts";

const user = (id: string) => ({ id, username: `user${id}` });

/** Leases where `alive` says who is alive; checks are on `["lease", id]` keys of the same KV. */
function leases(kv: Deno.Kv, id: string, alive: Set<string>): PresenceLeases {
  return {
    id,
    async live(): Promise<Liveness> {
      const read = new Map<string, Deno.KvEntryMaybe<unknown>>();
      for (const server of ["A", "B", "C"]) read.set(server, await kv.get(["lease", server]));
      return {
        ids: new Set([id, ...alive]),
        check: (op, server) => op.check(read.get(server)!),
      };
    },
  };
}

async function withKv(fn: (kv: Deno.Kv) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
  try {
    await fn(kv);
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("presence: a dead server's users are swept once; live servers' users stay", async () => {
  await withKv(async (kv) => {
    const alive = new Set(["A", "B"]);
    const a = new KvPresenceStore(kv, leases(kv, "A", alive));
    const b = new KvPresenceStore(kv, leases(kv, "B", alive));
    await a.enter("room:x", user("1"), "a1");
    await b.enter("room:x", user("2"), "b1");
    await b.enter("room:x", user("1"), "b2");
    assertEquals((await a.list("room:x")).map((u) => u.id), ["1", "2"]);

    alive.delete("B"); // B dies
    assertEquals((await a.list("room:x")).map((u) => u.id), ["1"]);
    // User 1 still has A's connection: only user 2 is gone, and only one sweeper reports it.
    assertEquals((await a.sweep("room:x")).map((u) => u.id), ["2"]);
    assertEquals(await a.sweep("room:x"), []);
    assertEquals((await a.list("room:x")).map((u) => u.id), ["1"]);
  });
});

Deno.test("presence: a server that renews while being swept keeps its users", async () => {
  await withKv(async (kv) => {
    await kv.set(["lease", "B"], 1);
    const b = new KvPresenceStore(kv, leases(kv, "B", new Set(["A", "B"])));
    await b.enter("room:x", user("2"), "b1");
    // A believes B dead; B renews its lease between A's read and A's commit.
    const base = leases(kv, "A", new Set());
    const a = new KvPresenceStore(kv, {
      id: "A",
      async live() {
        const snapshot = await base.live();
        await kv.set(["lease", "B"], 2);
        return snapshot;
      },
    });
    assertEquals(await a.sweep("room:x"), []);
    assertEquals((await b.list("room:x")).map((u) => u.id), ["2"]);
  });
});

Deno.test("presence: a server's own entries of connections it no longer has are swept", async () => {
  await withKv(async (kv) => {
    const a = new KvPresenceStore(kv, leases(kv, "A", new Set()));
    await a.enter("room:x", user("1"), "open");
    await a.enter("room:x", user("2"), "gone");
    assertEquals((await a.sweep("room:x")).length, 0, "without `open`, own entries are kept");
    const left = await a.sweep("room:x", (conn) => conn === "open");
    assertEquals(left.map((u) => u.id), ["2"]);
    assertEquals((await a.list("room:x")).map((u) => u.id), ["1"]);
  });
});

Deno.test("presence: an exit that overtakes its own enter waits for it, leaving no ghost", async () => {
  await withKv(async (kv) => {
    const store = new KvPresenceStore(kv, leases(kv, "A", new Set()));
    // The enter is slow (a busy store); the exit comes at once (the socket closed meanwhile).
    const slow: PresenceStore = {
      enter: async (...args) => {
        await new Promise((r) => setTimeout(r, 50));
        return await store.enter(...args);
      },
      exit: (...args) => store.exit(...args),
      list: (room) => store.list(room),
      sweep: (room, open) => store.sweep(room, open),
    };
    const events: RoomEvent[] = [];
    const fanout: Fanout = {
      committed: () => {},
      publish: (event) => events.push(event),
    };
    const chat = new ChatService({
      presence: slow,
      fanout,
      store: {} as never,
      attachments: {} as never,
      access: {} as never,
      metrics: {} as never,
    });
    const principal = { ...user("1"), grants: [] };
    const entering = chat.enter(principal, "room:x", "c1");
    await chat.exit(principal, "room:x", "c1");
    await entering;
    assertEquals(await store.list("room:x"), []);
    assertEquals(events.map((e) => e.type === "presence" && e.action), ["join", "leave"]);
    chat.close();
  });
});
