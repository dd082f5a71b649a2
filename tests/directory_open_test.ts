/** `openDirectory` and `parseDatabaseUrl`: which database a `DATABASE_URL` names, and opening it. */

import { join } from "node:path";
import pg from "pg";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { openDirectory, parseDatabaseUrl, redactDatabaseUrl } from "../src/directory/open.ts";
import { startTestServer } from "./helpers.ts";

Deno.test("parseDatabaseUrl: blank means the default SQLite file in the data dir", () => {
  for (const value of [undefined, "", "   "]) {
    assertEquals(parseDatabaseUrl(value, "/data"), {
      dialect: "sqlite",
      path: join("/data", "directory.sqlite3"),
    });
  }
});

Deno.test("parseDatabaseUrl: paths and sqlite/file URLs name SQLite files", () => {
  const cases: [string, string][] = [
    ["/var/lib/chat/dir.db", "/var/lib/chat/dir.db"],
    ["relative/dir.db", "relative/dir.db"],
    ["dir.db", "dir.db"],
    [":memory:", ":memory:"],
    ["sqlite::memory:", ":memory:"],
    ["sqlite://:memory:", ":memory:"],
    ["sqlite:/abs/dir.db", "/abs/dir.db"],
    ["sqlite:rel/dir.db", "rel/dir.db"],
    ["sqlite:///abs/dir.db", "/abs/dir.db"],
    ["sqlite://rel/dir.db", "rel/dir.db"],
    ["SQLITE:///abs/dir.db", "/abs/dir.db"],
    ["file:///abs/my%20dir.db", "/abs/my dir.db"],
    ["file:/abs/dir.db", "/abs/dir.db"],
    ["file:rel/dir.db", "rel/dir.db"],
    ["file::memory:", ":memory:"],
    ["C:\\data\\dir.db", "C:\\data\\dir.db"],
    ["  /padded.db  ", "/padded.db"],
  ];
  for (const [value, path] of cases) {
    assertEquals(parseDatabaseUrl(value, "/data"), { dialect: "sqlite", path }, value);
  }
});

Deno.test("parseDatabaseUrl: postgres:// and postgresql:// name Postgres", () => {
  for (const url of ["postgres://u:p@db:5432/chat", "postgresql://db/chat?sslmode=require"]) {
    assertEquals(parseDatabaseUrl(url, "/data"), { dialect: "postgres", url });
  }
});

Deno.test("parseDatabaseUrl: an unknown scheme or a SQLite URL naming no file fails, quoting none of the value", async () => {
  const error = await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("mysql://root:hunter2@db/chat", "/d")),
    /^DATABASE_URL has unsupported scheme "mysql:"; use a file path/,
  );
  assert(!error.message.includes("hunter2"), error.message);
  await assertRejects(
    () => openDirectory("redis://localhost:6379", "/nonexistent-unused"),
    /^DATABASE_URL has unsupported scheme "redis:"/,
  );
  await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("sqlite:", "/d")),
    /^DATABASE_URL names no SQLite file after "sqlite:"$/,
  );
  await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("file:///x%zz.db", "/d")),
    /^DATABASE_URL has a malformed %-escape: a % is written %25$/,
  );
});

/** What a Postgres URL that reads more than one way is refused with, quoting none of it. */
const AMBIGUOUS = "DATABASE_URL is not a valid URL: a user name or password holding @ / ? # : " +
  "or a space must be %-escaped (@ as %40, / as %2F, ? as %3F, # as %23, : as %3A, a space as " +
  "%20), and an @ in the database name too (as %40)";

Deno.test("parseDatabaseUrl: a Postgres URL that an unescaped # / ? or @ may have cut short is refused, quoting none of it", async () => {
  const cut = [
    // A password cut short where it fails to parse, or where its port would be.
    ..."pw#LEAKED pw/LEAKED pw?LEAKED 123/LEAKED 123#LEAKED 123?LEAKED".split(" "),
    // An @ before the cut: what precedes it passes for credentials, what follows for a host.
    ..."Pw@LEAKED#rest Pw@LEAKED.invalid/rest Pw@LEAKED.invalid?rest".split(" "),
  ].map((password) => `postgres://chat:${password}@db:5432/chat?application_name=a@b`);
  for (
    const url of [
      ...cut,
      "postgres://db:1/c?password=a#LEAKED",
      // A database name with an @ is written %40: unescaped, it may be a password's end.
      "postgres://127.0.0.1:5432/chat@LEAKED?user=app&password=pw",
      "postgres:///chat@LEAKED?host=/var/run/postgresql",
    ]
  ) {
    const error = await assertRejects(() =>
      Promise.resolve().then(() => parseDatabaseUrl(url, "/d"))
    );
    assertEquals(error.message, AMBIGUOUS, url);
  }
});

