/** Opens the directory a `DATABASE_URL` names: SQLite by default, Postgres for `postgres://`. */

import { mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
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
 * (`:memory:` allowed); `postgres://` or `postgresql://` → Postgres, refused when it may be a
 * password cut short (see {@link readUrl}). No error quotes the value.
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
    return { dialect: "postgres", url: driverUrl(value) };
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
        throw new Error("DATABASE_URL has a malformed %-escape: a % is written %25");
      }
    }
    if (path === "") throw new Error(`DATABASE_URL names no SQLite file after "${scheme}:"`);
    return { dialect: "sqlite", path };
  }
  throw new Error(
    `DATABASE_URL has unsupported scheme "${scheme}:"; use a file ` +
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
  if (target.dialect === "sqlite") await refuseMisreadSqliteUrl(databaseUrl ?? "", target.path);
  const directory = target.dialect === "postgres"
    ? openPostgres(target.url, postgres, databaseUrl!)
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
 * Refuses a `sqlite:///x` whose absolute file `/x` does not exist while `x` in the working
 * directory does: SQLAlchemy and dj-database-url read three slashes as relative (four as
 * absolute), so whoever wrote it most likely meant that file, and a start would otherwise begin an
 * empty directory at the root. Read as absolute it stays (installations rely on it).
 */
async function refuseMisreadSqliteUrl(databaseUrl: string, path: string): Promise<void> {
  if (!/^sqlite:\/\/\/(?!\/)/i.test(databaseUrl.trim())) return;
  const relative = resolve(path.slice(1));
  const absent = await Deno.stat(path).then(
    () => false,
    (err) => err instanceof Deno.errors.NotFound,
  );
  if (!absent || !(await Deno.stat(relative).then(() => true, () => false))) return;
  throw new Error(
    `DATABASE_URL names ${path} (this server reads sqlite:/// as an absolute path), which does ` +
      `not exist, while ${relative} does (SQLAlchemy and dj-database-url read sqlite:/// as a ` +
      "path relative to the working directory): for that file write " +
      `sqlite:${path.slice(1)} or sqlite:///${relative}, for a new one at ${path} ` +
      `sqlite:////${path.slice(1)} (four slashes, absolute for both)`,
  );
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

/** A directory on a Postgres connection pool; `written` is DATABASE_URL, kept out of the log. */
function openPostgres(url: string, settings: PostgresSettings, written: string): KyselyDirectory {
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
    console.warn(
      `directory: idle Postgres connection failed: ${redactDatabaseUrl(error.message, written)}`,
    );
  });
  const db = new Kysely<DirectoryDatabase>({ dialect: new PostgresDialect({ pool }) });
  return new KyselyDirectory(db, { dialect: "postgres" });
}

/**
 * Why a Postgres URL is refused. It quotes none of the URL: whatever a hand-made reading of a
 * URL cut short takes for its password, part of the password may lie elsewhere.
 */
const AMBIGUOUS_URL =
  "DATABASE_URL is not a valid URL: a user name or password holding @ / ? # : " +
  "or a space must be %-escaped (@ as %40, / as %2F, ? as %3F, # as %23, : as %3A, a space as " +
  "%20), and an @ in the database name too (as %40)";

/** Why a Postgres URL naming a database the driver cannot be given is refused. */
const UNNAMEABLE_DATABASE = "DATABASE_URL: the driver cannot be given a database name holding " +
  "/ ? or # (it does not decode %2F, %3F, %23 there): rename the database";

/** The parts of a URL that reads one way only, as offsets into its text. */
interface ReadUrl {
  /** The password after `scheme://user:`, as written ([start, end)), if it has one. */
  password?: [number, number];
  /** Where the path starts (its `/`), or the query's `?` when it has none. */
  path: number;
  /** Where the query starts (after its `?`), or the text's length. */
  query: number;
}

/**
 * `value` read as the driver reads it (WHATWG's URL: the authority ends at the first `/` or `?`,
 * its credentials at its last `@`), or undefined when a reserved character left unescaped in a
 * password (`#`, `/`, `?`, common in generated ones) could have cut it short, so that part of the
 * password would pass for a host, a path or a query: a `#` anywhere (the driver reads no
 * fragment), an `@` in the path (`postgres://u:Pw@LEAKED/rest@db/c`, or a database name, which
 * is written `%40`), or in a query parameter's name (`postgres://u:Pw@LEAKED?rest@db/c`). A query
 * parameter's value may hold an `@` (`?user=app&password=s3cr@t`).
 */
