/** A `pg` connection pool for the directory, typed by `pg_types.d.ts` instead of `@types/pg`. */

// @ts-types="./pg_types.d.ts"
import pg from "pg";
import type { PgPool, PgPoolOptions } from "./pg_types.d.ts";

export type { PgPool, PgPoolOptions } from "./pg_types.d.ts";

/** Creates a `pg.Pool`. */
export function createPgPool(options: PgPoolOptions): PgPool {
  return new pg.Pool(options);
}
