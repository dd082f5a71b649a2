/** `openDirectory` and `parseDatabaseUrl`: which database a `DATABASE_URL` names, and opening it. */

import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { openDirectory, parseDatabaseUrl, redactDatabaseUrl } from "../src/directory/open.ts";

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

Deno.test("parseDatabaseUrl: an unknown scheme fails, quoting the value without its password", async () => {
  const error = await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("mysql://root:hunter2@db/chat", "/d")),
    /unsupported scheme "mysql:"/,
  );
  assertMatch(error.message, /"mysql:\/\/root:\*\*\*@db\/chat"/);
  assert(!error.message.includes("hunter2"), error.message);
  await assertRejects(
    () => openDirectory("redis://localhost:6379", "/nonexistent-unused"),
    /DATABASE_URL "redis:\/\/localhost:6379" has unsupported scheme "redis:"/,
  );
  await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("sqlite:", "/d")),
    /names no SQLite file/,
  );
  await assertRejects(
    () => Promise.resolve().then(() => parseDatabaseUrl("file:///x%zz.db", "/d")),
    /DATABASE_URL "file:\/\/\/x%zz.db" has a malformed %-escape/,
  );
});

Deno.test("parseDatabaseUrl: a Postgres URL cut short by an unescaped # / or ? in its password is refused without quoting the password", async () => {
  for (const password of ["pw#LEAKED", "pw/LEAKED", "pw?LEAKED", "123/LEAKED", "123#LEAKED"]) {
    const url = `postgres://chat:${password}@db:5432/chat`;
    const error = await assertRejects(
      () => Promise.resolve().then(() => parseDatabaseUrl(url, "/d")),
      /DATABASE_URL "postgres:\/\/chat:\*\*\*@db:5432\/chat" is not a valid URL: %-escape/,
    );
    assert(!error.message.includes("LEAKED"), error.message);
  }
  // Escaped, an unescaped `@` (the last one ends the password), or no host before a socket path:
  // as the driver reads them.
  for (
    const url of ["postgres://u:p%23w@db/c", "postgres://u:p@w@db/c", "postgres://u:pw@/c?host=/s"]
  ) {
    assertEquals(parseDatabaseUrl(url, "/d"), { dialect: "postgres", url });
  }
});

Deno.test("parseDatabaseUrl: a Postgres URL with its password in the query, as the driver reads it, is taken with an @ in it too; refused for another reason, it is quoted without that password", async () => {
  for (
    const url of [
      "postgres://db/chat?user=app&password=s3cr@t",
      // The port is no user name, and what follows no password.
      "postgres://127.0.0.1:1/chat?user=app&password=s3cr@t",
      "postgres://app@db/chat?application_name=chat@prod&password=s3cr@t",
    ]
  ) {
    assertEquals(parseDatabaseUrl(url, "/d"), { dialect: "postgres", url });
  }
  // A cut one is still refused: an `@` in the path, the fragment or a query parameter's name.
  for (const password of ["123/LEAKED", "123?LEAKED", "pw#LEAKED"]) {
    const url = `postgres://chat:${password}@db:5432/chat?application_name=a@b&password=s3@LEAKED`;
    const error = await assertRejects(
      () => Promise.resolve().then(() => parseDatabaseUrl(url, "/d")),
      / is not a valid URL: %-escape/,
    );
    assertEquals(
      error.message.split(" is not")[0],
      'DATABASE_URL "postgres://chat:***@db:5432/chat?application_name=a@b&password=***"',
    );
  }
  const error = await assertRejects(
    () =>
      Promise.resolve().then(() => parseDatabaseUrl("postgres://db:1/c?password=a#LEAKED", "/d")),
    /DATABASE_URL "postgres:\/\/db:1\/c\?password=\*\*\*" is not a valid URL/,
  );
  assert(!error.message.includes("LEAKED"), error.message);
});

Deno.test("redactDatabaseUrl: the URL and its password, as written, %-decoded or %-escaped, are starred out of a message", () => {
  const url = "postgres://chat:s3cr3t#Pw@db:5432/chat";
  assertEquals(
    redactDatabaseUrl(`Invalid URL: '${url}'; s3cr3t#Pw, s3cr3t%23Pw`, url),
    "Invalid URL: 'postgres://chat:***@db:5432/chat'; ***, ***",
  );
  assertEquals(
    redactDatabaseUrl("pw is s3cr3t#Pw", "postgres://chat:s3cr3t%23Pw@db/chat"),
    "pw is ***",
  );
  // No password, or one too short to star out of words.
  assertEquals(redactDatabaseUrl("at db", "postgres://db/chat"), "at db");
  assertEquals(redactDatabaseUrl("a db", "postgres://u:a@db/chat"), "a db");
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
  // Cut short by its `#`: the password is up to the `@` before the host, not the last one.
  const cut = "postgres://user:pw#x@db:5432/chat?application_name=chat@prod";
  assertEquals(
    redactDatabaseUrl(`'${cut}' pw#x`, cut),
    "'postgres://user:***@db:5432/chat?application_name=chat@prod' ***",
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