Deno.test("parseDatabaseUrl: a Postgres URL that reads one way only is taken, and the driver reads it as written; a database name's %40 reaches it as an @", async () => {
  const read = (url: string) => {
    const target = parseDatabaseUrl(url, "/d");
    assertEquals(target.dialect, "postgres", url);
    const { host, port, user, password, database } =
      new pg.Client({ connectionString: (target as { url: string }).url }).connectionParameters;
    return { host, port, user, password, database };
  };
  const cases: [string, Record<string, unknown>][] = [
    ["postgres://u:p@db:5432/chat", {
      host: "db",
      port: 5432,
      user: "u",
      password: "p",
      database: "chat",
    }],
    ["postgresql://u:p%23w%2F%3F%40@db/chat?sslmode=disable", {
      host: "db",
      port: 5432,
      user: "u",
      password: "p#w/?@",
      database: "chat",
    }],
    // The last @ of the authority ends the credentials, as the driver reads them.
    ["postgres://me@corp:p@w@db/c", {
      host: "db",
      port: 5432,
      user: "me@corp",
      password: "p@w",
      database: "c",
    }],
    ["postgres://u:pw@/c?host=/var/run/postgresql", {
      host: "/var/run/postgresql",
      port: 5432,
      user: "u",
      password: "pw",
      database: "c",
    }],
    ["postgres:///c?host=/s&port=6432&user=u", {
      host: "/s",
      port: 6432,
      user: "u",
      password: null,
      database: "c",
    }],
    ["postgres://u@[::1]:6432/c", {
      host: "::1",
      port: 6432,
      user: "u",
      password: null,
      database: "c",
    }],
    // An @ in a query parameter's value is the parameter's.
    ["postgres://db:1/chat?user=app&password=s3cr@t&application_name=chat@prod", {
      host: "db",
      port: 1,
      user: "app",
      password: "s3cr@t",
      database: "chat",
    }],
    ["postgres://u:p@db/chat%40db?sslmode=disable", {
      host: "db",
      port: 5432,
      user: "u",
      password: "p",
      database: "chat@db",
    }],
    ["postgres:///chat%40db?host=/s&user=u", {
      host: "/s",
      port: 5432,
      user: "u",
      password: null,
      database: "chat@db",
    }],
    // The driver leaves %3A as it is in a database name: it is given the `:`.
    ["postgres://u:p@db/chat%3Aprod", {
      host: "db",
      port: 5432,
      user: "u",
      password: "p",
      database: "chat:prod",
    }],
    // A space anywhere made the driver escape the URL again: a password's %2F read as "%2F".
    ["postgres://u:pa%2Fss%3Fw@db/chat?application_name=chat server", {
      host: "db",
      port: 5432,
      user: "u",
      password: "pa/ss?w",
      database: "chat",
    }],
  ];
  for (const [url, expected] of cases) assertEquals(read(url), expected, url);
  // Handed on as written, but for the database name's %40.
  assertEquals(parseDatabaseUrl("postgres://u:p%40@db/c?password=s@t", "/d"), {
    dialect: "postgres",
    url: "postgres://u:p%40@db/c?password=s@t",
  });
  assertEquals(parseDatabaseUrl("postgres://db/chat%40db?x=%40", "/d"), {
    dialect: "postgres",
    url: "postgres://db/chat@db?x=%40",
  });
  // The driver does not decode these in a database name: refused, rather than a database that
  // "does not exist".
  for (const name of ["chat%2Fprod", "chat%3Fprod", "chat%23prod"]) {
    const error = await assertRejects(() =>
      Promise.resolve().then(() => parseDatabaseUrl(`postgres://u:p@db/${name}`, "/d"))
    );
    assertEquals(
      error.message,
      "DATABASE_URL: the driver cannot be given a database name holding / ? or # (it does not " +
        "decode %2F, %3F, %23 there): rename the database",
    );
  }
});

