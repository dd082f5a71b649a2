/** Identifier generation. */

let counter = crypto.getRandomValues(new Uint32Array(1))[0] & 0xffffff;
/** 12 random bits a process puts in every id it makes (an ObjectId's "machine" part). */
const machine = (crypto.getRandomValues(new Uint16Array(1))[0] & 0xfff)
  .toString(16).padStart(3, "0");
/**
 * Says that the 3 digits before it are a millisecond: ids made before they carried one have
 * random digits there, which read as a millisecond a quarter of the time.
 */
const MS_MARK = "c0de";

/**
 * A 24-hex-digit id ordered by creation time, shaped like a MongoDB ObjectId: the second (8
 * digits), then where an ObjectId has random bytes its millisecond (3 digits, 0 to 999) and a
 * mark saying so, so that a message's id names the exact time it was stamped with (see
 * {@link msOfId}), then 3 random digits and a counter.
 */
export function objectId(now = Date.now()): string {
  counter = (counter + 1) & 0xffffff;
  const seconds = Math.floor(now / 1000).toString(16).padStart(8, "0");
  const ms = (((now % 1000) + 1000) % 1000).toString(16).padStart(3, "0");
  return seconds + ms + MS_MARK + machine + counter.toString(16).padStart(6, "0");
}

/** The start, in ms, of the second an id shaped like an ObjectId begins with; undefined for others. */
export function secondOfId(id: string): number | undefined {
  return /^[0-9a-f]{24}$/.test(id) ? parseInt(id.slice(0, 8), 16) * 1000 : undefined;
}

/**
 * The time in ms an id made by {@link objectId} names, or undefined for one that names none
 * (made before ids carried it, or not ours).
 */
export function msOfId(id: string): number | undefined {
  const second = secondOfId(id);
  if (second === undefined || id.slice(11, 15) !== MS_MARK) return undefined;
  const ms = parseInt(id.slice(8, 11), 16);
  return ms < 1000 ? second + ms : undefined;
}
