/** Servers sharing a KV store find each other; a lone one publishes nothing. */

import { assert, assertEquals } from "../../tests/assert.ts";
import { eventually } from "../../tests/helpers.ts";
import type { RoomEvent } from "../core/types.ts";
import { InstanceRegistry, SharedOnlyBroker } from "./instance_registry.ts";
import { MemoryBroker, MemoryBus } from "./memory_broker.ts";

async function withKv(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(`${dir}/kv.sqlite3`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("instance registry: arrivals and departures are seen by the others", async () => {
  await withKv(async (path) => {
    const kvA = await Deno.openKv(path);
    const kvB = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kvA, { heartbeatMs: 100 });
    const changes: boolean[] = [];
    a.onChange((alone) => changes.push(alone));
    assert(a.alone, "the first server is alone");

    const b = await InstanceRegistry.start(kvB, { heartbeatMs: 100 });
    // The newcomer sees the first at once; the first learns of it through the watch.
    assertEquals([b.alone, b.others], [false, 1]);
    await eventually(() => !a.alone && a.others === 1, 5000, "the first to see the newcomer");

    await b.close();
    await eventually(() => a.alone, 5000, "the first to be alone again after the other left");
    assertEquals(changes, [false, true]);
    // The leaver stays readable as lapsed, for presence sweeps that never saw it alive.
    const leases = await a.live();
    assertEquals([leases.ids.has(b.id), leases.seen.has(b.id)], [false, true]);
    await a.close();
    kvA.close();
    kvB.close();
  });
});

Deno.test("instance registry: an entry that stopped renewing counts for nobody", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    // A server that died without removing its entry, its last heartbeat long ago.
    await kv.set(["instance", "crashed"], { seenAt: Date.now() - 60_000, pid: 1 });
    const a = await InstanceRegistry.start(kv, { heartbeatMs: 100, staleMs: 30_000 });
    assert(a.alone);
    // One that is alive, but whose renewals stop: it lapses after staleMs.
    await kv.set(["instance", "fading"], { seenAt: Date.now(), pid: 2 });
    await kv.atomic().sum(["instance_epoch"], 1n).commit();
    await eventually(() => a.others === 1);
    await a.close();
    const b = await InstanceRegistry.start(kv, { heartbeatMs: 100, staleMs: 200 });
    await eventually(() => b.alone, 5000, "the silent entry to go stale");
    await b.close();
    kv.close();
  });
});

Deno.test("instance registry: an entry is judged by the stale time its writer declared, an older version's by the reader's own", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    const seenAt = Date.now() - 1000;
    // Renewed a second ago: within its writer's 30 s, past the 300 ms of a reader with the
    // shorter time, which must not count it dead between its renewals.
    await kv.set(["instance", "slow"], { seenAt, pid: 1, staleMs: 30_000 });
    // A second of silence from one that renews within 300 ms: dead, also to a reader of 30 s.
    await kv.set(["instance", "quick"], { seenAt, pid: 2, staleMs: 300 });
    // An older version's entry says nothing: each reader judges it by its own.
    await kv.set(["instance", "older"], { seenAt, pid: 3 });
    const short = await InstanceRegistry.start(kv, { heartbeatMs: 100, staleMs: 300 });
    const long = await InstanceRegistry.start(kv, { heartbeatMs: 100, staleMs: 30_000 });
    const others = async (r: InstanceRegistry) =>
      [...(await r.live()).ids].filter((id) => id !== short.id && id !== long.id).sort();
    assertEquals(await others(short), ["slow"]);
    assertEquals(await others(long), ["older", "slow"]);
    // Each server declares its own in its entry.
    const declared = await kv.getMany<{ staleMs: number }[]>([
      ["instance", short.id],
      ["instance", long.id],
    ]);
    assertEquals(declared.map((e) => e.value?.staleMs), [300, 30_000]);
    await short.close();
    await long.close();
    kv.close();
  });
});

