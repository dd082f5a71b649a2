/** The six scenarios (and the profiling run), each measuring every peer side by side. */

import { Fleet, type GroupReport, type LatencySummary, LoadWorker } from "./load.ts";
import {
  FANOUT_ONLY_PEERS,
  OURS_PARALLEL,
  OURS_TICKET,
  type PeerContext,
  PEERS,
  type PeerSpec,
  type RunningPeer,
  startPeer,
} from "./peers.ts";
import {
  cpuSeconds,
  foreignMeter,
  memory,
  readThreads,
  resetPeak,
  sleep,
  taskset,
  THREAD_KINDS,
  type ThreadCpu,
  threadCpuBetween,
  type ThreadKind,
  waitForQuiet,
} from "./procs.ts";
import type { Settings } from "./settings.ts";

/** Everything a scenario needs. */
export interface Bench {
  /** Sizes and durations. */
  settings: Settings;
  /** Peer start-up context. */
  ctx: PeerContext;
  /** Load generators pinned away from the server. */
  fleet: Fleet;
  /** Core(s) for the server under test, when pinning. */
  serverCpus?: string;
  /** Core(s) of the load generators, when pinning. */
  clientCpus?: string;
  /** Progress output. */
  log(line: string): void;
  /** Time left for waiting out and repeating disturbed steps, ms (shared by the run). */
  retryBudget: { ms: number };
  /** Peers that could not take part in a scenario (the others go on without them). */
  errors: { scenario: string; message: string }[];
}

/**
 * Starts a peer and joins `members` to `group`; on failure records why, stops the peer and
 * resolves to null, so one broken peer does not cost the others their scenario.
 */
async function joinPeer(
  bench: Bench,
  scenario: string,
  spec: PeerSpec,
  tag: string,
  cpus: string | undefined,
  group: string,
  members: { room: string; user: number }[],
): Promise<{ peer: RunningPeer; res: Awaited<ReturnType<typeof connectOrThrow>> } | null> {
  let peer: RunningPeer | undefined;
  try {
    peer = await startPeer(spec, bench.ctx, { cpus, tag });
    const res = await connectOrThrow(bench, peer, group, members);
    bench.log(`  ${spec.id}: ${members.length} members joined in ${res.ms.toFixed(0)} ms`);
    return { peer, res };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    bench.log(`  ${spec.id}: left out of ${scenario}: ${message}`);
    bench.errors.push({ scenario: `${scenario} (${spec.id})`, message });
    await bench.fleet.close(group).catch(() => {});
    await peer?.stop();
    return null;
  }
}

/** One measured load step of one peer. */
export interface StepResult {
  /** Peer id. */
  peer: string;
  /** Rooms. */
  rooms: number;
  /** Members per room. */
  members: number;
  /** Offered messages per second (all senders). */
  rate: number;
  /** Delivery latency, µs. */
  latency: LatencySummary;
  /** p99 and max of the senders' lag behind schedule, µs. */
  sendLag: { p99: number; max: number };
  /** Deliveries due in the window. */
  expected: number;
  /** Of those, received. */
  received: number;
  /** Fraction not received by the end of the drain. */
  lossRatio: number;
  /** Received deliveries per second of window. */
  deliveriesPerSec: number;
  /** Server CPU seconds in the window. */
  serverCpuSec: number;
  /** Server CPU seconds per million deliveries. */
  cpuPerMillion: number;
  /** Server CPU use in the window, % of one core. */
  serverCpuPct: number;
  /** The same by kind of server thread (see `readThreads`), % of one core. */
  serverThreadsPct?: Record<ThreadKind, number>;
  /** The kernel's part of {@link StepResult.serverThreadsPct}, % of one core. */
  serverThreadsKernelPct?: Record<ThreadKind, number>;
  /** Load generators' CPU use in the window, % of their cores. */
  clientCpuPct: number;
  /** The load generators were near saturation (≥ 90%): the limit may be theirs. */
  clientBound: boolean;
  /** CPU used by processes the benchmark did not start, % of one core, over the window. */
  foreignCpuPct: number;
  /** Other processes used more than the settings allow: the step was (or should be) repeated. */
  disturbed: boolean;
  /** Runs it took (more than 1 when disturbed). */
  attempts: number;
  /** The server delivered its whole backlog after the step. */
  quiesced: boolean;
  /** Server RSS at the end of the window, bytes. */
  rss: number;
  /** Server peak RSS so far, bytes. */
  hwm: number;
  /** `pk` gaps seen by members. */
  gaps: number;
  /** `pk` duplicates seen by members. */
  dups: number;
  /** Members whose socket closed since the previous step's report. */
  closed: number;
  /** Their close codes and reasons. */
  closeCodes?: Record<string, number>;
  /** Open members that received none of the window's messages. */
  silent?: number;
  /** Non-delivery frames (errors) received. */
  others: number;
  /** A few of those. */
  otherSamples: string[];
  /** Within the latency bound, nothing lost, nobody dropped. */
  pass: boolean;
  /** Why not. */
  reason?: string;
}

/** Senders of one worker: client index in that worker's group, rate, expected fan-out. */
type SenderPlan = { client: number; rate: number; fanout: number }[];

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? NaN
    : s.length % 2
    ? s[(s.length - 1) / 2]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** What a step offers: its rooms and members, the total rate, and its p99 bound. */
export interface StepShape {
  rooms: number;
  members: number;
  rate: number;
  maxP99Ms: number;
}

/** Runs one open-loop window on a group and measures it. */
export async function runStep(
  bench: Bench,
  peer: RunningPeer,
  group: string,
  plans: SenderPlan[],
  shape: StepShape,
): Promise<StepResult> {
  const { fleet, settings } = bench;
  const now = await fleet.now();
  const startAt = now + 200_000;
  const from = startAt + settings.warmupMs * 1000;
  const to = from + settings.measureMs * 1000;
  await Promise.all(fleet.workers.map((w, k) =>
    w.request("load", {
      group,
      senders: plans[k],
      startAt,
      endAt: to,
      from,
      to,
      tag: `w${k}`,
    })
  ));
  await sleep((from - now) / 1000);
  const cpu0 = cpuSeconds(peer.pid);
  const threads0 = readThreads(peer.pid);
  const client0 = fleet.cpu();
  const foreign = foreignMeter();
  const t0 = performance.now();
  await sleep(settings.measureMs);
  const cpu1 = cpuSeconds(peer.pid);
  const threads1 = readThreads(peer.pid);
  const client1 = fleet.cpu();
  const foreignPct = foreign();
  const seconds = (performance.now() - t0) / 1000;
  const mem = memory(peer.pid);
  await fleet.drain(group, settings.drainMs);
  const reports = await fleet.reports(group);
  const quiesced = await fleet.quiesce(group, settings.quiesceMs);
  return summarise(bench, peer, reports, shape, {
    seconds,
    serverCpu: cpu1 - cpu0,
    serverThreads: threadCpuBetween(threads0, threads1),
    clientCpu: client1 - client0,
    mem,
    foreignPct,
    quiesced,
  });
}

