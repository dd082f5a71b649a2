/**
 * Servers run with the permissions the tasks grant (not `--allow-all`), under which Deno refuses
 * to read /proc/self: processes sharing a KV file must still tell each other apart (containers all
 * PID 1 on one host name), the isolates of one `deno serve --parallel` must still know each other,
 * and the /proc series of /metrics are left out with a line in the log saying why.
 */

import { assert, assertEquals, eventually } from "./assert.ts";
import { freePort, joinRoom, TEST_SECRET, type TestClient } from "./helpers.ts";
import { mayUnshare, taskStartFlags, withDataDir } from "./server_process.ts";
import { PROC_REFUSED_NOTE } from "../src/http/process_metrics.ts";

type Frame = Record<string, unknown>;
const ROOT = new URL("..", import.meta.url).pathname;

/** The words of deno.json's `name` task after `deno`. */
async function taskArgs(name: string): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  const words: string[] = config.tasks[name].split(/\s+/);
  assertEquals(words[0], "deno", config.tasks[name]);
  return words.slice(1);
}

/** Whether `client` gets `body` as a chat message within a few seconds. */
const hears = (client: TestClient, body: string) =>
  client.next((f: Frame) => f.type === "chat_message" && f.message === body, 5000)
    .then(() => true, () => false);

Deno.test({
  name:
    "process identity: two servers run as `deno task start` runs them on one KV file, each PID 1 of its own PID namespace on one host name, hear each other's messages",
  ignore: !(await mayUnshare()),
  fn: () =>
    withDataDir(async ({ env, clients, spawn }) => {
      const flags = await taskStartFlags();
      assert(!flags.includes("--allow-all") && !flags.includes("-A"), flags.join(" "));
      const a = spawn(env, { flags, pidNamespace: true });
      const urlA = await a.url();
      const b = spawn(env, { flags, pidNamespace: true });
      const urlB = await b.url();
      const ann = (await joinRoom(urlA, "r", "ann")).client;
      const ben = (await joinRoom(urlB, "r", "ben")).client;
      clients.push(ann, ben);
      ben.send({ message: "from B" });
      ann.send({ message: "from A" });
      assertEquals([await hears(ann, "from B"), await hears(ben, "from A")], [true, true]);
      // Both are PID 1 on one host name; only what the registry adds tells them apart.
      assert(/taking clients in/.test(b.log()), `B took A for its own process: ${b.log()}`);
    }, { prefix: "process-identity-" }),
});

Deno.test("process identity: under `deno task start`'s permissions /metrics leaves out the descriptor series and the log says why, once; under --allow-all it has them", async () => {
  for (const allowAll of [false, true]) {
    await withDataDir(async ({ env, spawn }) => {
      const server = spawn(env, allowAll ? {} : { flags: await taskStartFlags() });
      const url = await server.url();
      const text = await (await fetch(`${url}/metrics`)).text();
      const has = (name: string) => new RegExp(`^${name} \\d`, "m").test(text);
      const expected = allowAll && Deno.build.os === "linux";
      assertEquals([has("process_open_fds"), has("process_max_fds")], [expected, expected]);
      const notes = server.log().split(PROC_REFUSED_NOTE).length - 1;
      assertEquals(notes, Deno.build.os === "linux" && !allowAll ? 1 : 0, server.log());
    }, { prefix: "process-identity-" });
  }
});

/**
 * `deno <args>` serving on a free port with two isolates, once both answer; `stop` sends SIGTERM
 * and returns the exit code with the output.
 */
