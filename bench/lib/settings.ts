/** Sizes, rates and durations of a full run and of the `--quick` smoke run. */

/** Everything a run's size depends on. */
export interface Settings {
  /** Smoke run. */
  quick: boolean;
  /** Load generator processes. */
  workers: number;
  /** Load before each measurement window, ms. */
  warmupMs: number;
  /** Measurement window, ms. */
  measureMs: number;
  /** Longest wait for a window's deliveries after sending stops, ms. */
  drainMs: number;
  /** Pause between steps, ms. */
  pauseMs: number;
  /** Pause after connecting before the first step, ms. */
  settleMs: number;
  /** Unrecorded load at the first rate before a ladder, so every peer starts warm (JIT), ms. */
  primeMs: number;
  /** Other processes' CPU (% of a core) in a window above which the step is run again. */
  disturbedPct: number;
  /** How often a disturbed step is run again. */
  retries: number;
  /** Total time the run may spend waiting out and repeating disturbed steps, ms. */
  retryBudgetMs: number;
  /** Longest wait after a step for the server's backlog to be delivered, ms. */
  quiesceMs: number;
  /**
   * Runs of a ladder step that failed without leaving a backlog, the failed one included; the
   * majority decides, so a single stall cannot end a ladder. 1 takes every failure as it is.
   */
  confirmRuns: number;
  /** The whole run is aborted (and every process killed) after this many ms. */
  deadlineMs: number;
  /** Scenario 1. */
  fanout: {
    sizes: number[];
    rates: number[];
    lowerRates: number[];
    baseRepeats: number;
    maxP99Ms: number;
    referenceSize: number;
    referenceRate: number;
    /** Halvings of the gap between a peer's highest passed and lowest failed rate. */
    refineSteps: number;
  };
  /** Scenario 2 (rates are total messages per second over all rooms). */
  rooms: {
    rooms: number;
    members: number;
    rates: number[];
    lowerRates: number[];
    baseRepeats: number;
    maxP99Ms: number;
  };
  /** Scenario 3 (rates are total messages per second over all rooms). */
  ingest: {
    rooms: number;
    rates: number[];
    lowerRates: number[];
    maxP99Ms: number;
    /** Halvings of the gap between the highest passed and the lowest failed rate. */
    refineSteps: number;
  };
  /** Scenario 4. */
  connections: { counts: number[]; concurrency: number; idleMs: number; fdLimit: number };
  /** Scenario 5. */
  attachments: {
    bytes: number;
    many: number;
    /** Fresh servers per peer the single file is measured on (only the first also sends many). */
    runs: number;
    fileMembers: number;
    backgroundMembers: number;
    backgroundRate: number;
  };
  /** Scenario 6. */
  parallel: { members: number; rates: number[] };
  /** The profiling run (skipped when `members` is 0). */
  profile: { members: number };
}

/** The settings for a mode; `fdLimit` is the hard open-files limit children get. */
export function settingsFor(quick: boolean, fdLimit: number): Settings {
  // A server needs a few descriptors besides its sockets (listener, KV files, stdio, epoll).
  const twentyK = Math.min(20_000, fdLimit - 200);
  if (quick) {
    return {
      quick,
      workers: 3,
      warmupMs: 300,
      measureMs: 700,
      drainMs: 1000,
      pauseMs: 100,
      settleMs: 300,
      primeMs: 300,
      disturbedPct: 15,
      retries: 0,
      retryBudgetMs: 0,
      quiesceMs: 3000,
      confirmRuns: 1,
      deadlineMs: 5 * 60_000,
      fanout: {
        sizes: [200],
        rates: [100, 300],
        lowerRates: [],
        baseRepeats: 1,
        maxP99Ms: 100,
        referenceSize: 200,
        referenceRate: 100,
        refineSteps: 1,
      },
      rooms: {
        rooms: 20,
        members: 5,
        rates: [1000],
        lowerRates: [],
        baseRepeats: 1,
        maxP99Ms: 100,
      },
      ingest: { rooms: 20, rates: [500, 2000], lowerRates: [], maxP99Ms: 25, refineSteps: 0 },
      connections: { counts: [500], concurrency: 50, idleMs: 500, fdLimit },
      attachments: {
        bytes: 1024 * 1024,
        many: 3,
        runs: 1,
        fileMembers: 3,
        backgroundMembers: 100,
        backgroundRate: 50,
      },
      parallel: { members: 200, rates: [100] },
      profile: { members: 100 },
    };
  }
  return {
    quick,
    workers: 3,
    warmupMs: 1000,
    measureMs: 5000,
    drainMs: 3000,
    pauseMs: 300,
    settleMs: 1000,
    primeMs: 3000,
    disturbedPct: 15,
    retries: 2,
    retryBudgetMs: 20 * 60_000,
    quiesceMs: 10_000,
    confirmRuns: 3,
    deadlineMs: 75 * 60_000,
    fanout: {
      sizes: [500, 1000, 2000],
      rates: [100, 150, 200, 250, 300, 400, 500, 600, 800, 1200, 1600, 2400, 3200],
      lowerRates: [50, 25, 10],
      // Five, not three: at 1,000 × 100 a single step's p99 swings 15–52 ms for raw Deno, and
      // the fan-out p99 target compares medians of these.
      baseRepeats: 5,
      maxP99Ms: 100,
      referenceSize: 1000,
      referenceRate: 100,
      // The targets compare highest loads to within 10%, finer than the ladder's 20–50% steps:
      // two halvings narrow the gap to a quarter of a step.
      refineSteps: 2,
    },
    rooms: {
      rooms: 100,
      members: 10,
      rates: [500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 32000],
      lowerRates: [250, 100],
      baseRepeats: 3,
      maxP99Ms: 100,
    },
    ingest: {
      rooms: 100,
      rates: [1, 2, 3, 5, 6, 7.5, 10, 20, 30, 40, 50, 60, 80, 100].map((k) => k * 1000),
      lowerRates: [500, 200, 100],
      maxP99Ms: 25,
      // Above 10,000 the ladder doubles: two halvings tell 12,500 from 17,500.
      refineSteps: 2,
    },
    connections: { counts: [10_000, twentyK], concurrency: 50, idleMs: 5000, fdLimit },
    attachments: {
      bytes: 10 * 1024 * 1024,
      many: 10,
      runs: 3,
      fileMembers: 10,
      backgroundMembers: 500,
      backgroundRate: 100,
    },
    parallel: { members: 1000, rates: [100, 150, 200, 300, 400, 600, 800, 1200] },
    profile: { members: 1000 },
  };
}
