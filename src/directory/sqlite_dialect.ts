/**
 * A Kysely dialect for Deno's built-in `node:sqlite` (`DatabaseSync`).
 *
 * Kysely's own `SqliteDialect` targets better-sqlite3, a native addon; `node:sqlite` ships with
 * Deno, so this adapter needs no native npm package.
 */

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import {
  CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  type QueryCompiler,
  type QueryResult,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type TransactionSettings,
} from "kysely";
import { DirectoryUnavailable } from "../core/directory.ts";
import { pollUntil } from "../core/time.ts";

/** Settings of {@link NodeSqliteDialect}. */
export interface NodeSqliteDialectConfig {
  /** A file path or `:memory:` to open, or an open database whose ownership passes to Kysely. */
  database: string | DatabaseSync;
  /**
   * How long a statement waits for another process's lock before failing; 5000 ms by default.
   * Past the first few milliseconds the wait is asynchronous: the isolate goes on meanwhile.
   */
  busyTimeoutMs?: number;
}

/** The Kysely dialect for `node:sqlite`: SQLite's compiler and introspector on a `DatabaseSync`. */
export class NodeSqliteDialect implements Dialect {
  readonly #config: NodeSqliteDialectConfig;
  #driver?: NodeSqliteDriver;

  /** Keeps the settings; the database opens when Kysely first needs a connection. */
  constructor(config: NodeSqliteDialectConfig) {
    this.#config = { ...config };
  }

  /** Creates the driver that owns the single connection. */
  createDriver(): Driver {
    return this.#driver = new NodeSqliteDriver(this.#config);
  }

  /**
   * A token that changes whenever a commit reached the database, from this connection or any
   * other (another process, an application sharing the file); null before the database opens.
   */
  changeToken(): string | null {
    return this.#driver?.changeToken() ?? null;
  }

  /** Creates SQLite's query compiler. */
  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler();
  }

  /** Creates the adapter that tells Kysely what this SQLite connection supports. */
  createAdapter(): DialectAdapter {
    return new NodeSqliteAdapter();
  }

  /** Creates SQLite's schema introspector. */
  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new SqliteIntrospector(db);
  }
}

/** Kysely's SQLite adapter, with migrations run inside a transaction. */
export class NodeSqliteAdapter extends SqliteAdapter {
  /** True, so that Kysely's migrator runs the pending migrations in one transaction. */
  override get supportsTransactionalDdl(): boolean {
    // SQLite does roll back DDL, and one `begin immediate` transaction around the migrations
    // is what stops two processes on the same file (`deno serve --parallel`) from applying the
    // same migration twice: SQLite has no advisory lock to take instead.
    return true;
  }
}

/**
 * How long a change token read from the database is reused, ms: every send asks, and the read
 * (a read transaction with its file locks) cost 20–40 µs of the main thread per message under
 * load. Commits of this connection are seen at once; others' at most this late.
 */
export const TOKEN_REUSE_MS = 25;

/**
 * How long SQLite itself waits for a lock, ms, holding the thread (`node:sqlite` is synchronous):
 * brief enough not to stall sockets; a statement still refused then is retried after a timer.
 */
const SYNC_BUSY_MS = 5;

/** True for SQLite's BUSY or LOCKED (extended codes too: SQLITE_BUSY_SNAPSHOT is 517). */
function sqliteLocked(err: unknown): boolean {
  const { code, errcode } = (err ?? {}) as { code?: unknown; errcode?: unknown };
  return code === "ERR_SQLITE_ERROR" && typeof errcode === "number" &&
    ((errcode & 0xff) === 5 || (errcode & 0xff) === 6);
}

/**
 * Makes `db` WAL, trying again after a timer for up to `busyMs` while another process holds the
 * file's write lock. The switch reads the file's header and then takes the write lock, and
 * SQLite refuses that upgrade at once, without its busy timeout (waiting could deadlock two
 * readers that both want to write): servers starting together on a new file, or one starting
 * while another writes a file not yet WAL, failed their start with "database is locked".
 */
async function switchToWal(db: DatabaseSync, busyMs: number): Promise<void> {
  let locked: unknown;
  // A prepared statement, as `exec`'s errors carry no SQLite error code to tell a lock by.
  const pragma = db.prepare("pragma journal_mode = wal");
  const switched = await pollUntil(() => {
    try {
      pragma.get();
      return true;
    } catch (error) {
      if (!sqliteLocked(error)) throw error;
      locked = error;
      return false;
    }
  }, { timeoutMs: busyMs });
  if (switched) return;
  throw new DirectoryUnavailable(
    `The SQLite directory stayed locked by another connection for ${busyMs} ms`,
    { cause: locked },
  );
}

