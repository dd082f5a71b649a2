/**
 * DirectoryAccessPolicy and the directory's profile enricher against a real directory: SQLite
 * in memory, and Postgres when `TEST_POSTGRES_URL` is set.
 */

import { DirectoryAccessPolicy, directoryProfileEnricher } from "../src/auth/directory_access.ts";
import { principalFromClaims } from "../src/auth/principal.ts";
import type { Directory } from "../src/core/directory.ts";
import { openDirectory } from "../src/directory/open.ts";
import type { Principal } from "../src/core/types.ts";
import { BACKENDS, openBackendDirectory, requirePostgresInCi } from "./api_helpers.ts";
import { assert, assertEquals } from "./assert.ts";

requirePostgresInCi("directory access");

function accessTest(name: string, fn: (directory: Directory) => Promise<void>): void {
  for (const backend of BACKENDS) {
    Deno.test({
      name: `directory access [${backend.name}]: ${name}`,
      ignore: backend.ignore,
      async fn() {
        const { directory, cleanup } = await openBackendDirectory(backend);
        try {
          await fn(directory);
        } finally {
          await cleanup();
        }
      },
    });
  }
}

const user = (claims: Record<string, unknown>): Principal => principalFromClaims(claims)!;

accessTest("role rules, owner, participants, and claims only for unknown rooms", async (d) => {
  const policy = new DirectoryAccessPolicy(d);
  await d.upsertRoom({ kind: "ticket", id: "1", ownerId: "10" });
  await d.setParticipants("ticket", "1", [{ userId: "11", role: "agent" }]);
  await d.upsertRoom({ kind: "support-chat", id: "5" });
  await d.upsertRoom({ kind: "service-chat", id: "5" });
  // A participant row without a rooms row still admits its user.
  await d.addParticipant("chat", "9", { userId: "12", role: "member" });

  const cases: [Record<string, unknown>, string, boolean][] = [
    [{ sub: "10" }, "ticket:1", true], // owner
    [{ sub: "11" }, "ticket:1", true], // participant
    [{ sub: "12" }, "ticket:1", false], // neither
    [{ sub: "12", rooms: ["ticket:1"] }, "ticket:1", false], // a known room ignores claims
    [{ sub: "12", rooms: ["ticket:*"] }, "ticket:2", true], // an unknown room falls back to them
    [{ sub: "12" }, "ticket:2", false],
    [{ sub: "12" }, "chat:9", true],
    [{ sub: "13", role: "admin" }, "ticket:1", true],
    [{ sub: "13", role: "super_admin" }, "service-chat:5", true],
    [{ sub: "13", role: "support" }, "support-chat:5", true],
    [{ sub: "13", role: "support" }, "service-chat:5", false],
    [{ sub: "13" }, "room:general", true],
    [{ sub: "13", rooms: ["*"] }, "support-chat:5", false],
    [{ sub: "13", rooms: ["*"] }, "not-a-room-key", true],
  ];
  for (const [claims, room, expected] of cases) {
    assertEquals(
      await policy.canAccess(user(claims), room),
      expected,
      `${JSON.stringify(claims)} → ${room}`,
    );
  }
});

accessTest("a removed participant is refused on the very next check", async (d) => {
  const policy = new DirectoryAccessPolicy(d);
  const u = user({ sub: "7", rooms: ["chat:1"] });
  await d.upsertRoom({ kind: "chat", id: "1" });
  await d.addParticipant("chat", "1", { userId: "7", role: "member" });
  assertEquals(await policy.canAccess(u, "chat:1"), true);
  await d.removeParticipant("chat", "1", "7");
  assertEquals(await policy.canAccess(u, "chat:1"), false);
  // Deleting the room returns it to the claims.
  await d.deleteRoom("chat", "1");
  assertEquals(await policy.canAccess(u, "chat:1"), true);
});

accessTest("one connection moving between rooms keeps each room's decision apart", async (d) => {
  const policy = new DirectoryAccessPolicy(d);
  const u = user({ sub: "8" });
  for (const id of ["1", "2", "3"]) {
    await d.upsertRoom({ kind: "chat", id });
    await d.addParticipant("chat", id, { userId: "8", role: "member" });
  }
  // The first room's decision is kept bare, the second turns it into a map, the third joins it.
  assertEquals(await policy.canAccess(u, "chat:1"), true);
  assertEquals(await policy.canAccess(u, "chat:2"), true);
  assertEquals(await policy.canAccess(u, "chat:3"), true);
  assertEquals(await policy.canAccess(u, "chat:4"), false, "a known-nowhere room with no claim");
  await d.removeParticipant("chat", "1", "8");
  assertEquals(await policy.canAccess(u, "chat:1"), false);
  assertEquals(await policy.canAccess(u, "chat:2"), true);
  await d.removeParticipant("chat", "3", "8");
  assertEquals(await policy.canAccess(u, "chat:3"), false);
  assertEquals(await policy.canAccess(u, "chat:2"), true);
});

