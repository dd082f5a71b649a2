import { assertEquals } from "../../tests/assert.ts";
import { kvWith } from "../../tests/kv_with.ts";
import { type LogEntry, logHead, LogReader, LogWriter } from "./kv_log.ts";

const PREFIX = ["log"];

type Commit = Deno.AtomicOperation["commit"];

/** `kv` whose atomic operations commit through `wrap` (given their own commit, bound). */
const committingThrough = (kv: Deno.Kv, wrap: (commit: Commit) => Commit): Deno.Kv =>
  kvWith(kv, "atomic", (atomic) => () => {
    const op = atomic();
    op.commit = wrap(op.commit.bind(op));
    return op;
  });

Deno.test("kv log: bursts from two writers at once all land, each in its order, and a follower reads them all once", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const heard: LogEntry<string>[] = [];
    const reader = new LogReader<string>(kv, "c", (_, e) => heard.push(e));
    const fromA = new LogReader<string>(kv, "a", (_, e) => assertEquals(e.origin, "b"));
    for (const r of [reader, fromA]) {
      r.follow(PREFIX);
      await r.heard(PREFIX, await kv.get(logHead(PREFIX)));
    }
    const a = new LogWriter<string>(kv, "a");
    const b = new LogWriter<string>(kv, "b");
    // 900 events: more than a commit takes, written by two processes racing for the head.
    await Promise.all(
      Array.from({ length: 450 }, (_, i) => [a.append(PREFIX, `a${i}`), b.append(PREFIX, `b${i}`)])
        .flat(),
    );
    const head = await kv.get<number>(logHead(PREFIX));
    await Promise.all([reader.heard(PREFIX, head), fromA.heard(PREFIX, head)]);
    assertEquals(heard.length, 900);
    assertEquals(heard.map((e) => e.seq), heard.map((_, i) => heard[0].seq + i));
    for (const origin of ["a", "b"]) {
      assertEquals(
        heard.filter((e) => e.origin === origin).map((e) => e.event),
        Array.from({ length: 450 }, (_, i) => `${origin}${i}`),
      );
    }
    // Heard again, or an older head after a newer one: nothing more than the newer one's entry.
    await reader.heard(PREFIX, head);
    await a.append(PREFIX, "last");
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    await reader.heard(PREFIX, head);
    assertEquals(heard.length, 901);
  } finally {
    kv.close();
  }
});

Deno.test("kv log: a follower given a start time reads what was written since then before its first head; a forgotten log is not read", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const writer = new LogWriter<string>(kv, "a");
    await writer.append(PREFIX, "before");
    await new Promise((r) => setTimeout(r, 20));
    const heard: string[] = [];
    const reader = new LogReader<string>(kv, "b", (_, e) => heard.push(e.event));
    reader.follow(PREFIX, Date.now() - 5);
    // Written after following began, before the first head was read.
    await writer.append(PREFIX, "meanwhile");
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    assertEquals(heard, ["meanwhile"]);
    reader.forget(PREFIX);
    await writer.append(PREFIX, "after");
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    assertEquals(heard, ["meanwhile"]);
  } finally {
    kv.close();
  }
});

Deno.test("kv log: a follower whose first head comes after a burst reads all of it, however long", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const writer = new LogWriter<string>(kv, "a");
    await writer.append(PREFIX, "before");
    await new Promise((r) => setTimeout(r, 20));
    const heard: string[] = [];
    const reader = new LogReader<string>(kv, "b", (_, e) => heard.push(e.event));
    reader.follow(PREFIX, Date.now() - 5);
    // As another server coming up and joining 150 users at once: more than a page of entries,
    // all written after following began, before the first head is read.
    const burst = Array.from({ length: 150 }, (_, i) => `join ${i}`);
    await Promise.all(burst.map((e) => writer.append(PREFIX, e)));
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    assertEquals(heard, burst);
  } finally {
    kv.close();
  }
});

