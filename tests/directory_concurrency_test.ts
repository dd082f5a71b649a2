/**
 * Concurrent admin API writes on the relational directory: on Postgres they wait for each other
 * (room locks taken in one order, read committed whatever the database's default) instead of
 * failing with a deadlock (40P01) or a serialization failure (40001); one Postgres aborts anyway
 * runs again, and one that keeps failing is answered 503 with Retry-After, not 500. SQLite lets one
 * writer in at a time, so there the same races must simply keep working.
 */

import { sql } from "kysely";
import { assert, assertEquals, delay } from "./assert.ts";
import {
  type ApiServer,
  apiTest,
  type Backend,
  BACKENDS,
  directoryWith,
  requirePostgresInCi,
  startApiServer,
} from "./api_helpers.ts";
import { KyselyDirectory } from "../src/directory/kysely_directory.ts";

requirePostgresInCi("directory concurrency");

const postgres = BACKENDS.find((b) => b.name === "postgres")!;

/** The server's directory as a second connection sees it, with its Kysely instance. */
async function secondConnection(server: ApiServer): Promise<KyselyDirectory> {
  const directory = await server.directory();
  assert(directory instanceof KyselyDirectory);
  return directory;
}

/** Counts answers by status, 5xx with their message. */
function tally(
  into: Record<string, number>,
  answers: { status: number; body: Record<string, unknown> }[],
): void {
  for (const a of answers) {
    const key = a.status >= 500 ? `${a.status} ${a.body.message}` : String(a.status);
    into[key] = (into[key] ?? 0) + 1;
  }
}

for (const level of ["repeatable read", "serializable"]) {
  Deno.test({
    name:
      `directory concurrency [postgres]: concurrent admin writes to one room and one user all succeed under default_transaction_isolation=${level}`,
    ignore: postgres.ignore,
    async fn() {
      // As `alter database ... set default_transaction_isolation` would give every connection.
      const backend: Backend = {
        ...postgres,
        async create() {
          const database = await postgres.create();
          const url = new URL(database.url!);
          url.searchParams.set(
            "options",
            `${url.searchParams.get("options")} -c default_transaction_isolation=${
              level.replace(" ", "\\ ")
            }`,
          );
          return { ...database, url: url.toString() };
        },
      };
      const server = await startApiServer(backend);
      try {
        const { db } = await secondConnection(server);
        const shown = await sql<{ level: string }>`
          select current_setting('default_transaction_isolation') as level
        `.execute(db);
        assertEquals(shown.rows[0].level, level);
        const statuses: Record<string, number> = {};
        let createdTwice = 0;
        for (let i = 0; i < 15; i++) {
          await server.api("PUT", `/api/rooms/ticket/old${i}`, {
            json: { participants: [{ user_id: "1" }, { user_id: "2" }] },
          });
          const answers = await Promise.all([
            server.api("PUT", `/api/rooms/ticket/r${i}`, {
              json: { participants: [{ user_id: "1" }] },
            }),
            server.api("PUT", `/api/rooms/ticket/r${i}`, {
              json: { participants: [{ user_id: "2" }] },
            }),
            server.api("PUT", `/api/users/u${i}`, { json: { username: "a" } }),
            server.api("PUT", `/api/users/u${i}`, { json: { email: "b@example.com" } }),
            server.api("PUT", `/api/rooms/ticket/old${i}`, {
              json: { participants: [{ user_id: "1", role: "lead" }, { user_id: "2" }] },
            }),
            server.api("DELETE", `/api/rooms/ticket/old${i}/participants/1`),
            server.api("POST", `/api/rooms/ticket/old${i}/participants`, {
              json: { user_id: "2", role: "observer" },
            }),
          ]);
          if (answers[0].status === 201 && answers[1].status === 201) createdTwice++;
          tally(statuses, answers);
        }
        assertEquals(
          Object.keys(statuses).filter((s) => s.startsWith("5")),
          [],
          JSON.stringify(statuses),
        );
        assertEquals(createdTwice, 0);
      } finally {
        await server.close();
      }
    },
  });
}

Deno.test({
  name:
    "directory concurrency [postgres]: a save that Postgres chose as a deadlock's victim runs again and succeeds",
  ignore: postgres.ignore,
  async fn() {
    const server = await startApiServer(postgres);
    try {
      assertEquals(
        (await server.api("PUT", "/api/rooms/ticket/A", {
          json: { participants: [{ user_id: "x" }] },
        })).status,
        201,
      );
      const { db } = await secondConnection(server);
      // Another application writes x's participation, then room A's row, in one transaction;
      // the save in between writes the room row, then the participants: a deadlock, and the
      // save, which waited first, is the one Postgres aborts (after deadlock_timeout, 1 s).
      const saved = await db.connection().execute(async (conn) => {
        await sql`begin`.execute(conn);
        await sql`update room_participants set role = 'held'
          where room_kind = 'ticket' and room_id = 'A' and user_id = 'x'`.execute(conn);
        const saving = server.api("PUT", "/api/rooms/ticket/A", {
          json: { title: "new", participants: [] },
        });
        await delay(300);
        await sql`update rooms set title = 'theirs' where kind = 'ticket' and id = 'A'`
          .execute(conn);
        await sql`commit`.execute(conn);
        return await saving;
      });
      assertEquals(saved.status, 200, JSON.stringify(saved.body));
      assertEquals(saved.body.title, "new");
      assertEquals(saved.body.participants, []);
    } finally {
      await server.close();
    }
  },
});

