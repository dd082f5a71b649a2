/**
 * The `node:sqlite` Kysely dialect on its own: pragmas, results, transactions and the connection
 * lock, and several processes sharing one database file.
 */

import { DatabaseSync } from "node:sqlite";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Generated, Kysely, sql } from "kysely";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { NodeSqliteDialect } from "../src/directory/sqlite_dialect.ts";
import { openDirectory } from "../src/directory/open.ts";
import { holdWriteLock } from "./server_process.ts";

interface Scratch {
  items: { id: Generated<number>; name: string; flag: number | null; at: string | null };
  counter: { id: number; value: number };
}

/** Runs `fn` on a Kysely over a fresh SQLite file, then closes and deletes it. */
async function withDb(
  fn: (db: Kysely<Scratch>, path: string) => Promise<void>,
  busyTimeoutMs?: number,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "directory_sqlite_" });
  const path = join(dir, "scratch.sqlite3");
  const db = new Kysely<Scratch>({
    dialect: new NodeSqliteDialect({ database: path, busyTimeoutMs }),
  });
  try {
    await db.schema.createTable("items")
      .addColumn("id", "integer", (c) => c.primaryKey().autoIncrement())
      .addColumn("name", "text", (c) => c.notNull())
      .addColumn("flag", "integer")
      .addColumn("at", "text")
      .execute();
    await db.schema.createTable("counter")
      .addColumn("id", "integer", (c) => c.primaryKey())
      .addColumn("value", "integer", (c) => c.notNull())
      .execute();
    await db.insertInto("counter").values({ id: 1, value: 0 }).execute();
    await fn(db, path);
  } finally {
    await db.destroy();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The single value of a one-row pragma. */
async function pragma(db: Kysely<Scratch>, name: string): Promise<unknown> {
  const { rows } = await sql<Record<string, unknown>>`pragma ${sql.raw(name)}`.execute(db);
  return Object.values(rows[0])[0];
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 1));

Deno.test("sqlite dialect: WAL and foreign keys are on; SQLite itself waits 5 ms for a lock (the rest of the busy timeout is waited without holding the thread)", async () => {
  await withDb(async (db) => {
    assertEquals(await pragma(db, "journal_mode"), "wal");
    assertEquals(await pragma(db, "foreign_keys"), 1);
    assertEquals(await pragma(db, "busy_timeout"), 5);
  });
  await withDb(async (db) => {
    assertEquals(await pragma(db, "busy_timeout"), 2);
  }, 2);
});

Deno.test("sqlite directory: opening a new file whose write lock another process holds waits for it, though SQLite refuses making it WAL at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "directory_sqlite_" });
  const path = join(dir, "new.sqlite3");
  const lock = await holdWriteLock(path);
  const started = performance.now();
  const released = new Promise((resolve) => setTimeout(resolve, 300)).then(() => lock.release());
  try {
    const directory = await openDirectory(path, dir, { timeoutMs: 10_000 });
    try {
      assert(performance.now() - started >= 300, "opened while the lock was held");
      assertEquals(await directory.getUser("nobody"), null);
      const raw = new DatabaseSync(path);
      try {
        assertEquals(raw.prepare("pragma journal_mode").get()?.journal_mode, "wal");
      } finally {
        raw.close();
      }
    } finally {
      await directory.close();
    }
  } finally {
    await released;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sqlite dialect: writes report affected rows and the insert id", async () => {
  await withDb(async (db) => {
    const first = await db.insertInto("items").values({ name: "a" }).executeTakeFirst();
    assertEquals(first.insertId, 1n);
    assertEquals(first.numInsertedOrUpdatedRows, 1n);
    const many = await db.insertInto("items").values([{ name: "b" }, { name: "c" }])
      .executeTakeFirst();
    assertEquals(many.insertId, 3n);
    assertEquals(many.numInsertedOrUpdatedRows, 2n);
    const updated = await db.updateTable("items").set({ flag: 7 }).where("id", ">", 1)
      .executeTakeFirst();
    assertEquals(updated.numUpdatedRows, 2n);
    const deleted = await db.deleteFrom("items").where("id", "=", 99).executeTakeFirst();
    assertEquals(deleted.numDeletedRows, 0n);
    const returned = await db.insertInto("items").values({ name: "d" }).returning(["id", "name"])
      .executeTakeFirstOrThrow();
    assertEquals(returned, { id: 4, name: "d" });
  });
});

Deno.test("sqlite dialect: rows are plain objects and booleans and dates bind", async () => {
  await withDb(async (db) => {
    const at = new Date("2024-05-06T07:08:09.010Z");
    await db.insertInto("items")
      .values({ name: "x", flag: true as unknown as number, at: at as unknown as string })
      .execute();
    const row = await db.selectFrom("items").selectAll().executeTakeFirstOrThrow();
    assertEquals(Object.getPrototypeOf(row), Object.prototype);
    assertEquals(row, { id: 1, name: "x", flag: 1, at: "2024-05-06T07:08:09.010Z" });
  });
});

Deno.test("sqlite dialect: a failed transaction rolls back", async () => {
  await withDb(async (db) => {
    await assertRejects(
      () =>
        db.transaction().execute(async (trx) => {
          await trx.insertInto("items").values({ name: "doomed" }).execute();
          throw new Error("boom");
        }),
      /boom/,
    );
    assertEquals(await db.selectFrom("items").selectAll().execute(), []);
    // The connection is usable, and not left inside a transaction.
    await db.transaction().execute((trx) =>
      trx.insertInto("items").values({ name: "ok" }).execute()
    );
    assertEquals((await db.selectFrom("items").select("name").execute()).map((r) => r.name), [
      "ok",
    ]);
  });
});