function readUrl(value: string): ReadUrl | undefined {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(value);
  if (!scheme || value.includes("#")) return undefined;
  const question = value.indexOf("?");
  const head = question === -1 ? value.length : question;
  const query = question === -1 ? value.length : question + 1;
  const slash = value.indexOf("/", scheme[0].length);
  const path = slash === -1 || slash > head ? head : slash;
  if (value.slice(path, head).includes("@")) return undefined;
  const names = value.slice(query).split("&").map((p) => p.split("=", 1)[0]);
  if (names.some((name) => name.includes("@"))) return undefined;
  // As the driver (pg-connection-string) reads it: `postgres://user:pw@/db?host=/socket` has
  // no host, which it stands in for.
  if (!URL.canParse(value) && !URL.canParse(value.replace("@/", "@localhost/"))) return undefined;
  const at = value.lastIndexOf("@", path - 1);
  const colon = value.indexOf(":", scheme[0].length);
  const password: [number, number] | undefined = at >= scheme[0].length && colon !== -1 &&
      colon < at
    ? [colon + 1, at]
    : undefined;
  return { password, path, query };
}

/**
 * The Postgres URL the driver is handed for `value`, which must read one way only (see
 * {@link readUrl}). The driver reads the database name with `decodeURI`, which leaves `%40` as
 * it is: it is given `@` there, which its URL reading keeps in the path.
 */
function driverUrl(value: string): string {
  const read = readUrl(value);
  if (!read) throw new Error(AMBIGUOUS_URL);
  const head = read.query === value.length ? value.length : read.query - 1;
  const path = value.slice(read.path, head);
  if (/%(2f|3f|23)/i.test(path)) throw new Error(UNNAMEABLE_DATABASE);
  // A space anywhere makes the driver escape the whole URL again, which turns a password's
  // `%2F` into `%252F`, read as the three characters `%2F`: written `%20`, it never does.
  return (value.slice(0, read.path) + path.replace(/%40/gi, "@").replace(/%3a/gi, ":") +
    value.slice(head)).replaceAll(" ", "%20");
}

/** The `password=` query parameters' values in `query` (a URL's text after its `?`), as written. */
function queryPasswords(query: string): string[] {
  return query.split("&").filter((p) => /^password=/i.test(p)).map((p) => p.slice(9));
}

/**
 * `text` (an error message) without the `databaseUrl` it may quote, nor its passwords: the URL
 * whole is given with its passwords as `***` (one that reads more than one way, which the server
 * refuses, as `***` whole); the password of its credentials and of a `password=` query parameter
 * (which the driver reads too), as written, %-decoded or %-escaped, where it stands alone: not
 * where it is part of a longer word or number (a password `app` leaves `application_name` be).
 * A password of one or two characters is hidden only inside the URL, as hiding it would star out
 * words all over the message.
 */
export function redactDatabaseUrl(text: string, databaseUrl: string | undefined): string {
  const value = databaseUrl?.trim() ?? "";
  // A file path or a SQLite URL names no password.
  if (value === "" || !/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return text;
  const read = readUrl(value);
  if (!read) return text.split(value).join("***");
  const query = value.slice(read.query);
  const secrets = [
    ...(read.password ? [value.slice(...read.password)] : []),
    ...queryPasswords(query),
  ].filter((p) => p !== "");
  const starred = query.replace(/(^|&)(password=)[^&]*/gi, "$1$2***");
  const hidden =
    (read.password
      ? `${value.slice(0, read.password[0])}***${value.slice(read.password[1], read.query)}`
      : value.slice(0, read.query)) + starred;
  const forms = new Set<string>();
  for (const secret of secrets.filter((p) => p.length >= 3)) {
    // As written, %-decoded (a query's `+` as a space), and %-escaped (the driver escapes a URL
    // with a space in it; WHATWG's URL, an `@` in a password).
    for (
      const form of [
        (p: string) => p,
        decodeURIComponent,
        (p: string) => decodeURIComponent(p.replaceAll("+", "%20")),
        encodeURI,
        encodeURIComponent,
      ]
    ) {
      try {
        forms.add(form(secret));
      } catch {
        // A malformed %-escape or a lone surrogate: that form is nowhere to hide.
      }
    }
  }
  // Longest first, so that a shorter form does not leave part of a longer one.
  const alone = [...forms].filter((f) => f.length >= 3).sort((a, b) => b.length - a.length).map(
    (form) => {
      const escaped = form.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      // Bounded only where the password itself begins or ends with a letter or digit.
      const before = /^[\p{L}\p{N}]/u.test(form) ? "(?<![\\p{L}\\p{N}])" : "";
      const after = /[\p{L}\p{N}]$/u.test(form) ? "(?![\\p{L}\\p{N}])" : "";
      return new RegExp(before + escaped + after, "gu");
    },
  );
  // The URL whole first, then the password alone in what lies around it.
  return text.split(value).map((part) =>
    alone.reduce((redacted, pattern) => redacted.replace(pattern, "***"), part)
  ).join(hidden);
}