/**
 * {@link runStep}, run again (after waiting for the machine to calm down) when processes the
 * benchmark did not start took more than `settings.disturbedPct` % of a core in the window.
 */
export async function measureStep(
  bench: Bench,
  peer: RunningPeer,
  group: string,
  plans: SenderPlan[],
  shape: StepShape,
): Promise<StepResult> {
  for (let attempt = 1;; attempt++) {
    const started = performance.now();
    const step = await runStep(bench, peer, group, plans, shape);
    step.attempts = attempt;
    if (attempt > 1) bench.retryBudget.ms -= performance.now() - started;
    if (
      !step.disturbed || !step.quiesced || attempt > bench.settings.retries ||
      bench.retryBudget.ms <= 0
    ) return step;
    bench.log(
      `      other processes used ${
        step.foreignCpuPct.toFixed(0)
      }% of a core: waiting for quiet, then again`,
    );
    const waited = performance.now();
    await waitForQuiet(bench.settings.disturbedPct / 2, Math.min(60_000, bench.retryBudget.ms));
    bench.retryBudget.ms -= performance.now() - waited;
  }
}

/** `{"1001 No response from ping frame.": 3}` as `3× 1001 No response from ping frame.`. */
const describeCodes = (codes: Record<string, number>) =>
  Object.entries(codes).map(([c, n]) => `${n}× ${c}`).join(", ");

/** Seconds by kind of thread as % of one core over a window of `seconds`. */
const perKindPct = (byKind: Record<ThreadKind, number>, seconds: number) =>
  Object.fromEntries(THREAD_KINDS.map((k) => [k, (byKind[k] / seconds) * 100])) as Record<
    ThreadKind,
    number
  >;

async function summarise(
  bench: Bench,
  peer: RunningPeer,
  reports: GroupReport[],
  shape: StepShape,
  m: {
    seconds: number;
    serverCpu: number;
    serverThreads: ThreadCpu;
    clientCpu: number;
    mem: { rss: number; hwm: number };
    foreignPct: number;
    quiesced: boolean;
  },
): Promise<StepResult> {
  const latency = await bench.fleet.merge(reports.map((r) => r.histogram));
  const lag = await bench.fleet.merge(reports.map((r) => r.lag));
  const sum = (f: (r: GroupReport) => number) => reports.reduce((s, r) => s + f(r), 0);
  const expected = sum((r) => r.expectWindow);
  const received = sum((r) => r.recvWindow);
  const lossRatio = expected > 0 ? Math.max(0, expected - received) / expected : 1;
  const windowSec = bench.settings.measureMs / 1000;
  const closed = sum((r) => r.closed);
  const closeCodes: Record<string, number> = {};
  for (const r of reports) {
    for (const [c, n] of Object.entries(r.closeCodes)) closeCodes[c] = (closeCodes[c] ?? 0) + n;
  }
  const silent = sum((r) => r.silent ?? 0);
  const clientCores = bench.clientCpus ? bench.clientCpus.split(",").length : 2;
  const result: StepResult = {
    peer: peer.spec.id,
    rooms: shape.rooms,
    members: shape.members,
    rate: shape.rate,
    latency,
    sendLag: { p99: lag.p99, max: lag.max },
    expected,
    received,
    lossRatio,
    deliveriesPerSec: received / windowSec,
    serverCpuSec: m.serverCpu,
    cpuPerMillion: received > 0 ? m.serverCpu / (received / 1e6) : NaN,
    serverCpuPct: (m.serverCpu / m.seconds) * 100,
    serverThreadsPct: perKindPct(m.serverThreads.total, m.seconds),
    serverThreadsKernelPct: perKindPct(m.serverThreads.kernel, m.seconds),
    clientCpuPct: (m.clientCpu / m.seconds / clientCores) * 100,
    clientBound: m.clientCpu / m.seconds / clientCores >= 0.9,
    foreignCpuPct: m.foreignPct,
    disturbed: m.foreignPct > bench.settings.disturbedPct,
    attempts: 1,
    quiesced: m.quiesced,
    rss: m.mem.rss,
    hwm: m.mem.hwm,
    gaps: sum((r) => r.gaps),
    dups: sum((r) => r.dups),
    closed,
    closeCodes,
    silent,
    others: sum((r) => r.others),
    otherSamples: reports.flatMap((r) => r.otherSamples).slice(0, 3),
    pass: true,
  };
  const reasons: string[] = [];
  if (expected === 0) reasons.push("nothing sent");
  if (latency.p99 > shape.maxP99Ms * 1000) reasons.push(`p99 ${fmtMs(latency.p99)} ms`);
  if (lossRatio > 0.001) reasons.push(`${(lossRatio * 100).toFixed(1)}% not delivered`);
  if (closed > 0) reasons.push(`${closed} sockets closed (${describeCodes(closeCodes)})`);
  if (silent > 0) reasons.push(`${silent} open members received nothing by the end of the drain`);
  if (result.others > 0) reasons.push(`${result.others} error frames`);
  if (!m.quiesced) reasons.push(`backlog not delivered ${bench.settings.quiesceMs / 1000} s later`);
  if (reasons.length > 0) {
    result.pass = false;
    result.reason = reasons.join(", ");
  }
  bench.log(
    `    ${peer.spec.id.padEnd(14)} ${String(shape.rate).padStart(6)} msg/s  p50 ${
      fmtMs(latency.p50)
    }  p99 ${fmtMs(latency.p99)}  max ${fmtMs(latency.max)} ms  ${
      Math.round(result.deliveriesPerSec)
    } deliv/s  srv ${result.serverCpuPct.toFixed(0)}% (${
      THREAD_KINDS.map((k) => `${k} ${result.serverThreadsPct![k].toFixed(0)}`).join(" ")
    }; kernel: main ${result.serverThreadsKernelPct!.main.toFixed(0)} kv ${
      result.serverThreadsKernelPct!.kv.toFixed(0)
    })  cli ${result.clientCpuPct.toFixed(0)}%  ${result.pass ? "ok" : "over: " + result.reason}${
      result.clientBound ? " [load generator saturated]" : ""
    }${result.disturbed ? ` [others used ${m.foreignPct.toFixed(0)}% of a core]` : ""}`,
  );
  return result;
}

