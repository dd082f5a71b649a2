/** The Deno side of the Node load generators: spawn, command, and spread members over them. */

import { type Child, cpuSeconds, sleep, spawnChild } from "./procs.ts";

/** A latency summary in microseconds. */
export interface LatencySummary {
  /** Recorded values. */
  count: number;
  /** Smallest. */
  min: number;
  /** Median. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** 99.9th percentile. */
  p999: number;
  /** Largest. */
  max: number;
  /** Mean. */
  mean: number;
}

/** What a worker reports for one group after a load window. */
export interface GroupReport {
  /** Compressed HDR histogram of delivery latencies (µs). */
  histogram: string;
  /** Compressed HDR histogram of send lag behind schedule (µs). */
  lag: string;
  /** Messages due in the window and sent. */
  sentWindow: number;
  /** Deliveries those messages should make. */
  expectWindow: number;
  /** Deliveries of window messages received. */
  recvWindow: number;
  /** Messages sent in the whole run. */
  sentTotal: number;
  /** Deliveries received in the whole run. */
  recvTotal: number;
  /** Missing `pk`s seen by members. */
  gaps: number;
  /** Repeated or out-of-order `pk`s seen by members. */
  dups: number;
  /** Members whose socket closed since the previous report. */
  closed: number;
  /** Their close codes, with the reason when there was one (`1001 No response from ping frame.`). */
  closeCodes: Record<string, number>;
  /** Open members given none of the window's messages where others of their room got 5 or more. */
  silent: number;
  /** Members still open. */
  open: number;
  /** Frames that were not deliveries (errors, acks). */
  others: number;
  /** The first few of those. */
  otherSamples: string[];
}

/** One member to connect: its room and user number. */
export interface MemberSpec {
  /** Room name as the adapter understands it. */
  room: string;
  /** User number (selects the token). */
  user: number;
}

/** Result of connecting members on one worker. */
export interface ConnectResult {
  /** Members that joined. */
  connected: number;
  /** Members that did not. */
  failed: number;
  /** Milliseconds the worker took. */
  ms: number;
  /** First error messages with counts. */
  errors: Record<string, number>;
}

/** One Node load-generator process. */
export class LoadWorker {
  #child: Child;
  #next = 0;
  #pending = new Map<
    number,
    { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }
  >();
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #encoder = new TextEncoder();
  /** Index among the fleet's workers. */
  readonly index: number;

  private constructor(child: Child, index: number) {
    this.#child = child;
    this.index = index;
    this.#writer = child.process.stdin.getWriter();
    this.#read(child.process.stdout);
  }

  /** Starts `node bench/load/worker.mjs` pinned to `cpus`; its log is `<prefix>-<index>.log`. */
  static async start(
    index: number,
    cpus: string | undefined,
    logDir: string,
    prefix = "load",
  ): Promise<LoadWorker> {
    const script = new URL("../load/worker.mjs", import.meta.url).pathname;
    const child = await spawnChild(`${prefix}-${index}`, ["node", script], {
      cpus,
      logDir,
      piped: true,
    });
    const worker = new LoadWorker(child, index);
    await worker.request("now");
    return worker;
  }

  /** The process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** CPU seconds used so far. */
  cpu(): number {
    return cpuSeconds(this.#child.pid);
  }

  async #read(stream: ReadableStream<Uint8Array>) {
    let buffer = "";
    const decoder = new TextDecoder();
    try {
      for await (const chunk of stream) {
        buffer += decoder.decode(chunk, { stream: true });
        let at: number;
        while ((at = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, at);
          buffer = buffer.slice(at + 1);
          if (line.trim() === "") continue;
          const message = JSON.parse(line);
          const waiter = this.#pending.get(message.id);
          if (!waiter) continue;
          this.#pending.delete(message.id);
          if (message.ok) waiter.resolve(message);
          else waiter.reject(new Error(`load-${this.index}: ${message.error}`));
        }
      }
    } finally {
      for (const waiter of this.#pending.values()) {
        waiter.reject(new Error(`load-${this.index} exited; see ${this.#child.logPath}`));
      }
      this.#pending.clear();
    }
  }

  /** Sends a command and resolves with the worker's reply. */
  // deno-lint-ignore no-explicit-any
  request<T = any>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.#next;
    const reply = new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: Record<string, unknown>) => void, reject });
    });
    this.#writer.write(this.#encoder.encode(JSON.stringify({ id, cmd, args }) + "\n")).catch(
      () => {},
    );
    return reply;
  }

  /** Stops the process. */
  stop(): Promise<void> {
    this.#writer.close().catch(() => {});
    return this.#child.stop(2000);
  }
}

