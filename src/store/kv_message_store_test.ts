import { assert, assertEquals, eventually } from "../../tests/assert.ts";
import { kvWith } from "../../tests/kv_with.ts";
import { DatabaseSync } from "node:sqlite";
import type { AppendResult, Attachment, MessageDraft } from "../core/types.ts";
import { KV_KEYS, KvMessageStore } from "./kv_message_store.ts";

const draft = (body: string, clientId?: string): MessageDraft => ({
  sender: { id: 1, username: "u1" },
  body,
  attachments: [],
  clientId,
});

/** The whole numbers from `from` to `to`, both included. */
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** A stored attachment record named `key` (no file behind it: the store only keeps records). */
const file = (key: string): Attachment => ({
  id: key,
  key,
  name: key,
  originalName: key,
  mime: "text/plain",
  size: 1,
  uploadedAt: "2026-01-01T00:00:00.000Z",
});

/** A store on an in-memory KV that lists the messages of each of its commits. */
async function countingCommits(options: ConstructorParameters<typeof KvMessageStore>[1]) {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv, options);
  const commits: number[] = [];
  store.onCommit = (_ms, messages) => commits.push(messages);
  return { kv, store, commits };
}

Deno.test("KvMessageStore.append() assigns 1, 2, 3 ... to concurrent appends in call order", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const results = await Promise.all(
    Array.from({ length: 150 }, (_, i) => store.append("r", draft(`m${i}`))),
  );
  assertEquals(results.map((r) => r.message.seq), Array.from({ length: 150 }, (_, i) => i + 1));
  assertEquals(results.map((r) => r.message.body), Array.from({ length: 150 }, (_, i) => `m${i}`));
  assertEquals(await store.head("r"), 150);
  assertEquals(await store.head("other"), 0);
  kv.close();
});

Deno.test("KvMessageStore.append() lets sends of later ticks join a commit within the interval", async () => {
  const { kv, store, commits } = await countingCommits({ commitIntervalMs: 500, pauseAboveCpu: 0 });
  const appends = [];
  for (let i = 0; i < 20; i++) {
    appends.push(store.append(`r${i % 3}`, draft(`m${i}`)));
    // Each send in a task of its own, as sends from separate sockets arrive.
    await new Promise((r) => setTimeout(r, 0));
  }
  const results = await Promise.all(appends);
  assertEquals(
    results.map((r) => r.message.seq),
    Array.from({ length: 20 }, (_, i) => Math.floor(i / 3) + 1),
  );
  // The first send commits at once; the other 19 wait out the interval together.
  assertEquals(commits, [1, 19]);
  kv.close();
});

Deno.test("KvMessageStore.refuseAppends() refuses the appends waiting out the interval and every later one, and ends the wait", async () => {
  const { kv, store, commits } = await countingCommits({
    commitIntervalMs: 60_000,
    pauseAboveCpu: 0,
  });
  await store.append("r", draft("first"));
  const waiting = [store.append("r", draft("second")), store.append("s", draft("third"))];
  await new Promise((r) => setTimeout(r, 10));
  store.refuseAppends(() => new Error("stopping"));
  const outcomes = await Promise.allSettled(waiting);
  assertEquals(outcomes.map((o) => o.status === "rejected" && o.reason.message), [
    "stopping",
    "stopping",
  ]);
  // The shutdown's flush does not wait out the minute.
  await store.flush();
  await store.append("r", draft("later")).then(() => assert(false), (e) => {
    assertEquals(e.message, "stopping");
  });
  assertEquals(commits, [1]);
  assertEquals(await store.head("r"), 1);
  kv.close();
});

Deno.test("KvMessageStore.append() commits each room's queued appends together when more rooms queue than a commit may check", async () => {
  const { kv, store, commits } = await countingCommits({ pauseAboveCpu: 0 });
  // Three rounds over 100 rooms, interleaved as senders in many rooms queue them.
  const appends = [];
  for (let round = 0; round < 3; round++) {
    for (let r = 0; r < 100; r++) appends.push(store.append(`r${r}`, draft(`${r}.${round}`)));
  }
  const results = await Promise.all(appends);
  // A commit checks at most 90 rooms: all three of theirs, then the other ten rooms' three.
  assertEquals(commits, [270, 30]);
  for (let i = 0; i < results.length; i++) {
    assertEquals(results[i].message.seq, Math.floor(i / 100) + 1);
    assertEquals(results[i].message.body, `${i % 100}.${Math.floor(i / 100)}`);
  }
  kv.close();
});

Deno.test("KvMessageStore.append() fills a commit up to KV's limits on mutations and on key bytes", async () => {
  const { kv, store, commits } = await countingCommits({ pauseAboveCpu: 0 });
  // 901 of KV's 1000 mutations: one commit.
  const short = await Promise.all(
    Array.from({ length: 900 }, (_, i) => store.append("r", draft(`${i}`))),
  );
  assertEquals(commits, [900]);
  assertEquals(short.map((r) => r.message.seq), Array.from({ length: 900 }, (_, i) => i + 1));
  // 300 keys of over 300 bytes each pass KV's 80 KiB of keys per commit (it refuses the commit,
  // and each append would then be committed alone): two commits, in order.
  const room = "n".repeat(300);
  commits.length = 0;
  const long = await Promise.all(
    Array.from({ length: 300 }, (_, i) => store.append(room, draft(`${i}`))),
  );
  assertEquals(commits.length, 2);
  assertEquals(commits[0] + commits[1], 300);
  assertEquals(long.map((r) => r.message.body), Array.from({ length: 300 }, (_, i) => `${i}`));
  assertEquals(long.map((r) => r.message.seq), Array.from({ length: 300 }, (_, i) => i + 1));
  // A NUL in a key takes two bytes, and client ids come from users.
  commits.length = 0;
  const nul = "\0".repeat(120);
  await Promise.all(
    Array.from({ length: 400 }, (_, i) => store.append("n", draft(`${i}`, `${i}${nul}`))),
  );
  assertEquals(commits.length, 2);
  kv.close();
});

Deno.test("KvMessageStore.append() keeps a room's later appends back with one that does not fit", async () => {
  const { kv, store, commits } = await countingCommits({ pauseAboveCpu: 0 });
  const big = "x".repeat(30_000);
  const appends = [];
  for (let i = 0; i < 10; i++) {
    appends.push(store.append("small", draft(`s${i}`)));
    // The last of "big" is small: it would fit, but must not pass the ninth.
    appends.push(store.append("big", draft(i < 9 ? `${i}${big}` : `${i}`)));
  }
  const results = await Promise.all(appends);
  // Eight big ones fill a commit's bytes; the ninth and the tenth wait, the small room does not.
  assertEquals(commits, [18, 2]);
  for (let i = 0; i < 10; i++) {
    assertEquals(results[2 * i].message.seq, i + 1);
    assertEquals(results[2 * i + 1].message.seq, i + 1);
    assertEquals((await store.list("big", { after: i, limit: 1 }))[0].body[0], `${i}`);
  }
  kv.close();
});

Deno.test("KvMessageStore.append() pauses between commits only while the process is busy", async () => {
  // The store's own CPU clock: the process's would count whatever else runs in it (other test
  // files, a loaded machine's stretched commits) and make "idle" a guess.
  let cpuMs = 0;
  const { kv, store, commits } = await countingCommits({
    commitIntervalMs: 400,
    pauseAboveCpu: 0.05,
    cpuTimeMs: () => cpuMs,
  });
  const sendInTurn = async (n: number) => {
    const appends = [];
    for (let i = 0; i < n; i++) {
      appends.push(store.append("r", draft(`m${i}`)));
      await new Promise((r) => setTimeout(r, 0));
    }
    return await Promise.all(appends);
  };
  await store.append("r", draft("first"));
  // Idle: later sends do not wait out the interval, each commits as soon as it can.
  const idle = await Promise.race([
    sendInTurn(3).then(() => "committed"),
    new Promise((r) => setTimeout(() => r("waited"), 300)),
  ]);
  assertEquals(idle, "committed");
  assertEquals(commits, [1, 1, 1, 1]);
  // Busy: a whole core since the last sample (taken at least 100 ms ago by then); the next
  // sends wait, and share one commit.
  await new Promise((r) => setTimeout(r, 110));
  cpuMs += 1000;
  await sendInTurn(3);
  assertEquals(commits.slice(4), [3]);
  kv.close();
});

