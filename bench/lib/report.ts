/** Turns a run's results into docs/benchmarks.md, its two SVG charts, and a target verdict list. */

import { barChart, type BarGroup, latencyChart, type Panel, PEER_STYLE } from "./charts.ts";
import type { ProfileSummary } from "./profile.ts";
import { THREAD_KINDS } from "./procs.ts";
import type {
  AttachmentPhase,
  ConnectionStep,
  FanoutResult,
  IngestResult,
  Ladder,
  ParallelResult,
  RoomsResult,
  StepResult,
} from "./scenarios.ts";
import type { Settings } from "./settings.ts";

/** Everything one run measured. */
export interface Results {
  /** How, where and when. */
  meta: {
    date: string;
    command: string;
    mode: "quick" | "full";
    durationSec: number;
    machine: { cores: number; cpu: string; memoryGiB: number; kernel: string };
    versions: Record<string, string>;
    commit: string;
    dirty: boolean;
    pinning: { server: string | null; clients: string | null };
    fdLimit: number;
    settings: Settings;
  };
  /** Scenario 1. */
  fanout?: FanoutResult;
  /** Scenario 2. */
  rooms?: RoomsResult;
  /** Scenario 3. */
  ingest?: IngestResult;
  /** Scenario 4. */
  connections?: { steps: ConnectionStep[]; fdLimit: number };
  /** Scenario 5. */
  attachments?: AttachmentPhase[];
  /** Scenario 6. */
  parallel?: ParallelResult;
  /** CPU profiles of ours under fan-out and under ingest. */
  profile?: {
    fanout?: ProfileRun;
    ingest?: ProfileRun;
  };
  /** Scenarios that failed to run. */
  errors: { scenario: string; message: string }[];
}

/** One profiling run. */
export interface ProfileRun {
  /** The profile's top functions, or null when no profile was written. */
  summary: ProfileSummary | null;
  /** The steps run under the profiler (slower than unprofiled). */
  steps: StepResult[];
  /** Their rates. */
  rates: number[];
}

/** One target's verdict. */
export interface Verdict {
  /** The target as the issue states it. */
  target: string;
  /** What was measured. */
  measured: string;
  /** Met, missed, or not measured. */
  status: "met" | "missed" | "n/a";
  /** By how much, in words. */
  margin: string;
}

const label = (peer: string) => PEER_STYLE[peer]?.label ?? peer;
/** Peers in the order the tables list them (the chart legend's order). */
const PEER_ORDER = (peer: string) => {
  const i = Object.keys(PEER_STYLE).indexOf(peer);
  return i < 0 ? Infinity : i;
};
const ms = (us: number | undefined) => {
  if (us === undefined || !Number.isFinite(us)) return "–";
  const v = us / 1000;
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
};
const int = (n: number) => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
const mib = (b: number) => Number.isFinite(b) ? (b / 1024 / 1024).toFixed(1) : "–";
/** Length of a file's base64 text, which is (to within the JSON around it) the frame's size. */
const frameBytes = (fileBytes: number) => Math.ceil(fileBytes / 3) * 4;
const ratio = (r: number) => Number.isFinite(r) ? `${r.toFixed(2)}×` : "–";
/** A fraction as a percentage with two significant digits for small values. */
const pct = (x: number) => `${x * 100 >= 10 ? (x * 100).toFixed(0) : (x * 100).toPrecision(2)}%`;
/** Fixed decimals, "–" for a missing value (NaN becomes null in the JSON). */
const fx = (n: number | null | undefined, digits: number) =>
  typeof n === "number" && Number.isFinite(n) ? n.toFixed(digits) : "–";

function ladderOf(ladders: Ladder[], peer: string): Ladder | undefined {
  return ladders.find((l) => l.peer === peer);
}

/** The step at a rate (the median repeat when repeated). */
function stepAt(ladder: Ladder | undefined, rate: number): StepResult | undefined {
  if (!ladder) return undefined;
  const agg = [ladder.base, ...(ladder.confirmed ?? [])].find((r) => r?.step.rate === rate);
  if (agg) return agg.step;
  return ladder.steps.find((s) => s.rate === rate);
}

function bestText(l: Ladder | undefined, unit = "msg/s"): string {
  if (!l) return "–";
  if (l.best === 0) return `< ${int(Math.min(...l.steps.map((s) => s.rate)))} ${unit}`;
  return `${l.capped ? "≥ " : ""}${int(l.best)} ${unit}`;
}

function upper(target: string, measured: number, bound: number, text: string): Verdict {
  if (!Number.isFinite(measured)) {
    return { target, measured: text, status: "n/a", margin: "not measured" };
  }
  const r = measured / bound;
  return {
    target,
    measured: text,
    status: r <= 1 ? "met" : "missed",
    margin: r <= 1
      ? `${pct(1 - r)} under the bound`
      : `${pct(r - 1)} over the bound (${r.toFixed(2)}× it)`,
  };
}

function lower(
  target: string,
  measured: number,
  bound: number,
  text: string,
  atLeast = false,
): Verdict {
  if (!Number.isFinite(measured)) {
    return { target, measured: text, status: "n/a", margin: "not measured" };
  }
  const r = measured / bound;
  return {
    target,
    measured: text,
    status: r >= 1 ? "met" : "missed",
    margin: r >= 1
      ? `${r.toFixed(2)}× the bound${atLeast ? " (a lower bound)" : ""}`
      : `${pct(1 - r)} short (reaches ${pct(r)} of the bound)`,
  };
}

/**
 * `ours.best / peer.best ≥ k`, minding ladders that ended before a peer failed: such a peer's
 * best is only a lower bound, so some ratios are bounds rather than values.
 */
function capacity(target: string, ours: Ladder, peer: Ladder, k: number, name: string): Verdict {
  const measured = `ours ${bestText(ours)} / ${name} ${bestText(peer)}`;
  if (ours.best === 0 && peer.best === 0) {
    return { target, measured, status: "n/a", margin: "neither passed even the lowest rate" };
  }
  if (peer.best === 0) return { target, measured: `${measured} = ∞`, status: "met", margin: "met" };
  const r = ours.best / peer.best;
  const text = `${measured} = ${ratio(r)}`;
  if (ours.capped && peer.capped) {
    return { target, measured: text, status: "n/a", margin: "both passed every rate tried" };
  }
  if (peer.capped && r >= k) {
    return { target, measured: text, status: "n/a", margin: `${name} passed every rate tried` };
  }
  if (ours.capped && r < k) {
    return {
      target,
      measured: text,
      status: "n/a",
      margin: `at least ${ratio(r)}: ours passed every rate tried`,
    };
  }
  const verdict = lower(target, r, k, text, ours.capped);
  const notes: string[] = [];
  const saturated = (l: Ladder) => l.stopReason?.includes("server was not") ?? false;
  if (saturated(peer)) {
    notes.push(
      `${name} failed with the load generator saturated and its server not (its own limit is higher)`,
    );
  }
  if (saturated(ours)) {
    notes.push(
      "ours failed with the load generator saturated and its server not (its own limit is higher)",
    );
  }
  if (notes.length > 0) verdict.margin += `; ${notes.join("; ")}`;
  return verdict;
}

/**
 * Server time of an attachment phase: for each file, from the moment its frame had left the
 * client (the socket took the last byte, so the server has it or is reading the tail) until the
 * last member had the broadcast; the largest over the phase's files, ms.
 */
export function serverTimeMs(a: AttachmentPhase): number | null {
  if (a.timings.length === 0 || a.allDeliveredMs === null) return null;
  const times = a.timings.map((t) =>
    t.lastMs !== null && t.writtenMs !== null ? t.lastMs - t.writtenMs : NaN
  );
  return times.every(Number.isFinite) ? Math.max(...times) : null;
}