/** Milliseconds from µs, for logs and tables. */
export function fmtMs(us: number): string {
  const ms = us / 1000;
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

/** Median and spread of repeated steps, with the step whose p99 is the median. */
export interface Repeated {
  /** The step with the median p99. */
  step: StepResult;
  /** p99 of every repeat, µs. */
  p99s: number[];
  /** p50 of every repeat, µs. */
  p50s: number[];
  /** Median p99, µs. */
  p99: number;
  /** Median p50, µs. */
  p50: number;
}

function repeated(steps: StepResult[]): Repeated {
  const p99s = steps.map((s) => s.latency.p99);
  const sorted = [...steps].sort((a, b) => a.latency.p99 - b.latency.p99);
  const step = { ...sorted[Math.floor((sorted.length - 1) / 2)] };
  // The repeats decide by majority; the reported step is the one with the median p99.
  step.pass = steps.filter((s) => s.pass).length * 2 > steps.length;
  if (step.pass) delete step.reason;
  else step.reason ??= steps.find((s) => !s.pass)?.reason;
  return {
    step,
    p99s,
    p50s: steps.map((s) => s.latency.p50),
    p99: median(p99s),
    p50: median(steps.map((s) => s.latency.p50)),
  };
}

/** A ladder of steps for one peer: every step run, the highest passing load. */
export interface Ladder {
  /** Peer id. */
  peer: string;
  /** Steps in the order run. */
  steps: StepResult[];
  /** Repeats of the base rate. */
  base?: Repeated;
  /** Steps that failed once and were run again (`confirmRuns`), with the majority's verdict. */
  confirmed?: Repeated[];
  /** Highest offered rate that passed (0 when none did). */
  best: number;
  /** Deliveries per second at that rate. */
  bestDeliveries: number;
  /** The reason of the lowest rate that failed. */
  stopReason?: string;
  /** True when the ladder ran out of rates before failing. */
  capped: boolean;
}

interface LadderPeer {
  peer: RunningPeer;
  group: string;
  /** The group's members, to reconnect them after a step that left a backlog. */
  members: { room: string; user: number }[];
  plans: (rate: number) => SenderPlan[];
  ladder: Ladder;
  done: boolean;
}

/**
 * Runs rates in ascending order on every peer, interleaved (rate r on each peer, then the next
 * rate), repeating the first rate `repeats` times. A step that fails without leaving a backlog
 * is run again, up to `confirmRuns` runs in all, and the majority decides. A peer stops at its
 * first failing rate (its server is stopped at once so a backlog cannot steal the core); when
 * even the first rate fails, `lower` rates are tried downwards. With `refine` > 0, the gap
 * between a peer's highest passed and lowest failed rate is then halved that many times (each
 * midpoint decided like a step), so that the highest load is known to better than the ladder's
 * step.
 */
async function runLadder(
  bench: Bench,
  entries: LadderPeer[],
  rates: number[],
  lower: number[],
  repeats: number,
  shape: (rate: number) => StepShape,
  refine = 0,
): Promise<void> {
  const stopPeer = async (e: LadderPeer) => {
    e.done = true;
    await bench.fleet.close(e.group).catch(() => {});
    await e.peer.stop();
  };
  /** Drops a backlog: closes the members (the server discards what it queued) and rejoins. */
  const reset = async (e: LadderPeer) => {
    await bench.fleet.close(e.group);
    await waitServerIdle(e.peer, 10_000);
    await connectOrThrow(bench, e.peer, e.group, e.members);
    await sleep(bench.settings.settleMs);
  };
  /**
   * Connects the room again after a step that found members closed (counted against it) or open
   * but given nothing, so that the next step has a whole room. A reconnect that fails is logged,
   * not thrown: the steps after it report the members still missing.
   */
  const mend = async (e: LadderPeer, step: { closed: number; silent?: number }) => {
    if (step.closed === 0 && !step.silent) return;
    try {
      await reset(e);
    } catch (err) {
      bench.log(
        `    ${e.peer.spec.id}: connecting the room again failed: ${(err as Error).message}`,
      );
    }
  };
  /** Measures one step, then mends the room (the caller resets a backlog). */
  const measure = async (e: LadderPeer, rate: number): Promise<StepResult> => {
    const step = await measureStep(bench, e.peer, e.group, e.plans(rate), shape(rate));
    if (step.quiesced) await mend(e, step);
    return step;
  };
  /**
   * Decides a rate from the runs made so far: a single failure that drained its backlog may be
   * one stall, so the step is run again and the majority of `confirmRuns` decides. Records the
   * runs in the ladder (as its base when `base`).
   */
  const decide = async (
    e: LadderPeer,
    rate: number,
    made: StepResult[],
    swampedBefore: boolean,
    base: boolean,
  ): Promise<{ step: StepResult; passed: boolean }> => {
    let steps = made;
    let swamped = swampedBefore;
    if (steps.length === 1 && !swamped && !steps[0].pass) {
      for (let r = 1; r < bench.settings.confirmRuns; r++) {
        bench.log(`    ${e.peer.spec.id}: confirming the failure at ${rate} msg/s`);
        const again = await measure(e, rate);
        steps = [...steps, again];
        if (!again.quiesced) {
          swamped = true;
          await reset(e);
          break;
        }
        await sleep(bench.settings.pauseMs);
        if (steps.filter((s) => !s.pass).length * 2 > bench.settings.confirmRuns) break;
      }
    }
    const agg = steps.length > 1 ? repeated(steps) : undefined;
    if (agg && base) e.ladder.base = agg;
    else if (agg) e.ladder.confirmed = [...(e.ladder.confirmed ?? []), agg];
    e.ladder.steps.push(...steps);
    const step = swamped ? steps.at(-1)! : agg ? agg.step : steps[0];
    return { step, passed: !swamped && step.pass };
  };
  /** Records a decided rate: the new best, or the lowest failure so far. */
  const record = (e: LadderPeer, at: number, step: StepResult, passed: boolean) => {
    if (passed) {
      e.ladder.best = at;
      e.ladder.bestDeliveries = step.deliveriesPerSec;
    } else {
      e.ladder.stopReason = `${at} msg/s: ${step.reason}${saturation(step)}`;
    }
  };
  for (const e of entries) {
    // Unrecorded: lets every peer's JIT and buffers warm up at the first rate.
    const quiet: Bench = {
      ...bench,
      settings: { ...bench.settings, warmupMs: bench.settings.primeMs, measureMs: 200 },
      log: () => {},
    };
    const primed = await runStep(quiet, e.peer, e.group, e.plans(rates[0]), shape(rates[0]));
    // Its closes are not reported again: a room short of members would pass the first step.
    if (primed.quiesced) await mend(e, primed);
    await sleep(bench.settings.pauseMs);
  }
  for (const [i, rate] of rates.entries()) {
    const active = entries.filter((e) => !e.done);
    if (active.length === 0) break;
    bench.log(`  rate ${rate} msg/s`);
    const results = new Map<LadderPeer, StepResult[]>();
    const swamped = new Set<LadderPeer>();
    for (let r = 0; r < (i === 0 ? repeats : 1); r++) {
      for (const e of active) {
        if (swamped.has(e)) continue;
        const step = await measure(e, rate);
        results.set(e, [...(results.get(e) ?? []), step]);
        if (!step.quiesced) {
          // Its backlog would steal the core from the next peer's step, and repeats are moot.
          swamped.add(e);
          await reset(e);
        }
        await sleep(bench.settings.pauseMs);
      }
    }
    for (const e of active) {
      const { step, passed } = await decide(
        e,
        rate,
        results.get(e)!,
        swamped.has(e),
        i === 0 && repeats > 1,
      );
      record(e, rate, step, passed);
      if (passed) continue;
      // The highest rate passed and the lowest failed so far, lower rates tried first when even
      // the first rate failed; then the gap between them is narrowed.
      let lo = i > 0 ? rates[i - 1] : undefined;
      let hi = rate;
      if (i === 0) {
        for (const low of lower) {
          const s = await measure(e, low);
          e.ladder.steps.push(s);
          if (!s.quiesced) await reset(e);
          record(e, low, s, s.pass);
          if (s.pass) {
            lo = low;
            break;
          }
          hi = low;
        }
      }
      for (let k = 0; lo !== undefined && k < refine; k++) {
        const mid = Math.round((lo + hi) / 2);
        if (mid <= lo || mid >= hi) break;
        bench.log(`    ${e.peer.spec.id}: between ${lo} and ${hi} msg/s, trying ${mid}`);
        const first = await measure(e, mid);
        if (!first.quiesced) await reset(e);
        const m = await decide(e, mid, [first], !first.quiesced, false);
        record(e, mid, m.step, m.passed);
        if (m.passed) lo = mid;
        else hi = mid;
        await sleep(bench.settings.pauseMs);
      }
      await stopPeer(e);
    }
  }
  for (const e of entries) {
    if (!e.done) {
      e.ladder.capped = true;
      await stopPeer(e);
    }
  }
}

/** Who ran out of CPU in a failing step, as a suffix for its reason. */
function saturation(step: StepResult): string {
  const server = step.serverCpuPct >= 90;
  if (step.clientBound && !server) return " (load generator saturated, server was not)";
  if (step.clientBound && server) return " (server and load generator both saturated)";
  return server ? " (server saturated)" : "";
}

/** Waits until the server uses under 20% of a core over half a second, or `timeoutMs` passed. */
async function waitServerIdle(peer: RunningPeer, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const c0 = cpuSeconds(peer.pid);
    await sleep(500);
    if (!((cpuSeconds(peer.pid) - c0) / 0.5 > 0.2)) return;
  }
}