Deno.test("redactDatabaseUrl: the URL whole with its passwords starred out, and its password (as written, %-decoded or %-escaped) where it stands alone", () => {
  const url = "postgres://chat:s3cr3t%23Pw@db:5432/chat";
  assertEquals(
    redactDatabaseUrl(`'${url}'; s3cr3t#Pw, s3cr3t%23Pw`, url),
    "'postgres://chat:***@db:5432/chat'; ***, ***",
  );
  // An unescaped @, which WHATWG's URL gives as %40.
  assertEquals(
    redactDatabaseUrl("s3@cr3t or s3%40cr3t", "postgres://chat:s3@cr3t@db/chat"),
    "*** or ***",
  );
  // No password, or one too short to star out of words: only inside the URL.
  assertEquals(redactDatabaseUrl("at db", "postgres://db/chat"), "at db");
  assertEquals(
    redactDatabaseUrl("a db: 'postgres://u:ab@db/chat'", "postgres://u:ab@db/chat"),
    "a db: 'postgres://u:***@db/chat'",
  );
  // A URL the server refuses is never quoted; were it, it goes whole.
  const refused = "postgres://chat:Pw@LEAKED#rest@db/chat";
  assertEquals(redactDatabaseUrl(`x '${refused}' y`, refused), "x '***' y");
});

Deno.test("redactDatabaseUrl: a password in the query is starred out too, an @ after the password leaves the host and database be, and a common password is starred out where it stands alone, not inside words", () => {
  const query = "postgres://127.0.0.1:1/chat?user=app&password=s3cr@t+Pw";
  assertEquals(
    redactDatabaseUrl(`'${query}'; s3cr@t+Pw, s3cr@t Pw, s3cr%40t%2BPw`, query),
    "'postgres://127.0.0.1:1/chat?user=app&password=***'; ***, ***, ***",
  );
  const app = "postgres://user:secret@db:5432/chat?application_name=chat@prod";
  assertEquals(
    redactDatabaseUrl(`'${app}' said secret`, app),
    "'postgres://user:***@db:5432/chat?application_name=chat@prod' said ***",
  );
  assertEquals(
    redactDatabaseUrl(
      "password for app failed; application_name=chat, apps, 'app'",
      "postgres://u:app@db/chat",
    ),
    "password for *** failed; application_name=chat, apps, '***'",
  );
});

