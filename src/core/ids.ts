/** Identifier generation. */

let counter = crypto.getRandomValues(new Uint32Array(1))[0] & 0xffffff;
/** 28 random bits a process puts in every id it makes (an ObjectId's "machine" part). */
const machine = (crypto.getRandomValues(new Uint32Array(1))[0] & 0xfffffff)
  .toString(16).padStart(7, "0");

/**
 * A 24-hex-digit id ordered by creation time, shaped like a MongoDB ObjectId: the second (8
 * digits), then its millisecond (3 digits, 0 to 999) where an ObjectId has random bytes, so that
 * a message's id names the exact time it was stamped with (see `msOfId`), then 7 random digits
 * and a counter.
 */
export function objectId(now = Date.now()): string {
  counter = (counter + 1) & 0xffffff;
  const seconds = Math.floor(now / 1000).toString(16).padStart(8, "0");
  const ms = (((now % 1000) + 1000) % 1000).toString(16).padStart(3, "0");
  return seconds + ms + machine + counter.toString(16).padStart(6, "0");
}

/**
 * The time in ms an id made by {@link objectId} names, or undefined for one that names no
 * millisecond (made before ids carried it, or not ours).
 */
export function msOfId(id: string): number | undefined {
  if (!/^[0-9a-f]{24}$/.test(id)) return undefined;
  const ms = parseInt(id.slice(8, 11), 16);
  return ms < 1000 ? parseInt(id.slice(0, 8), 16) * 1000 + ms : undefined;
}
