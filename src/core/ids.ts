/** Identifier generation. */

let counter = crypto.getRandomValues(new Uint32Array(1))[0] & 0xffffff;
const machine = Array.from(
  crypto.getRandomValues(new Uint8Array(5)),
  (b) => b.toString(16).padStart(2, "0"),
).join("");

/** A 24-hex-digit id ordered by creation second, shaped like a MongoDB ObjectId. */
export function objectId(now = Date.now()): string {
  counter = (counter + 1) & 0xffffff;
  const seconds = Math.floor(now / 1000).toString(16).padStart(8, "0");
  return seconds + machine + counter.toString(16).padStart(6, "0");
}