/** Members of `rooms` rooms of `size`, member i in room floor(i / size), user i. */
function roomMembers(prefix: string, rooms: number, size: number) {
  return Array.from({ length: rooms * size }, (_, i) => ({
    room: `${prefix}${Math.floor(i / size)}`,
    user: i,
  }));
}

async function connectOrThrow(
  bench: Bench,
  peer: RunningPeer,
  group: string,
  members: { room: string; user: number }[],
  place?: (i: number) => number,
) {
  const res = await bench.fleet.connect(group, peer.spec.adapter, peer.base, members, { place });
  if (res.failed > 0) {
    throw new Error(
      `${peer.spec.id}: ${res.failed} of ${members.length} members failed to join: ${
        JSON.stringify(res.errors)
      }`,
    );
  }
  // A server may accept and then close (a refused token): give it a moment, then check.
  await sleep(300);
  const reports = await bench.fleet.reports(group);
  const closed = reports.reduce((s, r) => s + r.closed, 0);
  if (closed > 0) {
    const codes: Record<string, number> = {};
    for (const r of reports) {
      for (const [c, n] of Object.entries(r.closeCodes)) codes[c] = (codes[c] ?? 0) + n;
    }
    throw new Error(
      `${peer.spec.id}: ${closed} members were closed after joining: ${JSON.stringify(codes)}`,
    );
  }
  return res;
}

/** Scenario 1: one room, open-loop fan-out, rate stepped up per room size. */
export interface FanoutResult {
  /** Per room size, per peer. */
  sizes: { members: number; ladders: Ladder[] }[];
}

async function fanoutLadders(
  bench: Bench,
  peers: PeerSpec[],
  sizes: number[],
  rates: number[],
  tag: string,
  serverCpus: string | undefined,
): Promise<{ members: number; ladders: Ladder[] }[]> {
  const { settings, fleet } = bench;
  const out: { members: number; ladders: Ladder[] }[] = [];
  for (const size of sizes) {
    bench.log(`${tag}: 1 room x ${size} members`);
    const entries: LadderPeer[] = [];
    try {
      for (const spec of peers) {
        const group = `${tag}-${size}-${spec.id}`;
        const members = roomMembers(`${tag}${size}r`, 1, size);
        const joined = await joinPeer(
          bench,
          tag,
          spec,
          `${tag}-${size}`,
          serverCpus,
          group,
          members,
        );
        if (!joined) continue;
        entries.push({
          peer: joined.peer,
          group,
          members,
          // One sender per worker: the first member each worker holds.
          plans: (rate) =>
            fleet.workers.map(
              () => [{ client: 0, rate: rate / fleet.workers.length, fanout: size }],
            ),
          ladder: { peer: spec.id, steps: [], best: 0, bestDeliveries: 0, capped: false },
          done: false,
        });
      }
      await sleep(settings.settleMs);
      await runLadder(
        bench,
        entries,
        rates,
        settings.fanout.lowerRates,
        settings.fanout.baseRepeats,
        (rate) => ({ rooms: 1, members: size, rate, maxP99Ms: settings.fanout.maxP99Ms }),
        settings.fanout.refineSteps,
      );
    } finally {
      for (const e of entries) {
        if (!e.done) {
          await fleet.close(e.group).catch(() => {});
          await e.peer.stop();
        }
      }
    }
    out.push({ members: size, ladders: entries.map((e) => e.ladder) });
  }
  return out;
}

