/** The directory on Kysely: the same queries on SQLite (`node:sqlite`) and Postgres (`pg`). */

import {
  CompiledQuery,
  type Kysely,
  type RawBuilder,
  type Selectable,
  sql,
  type Transaction,
} from "kysely";
import type {
  Directory,
  DirectoryRoom,
  DirectoryUser,
  Participant,
  ParticipantInput,
} from "../core/directory.ts";
import {
  type DirectoryDatabase,
  type DirectoryDialect,
  migrateDirectory,
  type RoomsTable,
  type UsersTable,
} from "./schema.ts";

/** Options of {@link KyselyDirectory}. */
export interface KyselyDirectoryOptions {
  /** The engine behind the Kysely instance. */
  dialect: DirectoryDialect;
  /** See {@link Directory.changeToken}; SQLite can answer it, Postgres cannot cheaply. */
  changeToken?: () => string | null;
  /** See {@link Directory.changeTokenLagMs}. */
  changeTokenLagMs?: number;
}

/** The user fields the directory stores, with their column names. */
const USER_COLUMNS = {
  username: "username",
  fullName: "full_name",
  email: "email",
  phone: "phone",
  profileImage: "profile_image",
  company: "company",
  role: "role",
  userType: "user_type",
} as const satisfies Record<Exclude<keyof DirectoryUser, "id">, keyof UsersTable>;

type UserField = keyof typeof USER_COLUMNS;
type UserColumn = (typeof USER_COLUMNS)[UserField];

/**
 * Rows per multi-row insert: 5 parameters a row stays far below SQLite's 32766 and Postgres's
 * 65535 bound parameters per statement.
 */
const INSERT_BATCH = 500;

/** Ids per `in (...)` list, for the same reason as {@link INSERT_BATCH}. */
const DELETE_BATCH = 1000;

/** Key of Postgres advisory locks on a room's participant list (two-int form, first half). */
const PARTICIPANTS_LOCK_CLASS = 0x64697270; // "dirp"

/**
 * Postgres errors after which a write may simply run again, as nothing of it stayed: a deadlock's
 * victim (40P01) and a serialization failure (40001).
 */
const RETRY_CODES = new Set(["40P01", "40001"]);

/** Most room locks a user's deletion takes (see `#lockRoomsOf`). */
const MAX_ROOM_LOCKS = 256;

/** Runs of a write that met {@link RETRY_CODES}, the first included, before its error is thrown. */
const WRITE_ATTEMPTS = 3;

/** A {@link Directory} on a Kysely instance for SQLite or Postgres. */
export class KyselyDirectory implements Directory {
  readonly #db: Kysely<DirectoryDatabase>;
  #roomAccessSql?: string;
  readonly #dialect: DirectoryDialect;
  readonly #changeToken?: () => string | null;
  /** See {@link Directory.changeTokenLagMs}. */
  readonly changeTokenLagMs: number;

  /** Wraps a Kysely instance; the directory owns it from now on and destroys it in `close()`. */
  constructor(db: Kysely<DirectoryDatabase>, options: KyselyDirectoryOptions) {
    this.#db = db;
    this.#dialect = options.dialect;
    this.#changeToken = options.changeToken;
    this.changeTokenLagMs = options.changeTokenLagMs ?? 0;
  }

  /** A token that changes with every commit to the database, null when the engine can't tell. */
  changeToken(): string | null {
    return this.#changeToken?.() ?? null;
  }

  /** The underlying Kysely instance, for tests and maintenance scripts. */
  get db(): Kysely<DirectoryDatabase> {
    return this.#db;
  }

  /** The engine behind this directory. */
  get dialect(): DirectoryDialect {
    return this.#dialect;
  }