accessTest("the enricher fills what the token lacks and never overrides it", async (d) => {
  const enrich = directoryProfileEnricher(d);
  await d.upsertUser({
    id: "3",
    username: "stored3",
    fullName: "Stored Three",
    email: "three@example.com",
    phone: "09123456789",
    profileImage: "http://cdn.example/3.png",
    company: "ACME",
    role: "client",
    userType: "talker",
  });
  const bare = { sub: 3 };
  const enriched = await enrich(user(bare), bare);
  assertEquals(enriched, {
    id: 3,
    username: "stored3",
    name: "Stored Three",
    email: "three@example.com",
    phone: "09123456789",
    profileImage: "http://cdn.example/3.png",
    company: "ACME",
    role: "client",
    userType: "talker",
    grants: [],
  });

  const claims = {
    sub: "3",
    username: "token3",
    phone: "+1",
    company: "Token Co",
    user_type: "listener",
    rooms: ["ticket:1"],
  };
  const mixed = await enrich(user(claims), claims);
  assertEquals(
    [mixed.username, mixed.phone, mixed.company, mixed.userType, mixed.name, mixed.grants],
    ["token3", "+1", "Token Co", "listener", "Stored Three", ["ticket:1"]],
  );

  // Without a username claim the stored username beats the name the token carried.
  const named = { sub: "3", name: "Token Name" };
  assertEquals((await enrich(user(named), named)).username, "stored3");

  const stranger = { sub: "99", username: "x" };
  assertEquals(await enrich(user(stranger), stranger), user(stranger));
});

accessTest("a role from the directory counts, and is read again on every check", async (d) => {
  const policy = new DirectoryAccessPolicy(d);
  const enrich = directoryProfileEnricher(d);
  await d.upsertUser({ id: "5", role: "admin" });
  await d.upsertUser({ id: "6", role: "client" });
  await d.upsertRoom({ kind: "ticket", id: "1" });

  const five = await enrich(user({ sub: "5" }), { sub: "5" });
  assertEquals(five.role, "admin");
  assertEquals(await policy.canAccess(five, "ticket:1"), true);
  await d.upsertUser({ id: "5", role: "client" });
  assertEquals(await policy.canAccess(five, "ticket:1"), false);
  assertEquals(await policy.canAccess(five, "room:lobby"), true);

  // A role the token carries is the token's: the directory cannot raise or lower it.
  const tokenAdmin = await enrich(user({ sub: "6", role: "admin" }), { sub: "6", role: "admin" });
  assertEquals(await policy.canAccess(tokenAdmin, "ticket:1"), true);
});

Deno.test("directory access: a directory that does not answer leaves the token's profile", async () => {
  const down = {
    getUser: () => Promise.reject(new Error("connection refused")),
  } as unknown as Directory;
  // Through the failure log, which logs on console.error.
  const error = console.error;
  const logged: unknown[] = [];
  console.error = (...args: unknown[]) => logged.push(args);
  try {
    const claims = { sub: "1", username: "one" };
    assertEquals(await directoryProfileEnricher(down)(user(claims), claims), user(claims));
  } finally {
    console.error = error;
  }
  assert(logged.length === 1);
});

Deno.test("directory access [sqlite file]: decisions are reused until anyone commits, even another process's connection (seen within 25 ms)", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/directory.sqlite3`;
  const directory = await openDirectory(path, dir);
  // The application's own connection to the same file, as Django's would be.
  const other = await openDirectory(path, dir);
  try {
    let lookups = 0;
    const counting: Directory = Object.create(directory);
    counting.roomAccess = (...args) => {
      lookups++;
      return directory.roomAccess(...args);
    };
    counting.changeToken = () => directory.changeToken!();
    const policy = new DirectoryAccessPolicy(counting);
    await directory.upsertRoom({ kind: "ticket", id: "1" });
    await directory.setParticipants("ticket", "1", [{ userId: "4", role: "member" }]);
    const four = user({ sub: "4" });
    assert(await policy.canAccess(four, "ticket:1"));
    assert(await policy.canAccess(four, "ticket:1"));
    assert(await policy.canAccess(four, "ticket:1"));
    assertEquals(lookups, 1, "one read while nothing changed");
    // Another principal (another connection of the same user) decides on its own.
    assert(await policy.canAccess(user({ sub: "4" }), "ticket:1"));
    assertEquals(lookups, 2);

    assert(await policy.canAccess(four, "ticket:1"), "decided from the cache, token just read");
    await other.removeParticipant("ticket", "1", "4");
    // Another process's commit shows within 25 ms (the token is reused that long), as the
    // directory says: a room's deletion waits twice that before its purge refuses sends.
    assertEquals(directory.changeTokenLagMs, 25);
    await new Promise((r) => setTimeout(r, 2 * directory.changeTokenLagMs!));
    assertEquals(await policy.canAccess(four, "ticket:1"), false, "the other connection's commit");
    assertEquals(lookups, 3);
    await directory.addParticipant("ticket", "1", { userId: "4", role: "member" });
    assert(await policy.canAccess(four, "ticket:1"), "this connection's own commit");
    assertEquals(lookups, 4);

    // A fresh check (a join's second, once it is in the room) reads past the cache at once.
    assert(await policy.canAccess(four, "ticket:1"), "from the cache");
    assertEquals(lookups, 4);
    await other.removeParticipant("ticket", "1", "4");
    assertEquals(await policy.canAccess(four, "ticket:1", { fresh: true }), false, "fresh");
    assertEquals(lookups, 5);
  } finally {
    await other.close();
    await directory.close();
    await Deno.remove(dir, { recursive: true });
  }
});
