/**
 * The directory's tables as Kysely sees them, and the migrations that create them on SQLite and
 * Postgres.
 */

import { type ColumnType, type Kysely, sql } from "kysely";
import type { Migration } from "kysely/migration";

/** The SQL engine under the directory; a few column types and locks differ between them. */
export type DirectoryDialect = "sqlite" | "postgres";

/**
 * A timestamp column: ISO 8601 text on SQLite, `timestamptz` on Postgres (read back as a `Date`),
 * written as ISO 8601 text on both and never changed after the insert.
 */
export type CreatedAtColumn = ColumnType<string | Date, string | undefined, never>;

/** A timestamp column that updates may set, as {@link CreatedAtColumn} otherwise. */
export type UpdatedAtColumn = ColumnType<string | Date, string | undefined, string>;

/** The `users` table. */
export interface UsersTable {
  /** User id as text. */
  id: string;
  /** Login handle. */
  username: string | null;
  /** Full name. */
  full_name: string | null;
  /** Email address. */
  email: string | null;
  /** Phone number. */
  phone: string | null;
  /** Avatar URL. */
  profile_image: string | null;
  /** Company name. */
  company: string | null;
  /** Role such as `admin` or `client`. */
  role: string | null;
  /** Kind of user such as `talker`. */
  user_type: string | null;
  /** When the row was inserted. */
  created_at: CreatedAtColumn;
  /** When the row was last written. */
  updated_at: UpdatedAtColumn;
}

/** The `rooms` table, keyed by (kind, id). */
export interface RoomsTable {
  /** Room kind such as `ticket` or `chat`. */
  kind: string;
  /** Id within the kind, as text. */
  id: string;
  /** Optional title. */
  title: string | null;
  /** Owner user id. */
  owner_id: string | null;
  /** When the row was inserted. */
  created_at: CreatedAtColumn;
}

/** The `room_participants` table, keyed by (room_kind, room_id, user_id). */
export interface RoomParticipantsTable {
  /** Kind of the room. */
  room_kind: string;
  /** Id of the room within its kind. */
  room_id: string;
  /** Participant's user id. */
  user_id: string;
  /** Role in the room; `member` when an insert leaves it out. */
  role: ColumnType<string, string | undefined, string>;
  /** When the user joined. */
  created_at: CreatedAtColumn;
}

/** The directory's database as Kysely types it. */
export interface DirectoryDatabase {
  /** Users. */
  users: UsersTable;
  /** Rooms. */
  rooms: RoomsTable;
  /** Room memberships. */
  room_participants: RoomParticipantsTable;
}

/**
 * The column types that differ between the dialects.
 *
 * Ids are `collate "C"` on Postgres so that ordering and `>` comparisons on them (paging in
 * `listRooms`) follow code points, as SQLite's default BINARY collation does, instead of the
 * database locale's rules.
 */
function columnTypes(dialect: DirectoryDialect) {
  return dialect === "postgres"
    ? {
      key: sql`text collate "C"`,
      timestamp: sql`timestamptz`,
      now: sql`now()`,
    }
    : {
      key: sql`text`,
      timestamp: sql`text`,
      // The same shape as `Date.prototype.toISOString`, so app-written and default values sort
      // together.
      now: sql`(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`,
    };
}