  /** Creates or upgrades the schema. */
  async migrate(): Promise<void> {
    await migrateDirectory(this.#db, this.#dialect);
  }

  /** Checks that the database answers. */
  async ping(): Promise<void> {
    await sql`select 1`.execute(this.#db);
  }

  /** Inserts or updates a user; fields left undefined keep their stored value. */
  async upsertUser(
    user: Partial<DirectoryUser> & { id: string },
  ): Promise<{ user: DirectoryUser; previous: DirectoryUser | null }> {
    requireId("user id", user.id);
    const now = new Date().toISOString();
    const given: Partial<Record<UserColumn, string | null>> = {};
    for (const [field, column] of Object.entries(USER_COLUMNS) as [UserField, UserColumn][]) {
      const value = user[field];
      if (value !== undefined) given[column] = value;
    }
    return await this.#transaction(async (trx) => {
      // The row exists (and is locked) before it is read: a concurrent first save of the same
      // user waits here, so `previous` is always what this write replaced, never a stale read.
      const created = await trx.insertInto("users")
        .values({ id: user.id, created_at: now, updated_at: now })
        .onConflict((oc) => oc.column("id").doNothing())
        .returning("id")
        .executeTakeFirst();
      let read = trx.selectFrom("users").selectAll().where("id", "=", user.id);
      // SQLite's `begin immediate` already holds the database's write lock.
      if (this.#dialect === "postgres") read = read.forUpdate();
      const before = await read.executeTakeFirstOrThrow();
      const row = await trx.updateTable("users")
        .set({ ...given, updated_at: now })
        .where("id", "=", user.id)
        .returningAll()
        .executeTakeFirstOrThrow();
      return { user: toUser(row), previous: created ? null : toUser(before) };
    });
  }

  /** Reads a user. */
  async getUser(id: string): Promise<DirectoryUser | null> {
    const row = await this.#db.selectFrom("users").selectAll().where("id", "=", id)
      .executeTakeFirst();
    return row ? toUser(row) : null;
  }

  /** The rooms a user takes part in or owns (also a user it never stored), read without a lock. */
  async userRooms(id: string): Promise<{ kind: string; id: string }[]> {
    const rows = await this.#db.selectFrom("room_participants")
      .select(["room_kind as kind", "room_id as id"]).where("user_id", "=", id)
      .union(this.#db.selectFrom("rooms").select(["kind", "id"]).where("owner_id", "=", id))
      .execute();
    return rows.map((r) => ({ kind: r.kind, id: r.id }));
  }

  /** Deletes a user and their participations; says whether it existed, and which rooms it left. */
  async deleteUser(
    id: string,
  ): Promise<{ existed: boolean; role: string | null; rooms: { kind: string; id: string }[] }> {
    return await this.#transaction(async (trx) => {
      // The rooms' locks before any row, as every other writer of a room takes them: deleting
      // the participation first and then waiting for a room row that a save held (which waited
      // for that participation) was a deadlock, and one of the two requests failed.
      await this.#lockRoomsOf(trx, id);
      const left = await trx.deleteFrom("room_participants").where("user_id", "=", id)
        .returning(["room_kind", "room_id"]).execute();
      // An owner_id left behind would still let them in, and a user created again under the
      // same id would own the rooms without anyone saying so.
      const owned = await trx.updateTable("rooms").set({ owner_id: null })
        .where("owner_id", "=", id).returning(["kind", "id"]).execute();
      const deleted = await trx.deleteFrom("users").where("id", "=", id).returning("role")
        .executeTakeFirst();
      const rooms = new Map<string, { kind: string; id: string }>();
      for (const r of left) {
        rooms.set(`${r.room_kind}:${r.room_id}`, { kind: r.room_kind, id: r.room_id });
      }
      for (const r of owned) rooms.set(`${r.kind}:${r.id}`, { kind: r.kind, id: r.id });
      return {
        existed: deleted !== undefined,
        role: deleted?.role ?? null,
        rooms: [...rooms.values()],
      };
    });
  }

  /** Inserts or updates a room; fields left undefined keep their stored value. */
  async upsertRoom(
    room: { kind: string; id: string; title?: string | null; ownerId?: string | null },
  ): Promise<DirectoryRoom> {
    requireId("room kind", room.kind);
    requireId("room id", room.id);
    return await this.#retrying(() => this.#upsertRoomRow(this.#db, room));
  }