Deno.test("KvMessageStore.append() never gives two writers on separate handles the same seq", async () => {
  const path = await Deno.makeTempFile({ suffix: ".kv" });
  const kvA = await Deno.openKv(path);
  const kvB = await Deno.openKv(path);
  const a = new KvMessageStore(kvA);
  const b = new KvMessageStore(kvB);
  const writes = [];
  for (let i = 0; i < 100; i++) {
    writes.push(a.append("r", draft(`a${i}`)), b.append("r", draft(`b${i}`)));
  }
  const seqs = (await Promise.all(writes)).map((r) => r.message.seq).sort((x, y) => x - y);
  assertEquals(seqs, Array.from({ length: 200 }, (_, i) => i + 1));
  const all = await a.list("r", { after: 0, limit: 1000 });
  assertEquals(all.length, 200);
  kvA.close();
  kvB.close();
  await Deno.remove(path);
});

Deno.test("KvMessageStore.append() with a repeated client id returns the original message", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const first = await store.append("r", draft("hello", "c-1"));
  const again = await store.append("r", draft("hello (retry)", "c-1"));
  assertEquals(again.duplicate, true);
  assertEquals(again.message, first.message);
  // Duplicates inside one batch collapse too, and another sender's same id is a new message.
  const [x, y, z] = await Promise.all([
    store.append("r", draft("x", "c-2")),
    store.append("r", draft("x again", "c-2")),
    store.append("r", { ...draft("other sender", "c-2"), sender: { id: 2, username: "u2" } }),
  ]);
  assertEquals([x.duplicate, y.duplicate, z.duplicate], [false, true, false]);
  assertEquals(y.message.seq, x.message.seq);
  assertEquals(await store.head("r"), 3);
  kv.close();
});

Deno.test("KvMessageStore.append() reads a room's head before the client ids it reads, so another writer's same id in between is seen", async () => {
  const path = await Deno.makeTempFile({ suffix: ".kv" });
  const kvA = await Deno.openKv(path);
  const kvB = await Deno.openKv(path);
  const a = new KvMessageStore(kvA);
  let idsRead!: () => void;
  const idsReadOnce = new Promise<void>((r) => idsRead = r);
  // B's head read waits for its client id read (or 300 ms), and A stores the same client id
  // between B's client id read and B's head read: the order that stored it twice.
  const slowB = kvWith(kvB, "getMany", (getMany) =>
    (async (keys: Deno.KvKey[]) => {
      if (keys[0]?.[0] === "head") {
        await Promise.race([idsReadOnce, new Promise((r) => setTimeout(r, 300))]);
        return await getMany(keys);
      }
      const entries = await getMany(keys);
      if (keys[0]?.[0] === "idem") {
        await a.append("r", draft("from A", "same"));
        idsRead();
      }
      return entries;
    }) as Deno.Kv["getMany"]);
  const b = new KvMessageStore(slowB);
  // The commit checks the first 99 client ids itself (100 checks, one for the head); the last
  // one is read.
  const others = Array.from({ length: 99 }, (_, i) => b.append("r", draft(`b${i}`, `b${i}`)));
  const fromB = await b.append("r", draft("from B", "same"));
  assertEquals([fromB.duplicate, fromB.message.body, fromB.message.seq], [true, "from A", 1]);
  assertEquals((await Promise.all(others)).map((r) => r.message.seq), range(2, 100));
  assertEquals(await b.head("r"), 100);
  kvA.close();
  kvB.close();
  await Deno.remove(path);
});

Deno.test("KvMessageStore.append() checks new client ids in the commit instead of reading them, and reads past KV's 100 checks", async () => {
  const kv = await Deno.openKv(":memory:");
  let reads = 0;
  const counted = kvWith(kv, "getMany", (getMany) =>
    ((keys: Deno.KvKey[]) => {
      reads += keys.filter((k) => k[0] === "idem").length;
      return getMany(keys);
    }) as Deno.Kv["getMany"]);
  const store = new KvMessageStore(counted);
  // Two rooms take two checks: 98 ids are checked, the other 12 read.
  await Promise.all(
    Array.from({ length: 110 }, (_, i) => store.append(`r${i % 2}`, draft(`m${i}`, `c${i}`))),
  );
  assertEquals(reads, 12);
  // A repeated id fails its check; the retry reads it and answers with the first message.
  reads = 0;
  const again = await store.append("r0", draft("m0 again", "c0"));
  assertEquals([again.duplicate, again.message.body, again.message.seq], [true, "m0", 1]);
  assertEquals(reads, 1);
  assertEquals(await store.head("r0"), 55);
  kv.close();
});

Deno.test("KvMessageStore.append() reads client ids for a while after a checked one turned out stored, rather than failing commit after commit", async () => {
  const kv = await Deno.openKv(":memory:");
  let failed = 0;
  const counted = kvWith(kv, "atomic", (atomic) => () => {
    const op = atomic();
    const commit = op.commit.bind(op);
    op.commit = async () => {
      const res = await commit();
      if (!res.ok) failed++;
      return res;
    };
    return op;
  });
  const store = new KvMessageStore(counted);
  for (let i = 0; i < 20; i++) await store.append("r", draft(`old ${i}`, `old${i}`));
  // Clients resending after a reconnect: every batch carries one id already stored.
  const started = performance.now();
  for (let b = 0; b < 20; b++) {
    const results = await Promise.all([
      store.append("r", draft("again", `old${b}`)),
      ...Array.from({ length: 49 }, (_, i) => store.append("r", draft("new", `b${b}-${i}`))),
    ]);
    assertEquals(results.filter((r) => r.duplicate).length, 1);
  }
  const bound = 1 + Math.floor((performance.now() - started) / 1000);
  assert(failed <= bound, `${failed} commits failed their checks (at most ${bound} expected)`);
  assertEquals(await store.head("r"), 20 + 20 * 49);
  kv.close();
});

Deno.test("KvMessageStore.list() pages by cursor in both directions, oldest first", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  for (let i = 1; i <= 10; i++) await store.append("r", draft(`m${i}`));
  const seqs = async (q: Parameters<typeof store.list>[1]) =>
    (await store.list("r", q)).map((m) => m.seq);
  assertEquals(await seqs({ limit: 3 }), [8, 9, 10]);
  assertEquals(await seqs({ before: 8, limit: 3 }), [5, 6, 7]);
  assertEquals(await seqs({ after: 2, limit: 3 }), [3, 4, 5]);
  assertEquals(await seqs({ after: 2, before: 5, limit: 10 }), [3, 4]);
  assertEquals(await seqs({ after: 10, limit: 3 }), []);
  assertEquals(await seqs({ after: 4, before: 5, limit: 3 }), []);
  assertEquals(await store.tail("r"), 1);
  assertEquals(await store.tail("empty"), 1);
  kv.close();
});

Deno.test("KvMessageStore.markRead() only ever raises a cursor", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  assertEquals(await store.cursor("r", 5), 0);
  assertEquals(await store.markRead("r", 5, 7), 7);
  assertEquals(await store.markRead("r", 5, 3), 7);
  await store.markRead("r", "x", 2);
  assertEquals(await store.cursors("r"), new Map([["5", 7], ["x", 2]]));
  kv.close();
});