/** Scenario 1. */
export async function fanout(bench: Bench): Promise<FanoutResult> {
  const s = bench.settings.fanout;
  const peers = [...PEERS, ...FANOUT_ONLY_PEERS];
  return { sizes: await fanoutLadders(bench, peers, s.sizes, s.rates, "fanout", bench.serverCpus) };
}

/** Scenario 2: many rooms, every member sending. */
export interface RoomsResult {
  /** Rooms. */
  rooms: number;
  /** Members per room. */
  members: number;
  /** Per peer; rates are total messages per second. */
  ladders: Ladder[];
}

/**
 * Joins `all` on every peer, each member sending its share of the offered rate to `fanout`
 * recipients, and runs the ladder of `rates` on them; stops every peer it started.
 */
async function everyMemberSends(
  bench: Bench,
  scenario: "rooms" | "ingest",
  all: { room: string; user: number }[],
  fanout: number,
  ladder: {
    rates: number[];
    lowerRates: number[];
    repeats: number;
    maxP99Ms: number;
    refine?: number;
  },
  shape: { rooms: number; members: number },
): Promise<Ladder[]> {
  const entries: LadderPeer[] = [];
  try {
    for (const spec of PEERS) {
      const group = `${scenario}-${spec.id}`;
      const joined = await joinPeer(bench, scenario, spec, scenario, bench.serverCpus, group, all);
      if (!joined) continue;
      const counts = joined.res.layout.map((l) => l.length);
      entries.push({
        peer: joined.peer,
        group,
        members: all,
        plans: (rate) =>
          counts.map((n) =>
            Array.from({ length: n }, (_, j) => ({ client: j, rate: rate / all.length, fanout }))
          ),
        ladder: { peer: spec.id, steps: [], best: 0, bestDeliveries: 0, capped: false },
        done: false,
      });
    }
    await sleep(bench.settings.settleMs);
    await runLadder(
      bench,
      entries,
      ladder.rates,
      ladder.lowerRates,
      ladder.repeats,
      (rate) => ({ ...shape, rate, maxP99Ms: ladder.maxP99Ms }),
      ladder.refine,
    );
  } finally {
    for (const e of entries) {
      if (!e.done) {
        await bench.fleet.close(e.group).catch(() => {});
        await e.peer.stop();
      }
    }
  }
  return entries.map((e) => e.ladder);
}

/** Scenario 2. */
export async function manyRooms(bench: Bench): Promise<RoomsResult> {
  const r = bench.settings.rooms;
  bench.log(`rooms: ${r.rooms} rooms x ${r.members} members, every member sending`);
  const ladders = await everyMemberSends(
    bench,
    "rooms",
    roomMembers("mr", r.rooms, r.members),
    r.members,
    { rates: r.rates, lowerRates: r.lowerRates, repeats: r.baseRepeats, maxP99Ms: r.maxP99Ms },
    { rooms: r.rooms, members: r.members },
  );
  return { rooms: r.rooms, members: r.members, ladders };
}

/** Scenario 3: ingest: one sender per room, latency to the sender's own echo. */
export interface IngestResult {
  /** Rooms (one sender each). */
  rooms: number;
  /** p99 bound, ms. */
  maxP99Ms: number;
  /** Per peer. */
  ladders: Ladder[];
  /** This server's message store alone on the server's core, when it could be measured. */
  storeCeiling?: StoreCeiling;
  /** Every store-alone run: the ingest's rooms at several depths, and one room as deep. */
  storeRuns?: StoreCeiling[];
}

/** `bench/peers/store_ceiling.ts`: the store's own limit, no sockets, no JSON, no auth. */
export interface StoreCeiling {
  /** Rooms appended to. */
  rooms: number;
  /** Appends each room keeps outstanding. */
  depth: number;
  /** Measured seconds. */
  seconds: number;
  /** Appends completed per second. */
  messagesPerSec: number;
  /** KV commits per second. */
  commitsPerSec: number;
  /** Append latency, ms. */
  p50Ms: number;
  /** Append latency, ms. */
  p99Ms: number;
}

/**
 * Runs the store-ceiling probe pinned like the servers: the ingest's rooms with 1, 4 and 10
 * appends outstanding each (the best is the ceiling), then one room with as many outstanding as
 * the first run had in all, which tells the cost of a commit's rooms from that of its messages.
 */
async function storeCeiling(
  bench: Bench,
  rooms: number,
): Promise<{ best?: StoreCeiling; runs: StoreCeiling[] }> {
  const script = new URL("../peers/store_ceiling.ts", import.meta.url).pathname;
  let best: StoreCeiling | undefined;
  const runs: StoreCeiling[] = [];
  const shapes = [[rooms, 1], [rooms, 4], [rooms, 10], [1, rooms]];
  for (const [roomCount, depth] of shapes) {
    const tool = taskset();
    const run = [Deno.execPath(), "run", "-A", "--unstable-kv", script];
    const cmd = tool && bench.serverCpus ? [tool, "-c", bench.serverCpus, ...run] : run;
    const out = await new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd: bench.ctx.serverDir,
      env: {
        SERVER_DIR: bench.ctx.serverDir,
        ROOMS: String(roomCount),
        DEPTH: String(depth),
        SECONDS: bench.settings.quick ? "1" : "5",
        NO_COLOR: "1",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      bench.log(`  store ceiling failed: ${new TextDecoder().decode(out.stderr).slice(0, 300)}`);
      return { best, runs };
    }
    const r = JSON.parse(new TextDecoder().decode(out.stdout).trim()) as StoreCeiling;
    bench.log(
      `  store alone, ${roomCount} rooms x ${depth} outstanding: ${
        r.messagesPerSec.toFixed(0)
      } msg/s, ` +
        `${r.commitsPerSec.toFixed(0)} commits/s, p50 ${r.p50Ms.toFixed(1)} p99 ${
          r.p99Ms.toFixed(1)
        } ms`,
    );
    runs.push(r);
    if (roomCount === rooms && (!best || r.messagesPerSec > best.messagesPerSec)) best = r;
  }
  return { best, runs };
}