  /**
   * Inserts or updates a room and, when `participants` is given, replaces its participants, in
   * one transaction; `created` is true for exactly one of several concurrent first saves.
   */
  async saveRoom(
    room: { kind: string; id: string; title?: string | null; ownerId?: string | null },
    participants?: ParticipantInput[],
  ): Promise<{ room: DirectoryRoom; created: boolean; replaced: string[] }> {
    requireId("room kind", room.kind);
    requireId("room id", room.id);
    const wanted = participants && wantedParticipants(participants);
    return await this.#transaction(async (trx) => {
      // The room's lock (Postgres; SQLite's `begin immediate` is one already) orders this save
      // after or before a deletion or another save, so that what it reads before stays true.
      await this.lockRoom(trx, room.kind, room.id);
      const before = await trx.selectFrom("rooms").select("owner_id")
        .where("kind", "=", room.kind).where("id", "=", room.id)
        .executeTakeFirst();
      const saved = await this.#upsertRoomRow(trx, room);
      const replaced = wanted
        ? await this.#replaceParticipants(trx, room.kind, room.id, wanted)
        : [];
      if (room.ownerId !== undefined && before?.owner_id) replaced.push(before.owner_id);
      return { room: saved, created: before === undefined, replaced };
    });
  }

  async #upsertRoomRow(
    db: Kysely<DirectoryDatabase>,
    room: { kind: string; id: string; title?: string | null; ownerId?: string | null },
  ): Promise<DirectoryRoom> {
    const given: { title?: string | null; owner_id?: string | null } = {};
    if (room.title !== undefined) given.title = room.title;
    if (room.ownerId !== undefined) given.owner_id = room.ownerId;
    const insert = db.insertInto("rooms")
      .values({ kind: room.kind, id: room.id, ...given, created_at: new Date().toISOString() });
    const row = await (
      Object.keys(given).length === 0
        // With nothing to change, `do update` would still need a column to set; updating the
        // key to itself keeps the row and still makes RETURNING yield it.
        ? insert.onConflict((oc) =>
          oc.columns(["kind", "id"]).doUpdateSet((eb) => ({ id: eb.ref("excluded.id") }))
        )
        : insert.onConflict((oc) =>
          oc.columns(["kind", "id"]).doUpdateSet((eb) => ({
            ...("title" in given ? { title: eb.ref("excluded.title") } : {}),
            ...("owner_id" in given ? { owner_id: eb.ref("excluded.owner_id") } : {}),
          }))
        )
    ).returningAll().executeTakeFirstOrThrow();
    return toRoom(row);
  }

  /** Reads a room. */
  async getRoom(kind: string, id: string): Promise<DirectoryRoom | null> {
    const row = await this.#db.selectFrom("rooms").selectAll()
      .where("kind", "=", kind).where("id", "=", id)
      .executeTakeFirst();
    return row ? toRoom(row) : null;
  }

  /** Deletes a room and its participants; true when it existed. */
  async deleteRoom(kind: string, id: string): Promise<boolean> {
    return await this.#transaction(async (trx) => {
      // Under the room's lock, an addition that found the room waits until it is gone, and one
      // that got in first is deleted here.
      await this.lockRoom(trx, kind, id);
      await trx.deleteFrom("room_participants")
        .where("room_kind", "=", kind).where("room_id", "=", id)
        .execute();
      const result = await trx.deleteFrom("rooms")
        .where("kind", "=", kind).where("id", "=", id)
        .executeTakeFirst();
      return result.numDeletedRows > 0n;
    });
  }

  /**
   * Lists rooms of a kind ordered by id text (code point order on both engines), after `after`
   * when given; all of them when `limit` is left out.
   */
  async listRooms(
    kind: string,
    options: { limit?: number; after?: string } = {},
  ): Promise<DirectoryRoom[]> {
    const { limit, after } = options;
    if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 0)) {
      throw new RangeError(`listRooms: limit must be a whole number >= 0, got ${limit}`);
    }
    if (limit === 0) return [];
    let query = this.#db.selectFrom("rooms").selectAll().where("kind", "=", kind);
    if (after !== undefined) query = query.where("id", ">", after);
    query = query.orderBy("id");
    if (limit !== undefined) query = query.limit(limit);
    return (await query.execute()).map(toRoom);
  }

  /** Replaces a room's participants with exactly this list; the last entry for a user wins. */
  async setParticipants(
    kind: string,
    id: string,
    participants: ParticipantInput[],
  ): Promise<void> {
    requireId("room kind", kind);
    requireId("room id", id);
    const wanted = wantedParticipants(participants);
    await this.#transaction(async (trx) => {
      await this.lockRoom(trx, kind, id);
      await this.#replaceParticipants(trx, kind, id, wanted);
    });
  }

  /**
   * Replaces the room's participant rows with `wanted` (user id → role; undefined: `member` when
   * new, the stored role otherwise), inside `trx`; returns the user ids of the rows there were
   * before.
   */
  async #replaceParticipants(
    trx: Transaction<DirectoryDatabase>,
    kind: string,
    id: string,
    wanted: Map<string, string | undefined>,
  ): Promise<string[]> {
    // Rows of users who stay are updated rather than replaced, so that they keep their
    // `created_at` (when they joined).
    const existing = await trx.selectFrom("room_participants").select("user_id")
      .where("room_kind", "=", kind).where("room_id", "=", id)
      .execute();
    const leaving = existing.map((r) => r.user_id).filter((userId) => !wanted.has(userId));
    for (const batch of chunks(leaving, DELETE_BATCH)) {
      await trx.deleteFrom("room_participants")
        .where("room_kind", "=", kind).where("room_id", "=", id)
        .where("user_id", "in", batch)
        .execute();
    }
    const now = new Date().toISOString();
    const rows = (given: boolean) =>
      [...wanted].filter(([, role]) => (role !== undefined) === given).map(([userId, role]) => ({
        room_kind: kind,
        room_id: id,
        user_id: userId,
        role: role ?? "member",
        created_at: now,
      }));
    for (const batch of chunks(rows(true), INSERT_BATCH)) {
      await trx.insertInto("room_participants").values(batch)
        .onConflict((oc) =>
          oc.columns(["room_kind", "room_id", "user_id"])
            .doUpdateSet((eb) => ({ role: eb.ref("excluded.role") }))
        )
        .execute();
    }
    // Listed without a role: one already there keeps the role it has.
    for (const batch of chunks(rows(false), INSERT_BATCH)) {
      await trx.insertInto("room_participants").values(batch)
        .onConflict((oc) => oc.columns(["room_kind", "room_id", "user_id"]).doNothing())
        .execute();
    }
    return existing.map((r) => r.user_id);
  }

  /**
   * Adds or updates one participant; with `roomMustExist`, only while the directory stores the
   * room (false when it does not, and nothing is written).
   */
  async addParticipant(
    kind: string,
    id: string,
    participant: ParticipantInput,
    options: { roomMustExist?: boolean } = {},
  ): Promise<boolean> {
    requireId("room kind", kind);
    requireId("room id", id);
    requireId("participant user id", participant.userId);
    if (!options.roomMustExist) {
      await this.#retrying(() => insertParticipant(this.#db, kind, id, participant));
      return true;
    }
    return await this.#transaction(async (trx) => {
      // Checked under the room's lock: a deletion between the check and the insert would leave
      // the row behind, granting the user the room if it is ever created again.
      await this.lockRoom(trx, kind, id);
      if (!(await roomExists(trx, kind, id))) return false;
      await insertParticipant(trx, kind, id, participant);
      return true;
    });
  }

  /** Removes one participant; true when they were one. */
  async removeParticipant(kind: string, id: string, userId: string): Promise<boolean> {
    const result = await this.#retrying(() =>
      this.#db.deleteFrom("room_participants")
        .where("room_kind", "=", kind).where("room_id", "=", id).where("user_id", "=", userId)
        .executeTakeFirst()
    );
    return result.numDeletedRows > 0n;
  }

  /** Lists a room's participants, ordered by user id. */
  async listParticipants(kind: string, id: string): Promise<Participant[]> {
    const rows = await this.#db.selectFrom("room_participants").select(["user_id", "role"])
      .where("room_kind", "=", kind).where("room_id", "=", id)
      .orderBy("user_id")
      .execute();
    return rows.map((r) => ({ userId: r.user_id, role: r.role }));
  }

  /** The participant entry of `userId` in the room, or null. */
  async getParticipant(kind: string, id: string, userId: string): Promise<Participant | null> {
    const row = await this.#db.selectFrom("room_participants").select(["user_id", "role"])
      .where("room_kind", "=", kind).where("room_id", "=", id).where("user_id", "=", userId)
      .executeTakeFirst();
    return row ? { userId: row.user_id, role: row.role } : null;
  }

  /** Room known, owner and participation in one query: access is checked on every send. */
  async roomAccess(
    kind: string,
    id: string,
    userId: string,
  ): Promise<{ known: boolean; ownerId: string | null; participant: boolean }> {
    // Built and compiled once: access is checked on every send, and Kysely's query building
    // costs more than SQLite's answer. Parameter order: owner, known, participant.
    this.#roomAccessSql ??= this.#db.selectNoFrom((eb) => [
      eb.selectFrom("rooms").select("owner_id")
        .where("kind", "=", kind).where("id", "=", id).as("owner_id"),
      eb.exists(
        eb.selectFrom("rooms").select(eb.lit(1).as("one"))
          .where("kind", "=", kind).where("id", "=", id),
      ).as("known"),
      eb.exists(
        eb.selectFrom("room_participants").select(eb.lit(1).as("one"))
          .where("room_kind", "=", kind).where("room_id", "=", id).where("user_id", "=", userId),
      ).as("participant"),
    ]).compile().sql;
    const { rows } = await this.#db.executeQuery<
      { owner_id: string | null; known: unknown; participant: unknown }
    >(CompiledQuery.raw(this.#roomAccessSql, [kind, id, kind, id, kind, id, userId]));
    const row = rows[0];
    // SQLite answers 0/1, Postgres true/false.
    return {
      known: Number(row.known) === 1,
      ownerId: row.owner_id ?? null,
      participant: Number(row.participant) === 1,
    };
  }

  /** Closes the connection pool; later calls are harmless. */
  async close(): Promise<void> {
    await this.#db.destroy();
  }

  /**
   * Runs `fn` in a transaction under read committed, and again (up to {@link WRITE_ATTEMPTS} runs
   * in all) when Postgres ends it as a deadlock's victim or for a serialization failure.
   *
   * The level is set on every transaction, not left to the database's default: under a
   * `default_transaction_isolation` of repeatable read or serializable (which operators set per
   * database or role), concurrent writes to one row fail with 40001 instead of waiting, and the
   * room locks (see {@link lockRoom}) assume that a statement sees what was committed before it.
   * SQLite ignores the level: its transactions are serializable, and `begin immediate` lets one
   * writer in at a time.
   */
  #transaction<T>(fn: (trx: Transaction<DirectoryDatabase>) => Promise<T>): Promise<T> {
    return this.#retrying(() =>
      this.#db.transaction().setIsolationLevel("read committed").execute(fn)
    );
  }

  /**
   * Runs `write` (a transaction or a single statement, which rolled back wholly when it failed)
   * again after a deadlock or a serialization failure, after a short random pause so that the
   * two parties do not meet again; the last failure is thrown (the API answers it with 503).
   */
  async #retrying<T>(write: () => Promise<T>): Promise<T> {
    for (let attempt = 1;; attempt++) {
      try {
        return await write();
      } catch (error) {
        if (attempt >= WRITE_ATTEMPTS || !retryable(error)) throw error;
        await new Promise((resolve) => setTimeout(resolve, attempt * (5 + Math.random() * 20)));
      }
    }
  }

  /**
   * Takes the locks of every room `userId` takes part in or owns, by ascending lock key, before
   * their deletion writes a row.
   *
   * Lock order of the directory's writes on Postgres, which keeps them from deadlocking: room
   * locks first, several of them (only here) by ascending key; then rows, each room's only under
   * its lock (saves write the room row, then its participants; deletions the participants, then
   * the room row; a user's deletion the participants and rooms rows of the rooms it locked); the
   * `users` row last, or alone (upsertUser). Single-statement writes (removeParticipant,
   * upsertRoom, addParticipant without `roomMustExist`) hold one row and wait for nothing while
   * they hold it.
   *
   * A participation or ownership committed after the rooms were read is locked in another round,
   * out of order; a deadlock that this causes (another user's deletion locking the same rooms)
   * is detected by Postgres and the transaction runs again, as is one caused by a row that
   * arrives after the last round.
   */
  async #lockRoomsOf(trx: Transaction<DirectoryDatabase>, userId: string): Promise<void> {
    if (this.#dialect !== "postgres") return;
    const held = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const { rows } = await sql<{ key: number }>`
        select ${roomLockKey(sql.ref("room_kind"), sql.ref("room_id"))} as key
          from room_participants where user_id = ${userId}
        union
        select ${roomLockKey(sql.ref("kind"), sql.ref("id"))}
          from rooms where owner_id = ${userId}
      `.execute(trx);
      const keys = rows.map((r) => r.key).filter((key) => !held.has(key)).sort((a, b) => a - b);
      if (keys.length === 0) return;
      // Postgres keeps every advisory lock in a lock table shared by all sessions (64 a
      // connection by default): a user in 20,000 rooms ran it out ("out of shared memory"), and
      // their deletion failed every time. Past the bound no room is locked: a save that crosses
      // the deletion is then a deadlock Postgres detects, and the loser runs again.
      if (held.size + keys.length > MAX_ROOM_LOCKS) return;
      // One statement; `unnest` yields the keys, and so takes the locks, in the array's order.
      await sql`select pg_advisory_xact_lock(${sql.lit(PARTICIPANTS_LOCK_CLASS)}, key)
        from unnest(${keys}::int4[]) as key`.execute(trx);
      for (const key of keys) held.add(key);
    }
  }

  /**
   * Takes the room's lock inside `trx`, held until it ends: every change to a room's row or its
   * participants that reads before it writes takes it first (saves, replacements, additions that
   * need the room, deletion, a user's deletion: see {@link #lockRoomsOf} for the order). Under
   * Postgres's read committed, two concurrent replacements would each read the list before the
   * other's insert and end with the union of both, and an addition could find the room just
   * before a deletion and insert after it. SQLite needs nothing: its `begin immediate` already
   * lets one writer in at a time. Public so that tests can hold it as another writer would.
   */
  async lockRoom(
    trx: Transaction<DirectoryDatabase>,
    kind: string,
    id: string,
  ): Promise<void> {
    if (this.#dialect !== "postgres") return;
    await sql`select pg_advisory_xact_lock(${sql.lit(PARTICIPANTS_LOCK_CLASS)}, ${
      roomLockKey(sql`${kind}`, sql`${id}`)
    })`.execute(trx);
  }
}

