import { assertEquals, eventually } from "../../tests/assert.ts";
import { KvHeadWatcher, LOCAL_HEAD_POLL_MS } from "./kv_head_watcher.ts";

Deno.test("KvHeadWatcher starts a watch again when KV ends it, as when it fails", async () => {
  // The first watch ends at once (as a remote KV's may when its connection drops); the second
  // reports a head.
  const watches: string[] = [];
  const kv = {
    watch(keys: Deno.KvKey[]) {
      const n = watches.push(keys.map(String).join());
      return new ReadableStream<Deno.KvEntryMaybe<unknown>[]>({
        start(controller) {
          if (n === 1) return controller.close();
          if (n === 2) return controller.error(new Error("connection reset"));
          controller.enqueue([{ key: keys[0], value: 7, versionstamp: "1" }]);
        },
      });
    },
  } as unknown as Deno.Kv;
  const heads: [string, number][] = [];
  const logged = console.error;
  console.error = () => {};
  const watcher = new KvHeadWatcher(kv, (room, head) => heads.push([room, head]));
  try {
    watcher.add("ticket:1");
    await eventually(() => heads.length > 0, 5000, "a head after the watch ended and failed");
    assertEquals(heads, [["ticket:1", 7]]);
    assertEquals(watches.length, 3);
  } finally {
    watcher.close();
    console.error = logged;
  }
});

Deno.test("KvHeadWatcher polls heads while told to, 20 groups a round in turns, and reports only those that moved", async () => {
  // Watches that never report, as for another process's commits on a local file.
  const heads = new Map<string, { value: number; versionstamp: string }>();
  const rounds: number[] = [];
  let reads = 0;
  const kv = {
    watch: () => new ReadableStream<Deno.KvEntryMaybe<unknown>[]>(),
    getMany(keys: Deno.KvKey[]) {
      reads++;
      return Promise.resolve(keys.map((key) => {
        const head = heads.get(String(key.at(-1)));
        return head ? { key, ...head } : { key, value: null, versionstamp: null };
      }));
    },
  } as unknown as Deno.Kv;
  const seen: [string, number][] = [];
  const watcher = new KvHeadWatcher(kv, (room, head) => seen.push([room, head]), { pollMs: 200 });
  const rooms = Array.from({ length: 250 }, (_, i) => `ticket:${i}`);
  try {
    for (const room of rooms) watcher.add(room);
    const last = rooms.at(-1)!;
    heads.set(last, { value: 3, versionstamp: "a" });
    await new Promise((r) => setTimeout(r, 100));
    assertEquals([reads, seen], [0, []]);

    watcher.setPolling(true);
    // Sampled four times a round: a round's reads, back to back, fall in one sample.
    const timer = setInterval(() => rounds.push(reads), 50);
    await eventually(() => seen.length > 0, 2000, "the polled head");
    clearInterval(timer);
    assertEquals(seen, [[last, 3]]);
    // 25 groups of ten rooms: never more than 20 read in one round.
    const perRound = rounds.map((r, i) => r - (rounds[i - 1] ?? 0));
    assertEquals(perRound.every((n) => n <= 20), true, String(perRound));
    // Unchanged, it is not reported again; moved, it is.
    await new Promise((r) => setTimeout(r, 500));
    assertEquals(seen.length, 1);
    heads.set(last, { value: 4, versionstamp: "b" });
    await eventually(() => seen.length === 2, 2000, "the moved head");
    assertEquals(seen[1], [last, 4]);
    watcher.setPolling(false);
    const stopped = reads;
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(reads, stopped);
  } finally {
    watcher.close();
  }
});

Deno.test("KvHeadWatcher: with signals, a polling round reads 100 rooms, and the README says so", async () => {
  const read = new Set<string>();
  const kv = {
    watch: () => new ReadableStream<Deno.KvEntryMaybe<unknown>[]>(),
    getMany(keys: Deno.KvKey[]) {
      for (const key of keys) read.add(String(key.at(-1) === "head" ? key.at(-2) : key.at(-1)));
      return Promise.resolve(keys.map((key) => ({ key, value: null, versionstamp: null })));
    },
  } as unknown as Deno.Kv;
  const signals = { follow() {}, heard() {}, forget() {} };
  const watcher = new KvHeadWatcher(kv, () => {}, { pollMs: 200, signals });
  try {
    for (let i = 0; i < 1000; i++) watcher.add(`ticket:${i}`);
    watcher.setPolling(true);
    await eventually(() => read.size > 0, 2000, "the first round");
    // Halfway to the next round: the first one's reads, back to back, are done.
    await new Promise((r) => setTimeout(r, 100));
    const perRound = read.size;
    assertEquals(perRound, 100);
    // "Running several isolates and instances", on a local file shared with another process.
    const readme = (await Deno.readTextFile(new URL("../../README.md", import.meta.url)))
      .replace(/\s+/g, " ");
    const every = (1000 / perRound) * LOCAL_HEAD_POLL_MS;
    for (
      const claim of [
        `every ${LOCAL_HEAD_POLL_MS} ms (${perRound} rooms a round`,
        `with 1,000 rooms each is read every ${every} ms`,
        `with up to ${perRound} rooms, a message`,
      ]
    ) {
      assertEquals(readme.includes(claim), true, `README.md should say "${claim}"`);
    }
  } finally {
    watcher.close();
  }
});
