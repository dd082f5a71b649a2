/** Opens the directory a `DATABASE_URL` names: SQLite by default, Postgres for `postgres://`. */

import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Kysely, PostgresDialect } from "kysely";
import type { Directory } from "../core/directory.ts";
import { KyselyDirectory } from "./kysely_directory.ts";
import { createPgPool } from "./pg_pool.ts";
import type { DirectoryDatabase } from "./schema.ts";
import { NodeSqliteDialect, TOKEN_REUSE_MS } from "./sqlite_dialect.ts";

/** File name of the default SQLite database inside the data directory. */
export const DEFAULT_SQLITE_FILE = "directory.sqlite3";

/** Where a database URL points: a SQLite file (or `:memory:`) or a Postgres server. */
export type DirectoryTarget =
  | { dialect: "sqlite"; path: string }
  | { dialect: "postgres"; url: string };

/**
 * Tells which database `databaseUrl` names: undefined or blank → `<dataDir>/directory.sqlite3`;
 * a plain path, `sqlite:<path>`, `sqlite://<path>` or `file:<path>` → that SQLite file
 * (`:memory:` allowed); `postgres://` or `postgresql://` → Postgres.
 */
export function parseDatabaseUrl(
  databaseUrl: string | undefined,
  dataDir: string,
): DirectoryTarget {
  const value = databaseUrl?.trim() ?? "";
  if (value === "") return { dialect: "sqlite", path: join(dataDir, DEFAULT_SQLITE_FILE) };
  // One letter before the colon is a Windows drive (`C:\data\x.db`), not a scheme.
  const scheme = /^([a-z][a-z0-9+.-]+):/i.exec(value)?.[1]?.toLowerCase();
  if (scheme === undefined) return { dialect: "sqlite", path: value };
  if (scheme === "postgres" || scheme === "postgresql") {
    checkPostgresUrl(value);
    return { dialect: "postgres", url: value };
  }
  if (scheme === "sqlite" || scheme === "file") {
    // `sqlite:///abs/x.db` and `sqlite://rel/x.db` keep what follows the `//`; `file:` URLs
    // are percent-encoded by definition, so they are decoded too.
    let path = value.slice(scheme.length + 1);
    if (path.startsWith("//")) path = path.slice(2);
    if (scheme === "file") {
      try {
        path = decodeURIComponent(path);
      } catch {
        throw new Error(`DATABASE_URL "${value}" has a malformed %-escape`);
      }
    }
    if (path === "") throw new Error(`DATABASE_URL "${value}" names no SQLite file`);
    return { dialect: "sqlite", path };
  }
  throw new Error(
    `DATABASE_URL "${redactPassword(value)}" has unsupported scheme "${scheme}:"; use a file ` +
      `path, sqlite:<path>, file:<path>, postgres:// or postgresql://`,
  );
}

/**
 * Opens and migrates the directory named by `databaseUrl` (see {@link parseDatabaseUrl}),
 * creating the data directory, or the SQLite file's folder, when missing.
 */
export async function openDirectory(
  databaseUrl: string | undefined,
  dataDir: string,
  postgres: PostgresSettings = {},
): Promise<Directory> {
  const target = parseDatabaseUrl(databaseUrl, dataDir);
  const directory = target.dialect === "postgres"
    ? openPostgres(target.url, postgres)
    : await openSqlite(target.path, postgres.timeoutMs);
  try {
    await directory.migrate();
  } catch (error) {
    await directory.close();
    throw error;
  }
  return directory;
}

/**
 * A directory on a SQLite file, or in memory for `:memory:`; a statement waits up to `timeoutMs`
 * for another process's lock, as a Postgres query may take that long before it fails.
 */
async function openSqlite(path: string, timeoutMs?: number): Promise<KyselyDirectory> {
  if (path !== ":memory:") await mkdir(dirname(path), { recursive: true });
  const dialect = new NodeSqliteDialect({ database: path, busyTimeoutMs: timeoutMs });
  const db = new Kysely<DirectoryDatabase>({ dialect });
  return new KyselyDirectory(db, {
    dialect: "sqlite",
    changeToken: () => dialect.changeToken(),
    changeTokenLagMs: TOKEN_REUSE_MS,
  });
}

