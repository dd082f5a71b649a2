/** Room keys (`kind:id`) and the patterns that grant access to them. */

/** The kinds of room the dialects use. */
export const ROOM_KINDS = ["ticket", "chat", "service-chat", "support-chat", "room"] as const;

/** One of {@link ROOM_KINDS}. */
export type RoomKind = typeof ROOM_KINDS[number];

/**
 * Room ids, as every protocol, URL and the API take them (`.` and `..` could never be in a URL
 * path).
 */
export const ROOM_ID_PATTERN = /^(?!\.\.?$)[A-Za-z0-9_.@-]{1,128}$/;

/** True when `id` can be part of a room key: 1 to 128 URL-safe characters, not `.` or `..`. */
export function isValidRoomId(id: string): boolean {
  return ROOM_ID_PATTERN.test(id);
}

/** Most rooms one socket may be in (the native protocol's rooms, Socket.IO's tickets). */
export const MAX_ROOMS_PER_SOCKET = 100;

/** Kinds whose ids are integers in the systems we replace (Django and FastAPI primary keys). */
const NUMERIC_KINDS: ReadonlySet<string> = new Set<RoomKind>([
  "chat",
  "service-chat",
  "support-chat",
]);

/**
 * The id a room is known by: an integer id of a numeric kind without its leading zeros (`007`
 * and `7` are one chat, as the servers we replace parse them); any other id as given.
 */
export function canonicalId(kind: string, id: string): string {
  // By text, not by Number: an id past 15 digits would lose its last ones as a float.
  return NUMERIC_KINDS.has(kind) && /^\d+$/.test(id) ? id.replace(/^0+(?=\d)/, "") : id;
}

/** Builds a room key, throwing a RangeError for an id that cannot be one. */
export function roomKey(kind: RoomKind, id: string | number): string {
  const text = String(id);
  if (!isValidRoomId(text)) throw new RangeError(`Invalid room id "${text}"`);
  return `${kind}:${text}`;
}

/** Splits a room key into kind and id, or null when it is not one. */
export function parseRoomKey(key: string): { kind: RoomKind; id: string } | null {
  const at = key.indexOf(":");
  if (at < 0) return null;
  const kind = key.slice(0, at) as RoomKind;
  const id = key.slice(at + 1);
  if (!ROOM_KINDS.includes(kind) || !isValidRoomId(id)) return null;
  return { kind, id };
}

/**
 * True when a grant pattern (`ticket:1`, `ticket:*`, `*`) covers the room key; `*` stands for any
 * run of characters.
 */
export function grantMatches(pattern: string, room: string): boolean {
  if (pattern === room || pattern === "*") return true;
  if (!pattern.includes("*")) return false;
  // Matched with one point to go back to (the last star): time within the product of the two
  // lengths, where the same pattern as a regular expression (`.*` for each star) backtracks in
  // time growing with the room's length to the power of the stars.
  let p = 0;
  let r = 0;
  let star = -1;
  let from = 0;
  while (r < room.length) {
    if (p < pattern.length && pattern[p] === "*") {
      star = p++;
      from = r;
    } else if (p < pattern.length && pattern[p] === room[r]) {
      p++;
      r++;
    } else if (star >= 0) {
      p = star + 1;
      r = ++from;
    } else {
      return false;
    }
  }
  while (pattern[p] === "*") p++;
  return p === pattern.length;
}