Deno.test("instance registry: a server whose clock is a minute behind or ahead is judged by its renewals, not its clock", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kv, { heartbeatMs: 50, staleMs: 500 });
    const warn = console.warn;
    const warnings: string[] = [];
    console.warn = (...args: unknown[]) => warnings.push(args.join(" "));
    // A peer renewing every 50 ms, its clock `skew` ms off this one's, until `renewing` is false.
    let renewing = true;
    const peer = (id: string, skew: number) => {
      const renew = async () => {
        while (renewing) {
          await kv.set(["instance", id], { seenAt: Date.now() + skew, pid: 9, process: id });
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      return renew();
    };
    try {
      const behind = peer("behind", -60_000);
      const ahead = peer("ahead", 60_000);
      await kv.atomic().sum(["instance_epoch"], 1n).commit();
      // Counted once seen renewing, and for as long as it renews.
      await eventually(() => a.others === 2, 3000, "both peers to count");
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, 100));
        assertEquals(a.others, 2, `after ${i * 100} ms`);
      }
      assertEquals(warnings.filter((w) => w.includes("clock")).length, 2, warnings.join("\n"));
      // Stopped, the one whose clock runs ahead is dead after the stale time, not a minute later.
      renewing = false;
      await Promise.all([behind, ahead]);
      await eventually(() => a.others === 0, 3000, "the silent peers to count for nobody");
    } finally {
      console.warn = warn;
      renewing = false;
      await a.close();
      kv.close();
    }
  });
});

Deno.test("instance registry: a server with this pid on another host is not counted as an isolate here", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kv, { heartbeatMs: 100 });
    const b = await InstanceRegistry.start(kv, { heartbeatMs: 100 });
    // Containers sharing a KV volume often all run as PID 1: the pid matches, the host does not.
    await kv.set(["instance", "container"], {
      seenAt: Date.now(),
      pid: Deno.pid,
      process: `another-host/${Deno.pid}/1`,
    });
    const leases = await a.live();
    assertEquals(leases.ids.size, 3);
    assertEquals([...leases.here].sort(), [a.id, b.id].sort());
    await b.close();
    await a.close();
    kv.close();
  });
});

Deno.test("shared-only broker: posts only while someone else shares the store", async () => {
  const bus = new MemoryBus();
  let shared = false;
  const mine = new SharedOnlyBroker(new MemoryBroker(bus), () => shared);
  const theirs = new MemoryBroker(bus);
  const heard: RoomEvent[] = [];
  theirs.subscribe("room:a", (e) => heard.push(e));
  const event: RoomEvent = {
    type: "typing",
    room: "room:a",
    user: { id: 1, username: "one" },
    isTyping: true,
  };
  mine.publish(event);
  await new Promise((r) => setTimeout(r, 10));
  assertEquals(heard.length, 0);
  shared = true;
  mine.publish(event);
  await eventually(() => heard.length === 1);
  // Subscriptions work either way.
  const got: RoomEvent[] = [];
  mine.subscribe("room:a", (e) => got.push(e));
  theirs.publish(event);
  await eventually(() => got.length === 1);
  mine.close();
  theirs.close();
});

Deno.test("instance registry: an entry that lapsed is written again as an arrival, and said so", async () => {
  await withKv(async (path) => {
    const kvA = await Deno.openKv(path);
    const kvB = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kvA, { heartbeatMs: 100 });
    const b = await InstanceRegistry.start(kvB, { heartbeatMs: 100 });
    let lapses = 0;
    a.onLapse(() => lapses++);
    // What others would do to a server that stalled: its entry is gone.
    await kvB.delete(["instance", a.id]);
    await eventually(() => lapses === 1, 5000, "the lapse to be noticed");
    assertEquals((await kvB.get(["instance", a.id])).value !== null, true);
    assert((await b.live()).ids.has(a.id), "the others count it again");
    await a.close();
    await b.close();
    kvA.close();
    kvB.close();
  });
});

