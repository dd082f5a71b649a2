/** Time formats the wire protocols expect. */

/** ISO 8601 UTC with seconds and a `Z`, as Django REST framework renders it (`2025-10-22T17:32:10Z`). */
export function isoSeconds(iso: string): string {
  return iso.slice(0, 19) + "Z";
}

/** Naive ISO 8601 in UTC without a zone, as FastAPI renders a naive datetime (`2024-01-01T12:00:00`). */
export function isoNaive(iso: string): string {
  return iso.slice(0, 19);
}

/** A delay as a timer takes it: past 2^31 - 1 ms a timer fires at once, so longer ones are cut. */
export function timerDelay(ms: number): number {
  return Math.min(ms, 2 ** 31 - 1);
}
