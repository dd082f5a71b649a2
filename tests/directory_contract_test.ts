/**
 * The directory contract, written once and run against every implementation: SQLite on a file,
 * SQLite in memory, and Postgres when `TEST_POSTGRES_URL` names a server.
 *
 * Without `TEST_POSTGRES_URL` the Postgres cases are ignored; under `CI=true` a guard test then
 * fails, since CI must never pass without having run them (`.ci/postgres.sh` provides a server).
 */

import type { Directory, DirectoryRoom, Participant } from "../src/core/directory.ts";
import { type Kysely, sql } from "kysely";
import { Migrator } from "kysely/migration";
import { assert, assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { KyselyDirectory } from "../src/directory/kysely_directory.ts";
import { openDirectory } from "../src/directory/open.ts";
import { directoryMigrations } from "../src/directory/schema.ts";
import { createPgPool, type PgPool } from "../src/directory/pg_pool.ts";

/** A directory to run one case on, and how to throw it away afterwards. */
interface Opened {
  directory: Directory;
  cleanup(): Promise<void>;
}

/** One implementation under test. */
interface Implementation {
  name: string;
  /** Whether the cases are skipped. */
  ignore: boolean;
  open(): Promise<Opened>;
}

const sqliteFile: Implementation = {
  name: "sqlite file",
  ignore: false,
  async open() {
    const dir = await Deno.makeTempDir({ prefix: "directory_test_" });
    const directory = await openDirectory(`${dir}/nested/directory.sqlite3`, dir);
    return {
      directory,
      async cleanup() {
        await directory.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  },
};

const sqliteMemory: Implementation = {
  name: "sqlite :memory:",
  ignore: false,
  async open() {
    const directory = await openDirectory("sqlite::memory:", "/nonexistent-unused");
    return { directory, cleanup: () => directory.close() };
  },
};

const postgresUrl = Deno.env.get("TEST_POSTGRES_URL")?.trim() || undefined;
const inCi = Deno.env.get("CI") === "true";

const postgres: Implementation = {
  name: "postgres",
  ignore: postgresUrl === undefined,
  open: () => openPostgresInFreshSchema(postgresUrl!),
};

Deno.test({
  name: "directory contract [postgres]: TEST_POSTGRES_URL is set under CI",
  // Outside CI a developer without a server may skip Postgres; CI may not, so there this test
  // runs and fails when the URL is missing.
  ignore: !inCi,
  fn() {
    assert(
      postgresUrl !== undefined,
      "TEST_POSTGRES_URL is not set but CI=true: CI must run the Postgres directory tests " +
        "(source .ci/postgres.sh before deno test)",
    );
  },
});

/**
 * Opens the directory in a schema of its own, dropped on cleanup, so that cases and runs never
 * see each other's rows and can run again on the same database.
 */
async function openPostgresInFreshSchema(baseUrl: string): Promise<Opened> {
  const schema = `directory_test_${crypto.randomUUID().replaceAll("-", "")}`;
  await withPostgresClient(baseUrl, (client) => client.query(`create schema "${schema}"`));
  const url = new URL(baseUrl);
  url.searchParams.set("options", `-c search_path=${schema}`);
  try {
    const directory = await openDirectory(url.toString(), "/nonexistent-unused");
    return {
      directory,
      async cleanup() {
        await directory.close();
        await dropSchema(baseUrl, schema);
      },
    };
  } catch (error) {
    await dropSchema(baseUrl, schema);
    throw error;
  }
}

/** Drops a test schema and everything in it. */
async function dropSchema(baseUrl: string, schema: string): Promise<void> {
  await withPostgresClient(baseUrl, (c) => c.query(`drop schema if exists "${schema}" cascade`));
}

/** Runs `fn` on a one-connection pool and closes it. */
async function withPostgresClient<T>(url: string, fn: (client: PgPool) => Promise<T>) {
  const pool = createPgPool({ connectionString: url, max: 1 });
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/** Registers one contract case for every implementation (or the ones given). */
function contract(
  name: string,
  fn: (directory: Directory) => Promise<void>,
  impls = [sqliteFile, sqliteMemory, postgres],
): void {
  for (const impl of impls) {
    Deno.test({
      name: `directory contract [${impl.name}]: ${name}`,
      ignore: impl.ignore,
      async fn() {
        const { directory, cleanup } = await impl.open();
        try {
          await fn(directory);
        } finally {
          await cleanup();
        }
      },
    });
  }
}

/** Fails unless `fn` rejects with an instance of `type`. */
async function rejectsWith(fn: () => Promise<unknown>, type: new (...args: never[]) => Error) {
  const error = await assertRejects(fn);
  assert(error instanceof type, `expected a ${type.name}, got ${error}`);
}

/** Compares strings by code point, the order both engines use for ids. */
function byCodePoint(a: string, b: string): number {
  const x = [...a].map((c) => c.codePointAt(0)!);
  const y = [...b].map((c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/** Ids that a text key must keep apart and return unchanged. */
const AWKWARD_IDS = [
  "1",
  "01",
  "007",
  "7",
  "10",
  "9",
  "1e3",
  "1000",
  "-1",
  "1.0",
  " 1",
  "0x10",
  "Ünïcödé",
  "élan",
  "Ω",
  "中文房间",
  "ｚ", // U+FF5A: after every BMP letter here but before the emoji in code point order
  "😀", // U+1F600: before U+FF5A in UTF-16 code units, so a JS sort would misorder it
  "a'b\"c;--",
  "with space",
  "A",
  "a",
];

contract("ping answers", async (d) => {
  await d.ping();
});

contract("migrate twice, and concurrently, is harmless and keeps the data", async (d) => {
  await d.upsertUser({ id: "u1", username: "alice" });
  await d.migrate();
  await d.migrate();
  await Promise.all([d.migrate(), d.migrate(), d.migrate()]);
  assertEquals((await d.getUser("u1"))?.username, "alice");
  await d.ping();
});

/** The directory's database without its table types, for the bookkeeping table. */
function untyped(d: Directory): Kysely<Record<string, Record<string, unknown>>> {
  assert(d instanceof KyselyDirectory);
  return d.db as unknown as Kysely<Record<string, Record<string, unknown>>>;
}

/** The rows of the migrations' bookkeeping table. */
async function migrationRows(d: Directory): Promise<unknown[]> {
  return (await sql`select name, timestamp from kysely_migration order by name`
    .execute(untyped(d))).rows;
}

contract(
  "a migration this version does not know (a newer server's) stops migrate, naming it",
  async (d) => {
    await d.upsertUser({ id: "u1", username: "alice" });
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_version', 'x')`
      .execute(untyped(d));
    const error = await assertRejects(() => d.migrate());
    assertMatch(String(error), /9999_from_a_newer_version.*newer version/);
    assertEquals((await d.getUser("u1"))?.username, "alice");
  },
);

contract(
  "the bookkeeping Kysely's migrator left (the directory's earlier versions) is read as it is",
  async (d) => {
    await d.upsertUser({ id: "u1", username: "alice" });
    const db = untyped(d);
    await sql`drop table kysely_migration`.execute(db);
    const dialect = (d as KyselyDirectory).dialect;
    const kysely = new Migrator({
      db,
      provider: { getMigrations: () => Promise.resolve(directoryMigrations(dialect)) },
    });
    assertEquals((await kysely.migrateToLatest()).error, undefined);
    const before = await migrationRows(d);
    assertEquals(before.length, 1);
    await d.migrate();
    assertEquals(await migrationRows(d), before);
    // It is the table read, not a new one of its own: a newer migration in it is seen.
    await sql`insert into kysely_migration (name, timestamp) values ('9999_newer', 'x')`.execute(
      db,
    );
    await assertRejects(() => d.migrate());
    assertEquals((await d.getUser("u1"))?.username, "alice");
  },
  // Kysely's migrator on Postgres reads every schema of the database, which the other test
  // files create and drop meanwhile; its tables are the same on both engines.
  [sqliteFile, sqliteMemory],
);

contract("upsertUser inserts, returns and getUser reads all fields", async (d) => {
  const full = {
    id: "42",
    username: "alice",
    fullName: "Alice Liddell",
    email: "alice@example.com",
    phone: "+1 555 0100",
    profileImage: "https://example.com/a.png",
    company: "Wonderland Ltd",
    role: "admin",
    userType: "talker",
  };
  assertEquals(await d.upsertUser(full), { user: full, previous: null });
  assertEquals(await d.getUser("42"), full);
  assertEquals(await d.getUser("43"), null);
});

contract("upsertUser with only an id stores nulls", async (d) => {
  const empty = {
    id: "u",
    username: null,
    fullName: null,
    email: null,
    phone: null,
    profileImage: null,
    company: null,
    role: null,
    userType: null,
  };
  assertEquals(await d.upsertUser({ id: "u" }), { user: empty, previous: null });
  assertEquals(await d.upsertUser({ id: "u" }), { user: empty, previous: empty });
});

contract("upsertUser partial update keeps fields left undefined, null clears", async (d) => {
  const first = {
    id: "u1",
    username: "alice",
    fullName: "Alice",
    email: "a@example.com",
    phone: "1",
    profileImage: "p.png",
    company: "ACME",
    role: "client",
    userType: "talker",
  };
  await d.upsertUser(first);
  const updated = await d.upsertUser({ id: "u1", email: "new@example.com", phone: null });
  const expected = {
    id: "u1",
    username: "alice",
    fullName: "Alice",
    email: "new@example.com",
    phone: null,
    profileImage: "p.png",
    company: "ACME",
    role: "client",
    userType: "talker",
  };
  assertEquals(updated, { user: expected, previous: first });
  assertEquals(await d.getUser("u1"), expected);
  // Explicit undefined is the same as leaving the field out.
  assertEquals((await d.upsertUser({ id: "u1", role: undefined })).user, expected);
  assertEquals((await d.upsertUser({ id: "u1" })).user, expected);
});

contract("deleteUser deletes and tells whether the user existed, and their role", async (d) => {
  await d.upsertUser({ id: "u1", username: "alice", role: "support" });
  await d.upsertUser({ id: "u2", username: "bob" });
  assertEquals(await d.deleteUser("u1"), { existed: true, role: "support", rooms: [] });
  assertEquals(await d.getUser("u1"), null);
  assertEquals((await d.deleteUser("u1")).existed, false);
  assertEquals(await d.deleteUser("nobody"), { existed: false, role: null, rooms: [] });
  assertEquals((await d.getUser("u2"))?.username, "bob");
});

contract("deleteUser removes the user's participations in every room", async (d) => {
  await d.upsertUser({ id: "u1" });
  await d.upsertRoom({ kind: "chat", id: "1" });
  await d.upsertRoom({ kind: "ticket", id: "1" });
  await d.setParticipants("chat", "1", [{ userId: "u1", role: "owner" }, {
    userId: "u2",
    role: "member",
  }]);
  await d.addParticipant("ticket", "1", { userId: "u1", role: "agent" });
  const deleted = await d.deleteUser("u1");
  assertEquals(deleted.existed, true);
  assertEquals(
    deleted.rooms.sort((x, y) => x.kind.localeCompare(y.kind)),
    [{ kind: "chat", id: "1" }, { kind: "ticket", id: "1" }],
  );
  assertEquals(await d.listParticipants("chat", "1"), [{ userId: "u2", role: "member" }]);
  assertEquals(await d.listParticipants("ticket", "1"), []);
  assertEquals(await d.getParticipant("chat", "1", "u1"), null);
});

contract("deleteUser clears the user as owner of their rooms, and names those rooms", async (d) => {
  await d.upsertUser({ id: "u1" });
  await d.upsertRoom({ kind: "ticket", id: "1", ownerId: "u1", title: "kept" });
  await d.upsertRoom({ kind: "ticket", id: "2", ownerId: "u1" });
  await d.upsertRoom({ kind: "ticket", id: "3", ownerId: "u2" });
  await d.addParticipant("ticket", "2", { userId: "u1", role: "agent" });
  // Read beforehand (a deletion deletes read cursors first), userRooms names the same rooms.
  const rooms = (await d.userRooms("u1")).sort((x, y) => x.id.localeCompare(y.id));
  const deleted = await d.deleteUser("u1");
  assertEquals(
    deleted.rooms.sort((x, y) => x.id.localeCompare(y.id)),
    [{ kind: "ticket", id: "1" }, { kind: "ticket", id: "2" }],
  );
  assertEquals(rooms, deleted.rooms);
  assertEquals(await d.userRooms("u1"), []);
  assertEquals((await d.getRoom("ticket", "1"))?.ownerId, null);
  assertEquals((await d.getRoom("ticket", "1"))?.title, "kept");
  assertEquals((await d.getRoom("ticket", "2"))?.ownerId, null);
  assertEquals((await d.getRoom("ticket", "3"))?.ownerId, "u2");
  // Created again under the same id, the user owns nothing.
  await d.upsertUser({ id: "u1" });
  assertEquals((await d.getRoom("ticket", "1"))?.ownerId, null);
});

contract(
  "deleteUser also removes participations of a user the directory never stored",
  async (d) => {
    await d.addParticipant("chat", "1", { userId: "ghost", role: "member" });
    assertEquals(await d.userRooms("ghost"), [{ kind: "chat", id: "1" }]);
    assertEquals(await d.deleteUser("ghost"), {
      existed: false,
      role: null,
      rooms: [{ kind: "chat", id: "1" }],
    });
    assertEquals(await d.listParticipants("chat", "1"), []);
  },
);

contract("upsertRoom inserts, keeps createdAt and fields left undefined", async (d) => {
  const before = Date.now();
  const created = await d.upsertRoom({ kind: "ticket", id: "1", title: "Printer", ownerId: "u1" });
  assertMatch(created.createdAt, ISO_UTC);
  assert(Date.parse(created.createdAt) >= before - 1000);
  assertEquals(created, {
    kind: "ticket",
    id: "1",
    title: "Printer",
    ownerId: "u1",
    createdAt: created.createdAt,
  });
  assertEquals(await d.getRoom("ticket", "1"), created);

  await new Promise((r) => setTimeout(r, 5));
  const retitled = await d.upsertRoom({ kind: "ticket", id: "1", title: "Printer on fire" });
  assertEquals(retitled, { ...created, title: "Printer on fire" });
  const untouched = await d.upsertRoom({ kind: "ticket", id: "1" });
  assertEquals(untouched, retitled);
  const cleared = await d.upsertRoom({ kind: "ticket", id: "1", ownerId: null });
  assertEquals(cleared, { ...retitled, ownerId: null });
  assertEquals(await d.getRoom("ticket", "1"), cleared);
});

contract(
  "saveRoom says whether it created the room and replaces participants with it",
  async (d) => {
    const first = await d.saveRoom({ kind: "chat", id: "1", title: "one" }, [
      { userId: "a", role: "owner" },
    ]);
    assertEquals([first.created, first.room.title], [true, "one"]);
    const again = await d.saveRoom({ kind: "chat", id: "1" }, [{ userId: "b", role: "member" }]);
    assertEquals([again.created, again.room], [false, first.room]);
    assertEquals(await d.listParticipants("chat", "1"), [{ userId: "b", role: "member" }]);
    assertEquals(again.replaced, ["a"]);
    // An owner given is replaced too; without a list the participants stay.
    await d.saveRoom({ kind: "chat", id: "1", ownerId: "o1" });
    assertEquals((await d.saveRoom({ kind: "chat", id: "1", ownerId: "o2" })).replaced, ["o1"]);
    const retitled = await d.saveRoom({ kind: "chat", id: "1", title: "uno" });
    assertEquals([retitled.room.title, retitled.replaced], ["uno", []]);
    assertEquals(await d.listParticipants("chat", "1"), [{ userId: "b", role: "member" }]);
    const saves = await Promise.all(
      Array.from({ length: 6 }, () => d.saveRoom({ kind: "chat", id: "2" })),
    );
    assertEquals(saves.filter((s) => s.created).length, 1);
  },
);

/** Registers a case for Postgres only: SQLite lets one writer in at a time by itself. */
function postgresOnly(name: string, fn: (directory: KyselyDirectory) => Promise<void>): void {
  contract(name, (d) => fn(d as KyselyDirectory), [postgres]);
}

postgresOnly("an addition that needs the room waits for a deletion under way", async (d) => {
  await d.upsertRoom({ kind: "chat", id: "1" });
  let adding!: Promise<boolean>;
  // What deleteRoom does, held open: the addition must not find the room before it commits.
  await d.db.transaction().execute(async (trx) => {
    await d.lockRoom(trx, "chat", "1");
    await trx.deleteFrom("room_participants").where("room_kind", "=", "chat")
      .where("room_id", "=", "1").execute();
    await trx.deleteFrom("rooms").where("kind", "=", "chat").where("id", "=", "1").execute();
    adding = d.addParticipant("chat", "1", { userId: "late", role: "member" }, {
      roomMustExist: true,
    });
    await new Promise((r) => setTimeout(r, 200));
  });
  assertEquals(await adding, false);
  assertEquals(await d.listParticipants("chat", "1"), []);
});

postgresOnly("a deletion waits for an addition under way, and deletes what it added", async (d) => {
  await d.upsertRoom({ kind: "chat", id: "1" });
  let deleting!: Promise<boolean>;
  // What addParticipant does, held open: the deletion must see its row once it commits.
  await d.db.transaction().execute(async (trx) => {
    await d.lockRoom(trx, "chat", "1");
    await trx.insertInto("room_participants").values({
      room_kind: "chat",
      room_id: "1",
      user_id: "late",
      role: "member",
      created_at: new Date().toISOString(),
    }).execute();
    deleting = d.deleteRoom("chat", "1");
    await new Promise((r) => setTimeout(r, 200));
  });
  assertEquals(await deleting, true);
  assertEquals(await d.listParticipants("chat", "1"), []);
});

contract("addParticipant with roomMustExist adds only to a stored room", async (d) => {
  assertEquals(
    await d.addParticipant("chat", "9", { userId: "a", role: "member" }, { roomMustExist: true }),
    false,
  );
  assertEquals(await d.listParticipants("chat", "9"), []);
  await d.upsertRoom({ kind: "chat", id: "9" });
  assertEquals(
    await d.addParticipant("chat", "9", { userId: "a", role: "member" }, { roomMustExist: true }),
    true,
  );
  assertEquals(await d.listParticipants("chat", "9"), [{ userId: "a", role: "member" }]);
});

contract("upsertRoom without title or owner stores nulls", async (d) => {
  const room = await d.upsertRoom({ kind: "chat", id: "x" });
  assertEquals(room.title, null);
  assertEquals(room.ownerId, null);
});

contract("rooms are keyed by kind and id together", async (d) => {
  await d.upsertRoom({ kind: "ticket", id: "1", title: "ticket one" });
  await d.upsertRoom({ kind: "chat", id: "1", title: "chat one" });
  assertEquals((await d.getRoom("ticket", "1"))?.title, "ticket one");
  assertEquals((await d.getRoom("chat", "1"))?.title, "chat one");
  assertEquals(await d.getRoom("room", "1"), null);
  assertEquals(await d.deleteRoom("chat", "1"), true);
  assertEquals((await d.getRoom("ticket", "1"))?.title, "ticket one");
});

contract("deleteRoom deletes the room and its participants only", async (d) => {
  await d.upsertRoom({ kind: "chat", id: "1" });
  await d.upsertRoom({ kind: "chat", id: "2" });
  await d.setParticipants("chat", "1", [{ userId: "a", role: "member" }]);
  await d.setParticipants("chat", "2", [{ userId: "a", role: "owner" }]);
  assertEquals(await d.deleteRoom("chat", "1"), true);
  assertEquals(await d.getRoom("chat", "1"), null);
  assertEquals(await d.listParticipants("chat", "1"), []);
  assertEquals(await d.listParticipants("chat", "2"), [{ userId: "a", role: "owner" }]);
  assertEquals(await d.deleteRoom("chat", "1"), false);
  // Participants of a room that was never stored go too.
  await d.addParticipant("chat", "3", { userId: "a", role: "member" });
  assertEquals(await d.deleteRoom("chat", "3"), false);
  assertEquals(await d.listParticipants("chat", "3"), []);
});

contract("listRooms orders by id text in code point order and pages with after", async (d) => {
  for (const id of AWKWARD_IDS) await d.upsertRoom({ kind: "chat", id, title: `t ${id}` });
  await d.upsertRoom({ kind: "ticket", id: "0" });
  const expected = [...AWKWARD_IDS].sort(byCodePoint);

  const all = await d.listRooms("chat");
  assertEquals(all.map((r) => r.id), expected);
  assert(all.every((r: DirectoryRoom) => r.kind === "chat" && r.title === `t ${r.id}`));

  const paged: string[] = [];
  let after: string | undefined;
  for (let pages = 0; pages < 100; pages++) {
    const page = await d.listRooms("chat", { limit: 5, after });
    assert(page.length <= 5);
    if (page.length === 0) break;
    paged.push(...page.map((r) => r.id));
    after = page.at(-1)!.id;
  }
  assertEquals(paged, expected);

  assertEquals(
    (await d.listRooms("chat", { limit: 2 })).map((r) => r.id),
    expected.slice(0, 2),
  );
  assertEquals(
    (await d.listRooms("chat", { after: "9" })).map((r) => r.id),
    expected.filter((id) => byCodePoint(id, "9") > 0),
  );
  // `after` need not be a stored id.
  assertEquals(
    (await d.listRooms("chat", { after: "0" })).map((r) => r.id),
    expected.filter((id) => byCodePoint(id, "0") > 0),
  );
  assertEquals(await d.listRooms("chat", { limit: 0 }), []);
  assertEquals(await d.listRooms("chat", { after: "😀" }), []);
  assertEquals((await d.listRooms("ticket")).map((r) => r.id), ["0"]);
  assertEquals(await d.listRooms("nothing"), []);
  await rejectsWith(() => d.listRooms("chat", { limit: -1 }), RangeError);
  await rejectsWith(() => d.listRooms("chat", { limit: 1.5 }), RangeError);
});

contract("non-ASCII and numeric-looking ids round-trip and stay distinct", async (d) => {
  for (const id of AWKWARD_IDS) {
    await d.upsertUser({ id, username: `user ${id}` });
    await d.upsertRoom({ kind: `kind-${id}`, id, title: id });
    await d.addParticipant(`kind-${id}`, id, { userId: id, role: `role ${id}` });
  }
  for (const id of AWKWARD_IDS) {
    assertEquals((await d.getUser(id))?.username, `user ${id}`);
    const room = await d.getRoom(`kind-${id}`, id);
    assertEquals(room?.id, id);
    assertEquals(room?.title, id);
    assertEquals(await d.listParticipants(`kind-${id}`, id), [{
      userId: id,
      role: `role ${id}`,
    }]);
  }
  assertEquals(await d.getUser("1.00"), null);
  assertEquals(await d.getUser("٣"), null);
  assertEquals((await d.deleteUser("007")).existed, true);
  assertEquals((await d.getUser("7"))?.username, "user 7");
});

contract("setParticipants replaces the list exactly", async (d) => {
  await d.upsertRoom({ kind: "chat", id: "1" });
  await d.setParticipants("chat", "1", [
    { userId: "b", role: "member" },
    { userId: "a", role: "owner" },
    { userId: "c", role: "member" },
  ]);
  assertEquals(await d.listParticipants("chat", "1"), [
    { userId: "a", role: "owner" },
    { userId: "b", role: "member" },
    { userId: "c", role: "member" },
  ]);
  await d.setParticipants("chat", "1", [
    { userId: "c", role: "agent" },
    { userId: "d", role: "member" },
  ]);
  assertEquals(await d.listParticipants("chat", "1"), [
    { userId: "c", role: "agent" },
    { userId: "d", role: "member" },
  ]);
  await d.setParticipants("chat", "1", []);
  assertEquals(await d.listParticipants("chat", "1"), []);
});

contract("setParticipants keeps the last entry of a repeated user", async (d) => {
  await d.setParticipants("chat", "1", [
    { userId: "a", role: "member" },
    { userId: "a", role: "owner" },
  ]);
  assertEquals(await d.listParticipants("chat", "1"), [{ userId: "a", role: "owner" }]);
});

contract("setParticipants leaves other rooms alone", async (d) => {
  await d.setParticipants("chat", "1", [{ userId: "a", role: "member" }]);
  await d.setParticipants("chat", "10", [{ userId: "a", role: "member" }]);
  await d.setParticipants("ticket", "1", [{ userId: "a", role: "agent" }]);
  await d.setParticipants("chat", "1", [{ userId: "b", role: "member" }]);
  assertEquals(await d.listParticipants("chat", "10"), [{ userId: "a", role: "member" }]);
  assertEquals(await d.listParticipants("ticket", "1"), [{ userId: "a", role: "agent" }]);
});

contract("setParticipants handles lists larger than one statement's batch", async (d) => {
  const many: Participant[] = Array.from({ length: 1234 }, (_, i) => ({
    userId: `user-${String(i).padStart(4, "0")}`,
    role: i % 7 === 0 ? "owner" : "member",
  }));
  await d.setParticipants("room", "big", many);
  assertEquals(await d.listParticipants("room", "big"), many);
  const fewer = many.filter((_, i) => i % 3 === 0);
  await d.setParticipants("room", "big", fewer);
  assertEquals(await d.listParticipants("room", "big"), fewer);
});

contract("concurrent setParticipants on one room end with exactly one list", async (d) => {
  const lists: Participant[][] = Array.from({ length: 8 }, (_, i) => [
    { userId: `x${i}`, role: "member" },
    { userId: `y${i}`, role: "owner" },
  ]);
  await Promise.all(lists.map((list) => d.setParticipants("chat", "race", list)));
  const final = await d.listParticipants("chat", "race");
  assert(
    lists.some((list) => JSON.stringify(list) === JSON.stringify(final)),
    `expected one of the lists, got ${JSON.stringify(final)}`,
  );
});

contract("addParticipant adds, updates the role, and getParticipant reads", async (d) => {
  await d.upsertRoom({ kind: "ticket", id: "5" });
  await d.addParticipant("ticket", "5", { userId: "u1", role: "member" });
  await d.addParticipant("ticket", "5", { userId: "u2", role: "agent" });
  assertEquals(await d.getParticipant("ticket", "5", "u1"), { userId: "u1", role: "member" });
  await d.addParticipant("ticket", "5", { userId: "u1", role: "owner" });
  assertEquals(await d.getParticipant("ticket", "5", "u1"), { userId: "u1", role: "owner" });
  assertEquals(await d.listParticipants("ticket", "5"), [
    { userId: "u1", role: "owner" },
    { userId: "u2", role: "agent" },
  ]);
  assertEquals(await d.getParticipant("ticket", "5", "u3"), null);
  assertEquals(await d.getParticipant("ticket", "6", "u1"), null);
  assertEquals(await d.getParticipant("chat", "5", "u1"), null);
});

contract("removeParticipant removes one and tells whether they were one", async (d) => {
  await d.setParticipants("chat", "1", [
    { userId: "a", role: "member" },
    { userId: "b", role: "member" },
  ]);
  assertEquals(await d.removeParticipant("chat", "1", "a"), true);
  assertEquals(await d.removeParticipant("chat", "1", "a"), false);
  assertEquals(await d.removeParticipant("chat", "2", "b"), false);
  assertEquals(await d.listParticipants("chat", "1"), [{ userId: "b", role: "member" }]);
  assertEquals(await d.getParticipant("chat", "1", "a"), null);
});

contract("concurrent upserts of the same user do not fail", async (d) => {
  const results = await Promise.all(
    Array.from(
      { length: 25 },
      (_, i) =>
        d.upsertUser({ id: "same", username: `name-${i}`, email: i % 2 ? `${i}@x` : undefined }),
    ),
  );
  assertEquals(results.length, 25);
  const stored = await d.getUser("same");
  assert(stored?.username?.startsWith("name-"));
  // The rows each call returned are whole users, whatever order the writes landed in.
  assert(results.every(({ user: u }) => u.id === "same" && u.username?.startsWith("name-")));
  // Each write replaced the one before it: exactly one found no user, and the others form one
  // chain from it to the stored row (a write reading a row another was changing would break it).
  assertEquals(results.filter((r) => r.previous === null).length, 1);
  const next = new Map(results.map((r) => [r.previous?.username ?? null, r.user.username]));
  assertEquals(next.size, 25);
  let at: string | null = null;
  for (let i = 0; i < 25; i++) at = next.get(at) ?? "missing";
  assertEquals(at, stored?.username);
});

contract("concurrent upserts of the same room and participant do not fail", async (d) => {
  await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      Promise.all([
        d.upsertRoom({ kind: "chat", id: "hot", title: `t${i}` }),
        d.addParticipant("chat", "hot", { userId: "u", role: `r${i}` }),
      ])),
  );
  assert((await d.getRoom("chat", "hot"))?.title?.startsWith("t"));
  assertEquals((await d.listParticipants("chat", "hot")).length, 1);
});

contract("empty ids are refused", async (d) => {
  await rejectsWith(() => d.upsertUser({ id: "" }), TypeError);
  await rejectsWith(() => d.upsertRoom({ kind: "chat", id: "" }), TypeError);
  await rejectsWith(() => d.upsertRoom({ kind: "", id: "1" }), TypeError);
  await rejectsWith(() => d.addParticipant("chat", "1", { userId: "", role: "x" }), TypeError);
  await rejectsWith(
    () => d.setParticipants("chat", "1", [{ userId: "", role: "member" }]),
    TypeError,
  );
});

contract("close is idempotent", async (d) => {
  await d.close();
  await d.close();
});

Deno.test({
  name: "directory [postgres]: each schema keeps its own migrations and C-collated ids",
  ignore: postgresUrl === undefined,
  async fn() {
    // Two live schemas, each with Kysely's bookkeeping tables: the second migrate must not take
    // the first schema's `kysely_migration` for its own.
    const first = await openPostgresInFreshSchema(postgresUrl!);
    try {
      const second = await openPostgresInFreshSchema(postgresUrl!);
      try {
        await first.directory.upsertUser({ id: "1", username: "first" });
        await second.directory.upsertUser({ id: "1", username: "second" });
        await second.directory.migrate();
        assertEquals((await first.directory.getUser("1"))?.username, "first");
        assertEquals((await second.directory.getUser("1"))?.username, "second");

        assert(second.directory instanceof KyselyDirectory);
        const { rows } = await sql<{ column_name: string; collation_name: string | null }>`
          select column_name, collation_name from information_schema.columns
          where table_schema = current_schema() and table_name = 'rooms' order by column_name
        `.execute(second.directory.db);
        const collations = Object.fromEntries(rows.map((r) => [r.column_name, r.collation_name]));
        assertEquals(collations.id, "C");
        assertEquals(collations.kind, "C");
        const migrations = await sql<{ n: number }>`
          select count(*)::int as n from kysely_migration
        `.execute(second.directory.db);
        assertEquals(migrations.rows[0].n, 1);
      } finally {
        await second.cleanup();
      }
    } finally {
      await first.cleanup();
    }
  },
});

Deno.test({
  name:
    "directory [postgres]: opening is not disturbed by other schemas coming and going, nor waits for another Kysely app's migrations",
  ignore: postgresUrl === undefined,
  async fn() {
    const pool = createPgPool({ connectionString: postgresUrl!, max: 8 });
    const holder = await pool.connect();
    let stop = false;
    // Other applications' schemas with tables, created and dropped all along.
    const churn = async () => {
      while (!stop) {
        const schema = `churn_${crypto.randomUUID().replaceAll("-", "")}`;
        await pool.query(
          `create schema "${schema}"; create table "${schema}".t (id serial primary key)`,
        );
        await pool.query(`drop schema "${schema}" cascade`);
      }
    };
    const churns = Array.from({ length: 5 }, churn);
    try {
      // Kysely's migrator takes this one lock for every schema of the database; another
      // application migrating (here: holding it) must not keep this directory from opening.
      await holder.query("select pg_advisory_lock(3853314791062309107)", []);
      const failures: string[] = [];
      for (let round = 0; round < 4; round++) {
        await Promise.all([0, 1, 2, 3].map(async () => {
          try {
            const { cleanup } = await openPostgresInFreshSchema(postgresUrl!);
            await cleanup();
          } catch (error) {
            failures.push(String(error));
          }
        }));
      }
      assertEquals(failures, []);
    } finally {
      stop = true;
      await Promise.allSettled(churns);
      holder.release(true);
      await pool.end();
    }
  },
});

Deno.test({
  name:
    "directory [postgres]: processes opening one fresh schema at once migrate it once, whatever the database's default isolation",
  ignore: postgresUrl === undefined,
  async fn() {
    for (const isolation of ["serializable", "repeatable read", "read committed"]) {
      const schema = `directory_test_${crypto.randomUUID().replaceAll("-", "")}`;
      await withPostgresClient(postgresUrl!, (c) => c.query(`create schema "${schema}"`));
      try {
        const url = new URL(postgresUrl!);
        url.searchParams.set(
          "options",
          `-c search_path=${schema} -c default_transaction_isolation=${
            isolation.replace(" ", "\\ ")
          }`,
        );
        const opened = await Promise.allSettled(
          [1, 2, 3, 4].map(() => openDirectory(url.toString(), "/nonexistent-unused")),
        );
        for (const o of opened) if (o.status === "fulfilled") await o.value.close();
        assertEquals(
          opened.map((o) => o.status === "rejected" ? String(o.reason) : "ok"),
          ["ok", "ok", "ok", "ok"],
          isolation,
        );
      } finally {
        await dropSchema(postgresUrl!, schema);
      }
    }
  },
});

contract("roomAccess tells known, owner and participation in one call", async (d) => {
  const none = { known: false, ownerId: null, participant: false };
  assertEquals(await d.roomAccess("ticket", "9", "u1"), none);
  await d.upsertRoom({ kind: "ticket", id: "9", ownerId: "boss" });
  assertEquals(await d.roomAccess("ticket", "9", "u1"), {
    known: true,
    ownerId: "boss",
    participant: false,
  });
  await d.addParticipant("ticket", "9", { userId: "u1", role: "member" });
  assertEquals(await d.roomAccess("ticket", "9", "u1"), {
    known: true,
    ownerId: "boss",
    participant: true,
  });
  assertEquals((await d.roomAccess("ticket", "9", "u2")).participant, false);
  // A participant of a room the directory has no row for still counts.
  await d.addParticipant("chat", "77", { userId: "u1", role: "member" });
  assertEquals(await d.roomAccess("chat", "77", "u1"), {
    known: false,
    ownerId: null,
    participant: true,
  });
  await d.removeParticipant("ticket", "9", "u1");
  assertEquals((await d.roomAccess("ticket", "9", "u1")).participant, false);
});