/** Scenario 3. */
export async function ingest(bench: Bench): Promise<IngestResult> {
  const { rooms, maxP99Ms, rates, lowerRates, refineSteps } = bench.settings.ingest;
  bench.log(`ingest: ${rooms} rooms, one sender each, p99 to own echo <= ${maxP99Ms} ms`);
  const ladders = await everyMemberSends(
    bench,
    "ingest",
    roomMembers("in", rooms, 1),
    1,
    { rates, lowerRates, repeats: 1, maxP99Ms, refine: refineSteps },
    { rooms, members: 1 },
  );
  const ceiling = PEERS.some((p) => p.persists) ? await storeCeiling(bench, rooms) : undefined;
  return { rooms, maxP99Ms, ladders, storeCeiling: ceiling?.best, storeRuns: ceiling?.runs };
}

/** Scenario 4 result of one peer at one count. */
export interface ConnectionStep {
  /** Peer id. */
  peer: string;
  /** Sockets asked for. */
  target: number;
  /** Sockets that joined. */
  connected: number;
  /** Sockets that failed. */
  failed: number;
  /** First errors. */
  errors: Record<string, number>;
  /** Wall time to open them all, ms. */
  ms: number;
  /** Joined sockets per second. */
  perSec: number;
  /** Server RSS before, bytes. */
  rssBefore: number;
  /** Server RSS with every socket idle, bytes. */
  rssAfter: number;
  /** (after - before) / connected, bytes. */
  perConnection: number;
  /** Peak RSS, bytes. */
  hwm: number;
  /** Server CPU seconds spent accepting. */
  cpuSec: number;
  /** Sockets still open after the idle period. */
  stillOpen: number;
  /** CPU used by processes the benchmark did not start while connecting, % of one core. */
  foreignCpuPct: number;
}

/** Scenario 4. */
export async function connections(
  bench: Bench,
): Promise<{ steps: ConnectionStep[]; fdLimit: number }> {
  const { settings, fleet } = bench;
  const steps: ConnectionStep[] = [];
  for (const [ti, target] of settings.connections.counts.entries()) {
    bench.log(`connections: ${target} idle sockets`);
    for (const [pi, spec] of PEERS.entries()) {
      if (bench.retryBudget.ms > 0) {
        // No repeats here (reconnecting 20k sockets is slow): start in a quiet moment instead.
        const waited = performance.now();
        await waitForQuiet(settings.disturbedPct / 2, Math.min(30_000, bench.retryBudget.ms));
        bench.retryBudget.ms -= performance.now() - waited;
      }
      let peer: RunningPeer;
      try {
        peer = await startPeer(spec, bench.ctx, { cpus: bench.serverCpus, tag: `conn${target}` });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        bench.log(`  ${spec.id}: left out of connections: ${message}`);
        bench.errors.push({ scenario: `connections (${spec.id})`, message });
        continue;
      }
      const group = `conn-${target}-${spec.id}`;
      try {
        await sleep(1000);
        const before = memory(peer.pid);
        const cpu0 = cpuSeconds(peer.pid);
        const foreign = foreignMeter();
        const members = roomMembers("cr", Math.ceil(target / 20), 20).slice(0, target);
        const res = await fleet.connect(group, spec.adapter, peer.base, members, {
          concurrency: settings.connections.concurrency,
          // Fresh source addresses per batch: ports bound by earlier batches linger in
          // TIME_WAIT and would make the kernel search long for free ones.
          localAddress: (k) => `127.0.${1 + ti}.${2 + pi * fleet.workers.length + k}`,
        });
        const cpu1 = cpuSeconds(peer.pid);
        const foreignCpuPct = foreign();
        await sleep(settings.connections.idleMs);
        const after = memory(peer.pid);
        const reports = await fleet.reports(group);
        const stillOpen = reports.reduce((s, r) => s + r.open, 0);
        const step: ConnectionStep = {
          peer: spec.id,
          target,
          connected: res.connected,
          failed: res.failed,
          errors: res.errors,
          ms: res.ms,
          perSec: res.connected / (res.ms / 1000),
          rssBefore: before.rss,
          rssAfter: after.rss,
          perConnection: res.connected > 0 ? (after.rss - before.rss) / res.connected : NaN,
          hwm: after.hwm,
          cpuSec: cpu1 - cpu0,
          stillOpen,
          foreignCpuPct,
        };
        steps.push(step);
        bench.log(
          `    ${spec.id.padEnd(14)} ${res.connected}/${target} in ${
            (res.ms / 1000).toFixed(1)
          } s (${Math.round(step.perSec)}/s), RSS ${mb(before.rss)} -> ${mb(after.rss)} MB, ${
            (step.perConnection / 1024).toFixed(1)
          } KB/socket, open after idle ${stillOpen}, others ${foreignCpuPct.toFixed(0)}%${
            res.failed ? `, failed ${res.failed} ${JSON.stringify(res.errors)}` : ""
          }`,
        );
      } finally {
        await fleet.close(group).catch(() => {});
        await peer.stop();
      }
      await sleep(bench.settings.pauseMs);
    }
  }
  return { steps, fdLimit: settings.connections.fdLimit };
}

const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1);

/** Scenario 5 result of one peer in one phase. */
export interface AttachmentPhase {
  /** Peer id. */
  peer: string;
  /** Files sent at once (0 = baseline without files). */
  files: number;
  /** A second single file right after the first: the steady state, past allocator warm-up. */
  repeat?: boolean;
  /** Which fresh server of the peer (0 first; see `settings.attachments.runs`). */
  run?: number;
  /** Bytes of each file. */
  bytes: number;
  /** Members of the file room. */
  members: number;
  /** Per file: ms from its send to the frame leaving the client, and to first/last member. */
  timings: {
    writtenMs: number | null;
    firstMs: number | null;
    lastMs: number | null;
    received: number;
  }[];
  /** ms from the first send until every member had every file's broadcast (null: not all did). */
  allDeliveredMs: number | null;
  /** Server RSS just before, bytes. */
  rssBefore: number;
  /** Server peak RSS during the phase, bytes. */
  peak: number;
  /** peak - before, bytes. */
  growth: number;
  /** How the peak was measured. */
  peakSource: "VmHWM" | "sampled";
  /** The background room's step, measured over the same window. */
  background: StepResult;
}

