/**
 * The slice of the `pg` package's API the directory uses.
 *
 * `pg_pool.ts` takes its types from here rather than from `@types/pg`, which Deno would pick up
 * on its own once the lockfile resolves it: `@types/pg` depends on `@types/node`, whose
 * declarations then replace Deno's own for every `node:` module in the program and break code
 * written against Deno's (the suite's `tests/assert.ts`, `node:crypto` keys, ...).
 */

import type { PostgresPool } from "kysely";

/** Settings of a pool, a subset of `pg.PoolConfig`. */
export interface PgPoolOptions {
  /** `postgres://user:pass@host:port/db?options=...`. */
  connectionString: string;
  /** Most connections open at once; pg's default is 10. */
  max?: number;
  /** Milliseconds to wait for a connection before failing; pg waits forever by default. */
  connectionTimeoutMillis?: number;
  /** Milliseconds a query may take before the client gives up on it; none by default. */
  query_timeout?: number;
  /** TCP keep-alive on connections, so that a dead peer is noticed; off by default. */
  keepAlive?: boolean;
  /** Idle milliseconds before the first keep-alive probe; the system's default (hours) if unset. */
  keepAliveInitialDelayMillis?: number;
}

/** The part of `pg.Pool` the directory and its tests use. */
export interface PgPool extends PostgresPool {
  /** Runs one statement on any pooled connection. */
  query<R = Record<string, unknown>>(
    sql: string,
    parameters?: readonly unknown[],
  ): Promise<{ rows: R[]; rowCount: number | null }>;
  /** Listens for errors of idle connections. */
  on(event: "error", listener: (error: Error) => void): this;
}

/** The `pg` module's default export, as far as the directory uses it. */
declare const pg: {
  /** pg's connection pool class. */
  Pool: new (options: PgPoolOptions) => PgPool;
};

export default pg;