/** Settings of the Postgres pool (each isolate and process has its own), and SQLite's wait. */
export interface PostgresSettings {
  /** Most connections open at once; default 10. */
  poolMax?: number;
  /**
   * Milliseconds a connection, and then a query, may take before it fails; on SQLite, how long a
   * statement waits for another process's lock. Default 5,000.
   */
  timeoutMs?: number;
}

/** A directory on a Postgres connection pool. */
function openPostgres(url: string, settings: PostgresSettings): KyselyDirectory {
  const timeout = settings.timeoutMs ?? 5_000;
  // Bounded everywhere: a stalled or unreachable server (a paused VM, a network partition) would
  // otherwise hold every handshake, send and health check for as long as TCP keeps trying. The
  // bound is the client's (`query_timeout`): a server-side `statement_timeout` goes in the
  // startup message, which PgBouncer (Supabase's, Neon's pooled endpoints) refuses.
  const pool = createPgPool({
    connectionString: url,
    max: settings.poolMax ?? 10,
    connectionTimeoutMillis: timeout,
    query_timeout: timeout,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  });
  // An idle client whose server went away emits `error` on the pool, and an unhandled `error`
  // event would end the process; the pool drops that client and the next query reconnects.
  pool.on("error", (error) => {
    console.warn(`directory: idle Postgres connection failed: ${error.message}`);
  });
  const db = new Kysely<DirectoryDatabase>({ dialect: new PostgresDialect({ pool }) });
  return new KyselyDirectory(db, { dialect: "postgres" });
}

/**
 * Refuses a Postgres URL that does not read as one. A reserved character left unescaped in the
 * password (`#`, `/`, `?`, common in generated ones) ends the authority where it stands: the URL
 * then fails to parse, and the driver's "Invalid URL" message quotes all of it, password
 * included; or, when what precedes it passes for a port, the password becomes a path, a query
 * or a fragment, and the server connects somewhere else.
 */
function checkPostgresUrl(value: string): void {
  let url: URL | undefined;
  // As the driver (pg-connection-string) reads it: `postgres://user:pw@/db?host=/socket` has
  // no host, which it stands in for.
  for (const text of [value, value.replace("@/", "@localhost/")]) {
    try {
      url = new URL(text);
      break;
    } catch {
      // Tried as the driver would next.
    }
  }
  // An `@` that did not end the authority (no credentials came of it) sits after a cut.
  const cut = url !== undefined &&
    (url.hash !== "" || (value.includes("@") && url.username === "" && url.password === ""));
  if (url === undefined || cut) {
    throw new Error(
      `DATABASE_URL "${redactPassword(value)}" is not a valid URL: %-escape the reserved ` +
        "characters in its user name and password (# as %23, / as %2F, ? as %3F, @ as %40, " +
        ": as %3A, a space as %20)",
    );
  }
}

/** `scheme://user:` (group 1), then the password up to the last `@` (group 2). */
const PASSWORD = /^([a-z][a-z0-9+.-]*:\/\/[^:/?#@]*:)(.*)@/is;

/**
 * The URL with its password replaced by `***`, so that error messages can quote it: whatever
 * follows `scheme://user:` up to the last `@`, as a password holding an unescaped `/`, `#` or
 * `@` may make the URL unparseable or parse into something else.
 */
function redactPassword(value: string): string {
  return value.replace(PASSWORD, "$1***@");
}

/**
 * `text` (an error message) without the `databaseUrl` it may quote, whole or in part: the URL is
 * given with its password as `***`, and the password anywhere else too (as written, %-decoded
 * or %-escaped). A password of one or two characters is left, as hiding it would star out parts of
 * words all over the message.
 */
export function redactDatabaseUrl(text: string, databaseUrl: string | undefined): string {
  const value = databaseUrl?.trim() ?? "";
  const password = PASSWORD.exec(value)?.[2] ?? "";
  if (password === "") return text;
  let redacted = text.replaceAll(value, redactPassword(value));
  if (password.length < 3) return redacted;
  // As written, %-decoded, and %-escaped (the driver escapes a URL with a space in it).
  for (const form of [(p: string) => p, decodeURIComponent, encodeURI, encodeURIComponent]) {
    try {
      redacted = redacted.replaceAll(form(password), "***");
    } catch {
      // A malformed %-escape or a lone surrogate: that form is nowhere to hide.
    }
  }
  return redacted;
}