Deno.test("KvMessageStore.forgetReader() deletes a user's cursors in the rooms named, or in every room they read; a purge drops the room from the user's list", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  for (const room of ["a", "b", "c", "d"]) {
    await store.append(room, draft(room));
    await store.markRead(room, 5, 1);
    await store.markRead(room, 6, 1);
  }
  // A cursor stored before the store listed a user's rooms is found where the caller names it.
  await kv.set(KV_KEYS.read("old", "5"), new Deno.KvU64(3n));
  await store.forgetReader(5, ["a", "old"]);
  assertEquals(await store.cursors("a"), new Map([["6", 1]]));
  assertEquals(await store.cursors("old"), new Map());
  await store.purge("d");
  const rooms = async (user: string) =>
    (await Array.fromAsync(kv.list({ prefix: KV_KEYS.readRooms(user) }))).map((e) => e.key[2]);
  assertEquals(await rooms("5"), ["b", "c"]);
  await store.forgetReader(5);
  assertEquals(await rooms("5"), []);
  for (const room of ["b", "c"]) assertEquals(await store.cursors(room), new Map([["6", 1]]));
  assertEquals(await rooms("6"), ["a", "b", "c"]);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore.forgetReader() deletes a user's cursors in every room they read, also past the 100 rooms one commit takes", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  for (let i = 0; i < 150; i++) await store.markRead(`r${i}`, 5, 1);
  await store.forgetReader(5);
  const cursors = await Array.fromAsync(kv.list({ prefix: ["read"] }));
  const listed = await Array.fromAsync(kv.list({ prefix: KV_KEYS.readRooms("5") }));
  assertEquals([cursors.length, listed.length], [0, 0]);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore.markRead() stores nothing (null) where forgetReader() refused the user's marks, in a room or everywhere, with an expiry, until readmitReader()", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const expiries: unknown[] = [];
  const atomic = kv.atomic.bind(kv);
  kv.atomic = () => {
    const op = atomic();
    const set = op.set.bind(op);
    op.set = (key, value, options) => {
      if (key[0] === "read_forgotten") expiries.push(options?.expireIn);
      return set(key, value, options);
    };
    return op;
  };
  await store.forgetReader(5, ["a"]);
  assertEquals(await store.markRead("a", 5, 1), null);
  assertEquals(await store.markRead("b", 5, 1), 1);
  assertEquals(await store.markRead("a", 6, 1), 1);
  await store.forgetReader(6);
  for (const room of ["a", "z"]) assertEquals(await store.markRead(room, 6, 2), null);
  assertEquals(await store.cursors("a"), new Map());
  assertEquals(await store.cursors("b"), new Map([["5", 1]]));
  assertEquals(expiries, [15 * 60_000, 15 * 60_000]);
  await store.readmitReader(5, ["a"]);
  await store.readmitReader(6);
  assertEquals(await store.markRead("a", 5, 1), 1);
  assertEquals(await store.markRead("z", 6, 2), 2);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore.append() refuses a value KV cannot hold without failing its batch", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const results = await Promise.allSettled([
    store.append("r", draft("ok 1")),
    store.append("r", draft("x".repeat(70_000))),
    store.append("r", draft("ok 2")),
  ]);
  assertEquals(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
  const bodies = (await store.list("r", { limit: 10 })).map((m) => m.body);
  assertEquals(bodies, ["ok 1", "ok 2"]);
  assert((await store.list("r", { limit: 10 })).every((m, i) => m.seq === i + 1));
  kv.close();
});

Deno.test("KvMessageStore with a history limit deletes the files of the messages it drops", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const store = new KvMessageStore(kv, {
    historyLimit: 2,
    fileSweepMs: 10,
    discard: (attachments) => {
      discarded.push(...attachments.map((a) => a.key));
      return Promise.resolve();
    },
  });
  const withFiles = (body: string, ...keys: string[]): MessageDraft => ({
    ...draft(body),
    attachments: keys.map(file),
  });
  await store.append("r", withFiles("one", "a/1", "a/2"));
  await store.append("r", draft("two"));
  await store.append("other", withFiles("elsewhere", "b/1"));
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(discarded, [], "nothing dropped yet");
  await store.append("r", withFiles("three", "a/3"));
  await store.append("r", draft("four")); // drops "two", which had no files
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(discarded, ["a/1", "a/2"]);
  await store.append("r", draft("five")); // drops "three"
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(discarded, ["a/1", "a/2", "a/3"]);
  assertEquals((await store.list("r", { limit: 10 })).map((m) => m.body), ["four", "five"]);
  assertEquals(
    (await Array.fromAsync(kv.list({ prefix: ["files"] }))).map((e) => e.key),
    [["files", "other", 1]],
    "records of dropped messages go with their files",
  );
  await store.close();
  kv.close();
});

/** Runs `fn` with two KV handles on one fresh file: two isolates' view of one store. */
async function withSharedKv(fn: (kvA: Deno.Kv, kvB: Deno.Kv) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  const kvA = await Deno.openKv(`${dir}/kv.sqlite3`);
  const kvB = await Deno.openKv(`${dir}/kv.sqlite3`);
  try {
    await fn(kvA, kvB);
  } finally {
    kvA.close();
    kvB.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Store options with a history limit whose discarded file keys are pushed to `into`. */
const limited = (limit: number, into: string[], fileSweepMs = 10) => ({
  historyLimit: limit,
  fileSweepMs,
  discard: (attachments: Attachment[]) => {
    into.push(...attachments.map((a) => a.key));
    return Promise.resolve();
  },
});

const withFile = (n: number): MessageDraft => ({ ...draft(`m${n}`), attachments: [file(`f${n}`)] });

Deno.test("KvMessageStore: two sweepers delete a dropped message's files once; a kept message's never", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const discarded: string[] = [];
    const options = () => ({
      ...limited(3, discarded, 1e9),
      discard: async (attachments: { key: string }[]) => {
        await new Promise((r) => setTimeout(r, 5));
        discarded.push(...attachments.map((a) => a.key));
      },
    });
    const a = new KvMessageStore(kvA, options());
    for (let i = 1; i <= 3; i++) await a.append("r", withFile(i));
    await a.retained();
    // b's and c's first commits drop nothing: their checks, which both sweep, drop 1 and 2.
    const b = new KvMessageStore(kvB, options());
    await b.append("r", withFile(4));
    await b.retained();
    const c = new KvMessageStore(kvA, options());
    await c.append("r", draft("m5"));
    await c.retained();
    await Promise.all([b.sweepFiles(), c.sweepFiles()]);
    assertEquals(discarded.sort(), ["f1", "f2"], "once each, though both swept");
    assertEquals((await c.list("r", { limit: 10 })).map((m) => m.body), ["m3", "m4", "m5"]);
    for (const store of [a, b, c]) await store.close();
  });
});

Deno.test("KvMessageStore: a lowered limit drops a room's older messages and their files at its next commit", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const before = new KvMessageStore(kv, limited(4, discarded));
  for (let i = 1; i <= 4; i++) await before.append("r", withFile(i));
  await before.append("quiet", withFile(9));
  await before.close();
  const after = new KvMessageStore(kv, limited(1, discarded));
  await after.append("r", draft("m5"));
  await after.retained();
  await eventually(() => discarded.length === 4, 5000, "the dropped files");
  assertEquals(discarded.sort(), ["f1", "f2", "f3", "f4"]);
  assertEquals((await after.list("r", { limit: 10 })).map((m) => m.body), ["m5"]);
  assertEquals(await after.tail("r"), 5);
  // A room nobody writes to keeps its history until its next message.
  assertEquals((await after.list("quiet", { limit: 10 })).length, 1);
  await after.close();
  kv.close();
});

Deno.test("KvMessageStore: messages stored without records get them when a limit first applies", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  // A store without `discard` keeps no records, like the versions before them.
  const unrecorded = new KvMessageStore(kv);
  for (const n of [1, 2, 3, 4]) await unrecorded.append("r", withFile(n));
  await unrecorded.close();
  assertEquals((await Array.fromAsync(kv.list({ prefix: ["files"] }))).length, 0);
  const store = new KvMessageStore(kv, limited(2, discarded));
  await store.append("r", draft("m5")); // 1 to 3 go with the check, each with a record now
  await store.retained();
  await eventually(() => discarded.length === 3, 5000, "the dropped files");
  assertEquals(discarded.sort(), ["f1", "f2", "f3"]);
  // 4 was kept, but its record was written then: a later commit drops it unread.
  await store.append("r", draft("m6"));
  await eventually(() => discarded.length === 4, 5000, "the file of message 4");
  assertEquals((await store.list("r", { limit: 10 })).map((m) => m.body), ["m5", "m6"]);
  assertEquals((await Array.fromAsync(kv.list({ prefix: ["files"] }))).length, 0);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore: a store keeping everything writes records, so one with a limit deletes its files", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const withLimit = new KvMessageStore(kv, limited(2, discarded));
  await withLimit.append("r", withFile(1));
  await withLimit.retained();
  // Another instance on the same KV, during a rolling change of the limit.
  const unlimited = new KvMessageStore(kv, limited(0, discarded));
  for (const n of [2, 3]) await unlimited.append("r", withFile(n));
  await unlimited.close();
  for (const n of [4, 5]) await withLimit.append("r", draft(`m${n}`)); // drop 2 and 3 unread
  await eventually(() => discarded.length === 2, 5000, "the dropped files");
  assertEquals(discarded.sort(), ["f2", "f3"]);
  await withLimit.close();
  kv.close();
});

