/** Reading fields of client JSON frames, with errors clients can act on. */

import { ChatError } from "../core/errors.ts";
import { INEXACT_NUMBER, isExactNumber, JsonTooComplexError, parseJson } from "../core/json.ts";

/**
 * Parses a frame that must be a JSON object; `Invalid JSON` or `shapeMessage` otherwise. With
 * `explain`, a long frame refused for its structure says so (the other protocols' documents fix
 * the text of this error).
 */
export function parseObject(
  text: string,
  shapeMessage: string,
  explain = false,
): Record<string, unknown> {
  let frame: unknown;
  try {
    frame = parseJson(text);
  } catch (err) {
    throw new ChatError(
      "invalid_json",
      explain && err instanceof JsonTooComplexError ? err.message : "Invalid JSON",
    );
  }
  if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
    throw new ChatError("invalid_frame", shapeMessage);
  }
  return frame as Record<string, unknown>;
}

/**
 * A client's text quoted in an error, cut to `max` characters: echoed whole, a megabyte-long
 * field would make the server send a megabyte back.
 */
export function clip(text: string, max = 64): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

/** An optional string field; another type is refused with a message naming the field. */
export function optionalString(frame: Record<string, unknown>, field: string): string | undefined {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") {
    throw new ChatError("invalid_frame", `Field "${field}" must be a string`);
  }
  return value;
}

/** An optional client id: a string or an exact number (see isExactNumber), at most 128 characters. */
export function optionalClientId(
  frame: Record<string, unknown>,
  ...fields: string[]
): string | undefined {
  for (const field of fields) {
    const value = frame[field];
    if (value === undefined || value === null) continue;
    if ((typeof value !== "string" && typeof value !== "number") || String(value).length > 128) {
      throw new ChatError(
        "invalid_frame",
        `Field "${field}" must be a string of at most 128 characters`,
      );
    }
    if (typeof value === "number" && !isExactNumber(value)) {
      throw new ChatError("invalid_frame", `Field "${field}" ${INEXACT_NUMBER}`);
    }
    return String(value);
  }
  return undefined;
}

/**
 * The record of a frame whose `type` is `typing` (read without errors, for the rate limit's
 * look at a frame before it is handled), else undefined.
 */
export function typingRecord(text: string): Record<string, unknown> | undefined {
  if (!text.includes('"typing"')) return undefined;
  try {
    const record = JSON.parse(text);
    return record?.type === "typing" ? record : undefined;
  } catch {
    return undefined;
  }
}
