/** Presence leased by servers: sweeps, orphans, a renewal racing a sweep, exit after enter. */

import { assertEquals, eventually } from "../../tests/assert.ts";
import { KvRoomSignals, type SignalEvent, signalsHead } from "../broker/kv_room_signals.ts";
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

Deno.test("presence: a server whose lease cannot be written yet writes no entry", async () => {
  await withKv(async (kv) => {
    let registered = false;
    const a = new KvPresenceStore(kv, {
      ...leases(kv, "A", new Set()),
      register: () =>
        registered ? Promise.resolve() : Promise.reject(new Error("database or disk is full")),
    });
    let refused = "";
    await a.enter("room:x", user("1"), "a1").catch((err) => refused = err.message);
    assertEquals(refused, "database or disk is full");
    assertEquals((await Array.fromAsync(kv.list({ prefix: ["presence"] }))).length, 0);
    registered = true;
    assertEquals(await a.enter("room:x", user("1"), "a1"), { first: true });
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

/** `kv` with some of its methods replaced; the others are its own. */
function intercept(kv: Deno.Kv, replaced: Partial<Deno.Kv>): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      if (prop in replaced) return replaced[prop as keyof Deno.Kv];
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** `kv`, counting the atomic commits made through it. */
function counting(kv: Deno.Kv): { kv: Deno.Kv; commits: () => number } {
  let commits = 0;
  const atomic = () => {
    const op = kv.atomic();
    const commit = op.commit.bind(op);
    op.commit = () => {
      commits++;
      return commit();
    };
    return op;
  };
  return { kv: intercept(kv, { atomic }), commits: () => commits };
}

Deno.test("presence: a burst of enters and exits commits together, first and last once per user", async () => {
  await withKv(async (raw) => {
    const { kv, commits } = counting(raw);
    const store = new KvPresenceStore(kv, leases(raw, "A", new Set()));
    // 40 users with 3 connections each, entering at once.
    const conns = Array.from({ length: 120 }, (_, i) => ({ user: String(i % 40), conn: `c${i}` }));
    const entered = await Promise.all(
      conns.map((c) => store.enter("room:x", user(c.user), c.conn)),
    );
    assertEquals(entered.filter((r) => r.first).length, 40, "one first per user");
    for (let u = 0; u < 40; u++) {
      assertEquals(conns.filter((c, i) => c.user === String(u) && entered[i].first).length, 1);
    }
    assertEquals((await store.list("room:x")).length, 40);
    const enterCommits = commits();
    assertEquals(enterCommits <= 5, true, `120 enters took ${enterCommits} commits`);

    const exited = await Promise.all(conns.map((c) => store.exit("room:x", c.user, c.conn)));
    assertEquals(exited.filter((r) => r.last).length, 40, "one last per user");
    assertEquals(await store.list("room:x"), []);
    assertEquals(commits() - enterCommits <= 5, true, `120 exits took ${commits() - enterCommits}`);
  });
});

Deno.test("presence: two isolates entering and leaving for one user agree on first and last", async () => {
  const dir = await Deno.makeTempDir();
  const kvA = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kvB = await Deno.openKv(`${dir}/kv.sqlite3`);
  try {
    const alive = new Set(["A", "B"]);
    const a = new KvPresenceStore(kvA, leases(kvA, "A", alive));
    const b = new KvPresenceStore(kvB, leases(kvB, "B", alive));
    // User 1 on both isolates at once, among others who keep each batch full.
    const plan = Array.from({ length: 60 }, (_, i) => ({
      store: i % 2 === 0 ? a : b,
      user: i % 3 === 0 ? "1" : String(100 + i),
      conn: `k${i}`,
    }));
    const entered = await Promise.all(
      plan.map((p) => p.store.enter("room:y", user(p.user), p.conn)),
    );
    assertEquals(plan.filter((p, i) => p.user === "1" && entered[i].first).length, 1);
    assertEquals(
      entered.filter((r) => r.first).length,
      1 + plan.filter((p) => p.user !== "1").length,
    );
    const exited = await Promise.all(plan.map((p) => p.store.exit("room:y", p.user, p.conn)));
    assertEquals(plan.filter((p, i) => p.user === "1" && exited[i].last).length, 1);
    assertEquals(await a.list("room:y"), []);
  } finally {
    kvA.close();
    kvB.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("presence: long ids fit the batches, and a change too big for KV fails alone", async () => {
  await withKv(async (kv) => {
    const store = new KvPresenceStore(kv, leases(kv, "A", new Set()));
    // 100 users with 230-byte ids, two connections each: 200 changes that no single commit holds.
    const room = "support-chat:" + "r".repeat(128);
    const id = (i: number) => String(i).padStart(3, "0") + "x".repeat(227);
    const burst = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) => store.enter(room, user(id(i % 100)), `c${i}`)),
    );
    assertEquals(burst.filter((r) => r.status === "rejected").length, 0);
    assertEquals((await store.list(room)).length, 100);

    const results = await Promise.allSettled([
      store.enter("room:z", user("a"), "c1"),
      store.enter("room:z", user("b".repeat(3000)), "c2"), // over KV's 2 KiB key limit
      store.enter("room:z", user("c"), "c3"),
    ]);
    assertEquals(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
    assertEquals((await store.list("room:z")).map((u) => u.id), ["a", "c"]);
  });
});

Deno.test("presence: a user another isolate keeps changing holds nobody else up", async () => {
  const dir = await Deno.makeTempDir();
  const kvA = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kvB = await Deno.openKv(`${dir}/kv.sqlite3`);
  try {
    let busy = true;
    let n = 0;
    const base = leases(kvA, "A", new Set());
    // Between every read and commit of A, isolate B changes user X (a storm of X's reconnects).
    const a = new KvPresenceStore(kvA, {
      id: "A",
      async live() {
        if (busy) await kvB.set(["presence_user", "room:x", "X"], n++);
        return await base.live();
      },
    });
    const x = a.enter("room:x", user("X"), "cx");
    const y = await Promise.race([
      a.enter("room:x", user("Y"), "cy").then(() => "entered"),
      new Promise((r) => setTimeout(() => r("held up"), 1000)),
    ]);
    busy = false;
    assertEquals(y, "entered");
    assertEquals((await x).first, true, "X gets through once B is quiet");
  } finally {
    kvA.close();
    kvB.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** Leases that also name the servers seen lapsed: `seen` minus `alive` are the dead. */
function namingLeases(id: string, alive: Set<string>, seen: Set<string>): PresenceLeases {
  return {
    id,
    live: () =>
      Promise.resolve({
        ids: new Set([id, ...alive]),
        seen: new Set([id, ...seen]),
        check: () => {},
      }),
  };
}

/** `kv`, counting the lists of one room's presence entries. */
function countingRoomLists(kv: Deno.Kv, room: string): { kv: Deno.Kv; lists: () => number } {
  let lists = 0;
  const list = ((selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
    const p = "prefix" in selector ? selector.prefix : undefined;
    if (p?.length === 2 && p[0] === "presence" && p[1] === room) lists++;
    return kv.list(selector, options);
  }) as Deno.Kv["list"];
  return { kv: intercept(kv, { list }), lists: () => lists };
}

Deno.test("presence: sweeps skip a room swept clean until the leases show a death", async () => {
  await withKv(async (raw) => {
    const { kv, lists } = countingRoomLists(raw, "room:x");
    const alive = new Set(["B"]);
    const seen = new Set(["B"]);
    const a = new KvPresenceStore(kv, namingLeases("A", alive, seen), { recheckMs: 0 });
    const b = new KvPresenceStore(raw, namingLeases("B", alive, seen));
    await b.enter("room:x", user("2"), "b1");
    assertEquals(await a.sweep("room:x"), []);
    assertEquals(await a.sweep("room:x"), []);
    assertEquals(lists(), 1, "the second sweep had nothing to look for");

    alive.delete("B"); // B dies; its lapsed lease is still readable
    assertEquals((await a.sweep("room:x")).map((u) => u.id), ["2"]);
    assertEquals(await a.sweep("room:x"), []);
    assertEquals(lists(), 2);

    // C comes and dies between two lease reads: only its lapsed lease tells.
    const c = new KvPresenceStore(raw, namingLeases("C", new Set(["C"]), new Set(["C"])));
    await c.enter("room:x", user("3"), "c1");
    seen.add("C");
    assertEquals((await a.sweep("room:x")).map((u) => u.id), ["3"]);
    assertEquals(await a.list("room:x"), []);

    // D is seen alive, then gone from the registry altogether (its entry expired).
    alive.add("D");
    seen.add("D");
    assertEquals(await a.sweep("room:x"), []);
    const d = new KvPresenceStore(raw, namingLeases("D", new Set(["D"]), new Set(["D"])));
    await d.enter("room:x", user("4"), "d1");
    alive.delete("D");
    seen.delete("D");
    assertEquals((await a.sweep("room:x")).map((u) => u.id), ["4"]);

    // After the server wrote its entries again, every room is read again.
    const before = lists();
    a.invalidateSweeps();
    await a.sweep("room:x");
    assertEquals(lists(), before + 1);
  });
});

Deno.test("presence: a room is swept in full at least every fullSweepMs", async () => {
  await withKv(async (raw) => {
    const { kv, lists } = countingRoomLists(raw, "room:x");
    const a = new KvPresenceStore(kv, namingLeases("A", new Set(), new Set()), {
      recheckMs: 0,
      fullSweepMs: 0,
    });
    for (let i = 0; i < 3; i++) await a.sweep("room:x");
    assertEquals(lists(), 3);
  });
});

Deno.test("presence: an exit that fails while a sweep runs keeps the room due for the next", async () => {
  await withKv(async (raw) => {
    let failReads = false;
    let duringSweep: (() => Promise<void>) | undefined;
    // The sweep reads user 2's lock before its commit: that is where the exit fails meanwhile.
    const kv = intercept(raw, {
      getMany: ((keys: Deno.KvKey[]) =>
        failReads ? Promise.reject(new Error("store hiccup")) : raw.getMany(keys)) as Deno.Kv[
          "getMany"
        ],
      get: (async (key: Deno.KvKey) => {
        if (key[0] === "presence_user" && key[2] === "2" && duringSweep) {
          const run = duringSweep;
          duringSweep = undefined;
          await run();
        }
        return await raw.get(key);
      }) as Deno.Kv["get"],
    });
    const alive = new Set(["B"]);
    const seen = new Set(["B"]);
    const a = new KvPresenceStore(kv, namingLeases("A", alive, seen), { recheckMs: 0 });
    const b = new KvPresenceStore(raw, namingLeases("B", alive, seen));
    const open = new Set(["a1"]);
    const isOpen = (conn: string) => open.has(conn);
    await a.enter("room:x", user("1"), "a1");
    await b.enter("room:x", user("2"), "b1");
    assertEquals(await a.sweep("room:x", isOpen), []);
    alive.delete("B");
    duringSweep = async () => {
      open.delete("a1"); // the socket closes, and its exit fails
      failReads = true;
      const failed = await a.exit("room:x", "1", "a1").then(() => false, () => true);
      failReads = false;
      assertEquals(failed, true);
    };
    assertEquals((await a.sweep("room:x", isOpen)).map((u) => u.id), ["2"]);
    assertEquals((await a.sweep("room:x", isOpen)).map((u) => u.id), ["1"], "the orphan goes");
  });
});

Deno.test("presence: restoring presence after a lapse makes the next sweeps read every room", async () => {
  await withKv(async (kv) => {
    const store = new KvPresenceStore(kv, namingLeases("A", new Set(), new Set()), {
      recheckMs: 0,
    });
    let invalidated = 0;
    const presence: PresenceStore = {
      enter: (...args) => store.enter(...args),
      exit: (...args) => store.exit(...args),
      list: (room) => store.list(room),
      sweep: (room, open) => store.sweep(room, open),
      invalidateSweeps: () => {
        invalidated++;
        store.invalidateSweeps();
      },
    };
    const chat = new ChatService({
      presence,
      fanout: { committed: () => {}, publish: () => {} },
      store: {} as never,
      attachments: {} as never,
      access: {} as never,
      metrics: {} as never,
    });
    await chat.enter({ ...user("1"), grants: [] }, "room:x", "c1");
    await chat.restorePresence();
    assertEquals(invalidated, 1);
    chat.close();
  });
});

Deno.test("presence: a restore's write-back of a connection whose entry is still stored is not the user's first; one swept meanwhile is", async () => {
  await withKv(async (kv) => {
    const store = new KvPresenceStore(kv, leases(kv, "A", new Set()));
    assertEquals(await store.enter("room:x", user("1"), "c1"), { first: true });
    // Reported first, every other server's members would be told that user 1 joined again.
    assertEquals(await store.enter("room:x", user("1"), "c1", { again: true }), { first: false });
    // Swept by another server while this one lapsed: written back, it is the first again.
    await kv.delete(["presence", "room:x", "1", "c1"]);
    assertEquals(await store.enter("room:x", user("1"), "c1", { again: true }), { first: true });
  });
});

Deno.test("presence: a backlog of 150,000 changes drains, each user's in order, without overflowing the stack", async () => {
  await withKv(async (kv) => {
    const store = new KvPresenceStore(kv, leases(kv, "A", new Set()));
    // Queued while the first commit is under way: a spread of this many into one call (as the
    // queue once was rebuilt) overflowed the stack, and the drain's rejection ended the process.
    const users = 15_000;
    const entered: Promise<{ first: boolean }>[] = [];
    for (let i = 0; i < 150_000; i++) {
      entered.push(store.enter("room:busy", user(String(i % users)), `c${i}`));
    }
    // Every change settles (a drain that died would leave them waiting), each user's in order:
    // each user's first enter is its first.
    const results = await Promise.all(entered);
    assertEquals(results.filter((r) => r.first).length, users);
    assertEquals(results.slice(0, users).every((r) => r.first), true);
    assertEquals((await store.list("room:busy")).length, users);
  });
});

Deno.test("presence: a burst of presence changes from another server is checked from each user's own entries, not a read of the room per change", async () => {
  await withKv(async (raw) => {
    // Entries of the room's presence read through B's store.
    let read = 0;
    const list = ((selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
      const entries = raw.list(selector, options);
      return (async function* () {
        for await (const e of entries) {
          if (e.key[0] === "presence") read++;
          yield e;
        }
      })();
    }) as unknown as Deno.Kv["list"];
    const alive = new Set(["A", "B"]);
    const a = new KvPresenceStore(raw, leases(raw, "A", alive));
    const b = new KvPresenceStore(intercept(raw, { list }), leases(raw, "B", alive));
    const ids = Array.from({ length: 200 }, (_, i) => String(i + 1));
    await Promise.all(ids.map((id) => a.enter("room:big", user(id), `a${id}`)));
    // A user present only through a server that died: the store no longer agrees with a join.
    await new KvPresenceStore(raw, leases(raw, "C", new Set())).enter("room:big", user("0"), "c0");
    const chat = new ChatService({
      presence: b,
      fanout: { committed: () => {}, publish: () => {} },
      store: {} as never,
      attachments: {} as never,
      access: {} as never,
      metrics: {} as never,
    });
    const passed: string[] = [];
    const fromA = new KvRoomSignals(raw, "host/1/a", () => {});
    const signals = new KvRoomSignals(raw, "host/2/b", (e) => {
      if (e.type === "presence") passed.push(`${e.action} ${e.user.id}`);
    }, { holds: (e) => chat.presenceHolds(e) });
    const head = async () => await raw.get(signalsHead("room:big"));
    try {
      signals.follow("room:big");
      signals.heard("room:big", await head());
      const presence = (id: string, action: "join" | "leave"): SignalEvent => ({
        type: "presence",
        room: "room:big",
        user: user(id),
        action,
      });
      await Promise.all([
        ...["0", ...ids].map((id) => fromA.publish(presence(id, "join"))),
        fromA.publish(presence("7", "leave")),
      ]);
      read = 0;
      signals.heard("room:big", await head());
      await eventually(() => passed.length === 200, 10_000, "the joins the store agrees with");
      assertEquals(passed, ids.map((id) => `join ${id}`));
      // One entry per user checked; a read of the room per change would be 200 × 200.
      assertEquals(read <= 2 * 202, true, `202 checks read ${read} presence entries`);
    } finally {
      signals.close();
      chat.close();
    }
  });
});

Deno.test("presence: a stop waits for the commit under way and fails the changes queued and later ones, which keep their entries", async () => {
  await withKv(async (kv) => {
    const base = leases(kv, "A", new Set());
    let open = () => {};
    const gate = new Promise<void>((r) => open = r);
    let held = false;
    const a = new KvPresenceStore(kv, {
      ...base,
      live: async () => {
        if (held) await gate;
        return base.live();
      },
    });
    for (const id of ["1", "2", "3"]) await a.enter("room:x", user(id), `c${id}`);
    held = true;
    // The first commit waits at its lease read; the other two queue behind it.
    const exits = ["1", "2", "3"].map((id) =>
      a.exit("room:x", id, `c${id}`).then(({ last }) => last, () => "failed")
    );
    let stopped = false;
    const stopping = a.stop().then(() => stopped = true);
    assertEquals(await Promise.all([exits[1], exits[2]]), ["failed", "failed"]);
    assertEquals(stopped, false);
    open();
    await stopping;
    assertEquals(await exits[0], true);
    assertEquals(await a.exit("room:x", "2", "c2").then(() => "ok", () => "failed"), "failed");
    const left = await Array.fromAsync(kv.list({ prefix: ["presence", "room:x"] }));
    assertEquals(left.map((e) => e.key[2]), ["2", "3"]);
  });
});