/**
 * The second half of a room's advisory lock key, from its kind and id (values or columns); a hash
 * collision only makes two rooms wait for each other, never mixes their lists.
 */
function roomLockKey(kind: RawBuilder<unknown>, id: RawBuilder<unknown>): RawBuilder<number> {
  return sql<number>`hashtext(${kind} || chr(1) || ${id})`;
}

/** Whether a failed write may run again: Postgres aborted it for a deadlock or a serialization. */
function retryable(error: unknown): boolean {
  const { code } = (error ?? {}) as { code?: unknown };
  return typeof code === "string" && RETRY_CODES.has(code);
}

/** Participants as user id → role (undefined when not given); the last entry for a user wins. */
function wantedParticipants(participants: ParticipantInput[]): Map<string, string | undefined> {
  const wanted = new Map<string, string | undefined>();
  for (const p of participants) {
    requireId("participant user id", p.userId);
    wanted.set(p.userId, p.role);
  }
  return wanted;
}

/** Inserts a participant row, or updates the role of one already there. */
async function insertParticipant(
  db: Kysely<DirectoryDatabase>,
  kind: string,
  id: string,
  participant: ParticipantInput,
): Promise<void> {
  await db.insertInto("room_participants")
    .values({
      room_kind: kind,
      room_id: id,
      user_id: participant.userId,
      role: participant.role ?? "member",
      created_at: new Date().toISOString(),
    })
    .onConflict((oc) => {
      const columns = oc.columns(["room_kind", "room_id", "user_id"]);
      // Without a role, adding someone already there changes nothing.
      return participant.role === undefined
        ? columns.doNothing()
        : columns.doUpdateSet((eb) => ({ role: eb.ref("excluded.role") }));
    })
    .execute();
}

