/**
 * The process's and the isolate's own gauges for /metrics, named as Prometheus client libraries
 * name them, so that the dashboards and alerts teams already have for memory, CPU and file
 * descriptors work unchanged.
 */

import process from "node:process";

/** Where the process's own state is read from; a test points these at fixtures. */
export interface ProcSource {
  /** `/proc/self/stat`'s text, or undefined where there is none. */
  stat(): string | undefined;
  /** `/proc/stat`'s text (the boot time), or undefined. */
  bootStat(): string | undefined;
  /** Open file descriptors, or undefined where they cannot be counted. */
  openFds(): number | undefined;
  /** `/proc/self/limits`'s text, or undefined. */
  limits(): string | undefined;
}

const readText = (path: string): string | undefined => {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
};

/** Linux's `/proc`; elsewhere every reading is undefined and its gauge is left out. */
export const linuxProc: ProcSource = {
  stat: () => readText("/proc/self/stat"),
  bootStat: () => readText("/proc/stat"),
  openFds: () => {
    try {
      let n = 0;
      for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
      // The directory's own descriptor, open while it is read, is not one of the process's.
      return n - 1;
    } catch {
      return undefined;
    }
  },
  limits: () => readText("/proc/self/limits"),
};

/**
 * The line the start logs when Deno refuses to read /proc/self (it asks `--allow-all` for that,
 * which `deno task start` does not grant): the descriptor series are then left out.
 */
export const PROC_REFUSED_NOTE = "metrics: process_open_fds and process_max_fds are left out, " +
  "and process_start_time_seconds is the isolate's start: Deno lets only --allow-all (-A) " +
  "read /proc/self";

/** Whether this is Linux and Deno refuses to read /proc/self for want of `--allow-all`. */
export function procRefused(): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    Deno.readTextFileSync("/proc/self/limits");
    return false;
  } catch (err) {
    return err instanceof Deno.errors.NotCapable;
  }
}

/** Clock ticks per second of `/proc/self/stat`'s times: 100 on every Linux we run on. */
const CLOCK_TICKS = 100;

/**
 * Seconds since the epoch at which the process started: its start in `/proc/self/stat` (ticks
 * after boot) plus the boot time, or, without `/proc`, when this isolate started.
 */
function startTimeSeconds(source: ProcSource): number {
  const stat = source.stat();
  const boot = /^btime (\d+)$/m.exec(source.bootStat() ?? "");
  // The command name, in parentheses, may hold spaces: the fields are counted after it.
  const fields = stat?.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields?.[19]);
  if (boot && Number.isFinite(ticks)) return Number(boot[1]) + ticks / CLOCK_TICKS;
  return performance.timeOrigin / 1000;
}

/** The soft limit on open files, from `/proc/self/limits`. */
function maxFds(source: ProcSource): number | undefined {
  const line = /^Max open files\s+(\d+|unlimited)/m.exec(source.limits() ?? "");
  return line && line[1] !== "unlimited" ? Number(line[1]) : undefined;
}

/** Prometheus text of one metric family: its HELP and TYPE, then each sample (labels, value). */
export function renderFamily(
  name: string,
  type: string,
  help: string,
  samples: [string, number][],
): string {
  let text = `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n`;
  for (const [labels, value] of samples) text += `${name}${labels} ${value}\n`;
  return text;
}

/** One family with a single unlabelled sample. */
const family = (name: string, type: string, help: string, value: number): string =>
  renderFamily(name, type, help, [["", value]]);

/**
 * The whole process's series (memory, CPU, descriptors, start): once per scrape, after the
 * isolates' series, since every isolate of a `deno serve --parallel` process would report the
 * same values.
 */
export function renderProcessMetrics(source: ProcSource = linuxProc): string {
  const { user, system } = process.cpuUsage();
  let text = family(
    "process_resident_memory_bytes",
    "gauge",
    "Resident memory size in bytes.",
    Deno.memoryUsage().rss,
  );
  text += family(
    "process_cpu_seconds_total",
    "counter",
    "Total user and system CPU time spent in seconds, on every thread.",
    (user + system) / 1e6,
  );
  text += family(
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since unix epoch in seconds.",
    startTimeSeconds(source),
  );
  const open = source.openFds();
  if (open !== undefined) {
    text += family("process_open_fds", "gauge", "Number of open file descriptors.", open);
  }
  const max = maxFds(source);
  if (max !== undefined) {
    text += family("process_max_fds", "gauge", "Maximum number of open file descriptors.", max);
  }
  return text;
}

/** This isolate's V8 heap, which `deno serve --parallel` keeps apart for each isolate. */
export function renderIsolateMemory(): string {
  const { heapUsed, heapTotal, external } = Deno.memoryUsage();
  return family("deno_heap_used_bytes", "gauge", "V8 heap in use by this isolate.", heapUsed) +
    family("deno_heap_total_bytes", "gauge", "V8 heap reserved by this isolate.", heapTotal) +
    family(
      "deno_external_memory_bytes",
      "gauge",
      "Memory outside the V8 heap held by this isolate's objects (buffers).",
      external,
    );
}