Deno.test("KvMessageStore: a record a slow check writes late never brings back one a sweep claimed", async () => {
  await withSharedKv(async (kvA, kvB) => {
    // B lists messages slowly (a long history, or a busy disk): A checks, drops and sweeps first.
    const slowB = new Proxy(kvB, {
      get(target, prop) {
        if (prop !== "list") return Reflect.get(target, prop, target).bind(target);
        return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
          const entries = target.list(selector, options);
          if (!("prefix" in selector) || selector.prefix[0] !== "msg" || "end" in selector) {
            return entries;
          }
          return (async function* () {
            for await (const e of entries) {
              await new Promise((r) => setTimeout(r, 100));
              yield e;
            }
          })();
        };
      },
    });
    const unrecorded = new KvMessageStore(kvA);
    for (const n of [1, 2, 3]) await unrecorded.append("r", withFile(n));
    const discarded: string[] = [];
    const a = new KvMessageStore(kvA, limited(1, discarded));
    const b = new KvMessageStore(slowB, limited(1, discarded));
    await b.append("r", draft("m4"));
    await a.append("r", draft("m5"));
    await Promise.all([a.retained(), b.retained()]);
    await a.append("r", draft("m6")); // another drop, another sweep
    await eventually(() => discarded.length >= 3, 5000, "the dropped files");
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(discarded.sort(), ["f1", "f2", "f3"]);
    for (const store of [unrecorded, a, b]) await store.close();
  });
});

Deno.test("KvMessageStore: a client id whose message retention dropped is refused alone; its batch is stored once", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const store = new KvMessageStore(kv, limited(1, discarded));
  await store.append("r", draft("m1", "c1"));
  await store.retained();
  await store.append("r", draft("m2")); // drops 1
  // One batch: the resend, and a message with a file.
  const [resend, sent] = await Promise.allSettled([
    store.append("r", draft("m1 again", "c1")),
    store.append("r", withFile(3)),
  ]);
  assert(resend.status === "rejected" && resend.reason.code === "not_found", resend.status);
  assert(sent.status === "fulfilled" && sent.value.message.seq === 3, sent.status);
  assertEquals(await store.head("r"), 3, "stored once");
  await store.append("r", draft("m4")); // drops 3
  await eventually(() => discarded.length > 0, 5000, "the file of message 3");
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(discarded, ["f3"]);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore: a check waits out the commit in flight, so what that commit pushed out goes too", async () => {
  const kv = await Deno.openKv(":memory:");
  let openGate!: () => void;
  const gate = new Promise<void>((r) => openGate = r);
  let slowCommits = 0;
  // The check stops at its first read until the gate opens; the next commit takes 200 ms.
  const gated = new Proxy(kv, {
    get(target, prop) {
      if (prop === "get") {
        return async (key: Deno.KvKey) => {
          if (key[0] === "files_recorded") await gate;
          return await target.get(key);
        };
      }
      if (prop === "atomic") {
        return () => {
          const op = target.atomic();
          if (slowCommits > 0) {
            slowCommits--;
            const commit = op.commit.bind(op);
            op.commit = async () => {
              await new Promise((r) => setTimeout(r, 200));
              return await commit();
            };
          }
          return op;
        };
      }
      return Reflect.get(target, prop, target).bind(target);
    },
  });
  const unlimited = new KvMessageStore(kv);
  for (const n of [1, 2, 3]) await unlimited.append("r", draft(`m${n}`));
  const store = new KvMessageStore(gated, limited(1, []));
  await store.append("r", draft("m4")); // the room's check starts, and waits at the gate
  slowCommits = 1;
  const fifth = store.append("r", draft("m5")); // built before the room counts as checked
  await new Promise((r) => setTimeout(r, 50));
  openGate();
  await fifth;
  await store.retained();
  assertEquals((await store.list("r", { limit: 10 })).map((m) => m.body), ["m5"]);
  for (const s of [unlimited, store]) await s.close();
  kv.close();
});

Deno.test("KvMessageStore.purge() deletes a room's messages, files, cursors and client ids", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  // Message 1 is stored without a record, as by versions before records existed (the room's
  // check records it before dropping it).
  const unrecorded = new KvMessageStore(kv);
  await unrecorded.append("r", withFile(1));
  await unrecorded.close();
  // The sweep never comes by on its own: 1 to 3 are dropped with their records left behind.
  const store = new KvMessageStore(kv, limited(3, discarded, 1e9));
  for (const n of [2, 3, 4, 5]) await store.append("r", withFile(n));
  await store.append("r", draft("m6", "c6"));
  await store.retained();
  await store.append("other", withFile(9));
  await store.markRead("r", 1, 5);
  assertEquals((await store.list("r", { limit: 10 })).map((m) => m.seq), [4, 5, 6]);

  assertEquals(await store.purge("r"), 3);
  assertEquals(discarded.sort(), ["f1", "f2", "f3", "f4", "f5"]);
  assertEquals(await store.list("r", { limit: 10 }), []);
  assertEquals(await store.cursor("r", 1), 0);
  const left = await Array.fromAsync(kv.list({ prefix: [] }));
  assertEquals(
    left.map((e) => e.key).filter((k) =>
      // The head and the generation stay, so that the room's next life neither reuses a seq nor
      // takes a send admitted to this one.
      k[1] === "r" && k[0] !== "head" && k[0] !== "gen" && k[0] !== "files_recorded"
    ),
    [],
    "no message, record, cursor or client id of the room is left",
  );
  assertEquals(await store.purge("r"), 0);
  assertEquals(discarded.length, 5, "a second purge deletes nothing twice");

  // The room goes on where it stopped; the client id is free again; the other room is untouched.
  const again = await store.append("r", draft("m7", "c6"));
  assertEquals([again.message.seq, again.duplicate], [7, false]);
  assertEquals(await store.tail("r"), 7);
  assertEquals((await store.list("other", { limit: 10 })).map((m) => m.body), ["m9"]);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore.purge(): two purges and a sweep at once delete each file once", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const discarded: string[] = [];
    const a = new KvMessageStore(kvA, limited(3, discarded, 1e9));
    for (let n = 1; n <= 8; n++) await a.append("r", withFile(n));
    await a.retained();
    await a.append("r", withFile(9)); // 1 to 6 dropped, their records left for a sweep
    const b = new KvMessageStore(kvB, limited(3, discarded, 1e9));
    const [fromA, fromB] = await Promise.all([a.purge("r"), b.purge("r"), a.sweepFiles()]);
    assertEquals(fromA + fromB, 3, "7, 8 and 9, each counted by one purge");
    assertEquals(discarded.sort(), [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => `f${n}`));
    assertEquals(await b.list("r", { limit: 10 }), []);
    for (const store of [a, b]) await store.close();
  });
});

Deno.test("KvMessageStore.purge() refuses appends admitted before it, on every handle, and takes the ones after", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const a = new KvMessageStore(kvA);
    const b = new KvMessageStore(kvB);
    const admitted = { ...draft("admitted before"), generation: await b.generation("r") };
    assertEquals(admitted.generation, 0);
    // B holds the room's head and generation from its own commit; A deletes the room.
    assertEquals((await b.append("r", { ...admitted, body: "first" })).message.seq, 1);
    await a.purge("r");
    const refused = await b.append("r", admitted).then(() => null, (err) => err);
    assertEquals([refused?.code, refused?.message], ["room_deleted", "This room was deleted"]);
    assertEquals(await a.append("r", admitted).catch((err) => err.code), "room_deleted");
    // A refusal read the new generation; a send admitted from then on is stored, after seq 1.
    const after = { ...draft("admitted after"), generation: await b.generation("r") };
    assertEquals(after.generation, 1);
    assertEquals((await b.append("r", after)).message.seq, 2);
    assertEquals(await a.generation("r"), 1);
    assertEquals((await a.list("r", { limit: 10 })).map((m) => m.body), ["admitted after"]);
    // A draft without a generation (written by something that never sends to deleted rooms)
    // is not checked.
    assertEquals((await a.append("r", draft("unchecked"))).message.seq, 3);
    for (const store of [a, b]) await store.close();
  });
});

