/**
 * Shared pieces of the admin API and directory access tests: each case runs once on SQLite and
 * once on Postgres (when `TEST_POSTGRES_URL` names a server), every run in a fresh database
 * (a new data directory, or a new Postgres schema dropped afterwards).
 */

import { join } from "node:path";
import type { AppOverrides } from "../main.ts";
import type { Directory } from "../src/core/directory.ts";
import { DEFAULT_SQLITE_FILE, openDirectory } from "../src/directory/open.ts";
import { createPgPool } from "../src/directory/pg_pool.ts";
import { assert } from "./assert.ts";
import { startTestServer, type TestServer } from "./helpers.ts";

/** The ADMIN_TOKEN of test servers. */
export const ADMIN_TOKEN = "admin-token-for-the-test-suite-0123456789";

const postgresUrl = Deno.env.get("TEST_POSTGRES_URL")?.trim() || undefined;
const inCi = Deno.env.get("CI") === "true";

/** A database for one case: the DATABASE_URL to give the server, and how to drop it. */
interface Database {
  /** DATABASE_URL, or undefined for the default SQLite file in the data directory. */
  url?: string;
  /** Removes whatever the case created. */
  drop(): Promise<void>;
}

/** One directory engine the suite runs on. */
export interface Backend {
  /** `sqlite` or `postgres`. */
  name: string;
  /** True when the engine is not available here (Postgres without TEST_POSTGRES_URL). */
  ignore: boolean;
  /** Creates an empty database. */
  create(): Promise<Database>;
}

/** Runs `sql` on a one-connection pool. */
async function postgresQuery(url: string, sql: string): Promise<void> {
  const pool = createPgPool({ connectionString: url, max: 1 });
  try {
    await pool.query(sql);
  } finally {
    await pool.end();
  }
}

/** SQLite in the server's data directory, and Postgres in a schema of its own. */
export const BACKENDS: Backend[] = [
  {
    name: "sqlite",
    ignore: false,
    create: () => Promise.resolve({ drop: () => Promise.resolve() }),
  },
  {
    name: "postgres",
    ignore: postgresUrl === undefined,
    async create() {
      const schema = `api_test_${crypto.randomUUID().replaceAll("-", "")}`;
      await postgresQuery(postgresUrl!, `create schema "${schema}"`);
      const url = new URL(postgresUrl!);
      url.searchParams.set("options", `-c search_path=${schema}`);
      return {
        url: url.toString(),
        drop: () => postgresQuery(postgresUrl!, `drop schema if exists "${schema}" cascade`),
      };
    },
  },
];

/**
 * Registers the guard that fails a CI run without Postgres: CI must run the Postgres variant,
 * and skipping it silently would pass without testing it.
 */
export function requirePostgresInCi(suite: string): void {
  Deno.test({
    name: `${suite} [postgres]: TEST_POSTGRES_URL is set under CI`,
    ignore: !inCi,
    fn() {
      assert(
        postgresUrl !== undefined,
        "TEST_POSTGRES_URL is not set but CI=true: CI must run the Postgres variant " +
          "(source .ci/postgres.sh before deno test)",
      );
    },
  });
}

/** Opens a directory alone (no server) on `backend`, in a fresh database. */
export async function openBackendDirectory(
  backend: Backend,
): Promise<{ directory: Directory; cleanup(): Promise<void> }> {
  const database = await backend.create();
  try {
    const directory = await openDirectory(database.url ?? "sqlite::memory:", "/nonexistent");
    return {
      directory,
      async cleanup() {
        await directory.close();
        await database.drop();
      },
    };
  } catch (err) {
    await database.drop();
    throw err;
  }
}

/** A test server with the admin API's helpers. */
export interface ApiServer extends TestServer {
  /** Which engine the directory runs on. */
  backend: string;
  /** Calls the API with ADMIN_TOKEN unless `token` says otherwise (null: no Authorization). */
  api(
    method: string,
    path: string,
    options?: { json?: unknown; token?: string | null; body?: BodyInit; headers?: HeadersInit },
  ): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }>;
  /** A second connection to the server's directory, as another application would have. */
  directory(): Promise<Directory>;
}

/** Starts a server on `backend` with ADMIN_TOKEN set, and its own fresh database. */
export async function startApiServer(
  backend: Backend,
  env: Record<string, string> = {},
  overrides: AppOverrides = {},
): Promise<ApiServer> {
  const database = await backend.create();
  let server: TestServer;
  try {
    server = await startTestServer({
      ADMIN_TOKEN,
      ...(database.url ? { DATABASE_URL: database.url } : {}),
      ...env,
    }, overrides);
  } catch (err) {
    await database.drop();
    throw err;
  }
  const opened: Directory[] = [];
  return {
    ...server,
    backend: backend.name,
    async api(method, path, options = {}) {
      const headers = new Headers(options.headers);
      const token = options.token === undefined ? ADMIN_TOKEN : options.token;
      if (token !== null) headers.set("authorization", `Bearer ${token}`);
      let body = options.body;
      if (options.json !== undefined) {
        headers.set("content-type", "application/json");
        body = JSON.stringify(options.json);
      }
      const res = await fetch(`${server.url}${path}`, { method, headers, body });
      const text = await res.text();
      let parsed: Record<string, unknown> = {};
      if (text !== "") {
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = { text };
        }
      }
      return { status: res.status, body: parsed, headers: res.headers };
    },
    async directory() {
      const directory = await openDirectory(
        database.url ?? join(server.dataDir, DEFAULT_SQLITE_FILE),
        server.dataDir,
      );
      opened.push(directory);
      return directory;
    },
    async close() {
      for (const d of opened) await d.close();
      await server.close();
      await database.drop();
    },
  };
}

/** Registers one case per backend, each with a fresh server and database. */
export function apiTest(
  name: string,
  fn: (server: ApiServer) => Promise<void>,
  env: Record<string, string> = {},
  overrides: AppOverrides = {},
): void {
  for (const backend of BACKENDS) {
    Deno.test({
      name: `${name} [${backend.name}]`,
      ignore: backend.ignore,
      async fn() {
        const server = await startApiServer(backend, env, overrides);
        try {
          await fn(server);
        } finally {
          await server.close();
        }
      },
    });
  }
}

/**
 * An `AppOverrides.directory` that replaces one method of the server's directory with `wrap`
 * (given the original, bound); a proxy keeps the directory's class (the API asks for it) and its
 * private fields.
 */
export function directoryWith<K extends keyof Directory>(
  method: K,
  wrap: (original: Directory[K]) => Directory[K],
): (directory: Directory) => Directory {
  return (d) =>
    new Proxy(d, {
      get(target, key) {
        const value = Reflect.get(target, key, target);
        if (typeof value !== "function") return value;
        const bound = value.bind(target);
        return key === method ? wrap(bound) : bound;
      },
    });
}
