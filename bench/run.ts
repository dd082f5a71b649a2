/**
 * The benchmark: starts raw Deno, this server and Socket.IO side by side, drives them from Node
 * load generators, and writes bench/results/ and (full runs) docs/benchmarks.md with its charts.
 *
 * `deno run -A bench/run.ts [--quick] [--only=fanout,rooms,...] [--server-dir=PATH] [--docs|--no-docs]`
 * `deno run -A bench/run.ts --report=bench/results/latest.json` re-renders the docs only.
 */

import { Fleet } from "./lib/load.ts";
import {
  FANOUT_ONLY_PEERS,
  mintTokens,
  OURS_TICKET,
  type PeerContext,
  PEERS,
  type PeerSpec,
} from "./lib/peers.ts";
import { summariseProfile } from "./lib/profile.ts";
import { initClockTicks, killAllNow, stopAll, taskset, waitForQuiet } from "./lib/procs.ts";
import { renderCharts, renderMarkdown, type Results, verdicts } from "./lib/report.ts";
import {
  attachments,
  type Bench,
  connections,
  fanout,
  fanoutProfileLoad,
  ingest,
  ingestProfileLoad,
  manyRooms,
  parallel,
  profileRun,
} from "./lib/scenarios.ts";
import { settingsFor } from "./lib/settings.ts";

const SCENARIOS = [
  "fanout",
  "rooms",
  "ingest",
  "attachments",
  "parallel",
  "connections",
  "profile",
];

const benchDir = new URL(".", import.meta.url).pathname.replace(/\/$/, "");
const repoDir = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

function parseArgs(args: string[]) {
  const out = {
    quick: false,
    only: [...SCENARIOS],
    serverDir: repoDir,
    docs: undefined as boolean | undefined,
    report: undefined as string | undefined,
    snapshot: false,
    peers: undefined as string[] | undefined,
    sizes: undefined as number[] | undefined,
  };
  for (const arg of args) {
    const [key, value] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, ""];
    if (key === "--quick") out.quick = true;
    else if (key === "--only") {
      out.only = value.split(",").map((s) => s.trim()).filter(Boolean);
      const unknown = out.only.filter((s) => !SCENARIOS.includes(s));
      if (unknown.length > 0) {
        throw new Error(
          `unknown scenario(s) ${unknown.join(", ")}; known: ${SCENARIOS.join(", ")}`,
        );
      }
    } else if (key === "--server-dir") out.serverDir = value.replace(/\/$/, "");
    else if (key === "--docs") out.docs = true;
    else if (key === "--no-docs") out.docs = false;
    else if (key === "--report") out.report = value;
    else if (key === "--snapshot") out.snapshot = true;
    else if (key === "--sizes") out.sizes = value.split(",").map(Number).filter((n) => n > 0);
    else if (key === "--peers") out.peers = value.split(",").map((s) => s.trim()).filter(Boolean);
    // `deno task bench -- --quick` hands the script the separator itself.
    else if (arg === "--") continue;
    else if (key === "--help" || key === "-h") {
      console.log(
        "deno task bench [-- --quick] [--only=" + SCENARIOS.join(",") +
          "] [--peers=raw_deno,raw_deno_kv,ours_ticket,ours_native,socketio] [--sizes=1000]\n" +
          "  [--server-dir=PATH | --snapshot] [--docs|--no-docs] [--report=results.json]\n" +
          "  --snapshot: measure the committed HEAD (exported with git archive), not the work tree",
      );
      Deno.exit(0);
    } else throw new Error(`unknown argument ${arg}`);
  }
  return out;
}

async function run(cmd: string, args: string[], cwd = repoDir): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      cwd,
      stdout: "piped",
      stderr: "null",
      env: { GIT_OPTIONAL_LOCKS: "0" },
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "";
  }
}

