import { assertEquals, eventually } from "../../tests/assert.ts";
import type { UserProfile } from "../core/types.ts";
import { KvHeadWatcher } from "./kv_head_watcher.ts";
import {
  KvRoomSignals,
  type SignalEvent,
  signalsHead,
  TYPING_RENEW_MS,
} from "./kv_room_signals.ts";

const ann: UserProfile = { id: 1, username: "ann" };
const typing = (room: string, isTyping: boolean): SignalEvent => ({
  type: "typing",
  room,
  user: ann,
  isTyping,
});

/** Two servers of different processes on one KV, each following `rooms` through a head watch. */
async function withTwo(
  rooms: string[],
  fn: (a: KvRoomSignals, heardByB: SignalEvent[], heardByA: SignalEvent[]) => Promise<void>,
) {
  const kv = await Deno.openKv(":memory:");
  const heard = { a: [] as SignalEvent[], b: [] as SignalEvent[] };
  const a = new KvRoomSignals(kv, "host/1/a", (e) => heard.a.push(e));
  const b = new KvRoomSignals(kv, "host/2/b", (e) => heard.b.push(e));
  const watchers = [a, b].map((signals) => new KvHeadWatcher(kv, () => {}, { signals }));
  try {
    for (const w of watchers) for (const room of rooms) w.add(room);
    // Each watch's first report says where the room stands.
    await new Promise((r) => setTimeout(r, 100));
    await fn(a, heard.b, heard.a);
  } finally {
    for (const w of watchers) w.close();
    kv.close();
  }
}

Deno.test("KvRoomSignals: another process's signals arrive through the head watch, in order within a room; its own do not come back", async () => {
  // Six rooms: more than one watch group of five rooms (two keys each).
  const rooms = Array.from({ length: 6 }, (_, i) => `ticket:${i}`);
  await withTwo(rooms, async (a, heardByB, heardByA) => {
    await a.publish({ type: "presence", room: "ticket:5", user: ann, action: "join" });
    await a.publish({ type: "read", room: "ticket:5", user: ann, seq: 3 });
    await a.publish({ type: "presence", room: "ticket:0", user: ann, action: "leave" });
    await eventually(() => heardByB.length === 3, 5000, "three signals");
    // In order within a room; rooms are read apart.
    assertEquals(heardByB.filter((e) => e.room === "ticket:5").map((e) => e.type), [
      "presence",
      "read",
    ]);
    assertEquals(heardByB.filter((e) => e.room === "ticket:0").map((e) => e.type), ["presence"]);
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(heardByA, []);
    assertEquals(heardByB.length, 3);
  });
});

Deno.test("KvRoomSignals: signals published together are written in order; typing renewals go out once a second", async () => {
  await withTwo(["ticket:1"], async (a, heardByB) => {
    // Not awaited: the later ones queue behind the first write and go in one commit after it.
    const writes = [
      a.publish(typing("ticket:1", true)),
      a.publish(typing("ticket:1", true)),
      a.publish({ type: "read", room: "ticket:1", user: ann, seq: 1 }),
      a.publish(typing("ticket:1", false)),
      a.publish(typing("ticket:1", true)),
    ];
    await Promise.all(writes);
    await eventually(() => heardByB.length === 4, 5000, "four signals");
    assertEquals(
      heardByB.map((e) => e.type === "typing" ? `typing ${e.isTyping}` : e.type),
      ["typing true", "read", "typing false", "typing true"],
    );
    // A renewal within the second is dropped; one after it goes.
    await a.publish(typing("ticket:1", true));
    await new Promise((r) => setTimeout(r, TYPING_RENEW_MS));
    await a.publish(typing("ticket:1", true));
    await eventually(() => heardByB.length === 5, 5000, "the renewal after a second");
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(heardByB.length, 5);
  });
});

Deno.test("KvRoomSignals: typing heard from a server that never ends it ends here a second after the typing timeout", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: { isTyping: boolean; at: number }[] = [];
  const a = new KvRoomSignals(kv, "host/1/a", () => {});
  const b = new KvRoomSignals(kv, "host/2/b", (e) => {
    if (e.type === "typing") heard.push({ isTyping: e.isTyping, at: performance.now() });
  }, { typingTimeoutMs: 100 });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    await a.publish(typing("ticket:1", true));
    const start = performance.now();
    b.heard("ticket:1", await read());
    await eventually(() => heard.length === 2, 5000, "the typing state's end");
    assertEquals(heard.map((h) => h.isTyping), [true, false]);
    const waited = heard[1].at - start;
    if (waited < 100 + TYPING_RENEW_MS - 20) throw new Error(`ended after ${waited} ms`);
    // Ended by its own server instead, no second end comes later.
    await a.publish(typing("ticket:1", true));
    b.heard("ticket:1", await read());
    await a.publish(typing("ticket:1", false));
    b.heard("ticket:1", await read());
    await new Promise((r) => setTimeout(r, 100 + TYPING_RENEW_MS + 200));
    assertEquals(heard.map((h) => h.isTyping), [true, false, true, false]);
  } finally {
    b.close();
    kv.close();
  }
});

