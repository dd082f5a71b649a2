import { assertEquals, eventually } from "../../tests/assert.ts";
import { kvWith } from "../../tests/kv_with.ts";
import type { EvictionEvent } from "../core/types.ts";
import { KvRoomEvents } from "./kv_room_events.ts";

Deno.test("KvRoomEvents: another origin's evictions arrive through the watch, once; older ones and this origin's own do not", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: Record<string, EvictionEvent[]> = { a: [], b: [], late: [] };
  const a = new KvRoomEvents(kv, "host/1/a", (e) => heard.a.push(e));
  const b = new KvRoomEvents(kv, "host/2/b", (e) => heard.b.push(e));
  let late: KvRoomEvents | undefined;
  try {
    await a.start();
    await b.start();
    const revoked: EvictionEvent = { type: "revoked", room: "ticket:1", userId: 4 };
    const closed: EvictionEvent = { type: "closed", room: "ticket:2", reason: "Room deleted" };
    await a.publish(revoked);
    await b.publish(closed);
    await eventually(() => heard.a.length === 1 && heard.b.length === 1, 3000, "both events");
    assertEquals(heard.a, [closed]);
    assertEquals(heard.b, [revoked]);
    // A server that starts later hears only what comes after it.
    late = new KvRoomEvents(kv, "host/3/c", (e) => heard.late.push(e));
    await late.start();
    await a.publish({ type: "revoked", room: "ticket:3", userId: 5 });
    await eventually(() => heard.late.length === 1, 3000, "the later event");
    assertEquals(heard.late, [{ type: "revoked", room: "ticket:3", userId: 5 }]);
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(heard.b.length, 2);
    assertEquals(heard.a.length, 1);
  } finally {
    a.close();
    b.close();
    late?.close();
    kv.close();
  }
});

Deno.test("KvRoomEvents: a watch that ends (a remote KV's connection dropping) is started again, and other origins' evictions still arrive", async () => {
  const kv = await Deno.openKv(":memory:");
  let watches = 0;
  // This origin's first watch ends at once; the next ones are the store's own.
  const dropping = kvWith(
    kv,
    "watch",
    (watch) =>
      ((keys: Deno.KvKey[]) =>
        ++watches === 1
          ? new ReadableStream<Deno.KvEntryMaybe<unknown>[]>({ start: (c) => c.close() })
          : watch(keys)) as typeof watch,
  );
  const heard: EvictionEvent[] = [];
  const a = new KvRoomEvents(dropping, "host/1/a", (e) => heard.push(e));
  const b = new KvRoomEvents(kv, "host/2/b", () => {});
  try {
    await a.start();
    await b.start();
    await eventually(() => watches === 2, 3000, "the watch started again");
    const revoked: EvictionEvent = { type: "revoked", room: "ticket:1", userId: 4 };
    await b.publish(revoked);
    await eventually(() => heard.length > 0, 3000, "the eviction after the watch ended");
    assertEquals(heard, [revoked]);
  } finally {
    a.close();
    b.close();
    kv.close();
  }
});
