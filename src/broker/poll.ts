/** Reading KV keys over and over, where a watch cannot see the changes (another process's commits). */

/** A repeating read started by {@link pollEvery}. */
export interface Poll {
  /** Stops it; a round under way finds `stopped` set at its next step. */
  stop(): void;
  /** True once stopped. */
  readonly stopped: boolean;
}

/**
 * Runs `round` every `ms` (and at once too with `atOnce`), never two at once, without holding the
 * process open. A round that fails is passed over: a store that does not answer is reported by
 * the registry's heartbeat.
 */
export function pollEvery(
  ms: number,
  round: (poll: Poll) => Promise<void>,
  options: { atOnce?: boolean } = {},
): Poll {
  let reading = false;
  let stopped = false;
  const poll: Poll = {
    stop() {
      stopped = true;
      clearInterval(timer);
    },
    get stopped() {
      return stopped;
    },
  };
  const run = async () => {
    if (reading || stopped) return;
    reading = true;
    try {
      await round(poll);
    } catch {
      // Passed over; the next round tries again.
    } finally {
      reading = false;
    }
  };
  const timer = setInterval(run, ms);
  Deno.unrefTimer(timer);
  if (options.atOnce) void run();
  return poll;
}