/** The middle value (the mean of the two middle ones for an even count); NaN for none. */
function medianOf(xs: number[]): number {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** A peer's single-file phases (the first file, or the one sent again), one per fresh server. */
function singleFiles(results: Results, peer: string, repeat: boolean): AttachmentPhase[] {
  return (results.attachments ?? []).filter((a) =>
    a.peer === peer && a.files === 1 && !!a.repeat === repeat
  );
}

/** Median server time and RSS growth over fresh servers, with their spread when there are several. */
function singleFileSummary(phases: AttachmentPhase[]) {
  const times = phases.map((a) => serverTimeMs(a) ?? NaN);
  const growths = phases.map((a) => a.growth);
  const range = (xs: number[], f: (x: number) => string) => {
    const v = xs.filter(Number.isFinite);
    return v.length > 1 ? ` (${f(Math.min(...v))}–${f(Math.max(...v))})` : "";
  };
  return {
    runs: phases.length,
    serverMs: medianOf(times),
    serverRange: range(times, (x) => x.toFixed(0)),
    growth: medianOf(growths),
    growthRange: range(growths, (x) => `+${mib(x)}`),
    allDeliveredMs: medianOf(phases.map((a) => a.allDeliveredMs ?? NaN)),
  };
}

/**
 * The fan-out step the targets name (reference size and rate), per peer: the step whose p99 is
 * its repeats' median, and the medians themselves.
 */
function fanoutReference(results: Results) {
  const s = results.meta.settings;
  const sizes = results.fanout?.sizes ?? [];
  const ref = sizes.find((x) => x.members === s.fanout.referenceSize) ?? sizes[0];
  const ladder = (peer: string) => ref ? ladderOf(ref.ladders, peer) : undefined;
  const step = (peer: string) => {
    const l = ladder(peer);
    return l?.base?.step ?? stepAt(l, s.fanout.referenceRate);
  };
  return {
    ref,
    step,
    p99: (peer: string) => ladder(peer)?.base?.p99 ?? step(peer)?.latency.p99 ?? NaN,
    p50: (peer: string) => ladder(peer)?.base?.p50 ?? step(peer)?.latency.p50 ?? NaN,
  };
}

/**
 * A step's main-thread CPU per delivery in µs: all of it, the kernel's part (NaN when not read)
 * and the rest (user space); undefined when the step has no main-thread reading or deliveries.
 */
function mainPerDelivery(step: StepResult | undefined) {
  const main = step?.serverThreadsPct?.main;
  // NaN (a server gone mid-window) is saved as null in the results file.
  const kernel = step?.serverThreadsKernelPct?.main;
  if (!step || !Number.isFinite(main) || !(step.deliveriesPerSec > 0)) return undefined;
  const k = Number.isFinite(kernel) ? kernel! : NaN;
  return {
    all: microsPer(main!, step.deliveriesPerSec),
    kernel: microsPer(k, step.deliveriesPerSec),
    user: microsPer(main! - k, step.deliveriesPerSec),
  };
}

/** Checks every target of the issue against the results. */
export function verdicts(results: Results): Verdict[] {
  const out: Verdict[] = [];
  const s = results.meta.settings;
  const f = results.fanout;
  if (f) {
    const { ref, p99 } = fanoutReference(results);
    if (ref) {
      const ours = p99("ours_ticket");
      const raw = p99("raw_deno");
      const sio = p99("socketio");
      const at = `${int(ref.members)} members × ${s.fanout.referenceRate} msg/s`;
      out.push(upper(
        `Fan-out p99 at ${at}, history on: ≤ 1.2× raw Deno`,
        ours / raw,
        1.2,
        `ours ${ms(ours)} ms / raw Deno ${ms(raw)} ms = ${ratio(ours / raw)}`,
      ));
      out.push(upper(
        `Fan-out p99 at ${at}: ≤ 0.5× Socket.IO`,
        ours / sio,
        0.5,
        `ours ${ms(ours)} ms / Socket.IO ${ms(sio)} ms = ${ratio(ours / sio)}`,
      ));
    }
    for (const size of f.sizes) {
      const o = ladderOf(size.ladders, "ours_ticket");
      const bound = `p99 ≤ ${s.fanout.maxP99Ms} ms, 1 room × ${int(size.members)}`;
      const r = ladderOf(size.ladders, "raw_deno");
      const io = ladderOf(size.ladders, "socketio");
      if (o && r) {
        out.push(
          capacity(`Highest fan-out load with ${bound}: ≥ 0.9× raw Deno`, o, r, 0.9, "raw Deno"),
        );
      }
      if (o && io) {
        out.push(
          capacity(`Highest fan-out load with ${bound}: ≥ 2× Socket.IO`, o, io, 2, "Socket.IO"),
        );
      }
    }
  }
  const ing = results.ingest;
  if (ing) {
    const o = ladderOf(ing.ladders, "ours_ticket");
    const step = o ? stepAt(o, o.best) : undefined;
    out.push(lower(
      `Persisted ingest ≥ 50,000 msg/s over ${ing.rooms} rooms with p99 ≤ ${ing.maxP99Ms} ms`,
      o?.best ?? NaN,
      50_000,
      o
        ? `${bestText(o)} (p99 ${ms(step?.latency.p99)} ms there)${
          ing.storeCeiling
            ? `; the message store alone on the same core: ${
              int(ing.storeCeiling.messagesPerSec)
            } msg/s`
            : ""
        }`
        : "–",
      o?.capped,
    ));
  }
  for (const c of (results.connections?.steps ?? []).filter((x) => x.peer === "ours_ticket")) {
    out.push(upper(
      `≤ 20 KB RSS per idle socket (${int(c.target)} sockets)`,
      c.perConnection / 1000,
      20,
      `${fx(c.perConnection / 1000, 1)} KB per socket (${int(c.connected)} joined)`,
    ));
  }
  const none = results.attachments?.find((a) => a.peer === "ours_ticket" && a.files === 0);
  for (const repeat of [false, true]) {
    const phases = singleFiles(results, "ours_ticket", repeat);
    if (phases.length === 0) continue;
    const one = phases[0];
    const ours = singleFileSummary(phases);
    const raw = singleFileSummary(singleFiles(results, "raw_deno", repeat));
    const size = `${mib(one.bytes)} MiB`;
    const which = repeat ? "a later file" : "the first file since the start";
    const over = ours.runs > 1 ? `, median of ${ours.runs} fresh servers` : "";
    // Inside Deno: the socket's read buffer (new on its first large frame), a Rust copy, a V8 string.
    const copies = repeat ? 2 : 3;
    const frame = frameBytes(one.bytes);
    out.push(upper(
      `${size} attachment broadcast in ≤ 150 ms server time (${which})`,
      ours.serverMs,
      150,
      `${
        fx(ours.serverMs, 0)
      } ms${ours.serverRange} from the frame fully sent to all ${one.members} members having the broadcast${over} (${
        fx(ours.allDeliveredMs, 0)
      } ms from the start of the send; raw Deno ${fx(raw.serverMs, 0)} ms${raw.serverRange})`,
    ));
    out.push(upper(
      `RSS growth for one ${size} attachment ≤ 3× the file (${which})`,
      ours.growth / one.bytes,
      3,
      `+${mib(ours.growth)} MiB${ours.growthRange} = ${
        (ours.growth / one.bytes).toFixed(2)
      }× the file${over}${
        none ? ` (the same window without a file: +${mib(none.growth)} MiB)` : ""
      }${raw.runs ? `; raw Deno ${(raw.growth / one.bytes).toFixed(2)}×` : ""}; Deno's own ${
        copies === 2 ? "two" : "three"
      } copies of the ${mib(frame)} MiB frame: ${(copies * frame / one.bytes).toFixed(2)}×`,
    ));
  }
  const par = results.parallel;
  if (par) {
    const l = ladderOf(par.ladders, "ours_parallel");
    if (l) {
      const gaps = l.steps.reduce((t, x) => t + x.gaps, 0);
      const dups = l.steps.reduce((t, x) => t + x.dups, 0);
      const delivered = l.steps.reduce((t, x) => t + x.received, 0);
      if (delivered === 0) {
        out.push({
          target: "deno serve --parallel fan-out: gaps and duplicates per client = 0",
          measured: "nothing was delivered",
          status: "n/a",
          margin: "not measured",
        });
      } else {out.push({
          target: "deno serve --parallel fan-out: gaps and duplicates per client = 0",
          measured: `${gaps} gaps, ${dups} duplicates over ${
            int(l.steps.reduce((t, x) => t + x.received, 0))
          } deliveries`,
          status: gaps === 0 && dups === 0 ? "met" : "missed",
          margin: gaps === 0 && dups === 0
            ? "every member saw pk grow by exactly one"
            : `${gaps + dups} ordering faults`,
        });}
    }
  }
  return out;
}

function stepsTable(steps: StepResult[], withRooms = false): string[] {
  const byThread = steps.some((x) => x.serverThreadsPct);
  const rows = [
    `| peer | ${
      withRooms ? "rooms × members | " : ""
    }offered msg/s | p50 ms | p99 ms | p99.9 ms | max ms | deliveries/s | lost | server CPU | ${
      byThread ? "main / KV / V8 / other | " : ""
    }CPU s per 1M deliveries | server RSS MiB | load-gen CPU | result |`,
    `| --- | ${withRooms ? "--- | " : ""}--: | --: | --: | --: | --: | --: | --: | --: | ${
      byThread ? "--: | " : ""
    }--: | --: | --: | --- |`,
  ];
  for (const s of steps) {
    rows.push(
      `| ${label(s.peer)} | ${withRooms ? `${s.rooms} × ${int(s.members)} | ` : ""}${
        int(s.rate)
      } | ${ms(s.latency.p50)} | ${ms(s.latency.p99)} | ${ms(s.latency.p999)} | ${
        ms(s.latency.max)
      } | ${int(s.deliveriesPerSec)} | ${fx(s.lossRatio * 100, s.lossRatio > 0 ? 2 : 0)}% | ${
        fx(s.serverCpuPct, 0)
      }% | ${byThread ? `${threadSplit(s)} | ` : ""}${fx(s.cpuPerMillion, 2)} | ${mib(s.rss)} | ${
        fx(s.clientCpuPct, 0)
      }%${s.clientBound ? " ⚠" : ""} | ${s.pass ? "ok" : `over: ${s.reason}`} |`,
    );
  }
  return rows;
}

/** CPU µs per unit of work from a share of one core (%) and that work's rate per second. */
const microsPer = (pct: number, perSec: number) => (pct / 100 / perSec) * 1e6;

/** CPU µs Deno KV's SQLite thread spent per offered message in a step. */
const kvMicrosPerMessage = (s: StepResult) => microsPer(s.serverThreadsPct!.kv, s.rate);

/**
 * The server's CPU by kind of thread at the steps the targets turn on: fan-out at the reference
 * size and rate, ingest at its first rate and at the highest rate ours reached.
 */
function threadSection(results: Results): string[] {
  const s = results.meta.settings;
  const rows: { what: string; step: StepResult }[] = [];
  const { ref, step: refStep } = fanoutReference(results);
  for (const l of ref?.ladders ?? []) {
    const step = refStep(l.peer);
    if (step) {
      rows.push({ what: `fan-out 1 room × ${int(ref!.members)}`, step });
    }
  }
  const ing = results.ingest;
  const oursBest = ing ? ladderOf(ing.ladders, "ours_ticket")?.best ?? 0 : 0;
  const ingestRates = [
    ...new Set([s.ingest.rates[0], oursBest].filter((r) => r > 0)),
  ];
  for (const rate of ingestRates) {
    for (const l of ing?.ladders ?? []) {
      const step = stepAt(l, rate);
      if (step) rows.push({ what: `ingest over ${ing!.rooms} rooms`, step });
    }
  }
  const shown = rows.filter((r) => r.step.serverThreadsPct);
  if (shown.length === 0) return [];
  const withKernel = shown.some((r) => r.step.serverThreadsKernelPct);
  const L = [
    "## Server CPU by thread",
    "",
    "The server's CPU in the measured window, read per thread from `/proc/<pid>/task`, in % of one core. " +
    "_main_ is the JavaScript thread (Node's event loop for Socket.IO); _KV_ is Deno KV's SQLite thread (`sw-0`), " +
    "which runs every KV read and commit, fsync and WAL checkpoints included; _V8_ is V8's helper threads " +
    "(parallel and concurrent garbage collection, background compiles); _other_ is the rest (Deno's tokio runtime; " +
    "Node names all its threads alike, so Socket.IO's helper threads count here). A CPU profile of the JavaScript " +
    "thread (next section) cannot show the KV thread's work: on one pinned core it appears there as self time of " +
    "`op_kv_atomic_write`, the moment the commit is handed over." +
    (withKernel
      ? " _in kernel_ is the part of a thread's time the kernel spent on its behalf (system calls above all, " +
        "and page faults): the main thread's socket writes (over loopback a write also does much of the " +
        "receiving side's work), the KV thread's WAL writes and their syncs."
      : ""),
    "",
    `| step | peer | offered msg/s | server CPU | main | ${
      withKernel ? "main in kernel | " : ""
    }KV | ${withKernel ? "KV in kernel | " : ""}V8 | other | KV thread µs per message |`,
    `| --- | --- | --: | --: | --: | ${withKernel ? "--: | " : ""}--: | ${
      withKernel ? "--: | " : ""
    }--: | --: | --: |`,
  ];
  for (const { what, step } of shown) {
    const t = step.serverThreadsPct!;
    const k = step.serverThreadsKernelPct;
    const kernel = (pct: number | undefined) =>
      withKernel ? `${k ? `${fx(pct ?? NaN, 0)}%` : "–"} | ` : "";
    L.push(
      `| ${what} | ${label(step.peer)} | ${int(step.rate)} | ${fx(step.serverCpuPct, 0)}% | ${
        fx(t.main, 0)
      }% | ${kernel(k?.main)}${fx(t.kv, 0)}% | ${kernel(k?.kv)}${fx(t.v8, 0)}% | ${
        fx(t.other, 0)
      }% | ${t.kv > 0 ? fx(kvMicrosPerMessage(step), 0) : "–"} |`,
    );
  }
  L.push(...fanoutKernelSentence(shown.filter((r) => r.what.startsWith("fan-out"))));
  const best = ing && oursBest > 0
    ? stepAt(ladderOf(ing.ladders, "ours_ticket"), oursBest)
    : undefined;
  const bt = best?.serverThreadsPct;
  if (best && bt && bt.kv > 0) {
    L.push(
      "",
      `At ${
        int(best.rate)
      } msg/s of ingest, the highest rate ours kept within the bound, Deno KV's SQLite thread used ${
        fx(bt.kv, 0)
      }% of the server's core (${
        fx(kvMicrosPerMessage(best), 0)
      } µs per message) and the JavaScript thread ${
        fx(bt.main, 0)
      }%. The KV thread's share is the cost of one KV write per message plus each commit's fixed work (the WAL write and its sync), on the same core as the JavaScript thread.`,
    );
  }
  L.push("");
  return L;
}

/**
 * Raw Deno's and ours' main-thread CPU per delivery in the fan-out step, split into kernel and
 * user space: the split tells the socket writes, which any server pays, from its own code.
 */
function fanoutKernelSentence(rows: { what: string; step: StepResult }[]): string[] {
  const perDelivery = (peer: string) => {
    const d = mainPerDelivery(rows.find((r) => r.step.peer === peer)?.step);
    return d && Number.isFinite(d.kernel) ? d : undefined;
  };
  const raw = perDelivery("raw_deno");
  const ours = perDelivery("ours_ticket");
  if (!raw || !ours) return [];
  return [
    "",
    `Per delivery in that fan-out step, the main thread spent ${
      fx(raw.kernel, 1)
    } µs in the kernel for raw Deno and ${fx(ours.kernel, 1)} µs for ours (ticket socket), and ${
      fx(raw.user, 1)
    } µs and ${fx(ours.user, 1)} µs in user space (JavaScript and Deno's own code).`,
  ];
}

/**
 * For each missed target, what in this run's own numbers stands in its way: the local limit
 * (raw Deno) where the bound asks for more than it reaches, the store's ceiling, Deno's copies of a
 * large frame, the server's time per delivery.
 */
function whyMissed(results: Results, v: Verdict[]): string[] {
  const missed = (prefix: string) =>
    v.filter((x) => x.status === "missed" && x.target.startsWith(prefix));
  const out: string[] = [];
  const { ref, step: refStep, p99: refP99, p50: refP50 } = fanoutReference(results);
  if (ref && missed("Fan-out p99").some((x) => x.target.includes("raw Deno"))) {
    const ours = mainPerDelivery(refStep("ours_ticket"));
    const raw = mainPerDelivery(refStep("raw_deno"));
    const o = refStep("ours_ticket");
    const r = refStep("raw_deno");
    out.push(
      `- **Fan-out p99 against raw Deno.** Latency at this step is mostly queueing behind earlier messages' fan-outs, so it follows the server's time per message: ${
        ours && raw
          ? `the main thread spent ${fx(ours.all, 1)} µs per delivery (${
            fx(ours.kernel, 1)
          } in the kernel) against raw Deno's ${fx(raw.all, 1)} (${fx(raw.kernel, 1)}), `
          : ""
      }and every message waits for its KV commit before it is broadcast (p50 ${
        ms(refP50("ours_ticket"))
      } ms against ${ms(refP50("raw_deno"))}). The load generators' core was ${
        fx(o?.clientCpuPct ?? NaN, 0)
      }% busy for ours and ${
        fx(r?.clientCpuPct ?? NaN, 0)
      }% for raw Deno, so part of either p99 is the clients' own queueing.`,
    );
  }
  if (
    ref && missed("Fan-out p99").some((x) => x.target.includes("Socket.IO"))
  ) {
    const raw = refP99("raw_deno");
    const sio = refP99("socketio");
    out.push(
      `- **Fan-out p99 against Socket.IO.** Raw Deno, the local limit, measured ${
        ratio(raw / sio)
      } Socket.IO's p99 here (${ms(raw)} / ${
        ms(sio)
      } ms): a server that adds nothing to raw Deno still misses 0.5× by ${
        ratio(raw / sio / 0.5)
      }. At this load every peer's p99 is set by per-delivery socket writes, which cost Deno and Node alike.`,
    );
  }
  for (const size of results.fanout?.sizes ?? []) {
    const hit = missed("Highest fan-out load").find((x) =>
      x.target.includes("raw Deno") && x.target.includes(`× ${int(size.members)}:`)
    );
    const raw = ladderOf(size.ladders, "raw_deno");
    const ours = ladderOf(size.ladders, "ours_ticket");
    if (!hit || !raw || !ours) continue;
    // Compared where ours last passed: how much of the core each needed for the same load.
    // Raw Deno may not have run ours' rate (a midpoint of ours' own): its highest step below.
    const below = raw.steps.map((x) => x.rate).filter((r) =>
      r <= ours.best && stepAt(raw, r)?.pass
    );
    const rawRate = below.length > 0 ? Math.max(...below) : ours.best;
    const [os, rs] = [stepAt(ours, ours.best), stepAt(raw, rawRate)];
    const [o, r] = [mainPerDelivery(os), mainPerDelivery(rs)];
    out.push(
      `- **Highest load against raw Deno, 1 room × ${int(size.members)}.** Ours passed ${
        bestText(ours)
      } and raw Deno ${bestText(raw)}; ours failed at ${ours.stopReason ?? "–"}${
        os && rs && o && r
          ? `. At ${int(ours.best)} msg/s ours' server used ${
            fx(os.serverCpuPct, 0)
          }% of its core (main thread ${
            fx(o.all, 1)
          } µs per delivery, the rest mostly KV) and raw Deno's ${fx(rs.serverCpuPct, 0)}%${
            rs.rate !== ours.best ? ` at ${int(rs.rate)} msg/s` : ""
          } (${
            fx(r.all, 1)
          } µs): the step above needs more core than ours has left, and the load generators were at ${
            fx(os.clientCpuPct, 0)
          }%`
          : ""
      }.${durabilityShare(size.ladders, raw, ours)}`,
    );
  }
  for (const size of results.fanout?.sizes ?? []) {
    const hit = missed("Highest fan-out load").find((x) =>
      x.target.includes("Socket.IO") &&
      x.target.includes(`× ${int(size.members)}:`)
    );
    if (!hit) continue;
    const raw = ladderOf(size.ladders, "raw_deno");
    const sio = ladderOf(size.ladders, "socketio");
    const ours = ladderOf(size.ladders, "ours_ticket");
    if (!raw || !sio || !ours || !(sio.best > 0)) continue;
    const rawStep = stepAt(raw, raw.best);
    const pd = mainPerDelivery(rawStep);
    out.push(
      `- **Highest load against Socket.IO, 1 room × ${int(size.members)}.** Raw Deno reached ${
        bestText(raw)
      }, ${ratio(raw.best / sio.best)} Socket.IO's ${bestText(sio)}; ours reached ${
        ratio(ours.best / raw.best)
      } raw Deno. 2× would take more than the local limit${
        pd
          ? `: there raw Deno's main thread spent ${fx(pd.all, 1)} µs per delivery, ${
            fx(pd.kernel, 1)
          } of them in the kernel writing the frame (one write per member and message), with its core ${
            fx(rawStep!.serverCpuPct, 0)
          }% busy`
          : ""
      }.`,
    );
  }
  const ing = results.ingest;
  if (ing && missed("Persisted ingest").length > 0) {
    const o = ladderOf(ing.ladders, "ours_ticket");
    const best = o && o.best > 0 ? stepAt(o, o.best) : undefined;
    // The lowest rate over the bound: with refined steps, the first one run above it is higher.
    const above = o?.steps.filter((x) => x.rate > (o?.best ?? 0)) ?? [];
    const lowest = Math.min(...above.map((x) => x.rate));
    const over = above.find((x) => x.rate === lowest);
    const bt = best?.serverThreadsPct;
    const c = ing.storeCeiling;
    const perCommit = c ? c.messagesPerSec / c.commitsPerSec : NaN;
    out.push(
      `- **Persisted ingest.** ${
        c
          ? `The message store alone, with no sockets, commits up to ${
            int(c.messagesPerSec)
          } msg/s on the server's core (${
            int(perCommit)
          } messages a commit over up to 90 rooms, p99 ${ms(c.p99Ms * 1000)} ms per append)${
            c.messagesPerSec < 50_000
              ? ": the bound is above what Deno KV's SQLite commits there. "
              : c.p99Ms <= ing.maxP99Ms
              ? `: as many as the bound asks, with ${int(perCommit)} messages in each commit. `
              : `: as many as the bound asks, but only with ${
                int(perCommit)
              } messages in each commit and at a p99 over its ${ing.maxP99Ms} ms. `
          }`
          : ""
      }${
        best && bt
          ? `At ${int(best.rate)} msg/s ours used ${fx(best.serverCpuPct, 0)}% of the core: ${
            fx(bt.kv, 0)
          }% in KV's SQLite thread (${
            fx(kvMicrosPerMessage(best), 0)
          } µs per message: every commit writes a page per room to the WAL and syncs it) and ${
            fx(bt.main, 0)
          }% in the JavaScript thread (${fx(microsPer(bt.main, best.rate), 0)} µs per message). `
          : ""
      }${
        over
          ? `The next step, ${int(over.rate)} msg/s, had p99 ${
            ms(over.latency.p99)
          } ms with the core ${
            fx(over.serverCpuPct, 0)
          }% busy: commits run one at a time, so one slow commit delays every message queued behind it.`
          : ""
      }`,
    );
  }
  if (missed("RSS growth").some((x) => x.target.includes("first file"))) {
    out.push(
      "- **RSS growth, first file.** While a frame is read Deno holds it three times (the socket's read buffer, which it grows to the frame's size the first time and keeps, a Rust copy, and the V8 string), 4× the file for a base64 frame before the server sees a byte. Later files reuse the buffer: two copies.",
    );
  }
  for (const x of v.filter((y) => y.status === "missed")) {
    const covered = [
      "Fan-out p99",
      "Highest fan-out load",
      "Persisted ingest",
      "RSS growth",
    ]
      .some((p) => x.target.startsWith(p));
    if (!covered) {
      out.push(`- **${x.target}.** Missed: ${x.margin}; see the tables below.`);
    }
  }
  if (out.length === 0) return [];
  return ["### Why the missed targets are missed", "", ...out, ""];
}

