/** Child processes of the benchmark (pinned, with raised fd limits, always killed) and /proc readings. */

/** A process the benchmark started. */
export interface Child {
  /** Short name for logs. */
  name: string;
  /** Process id (the command itself: the wrappers `exec` into it). */
  pid: number;
  /** The Deno handle. */
  process: Deno.ChildProcess;
  /** Where its stderr (and stdout unless piped) goes. */
  logPath: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

const children = new Set<Child>();

/** Options of {@link spawnChild}. */
export interface SpawnOptions {
  /** Environment added to the runner's. */
  env?: Record<string, string>;
  /** `taskset -c` list, e.g. "0" or "1"; none when unset or taskset is missing. */
  cpus?: string;
  /** Directory for the log file. */
  logDir: string;
  /** Working directory. */
  cwd?: string;
  /** Pipe stdin and stdout to the runner (load workers) instead of logging stdout. */
  piped?: boolean;
}

let tasksetPath: string | null | undefined;

/** The path of `taskset`, or null when the machine has none. */
export function taskset(): string | null {
  if (tasksetPath !== undefined) return tasksetPath;
  for (const dir of ["/usr/bin", "/bin", "/usr/local/bin"]) {
    try {
      Deno.statSync(`${dir}/taskset`);
      return tasksetPath = `${dir}/taskset`;
    } catch {
      // Not here.
    }
  }
  return tasksetPath = null;
}

/**
 * Starts `cmd` through `bash -c 'ulimit -n <hard>; exec [taskset -c cpus] cmd...'`, so the child
 * may open as many files as the hard limit allows, runs on the given cores, and keeps the pid.
 */
export async function spawnChild(
  name: string,
  cmd: string[],
  options: SpawnOptions,
): Promise<Child> {
  const logPath = `${options.logDir}/${name}.log`;
  const log = await Deno.open(logPath, { create: true, append: true });
  const pin = options.cpus && taskset() ? [taskset()!, "-c", options.cpus] : [];
  const process = new Deno.Command("bash", {
    args: ["-c", 'ulimit -n "$(ulimit -Hn)"; exec "$@"', "bash", ...pin, ...cmd],
    env: options.env,
    cwd: options.cwd,
    stdin: options.piped ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const sink = log.writable.getWriter();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) await sink.write(chunk).catch(() => {});
  };
  const pumps = [pump(process.stderr)];
  if (!options.piped) pumps.push(pump(process.stdout));
  const finished = Promise.allSettled([process.status, ...pumps]).then(() => sink.close())
    .catch(() => {});
  let stopping: Promise<void> | undefined;
  const child: Child = {
    name,
    pid: process.pid,
    process,
    logPath,
    stop(graceMs = 5000) {
      stopping ??= (async () => {
        const exited = process.status.then(() => true);
        try {
          process.kill("SIGTERM");
        } catch {
          // Already gone.
        }
        const timer = new Promise<boolean>((r) => setTimeout(() => r(false), graceMs));
        if (!(await Promise.race([exited, timer]))) {
          try {
            process.kill("SIGKILL");
          } catch {
            // Already gone.
          }
          await exited;
        }
        await finished;
        children.delete(child);
      })();
      return stopping;
    },
  };
  children.add(child);
  process.status.then(() => children.delete(child));
  return child;
}

/** Stops every child still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => c.stop(3000)));
}

/** Children still running, for a last-resort synchronous kill. */
export function killAllNow(): void {
  for (const child of children) {
    try {
      child.process.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

let CLK_TCK = 100;

/** Reads the kernel's clock ticks per second (`getconf CLK_TCK`) for {@link cpuSeconds}. */
export async function initClockTicks(): Promise<void> {
  try {
    const out = await new Deno.Command("getconf", { args: ["CLK_TCK"] }).output();
    const ticks = Number(new TextDecoder().decode(out.stdout).trim());
    if (ticks > 0) CLK_TCK = ticks;
  } catch {
    // Keep 100, Linux's usual value.
  }
}

/** User and system (kernel) CPU seconds from the text of a `/proc/.../stat` file. */
function statCpuSeconds(stat: string): { user: number; kernel: number } {
  // The name, in parentheses, may hold spaces: fields are counted after its closing one.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(fields[11]) / CLK_TCK, kernel: Number(fields[12]) / CLK_TCK };
}

/** User + system CPU seconds of a process (all its threads), or NaN when it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const t = statCpuSeconds(Deno.readTextFileSync(`/proc/${pid}/stat`));
    return t.user + t.kernel;
  } catch {
    return NaN;
  }
}

/** Kinds of server thread whose CPU the report shows apart. */
export type ThreadKind = "main" | "kv" | "v8" | "other";

/** Every {@link ThreadKind}, in the order tables show them. */
export const THREAD_KINDS: readonly ThreadKind[] = ["main", "kv", "v8", "other"];

/** A process's threads by id, with kind and CPU seconds (all, and in the kernel); null when gone. */
export type ThreadReading =
  | Map<string, { kind: ThreadKind; seconds: number; kernel: number }>
  | null;

/**
 * Reads the CPU seconds of each thread of a process, with its kind: the main (JavaScript)
 * thread, Deno KV's SQLite thread (`sw-N`), V8's helpers (`V8 DefaultWorke`) or other.
 */
export function readThreads(pid: number): ThreadReading {
  const out = new Map<string, { kind: ThreadKind; seconds: number; kernel: number }>();
  let tids: string[];
  try {
    tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
  } catch {
    return null;
  }
  for (const tid of tids) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const kind: ThreadKind = tid === String(pid)
        ? "main"
        : /^sw-\d+$/.test(name)
        ? "kv"
        : name.startsWith("V8 ")
        ? "v8"
        : "other";
      const t = statCpuSeconds(stat);
      out.set(tid, { kind, seconds: t.user + t.kernel, kernel: t.kernel });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out.size > 0 ? out : null;
}

/** CPU seconds by kind of thread between two readings. */
export interface ThreadCpu {
  /** All CPU seconds. */
  total: Record<ThreadKind, number>;
  /** The part of `total` spent in the kernel (system calls: socket writes, file writes, fsync). */
  kernel: Record<ThreadKind, number>;
}

/** CPU seconds each kind of thread used between two readings (NaN when either is missing). */
export function threadCpuBetween(before: ThreadReading, after: ThreadReading): ThreadCpu {
  const filled = (n: number): Record<ThreadKind, number> => ({ main: n, kv: n, v8: n, other: n });
  if (!before || !after) return { total: filled(NaN), kernel: filled(NaN) };
  const out: ThreadCpu = { total: filled(0), kernel: filled(0) };
  // Per thread, so a thread that ended in between takes nothing away; what it used in the
  // window before it ended is lost, and a thread started in between counts from zero.
  for (const [tid, t] of after) {
    const was = before.get(tid);
    out.total[t.kind] += t.seconds - (was?.seconds ?? 0);
    out.kernel[t.kind] += t.kernel - (was?.kernel ?? 0);
  }
  return out;
}

/** Busy CPU seconds of the whole machine (all cores) since boot, from /proc/stat. */
export function machineBusySeconds(): number {
  try {
    const line = Deno.readTextFileSync("/proc/stat").split("\n", 1)[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** CPU seconds of this runner and every child it started. */
export function ownCpuSeconds(): number {
  let total = cpuSeconds(Deno.pid);
  for (const child of children) {
    const s = cpuSeconds(child.pid);
    if (Number.isFinite(s)) total += s;
  }
  return total;
}

/** Meters CPU used on the machine by processes the benchmark did not start, % of one core. */
export function foreignMeter(): () => number {
  const t0 = performance.now();
  const machine0 = machineBusySeconds();
  const own0 = ownCpuSeconds();
  return () => {
    const seconds = (performance.now() - t0) / 1000;
    const foreign = machineBusySeconds() - machine0 - (ownCpuSeconds() - own0);
    return seconds > 0 ? Math.max(0, (foreign / seconds) * 100) : 0;
  };
}

/**
 * Waits until other processes use less than `maxPct` % of a core over a one-second sample, or
 * `timeoutMs` passed; resolves to the last sample.
 */
export async function waitForQuiet(maxPct: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const meter = foreignMeter();
    await sleep(1000);
    const pct = meter();
    if (pct < maxPct || Date.now() > deadline) return pct;
  }
}

/** Resident memory now and at peak (VmRSS, VmHWM), in bytes. */
export function memory(pid: number): { rss: number; hwm: number } {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(status)?.[1]);
    return { rss: kb("VmRSS") * 1024, hwm: kb("VmHWM") * 1024 };
  } catch {
    return { rss: NaN, hwm: NaN };
  }
}

/** Resets the peak (VmHWM) to the current RSS; false when the kernel refuses. */
export function resetPeak(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Threads of a process. */
export function threads(pid: number): number {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    return Number(/^Threads:\s+(\d+)/m.exec(status)?.[1]);
  } catch {
    return NaN;
  }
}

/** Waits until `url` answers 200, or throws after `timeoutMs` (or when `child` exits first). */
export async function waitHealthy(url: string, child: Child, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  child.process.status.then(() => exited = true);
  while (true) {
    if (exited) throw new Error(`${child.name} exited during start-up; see ${child.logPath}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`${child.name} did not answer ${url}`);
    await sleep(100);
  }
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
