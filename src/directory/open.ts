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
  // An `@` that did not end the authority (no credentials came of it) sits after a cut; one in
  // a query parameter's value (`?user=app&password=s3cr@t`, which the driver reads) does not.
  const cut = url !== undefined &&
    (url.hash !== "" ||
      (url.username === "" && url.password === "" &&
        atSigns(value).some((at) => !inValue(value, at))));
  if (url === undefined || cut) {
    throw new Error(
      `DATABASE_URL "${redactPassword(value)}" is not a valid URL: %-escape the reserved ` +
        "characters in its user name and password (# as %23, / as %2F, ? as %3F, @ as %40, " +
        ": as %3A, a space as %20)",
    );
  }
}

/** The offsets of the `@`s in `value`. */
function atSigns(value: string): number[] {
  return [...value.matchAll(/@/g)].map((m) => m.index);
}

/** The offset of the first `/`, `?` or `#` in `value` from `from` on, or its length. */
function authorityEnd(value: string, from: number): number {
  const end = value.slice(from).search(/[/?#]/);
  return end === -1 ? value.length : from + end;
}

/**
 * True when `value[at]` lies in the value of a query parameter (after its `=`), where an `@` is
 * the parameter's, not the end of a password cut short.
 */
function inValue(value: string, at: number): boolean {
  const query = value.indexOf("?", authorityEnd(value, value.indexOf("//") + 2));
  const hash = value.indexOf("#");
  if (query === -1 || query > at || (hash !== -1 && hash < at)) return false;
  const parameter = value.slice(Math.max(query, value.lastIndexOf("&", at)) + 1, at);
  return parameter.includes("=");
}

/**
 * Where the password after `scheme://user:` lies in `value` ([start, end) of its text), if it
 * has one. As a URL reads it, it ends at the authority's last `@`, the authority ending at the
 * first `/`, `?` or `#` after it (`postgres://u:pw@db/c?application_name=chat@prod`: `pw`).
 * Cut short there by a reserved character of its own (`postgres://u:p#w@db/c`), it ends at the
 * first `@` after the cut that a host follows (no other `@` before the next `/`, `?` or `#`),
 * but not at one in a query parameter's value (`postgres://db:5432/c?password=s3cr@t`, where
 * `5432/c?password=s3cr` is no password).
 */
function passwordSpan(value: string): [number, number] | undefined {
  const head = /^[a-z][a-z0-9+.-]*:\/\/[^:/?#@]*:/i.exec(value);
  if (!head) return undefined;
  const start = head[0].length;
  const end = authorityEnd(value, start);
  const last = value.lastIndexOf("@", end - 1);
  if (last >= start) return [start, last];
  for (const at of atSigns(value)) {
    if (at < end || inValue(value, at)) continue;
    if (/^@[^@/?#]*(?:[/?#]|$)/.test(value.slice(at))) return [start, at];
  }
  return undefined;
}

/** `password=` query parameters (group 1), then each one's value, up to the next `&` (group 2). */
const QUERY_PASSWORD = /([?&]password=)([^&]*)/gi;

/**
 * The URL with its passwords replaced by `***`, so that error messages can quote it: the one
 * after `scheme://user:` (see {@link passwordSpan}; a password holding an unescaped `/`, `#` or
 * `@` may make the URL unparseable or parse into something else), and the `password=` query
 * parameters' (read by the driver too), up to the next `&` (a `#` is taken for the password's).
 */
function redactPassword(value: string): string {
  const span = passwordSpan(value);
  const rest = (text: string) => text.replace(QUERY_PASSWORD, "$1***");
  if (!span) return rest(value);
  return `${value.slice(0, span[0])}***${rest(value.slice(span[1]))}`;
}

/** The passwords `value` holds, as written: after `scheme://user:`, and in its query. */
function passwords(value: string): string[] {
  const span = passwordSpan(value);
  const rest = span ? value.slice(span[1]) : value;
  return [
    ...(span ? [value.slice(...span)] : []),
    ...[...rest.matchAll(QUERY_PASSWORD)].map((m) => m[2]),
  ].filter((p) => p !== "");
}

/**
 * `text` (an error message) without the `databaseUrl` it may quote, whole or in part: the URL is
 * given with its passwords as `***`, and a password elsewhere too (as written, %-decoded or
 * %-escaped), where it stands alone: not where it is part of a longer word or number (a password
 * `app` leaves `application_name` be). A password of one or two characters is left, as hiding
 * it would star out words all over the message.
 */
export function redactDatabaseUrl(text: string, databaseUrl: string | undefined): string {
  const value = databaseUrl?.trim() ?? "";
  const secrets = passwords(value);
  if (secrets.length === 0) return text;
  const hidden = redactPassword(value);
  const forms = new Set<string>();
  for (const secret of secrets.filter((p) => p.length >= 3)) {
    // As written, %-decoded (a query's `+` as a space), and %-escaped (the driver escapes a URL
    // with a space in it).
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