Deno.test("kv log: a burst too large for one commit is split by size; an entry KV cannot hold fails alone", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const writer = new LogWriter<string>(kv, "a");
    const heard: string[] = [];
    const reader = new LogReader<string>(kv, "b", (_, e) => heard.push(e.event));
    reader.follow(PREFIX);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    // 400 entries of 2.5 KB: 1 MB, over KV's 800 KiB per commit. One of 70 KB, over its 64 KiB.
    const events = Array.from({ length: 400 }, (_, i) => `${i}:`.padEnd(2500, "x"));
    events.splice(200, 0, "huge:".padEnd(70_000, "x"));
    const outcomes = await Promise.allSettled(events.map((e) => writer.append(PREFIX, e)));
    const failed = events.filter((_, i) => outcomes[i].status === "rejected");
    assertEquals(failed.map((e) => e.slice(0, 5)), ["huge:"]);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    assertEquals(heard, events.filter((e) => !e.startsWith("huge:")));
  } finally {
    kv.close();
  }
});

/** Appends `events` to a log whose keys expired, on a clock that reads `now` (ms). */
async function startOver(kv: Deno.Kv, events: string[], now: number): Promise<void> {
  for await (const { key } of kv.list({ prefix: PREFIX })) await kv.delete(key);
  const realNow = Date.now;
  Date.now = () => now;
  try {
    const writer = new LogWriter<string>(kv, "b");
    await Promise.all(events.map((e) => writer.append(PREFIX, e)));
  } finally {
    Date.now = realNow;
  }
}

Deno.test("kv log: a log that expired and started over below what a follower saw, or around it, is read whole; its old head heard late reads nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const heard: string[] = [];
    const reader = new LogReader<string>(kv, "c", (_, e) => heard.push(e.event));
    reader.follow(PREFIX);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    const started = Date.now();
    const writer = new LogWriter<string>(kv, "a");
    for (const e of ["a1", "a2", "a3"]) await writer.append(PREFIX, e);
    const old = await kv.get(logHead(PREFIX));
    await reader.heard(PREFIX, old);
    // Started over by a server whose clock is 20 minutes behind: its seqs are all below.
    await startOver(kv, ["b1", "b2"], started - 20 * 60_000);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    await reader.heard(PREFIX, old);
    assertEquals(heard, ["a1", "a2", "a3", "b1", "b2"]);
    // Started over again on that clock, after more entries: its head passed the seq seen (by
    // one) before it was heard.
    heard.length = 0;
    for (const e of ["a4", "a5", "a6"]) await writer.append(PREFIX, e);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    const burst = ["c1", "c2", "c3", "c4", "c5", "c6"];
    await startOver(kv, burst, started - 20 * 60_000);
    await reader.heard(PREFIX, await kv.get(logHead(PREFIX)));
    assertEquals(heard, ["a4", "a5", "a6", ...burst]);
  } finally {
    kv.close();
  }
});

Deno.test("kv log: a write waits out SQLite's write lock held by another isolate", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // The first five commits find the file locked, as when another isolate is writing.
    let locked = 5;
    const locking = committingThrough(
      kv,
      (commit) => () =>
        locked-- > 0 ? Promise.reject(new TypeError("database is locked")) : commit(),
    );
    const writer = new LogWriter<string>(locking, "a");
    await Promise.all(["one", "two", "three"].map((e) => writer.append(PREFIX, e)));
    const entries = await Array.fromAsync(kv.list<LogEntry<string>>({ prefix: [...PREFIX, "e"] }));
    assertEquals(entries.map((e) => e.value.event), ["one", "two", "three"]);
  } finally {
    kv.close();
  }
});

Deno.test("kv log: a batch whose commit failed after it may have landed fails whole, never written twice", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // The second commit lands and then throws, as a remote KV whose connection drops would.
    let commits = 0;
    const flaky = committingThrough(kv, (commit) => async () => {
      const res = await commit();
      if (res.ok && ++commits === 2) throw new Error("connection reset");
      return res;
    });
    const writer = new LogWriter<string>(flaky, "a");
    const outcomes = await Promise.allSettled(
      ["e1", "e2", "e3", "e4"].map((e) => writer.append(PREFIX, e)),
    );
    assertEquals(outcomes.map((o) => o.status), ["fulfilled", "rejected", "rejected", "rejected"]);
    const entries = await Array.fromAsync(kv.list<LogEntry<string>>({ prefix: [...PREFIX, "e"] }));
    assertEquals(entries.map((e) => e.value.event), ["e1", "e2", "e3", "e4"]);
  } finally {
    kv.close();
  }
});