Deno.test("KvMessageStore.purge(): a client id of the room's deleted life, sent again while the purge deletes, is stored in the new life", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const a = new KvMessageStore(kvA);
    const b = new KvMessageStore(kvB);
    await Promise.all(range(1, 1500).map((i) => a.append("r", draft(`m${i}`))));
    assertEquals((await a.append("r", draft("old life", "x"))).message.seq, 1501);
    // Sent from the other handle as soon as the room's generation is raised, before the purge
    // reaches the client ids (it deletes the 1,501 messages first).
    let marked!: (resent: Promise<unknown>) => void;
    const resending = new Promise<Promise<unknown>>((r) => marked = r);
    const purged = a.purge("r", (generation) => {
      marked(
        b.append("r", { ...draft("new life", "x"), generation }).then(
          (r) => [r.message.seq, r.message.body, r.duplicate],
          (err) => err.code,
        ),
      );
    });
    const resent = await resending;
    assertEquals(await resent, [1502, "new life", false]);
    assertEquals(await purged, 1501);
    assertEquals((await a.list("r", { limit: 10 })).map((m) => m.body), ["new life"]);
    // Its client id is the new life's now: the next repeat is a duplicate of it.
    const again = await a.append("r", { ...draft("new life", "x"), generation: 1 });
    assertEquals([again.message.seq, again.duplicate], [1502, true]);
    for (const store of [a, b]) await store.close();
  });
});

/** `kv` whose listings (a purge's) wait until the returned `open` is called. */
function gatedListing(kv: Deno.Kv): { kv: Deno.Kv; open: () => void } {
  let open!: () => void;
  const gate = new Promise<void>((r) => open = r);
  const gated = kvWith(
    kv,
    "list",
    (list) =>
      ((selector: Deno.KvListSelector, options?: Deno.KvListOptions) =>
        (async function* () {
          await gate;
          yield* list(selector, options);
        })()) as unknown as Deno.Kv["list"],
  );
  return { kv: gated, open };
}

/**
 * Another handle's purge of `r` under way (generation raised, nothing deleted yet) while `b`,
 * which stored "c" there as seq 1, holds the room's head from before and reads client ids for a
 * while (one it checked to be new was found stored after a conflict, in room `o`).
 */
async function resendDuringPurge(
  kvA: Deno.Kv,
  kvB: Deno.Kv,
  resend: (b: KvMessageStore) => Promise<unknown>,
): Promise<{ answer: unknown; kept: string[]; commits: number }> {
  const { kv, open } = gatedListing(kvA);
  let commits = 0;
  const counted = kvWith(kvB, "atomic", (atomic) => () => {
    const op = atomic();
    const commit = op.commit.bind(op);
    op.commit = () => (commits++, commit());
    return op;
  });
  const a = new KvMessageStore(kv);
  const b = new KvMessageStore(counted);
  try {
    assertEquals((await b.append("r", draft("old life", "c"))).message.seq, 1);
    await b.append("o", draft("o1", "o"));
    await a.append("o", draft("o2"));
    assertEquals((await b.append("o", draft("o1 again", "o"))).duplicate, true);
    const purged = a.purge("r");
    await eventually(async () => (await a.generation("r", { fresh: true })) === 1);
    commits = 0;
    const answer = await resend(b).then(
      (r) => {
        const { message, duplicate } = r as AppendResult;
        return [message.seq, message.body, duplicate];
      },
      (err) => err.code,
    );
    open();
    await purged;
    const resendCommits = commits;
    return {
      answer,
      kept: (await a.list("r", { limit: 10 })).map((m) => m.body),
      commits: resendCommits,
    };
  } finally {
    open();
    for (const store of [a, b]) await store.close();
  }
}

Deno.test("KvMessageStore.purge(): a client id resent to the room's new life while the purge is under way elsewhere is stored, not answered with the deleted message", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const { answer, kept, commits } = await resendDuringPurge(
      kvA,
      kvB,
      (b) => b.append("r", { ...draft("new life", "c"), generation: 1 }),
    );
    assertEquals(answer, [2, "new life", false]);
    assertEquals(kept, ["new life"]);
    // The draft's newer generation has the held head read afresh: no commit is tried on it.
    assertEquals(commits, 1);
  });
});

Deno.test("KvMessageStore.purge(): a client id resent under the room's old generation while the purge is under way elsewhere is refused, not answered with the deleted message", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const { answer, kept } = await resendDuringPurge(
      kvA,
      kvB,
      (b) => b.append("r", { ...draft("old life", "c"), generation: 0 }),
    );
    assertEquals(answer, "room_deleted");
    assertEquals(kept, []);
  });
});

Deno.test("KvMessageStore.purge() deletes the files of kept messages stored without records, and stops at the head", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const unrecorded = new KvMessageStore(kv);
  for (const n of [1, 2]) await unrecorded.append("r", withFile(n));
  // The purge's listing waits for the gate, so a message can be committed after it read the head.
  let listing = false;
  let open!: () => void;
  const gate = new Promise<void>((r) => open = r);
  const gated = new Proxy(kv, {
    get(target, prop) {
      if (prop !== "list") return Reflect.get(target, prop, target).bind(target);
      return (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
        listing = true;
        return (async function* () {
          await gate;
          yield* target.list(selector, options);
        })();
      };
    },
  });
  // Without a limit no check runs: 1 and 2 are still without records when the purge reads them.
  const store = new KvMessageStore(gated, limited(0, discarded));
  const purging = store.purge("r");
  await eventually(() => listing, 5000, "the purge's listing");
  assertEquals((await unrecorded.append("r", withFile(3))).message.seq, 3);
  open();
  assertEquals(await purging, 2);
  assertEquals(discarded.sort(), ["f1", "f2"]);
  assertEquals((await store.list("r", { limit: 10 })).map((m) => m.body), ["m3"]);
  for (const s of [unrecorded, store]) await s.close();
  kv.close();
});

/** The KV handle, whose commits fail with "disk full" whenever `fails()` says so. */
function failingCommits(kv: Deno.Kv, fails: () => boolean): Deno.Kv {
  return new Proxy(kv, {
    get(target, prop) {
      if (prop !== "atomic") return Reflect.get(target, prop, target).bind(target);
      return () => {
        const op = target.atomic();
        const commit = op.commit.bind(op);
        op.commit = () => fails() ? Promise.reject(new Error("disk full")) : commit();
        return op;
      };
    },
  });
}

