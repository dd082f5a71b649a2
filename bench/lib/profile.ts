/** Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`) by self time per function. */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One function's share of the samples. */
export interface HotFunction {
  /** `name (file:line)`. */
  name: string;
  /** Self time, ms. */
  selfMs: number;
  /** Self time as % of the non-idle time. */
  pct: number;
  /** Inclusive time (self plus callees), ms, counted once per sample. */
  totalMs: number;
}

/** The top of a profile. */
export interface ProfileSummary {
  /** Profile file. */
  path: string;
  /** Wall time profiled, ms. */
  durationMs: number;
  /** Time not idle, ms. */
  busyMs: number;
  /** Functions by self time, highest first. */
  top: HotFunction[];
  /** Self time by area (our source, Deno runtime, npm packages, GC, ...), % of busy. */
  areas: { area: string; pct: number }[];
}

function shortUrl(url: string, root: string): string {
  if (url === "") return "";
  let u = url.replace(/^file:\/\//, "");
  if (root && u.startsWith(root)) u = u.slice(root.length).replace(/^\//, "");
  const npm =
    /node_modules\/(?:\.deno\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(u) ??
      /\/npm\/[^/]+\/((?:@[^/]+\/)?[^/]+)\/[^/]+\/(.*)$/.exec(u);
  if (npm) return `npm:${npm[1]}/${npm[2]}`;
  return u;
}

function areaOf(name: string, url: string): string {
  if (name === "(garbage collector)") return "garbage collection";
  if (name === "(program)") return "native (program)";
  if (url.startsWith("npm:")) return `npm ${url.slice(4).split("/")[0]}`;
  if (url.startsWith("ext:")) return "Deno runtime (ext:)";
  if (url.startsWith("node:")) return "Node runtime (node:)";
  if (url === "") return "native / builtins";
  if (url.startsWith("src/") || url.endsWith("main.ts") || url.endsWith("serve.ts")) {
    return "our code";
  }
  return "other";
}

/** Reads a profile and ranks functions by self time; `root` is stripped from file URLs. */
export async function summariseProfile(
  path: string,
  root: string,
  top = 15,
): Promise<ProfileSummary> {
  const profile = JSON.parse(await Deno.readTextFile(path)) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  // timeDeltas[i + 1] is the time spent in the state sampled at i.
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + dt);
  }
  const key = (n: ProfileNode) => {
    const url = shortUrl(n.callFrame.url, root);
    const name = n.callFrame.functionName || "(anonymous)";
    return { key: url ? `${name} (${url}:${n.callFrame.lineNumber + 1})` : name, url, name };
  };
  const selfBy = new Map<string, number>();
  const totalBy = new Map<string, number>();
  const areas = new Map<string, number>();
  let idle = 0;
  let all = 0;
  for (const [id, ms] of self) {
    const node = byId.get(id)!;
    const k = key(node);
    all += ms;
    if (k.name === "(idle)") {
      idle += ms;
      continue;
    }
    selfBy.set(k.key, (selfBy.get(k.key) ?? 0) + ms);
    const area = areaOf(k.name, k.url);
    areas.set(area, (areas.get(area) ?? 0) + ms);
    // Inclusive time: once per distinct function on the sampled stack.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const kk = key(byId.get(at)!).key;
      if (seen.has(kk)) continue;
      seen.add(kk);
      totalBy.set(kk, (totalBy.get(kk) ?? 0) + ms);
    }
  }
  const busy = all - idle;
  return {
    path,
    durationMs: (profile.endTime - profile.startTime) / 1000,
    busyMs: busy,
    top: [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, ms]) => ({
      name,
      selfMs: ms,
      pct: busy > 0 ? (ms / busy) * 100 : 0,
      totalMs: totalBy.get(name) ?? ms,
    })),
    areas: [...areas].sort((a, b) => b[1] - a[1]).map(([area, ms]) => ({
      area,
      pct: busy > 0 ? (ms / busy) * 100 : 0,
    })),
  };
}