/** The load-generator processes of a run. */
export class Fleet {
  /** The workers. */
  readonly workers: LoadWorker[];

  private constructor(workers: LoadWorker[]) {
    this.workers = workers;
  }

  /** Starts `count` workers on `cpus`. */
  static async start(
    count: number,
    cpus: string | undefined,
    logDir: string,
    prefix = "load",
  ): Promise<Fleet> {
    const workers = await Promise.all(
      Array.from({ length: count }, (_, i) => LoadWorker.start(i, cpus, logDir, prefix)),
    );
    return new Fleet(workers);
  }

  /** The shared monotonic clock in µs. */
  async now(): Promise<number> {
    return (await this.workers[0].request<{ now: number }>("now")).now;
  }

  /** Gives every worker the token list. */
  async setTokens(list: string[]): Promise<void> {
    await Promise.all(this.workers.map((w) => w.request("tokens", { list })));
  }

  /**
   * Connects members to a group, member i on worker `place(i)`; resolves with the totals and,
   * per worker, the member indices in the order the worker holds them.
   */
  async connect(
    group: string,
    adapter: string,
    base: string,
    members: MemberSpec[],
    options: {
      place?: (i: number) => number;
      concurrency?: number;
      localAddress?: (worker: number) => string | undefined;
    } = {},
  ): Promise<
    {
      connected: number;
      failed: number;
      ms: number;
      errors: Record<string, number>;
      layout: number[][];
    }
  > {
    const place = options.place ?? ((i: number) => i % this.workers.length);
    const layout: number[][] = this.workers.map(() => []);
    members.forEach((_, i) => layout[place(i)].push(i));
    const started = performance.now();
    const results = await Promise.all(
      this.workers.map((w, k) =>
        w.request<ConnectResult>("connect", {
          group,
          adapter,
          base,
          rooms: layout[k].map((i) => members[i].room),
          users: layout[k].map((i) => members[i].user),
          concurrency: options.concurrency ?? 64,
          localAddress: options.localAddress?.(k),
        })
      ),
    );
    const errors: Record<string, number> = {};
    for (const r of results) {
      for (const [m, n] of Object.entries(r.errors)) errors[m] = (errors[m] ?? 0) + n;
    }
    return {
      connected: results.reduce((s, r) => s + r.connected, 0),
      failed: results.reduce((s, r) => s + r.failed, 0),
      ms: performance.now() - started,
      errors,
      layout,
    };
  }

  /** Merges compressed histograms into one summary (done by worker 0). */
  merge(histograms: string[]): Promise<LatencySummary> {
    return this.workers[0].request<LatencySummary>("merge", { histograms });
  }

  /** Reports of a group from every worker. */
  reports(group: string): Promise<GroupReport[]> {
    return Promise.all(this.workers.map((w) => w.request<GroupReport>("report", { group })));
  }

  /** Waits until the window's deliveries have all arrived or `timeoutMs` passed. */
  async drain(group: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const stats = await Promise.all(
        this.workers.map((w) =>
          w.request<{ expectWindow: number; recvWindow: number; sending: boolean }>("stats", {
            group,
          })
        ),
      );
      const expect = stats.reduce((s, x) => s + x.expectWindow, 0);
      const received = stats.reduce((s, x) => s + x.recvWindow, 0);
      if (!stats.some((x) => x.sending) && received >= expect) return;
      await sleep(50);
    }
  }

  /**
   * Waits until every delivery of everything sent in the last load has arrived (the server has
   * no backlog left that could steal CPU from the next step); false after `timeoutMs`.
   */
  async quiesce(group: string, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const stats = await Promise.all(
        this.workers.map((w) =>
          w.request<{ expectTotal: number; recvTotal: number; sending: boolean }>("stats", {
            group,
          })
        ),
      );
      const expect = stats.reduce((s, x) => s + x.expectTotal, 0);
      const received = stats.reduce((s, x) => s + x.recvTotal, 0);
      if (!stats.some((x) => x.sending) && received >= expect * 0.999) return true;
      if (Date.now() > deadline) return false;
      await sleep(50);
    }
  }

  /** Closes a group's members everywhere. */
  async close(group: string): Promise<void> {
    await Promise.all(this.workers.map((w) => w.request("close", { group })));
  }

  /** CPU seconds of all workers together. */
  cpu(): number {
    return this.workers.reduce((s, w) => s + w.cpu(), 0);
  }

  /** Stops every worker. */
  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.stop()));
  }
}
