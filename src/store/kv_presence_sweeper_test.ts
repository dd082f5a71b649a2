/** The sweep of every room: a dead server's entries go, one server sweeps for all, none for ever. */

import { assertEquals, assertRejects } from "../../tests/assert.ts";
import { KvPresenceStore, type Liveness, type PresenceLeases } from "./kv_presence_store.ts";
import { KvPresenceSweeper, type PresencePages } from "./kv_presence_sweeper.ts";

const user = (id: string) => ({ id, username: `user${id}` });
const SERVERS = ["A", "B", "C"];

/**
 * Leases where `alive` says who is alive, `lapsed` whose registry entry is still read though
 * lapsed, and every other server's entry is gone; checks are on `["lease", id]` keys of the
 * same KV.
 */
function leases(
  kv: Deno.Kv,
  id: string,
  alive: Set<string>,
  lapsed = new Set<string>(),
): PresenceLeases {
  return {
    id,
    async live(): Promise<Liveness> {
      const read = new Map<string, Deno.KvEntryMaybe<unknown>>();
      for (const server of SERVERS) read.set(server, await kv.get(["lease", server]));
      return {
        ids: new Set([id, ...alive]),
        seen: new Set([id, ...alive, ...lapsed]),
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

/** A server's store and sweeper; `sweeps` counts the pages it read, `gone` what it announced. */
function server(
  kv: Deno.Kv,
  id: string,
  alive: Set<string>,
  pageSize = 2,
  lapsed = new Set<string>(),
) {
  const store = new KvPresenceStore(kv, leases(kv, id, alive, lapsed));
  const gone: string[] = [];
  const counted = { pages: 0, hook: async () => {} };
  const pages: PresencePages = {
    async sweepPage(cursor, limit) {
      counted.pages++;
      const page = await store.sweepPage(cursor, limit);
      await counted.hook();
      return page;
    },
  };
  const sweeper = new KvPresenceSweeper(
    kv,
    pages,
    leases(kv, id, alive, lapsed),
    (room, u) => gone.push(`${room}:${u.id}`),
    { pageSize },
  );
  return { store, sweeper, gone, counted };
}

const count = async (kv: Deno.Kv) =>
  (await Array.fromAsync(kv.list({ prefix: ["presence"] }))).length;

Deno.test("presence sweeper: a dead server's entries go from every room, a page at a time; a live one's stay", async () => {
  await withKv(async (kv) => {
    const alive = new Set(["A", "B"]);
    const a = server(kv, "A", alive);
    const b = server(kv, "B", alive);
    for (let i = 0; i < 7; i++) await b.store.enter(`room:${i}`, user(`b${i}`), `b${i}`);
    for (let i = 0; i < 3; i++) await a.store.enter(`room:${i}`, user(`a${i}`), `a${i}`);
    await b.store.enter("room:0", user("a0"), "b-of-a0");
    await a.sweeper.round(); // This server's start: B is alive, nothing goes.
    assertEquals(await count(kv), 11);
    alive.delete("B");
    await a.sweeper.round();
    assertEquals(await count(kv), 3);
    // a0 still has A's connection in room 0: not announced.
    assertEquals(a.gone.sort(), [0, 1, 2, 3, 4, 5, 6].map((i) => `room:${i}:b${i}`));
    assertEquals(a.counted.pages > 2, true, `${a.counted.pages} pages`);
    const pages = a.counted.pages;
    await a.sweeper.round();
    assertEquals(a.counted.pages, pages, "nothing new died: no sweep");
  });
});

/** Servers A, C and B (in that order) on `kv`, all alive, B with five users in five rooms. */
async function threeServers(kv: Deno.Kv, pageSize?: number) {
  const alive = new Set(["A", "B", "C"]);
  const a = server(kv, "A", alive, pageSize);
  const c = server(kv, "C", alive, pageSize);
  const b = server(kv, "B", alive);
  for (let i = 0; i < 5; i++) await b.store.enter(`room:${i}`, user(`b${i}`), `b${i}`);
  return { alive, a, b, c };
}

Deno.test("presence sweeper: of two servers that see a death, one sweeps for both", async () => {
  await withKv(async (kv) => {
    const { alive, a, c } = await threeServers(kv);
    await a.sweeper.round();
    await c.sweeper.round();
    await a.sweeper.round();
    await c.sweeper.round();
    const before = (await kv.get<{ round: number }>(["presence_sweep"])).value!.round;
    alive.delete("B");
    await Promise.all([a.sweeper.round(), c.sweeper.round()]);
    await Promise.all([a.sweeper.round(), c.sweeper.round()]);
    await Promise.all([a.sweeper.round(), c.sweeper.round()]);
    assertEquals(await count(kv), 0);
    assertEquals((await kv.get<{ round: number }>(["presence_sweep"])).value!.round, before + 1);
    assertEquals([...a.gone, ...c.gone].length, 5, "each user announced once");
  });
});

Deno.test("presence sweeper: a sweep that began while the dead server was alive is followed by another", async () => {
  await withKv(async (kv) => {
    const { alive, a, c } = await threeServers(kv, 100);
    await c.sweeper.round();
    await c.sweeper.round();
    // B dies once A's sweep (for its start) has read every page with B alive; C sees it then.
    a.counted.hook = async () => {
      alive.delete("B");
      await c.sweeper.round();
    };
    await a.sweeper.round();
    a.counted.hook = async () => {};
    assertEquals(await count(kv), 5, "A's sweep read B alive");
    await c.sweeper.round();
    assertEquals(await count(kv), 0);
  });
});

Deno.test("presence sweeper: a sweeper that died mid-sweep is followed by another", async () => {
  await withKv(async (kv) => {
    const { alive, a, c } = await threeServers(kv);
    await c.sweeper.round();
    await c.sweeper.round();
    alive.delete("B");
    a.counted.hook = () => Promise.reject(new Error("killed"));
    await assertRejects(() => a.sweeper.round());
    await c.sweeper.round();
    assertEquals(await count(kv), 3, "A's lease holds while A lives");
    alive.delete("A");
    await c.sweeper.round();
    assertEquals(await count(kv), 0);
  });
});

Deno.test("presence: a page sweep keeps a server that renews meanwhile, and retries when KV expires a dead lease under its check", async () => {
  await withKv(async (kv) => {
    await kv.set(["lease", "B"], 1);
    const alive = new Set(["A"]);
    const b = new KvPresenceStore(kv, leases(kv, "B", alive));
    await b.enter("room:x", user("1"), "b1");
    let change = async () => {
      await kv.set(["lease", "B"], 2);
      alive.add("B");
    };
    const base = leases(kv, "A", alive);
    const a = new KvPresenceStore(kv, {
      id: "A",
      async live() {
        const snapshot = await base.live();
        await change();
        change = async () => {};
        return snapshot;
      },
    });
    assertEquals((await a.sweepPage()).gone, []);
    assertEquals(await count(kv), 1, "B renewed: its entry stays");

    alive.delete("B");
    change = () => kv.delete(["lease", "B"]);
    assertEquals((await a.sweepPage()).gone, [{ room: "room:x", user: user("1") }]);
    assertEquals(await count(kv), 0);
  });
});

Deno.test("presence sweeper: a server read as lapsed whose registry entry is still there keeps its entries (a clock ahead of its own, a pause it has not noticed); they go once the entry does", async () => {
  await withKv(async (kv) => {
    const alive = new Set(["A", "B"]);
    const lapsed = new Set<string>();
    const a = server(kv, "A", alive, 2, lapsed);
    const b = server(kv, "B", alive);
    for (let i = 0; i < 3; i++) await b.store.enter(`room:${i}`, user(`b${i}`), `b${i}`);
    await a.sweeper.round();
    alive.delete("B");
    lapsed.add("B");
    await a.sweeper.round();
    assertEquals(await count(kv), 3, "B's registry entry is still there");
    assertEquals(a.gone, []);
    lapsed.delete("B");
    await a.sweeper.round();
    assertEquals(await count(kv), 0);
  });
});