Deno.test("KvRoomSignals: a join and leave read together both pass; a lone stale one does not; a room's signals wait for the check before them", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: string[] = [];
  const checked: string[] = [];
  const a = new KvRoomSignals(kv, "host/1/a", () => {});
  // The store says ann is gone, and answers slowly, so that what follows a check could overtake it.
  const b = new KvRoomSignals(kv, "host/2/b", (e) => {
    heard.push(
      e.type === "presence" ? e.action : e.type === "typing" ? `typing ${e.isTyping}` : e.type,
    );
  }, {
    holds: async (e) => {
      checked.push(e.action);
      await new Promise((r) => setTimeout(r, 50));
      return e.action === "leave";
    },
  });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  const presence = (action: "join" | "leave"): SignalEvent => ({
    type: "presence",
    room: "ticket:1",
    user: ann,
    action,
  });
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    // Connected and gone within one read: the join is not checked (the leave after it says more).
    await Promise.all([
      a.publish(presence("join")),
      a.publish(typing("ticket:1", true)),
      a.publish(presence("leave")),
    ]);
    b.heard("ticket:1", await read());
    await eventually(() => heard.length === 3, 5000, "join, typing, leave");
    assertEquals(heard, ["join", "typing true", "leave"]);
    assertEquals(checked, ["leave"]);
    // A lone join the store no longer agrees with is dropped; the typing behind it still waits.
    await Promise.all([a.publish(presence("join")), a.publish(typing("ticket:1", false))]);
    b.heard("ticket:1", await read());
    await eventually(() => heard.length === 4, 5000, "the typing after the check");
    assertEquals(heard, ["join", "typing true", "leave", "typing false"]);
    assertEquals(checked, ["leave", "join"]);
  } finally {
    b.close();
    kv.close();
  }
});

Deno.test("KvRoomSignals: a checked change is checked again when a change of that user was passed on here meanwhile, and passed on only if the store still agrees", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: string[] = [];
  const checks: string[] = [];
  // The store's answers in turn (leave: absent, join: present), each held until the test says.
  const answers: { holds: boolean; release: Promise<void> }[] = [];
  // Changes of ann passed on here, as the hub counts them, and the watches open.
  let changes = 0;
  let watches = 0;
  const a = new KvRoomSignals(kv, "host/1/a", () => {});
  const b = new KvRoomSignals(kv, "host/2/b", (e) => {
    if (e.type === "presence") heard.push(e.action);
  }, {
    holds: async (e) => {
      checks.push(e.action);
      const answer = answers.shift()!;
      await answer.release;
      return answer.holds;
    },
    watch: () => {
      watches++;
      let open = true;
      return { changes: () => changes, end: () => open && (open = false, watches--) };
    },
  });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  const leave: SignalEvent = { type: "presence", room: "ticket:1", user: ann, action: "leave" };
  const answer = (holds: boolean) => {
    let release = () => {};
    answers.push({ holds, release: new Promise<void>((r) => release = r) });
    return release;
  };
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    // Read gone; ann arrives here before the answer is passed on, and is there when read again.
    let first = answer(true);
    let again = answer(false);
    await a.publish(leave);
    b.heard("ticket:1", await read());
    await eventually(() => checks.length === 1, 5000, "the check");
    changes++;
    first();
    again();
    await eventually(() => checks.length === 2 && watches === 0, 5000, "the second check");
    assertEquals(heard, []);
    // Nothing passed on meanwhile: one check; a change meanwhile that the store bears out: passed.
    first = answer(true);
    await a.publish(leave);
    b.heard("ticket:1", await read());
    first();
    await eventually(() => heard.length === 1, 5000, "the leave");
    first = answer(true);
    again = answer(true);
    await a.publish(leave);
    b.heard("ticket:1", await read());
    await eventually(() => checks.length === 4, 5000, "the check");
    changes++;
    first();
    again();
    await eventually(() => heard.length === 2, 5000, "the leave checked twice");
    assertEquals(checks, ["leave", "leave", "leave", "leave", "leave"]);
    assertEquals(watches, 0);
  } finally {
    b.close();
    kv.close();
  }
});