Deno.test("openDirectory: default creates the data dir and a SQLite file that persists", async () => {
  const root = await Deno.makeTempDir({ prefix: "directory_open_" });
  try {
    const dataDir = join(root, "not", "yet", "there");
    const first = await openDirectory(undefined, dataDir);
    try {
      await first.upsertUser({ id: "1", username: "kept" });
    } finally {
      await first.close();
    }
    assert((await Deno.stat(join(dataDir, "directory.sqlite3"))).isFile);

    const second = await openDirectory("", dataDir);
    try {
      assertEquals((await second.getUser("1"))?.username, "kept");
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("openDirectory: sqlite: and file: URLs open that file, creating its folder", async () => {
  const root = await Deno.makeTempDir({ prefix: "directory_open_" });
  try {
    const path = join(root, "sub dir", "x.sqlite3");
    const viaSqlite = await openDirectory(`sqlite://${path}`, "/nonexistent-unused");
    try {
      await viaSqlite.upsertRoom({ kind: "chat", id: "1", title: "same file" });
    } finally {
      await viaSqlite.close();
    }
    const viaFile = await openDirectory(
      `file://${path.replaceAll(" ", "%20")}`,
      "/nonexistent-unused",
    );
    try {
      assertEquals((await viaFile.getRoom("chat", "1"))?.title, "same file");
    } finally {
      await viaFile.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("openDirectory: each :memory: directory is its own database", async () => {
  const a = await openDirectory(":memory:", "/nonexistent-unused");
  const b = await openDirectory("sqlite::memory:", "/nonexistent-unused");
  try {
    await a.upsertUser({ id: "1", username: "only in a" });
    assertEquals(await b.getUser("1"), null);
    await a.ping();
    await b.ping();
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("openDirectory: an unreachable Postgres fails and leaves no pool open", async () => {
  // Port 1 on loopback refuses at once; the test sanitizers catch a pool left open.
  await assertRejects(
    () => openDirectory("postgres://nobody:secret@127.0.0.1:1/none", "/nonexistent-unused"),
    /ECONNREFUSED|connect|refused/i,
  );
});

const postgresUrl = Deno.env.get("TEST_POSTGRES_URL")?.trim() || undefined;
/** The test cluster's folder, which holds its unix socket (.ci/postgres.sh). */
const socketDir = Deno.env.get("CI_POSTGRES_DIR");

Deno.test({
  name:
    "openDirectory [postgres]: the server writes to a database named chat@db, written chat%40db (the `chat@db` database .ci/postgres.sh creates), over TCP and the unix socket, and the other forms of URL still connect",
  ignore: postgresUrl === undefined,
  async fn() {
    const base = new URL(postgresUrl!);
    const [user, password] = [base.username, base.password].map(decodeURIComponent);
    const at = `${base.protocol}//${base.username}:${base.password}@${base.host}/chat%40db`;
    const id = `at-db-${crypto.randomUUID()}`;
    const admin = "admin-token-for-the-chat-at-db-test";
    const server = await startTestServer({ DATABASE_URL: at, ADMIN_TOKEN: admin });
    try {
      const res = await fetch(`${server.url}/api/users/${id}`, {
        method: "PUT",
        headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
        body: JSON.stringify({ username: "in chat@db" }),
      });
      assertEquals(res.status, 200, await res.text());
    } finally {
      await server.close();
    }
    // Read back with the database named apart from any URL.
    const client = new pg.Client({
      host: base.hostname,
      port: Number(base.port),
      user,
      password,
      database: "chat@db",
    });
    await client.connect();
    try {
      const { rows } = await client.query("select username from users where id = $1", [id]);
      assertEquals(rows, [{ username: "in chat@db" }]);
      await client.query("delete from users where id = $1", [id]);
    } finally {
      await client.end();
    }
    const query = `user=${base.username}&password=${base.password}`;
    const forms = [
      postgresUrl!.replace(/^postgres:/, "postgresql:"),
      `${postgresUrl}?sslmode=disable`,
      `postgres://${base.host}${base.pathname}?${query}`,
      ...(socketDir
        ? [
          `postgres://${base.username}@/chat%40db?host=${socketDir}&port=${base.port}`,
          `postgres:///chat%40db?host=${socketDir}&port=${base.port}&user=${base.username}`,
        ]
        : []),
    ];
    for (const url of forms) {
      const directory = await openDirectory(url, "/nonexistent-unused", { timeoutMs: 5_000 });
      try {
        await directory.ping();
      } finally {
        await directory.close();
      }
    }
  },
});

Deno.test("openDirectory: sqlite:///x is the absolute /x, and refused when only x in the working directory exists (SQLAlchemy's reading)", async () => {
  const root = await Deno.makeTempDir({ prefix: "directory_open_" });
  const cwd = Deno.cwd();
  const name = `three-slashes-${crypto.randomUUID()}.sqlite3`;
  try {
    Deno.chdir(root);
    await Deno.writeTextFile(join(root, name), "");
    const error = await assertRejects(
      () => openDirectory(`sqlite:///${name}`, "/nonexistent-unused"),
      /^DATABASE_URL names /,
    );
    assertEquals(
      error.message,
      `DATABASE_URL names /${name} (this server reads sqlite:/// as an absolute path), which ` +
        `does not exist, while ${join(root, name)} does (SQLAlchemy and dj-database-url read ` +
        "sqlite:/// as a path relative to the working directory): for that file write " +
        `sqlite:${name} or sqlite:///${join(root, name)}, for a new one at /${name} ` +
        `sqlite:////${name} (four slashes, absolute for both)`,
    );
    assert(!(await Deno.stat(`/${name}`).then(() => true, () => false)), "created at the root");
    // Each form the message offers opens the file in the working directory.
    for (const url of [`sqlite:${name}`, `sqlite:///${join(root, name)}`]) {
      const directory = await openDirectory(url, "/nonexistent-unused");
      await directory.close();
      assert((await Deno.stat(join(root, name))).size > 0, url);
    }

    // Where the absolute file exists, three slashes open it, as they always have, though the
    // relative one exists too.
    const absolute = join(root, "abs", "dir.sqlite3");
    const shadow = join(root, absolute.slice(1));
    await Deno.mkdir(join(shadow, ".."), { recursive: true });
    await Deno.writeTextFile(shadow, "");
    const first = await openDirectory(absolute, "/nonexistent-unused");
    await first.upsertRoom({ kind: "chat", id: "1", title: "absolute" });
    await first.close();
    const again = await openDirectory(`sqlite://${absolute}`, "/nonexistent-unused");
    try {
      assertEquals((await again.getRoom("chat", "1"))?.title, "absolute");
      assertEquals((await Deno.stat(shadow)).size, 0);
    } finally {
      await again.close();
    }
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(root, { recursive: true });
    // What a server that reads it otherwise would have made.
    for (const suffix of ["", "-wal", "-shm"]) {
      await Deno.remove(`/${name}${suffix}`).catch(() => {});
    }
  }
});
