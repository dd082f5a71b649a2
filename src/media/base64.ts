/** Strict base64 decoding of attachments with the size checked before any decoding. */

import { ChatError } from "../core/errors.ts";

/** Decoded size of a base64 text without decoding it (whitespace ignored, padding optional). */
export function decodedLength(data: string): number {
  let length = data.length;
  // Whitespace is legal inside base64; counting it exactly only matters when it is present.
  if (/\s/.test(data)) length = data.replace(/\s+/g, "").length;
  let pad = 0;
  if (length > 0 && data.trimEnd().endsWith("==")) pad = 2;
  else if (length > 0 && data.trimEnd().endsWith("=")) pad = 1;
  return Math.floor((length - pad) * 3 / 4);
}

/** Human-readable size in MiB, for error messages. */
function mib(bytes: number): string {
  const value = bytes / (1024 * 1024);
  return Number.isInteger(value) ? `${value} MiB` : `${value.toFixed(1)} MiB`;
}

/**
 * Decodes base64 (a `data:...;base64,` prefix is tolerated) into bytes, refusing with a
 * ChatError a text that decodes to more than `maxBytes` before decoding, and any character or
 * length that is not valid base64 rather than decoding garbage.
 */
export function decodeAttachment(data: string, maxBytes: number): Uint8Array {
  let text = data;
  if (text.startsWith("data:")) {
    const comma = text.indexOf(",");
    if (comma < 0 || !/;base64$/i.test(text.slice(0, comma))) {
      throw new ChatError("bad_base64", "File is not valid base64");
    }
    text = text.slice(comma + 1);
  }
  const size = decodedLength(text);
  if (size > maxBytes) {
    throw new ChatError(
      "file_too_large",
      `File is too large: ${size} bytes, the limit is ${maxBytes} bytes (${mib(maxBytes)})`,
    );
  }
  try {
    return Uint8Array.fromBase64(text, { lastChunkHandling: "strict" });
  } catch {
    throw new ChatError("bad_base64", "File is not valid base64");
  }
}