/** The directory's migrations for a dialect, by name in the order they run. */
export function directoryMigrations(dialect: DirectoryDialect): Record<string, Migration> {
  // Participants have no foreign keys to users or rooms: tokens and the backend announce users,
  // rooms and memberships in any order, so the directory deletes dependent rows itself.
  const t = columnTypes(dialect);
  return {
    "0001_users_rooms_participants": {
      async up(db: Kysely<unknown>): Promise<void> {
        await db.schema.createTable("users").ifNotExists()
          .addColumn("id", t.key, (c) => c.primaryKey().notNull())
          .addColumn("username", "text")
          .addColumn("full_name", "text")
          .addColumn("email", "text")
          .addColumn("phone", "text")
          .addColumn("profile_image", "text")
          .addColumn("company", "text")
          .addColumn("role", "text")
          .addColumn("user_type", "text")
          .addColumn("created_at", t.timestamp, (c) => c.notNull().defaultTo(t.now))
          .addColumn("updated_at", t.timestamp, (c) => c.notNull().defaultTo(t.now))
          .execute();
        await db.schema.createTable("rooms").ifNotExists()
          .addColumn("kind", t.key, (c) => c.notNull())
          .addColumn("id", t.key, (c) => c.notNull())
          .addColumn("title", "text")
          .addColumn("owner_id", t.key)
          .addColumn("created_at", t.timestamp, (c) => c.notNull().defaultTo(t.now))
          .addPrimaryKeyConstraint("rooms_pkey", ["kind", "id"])
          .execute();
        await db.schema.createTable("room_participants").ifNotExists()
          .addColumn("room_kind", t.key, (c) => c.notNull())
          .addColumn("room_id", t.key, (c) => c.notNull())
          .addColumn("user_id", t.key, (c) => c.notNull())
          .addColumn("role", "text", (c) => c.notNull().defaultTo("member"))
          .addColumn("created_at", t.timestamp, (c) => c.notNull().defaultTo(t.now))
          .addPrimaryKeyConstraint("room_participants_pkey", ["room_kind", "room_id", "user_id"])
          .execute();
        // Deleting a user removes their participations by user id alone.
        await db.schema.createIndex("room_participants_user_id_idx").ifNotExists()
          .on("room_participants")
          .column("user_id")
          .execute();
      },
      async down(db: Kysely<unknown>): Promise<void> {
        await db.schema.dropTable("room_participants").ifExists().execute();
        await db.schema.dropTable("rooms").ifExists().execute();
        await db.schema.dropTable("users").ifExists().execute();
      },
    },
  };
}

/**
 * The table that records which migrations ran: the name and columns Kysely's migrator gives it,
 * which migrated the directory before, so that databases it set up are read as they are.
 */
const MIGRATION_TABLE = "kysely_migration";

/** The first half of the Postgres advisory lock key; the second is the schema's hash. */
const MIGRATION_LOCK_CLASS = 0x63686174; // "chat"

/** The bookkeeping table as the migrator reads and writes it. */
type MigrationTables = {
  /** One row per migration that ran. */
  [MIGRATION_TABLE]: { name: string; timestamp: string };
};

/**
 * Brings the schema up to the latest migration; running it again, or from several processes at
 * once, is harmless. A schema already up to date is only read, so a role without CREATE on it
 * (one with USAGE and the tables' SELECT, INSERT, UPDATE and DELETE) opens it.
 *
 * Kysely's own migrator is not used: on Postgres it introspects every table of every schema in
 * the database, by name, so a schema that another application (or a test) dropped meanwhile
 * failed our start with `schema "theirs" does not exist`, and all of its migrations share one
 * database-wide session lock.
 */
