/**
 * The servers compared in every run. A peer is how to start it (here) plus a client adapter
 * (bench/load/adapters.mjs: how a member of room R connects, sends a timestamped message, and
 * recognises a delivery). A fourth peer, e.g. this server's native protocol, is one more entry
 * in {@link PEERS} and one more adapter.
 */

import { type Child, freePort, spawnChild, waitHealthy } from "./procs.ts";

/** Shared settings for starting peers. */
export interface PeerContext {
  /** Directory of this run's logs. */
  logDir: string;
  /** Root of the chat server to measure (main.ts, serve.ts, deno.json). */
  serverDir: string;
  /** HS256 secret the chat server verifies tokens with. */
  secret: string;
  /** Parent of the peers' temporary data directories. */
  tmpRoot: string;
  /** Tokens for the chat server (user u uses tokens[u % length]). */
  tokens?: string[];
}

/** How to start one server. */
export interface StartOptions {
  /** `taskset -c` cores; unpinned when unset. */
  cpus?: string;
  /** Write a V8 CPU profile into this directory (Deno peers only). */
  profileDir?: string;
  /** Label for the log file. */
  tag: string;
}

/** A started server. */
export interface RunningPeer {
  /** The peer's description. */
  spec: PeerSpec;
  /** `ws://127.0.0.1:<port>`. */
  base: string;
  /** `http://127.0.0.1:<port>`. */
  http: string;
  /** Server process id (for CPU and RSS). */
  pid: number;
  /** The process. */
  child: Child;
  /** Stops the server and removes its data. */
  stop(): Promise<void>;
}

/** One peer. */
export interface PeerSpec {
  /** Key in results. */
  id: string;
  /** Name in tables. */
  label: string;
  /** Client adapter name in bench/load/adapters.mjs. */
  adapter: string;
  /** Whether every message is committed to durable history before it is broadcast. */
  persists: boolean;
  /** The command line, given a port and options. */
  command(ctx: PeerContext, port: number, options: StartOptions): string[];
  /** Environment added to the runner's. */
  env(ctx: PeerContext, port: number, dataDir: string): Record<string, string>;
  /** Working directory. */
  cwd(ctx: PeerContext): string;
}

const benchDir = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Environment of this server in the benchmark. The per-connection and per-user send limits are
 * lifted (the peers have none): the benchmark measures delivery, not flood protection.
 */
function oursEnv(ctx: PeerContext, port: number, dataDir: string): Record<string, string> {
  return {
    PORT: String(port),
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    JWT_SECRET: ctx.secret,
    RATE_LIMIT_PER_SECOND: "1000000",
    RATE_LIMIT_USER_PER_SECOND: "1000000",
    NO_COLOR: "1",
  };
}

/**
 * The V8 flags `deno task start` gives the server (read from its deno.json), so the benchmark
 * measures the server as it is shipped.
 */
