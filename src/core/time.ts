/** Time formats the wire protocols expect. */

/** ISO 8601 UTC with seconds and a `Z`, as Django REST framework renders it (`2025-10-22T17:32:10Z`). */
export function isoSeconds(iso: string): string {
  return iso.slice(0, 19) + "Z";
}

/** The second {@link isoMillis} formatted last, and its text up to the milliseconds. */
let isoSecond = NaN;
let isoPrefix = "";

/**
 * `new Date(ms).toISOString()` for a whole number of ms: the text up to the second is kept while
 * the second stays the same (the format is slow, and a busy server stamps many messages a
 * second). A time outside years 1970-9999 is formatted whole, as its text has another shape.
 */
export function isoMillis(ms: number): string {
  if (!Number.isSafeInteger(ms) || ms < 0) return new Date(ms).toISOString();
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    const iso = new Date(ms).toISOString();
    if (iso.length !== 24) return iso;
    isoSecond = second;
    isoPrefix = iso.slice(0, 20);
  }
  return isoPrefix + String(ms - second * 1000).padStart(3, "0") + "Z";
}

/** Naive ISO 8601 in UTC without a zone, as FastAPI renders a naive datetime (`2024-01-01T12:00:00`). */
export function isoNaive(iso: string): string {
  return iso.slice(0, 19);
}

/** A delay as a timer takes it: past 2^31 - 1 ms a timer fires at once, so longer ones are cut. */
export function timerDelay(ms: number): number {
  return Math.min(ms, 2 ** 31 - 1);
}

/**
 * Asks `ready` again and again, with pauses growing from 1 ms to 50 ms, until it holds (true),
 * `gone` does, or `timeoutMs` has passed (false): for what the runtime tells no event of (a
 * socket's unsent bytes, another process's lock). What `ready` throws rejects the wait.
 */
export async function pollUntil(
  ready: () => boolean,
  options: { timeoutMs: number; gone?: () => boolean },
): Promise<boolean> {
  const deadline = performance.now() + options.timeoutMs;
  for (let pause = 1;; pause = Math.min(2 * pause, 50)) {
    if (options.gone?.()) return false;
    if (ready()) return true;
    const left = deadline - performance.now();
    if (left <= 0) return false;
    await new Promise((resolve) => setTimeout(resolve, Math.min(pause, left)));
  }
}