async function twoIsolates(args: (port: number) => string[]) {
  const dataDir = await Deno.makeTempDir({ prefix: "process-identity-" });
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: args(port),
    cwd: ROOT,
    env: {
      PORT: String(port),
      HOST: "127.0.0.1",
      DENO_JOBS: "2",
      DATA_DIR: dataDir,
      JWT_SECRET: TEST_SECRET,
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  const pumps = [child.stdout, child.stderr].map(async (stream) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) log += text;
  });
  const url = `http://127.0.0.1:${port}`;
  /** Which isolate answers fresh connections, and how many sockets each holds. */
  const isolates = async (samples = 20) => {
    const seen = new Map<string, number>();
    for (let i = 0; i < samples; i++) {
      const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
      try {
        const body = await (await fetch(`${url}/healthz`, { client })).json();
        seen.set(body.isolate, body.connections);
      } catch {
        // Not listening yet.
      } finally {
        client.close();
      }
    }
    return seen;
  };
  const stop = async () => {
    child.kill("SIGTERM");
    const status = await child.status;
    await Promise.all(pumps);
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    return { code: status.code, log };
  };
  try {
    await eventually(async () => (await isolates()).size === 2, 30_000, "two isolates");
  } catch (err) {
    throw new Error(`${err}; it said: ${(await stop()).log}`);
  }
  return { url, isolates, stop, log: () => log };
}

Deno.test("process identity: the isolates of `deno task start:parallel` know each other as one process, so a scrape answers for both; the log says once why the descriptor series are left out", async () => {
  const args = await taskArgs("start:parallel");
  const server = await twoIsolates(() => args);
  let stopped = false;
  try {
    const ids = [...(await server.isolates()).keys()].sort();
    for (let i = 0; i < 4; i++) {
      const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
      const text = await (await fetch(`${server.url}/metrics`, { client })).text();
      client.close();
      const labelled = new Set([...text.matchAll(/isolate="([^"]+)"/g)].map((m) => m[1]));
      assertEquals([...labelled].sort(), ids);
    }
    assert(!/Another server's process/.test(server.log()), server.log());
    const { code, log } = await server.stop();
    stopped = true;
    assertEquals(code, 0, log);
    assertEquals(log.split(PROC_REFUSED_NOTE).length - 1, Deno.build.os === "linux" ? 1 : 0, log);
  } finally {
    if (!stopped) await server.stop();
  }
});

Deno.test("process identity: `deno serve --parallel` run by hand with the task's permissions and no id from the launcher delivers every message to every isolate's clients once, and stops with 0", async () => {
  // The permissions scripts/start_parallel.ts gives `deno serve`: those of `deno task start`.
  const flags = await taskStartFlags();
  const server = await twoIsolates((port) => [
    "serve",
    "--parallel",
    ...flags,
    "--port",
    String(port),
    "--host",
    "127.0.0.1",
    `${ROOT}/serve.ts`,
  ]);
  const clients: TestClient[] = [];
  let stopped = false;
  try {
    // The kernel spreads connections over isolates at random: open more until both hold some.
    let held = new Map<string, number>();
    while (clients.length < 4 || [...held.values()].some((n) => n === 0) || held.size < 2) {
      assert(clients.length < 30, `connections per isolate: ${JSON.stringify([...held])}`);
      clients.push((await joinRoom(server.url, "r", `u${clients.length}`)).client);
      if (clients.length >= 4) held = await server.isolates();
    }
    const perSender = 5;
    const bodies: string[] = [];
    for (let i = 0; i < perSender; i++) {
      for (const [n, c] of clients.entries()) {
        c.send({ message: `m${n}-${i}` });
        bodies.push(`m${n}-${i}`);
      }
    }
    for (const client of clients) {
      const got: string[] = [];
      while (got.length < bodies.length) {
        got.push((await client.next((f) => f.type === "chat_message", 10_000)).message as string);
      }
      assertEquals(got.slice().sort(), bodies.slice().sort());
    }
    await clients[0].nothing((f) => f.type === "chat_message", 500);
    for (const c of clients) c.socket.close();
    const { code, log } = await server.stop();
    stopped = true;
    assertEquals(code, 0, log);
  } finally {
    for (const c of clients) c.socket.close();
    if (!stopped) await server.stop();
  }
});