/** Whether the directory stores the room, read inside `trx`. */
async function roomExists(
  trx: Transaction<DirectoryDatabase>,
  kind: string,
  id: string,
): Promise<boolean> {
  const row = await trx.selectFrom("rooms").select("id")
    .where("kind", "=", kind).where("id", "=", id)
    .executeTakeFirst();
  return row !== undefined;
}

/** Rejects an empty key, which is always a caller's bug and would be hard to delete later. */
function requireId(what: string, value: unknown): void {
  if (typeof value !== "string" || value === "") {
    throw new TypeError(`${what} must be a non-empty string, got ${JSON.stringify(value)}`);
  }
}

/** Maps a `users` row to the directory's user. */
function toUser(row: Selectable<UsersTable>): DirectoryUser {
  return {
    id: row.id,
    username: row.username,
    fullName: row.full_name,
    email: row.email,
    phone: row.phone,
    profileImage: row.profile_image,
    company: row.company,
    role: row.role,
    userType: row.user_type,
  };
}

/** Maps a `rooms` row to the directory's room. */
function toRoom(row: Selectable<RoomsTable>): DirectoryRoom {
  return {
    kind: row.kind,
    id: row.id,
    title: row.title,
    ownerId: row.owner_id,
    createdAt: isoTimestamp(row.created_at),
  };
}

/** ISO 8601 UTC text of a timestamp as either engine returns it. */
function isoTimestamp(value: string | Date): string {
  return value instanceof Date ? value.toISOString() : value;
}

/** Splits a list into consecutive slices of at most `size` items. */
function* chunks<T>(items: readonly T[], size: number): Generator<T[]> {
  for (let i = 0; i < items.length; i += size) yield items.slice(i, i + size);
}