/** A step's server CPU by kind of thread, % of one core: "main / KV / V8 / other". */
function threadSplit(s: StepResult): string {
  const t = s.serverThreadsPct;
  return t ? THREAD_KINDS.map((k) => fx(t[k], 0)).join(" / ") : "–";
}

/** Every step's row, folded away under a summary line. */
function stepsDetails(summary: string, steps: StepResult[], withRooms = false): string[] {
  return [
    `<details><summary>${summary}</summary>`,
    "",
    ...stepsTable(steps, withRooms),
    "",
    "</details>",
    "",
  ];
}

function spread(l: Ladder | undefined, key: "p50s" | "p99s"): string {
  const b = l?.base;
  if (!b) return "–";
  const xs = b[key];
  const mid = key === "p50s" ? b.p50 : b.p99;
  if (xs.length < 2) return ms(mid);
  return `${ms(mid)} (${ms(Math.min(...xs))}–${ms(Math.max(...xs))})`;
}

function ladderSummary(
  ladders: Ladder[],
  baseRate: number,
  unit: string,
  perMessage = false,
): string[] {
  const raw = ladderOf(ladders, "raw_deno");
  const rows = [
    `| peer | p50 ms at ${int(baseRate)} msg/s | p99 ms at ${
      int(baseRate)
    } msg/s | p99 vs raw Deno | highest load within the bound | deliveries/s there | CPU s per 1M deliveries at ${
      int(baseRate)
    } msg/s | server RSS MiB | first step over the bound |`,
    `| --- | --: | --: | --: | --: | --: | --: | --: | --- |`,
  ];
  for (const l of ladders) {
    const base = l.base?.step ?? stepAt(l, baseRate) ?? l.steps[0];
    const p99 = l.base?.p99 ?? base?.latency.p99;
    const rawP99 = raw?.base?.p99 ?? stepAt(raw, baseRate)?.latency.p99;
    const bestStep = stepAt(l, l.best);
    rows.push(
      `| ${label(l.peer)} | ${l.base ? spread(l, "p50s") : ms(base?.latency.p50)} | ${
        l.base ? spread(l, "p99s") : ms(p99)
      } | ${raw && p99 !== undefined && rawP99 ? ratio(p99 / rawP99) : "–"} | ${
        bestText(l, unit)
      } | ${bestStep ? int(bestStep.deliveriesPerSec) : "–"} | ${fx(base?.cpuPerMillion, 2)} | ${
        base ? mib(Math.max(...l.steps.map((s) => s.rss).filter(Number.isFinite))) : "–"
      } | ${l.capped ? "none (ladder ended)" : l.stopReason ?? "–"} |`,
    );
  }
  if (perMessage) rows.push("");
  return rows;
}