/** Installs the Node side from the lock file when it is missing. */
async function ensureNodeModules(log: (s: string) => void): Promise<void> {
  try {
    await Deno.stat(`${benchDir}/node_modules/hdr-histogram-js`);
    await Deno.stat(`${benchDir}/node_modules/socket.io`);
    await Deno.stat(`${benchDir}/node_modules/ws`);
    return;
  } catch {
    // Install below.
  }
  log("installing the Node side: npm ci --prefix bench");
  const status = await new Deno.Command("npm", {
    args: ["ci", "--prefix", benchDir, "--no-audit", "--no-fund"],
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) throw new Error("npm ci --prefix bench failed");
}

async function machine() {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  return {
    cores: navigator.hardwareConcurrency,
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown CPU",
    memoryGiB: Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0) / 1024 / 1024,
    kernel: Deno.osRelease(),
  };
}

async function versions(): Promise<Record<string, string>> {
  const pkg = async (name: string) => {
    try {
      return JSON.parse(await Deno.readTextFile(`${benchDir}/node_modules/${name}/package.json`))
        .version;
    } catch {
      return "?";
    }
  };
  return {
    Deno: Deno.version.deno,
    Node: (await run("node", ["-v"])).replace(/^v/, ""),
    "socket.io": await pkg("socket.io"),
    ws: await pkg("ws"),
    "hdr-histogram-js": await pkg("hdr-histogram-js"),
  };
}

/** Writes the page and charts, formatted like the rest of the repository. */
async function writeDocs(results: Results, log: (s: string) => void): Promise<void> {
  const docsDir = `${repoDir}/docs`;
  await Deno.mkdir(docsDir, { recursive: true });
  const charts = renderCharts(results);
  if (charts.fanout) await Deno.writeTextFile(`${docsDir}/benchmarks_fanout.svg`, charts.fanout);
  if (charts.capacity) {
    await Deno.writeTextFile(`${docsDir}/benchmarks_capacity.svg`, charts.capacity);
  }
  await Deno.writeTextFile(`${docsDir}/benchmarks.md`, renderMarkdown(results, charts));
  await new Deno.Command(Deno.execPath(), {
    // `deno fmt --check` in CI covers Markdown and SVG too.
    args: [
      "fmt",
      "--config",
      `${repoDir}/deno.json`,
      `${docsDir}/benchmarks.md`,
      ...(charts.fanout ? [`${docsDir}/benchmarks_fanout.svg`] : []),
      ...(charts.capacity ? [`${docsDir}/benchmarks_capacity.svg`] : []),
    ],
    stdout: "null",
    stderr: "null",
  }).output();
  log(`wrote docs/benchmarks.md, docs/benchmarks_fanout.svg, docs/benchmarks_capacity.svg`);
}

function printVerdicts(results: Results, log: (s: string) => void) {
  log("targets:");
  for (const v of verdicts(results)) {
    log(
      `  [${v.status.padEnd(6)}] ${v.target}: ${v.measured}${` (${v.margin})`}`,
    );
  }
}