function startTaskV8Flags(serverDir: string): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${serverDir}/deno.json`));
  const task = String(config.tasks?.start ?? "");
  return task.match(/--v8-flags=\S+/g) ?? [];
}

const profileFlags = (options: StartOptions) =>
  options.profileDir ? ["--cpu-prof", `--cpu-prof-dir=${options.profileDir}`] : [];

/** Raw Deno: the local limit. */
export const RAW_DENO: PeerSpec = {
  id: "raw_deno",
  label: "raw Deno",
  adapter: "raw",
  persists: false,
  command: (_ctx, _port, options) => [
    Deno.execPath(),
    "run",
    "-A",
    // Only the + KV variant opens Deno KV; the flag changes nothing else.
    "--unstable-kv",
    ...profileFlags(options),
    `${benchDir}/peers/raw_deno.ts`,
  ],
  env: (_ctx, port, dataDir) => ({ PORT: String(port), HOST: "127.0.0.1", DATA_DIR: dataDir }),
  cwd: () => benchDir,
};

/**
 * Raw Deno committing each message to Deno KV before the broadcast: the local limit of a server
 * that persists, which tells the price of durability from the rest of this server's cost.
 */
export const RAW_DENO_KV: PeerSpec = {
  ...RAW_DENO,
  id: "raw_deno_kv",
  label: "raw Deno + KV commit",
  persists: true,
  env: (ctx, port, dataDir) => ({ ...RAW_DENO.env(ctx, port, dataDir), PERSIST: "kv" }),
};

/** This server, ticket socket, history in Deno KV. */
export const OURS_TICKET: PeerSpec = {
  id: "ours_ticket",
  label: "ours (ticket socket)",
  adapter: "ticket",
  persists: true,
  command: (ctx, _port, options) => [
    Deno.execPath(),
    "run",
    "-A",
    ...startTaskV8Flags(ctx.serverDir),
    ...profileFlags(options),
    `${ctx.serverDir}/main.ts`,
  ],
  env: oursEnv,
  cwd: (ctx) => ctx.serverDir,
};

/** This server, native protocol (`/ws`, join, send with a client id), history in Deno KV. */
export const OURS_NATIVE: PeerSpec = {
  ...OURS_TICKET,
  id: "ours_native",
  label: "ours (native protocol)",
  adapter: "native",
};

/** Socket.IO 4.8 on Node. */
export const SOCKET_IO: PeerSpec = {
  id: "socketio",
  label: "Socket.IO 4.8 (Node)",
  adapter: "socketio",
  persists: false,
  command: () => ["node", `${benchDir}/peers/socketio_node.mjs`],
  env: (_ctx, port, dataDir) => ({
    PORT: String(port),
    HOST: "127.0.0.1",
    DATA_DIR: dataDir,
    NODE_ENV: "production",
  }),
  cwd: () => benchDir,
};

/** This server under `deno serve --parallel`, two isolates sharing the KV file. */
export const OURS_PARALLEL: PeerSpec = {
  id: "ours_parallel",
  label: "ours, deno serve --parallel (2 isolates)",
  adapter: "ticket",
  persists: true,
  command: (ctx, port) => [
    Deno.execPath(),
    "serve",
    "--parallel",
    "-A",
    ...startTaskV8Flags(ctx.serverDir),
    "--port",
    String(port),
    "--host",
    "127.0.0.1",
    `${ctx.serverDir}/serve.ts`,
  ],
  env: (ctx, port, dataDir) => ({ ...oursEnv(ctx, port, dataDir), DENO_JOBS: "2" }),
  cwd: (ctx) => ctx.serverDir,
};

/** The peers of scenarios 1–5, in the order they run. */
export const PEERS: PeerSpec[] = [RAW_DENO, OURS_TICKET, OURS_NATIVE, SOCKET_IO];

/** Peers of the fan-out ladders only, after those of {@link PEERS}. */
export const FANOUT_ONLY_PEERS: PeerSpec[] = [RAW_DENO_KV];

/** Starts a peer on a free port and waits for its health endpoint. */
export async function startPeer(
  spec: PeerSpec,
  ctx: PeerContext,
  options: StartOptions,
): Promise<RunningPeer> {
  const port = freePort();
  const dataDir = await Deno.makeTempDir({ dir: ctx.tmpRoot, prefix: `${spec.id}-` });
  const child = await spawnChild(`${options.tag}-${spec.id}`, spec.command(ctx, port, options), {
    env: spec.env(ctx, port, dataDir),
    cwd: spec.cwd(ctx),
    cpus: options.cpus,
    logDir: ctx.logDir,
  });
  const http = `http://127.0.0.1:${port}`;
  try {
    await waitHealthy(`${http}/healthz`, child);
  } catch (err) {
    await child.stop();
    throw err;
  }
  return {
    spec,
    base: `ws://127.0.0.1:${port}`,
    http,
    pid: child.pid,
    child,
    async stop() {
      await child.stop(8000);
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
}

/** Signs `count` HS256 tokens (`sub` 1..count, `rooms: ["ticket:*"]`) with jose from the server's import map. */
export async function mintTokens(ctx: PeerContext, count: number): Promise<string[]> {
  const code = `
    import { SignJWT } from "jose";
    const key = new TextEncoder().encode(Deno.env.get("BENCH_SECRET"));
    const out = [];
    for (let i = 1; i <= Number(Deno.env.get("BENCH_USERS")); i++) {
      out.push(await new SignJWT({ sub: String(i), username: "user" + i, rooms: ["ticket:*"] })
        .setProtectedHeader({ alg: "HS256" }).setIssuedAt().setExpirationTime("12h").sign(key));
    }
    console.log(JSON.stringify(out));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: ctx.serverDir,
    env: { BENCH_SECRET: ctx.secret, BENCH_USERS: String(count), NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`minting tokens failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}