/** `kv` whose commits fail with `error` while `refusing()` says so (a full disk, say). */
function refusingWrites(kv: Deno.Kv, refusing: () => boolean, error: string): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      if (prop === "atomic") {
        return () => {
          const op = target.atomic();
          const commit = op.commit.bind(op);
          op.commit = () => refusing() ? Promise.reject(new TypeError(error)) : commit();
          return op;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

Deno.test("instance registry: a first registration the disk refuses does not fail the start; it is tried again, and counts as a lapse", async () => {
  await withKv(async (path) => {
    let full = true;
    const kvA = refusingWrites(await Deno.openKv(path), () => full, "database or disk is full");
    const kvB = await Deno.openKv(path);
    const b = await InstanceRegistry.start(kvB, { heartbeatMs: 100 });
    const error = console.error;
    const errors: string[] = [];
    console.error = (...args: unknown[]) => errors.push(args.join(" "));
    const warn = console.warn;
    console.warn = () => {};
    try {
      const a = await InstanceRegistry.start(kvA, { heartbeatMs: 100, retryMs: 50 });
      let lapses = 0;
      a.onLapse(() => lapses++);
      assertEquals(a.registered, false);
      assert(errors.some((e) => e.includes("could not register")), errors.join("\n"));
      // It reads the others; they do not know it yet.
      assertEquals([a.others, b.alone], [1, true]);
      let refused = "";
      await a.register().catch((err) => refused = err.message);
      assertEquals(refused, "database or disk is full");

      full = false;
      await eventually(() => a.registered, 5000, "the retry to register");
      await eventually(() => !b.alone, 5000, "the others to learn of it");
      assertEquals(lapses, 1);
      await a.register();
      await a.close();
      await eventually(() => b.alone, 5000, "its departure to be seen");
    } finally {
      console.error = error;
      console.warn = warn;
    }
    await b.close();
    kvA.close();
    kvB.close();
  });
});

Deno.test("instance registry: a first registration that fails otherwise still fails the start", async () => {
  await withKv(async (path) => {
    const kv = refusingWrites(await Deno.openKv(path), () => true, "something else went wrong");
    let refused = "";
    await InstanceRegistry.start(kv).catch((err) => refused = err.message);
    assertEquals(refused, "something else went wrong");
    kv.close();
  });
});

Deno.test("instance registry: a check taken from a read fails once the server renewed", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kv, { heartbeatMs: 100 });
    const b = await InstanceRegistry.start(kv, { heartbeatMs: 100 });
    const before = await a.live();
    const stale = kv.atomic();
    before.check(stale, b.id);
    // Wait for b's next heartbeat to rewrite its entry.
    const seen = (await kv.get(["instance", b.id])).versionstamp;
    await eventually(async () => (await kv.get(["instance", b.id])).versionstamp !== seen);
    assertEquals((await stale.commit()).ok, false);
    const fresh = kv.atomic();
    (await a.live()).check(fresh, b.id);
    assertEquals((await fresh.commit()).ok, true);
    await a.close();
    await b.close();
    kv.close();
  });
});

Deno.test("instance registry: a server whose entry lapsed is counted as lapsed until its entry goes, one that left is not", async () => {
  await withKv(async (path) => {
    const kv = await Deno.openKv(path);
    const kvB = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kv, { heartbeatMs: 50, staleMs: 200 });
    // Stalled past the stale time (a SIGSTOP): it may come back, with its clients.
    await kv.set(["instance", "stalled"], { seenAt: Date.now(), pid: 2 });
    await kv.atomic().sum(["instance_epoch"], 1n).commit();
    await eventually(() => a.others === 1, 5000, "the stalled server counted live first");
    assertEquals(a.lapsed, 0);
    await eventually(() => a.alone, 5000, "the stalled server to lapse");
    assertEquals(a.lapsed, 1);
    // Back: live again, not lapsed.
    await kv.set(["instance", "stalled"], { seenAt: Date.now(), pid: 2 });
    await eventually(() => a.others === 1 && a.lapsed === 0, 5000, "the stalled one back");
    // KV expired its entry (two stale times after its last renewal): gone for good.
    await kv.delete(["instance", "stalled"]);
    await eventually(() => a.alone && a.lapsed === 0, 5000, "the expired entry forgotten");
    // One that left says so in its entry: it does not come back.
    const b = await InstanceRegistry.start(kvB, { heartbeatMs: 50, staleMs: 200 });
    await eventually(() => a.others === 1, 5000, "the newcomer");
    await b.close();
    await eventually(() => a.alone, 5000, "the leaver gone");
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(a.lapsed, 0);
    await a.close();
    kv.close();
    kvB.close();
  });
});

Deno.test("instance registry: live servers of versions that store read cursors without their list are counted as older, and their coming and going is told", async () => {
  await withKv(async (path) => {
    const kvA = await Deno.openKv(path);
    const kvB = await Deno.openKv(path);
    const a = await InstanceRegistry.start(kvA, { heartbeatMs: 100 });
    const b = await InstanceRegistry.start(kvB, { heartbeatMs: 100 });
    // Servers of this version are not older.
    assertEquals([b.others, b.older], [1, 0]);
    await eventually(() => a.others === 1, 5000, "the first to see the newcomer");
    const changes: number[] = [];
    a.onChange(() => changes.push(a.older));
    // An older version's entry has no `readRooms`.
    await kvA.atomic().set(["instance", "older"], { seenAt: Date.now(), pid: 1 })
      .sum(["instance_epoch"], 1n).commit();
    await eventually(() => a.older === 1, 5000, "the older server to be seen");
    assertEquals((await a.live()).older, 1);
    await kvA.atomic().set(["instance", "older"], { seenAt: 0, pid: 1 })
      .sum(["instance_epoch"], 1n).commit();
    await eventually(() => a.older === 0, 5000, "the older server to be seen leaving");
    assertEquals(changes, [1, 0]);
    await b.close();
    await a.close();
    kvA.close();
    kvB.close();
  });
});