async function main(): Promise<number> {
  const args = parseArgs(Deno.args);
  const sink: { file?: Deno.FsFile } = {};
  const encoder = new TextEncoder();
  const log = (line: string) => {
    console.log(line);
    sink.file?.writeSync(encoder.encode(line + "\n"));
  };
  if (args.report) {
    const results = JSON.parse(await Deno.readTextFile(args.report)) as Results;
    await writeDocs(results, log);
    printVerdicts(results, log);
    return 0;
  }
  const started = performance.now();
  await ensureNodeModules(log);
  await initClockTicks();
  const fdLimit = Number(await run("bash", ["-c", "ulimit -Hn"])) || 1024;
  const settings = settingsFor(args.quick, fdLimit);
  if (args.sizes) {
    // Fan-out room sizes for an iteration run; a run with its own sizes is never "latest".
    settings.fanout.sizes = args.sizes;
    settings.fanout.referenceSize = args.sizes[0];
  }
  if (args.peers) {
    // A partial run for iterating on one peer; never written to the docs as a full run.
    const all = [...PEERS, ...FANOUT_ONLY_PEERS];
    const keep = (list: PeerSpec[]) => list.filter((p) => args.peers!.includes(p.id));
    if (keep(all).length === 0) throw new Error(`--peers matched none of ${all.map((p) => p.id)}`);
    PEERS.splice(0, PEERS.length, ...keep(PEERS));
    FANOUT_ONLY_PEERS.splice(0, FANOUT_ONLY_PEERS.length, ...keep(FANOUT_ONLY_PEERS));
  }
  const cores = navigator.hardwareConcurrency;
  const pin = taskset() !== null && cores >= 2;
  const serverCpus = pin ? "0" : undefined;
  const clientCpus = pin ? (cores > 2 ? `1-${cores - 1}` : "1") : undefined;
  if (!pin) log("taskset missing or a single core: nothing is pinned");

  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const rawDir = `${benchDir}/results/raw/${stamp}${args.quick ? "-quick" : ""}`;
  const logDir = `${rawDir}/logs`;
  await Deno.mkdir(logDir, { recursive: true });
  sink.file = await Deno.open(`${rawDir}/run.log`, { create: true, append: true });
  const tmpRoot = await Deno.makeTempDir({ prefix: "chat-bench-" });
  const secret = Array.from(
    crypto.getRandomValues(new Uint8Array(24)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  let commit = await run("git", ["rev-parse", "HEAD"], args.serverDir) || "unknown";
  let dirty =
    (await run("git", ["status", "--porcelain", "--untracked-files=no"], args.serverDir)) !== "";
  if (args.snapshot) {
    // A read-only export of HEAD, so edits in progress in the work tree cannot disturb the run.
    args.serverDir = `${tmpRoot}/server`;
    await Deno.mkdir(args.serverDir);
    const out = await new Deno.Command("bash", {
      args: ["-c", 'git -C "$1" archive HEAD | tar -x -C "$2"', "bash", repoDir, args.serverDir],
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`git archive failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    commit = await run("git", ["rev-parse", "HEAD"], repoDir) || "unknown";
    dirty = false;
  }
  const ctx: PeerContext = { logDir, serverDir: args.serverDir, secret, tmpRoot };
  const given = Deno.args.filter((a) => a !== "--");
  const results: Results = {
    meta: {
      date: new Date().toISOString(),
      // `deno task bench -- --x` hands over the separator too: it is not an argument.
      command: `deno task bench${given.length ? " -- " + given.join(" ") : ""}`,
      mode: args.quick ? "quick" : "full",
      durationSec: 0,
      machine: await machine(),
      versions: await versions(),
      commit,
      dirty,
      pinning: { server: serverCpus ?? null, clients: clientCpus ?? null },
      fdLimit,
      settings,
    },
    errors: [],
  };

  let fleet: Fleet | undefined;
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    await fleet?.stop().catch(() => {});
    await stopAll();
    await Deno.remove(tmpRoot, { recursive: true }).catch(() => {});
  };
  const abort = async (why: string, code: number) => {
    console.error(`\n${why}: stopping every process the benchmark started`);
    await cleanup();
    Deno.exit(code);
  };
  const onSignal = () => abort("interrupted", 130);
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  globalThis.addEventListener("unload", killAllNow);
  const deadline = setTimeout(
    () => abort(`deadline of ${settings.deadlineMs / 60000} min passed`, 2),
    settings.deadlineMs,
  );

  try {
    log(
      `bench ${results.meta.mode}: server ${args.serverDir} @ ${commit.slice(0, 12)}${
        dirty ? "+dirty" : ""
      }, ` +
        `server cores ${serverCpus ?? "any"}, load cores ${
          clientCpus ?? "any"
        }, fd limit ${fdLimit}`,
    );
    ctx.tokens = await mintTokens(ctx, 1000);
    const busy = await waitForQuiet(settings.disturbedPct / 2, settings.quick ? 0 : 180_000);
    if (busy >= settings.disturbedPct / 2) {
      log(`note: other processes use ${busy.toFixed(0)}% of a core; disturbed steps are repeated`);
    }
    fleet = await Fleet.start(settings.workers, clientCpus, logDir);
    await fleet.setTokens(ctx.tokens);
    const bench: Bench = {
      settings,
      ctx,
      fleet,
      serverCpus,
      clientCpus,
      log,
      retryBudget: { ms: settings.retryBudgetMs },
      errors: results.errors,
    };
    const attempt = async <T>(name: string, fn: () => Promise<T>): Promise<T | undefined> => {
      if (!args.only.includes(name)) return undefined;
      const t0 = performance.now();
      try {
        const value = await fn();
        log(`${name} done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
        return value;
      } catch (err) {
        const message = err instanceof Error ? err.stack ?? err.message : String(err);
        console.error(`${name} failed: ${message}`);
        results.errors.push({
          scenario: name,
          message: err instanceof Error ? err.message : String(err),
        });
        return undefined;
      }
    };
    results.fanout = await attempt("fanout", () => fanout(bench));
    results.rooms = await attempt("rooms", () => manyRooms(bench));
    results.ingest = await attempt("ingest", () => ingest(bench));
    results.attachments = await attempt("attachments", () => attachments(bench, logDir));
    results.parallel = await attempt("parallel", () => parallel(bench, logDir));
    results.connections = await attempt("connections", () => connections(bench));
    if (settings.profile.members > 0) {
      results.profile = await attempt("profile", async () => {
        // The ticket socket, as the targets use; the native protocol when only it was asked for.
        const profiled = PEERS.find((p) => p.id === "ours_ticket") ??
          PEERS.find((p) => p.id === "ours_native") ?? OURS_TICKET;
        const ours = results.fanout?.sizes.find((s) => s.members === settings.fanout.referenceSize)
          ?.ladders.find((l) => l.peer === profiled.id);
        const fanoutRates = [settings.fanout.referenceRate];
        if (ours && ours.best > settings.fanout.referenceRate) fanoutRates.push(ours.best);
        // Ingest: ours's highest rate within the bound and the next one up, where it failed.
        const ing = results.ingest?.ladders.find((l) => l.peer === profiled.id);
        const ladder = settings.ingest.rates;
        const ingestRates = ing && ing.best > 0
          ? [ing.best, ladder.find((r) => r > ing.best) ?? ing.best * 2]
          : [ladder[0] / 2, ladder[0]];
        const out: NonNullable<Results["profile"]> = {};
        for (
          const [name, load, rates] of [
            ["fanout", fanoutProfileLoad(bench), fanoutRates],
            ["ingest", ingestProfileLoad(bench), ingestRates],
          ] as const
        ) {
          const run = await profileRun(
            bench,
            `${rawDir}/profile-${name}`,
            load,
            [...rates],
            profiled,
          );
          const summary = run.path ? await summariseProfile(run.path, args.serverDir) : null;
          out[name] = { summary, steps: run.steps, rates: [...rates] };
        }
        return out;
      });
    }
  } finally {
    clearTimeout(deadline);
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }

  results.meta.durationSec = (performance.now() - started) / 1000;
  const json = JSON.stringify(results, null, 1);
  await Deno.writeTextFile(`${rawDir}/results.json`, json);
  const complete = !args.peers && !args.sizes && SCENARIOS.every((s) => args.only.includes(s));
  const summaryPath = `${benchDir}/results/${
    args.quick ? "quick" : complete ? "latest" : "partial"
  }.json`;
  await Deno.writeTextFile(summaryPath, json);
  log(`results: ${summaryPath} (logs and raw data in ${rawDir})`);
  printVerdicts(results, log);
  if (args.docs ?? (!args.quick && complete)) await writeDocs(results, log);
  log(`finished in ${(results.meta.durationSec / 60).toFixed(1)} min`);
  return results.errors.length > 0 ? 1 : 0;
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    console.error(err instanceof Error ? err.stack ?? err.message : err);
    await stopAll();
  }
  Deno.exit(code);
}
