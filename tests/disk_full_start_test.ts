/**
 * A server (re)started while DATA_DIR is full, as a real process on a small tmpfs. After a clean
 * stop SQLite cannot even open its files (it creates the -shm file): the start fails with a
 * message naming DATA_DIR, not only "disk I/O error".
 *
 * Mounting a tmpfs needs root (and the right to mount): elsewhere the tests are skipped, and
 * their names say so.
 */

import { assert, assertEquals, eventually } from "./assert.ts";
import { TEST_SECRET } from "./helpers.ts";

async function run(cmd: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Whether this process may mount a tmpfs (root, with the capability to), tried once. */
async function mayMount(): Promise<boolean> {
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

const skip = !(await mayMount());

/** A test's name, which says so when it is skipped. */
const named = (name: string) => skip ? `${name} (SKIPPED: mounting a tmpfs needs root)` : name;

/** A small tmpfs of its own, which a test fills up and frees. */
async function smallDisk() {
  const dir = await Deno.makeTempDir({ prefix: "disk-full-" });
  await run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", dir);
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

/** main.ts as a separate process, as production runs it; its stdout and stderr are kept. */
function spawnServer(env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL("../main.ts", import.meta.url).pathname],
    env: { PORT: "0", HOST: "127.0.0.1", JWT_SECRET: TEST_SECRET, NO_COLOR: "1", ...env },
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
      try {
        child.kill(signal);
      } catch {
        // Gone already.
      }
      return await status;
    },
  };
}

Deno.test({
  name: named(
    "disk: a server stopped cleanly cannot start on a full DATA_DIR, and its message says DATA_DIR may be full",
  ),
  ignore: skip,
  async fn() {
    // The directory's SQLite file is opened first; elsewhere, KV's is the one that fails.
    for (const directoryElsewhere of [false, true]) {
      const disk = await smallDisk();
      const elsewhere = await Deno.makeTempDir({ prefix: "disk-full-directory-" });
      const env: Record<string, string> = { DATA_DIR: disk.dir };
      if (directoryElsewhere) env.DATABASE_URL = `${elsewhere}/directory.sqlite3`;
      const servers: ReturnType<typeof spawnServer>[] = [];
      try {
        const first = spawnServer(env);
        servers.push(first);
        await first.url();
        assertEquals((await first.kill("SIGTERM")).code, 0, first.log());
        await disk.fill();
        const again = spawnServer(env);
        servers.push(again);
        const status = await again.status;
        const log = again.log();
        assertEquals(status.code, 1, log);
        const store = directoryElsewhere
          ? `KV_PATH (${disk.dir}/chat.kv) could not be opened`
          : "The directory's SQLite file in DATA_DIR: the directory could not be opened";
        assert(log.includes(`Could not start: ${store}`), log);
        // SQLite's own words, and what they mean here.
        assert(/disk I\/O error|database or disk is full/.test(log), log);
        assert(log.includes(`DATA_DIR (${disk.dir}) may be full or not writable`), log);
        assert(!/\n\s+at /.test(log), `a stack trace: ${log}`);
      } finally {
        for (const server of servers) await server.kill("SIGKILL");
        await disk.unmount();
        await Deno.remove(elsewhere, { recursive: true });
      }
    }
  },
});