/** Both charts as SVG text. */
export function renderCharts(results: Results): { fanout?: string; capacity?: string } {
  const out: { fanout?: string; capacity?: string } = {};
  const f = results.fanout;
  if (f && f.sizes.length > 0) {
    const panels: Panel[] = f.sizes.map((size) => ({
      title: `1 room × ${int(size.members)} members`,
      series: size.ladders.map((l) => {
        const byRate = new Map<number, StepResult>();
        for (const s of l.steps) if (!byRate.has(s.rate)) byRate.set(s.rate, s);
        for (const agg of [l.base, ...(l.confirmed ?? [])]) {
          if (!agg) continue;
          byRate.set(agg.step.rate, {
            ...agg.step,
            latency: { ...agg.step.latency, p99: agg.p99 },
          });
        }
        return {
          peer: l.peer,
          points: [...byRate.values()].sort((a, b) => a.rate - b.rate).map((s) => ({
            x: s.rate,
            y: s.latency.p99 / 1000,
            pass: s.pass,
          })),
        };
      }),
    }));
    out.fanout = latencyChart(
      "Open-loop fan-out: p99 delivery latency vs offered rate (same machine, same run)",
      panels,
      results.meta.settings.fanout.maxP99Ms,
      "messages per second into the room (log)",
    );
  }
  const groups: BarGroup[] = [];
  const group = (
    name: string,
    ladders: Ladder[] | undefined,
    value: (l: Ladder) => number | null,
    text: (l: Ladder) => string,
  ) => {
    if (!ladders) return;
    groups.push({
      label: name,
      values: ladders.map((l) => ({ peer: l.peer, value: value(l), text: text(l) })),
    });
  };
  for (const size of f?.sizes ?? []) {
    group(
      `Fan-out, 1 room × ${
        int(size.members)
      }: deliveries/s with p99 ≤ ${results.meta.settings.fanout.maxP99Ms} ms`,
      size.ladders,
      (l) => (l.best > 0 ? stepAt(l, l.best)?.deliveriesPerSec ?? null : 0),
      (l) =>
        `${l.best > 0 ? int(stepAt(l, l.best)?.deliveriesPerSec ?? 0) : "0"}${l.capped ? "+" : ""}`,
    );
  }
  const r = results.rooms;
  if (r) {
    group(
      `${r.rooms} rooms × ${r.members}, all sending: msg/s with p99 ≤ ${results.meta.settings.rooms.maxP99Ms} ms`,
      r.ladders,
      (l) => l.best,
      (l) => `${int(l.best)}${l.capped ? "+" : ""}`,
    );
  }
  const ing = results.ingest;
  if (ing) {
    group(
      `Ingest, ${ing.rooms} rooms: msg/s with p99 ≤ ${ing.maxP99Ms} ms (ours persists every message)`,
      ing.ladders,
      (l) => l.best,
      (l) => `${int(l.best)}${l.capped ? "+" : ""}`,
    );
  }
  if (groups.length > 0) {
    out.capacity = barChart(
      "Highest load within the latency bound (longer is better)",
      "Each group is scaled to its own largest bar; “+” = the ladder ended before the peer failed.",
      groups,
    );
  }
  return out;
}

