/**
 * The server as production runs it, a process of its own whose log is kept, and the troubles
 * its stores meet there: a volume that fills up (a tmpfs of its own), another process holding
 * the SQLite directory's write lock.
 */

import { eventually } from "./assert.ts";
import { TEST_SECRET, type TestClient } from "./helpers.ts";

/** Runs a command, failing with what it said on stderr. */
export async function run(cmd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/**
 * main.ts as a separate process, as production runs it; its stdout and stderr are kept. With
 * `clockFile`, its wall clock is off by the milliseconds that file holds, read again as it runs;
 * with `clockOffsetMs`, by that much for good (see stepped_clock.ts). `flags` replace
 * `--allow-all` (see {@link taskStartFlags}); with `pidNamespace`, it runs as PID 1 of a PID
 * namespace of its own, as in a container (root only: see {@link mayUnshare}).
 */
export function spawnServer(
  env: Record<string, string>,
  options: {
    clockFile?: string;
    clockOffsetMs?: number;
    flags?: string[];
    pidNamespace?: boolean;
  } = {},
) {
  const clock: Record<string, string> = {};
  if (options.clockFile) clock.CLOCK_OFFSET_FILE = options.clockFile;
  if (options.clockOffsetMs !== undefined) clock.CLOCK_OFFSET_MS = String(options.clockOffsetMs);
  const preload = Object.keys(clock).length > 0
    ? ["--preload", new URL("./stepped_clock.ts", import.meta.url).pathname]
    : [];
  const deno = [
    Deno.execPath(),
    "run",
    ...(options.flags ?? ["--allow-all"]),
    ...preload,
    new URL("../main.ts", import.meta.url).pathname,
  ];
  // unshare ignores SIGTERM while it waits for its child; should it die, the server is stopped.
  const [cmd, ...args] = options.pidNamespace
    ? ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", ...deno]
    : deno;
  const child = new Deno.Command(cmd, {
    args,
    env: { PORT: "0", HOST: "127.0.0.1", JWT_SECRET: TEST_SECRET, NO_COLOR: "1", ...clock, ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  const pumps = [child.stdout, child.stderr].map(async (stream) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) log += text;
  });
  let exited: Deno.CommandStatus | undefined;
  const status = child.status.then(async (s) => {
    await Promise.all(pumps);
    return exited = s;
  });
  return {
    child,
    status,
    log: () => log,
    /** The server's URL once it listens; fails with its log when it exits first. */
    async url(): Promise<string> {
      let url: string | undefined;
      await eventually(
        () => !!(url = /listening on (http:\S+)/.exec(log)?.[1]) || exited !== undefined,
        30_000,
        "the server to listen",
      );
      if (!url) throw new Error(`the server exited (${exited?.code}) instead: ${log}`);
      return url;
    },
    async kill(signal: Deno.Signal): Promise<Deno.CommandStatus> {
      // In a namespace of its own, the server is unshare's child, told directly.
      const pids = options.pidNamespace
        ? (await Deno.readTextFile(`/proc/${child.pid}/task/${child.pid}/children`).catch(() => ""))
          .trim().split(/\s+/).filter(Boolean).map(Number)
        : [child.pid];
      for (const pid of pids) {
        try {
          Deno.kill(pid, signal);
        } catch {
          // Gone already.
        }
      }
      return await status;
    },
  };
}

/**
 * Runs `fn` on a fresh DATA_DIR (`env` names it, with `extra` beside): `spawn` starts a server (on
 * `env` unless given another), `clients` are closed after. Every server it started is then
 * resumed if stopped and sent `stop` (SIGTERM unless told; one gone already is fine), and the data
 * removed.
 */
export async function withDataDir(
  fn: (t: {
    dataDir: string;
    env: Record<string, string>;
    clients: TestClient[];
    spawn: typeof spawnServer;
  }) => Promise<void>,
  {
    prefix = "chat-servers-",
    extra = {} as Record<string, string>,
    stop = "SIGTERM" as Deno.Signal,
  } = {},
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix });
  const env = { DATA_DIR: dataDir, ...extra };
  const clients: TestClient[] = [];
  const servers: ReturnType<typeof spawnServer>[] = [];
  const spawn: typeof spawnServer = (given = env, options) => {
    const server = spawnServer(given, options);
    servers.push(server);
    return server;
  };
  try {
    await fn({ dataDir, env, clients, spawn });
  } finally {
    for (const c of clients) c.socket.close();
    for (const server of servers) {
      try {
        server.child.kill("SIGCONT");
      } catch {
        // Gone already.
      }
    }
    await Promise.all(servers.map((server) => server.kill(stop)));
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

/** The flags `deno task start` runs main.ts with, as deno.json's start task names them. */
export async function taskStartFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const words: string[] = config.tasks.start.split(/\s+/);
  const run = words.indexOf("run");
  const main = words.indexOf("main.ts");
  if (words[0] !== "deno" || run < 0 || main < run) {
    throw new Error(
      `the start task is no longer "deno run <flags> main.ts": ${config.tasks.start}`,
    );
  }
  return words.slice(run + 1, main);
}

/** Whether this process may start one in a PID namespace of its own (root, with unshare). */
export async function mayUnshare(): Promise<boolean> {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  const out = await new Deno.Command("unshare", {
    args: ["--pid", "--fork", "--mount-proc", "true"],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  return out?.success ?? false;
}

/** How often a spawned server said its registry entry had lapsed and it registered again. */
export const lapsesOf = (server: { log(): string }): number =>
  server.log().match(/lapsed; registered again/g)?.length ?? 0;

/** Whether this process may mount a tmpfs (root, with the capability to), tried once. */
export async function mayMount(): Promise<boolean> {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  const dir = await Deno.makeTempDir({ prefix: "disk-probe-" });
  try {
    await run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir);
    await run("umount", dir);
    return true;
  } catch {
    return false;
  } finally {
    await Deno.remove(dir).catch(() => {});
  }
}

/** A small tmpfs of its own (16 MiB unless told), which a test fills up and frees. */
export async function smallDisk(mib = 16) {
  const dir = await Deno.makeTempDir({ prefix: "disk-full-" });
  await run("mount", "-t", "tmpfs", "-o", `size=${mib}m,mode=0700`, "tmpfs", dir);
  const filler = `${dir}/.filler`;
  return {
    dir,
    /** Writes a file until the volume has no byte left. */
    async fill(): Promise<void> {
      const file = await Deno.open(filler, { write: true, create: true, append: true });
      const chunk = new Uint8Array(64 * 1024);
      try {
        while (true) await file.write(chunk);
      } catch (err) {
        if (!(err instanceof Error && /no space left/i.test(err.message))) throw err;
      } finally {
        file.close();
      }
    },
    async free(): Promise<void> {
      await Deno.remove(filler);
    },
    async unmount(): Promise<void> {
      await run("umount", dir).catch(() => run("umount", "-l", dir));
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/**
 * Another process holding the SQLite file's write lock until its stdin closes. With `creating`,
 * the file is new and the lock exclusive, in SQLite's rollback journal: what a process that is
 * creating the file holds before it makes it WAL (no reader gets in).
 */
export async function holdWriteLock(
  path: string,
  { creating = false } = {},
): Promise<{ release(): Promise<void> }> {
  const script = `
    import { DatabaseSync } from "node:sqlite";
    const db = new DatabaseSync(Deno.args[0]);
    db.exec("pragma busy_timeout = 5000");
    if (Deno.args[1] === "creating") db.exec("create table held (x); begin exclusive");
    else db.exec("begin immediate");
    console.log("locked");
    for await (const _ of Deno.stdin.readable) { /* held until the test lets go */ }
    db.exec("commit");
    db.close();
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", script, path, creating ? "creating" : "held"],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("locked")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the lock holder ended: ${out}`);
    out += value;
  }
  return {
    async release() {
      await child.stdin.close();
      await reader.cancel();
      await child.status;
    },
  };
}
