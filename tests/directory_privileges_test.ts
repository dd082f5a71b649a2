/**
 * The rights the server's Postgres role needs: a schema already migrated opens with USAGE on it and
 * the tables' SELECT, INSERT, UPDATE and DELETE, as deployments that keep DDL to a deploy role
 * run the application; CREATE on the schema is needed only while migrations are pending.
 *
 * The role that owns the test schema gives up its own CREATE on it, which leaves it the rights of
 * such an application role (owners keep their tables' rights, no more than the API uses).
 */

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { type Backend, BACKENDS, requirePostgresInCi, startApiServer } from "./api_helpers.ts";
import { openDirectory } from "../src/directory/open.ts";
import { createPgPool } from "../src/directory/pg_pool.ts";

requirePostgresInCi("directory privileges");

const postgres = BACKENDS.find((b) => b.name === "postgres")!;

/** A fresh Postgres schema, migrated first when `migrated`, on which its role has no CREATE. */
function withoutCreate(migrated: boolean): Backend {
  return {
    ...postgres,
    async create() {
      const database = await postgres.create();
      try {
        const url = new URL(database.url!);
        const schema = url.searchParams.get("options")!.replace("-c search_path=", "");
        if (migrated) await (await openDirectory(database.url, "/nonexistent-unused")).close();
        const pool = createPgPool({ connectionString: database.url!, max: 1 });
        try {
          await pool.query(`revoke create on schema "${schema}" from current_user`);
          const { rows } = await pool.query<{ create: boolean }>(
            "select has_schema_privilege(current_schema(), 'CREATE') as create",
          );
          assertEquals(rows[0].create, false);
        } finally {
          await pool.end();
        }
        return database;
      } catch (err) {
        await database.drop();
        throw err;
      }
    },
  };
}

Deno.test({
  name:
    "directory privileges [postgres]: a migrated schema opens, and the admin API works, for a role without CREATE on it",
  ignore: postgres.ignore,
  async fn() {
    const server = await startApiServer(withoutCreate(true));
    try {
      assertEquals(
        (await server.api("PUT", "/api/users/u", { json: { username: "ann" } })).status,
        200,
      );
      assertEquals(
        (await server.api("PUT", "/api/rooms/ticket/1", {
          json: { owner_id: "u", participants: [{ user_id: "u" }, { user_id: "v" }] },
        })).status,
        201,
      );
      assertEquals((await server.api("GET", "/api/users/u")).body.username, "ann");
      assertEquals((await server.api("DELETE", "/api/users/u")).status, 204);
      const room = await server.api("GET", "/api/rooms/ticket/1");
      assertEquals(room.body.participants, [{ user_id: "v", role: "member" }]);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "directory privileges [postgres]: a schema with pending migrations and no CREATE on it stops the start, saying what is needed",
  ignore: postgres.ignore,
  async fn() {
    const error = await assertRejects(() => startApiServer(withoutCreate(false)));
    assert(
      error.message.includes(
        "DATABASE_URL: the directory could not be opened: directory migration failed: " +
          "permission denied for schema ",
      ),
      error.message,
    );
    assert(
      error.message.includes(
        "the schema needs migrations (0001_users_rooms_participants), which need CREATE on it",
      ),
      error.message,
    );
  },
});