/**
 * What raw Deno + KV (a commit per message before its broadcast) says of a fan-out gap: how much
 * of the distance from ours to raw Deno the commit alone accounts for.
 */
function durabilityShare(ladders: Ladder[], raw: Ladder, ours: Ladder): string {
  const kv = ladderOf(ladders, "raw_deno_kv");
  if (!kv || !(kv.best > 0)) return "";
  const gap = raw.best - ours.best;
  const share = gap > 0 ? Math.min(1, Math.max(0, (raw.best - kv.best) / gap)) : NaN;
  return ` Raw Deno committing each message to Deno KV before its broadcast, as ours does, reached ${
    bestText(kv)
  }: ours is ${ratio(ours.best / kv.best)} of that${
    Number.isFinite(share)
      ? `, so the commit alone accounts for ${fx(share * 100, 0)}% of the gap to raw Deno`
      : ""
  }.`;
}

/** One table with the headline number of every scenario for every peer. */
function atAGlance(results: Results): string[] {
  const s = results.meta.settings;
  const ids = new Set([
    ...(results.fanout?.sizes.flatMap((x) => x.ladders.map((l) => l.peer)) ?? []),
    ...(results.ingest?.ladders.map((l) => l.peer) ?? []),
    ...(results.connections?.steps.map((x) => x.peer) ?? []),
  ]);
  const peers = ["raw_deno", "raw_deno_kv", "ours_ticket", "ours_native", "socketio"].filter((p) =>
    ids.has(p)
  );
  const rows: [string, (peer: string) => string][] = [];
  const f = results.fanout;
  const ref = f?.sizes.find((x) => x.members === s.fanout.referenceSize);
  if (ref) {
    const at = `${int(ref.members)} × ${s.fanout.referenceRate} msg/s`;
    const l = (peer: string) => ladderOf(ref.ladders, peer);
    rows.push([
      `Fan-out ${at}: p50 ms, median (min–max of ${s.fanout.baseRepeats})`,
      (p) => spread(l(p), "p50s"),
    ]);
    rows.push([`Fan-out ${at}: p99 ms, median (min–max)`, (p) => spread(l(p), "p99s")]);
    rows.push([
      `Fan-out ${at}: server CPU s per 1M deliveries`,
      (p) =>
        fx(
          l(p)?.base?.step.cpuPerMillion ?? stepAt(l(p), s.fanout.referenceRate)?.cpuPerMillion,
          2,
        ),
    ]);
  }
  for (const size of f?.sizes ?? []) {
    rows.push([
      `Fan-out 1 room × ${
        int(size.members)
      }: highest rate with p99 ≤ ${s.fanout.maxP99Ms} ms (deliveries/s)`,
      (p) => {
        const l = ladderOf(size.ladders, p);
        if (!l) return "–";
        const d = stepAt(l, l.best)?.deliveriesPerSec;
        return `${bestText(l)}${d ? ` (${int(d)})` : ""}`;
      },
    ]);
  }
  if (results.rooms) {
    const r = results.rooms;
    rows.push([
      `${r.rooms} rooms × ${r.members}, all sending: highest total rate with p99 ≤ ${s.rooms.maxP99Ms} ms`,
      (p) => bestText(ladderOf(r.ladders, p)),
    ]);
  }
  if (results.ingest) {
    const r = results.ingest;
    rows.push([
      `Ingest over ${r.rooms} rooms: highest rate with p99 ≤ ${r.maxP99Ms} ms (only ours persists)`,
      (p) => bestText(ladderOf(r.ladders, p)),
    ]);
  }
  for (const target of [...new Set(results.connections?.steps.map((x) => x.target) ?? [])]) {
    const at = (p: string) =>
      results.connections!.steps.find((x) => x.peer === p && x.target === target);
    rows.push([
      `${int(target)} idle sockets: KB RSS per socket; sockets opened per s`,
      (p) => {
        const x = at(p);
        return x ? `${fx(x.perConnection / 1000, 1)}; ${int(x.perSec)}/s` : "–";
      },
    ]);
  }
  const att = (p: string, files: number, repeat = false) =>
    results.attachments?.find((a) => a.peer === p && a.files === files && !!a.repeat === repeat);
  if (results.attachments) {
    const mb = mib(s.attachments.bytes);
    const runs = Math.max(1, s.attachments.runs ?? 1);
    rows.push([
      `One ${mb} MiB attachment, first / later: server time ms; RSS growth${
        runs > 1 ? ` (medians of ${runs} fresh servers)` : ""
      }`,
      (p) => {
        const [a, b] = [false, true].map((r) => singleFileSummary(singleFiles(results, p, r)));
        return a.runs
          ? `${fx(a.serverMs, 0)} / ${fx(b.serverMs, 0)}; +${mib(a.growth)} / +${
            b.runs ? mib(b.growth) : "–"
          } MiB`
          : "–";
      },
    ]);
    rows.push([
      `${s.attachments.many} × ${mb} MiB at once: send → all delivered ms; RSS growth`,
      (p) => {
        const a = att(p, s.attachments.many);
        return a ? `${fx(a.allDeliveredMs, 0)}; +${mib(a.growth)} MiB` : "–";
      },
    ]);
    rows.push([`Background room p99 ms: no file / 1 file / ${s.attachments.many} files`, (p) => {
      return [0, 1, s.attachments.many].map((n) => ms(att(p, n)?.background.latency.p99)).join(
        " / ",
      );
    }]);
  }
  if (rows.length === 0) return [];
  const out = [
    "## At a glance",
    "",
    `| measurement | ${peers.map(label).join(" | ")} |`,
    `| --- | ${peers.map(() => "--:").join(" | ")} |`,
  ];
  for (const [name, cell] of rows) out.push(`| ${name} | ${peers.map(cell).join(" | ")} |`);
  if (ref) {
    const busy = ref.ladders.flatMap((
      l,
    ) => (l.base ? l.steps.filter((x) => x.rate === s.fanout.referenceRate) : []))
      .map((x) => x.clientCpuPct).filter(Number.isFinite);
    if (busy.length > 0 && Math.max(...busy) >= 80) {
      out.push(
        "",
        `At ${int(ref.members)} × ${s.fanout.referenceRate} msg/s the load generators' core was ${
          fx(Math.min(...busy), 0)
        }–${fx(Math.max(...busy), 0)}% busy ` +
          "for every peer, so the p99 there includes client-side queueing and its spread is wide; compare the medians, and the CPU per delivery, which the client does not affect.",
      );
    }
  }
  const par = results.parallel;
  if (par) {
    const one = ladderOf(par.ladders, "ours_ticket");
    const two = ladderOf(par.ladders, "ours_parallel");
    out.push(
      "",
      `Under \`deno serve --parallel\` (2 isolates, unpinned, 1 room × ${
        int(par.members)
      }): highest rate with p99 ≤ ${s.fanout.maxP99Ms} ms ${bestText(two)} ` +
        `(ours in one process under the same conditions: ${bestText(one)}); ${
          two ? two.steps.reduce((t, x) => t + x.gaps, 0) : "–"
        } gaps and ` +
        `${two ? two.steps.reduce((t, x) => t + x.dups, 0) : "–"} duplicates over ${
          two ? int(two.steps.reduce((t, x) => t + x.received, 0)) : "–"
        } deliveries.`,
    );
  }
  return out;
}