Deno.test("sqlite dialect: a transaction SQLite already rolled back still rejects cleanly", async () => {
  await withDb(async (db) => {
    // `raise(rollback)` ends the transaction inside SQLite; the driver must not then fail on
    // its own `rollback` and hide the original error.
    await sql`create trigger no_bad before insert on items when new.name = 'bad'
      begin select raise(rollback, 'bad name'); end`.execute(db);
    await assertRejects(
      () =>
        db.transaction().execute(async (trx) => {
          await trx.insertInto("items").values({ name: "good" }).execute();
          await trx.insertInto("items").values({ name: "bad" }).execute();
        }),
      /bad name/,
    );
    assertEquals(await db.selectFrom("items").selectAll().execute(), []);
  });
});

Deno.test("sqlite dialect: concurrent transactions on the one connection are serialized", async () => {
  await withDb(async (db) => {
    // Each transaction reads, yields to the event loop, then writes: interleaved on one
    // connection they would nest `begin`s or lose increments.
    await Promise.all(Array.from({ length: 20 }, () =>
      db.transaction().execute(async (trx) => {
        const { value } = await trx.selectFrom("counter").select("value").where("id", "=", 1)
          .executeTakeFirstOrThrow();
        await tick();
        await trx.updateTable("counter").set({ value: value + 1 }).where("id", "=", 1).execute();
      })));
    const { value } = await db.selectFrom("counter").select("value").executeTakeFirstOrThrow();
    assertEquals(value, 20);
  });
});

Deno.test("sqlite dialect: savepoints roll back part of a transaction", async () => {
  await withDb(async (db) => {
    const trx = await db.startTransaction().execute();
    await trx.insertInto("items").values({ name: "kept" }).execute();
    const sp = await trx.savepoint("sp 1").execute();
    await sp.insertInto("items").values({ name: "dropped" }).execute();
    const back = await sp.rollbackToSavepoint("sp 1").execute();
    await back.releaseSavepoint("sp 1").execute();
    await back.commit().execute();
    assertEquals((await db.selectFrom("items").select("name").execute()).map((r) => r.name), [
      "kept",
    ]);
  });
});

Deno.test("sqlite dialect: streaming yields every row", async () => {
  await withDb(async (db) => {
    await db.insertInto("items").values(Array.from({ length: 7 }, (_, i) => ({ name: `n${i}` })))
      .execute();
    const names: string[] = [];
    for await (const row of db.selectFrom("items").select("name").orderBy("id").stream(3)) {
      names.push(row.name);
    }
    assertEquals(names, ["n0", "n1", "n2", "n3", "n4", "n5", "n6"]);
  });
});

Deno.test("sqlite dialect: an open DatabaseSync is taken over and closed on destroy", async () => {
  const database = new DatabaseSync(":memory:");
  const db = new Kysely<Scratch>({ dialect: new NodeSqliteDialect({ database }) });
  const { rows } = await sql<{ n: number }>`select 41 + 1 as n`.execute(db);
  assertEquals(rows, [{ n: 42 }]);
  await db.destroy();
  assertEquals(database.isOpen, false);
});

Deno.test("sqlite dialect: SQL errors reject with SQLite's message", async () => {
  await withDb(async (db) => {
    await assertRejects(() => sql`select * from no_such_table`.execute(db), /no such table/);
    await assertRejects(
      () => db.insertInto("counter").values({ id: 1, value: 1 }).execute(),
      /UNIQUE constraint failed/,
    );
    await db.selectFrom("counter").selectAll().execute();
  });
});

Deno.test({
  name: "sqlite directory: several processes migrate and write one file at once",
  // Spawns `deno`; the subprocesses run their own Kysely and SQLite, so nothing leaks here.
  async fn() {
    const root = dirname(dirname(fileURLToPath(import.meta.url)));
    const dir = await Deno.makeTempDir({ prefix: "directory_processes_" });
    const path = join(dir, "shared.sqlite3");
    const workers = 3;
    const rounds = 40;
    const script = `
      import { openDirectory } from ${JSON.stringify(join(root, "src/directory/open.ts"))};
      const [path, worker, rounds] = Deno.args;
      const directory = await openDirectory(path, "/nonexistent-unused");
      try {
        for (let i = 0; i < Number(rounds); i++) {
          await directory.upsertUser({ id: "shared", username: "w" + worker + "-" + i });
          await directory.upsertUser({ id: "u" + worker + "-" + i, username: "w" + worker });
          await directory.setParticipants("chat", "shared", [
            { userId: "w" + worker, role: "owner" },
            { userId: "n" + i, role: "member" },
          ]);
          await directory.addParticipant("chat", "w" + worker, { userId: "u" + i, role: "member" });
        }
      } finally {
        await directory.close();
      }
    `;
    try {
      const results = await Promise.all(
        Array.from({ length: workers }, (_, worker) =>
          new Deno.Command(Deno.execPath(), {
            args: ["eval", "--quiet", script, path, String(worker), String(rounds)],
            cwd: root,
            stdin: "null",
            stdout: "piped",
            stderr: "piped",
          }).output()),
      );
      for (const result of results) {
        assert(result.success, new TextDecoder().decode(result.stderr));
      }
      const directory = await openDirectory(path, "/nonexistent-unused");
      try {
        for (let worker = 0; worker < workers; worker++) {
          assertEquals((await directory.listParticipants("chat", `w${worker}`)).length, rounds);
          assertEquals(
            (await directory.getUser(`u${worker}-${rounds - 1}`))?.username,
            `w${worker}`,
          );
        }
        assertEquals((await directory.listParticipants("chat", "shared")).length, 2);
        assert((await directory.getUser("shared"))?.username?.endsWith(`-${rounds - 1}`));
      } finally {
        await directory.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