/** A promise-based lock for the one connection; waiters are served first come, first served. */
class Mutex {
  #tail: Promise<void> = Promise.resolve();

  /** Waits for the lock and returns the function that releases it. */
  async lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((resolve) => release = resolve);
    const previous = this.#tail;
    this.#tail = previous.then(() => next);
    await previous;
    return release;
  }
}

/** Opens the database on first use and lends its single connection to one user at a time. */
class NodeSqliteDriver implements Driver {
  readonly #config: NodeSqliteDialectConfig;
  readonly #mutex = new Mutex();
  #db: DatabaseSync | undefined;
  #connection: NodeSqliteConnection | undefined;
  #release: (() => void) | undefined;
  #version: StatementSync | undefined;
  #lastVersion = -1;
  #lastChanges = -1;
  #token = "";
  /** When `#token` was last read from the database; -Infinity after a statement of ours. */
  #checkedAt = -Infinity;

  constructor(config: NodeSqliteDialectConfig) {
    this.#config = config;
  }

  changeToken(): string | null {
    if (!this.#db || !this.#connection) return null;
    // Every send asks: within a moment of the last look, and with no statement of ours since,
    // the answer stands (another process's commit shows at most that moment late).
    const now = performance.now();
    if (now - this.#checkedAt < TOKEN_REUSE_MS) return this.#token;
    this.#checkedAt = now;
    // `data_version` moves when another connection commits, `total_changes()` when this one
    // writes; together they change whenever the data may have. One statement, no I/O.
    this.#version ??= this.#db.prepare(
      "select (select data_version from pragma_data_version) as v, total_changes() as c",
    );
    const row = this.#version.get() as { v: number; c: number };
    // The same string while nothing changed: decisions cached per socket share it.
    if (row.v !== this.#lastVersion || row.c !== this.#lastChanges) {
      this.#lastVersion = row.v;
      this.#lastChanges = row.c;
      this.#token = `${row.v}:${row.c}`;
    }
    return this.#token;
  }

  async init(): Promise<void> {
    const { database } = this.#config;
    const db = typeof database === "string" ? new DatabaseSync(database) : database;
    const busyMs = Math.max(0, Math.trunc(this.#config.busyTimeoutMs ?? 5000));
    try {
      // The busy timeout goes first so that switching to WAL, which needs a lock, waits for
      // another process instead of failing at once (held at start, before any socket).
      db.exec(`pragma busy_timeout = ${busyMs}`);
      // WAL lets readers in other processes go on while one writes; `:memory:` stays `memory`.
      await switchToWal(db, busyMs);
      db.exec("pragma foreign_keys = on");
      db.exec(`pragma busy_timeout = ${Math.min(busyMs, SYNC_BUSY_MS)}`);
    } catch (error) {
      db.close();
      throw error;
    }
    this.#db = db;
    this.#connection = new NodeSqliteConnection(db, busyMs);
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    // `DatabaseSync` is one connection: without this lock, two concurrent Kysely transactions
    // would interleave their statements inside one SQLite transaction. Kysely 0.29 locks too
    // for adapters without multiple connections, but the driver must not rely on its caller.
    const release = await this.#mutex.lock();
    if (!this.#connection) {
      release();
      throw new Error("the SQLite database is closed");
    }
    this.#release = release;
    return this.#connection;
  }

  releaseConnection(): Promise<void> {
    // Whatever ran may have written: the next change token is read afresh.
    this.#checkedAt = -Infinity;
    const release = this.#release;
    this.#release = undefined;
    release?.();
    return Promise.resolve();
  }

  async beginTransaction(
    connection: DatabaseConnection,
    settings: TransactionSettings,
  ): Promise<void> {
    // `begin immediate` takes the write lock up front, waiting out the busy timeout: a deferred
    // transaction that reads and then writes can fail with SQLITE_BUSY despite the timeout
    // when another process wrote in between. SQLite transactions are serializable, so any
    // requested isolation level holds.
    const mode = settings.accessMode === "read only" ? "deferred" : "immediate";
    await connection.executeQuery(CompiledQuery.raw(`begin ${mode}`));
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw("commit"));
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    // Some errors (SQLITE_FULL, SQLITE_IOERR, ...) make SQLite roll back by itself, and a
    // second `rollback` would then fail and hide the error that caused it.
    if (this.#db?.isTransaction) {
      await connection.executeQuery(CompiledQuery.raw("rollback"));
    }
  }

  async savepoint(connection: DatabaseConnection, savepointName: string): Promise<void> {
    await connection.executeQuery(savepointCommand("savepoint", savepointName));
  }

  async rollbackToSavepoint(connection: DatabaseConnection, savepointName: string): Promise<void> {
    await connection.executeQuery(savepointCommand("rollback to", savepointName));
  }

  async releaseSavepoint(connection: DatabaseConnection, savepointName: string): Promise<void> {
    await connection.executeQuery(savepointCommand("release", savepointName));
  }

  async destroy(): Promise<void> {
    // Waiting for the lock lets a query or transaction in progress finish before the close
    // (closing would roll it back).
    const release = await this.#mutex.lock();
    try {
      const db = this.#db;
      this.#db = undefined;
      this.#connection = undefined;
      this.#version = undefined;
      if (db?.isOpen) db.close();
    } finally {
      release();
    }
  }
}

/** Prepared statements kept per connection; past this many the cache starts over. */
const STATEMENT_CACHE_SIZE = 256;

/** Runs compiled queries on the `DatabaseSync`. */
class NodeSqliteConnection implements DatabaseConnection {
  readonly #db: DatabaseSync;
  // Access is checked on every send with the same few queries: preparing each once saves
  // SQLite's parse and plan on the hot path.
  // Whether it yields rows is kept with it: `columns()` builds a descriptor per column per call.
  readonly #statements = new Map<string, { statement: StatementSync; returnsRows: boolean }>();
  readonly #busyMs: number;

  constructor(db: DatabaseSync, busyMs: number) {
    this.#db = db;
    this.#busyMs = busyMs;
  }

  #prepare(sql: string): { statement: StatementSync; returnsRows: boolean } {
    let prepared = this.#statements.get(sql);
    if (!prepared) {
      if (this.#statements.size >= STATEMENT_CACHE_SIZE) this.#statements.clear();
      const statement = this.#db.prepare(sql);
      prepared = { statement, returnsRows: statement.columns().length > 0 };
      this.#statements.set(sql, prepared);
    }
    return prepared;
  }

  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    let result: QueryResult<R> | undefined;
    let locked: unknown;
    // Another process holds the lock (the application writing to the file): a statement SQLite
    // refused for it did nothing, and is tried again once a timer has let the isolate's other
    // work run, until the busy timeout is spent.
    const ran = await pollUntil(() => {
      try {
        result = this.#run<R>(compiledQuery);
        return true;
      } catch (error) {
        if (!sqliteLocked(error)) throw error;
        locked = error;
        return false;
      }
    }, { timeoutMs: this.#busyMs });
    if (ran) return result!;
    throw new DirectoryUnavailable(
      `The SQLite directory stayed locked by another connection for ${this.#busyMs} ms`,
      { cause: locked },
    );
  }

  #run<R>(compiledQuery: CompiledQuery): QueryResult<R> {
    {
      const { statement, returnsRows } = this.#prepare(compiledQuery.sql);
      const parameters = compiledQuery.parameters.map(toSqliteValue);
      // A statement with result columns (SELECT, or a write with RETURNING) yields rows; the
      // rest report their changes, which Kysely needs for `numDeletedRows` and friends.
      if (returnsRows) return { rows: statement.all(...parameters).map(plainRow<R>) };
      const { changes, lastInsertRowid } = statement.run(...parameters);
      return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
    }
  }

  async *streamQuery<R>(
    compiledQuery: CompiledQuery,
    chunkSize: number,
  ): AsyncIterableIterator<QueryResult<R>> {
    const statement: StatementSync = this.#db.prepare(compiledQuery.sql);
    const size = Math.max(1, Math.trunc(chunkSize) || 1);
    let chunk: R[] = [];
    for (const row of statement.iterate(...compiledQuery.parameters.map(toSqliteValue))) {
      chunk.push(plainRow<R>(row));
      if (chunk.length >= size) {
        yield { rows: chunk };
        chunk = [];
      }
    }
    if (chunk.length > 0) yield { rows: chunk };
  }
}

/** Converts the JavaScript values Kysely may bind into ones `node:sqlite` accepts. */
function toSqliteValue(value: unknown): SQLInputValue {
  if (value === undefined || value === null) return null;
  if (typeof value === "boolean") return value ? 1 : 0;
  // Timestamps are stored as ISO 8601 text, which sorts in time order.
  if (value instanceof Date) return value.toISOString();
  return value as SQLInputValue;
}

/** Copies a null-prototype row from `node:sqlite` into an ordinary object. */
function plainRow<R>(row: unknown): R {
  return { ...(row as Record<string, unknown>) } as R;
}

/** Builds `savepoint`, `rollback to` or `release` for a savepoint name. */
function savepointCommand(command: string, savepointName: string): CompiledQuery {
  return CompiledQuery.raw(`${command} "${savepointName.replaceAll('"', '""')}"`);
}
