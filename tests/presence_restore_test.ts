/**
 * A server whose registry entry lapsed (others may have swept its presence entries) writes its
 * users back: also when KV refuses the first tries, and in a few commits however many they are.
 */

import type { PresenceStore } from "../src/core/types.ts";
import type { UserPresence } from "../src/core/chat_service.ts";
import { MemoryBroker } from "../src/broker/memory_broker.ts";
import { assert, assertEquals, delay, eventually } from "./assert.ts";
import {
  joinRoom,
  passPresence,
  peersFound,
  startTestServer,
  type TestClient,
  type TestServer,
} from "./helpers.ts";

type Entry = Deno.KvEntry<{ instance: string; user: { username: string } }>;

/**
 * Servers on one fresh DATA_DIR (each with a directory and a broker of its own, as processes
 * on one KV volume have), with a short PRESENCE_TTL_SECONDS; `presence` wraps the first one's
 * store. `kv` is the KV file, opened for the test. All are closed and the data removed after.
 */
async function withServers(
  count: number,
  presence: ((store: PresenceStore) => PresenceStore) | undefined,
  fn: (t: { servers: TestServer[]; kv: Deno.Kv; clients: TestClient[] }) => Promise<void>,
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "presence-restore-" });
  const servers: TestServer[] = [];
  const clients: TestClient[] = [];
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  try {
    for (let i = 0; i < count; i++) {
      servers.push(
        await startTestServer(
          { DATA_DIR: dataDir, DATABASE_URL: `${dataDir}/${i}.sqlite3`, PRESENCE_TTL_SECONDS: "2" },
          { broker: new MemoryBroker(), ...(i === 0 && presence ? { presence } : {}) },
        ),
      );
    }
    await peersFound(servers);
    await fn({ servers, kv, clients });
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    for (const s of servers) await s.close().catch(() => {});
    kv.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

/** Opens a socket of `user` in `room` on `server`; `users` is who its room list named. */
async function join(
  clients: TestClient[],
  server: TestServer,
  room: string,
  user: string,
): Promise<{ client: TestClient; users: string[] }> {
  const joined = await joinRoom(server.url, room, user);
  clients.push(joined.client);
  return joined;
}

const presenceEntries = (kv: Deno.Kv): Promise<Entry[]> =>
  Array.fromAsync(kv.list({ prefix: ["presence"] }) as Deno.KvListIterator<Entry["value"]>);

Deno.test("presence restore: a restore after a lapse that KV refuses at first is tried again, and the users are shown to another server's clients without reconnecting", async () => {
  let refusing = false;
  let refused = 0;
  // The store's enters fail while `refusing`, as on a full volume; the rest passes through.
  const presence = (inner: PresenceStore): PresenceStore & UserPresence => {
    const store = inner as PresenceStore & UserPresence;
    return {
      ...passPresence(store),
      enter(room, user, connId, options) {
        if (!refusing) return store.enter(room, user, connId, options);
        refused++;
        return Promise.reject(new TypeError("database or disk is full"));
      },
      isPresent: (room, user) => store.isPresent!(room, user),
    };
  };
  await withServers(2, presence, async ({ servers: [a, b], kv, clients }) => {
    await join(clients, a, "shared", "alice");
    refusing = true;
    // What a lapse past the registry entry's expiry and another server's sweep leave: A's entry
    // and alice's presence gone. A's next heartbeat finds its entry gone and restores.
    const hers = (await presenceEntries(kv)).find((e) => e.value.user.username === "alice")!;
    const gone = await kv.atomic().check(hers).delete(hers.key)
      .delete(["instance", hers.value.instance]).commit();
    assert(gone.ok);
    const { client: bob, users } = await join(clients, b, "shared", "bob");
    assertEquals(users, ["bob"]);
    await eventually(() => refused > 0, 10_000, "the restore to be refused");
    // KV refuses for a while longer, then takes writes again.
    await delay(1500);
    refusing = false;
    await bob.next((f) => f.type === "user_join" && f.username === "alice", 10_000);
    const { users: seen } = await join(clients, b, "shared", "carol");
    assertEquals(seen, ["alice", "bob", "carol"]);
  });
});

Deno.test("presence restore: a lapsed server writes the entries of its 150 connections back in a few commits, not one each", async () => {
  await withServers(1, undefined, async ({ servers: [a], kv, clients }) => {
    for (let i = 0; i < 150; i++) await join(clients, a, `room-${i % 5}`, `user${i}`);
    const [first] = await presenceEntries(kv);
    // A lapse past the registry entry's expiry: A's next heartbeat finds its entry gone.
    const lapsed = await kv.atomic().delete(["instance", first.value.instance]).commit();
    assert(lapsed.ok);
    let entries: Entry[] = [];
    await eventually(
      async () => {
        entries = await presenceEntries(kv);
        return entries.length === 150 && entries.every((e) => e.versionstamp > lapsed.versionstamp);
      },
      15_000,
      "every entry written back",
    );
    // Entries written in one commit share its versionstamp.
    const commits = new Set(entries.map((e) => e.versionstamp)).size;
    assert(commits <= 10, `150 entries written back in ${commits} commits`);
  });
});