Deno.test("KvMessageStore.purge() cut short by a failed commit is finished later, up to the same head", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  // Commits past `commitsLeft` fail, as on a full disk.
  let commitsLeft = Infinity;
  const failing = failingCommits(kv, () => commitsLeft-- <= 0);
  const store = new KvMessageStore(failing, { ...limited(0, discarded), purgeRetryMs: 1e9 });
  for (let n = 1; n <= 50; n++) await store.append("r", withFile(n));
  await store.markRead("r", 8, 10);
  commitsLeft = 2; // the mark, then the first 40 messages
  const failed = await store.purge("r").then(() => "purged", (e) => String(e));
  assertEquals(failed, "Error: disk full");
  commitsLeft = Infinity;
  assertEquals(discarded.length, 40);
  assertEquals((await store.list("r", { limit: 100 })).length, 10);
  // Sent and read after the deletion: the message, its client id and the cursor stay.
  await store.append("r", draft("after", "c-after"));
  await store.markRead("r", 7, 51);

  await store.resumePurges();
  assertEquals(discarded.sort(), Array.from({ length: 50 }, (_, i) => `f${i + 1}`).sort());
  assertEquals((await store.list("r", { limit: 100 })).map((m) => m.body), ["after"]);
  assertEquals((await Array.fromAsync(kv.list({ prefix: ["purging"] }))).length, 0);
  assertEquals([await store.cursor("r", 7), await store.cursor("r", 8)], [51, 0]);
  assertEquals((await store.append("r", draft("again", "c-after"))).duplicate, true);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore.purge() that failed before storing its mark is tried again by the store", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  let failing = false;
  const flaky = failingCommits(kv, () => failing);
  const store = new KvMessageStore(flaky, { ...limited(0, discarded), purgeRetryMs: 20 });
  for (let n = 1; n <= 3; n++) await store.append("r", withFile(n));
  failing = true;
  assertEquals(await store.purge("r").then(() => "purged", (e) => String(e)), "Error: disk full");
  failing = false;
  await eventually(() => discarded.length === 3, 5000, "the retried purge");
  assertEquals(await store.list("r", { limit: 10 }), []);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore: files of deleted messages that a crash left undeleted go at the next start", async () => {
  const path = await Deno.makeTempFile({ suffix: ".kv" });
  const kv = await Deno.openKv(path);
  // A server that fails (dies) as it deletes files, after its commit deleted their messages.
  let attempts = 0;
  const failing = new KvMessageStore(kv, {
    historyLimit: 1,
    fileSweepMs: 10,
    purgeRetryMs: 1e9,
    discard: () => {
      attempts++;
      return Promise.reject(new Error("killed"));
    },
  });
  // Retention: message 1 is dropped by message 2, and its files' deletion fails.
  await failing.append("kept", withFile(1));
  await failing.append("kept", withFile(2));
  await eventually(() => attempts === 1, 5000, "retention's deletion");
  // A room deletion: its messages go, its files' deletion fails.
  await failing.append("gone", withFile(3));
  await failing.purge("gone").catch(() => {});
  assertEquals(attempts, 2);
  assertEquals(await failing.list("gone", { limit: 10 }), []);
  await failing.close();
  kv.close();

  const discarded: string[] = [];
  const restarted = await Deno.openKv(path);
  const store = new KvMessageStore(restarted, limited(1, discarded));
  await store.finishFileDeletions();
  assertEquals(discarded.sort(), ["f1", "f3"]);
  // Said once: the next start finds nothing left to delete.
  await store.finishFileDeletions();
  assertEquals(discarded.length, 2);
  await store.close();
  restarted.close();
  await Deno.remove(path);
});

Deno.test("KvMessageStore: a send's files are named until its commit; a sweep deletes those a crash left, once, and only old ones", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const store = new KvMessageStore(kv, limited(0, discarded));
  const pending = () => Array.fromAsync(kv.list({ prefix: ["files_pending"] }));
  // Committed: the commit deletes the entry with the message.
  await store.note("sent", [file("f1")]);
  await store.append("r", { ...withFile(1), pendingFiles: "sent" });
  assertEquals(await pending(), []);
  // A send a crash cut short: named, never committed. Too recent for the sweep, then taken.
  await store.note("cut", [file("f2"), file("f3")]);
  await store.sweepPendingFiles();
  assertEquals(discarded, []);
  await store.sweepPendingFiles(0);
  assertEquals(discarded, ["f2", "f3"]);
  assertEquals(await pending(), []);
  await store.sweepPendingFiles(0);
  assertEquals(discarded.length, 2, "deleted once");
  // Forgotten (a duplicate, or files discarded with a failure): nothing for the sweep.
  await store.note("dup", [file("f4")]);
  await store.forget("dup");
  await store.sweepPendingFiles(0);
  assertEquals(discarded.length, 2);
  await store.close();
  kv.close();
});