Deno.test("KvRoomSignals: signals the hub has heard already (by the channel) are skipped, not checked against the store", async () => {
  const kv = await Deno.openKv(":memory:");
  const passed: number[] = [];
  const checked: number[] = [];
  // The serials this isolate's hub has handed on, by the channel.
  const channel = new Set<number>();
  const a = new KvRoomSignals(kv, "isolate-a", () => {});
  const b = new KvRoomSignals(kv, "isolate-b", (e) => passed.push(e.serial!), {
    holds: (e) => {
      checked.push(e.serial!);
      return Promise.resolve(true);
    },
    heard: (e) => channel.has(e.serial!),
  });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  const presence = (action: "join" | "leave", serial: number): SignalEvent => ({
    type: "presence",
    room: "ticket:1",
    user: ann,
    action,
    origin: "isolate-a",
    serial,
  });
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    channel.add(1).add(3);
    await Promise.all([
      a.publish(presence("join", 1)),
      a.publish({ ...typing("ticket:1", true), origin: "isolate-a", serial: 2 }),
      a.publish(presence("leave", 3)),
      a.publish({ ...typing("ticket:1", false), origin: "isolate-a", serial: 4 }),
      a.publish(presence("join", 5)),
    ]);
    b.heard("ticket:1", await read());
    await eventually(() => passed.length === 3, 5000, "what the channel dropped");
    assertEquals(passed, [2, 4, 5]);
    assertEquals(checked, [5]);
  } finally {
    b.close();
    kv.close();
  }
});

Deno.test("KvRoomSignals: the presence checks of a burst run side by side, 32 at most; what they pass still comes in order", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: string[] = [];
  const started: number[] = [];
  let open!: () => void;
  const gate = new Promise<void>((r) => open = r);
  const a = new KvRoomSignals(kv, "host/1/a", () => {});
  // The store answers only once the gate opens: checked one after another, one would start.
  const b = new KvRoomSignals(kv, "host/2/b", (e) => {
    heard.push(e.type === "presence" ? `join ${e.user.id}` : e.type);
  }, {
    holds: async (e) => {
      started.push(Number(e.user.id));
      await gate;
      return e.user.id !== 3;
    },
  });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  const ids = Array.from({ length: 40 }, (_, i) => i + 1);
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    await Promise.all([
      ...ids.map((id) =>
        a.publish({
          type: "presence",
          room: "ticket:1",
          user: { id, username: `u${id}` },
          action: "join",
        })
      ),
      a.publish(typing("ticket:1", true)),
    ]);
    b.heard("ticket:1", await read());
    await eventually(() => started.length === 32, 5000, "32 checks started");
    await new Promise((r) => setTimeout(r, 50));
    assertEquals([started.length, heard], [32, []]);
    open();
    await eventually(() => heard.length === 40, 5000, "what the checks passed");
    assertEquals(heard, [...ids.filter((id) => id !== 3).map((id) => `join ${id}`), "typing"]);
    assertEquals(started, ids);
  } finally {
    b.close();
    kv.close();
  }
});

Deno.test("KvRoomSignals: a typing timeout at a timer's bound (the longest the config keeps) does not end a heard typing state at once", async () => {
  const kv = await Deno.openKv(":memory:");
  const heard: boolean[] = [];
  const a = new KvRoomSignals(kv, "host/1/a", () => {});
  const b = new KvRoomSignals(kv, "host/2/b", (e) => {
    if (e.type === "typing") heard.push(e.isTyping);
  }, { typingTimeoutMs: 2_147_483_000 });
  const read = async () => await kv.get(signalsHead("ticket:1"));
  try {
    b.follow("ticket:1");
    b.heard("ticket:1", await read());
    await a.publish(typing("ticket:1", true));
    b.heard("ticket:1", await read());
    await eventually(() => heard.length === 1, 5000, "the typing state");
    await new Promise((r) => setTimeout(r, 200));
    assertEquals(heard, [true]);
    // Ended by its own server, as it would be, so that no timer is left.
    await a.publish(typing("ticket:1", false));
    b.heard("ticket:1", await read());
    await eventually(() => heard.length === 2, 5000, "the typing state's end");
  } finally {
    kv.close();
  }
});