/**
 * Scenario 5: attachments while a fan-out room runs at a moderate rate. The file room lives on a
 * load process of its own, so building and sending the big frames does not stall the background
 * room's clients, and one process times every send and delivery.
 */
export async function attachments(bench: Bench, logDir: string): Promise<AttachmentPhase[]> {
  const { settings } = bench;
  const a = settings.attachments;
  const out: AttachmentPhase[] = [];
  bench.log(
    `attachments: ${
      a.bytes / 1024 / 1024
    } MiB x1 and x${a.many}, background 1 room x ${a.backgroundMembers} at ${a.backgroundRate} msg/s`,
  );
  const sender = await LoadWorker.start(0, bench.clientCpus, logDir, "load-files");
  const runs = Math.max(1, a.runs ?? 1);
  try {
    await sender.request("payload", { bytes: a.bytes });
    // A first file is one measurement per server start, and a noisy one: it is taken on several
    // fresh servers, peers interleaved, and the targets use the median.
    for (let run = 0; run < runs; run++) {
      if (runs > 1) bench.log(`  fresh servers, round ${run + 1} of ${runs}`);
      for (const spec of PEERS) {
        try {
          await attachmentsOnFreshServer(bench, sender, spec, run, out);
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err);
          bench.log(`  ${spec.id}: left out of attachments: ${message}`);
          bench.errors.push({ scenario: `attachments (${spec.id})`, message });
        }
      }
    }
  } finally {
    await sender.stop();
  }
  return out;
}

/**
 * One peer's attachment phases on a server started for them, each added to `out` as it ends: the
 * background room, the file room on `sender`, then the files (the first run also measures the
 * window without files and the many files at once).
 */
async function attachmentsOnFreshServer(
  bench: Bench,
  sender: LoadWorker,
  spec: PeerSpec,
  run: number,
  out: AttachmentPhase[],
): Promise<void> {
  const { settings, fleet } = bench;
  const a = settings.attachments;
  let peer: RunningPeer | undefined;
  const bg = `att-bg-${spec.id}`;
  const files = `att-files-${spec.id}`;
  try {
    peer = await startPeer(spec, bench.ctx, { cpus: bench.serverCpus, tag: "attach" });
    await connectOrThrow(bench, peer, bg, roomMembers("ab", 1, a.backgroundMembers));
    if (bench.ctx.tokens) await sender.request("tokens", { list: bench.ctx.tokens });
    const joined = await sender.request<{ connected: number; errors: Record<string, number> }>(
      "connect",
      {
        group: files,
        adapter: spec.adapter,
        base: peer.base,
        rooms: Array.from({ length: a.fileMembers }, () => "af0"),
        users: Array.from({ length: a.fileMembers }, (_, i) => 5000 + i),
        concurrency: 16,
      },
    );
    if (joined.connected !== a.fileMembers) {
      throw new Error(`${spec.id}: file room members failed: ${JSON.stringify(joined.errors)}`);
    }
    await sleep(settings.settleMs);
    const plans = fleet.workers.map(() => [{
      client: 0,
      rate: a.backgroundRate / fleet.workers.length,
      fanout: a.backgroundMembers,
    }]);
    // The window without files is the baseline; the smoke run skips it. One file is sent
    // twice by the same socket: the first also grows that socket's read buffer in Deno,
    // which the second reuses.
    const counts = run > 0 ? [1, 1] : settings.quick ? [1, 1, a.many] : [0, 1, 1, a.many];
    for (const [i, count] of counts.entries()) {
      const phase = await attachmentPhase(bench, peer, sender, bg, files, plans, count);
      if (count === 1 && counts.indexOf(1) !== i) phase.repeat = true;
      if (run > 0) phase.run = run;
      out.push(phase);
      await sleep(settings.pauseMs);
    }
  } finally {
    await fleet.close(bg).catch(() => {});
    await sender.request("close", { group: files }).catch(() => {});
    await peer?.stop();
  }
}

async function attachmentPhase(
  bench: Bench,
  peer: RunningPeer,
  sender: LoadWorker,
  bg: string,
  files: string,
  plans: SenderPlan[],
  count: number,
): Promise<AttachmentPhase> {
  const { settings } = bench;
  const a = settings.attachments;
  const rssBefore = memory(peer.pid).rss;
  const hwmReset = resetPeak(peer.pid);
  let sampledPeak = rssBefore;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      sampledPeak = Math.max(sampledPeak, memory(peer.pid).rss || 0);
      await sleep(10);
    }
  })();
  const attach = (async () => {
    if (count === 0) return null;
    // Send inside the background room's measurement window.
    await sleep(200 + settings.warmupMs + Math.min(1500, settings.measureMs / 4));
    return await sender.request<{ members: number; files: AttachmentPhase["timings"] }>("attach", {
      group: files,
      senders: Array.from({ length: count }, (_, i) => i),
      bytes: a.bytes,
      timeoutMs: 60_000,
    });
  })();
  const background = await runStep(bench, peer, bg, plans, {
    rooms: 1,
    members: a.backgroundMembers,
    rate: a.backgroundRate,
    maxP99Ms: settings.fanout.maxP99Ms,
  });
  const sent = await attach;
  sampling = false;
  await sampler;
  const mem = memory(peer.pid);
  const peak = hwmReset ? Math.max(mem.hwm, sampledPeak) : sampledPeak;
  const timings = sent?.files ?? [];
  const complete = timings.length > 0 && timings.every((t) => t.received >= (sent?.members ?? 0));
  const phase: AttachmentPhase = {
    peer: peer.spec.id,
    files: count,
    bytes: a.bytes,
    members: a.fileMembers,
    timings,
    allDeliveredMs: complete ? Math.max(...timings.map((t) => t.lastMs ?? Infinity)) : null,
    rssBefore,
    peak,
    growth: peak - rssBefore,
    peakSource: hwmReset ? "VmHWM" : "sampled",
    background,
  };
  if (count > 0) {
    bench.log(
      `    ${peer.spec.id.padEnd(14)} ${count} file(s): all delivered in ${
        phase.allDeliveredMs?.toFixed(0) ?? "n/a"
      } ms, RSS ${mb(rssBefore)} -> peak ${mb(peak)} MB (+${mb(phase.growth)}), background p99 ${
        fmtMs(background.latency.p99)
      } ms`,
    );
  }
  return phase;
}

/** Scenario 6 result. */
export interface ParallelResult {
  /** Members in the room. */
  members: number;
  /** Connections per isolate as /healthz reported them (sampled). */
  isolates: Record<string, number>;
  /** Ladders: ours in one process and under deno serve --parallel, same unpinned conditions. */
  ladders: Ladder[];
}