/** The whole benchmarks page. */
export function renderMarkdown(
  results: Results,
  charts: { fanout?: string; capacity?: string },
): string {
  const m = results.meta;
  const s = m.settings;
  const L: string[] = [];
  L.push("# Benchmarks", "");
  L.push(
    "Every number below was measured side by side in one run on one machine, with the peers " +
      "started by the benchmark itself. The machine is small and shared (noisy), so compare ratios " +
      "between peers of the same run rather than absolute values, and read the spreads.",
    "",
  );
  L.push(
    `- Date: ${m.date.slice(0, 10)} (${m.date}); run took ${
      (m.durationSec / 60).toFixed(1)
    } min (${m.mode} mode).`,
    `- Machine: ${m.machine.cores} cores (${m.machine.cpu}), ${
      m.machine.memoryGiB.toFixed(0)
    } GiB RAM, Linux ${m.machine.kernel}; open-files hard limit ${int(m.fdLimit)}.`,
    `- Software: ${Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(", ")}.`,
    `- Server under test: commit \`${m.commit.slice(0, 12)}\`${
      m.dirty ? " plus uncommitted changes in the work tree" : ""
    }.`,
    `- Command: \`${m.command}\` (raw data: \`bench/results/latest.json\`).`,
    `- Pinning: server on core ${m.pinning.server ?? "any"}, load generators on core ${
      m.pinning.clients ?? "any"
    } (\`taskset\`), except scenario 6.`,
    "",
  );
  if (charts.fanout) L.push("![Fan-out latency chart](benchmarks_fanout.svg)", "");
  if (charts.capacity) L.push("![Capacity chart](benchmarks_capacity.svg)", "");

  const v = verdicts(results);
  L.push("## Targets", "");
  L.push(
    "Evaluated on ours through the ticket socket, as the issue specifies (the native protocol's numbers are in the tables). " +
      "Ratios use medians of the repeated steps where there are repeats." +
      (v.length > 0 && (results.meta.settings.confirmRuns ?? 1) > 1
        ? ` A ladder step that failed without leaving a backlog was run up to ${results.meta.settings.confirmRuns} times and decided by the majority, for every peer alike; each run is a row in the tables below.`
        : ""),
    "",
  );
  L.push("| target | measured | verdict |", "| --- | --- | --- |");
  for (const x of v) {
    L.push(
      `| ${x.target} | ${x.measured} | **${x.status}**${` — ${x.margin}`} |`,
    );
  }
  L.push("");
  L.push(...whyMissed(results, v));
  if (results.errors.length > 0) {
    L.push("Scenarios that did not complete in this run:", "");
    for (const e of results.errors) L.push(`- ${e.scenario}: ${e.message.split("\n")[0]}`);
    L.push("");
  }

  L.push(...atAGlance(results), "");
  L.push("## Method", "");
  L.push(
    "- **Peers.** *raw Deno* (`bench/peers/raw_deno.ts`): `Deno.serve` + `Deno.upgradeWebSocket`, one `Set` per room, " +
      "`JSON.stringify` once per message, `idleTimeout` 30 s, no auth, no history: the local limit. " +
      "*Socket.IO 4.8* (`bench/peers/socketio_node.mjs`) on the machine's Node: `ws` engine, websocket transport only, " +
      "`perMessageDeflate: false`, `httpCompression: false`, `io.to(room).emit`. " +
      "*ours*: `deno run -A main.ts` (or `deno serve --parallel` in scenario 6) with the V8 flags of `deno task start` " +
      "(`--max-semi-space-size=2`: a smaller young generation, see the README's Tuning section; raw Deno runs with V8's defaults), JWT-authenticated, every message committed to Deno KV before it is broadcast, " +
      'spoken to through the ticket socket (`/ws/ticket/<id>/?token=`, frames `{"body"}`) and, as a fourth peer, through the native protocol ' +
      "(`/ws`, `join` then `send` with a fresh `client_id`, so every send is also idempotent). " +
      "All three broadcast the same JSON shape (`pk`, `body`, `sender`, `file`, `created_at`) to every member, sender included; " +
      "the raw and Socket.IO peers also decode and write attachments to disk and broadcast a URL, like ours. " +
      "Ours runs with its send-rate limits lifted (`RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_USER_PER_SECOND`), since the peers have none. " +
      "In the fan-out ladders only, *raw Deno + KV commit* is the raw peer with `PERSIST=kv`: each message and its room's head are committed to Deno KV " +
      "(one commit per message, not batched) before the broadcast, in seq order: the local limit of a server that persists, which separates the price of durability from the rest of ours' cost.",
    "- **Load.** Node `ws` clients in " + `${s.workers}` +
      " processes (`bench/load/worker.mjs`), the same client library for every peer " +
      "(Socket.IO is spoken over `ws` by a minimal Engine.IO v4 client, so no peer pays for a heavier client). " +
      "Sending is open loop: message *k* of a sender is due at a fixed time and carries that due time (the shared monotonic clock, µs) " +
      "at the start of its body; a receiver records *now − due* in an HDR histogram (`hdr-histogram-js`), so any stall, " +
      "including the load generator's own, counts against the latency (up to ~1 ms of timer granularity is included in every peer's numbers).",
    `- **Steps.** Each step: ${s.warmupMs / 1000} s warm-up, ${
      s.measureMs / 1000
    } s measured window, up to ${s.drainMs / 1000} s for the window's deliveries to arrive. ` +
      "A step is *within the bound* when its p99 is under the bound, at most 0.1% of the window's deliveries are missing after the drain, no socket was closed since the step before, and no open member got none of the window's messages where others of its room got five or more (a step that finds either reconnects the room for the next). " +
      "Rates go up until a peer's first step over the bound (its server is stopped at once so a backlog cannot steal the core); the " +
      `highest step within the bound is reported. The first rate of scenarios 1 and 2 is repeated ${s.fanout.baseRepeats}× per peer, interleaved, and reported as median (min–max).`,
    "- **Server cost.** CPU seconds from `/proc/<pid>/stat` (utime + stime, all threads) over the window, divided by the window's deliveries, and per thread from `/proc/<pid>/task/<tid>/stat` (the _main / KV / V8 / other_ column, see _Server CPU by thread_); RSS from `/proc/<pid>/status` (VmRSS, peak VmHWM, reset through `clear_refs` for the attachment phases).",
    `- **A shared machine.** CPU used by processes the benchmark did not start (other work on the machine) is metered over each window from \`/proc/stat\`; ` +
      `a step where it exceeds ${s.disturbedPct}% of a core is run again after the machine calms down (up to ${s.retries} more times), and the column *other processes' CPU* shows what remained. ` +
      "After every step the benchmark waits until the server has delivered its whole backlog; a server that cannot within " +
      `${
        s.quiesceMs / 1000
      } s has its members dropped and rejoined, so no peer's backlog runs into another peer's step.`,
    `- **Load-generator saturation.** The load generators share ${
      m.pinning.clients ? "one core" : "the machine"
    }; the *load-gen CPU* column shows how busy ` +
      "it was (⚠ = 90% or more). Near 100% the client, not the server, sets the limit, and the step says more about the load generator than the peer.",
    "",
  );

  if (results.fanout) {
    L.push("## 1. Fan-out: one room, open loop", "");
    L.push(
      `One room of N members; ${s.workers} senders (one per load process) share the offered rate; every member, sender included, receives every message. ` +
        `Rates stepped ${s.fanout.rates.join(", ")} msg/s until p99 passed ${s.fanout.maxP99Ms} ms${
          (s.fanout.refineSteps ?? 0) > 0
            ? `; then the gap between a peer's highest passed and lowest failed rate was halved ${
              s.fanout.refineSteps === 1 ? "once" : `${s.fanout.refineSteps} times`
            } (each midpoint decided like any step), so highest loads are known to within ${
              s.fanout.refineSteps === 1 ? "half" : `1/${2 ** s.fanout.refineSteps}`
            } of a step`
            : ""
        }.`,
      "",
    );
    for (const size of results.fanout.sizes) {
      L.push(`### 1 room × ${int(size.members)} members`, "");
      L.push(...ladderSummary(size.ladders, s.fanout.rates[0], "msg/s"), "");
    }
    L.push(...stepsDetails(
      "Every fan-out step",
      results.fanout.sizes.flatMap((x) => x.ladders.flatMap((l) => l.steps)),
      true,
    ));
  }

  if (results.rooms) {
    const r = results.rooms;
    L.push("## 2. Many rooms, every member sending", "");
    L.push(
      `${r.rooms} rooms × ${r.members} members; all ${
        int(r.rooms * r.members)
      } members send at the same rate; the offered rate is the total over all rooms ` +
        `(each message reaches the ${r.members} members of its room). Bound: p99 ${s.rooms.maxP99Ms} ms.`,
      "",
    );
    L.push(...ladderSummary(r.ladders, s.rooms.rates[0], "msg/s"), "");
    L.push(...stepsDetails("Every step", r.ladders.flatMap((l) => l.steps)));
  }

  if (results.ingest) {
    const r = results.ingest;
    L.push("## 3. Persisted ingest", "");
    L.push(
      `${r.rooms} rooms with one member each, who sends; latency is from the send's due time to the sender's own echo, which ours only sends ` +
        `after the message is committed to Deno KV. The raw and Socket.IO peers keep nothing, so their numbers are the ceiling of the transport. Bound: p99 ${r.maxP99Ms} ms.`,
      "",
    );
    L.push(...ladderSummary(r.ladders, s.ingest.rates[0], "msg/s"), "");
    if (r.storeCeiling) {
      const c = r.storeCeiling;
      L.push(
        `**The store's own ceiling.** \`bench/peers/store_ceiling.ts\` runs this server's message store alone (\`KvMessageStore.append\` ` +
          `into a fresh Deno KV file, no sockets, no JSON, no auth) on the server's core, ${c.rooms} rooms each keeping ${c.depth} appends ` +
          `outstanding: ${int(c.messagesPerSec)} msg/s in ${int(c.commitsPerSec)} commits/s (p50 ${
            ms(c.p50Ms * 1000)
          } ms, p99 ${ms(c.p99Ms * 1000)} ms per append), the best of the runs below. ` +
          "Every message is one KV write (plus one head write per room and commit), and Deno KV's SQLite does that work on a thread of " +
          "its own that shares the pinned core with the JavaScript thread. That number is an upper bound for the whole server, which " +
          "also reads frames, checks access, encodes and writes the echo.",
        "",
      );
      const runs = r.storeRuns ?? [];
      const one = runs.find((x) => x.rooms === 1);
      const spread = runs.find((x) => x.rooms === c.rooms && x.depth * x.rooms === one?.depth);
      if (runs.length > 1) {
        L.push(
          "| rooms | appends outstanding per room | msg/s | commits/s | messages per commit | p50 ms | p99 ms |",
          "| --: | --: | --: | --: | --: | --: | --: |",
          ...runs.map((x) =>
            `| ${int(x.rooms)} | ${int(x.depth)} | ${int(x.messagesPerSec)} | ${
              int(x.commitsPerSec)
            } | ${int(x.messagesPerSec / x.commitsPerSec)} | ${ms(x.p50Ms * 1000)} | ${
              ms(x.p99Ms * 1000)
            } |`
          ),
          "",
        );
      }
      if (one && spread) {
        L.push(
          `A commit costs by the rooms it writes more than by its messages: a room's messages sit together in KV's B-tree, so a ` +
            `commit writes at least one page per room to the WAL. With ${
              int(one.depth)
            } appends outstanding in all, one room took ${int(one.messagesPerSec)} msg/s and ${
              int(spread.rooms)
            } rooms ${int(spread.messagesPerSec)}.`,
          "",
        );
      }
    }
    L.push(...stepsDetails("Every step", r.ladders.flatMap((l) => l.steps)));
  }

  if (results.connections) {
    const c = results.connections;
    L.push("## 4. Idle connections", "");
    L.push(
      `Sockets opened from ${s.workers} load processes (source addresses 127.0.0.2–127.0.0.${
        1 + s.workers
      }), ` +
        `${s.connections.concurrency} handshakes in flight per process, spread over rooms of 20; then left idle ${
          s.connections.idleMs / 1000
        } s. ` +
        `RSS per socket = (RSS with the sockets − RSS before) / sockets. Each process may hold at most ${
          int(c.fdLimit)
        } files ` +
        `(hard limit, not raisable here), so the "20k" level is ${
          int(Math.max(...c.steps.map((x) => x.target)))
        } sockets.`,
      "",
    );
    L.push(
      "| peer | sockets | joined | connect time s | sockets/s | server CPU s | RSS before MiB | RSS after MiB | KB per socket | open after idle |",
      "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    );
    for (const x of c.steps) {
      L.push(
        `| ${label(x.peer)} | ${int(x.target)} | ${int(x.connected)}${
          x.failed ? ` (${int(x.failed)} failed)` : ""
        } | ${(x.ms / 1000).toFixed(2)} | ${int(x.perSec)} | ${fx(x.cpuSec, 2)} | ${
          mib(x.rssBefore)
        } | ${mib(x.rssAfter)} | ${fx(x.perConnection / 1000, 1)} | ${int(x.stillOpen)} |`,
      );
    }
    L.push("");
  }

  if (results.attachments) {
    const a = s.attachments;
    L.push("## 5. Attachments during fan-out", "");
    L.push(
      `A background room of ${a.backgroundMembers} members runs at ${a.backgroundRate} msg/s. In a second room of ${a.fileMembers} members ` +
        `(held by a load process of its own), one member sends one ${
          mib(a.bytes)
        } MiB file (base64 in the JSON frame), then ${a.many} members send one each at once. ` +
        "*Send → all delivered* is from the first send until every member of the file room has every file's broadcast. " +
        "*Frame fully sent* is when the client's socket took the frame's last byte (the server has it, or is reading the tail from the kernel); " +
        "*server time* is from then until the last member had the broadcast (the worst file of the phase) — the target's measure, as it leaves out " +
        "the load generator's own work of building and masking a 14 MB frame. Peak RSS is VmHWM after a reset just before the phase; " +
        "the *none* row is the same window without files. The single file is sent twice by the same socket. Deno itself holds three " +
        "copies of a text frame at the peak, whatever the server then does with it: the socket's read buffer (it grows to the largest " +
        "frame the socket has received and keeps that size until the socket closes), a copy of the text in Rust, and the V8 string made " +
        "from that. A socket's first large frame pays for all three; the second file (*1 (again)*) reuses the read buffer. The README's " +
        "Tuning section has the measurements, and the bound this server can put on what sockets keep.",
      "",
    );
    L.push(
      "| peer | server | files | send → all delivered ms | frame fully sent ms (last file) | server time ms (frame sent → all delivered, worst file) | RSS before MiB | peak RSS MiB | growth MiB | growth ÷ bytes sent | background p99 ms | background p99.9 ms |",
      "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    );
    const ordered = [...results.attachments].sort((x, y) =>
      PEER_ORDER(x.peer) - PEER_ORDER(y.peer) || (x.run ?? 0) - (y.run ?? 0)
    );
    for (const x of ordered) {
      const written = x.timings.map((t) => t.writtenMs ?? NaN).filter(Number.isFinite);
      L.push(
        `| ${label(x.peer)} | ${(x.run ?? 0) + 1} | ${
          x.files === 0 ? "none" : x.repeat ? "1 (again)" : x.files
        } | ${x.files === 0 ? "–" : x.allDeliveredMs?.toFixed(0) ?? "not all delivered"} | ${
          written.length ? Math.max(...written).toFixed(0) : "–"
        } | ${fx(serverTimeMs(x), 0)} | ${mib(x.rssBefore)} | ${mib(x.peak)} | ${mib(x.growth)} | ${
          x.files === 0 ? "–" : (x.growth / (x.bytes * x.files)).toFixed(2)
        } | ${ms(x.background.latency.p99)} | ${ms(x.background.latency.p999)} |`,
      );
    }
    L.push("");
  }

  if (results.parallel) {
    const p = results.parallel;
    L.push("## 6. Under `deno serve --parallel`", "");
    L.push(
      `\`deno serve --parallel\` with \`DENO_JOBS=2\` (two isolates sharing the KV file), 1 room × ${
        int(p.members)
      } members spread over the isolates by the kernel, ` +
        "next to ours in one process under the same conditions. Nothing is pinned here (two isolates need both cores), so the load generators share the cores with the server; " +
        "every member checks that `pk` grows by exactly one (gaps and duplicates must be 0). " +
        `Connections per isolate (sampled from \`/healthz\`): ${
          Object.values(p.isolates).map(int).join(" and ") || "–"
        }.`,
      "",
    );
    L.push(...ladderSummary(p.ladders, s.parallel.rates[0], "msg/s"), "");
    L.push(
      "| peer | offered msg/s | p50 ms | p99 ms | deliveries/s | gaps | duplicates | server CPU | result |",
      "| --- | --: | --: | --: | --: | --: | --: | --: | --- |",
    );
    for (const x of p.ladders.flatMap((l) => l.steps)) {
      L.push(
        `| ${label(x.peer)} | ${int(x.rate)} | ${ms(x.latency.p50)} | ${ms(x.latency.p99)} | ${
          int(x.deliveriesPerSec)
        } | ${x.gaps} | ${x.dups} | ${fx(x.serverCpuPct, 0)}% | ${
          x.pass ? "ok" : `over: ${x.reason}`
        } |`,
      );
    }
    L.push("");
  }

  L.push(...threadSection(results));

  const profiles = [
    ["fan-out", results.profile?.fanout, `1 room × ${int(s.profile.members)} members`],
    ["ingest", results.profile?.ingest, `${s.ingest.rooms} rooms, one sender each`],
  ] as const;
  if (profiles.some(([, run]) => run?.summary)) {
    L.push("## Where our server spends its time", "");
    L.push(
      "Separate runs (not used in the tables above) of ours under `deno run --cpu-prof`, pinned to one core like the measured runs. " +
        "Each profile covers the whole process life, joins included. Self time by function as a share of the busy (non-idle) time; " +
        "`op_*` entries are Deno's native operations (socket writes, KV reads and commits). Hot spots to look at first:",
      "",
    );
    for (const [name, run, shape] of profiles) {
      const p = run?.summary;
      if (!run || !p) continue;
      L.push(
        `### Under ${name}: ${shape} at ${run.rates.map(int).join(" then ")} msg/s`,
        "",
        `${(p.durationMs / 1000).toFixed(0)} s profiled, ${
          (p.busyMs / 1000).toFixed(1)
        } s of it busy on the JavaScript thread, while the process as a whole used ${
          fx(run.steps.reduce((t, x) => t + x.serverCpuSec, 0), 1)
        } CPU-s in the measured windows alone: KV's SQLite work runs on a thread of its own${
          run.steps.some((x) => x.serverThreadsPct) ? " (see _Server CPU by thread_)" : ""
        } and shows here only as the \`op_*\` calls that hand it over, which on one pinned core also absorb the moments that thread runs. The profiled steps: ${
          run.steps.map((x) =>
            `${int(x.rate)} msg/s → p99 ${ms(x.latency.p99)} ms, server CPU ${
              fx(x.serverCpuPct, 0)
            }%`
          ).join("; ")
        }.`,
        "",
        "| # | function (file:line) | self ms | % of busy | inclusive ms |",
        "| --: | --- | --: | --: | --: |",
      );
      p.top.forEach((x, i) => {
        L.push(
          `| ${i + 1} | \`${x.name.replace(/\|/g, "\\|")}\` | ${x.selfMs.toFixed(0)} | ${
            x.pct.toFixed(1)
          }% | ${x.totalMs.toFixed(0)} |`,
        );
      });
      L.push(
        "",
        `By area: ${p.areas.map((a) => `${a.area} ${a.pct.toFixed(1)}%`).join(", ")}.`,
        "",
      );
    }
  }

  L.push("## Reproducing", "");
  L.push(
    "```sh",
    `deno task bench              # full run (this one took ${(m.durationSec / 60).toFixed(0)} min${
      m.mode === "full" ? "" : ", " + m.mode + " mode"
    }); rewrites this page and its charts`,
    "deno task bench -- --quick   # smoke run, under 2 min; prints results, leaves this page alone",
    "deno task bench -- --only=fanout,ingest   # a subset (fanout, rooms, ingest, connections, attachments, parallel, profile)",
    "deno task bench -- --report=bench/results/latest.json   # re-render this page from saved results",
    "```",
    "",
    "The runner installs the Node side with `npm ci --prefix bench` when `bench/node_modules` is missing, starts and kills every process itself (also on Ctrl-C or failure), " +
      "and keeps logs, the CPU profile and the full JSON of each run under `bench/results/raw/` (ignored by git).",
    "",
  );
  return L.join("\n");
}