export async function migrateDirectory(
  db: Kysely<DirectoryDatabase>,
  dialect: DirectoryDialect,
): Promise<void> {
  const migrations = Object.entries(directoryMigrations(dialect))
    .sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  const schema = dialect === "postgres" ? await currentSchema(db) : undefined;
  const tables = db.withTables<MigrationTables>();
  let running: string | undefined;
  let pending: string[] = [];
  try {
    // Read before anything is written or locked: Postgres checks CREATE on the schema before it
    // looks whether a table exists, so even `create table if not exists` of the bookkeeping table
    // failed every start of a role that may not create tables, on a schema long migrated.
    pending = pendingMigrations(await doneMigrations(tables, schema), migrations);
    if (pending.length === 0) return;
    // Read committed whatever the database's default: the rows of a migration another process
    // committed while this one waited for the lock must be seen after it (under repeatable read
    // the snapshot is taken at the lock, and the migration would run twice).
    await tables.transaction().setIsolationLevel("read committed").execute(async (trx) => {
      if (schema !== undefined) {
        // Migrations of the same schema wait for each other, and only they, for as long as a
        // query may take (DATABASE_TIMEOUT_MS); a transaction's lock also ends when a client
        // that timed out abandons it.
        await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK_CLASS}, hashtext(${schema}))`
          .execute(trx);
      }
      // SQLite's transaction is `begin immediate`: it holds the file's write lock already, and
      // ignores the isolation level (its transactions are serializable).
      let done = await doneMigrations(trx, schema);
      if (done === null) {
        // Postgres may still answer "no table" from its catalog cache when another process made
        // it while this one waited (the cache is brought up to date when a table is locked, not
        // an advisory lock): then the create does nothing and the names are there to read.
        await trx.schema.createTable(MIGRATION_TABLE).ifNotExists()
          .addColumn("name", "varchar(255)", (c) => c.notNull().primaryKey())
          .addColumn("timestamp", "varchar(255)", (c) => c.notNull())
          .execute();
        done = await migrationNames(trx);
      }
      pending = pendingMigrations(done, migrations);
      for (const [name, migration] of migrations) {
        if (!pending.includes(name)) continue;
        running = name;
        await migration.up(trx);
        await trx.insertInto(MIGRATION_TABLE)
          .values({ name, timestamp: new Date().toISOString() })
          .execute();
        running = undefined;
      }
    });
  } catch (error) {
    const { code } = error as { code?: unknown };
    // 42501: insufficient_privilege, which the operator can act on.
    const hint = code === "42501" && pending.length > 0
      ? `; the schema needs migrations (${pending.join(", ")}), which need CREATE on it: ` +
        "start the server once with a role that has it (the schema's owner)"
      : "";
    throw new Error(
      `directory migration ${running ? `"${running}" ` : ""}failed: ${errorMessage(error)}${hint}`,
      { cause: error },
    );
  }
}

/**
 * The names of the migrations that ran on this schema (Postgres: `schema`; SQLite: undefined),
 * or null when it has no bookkeeping table yet.
 */
async function doneMigrations(
  db: Kysely<DirectoryDatabase & MigrationTables>,
  schema: string | undefined,
): Promise<Set<string> | null> {
  // The schema's own table only: another schema on the search_path may have a table of that name.
  const { rows } = schema !== undefined
    ? await sql<{ found: unknown }>`
      select to_regclass(format('%I.%I', ${schema}::text, ${MIGRATION_TABLE}::text)) as found
    `.execute(db)
    : await sql<{ found: unknown }>`
      select name as found from sqlite_master where type = 'table' and name = ${MIGRATION_TABLE}
    `.execute(db);
  return rows[0]?.found == null ? null : await migrationNames(db);
}

/** The names recorded in the bookkeeping table, which exists. */
async function migrationNames(
  db: Kysely<DirectoryDatabase & MigrationTables>,
): Promise<Set<string>> {
  const names = await db.selectFrom(MIGRATION_TABLE).select("name").execute();
  return new Set(names.map((r) => r.name));
}

/**
 * The names of `migrations` not in `done`, in order; throws when `done` holds one this version
 * does not know.
 */
function pendingMigrations(
  done: Set<string> | null,
  migrations: [string, Migration][],
): string[] {
  const unknown = [...done ?? []].filter((name) => !migrations.some(([known]) => known === name));
  if (unknown.length > 0) {
    throw new Error(
      `the database has migrations this version does not know (${unknown.join(", ")}); ` +
        "a newer version of the server migrated it",
    );
  }
  return migrations.map(([name]) => name).filter((name) => !done?.has(name));
}

/** The Postgres schema that unqualified table names resolve to. */
async function currentSchema(db: Kysely<DirectoryDatabase>): Promise<string> {
  const { rows } = await sql<{ schema: string | null }>`select current_schema() as schema`
    .execute(db);
  const schema = rows[0]?.schema;
  if (!schema) {
    throw new Error(
      "Postgres has no current schema: no schema on the search_path exists; create one or set search_path",
    );
  }
  return schema;
}

/** The message of an unknown thrown value. */
function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