/** Samples `/healthz` over fresh connections: which isolates answer, with how many sockets. */
async function isolateSpread(http: string, samples = 40): Promise<Record<string, number>> {
  const seen: Record<string, number> = {};
  for (let i = 0; i < samples; i++) {
    try {
      const res = await fetch(`${http}/healthz`, { headers: { connection: "close" } });
      const body = await res.json();
      seen[String(body.isolate)] = Number(body.connections);
    } catch {
      // Skip a failed sample.
    }
  }
  return seen;
}

/**
 * Scenario 6: fan-out under `deno serve --parallel` (two isolates), next to ours in one process,
 * both unpinned (the isolates need both cores) with unpinned load generators; `pk` gaps and
 * duplicates are counted per member.
 */
export async function parallel(bench: Bench, logDir: string): Promise<ParallelResult> {
  const { settings } = bench;
  const p = settings.parallel;
  const fleet = await Fleet.start(bench.fleet.workers.length, undefined, logDir, "load-unpinned");
  if (bench.ctx.tokens) await fleet.setTokens(bench.ctx.tokens);
  const unpinned: Bench = { ...bench, fleet, serverCpus: undefined, clientCpus: undefined };
  let isolates: Record<string, number> = {};
  try {
    const specs = settings.quick ? [OURS_PARALLEL] : [OURS_TICKET, OURS_PARALLEL];
    bench.log(`parallel: 1 room x ${p.members}, ours single process vs deno serve --parallel`);
    const entries: LadderPeer[] = [];
    try {
      for (const spec of specs) {
        const peer = await startPeer(spec, bench.ctx, { tag: "parallel" });
        const group = `par-${spec.id}`;
        entries.push({
          peer,
          group,
          members: roomMembers("pr", 1, p.members),
          plans: (rate) =>
            fleet.workers.map(() => [{
              client: 0,
              rate: rate / fleet.workers.length,
              fanout: p.members,
            }]),
          ladder: { peer: spec.id, steps: [], best: 0, bestDeliveries: 0, capped: false },
          done: false,
        });
        const res = await connectOrThrow(unpinned, peer, group, entries.at(-1)!.members);
        bench.log(`  ${spec.id}: ${p.members} members joined in ${res.ms.toFixed(0)} ms`);
        if (spec === OURS_PARALLEL) {
          isolates = await isolateSpread(peer.http);
          bench.log(`  connections per isolate: ${JSON.stringify(isolates)}`);
        }
      }
      await sleep(settings.settleMs);
      await runLadder(
        unpinned,
        entries,
        p.rates,
        settings.fanout.lowerRates,
        settings.fanout.baseRepeats,
        (rate) => ({ rooms: 1, members: p.members, rate, maxP99Ms: settings.fanout.maxP99Ms }),
      );
    } finally {
      for (const e of entries) {
        if (!e.done) {
          await fleet.close(e.group).catch(() => {});
          await e.peer.stop();
        }
      }
    }
    return { members: p.members, isolates, ladders: entries.map((e) => e.ladder) };
  } finally {
    await fleet.stop();
  }
}

/** What a profiling run drives: the members and the senders at a rate. */
export interface ProfileLoad {
  /** Name for logs and the profile directory. */
  name: string;
  /** Members to connect. */
  members: { room: string; user: number }[];
  /** Senders per worker at a rate, given the connect layout (member indices per worker). */
  plans(rate: number, layout: number[][]): SenderPlan[];
  /** Rooms and members per room, for the step records. */
  rooms: number;
  /** Members per room. */
  perRoom: number;
}

/** The fan-out load of the profiling run: one room, one sender per load process. */
export function fanoutProfileLoad(bench: Bench): ProfileLoad {
  const n = bench.settings.profile.members;
  return {
    name: "fanout",
    members: roomMembers("pf", 1, n),
    plans: (rate) =>
      bench.fleet.workers.map(
        () => [{ client: 0, rate: rate / bench.fleet.workers.length, fanout: n }],
      ),
    rooms: 1,
    perRoom: n,
  };
}

/** The ingest load of the profiling run: one sender per room, echo only. */
export function ingestProfileLoad(bench: Bench): ProfileLoad {
  const rooms = bench.settings.ingest.rooms;
  return {
    name: "ingest",
    members: roomMembers("pi", rooms, 1),
    plans: (rate, layout) =>
      layout.map((l) => l.map((_, j) => ({ client: j, rate: rate / rooms, fanout: 1 }))),
    rooms,
    perRoom: 1,
  };
}

/**
 * A profiling run: ours with `--cpu-prof`, pinned like the measured runs, under `load` at each
 * rate; returns the profile's path (the numbers of these steps carry the profiler's overhead).
 */
export async function profileRun(
  bench: Bench,
  profileDir: string,
  load: ProfileLoad,
  rates: number[],
  spec: PeerSpec = OURS_TICKET,
): Promise<{ path: string | null; steps: StepResult[] }> {
  const { settings, fleet } = bench;
  await Deno.mkdir(profileDir, { recursive: true });
  bench.log(
    `profile ${load.name}: ${spec.id} with --cpu-prof, ${load.rooms} room(s) x ${load.perRoom} at ${
      rates.join(", ")
    } msg/s`,
  );
  const peer = await startPeer(spec, bench.ctx, {
    cpus: bench.serverCpus,
    tag: `profile-${load.name}`,
    profileDir,
  });
  const group = `profile-${load.name}`;
  const steps: StepResult[] = [];
  try {
    const res = await connectOrThrow(bench, peer, group, load.members);
    await sleep(settings.settleMs);
    for (const rate of rates) {
      steps.push(
        await runStep(bench, peer, group, load.plans(rate, res.layout), {
          rooms: load.rooms,
          members: load.perRoom,
          rate,
          maxP99Ms: 1e9,
        }),
      );
    }
  } finally {
    await fleet.close(group).catch(() => {});
    await peer.stop();
  }
  let newest: { path: string; mtime: number } | null = null;
  for await (const entry of Deno.readDir(profileDir)) {
    if (!entry.name.endsWith(".cpuprofile")) continue;
    const path = `${profileDir}/${entry.name}`;
    const mtime = (await Deno.stat(path)).mtime?.getTime() ?? 0;
    if (!newest || mtime > newest.mtime) newest = { path, mtime };
  }
  return { path: newest?.path ?? null, steps };
}