apiTest(
  "directory concurrency: a write the directory kept losing to deadlocks is answered 503 with Retry-After",
  async (server) => {
    const saved = await server.api("PUT", "/api/rooms/ticket/A", { json: { title: "t" } });
    assertEquals(saved.status, 503, JSON.stringify(saved.body));
    assertEquals(saved.headers.get("retry-after"), "1");
    assertEquals(
      saved.body.message,
      "The directory was busy with a conflicting change; try again shortly",
    );
  },
  {},
  {
    directory: directoryWith(
      "saveRoom",
      () => () => Promise.reject(Object.assign(new Error("deadlock detected"), { code: "40P01" })),
    ),
  },
);

apiTest(
  "directory concurrency: a write that kept failing to serialize is answered 503 with Retry-After",
  async (server) => {
    // Known to the directory: an id it does not know is answered 404 before the deletion.
    await server.api("PUT", "/api/users/u", { json: { username: "u" } });
    const deleted = await server.api("DELETE", "/api/users/u");
    assertEquals(deleted.status, 503, JSON.stringify(deleted.body));
    assertEquals(deleted.headers.get("retry-after"), "1");
  },
  {},
  {
    directory: directoryWith("deleteUser", () => () =>
      Promise.reject(
        Object.assign(new Error("could not serialize access due to concurrent update"), {
          code: "40001",
        }),
      )),
  },
);

Deno.test({
  name:
    "directory concurrency [postgres]: a user's deletion waits for the locks of the rooms they take part in and own before it writes a row",
  ignore: postgres.ignore,
  async fn() {
    const server = await startApiServer(postgres);
    try {
      await server.api("PUT", "/api/users/u", { json: { username: "u" } });
      await server.api("PUT", "/api/rooms/ticket/B", { json: { owner_id: "u" } });
      await server.api("PUT", "/api/rooms/ticket/A", {
        json: { participants: [{ user_id: "u" }, { user_id: "v" }] },
      });
      const directory = await secondConnection(server);
      for (const held of ["A", "B"]) {
        await server.api("PUT", "/api/rooms/ticket/A", {
          json: { participants: [{ user_id: "u" }, { user_id: "v" }] },
        });
        await server.api("PUT", "/api/rooms/ticket/B", { json: { owner_id: "u" } });
        // A save of the room holding its lock, as saveRoom does before it writes the room's row
        // and participants: a deletion that wrote u's rows first and then waited for that row
        // was a deadlock (40P01) when the save reached them.
        let settled = false;
        const { deleting } = await directory.db.transaction().execute(async (trx) => {
          await directory.lockRoom(trx, "ticket", held);
          const deleting = server.api("DELETE", "/api/users/u").finally(() => settled = true);
          await delay(300);
          assert(!settled, `the deletion went ahead while room ${held}'s lock was held`);
          // Wrapped: a returned promise would be awaited before the commit lets the lock go.
          return { deleting };
        });
        const deleted = await deleting;
        assertEquals(deleted.status, 204, JSON.stringify(deleted.body));
        const room = await server.api("GET", `/api/rooms/ticket/${held}`);
        assertEquals(room.body.owner_id, null);
        assert(
          !(room.body.participants as { user_id: string }[]).some((p) => p.user_id === "u"),
          JSON.stringify(room.body),
        );
      }
    } finally {
      await server.close();
    }
  },
});

apiTest(
  "directory concurrency: deleting a user while their rooms' participants are replaced answers every request",
  async (server) => {
    const statuses: Record<string, number> = {};
    for (let round = 0; round < 20; round++) {
      const user = `u${round}`;
      await server.api("PUT", `/api/users/${user}`, { json: { username: user } });
      // Rooms the user owns and takes part in, each saved again while the user is deleted.
      for (let i = 0; i < 4; i++) {
        await server.api("PUT", `/api/rooms/ticket/r${round}-${i}`, {
          json: { owner_id: user, participants: [{ user_id: user }, { user_id: "v" }] },
        });
      }
      tally(
        statuses,
        await Promise.all([
          server.api("DELETE", `/api/users/${user}`),
          ...[0, 1, 2, 3].map((i) =>
            server.api("PUT", `/api/rooms/ticket/r${round}-${i}`, {
              json: { participants: [{ user_id: "v" }, { user_id: "w" }] },
            })
          ),
        ]),
      );
    }
    assertEquals(statuses, { "200": 80, "204": 20 });
  },
);

Deno.test({
  name:
    "directory concurrency [postgres]: deleting a user in 20,000 rooms succeeds (no lock per room past a bound: Postgres's shared lock table ran out)",
  ignore: postgres.ignore,
  async fn() {
    const server = await startApiServer(postgres);
    try {
      const directory = await secondConnection(server);
      // A support agent on every ticket, written in bulk.
      await sql`insert into rooms (kind, id, created_at)
        select 'ticket', 't' || g, now() from generate_series(1, 20000) g`.execute(directory.db);
      await sql`insert into room_participants (room_kind, room_id, user_id, role, created_at)
        select 'ticket', 't' || g, 'agent', 'member', now() from generate_series(1, 20000) g`
        .execute(directory.db);
      await server.api("PUT", "/api/users/agent", { json: { username: "agent" } });
      const res = await server.api("DELETE", "/api/users/agent");
      assertEquals([res.status, res.body], [204, {}]);
      assertEquals(await directory.listParticipants("ticket", "t1"), []);
      assertEquals(await directory.listParticipants("ticket", "t20000"), []);
    } finally {
      await server.close();
    }
  },
});