Deno.test("KvMessageStore: a deletion note is taken back by its own stamp only while no other mark came after it, and by a creation always", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  try {
    const alone = await store.markDeleting("a");
    assert(alone !== null);
    await store.unmarkDeleting("a", alone);
    assertEquals(await store.deleting("a"), false);
    // Two deletions at once: the first's stamp no longer names the note, the second's is null.
    const first = await store.markDeleting("b");
    const second = await store.markDeleting("b");
    assertEquals(second, null);
    await store.unmarkDeleting("b", first);
    await store.unmarkDeleting("b", second);
    assertEquals(await store.deleting("b"), true);
    await store.unmarkDeleting("b");
    assertEquals(await store.deleting("b"), false);
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test("KvMessageStore: a client id is recognised for 24 hours (the typed client retries for 23)", async () => {
  const kv = await Deno.openKv(":memory:");
  const kept: (number | undefined)[] = [];
  const recorded = kvWith(kv, "atomic", (atomic) => () => {
    const op = atomic();
    const set = op.set.bind(op);
    op.set = (key, value, options) => {
      if (key[0] === KV_KEYS.idempotency("r", "1", "c")[0]) kept.push(options?.expireIn);
      return set(key, value, options);
    };
    return op;
  });
  const store = new KvMessageStore(recorded);
  try {
    await store.append("r", draft("once", "c1"));
    await store.append("r", draft("twice", "c2"));
    assertEquals(kept, [24 * 3600_000, 24 * 3600_000]);
    assertEquals((await store.append("r", draft("once again", "c1"))).message.body, "once");
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test("KvMessageStore: a system message's client id is not a user's, even one whose id is \"system\"; a user's is kept as before", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const system = (body: string): MessageDraft => ({
    sender: null,
    body,
    attachments: [],
    clientId: "n",
  });
  const user = (body: string): MessageDraft => ({
    sender: { id: "system", username: "mallory" },
    body,
    attachments: [],
    clientId: "n",
  });
  try {
    assertEquals((await store.append("r", user("fake notice"))).duplicate, false);
    const notice = await store.append("r", system("notice"));
    assertEquals([notice.duplicate, notice.message.sender], [false, null]);
    assertEquals((await store.append("r", system("notice again"))).message.seq, notice.message.seq);
    assertEquals((await store.append("r", user("fake again"))).message.body, "fake notice");
    // Users' ids keep the layout they were stored under before, so a resend after an upgrade is
    // still recognised within the day.
    assertEquals((await kv.get(["idem", "r", "system", "n"])).value, 1);
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test('KvMessageStore: a notice\'s client id kept under the sender "system" (older releases) is recognised, in a batch too, unless its message is the user "system"\'s or gone; a user\'s send reads no such key', async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const notice = (clientId: string, body = "notice"): MessageDraft => ({
    sender: null,
    body,
    attachments: [],
    clientId,
  });
  const read: Deno.KvKey[] = [];
  const getMany = kv.getMany.bind(kv);
  kv.getMany = ((keys: Deno.KvKey[], options?: { consistency?: Deno.KvConsistencyLevel }) => {
    read.push(...keys);
    return getMany(keys, options);
  }) as typeof kv.getMany;
  const oldKeyRead = () => read.some((k) => k[0] === "idem" && k[2] === "system");
  try {
    // As older releases stored a notice "a": its message and its client id under "system".
    const a = (await store.append("r", notice("x"))).message;
    await kv.set(KV_KEYS.message("r", a.seq), { ...a, clientId: "a" });
    await kv.set(["idem", "r", "system", "a"], a.seq);
    // The user "system"'s message "b", and a notice "c" whose message retention dropped.
    const b = (await store.append("r", {
      sender: { id: "system", username: "mallory" },
      body: "fake",
      attachments: [],
      clientId: "b",
    })).message;
    await kv.set(["idem", "r", "system", "c"], 99);
    read.length = 0;
    const [again, inBatch] = await Promise.all([
      store.append("r", notice("a", "again")),
      store.append("r", notice("a", "again")),
    ]);
    assertEquals([again.duplicate, again.message.seq, inBatch.message.seq], [true, a.seq, a.seq]);
    assert(oldKeyRead());
    const own = await store.append("r", notice("b"));
    assertEquals([own.duplicate, own.message.seq > b.seq], [false, true]);
    assertEquals((await store.append("r", notice("c"))).duplicate, false);
    read.length = 0;
    await store.append("r", { sender: { id: "5", username: "u" }, body: "hi", attachments: [] });
    await store.append("r", {
      sender: { id: "system", username: "mallory" },
      body: "hi",
      attachments: [],
      clientId: "d",
    });
    // Only the user "system"'s own key, if not checked by the commit instead.
    assertEquals(read.filter((k) => k[0] === "idem" && k[3] !== "d"), []);
    assert(read.filter((k) => k[0] === "idem").length <= 1);
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test("KvMessageStore: each message of a room is created later than the one before, in one commit and after a writer whose clock is ahead", async () => {
  const kv = await Deno.openKv(":memory:");
  const ahead = new KvMessageStore(kv);
  const behind = new KvMessageStore(kv);
  const realNow = Date.now;
  try {
    const batch = await Promise.all(
      Array.from({ length: 20 }, (_, i) => ahead.append("r", draft(`m${i}`))),
    );
    // A server whose clock is ten seconds behind writes next.
    Date.now = () => realNow() - 10_000;
    const later = await behind.append("r", draft("later"));
    Date.now = realNow;
    const times = [...batch, later].map((r) => Date.parse(r.message.createdAt));
    times.forEach((t, i) => i > 0 && assert(t > times[i - 1], `message ${i + 1}: ${t}`));
    assertEquals(
      (await behind.list("r", { after: 0, limit: 50 })).map((m) => m.createdAt),
      [...batch, later].map((r) => r.message.createdAt),
    );
  } finally {
    Date.now = realNow;
    await ahead.close();
    await behind.close();
    kv.close();
  }
});

Deno.test("KvMessageStore: a commit retried after another writer's reads the head message only of the rooms that moved", async () => {
  const kv = await Deno.openKv(":memory:");
  let messageReads = 0;
  const counted = kvWith(kv, "getMany", (getMany) =>
    ((keys: Deno.KvKey[], options) => {
      messageReads += keys.filter((k) => k[0] === "msg").length;
      return getMany(keys, options);
    }) as Deno.Kv["getMany"]);
  const a = new KvMessageStore(counted);
  const b = new KvMessageStore(kv);
  const rooms = Array.from({ length: 10 }, (_, i) => `r${i}`);
  try {
    await Promise.all(rooms.map((r) => a.append(r, draft("first"))));
    // Another writer moves one room: a's next commit over all ten fails its check, and retries.
    await b.append("r0", draft("other"));
    messageReads = 0;
    const results = await Promise.all(rooms.map((r) => a.append(r, draft("second"))));
    assertEquals(results.map((r) => r.message.seq), [3, ...rooms.slice(1).map(() => 2)]);
    assertEquals(messageReads, 1);
  } finally {
    await a.close();
    await b.close();
    kv.close();
  }
});

Deno.test("KvMessageStore.generation(): a room this store committed to is served from the commit, not read from KV, and a purge elsewhere is still found", async () => {
  await withSharedKv(async (kvA, kvB) => {
    let reads = 0;
    const counted = kvWith(kvB, "get", (get) =>
      ((...args: Parameters<typeof get>) => {
        if (args[0][0] === "gen") reads++;
        return get(...args);
      }) as typeof get);
    const a = new KvMessageStore(kvA);
    const b = new KvMessageStore(counted);
    // A send: its generation read (one), then its commit, which reads the head and generation.
    const first = { ...draft("first"), generation: await b.generation("r") };
    assertEquals(reads, 1);
    assertEquals((await b.append("r", first)).message.seq, 1);
    // Past the reuse window a send would read again; the commit's check stands in for it.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals((await b.append("r", draft("second"))).message.seq, 2);
    assertEquals(await b.generation("r"), 0);
    assertEquals(reads, 1);
    // Another handle deletes the room: the next commit's check fails, and the retry reads the
    // new generation, which sends then take.
    await a.purge("r");
    const stale = await b.append("r", first).then(() => null, (err) => err.code);
    assertEquals(stale, "room_deleted");
    assertEquals(await b.generation("r"), 1);
    assertEquals(await b.generation("r", { fresh: true }), 1);
    for (const store of [a, b]) await store.close();
  });
});

/** The expiries Deno KV's SQLite file holds for the messages and file records `sqliteKv` wrote. */
async function keptExpiries(sqliteKv?: boolean): Promise<number[]> {
  const path = await Deno.makeTempFile({ suffix: ".kv" });
  const kv = await Deno.openKv(path);
  const store = new KvMessageStore(kv, { discard: () => Promise.resolve(), sqliteKv });
  await store.append("r", { ...draft("with a file"), attachments: [file("a.txt")] });
  await store.append("r", draft("text", "c1"));
  kv.close();
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    const rows = db.prepare("select hex(k) as k, expiration_ms as at from kv").all() as {
      k: string;
      at: number;
    }[];
    // A key's first part, as KV encodes a string: 0x02, its UTF-8, 0x00.
    const hex = (part: string) =>
      "02" + [...new TextEncoder().encode(part)].map((b) =>
        b.toString(16).padStart(2, "0")
      ).join("").toUpperCase() + "00";
    return rows.filter((r) => r.k.startsWith(hex("msg")) || r.k.startsWith(hex("files")))
      .map((r) => r.at);
  } finally {
    db.close();
    await Deno.remove(path);
  }
}

Deno.test("KvMessageStore.append() writes messages and file records with an expiry no one will reach, so KV's expiry index takes them at its end", async () => {
  const expiries = await keptExpiries();
  assertEquals(expiries.length, 3);
  const centuries = Date.now() + 900 * 365 * 24 * 60 * 60 * 1000;
  for (const at of expiries) assert(at > centuries, `expires at ${at}`);
});

Deno.test("KvMessageStore.append() on a KV that is not Deno's SQLite writes messages and file records without an expiry", async () => {
  assertEquals(await keptExpiries(false), [-1, -1, -1]);
});

/** Every read cursor key as `room/user`, and every ["read_room"] entry the same way, sorted. */
async function readKeys(kv: Deno.Kv): Promise<{ cursors: string[]; listed: string[] }> {
  const cursors = (await Array.fromAsync(kv.list({ prefix: ["read"] })))
    .map((e) => `${String(e.key[1])}/${String(e.key[2])}`).sort();
  const listed = (await Array.fromAsync(kv.list({ prefix: ["read_room"] })))
    .map((e) => `${String(e.key[2])}/${String(e.key[1])}`).sort();
  return { cursors, listed };
}

/** Stores cursors (`room/user`) as versions before the ["read_room"] list did: without it. */
async function olderCursors(kv: Deno.Kv, cursors: string[]): Promise<void> {
  for (const cursor of cursors) {
    const [room, user] = cursor.split("/");
    await kv.set(KV_KEYS.read(room, user), new Deno.KvU64(1n));
  }
}

Deno.test("KvMessageStore.indexReadCursors() lists the cursors an older version stored, deletes those of users deleted meanwhile, and runs once per KV", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  try {
    await olderCursors(kv, ["a/1", "a/2", "b/2", "b/3", "c/3"]);
    assertEquals(await store.markRead("c", 1, 1), 1);
    // Deleted before the listing reached their cursors: forgetReader found none of them.
    await store.forgetReader(2);
    // Taken out of room b only.
    await store.forgetReader(3, ["c"]);
    await kv.set(KV_KEYS.readForgotten("3", "b"), true);
    await store.indexReadCursors();
    assertEquals(await readKeys(kv), { cursors: ["a/1", "c/1"], listed: ["a/1", "c/1"] });
    // Once: a cursor without its entry after that is left as it is.
    await olderCursors(kv, ["d/4"]);
    await store.indexReadCursors();
    assertEquals((await readKeys(kv)).listed, ["a/1", "c/1"]);
    assertEquals((await kv.get(KV_KEYS.readRoomsListing)).value, null);
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test("KvMessageStore.indexReadCursors() resumes where a run cut short stopped; stores running it together list every cursor", async () => {
  const kv = await Deno.openKv(":memory:");
  const users = Array.from({ length: 120 }, (_, i) => String(i).padStart(3, "0"));
  await olderCursors(kv, users.map((user) => `r/${user}`));
  // A run that was killed after the first 50.
  await kv.set(KV_KEYS.readRoomsListing, KV_KEYS.read("r", "049"));
  const stores = [new KvMessageStore(kv), new KvMessageStore(kv)];
  try {
    await Promise.all(stores.map((s) => s.indexReadCursors()));
    assertEquals((await readKeys(kv)).listed, users.slice(49).map((user) => `r/${user}`));
    assertEquals((await kv.get(KV_KEYS.readRoomsListed)).value, true);
  } finally {
    await Promise.all(stores.map((s) => s.close()));
    kv.close();
  }
});

Deno.test("KvMessageStore.indexReadCursors() marks nothing done while a server of an older version runs, walks again meanwhile, and deletes a mark set before one came", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv, { indexAgainMs: 50 });
  let older = true;
  store.olderWriters = () => older;
  try {
    await olderCursors(kv, ["a/1"]);
    await store.indexReadCursors();
    assertEquals((await readKeys(kv)).listed, ["a/1"]);
    assertEquals((await kv.get(KV_KEYS.readRoomsListed)).versionstamp, null);
    // Stored by the older server after that walk; user 3 deleted before the next one.
    await olderCursors(kv, ["b/2", "b/3"]);
    await store.forgetReader(3);
    await eventually(
      async () => (await readKeys(kv)).cursors.join() === "a/1,b/2",
      5000,
      "a later walk",
    );
    assertEquals((await readKeys(kv)).listed, ["a/1", "b/2"]);
    // Gone: the next call marks it done, and no walk follows.
    older = false;
    await store.indexReadCursors();
    assertEquals((await kv.get(KV_KEYS.readRoomsListed)).value, true);
    // Back (a rollback): the mark goes, and its cursors are walked again.
    older = true;
    await olderCursors(kv, ["c/4"]);
    await store.indexReadCursors();
    assertEquals((await kv.get(KV_KEYS.readRoomsListed)).versionstamp, null);
    assertEquals((await readKeys(kv)).listed, ["a/1", "b/2", "c/4"]);
  } finally {
    await store.close();
    kv.close();
  }
});

Deno.test("KvMessageStore: a room whose head a restored backup raised by a million keeps no more than its limit after each commit once checked, its restored messages going with their files; a room without a hole is checked once", async () => {
  const kv = await Deno.openKv(":memory:");
  const discarded: string[] = [];
  const before = new KvMessageStore(kv, limited(5, discarded));
  for (let i = 1; i <= 3; i++) await before.append("r", withFile(i));
  for (let i = 1; i <= 3; i++) await before.append("plain", draft(`p${i}`));
  await before.retained();
  await before.close();
  // What scripts/backup.ts does to the copy's heads.
  await kv.set(KV_KEYS.head("r"), 1_000_003);
  const store = new KvMessageStore(kv, limited(5, discarded));
  const reads = { head: 0 };
  const head = store.head.bind(store);
  store.head = (room) => {
    if (room === "plain") reads.head++;
    return head(room);
  };
  const kept = async () => (await store.list("r", { limit: 100 })).map((m) => m.body);
  const expected = [
    ["m1", "m2", "m3", "n1"],
    ["m1", "m2", "m3", "n1", "n2"],
    ["m2", "m3", "n1", "n2", "n3"],
    ["m3", "n1", "n2", "n3", "n4"],
    ["n1", "n2", "n3", "n4", "n5"],
    ["n2", "n3", "n4", "n5", "n6"],
  ];
  for (const [i, want] of expected.entries()) {
    await store.append("r", draft(`n${i + 1}`));
    // Up to its limit: a push-out would read its head again for the sweep of its files.
    if (i < 2) await store.append("plain", draft(`q${i + 1}`));
    await store.retained();
    assertEquals(await kept(), want);
  }
  await eventually(() => discarded.length === 3);
  assertEquals(discarded.sort(), ["f1", "f2", "f3"]);
  // One check of the room with no hole (its one read of the head), as before.
  assertEquals(reads.head, 1);
  await store.close();
  kv.close();
});

/** A full room of `limit` messages (with a file each if `files`) whose head a backup then raised. */
async function restoredRoom(limit: number, files: boolean) {
  const kv = await Deno.openKv(":memory:");
  const before = new KvMessageStore(kv, limited(limit, []));
  for (let i = 0; i < limit; i += 50) {
    await Promise.all(
      range(i + 1, Math.min(i + 50, limit)).map((n) =>
        before.append("r", files ? withFile(n) : draft(`m${n}`))
      ),
    );
  }
  await before.retained();
  await before.close();
  const head = (await kv.get<number>(KV_KEYS.head("r"))).value!;
  // What scripts/backup.ts does to the copy's heads.
  await kv.set(KV_KEYS.head("r"), head + 1_000_000);
  return kv;
}

Deno.test("KvMessageStore: in a room across a restored backup's jump, each commit's check lists a few messages, not its limit", async () => {
  const LIMIT = 500;
  const kv = await restoredRoom(LIMIT, false);
  let listed = 0;
  const list = kv.list.bind(kv);
  kv.list = <T>(selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
    const entries = list<T>(selector, options);
    const next = entries.next.bind(entries);
    entries.next = async () => {
      const r = await next();
      if (!r.done) listed++;
      return r;
    };
    return entries;
  };
  const store = new KvMessageStore(kv, limited(LIMIT, []));
  // The first check after the start finds the hole and reads what it keeps below it.
  await store.append("r", draft("n0"));
  await store.retained();
  const start = listed;
  for (let i = 1; i <= 20; i++) {
    await store.append("r", draft(`n${i}`));
    await store.retained();
  }
  const perCommit = (listed - start) / 20;
  const kept = await store.list("r", { limit: 1000 });
  assertEquals(kept.length, LIMIT);
  assertEquals(kept[0].body, "m22");
  await store.close();
  kv.close();
  // Each commit adds one message and drops one: the 479 kept below the jump are not read again.
  assert(perCommit < 10, `${perCommit} entries listed per commit`);
});

Deno.test("KvMessageStore: in a room across a restored backup's jump, a file sweep tries no claim of a kept message's record", async () => {
  const LIMIT = 300;
  const kv = await restoredRoom(LIMIT, true);
  const discarded: string[] = [];
  const store = new KvMessageStore(kv, limited(LIMIT, discarded));
  await store.append("r", draft("n0"));
  await store.retained();
  await eventually(() => discarded.length === 1);
  let refused = 0;
  const atomic = kv.atomic.bind(kv);
  kv.atomic = () => {
    const op = atomic();
    const commit = op.commit.bind(op);
    op.commit = async () => {
      const res = await commit();
      if (!res.ok) refused++;
      return res;
    };
    return op;
  };
  for (let i = 1; i <= 5; i++) {
    await store.append("r", draft(`n${i}`));
    await store.retained();
    // The sweep (10 ms after the drop) deletes the dropped message's file.
    await eventually(() => discarded.length === i + 1);
  }
  assertEquals(discarded, range(1, 6).map((n) => `f${n}`));
  await store.close();
  kv.close();
  assertEquals(refused, 0);
});

Deno.test("KvMessageStore: two stores taking turns in a room across a restored backup's jump drop what each other's checks left, no more", async () => {
  await withSharedKv(async (kvA, kvB) => {
    const before = new KvMessageStore(kvA, limited(6, []));
    for (let i = 1; i <= 6; i++) await before.append("r", draft(`m${i}`));
    await before.retained();
    await before.close();
    await kvA.set(KV_KEYS.head("r"), 1_000_006);
    const stores = [
      new KvMessageStore(kvA, limited(6, [])),
      new KvMessageStore(kvB, limited(6, [])),
    ];
    const bodies = [...range(1, 6).map((n) => `m${n}`), ...range(1, 8).map((n) => `n${n}`)];
    for (let i = 1; i <= 8; i++) {
      // Each store's last check is one commit behind the other's drop.
      const store = stores[i % 2];
      await store.append("r", draft(`n${i}`));
      await store.retained();
      const kept = (await store.list("r", { limit: 100 })).map((m) => m.body);
      assertEquals(kept, bodies.slice(i, i + 6));
    }
    for (const store of stores) await store.close();
  });
});
