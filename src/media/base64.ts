/** Strict base64 decoding of attachments with the size checked before any decoding. */

import { ChatError } from "../core/errors.ts";

/** Padding characters at the end of a base64 text, trailing whitespace skipped. */
function padding(data: string): number {
  let end = data.length;
  while (end > 0 && /\s/.test(data[end - 1])) end--;
  if (end > 1 && data[end - 1] === "=" && data[end - 2] === "=") return 2;
  return end > 0 && data[end - 1] === "=" ? 1 : 0;
}

/**
 * Decoded size of a base64 text without decoding it, or an upper bound of it: whitespace, which
 * is legal inside base64, is only counted (a pass over megabytes) when `limit` says the exact
 * size could matter, that is when the bound without it exceeds the limit.
 */
export function decodedLength(data: string, limit = 0): number {
  const pad = padding(data);
  const bound = Math.floor((data.length - pad) * 3 / 4);
  if (bound <= limit || !/\s/.test(data)) return bound;
  return Math.floor((data.replace(/\s+/g, "").length - pad) * 3 / 4);
}

/** Human-readable size, for error messages: in MiB, or in KiB below a tenth of one. */
function mib(bytes: number): string {
  const value = bytes / (1024 * 1024);
  if (value < 0.1) return `${Math.round(bytes / 1024)} KiB`;
  return Number.isInteger(value) ? `${value} MiB` : `${value.toFixed(1)} MiB`;
}

/** The base64 text of an attachment, its `data:...;base64,` prefix removed, size checked. */
function attachmentText(data: string, maxBytes: number): string {
  let text = data;
  if (text.startsWith("data:")) {
    const comma = text.indexOf(",");
    if (comma < 0 || !/;base64$/i.test(text.slice(0, comma))) {
      throw new ChatError("bad_base64", "File is not valid base64");
    }
    text = text.slice(comma + 1);
  }
  const size = decodedLength(text, maxBytes);
  if (size > maxBytes) throw fileTooLarge(size, maxBytes);
  return text;
}

/** The refusal of a file of `size` bytes over `maxBytes`, however it came (base64 or binary). */
export function fileTooLarge(size: number, maxBytes: number): ChatError {
  return new ChatError(
    "file_too_large",
    `File is too large: ${size} bytes, the limit is ${maxBytes} bytes (${mib(maxBytes)})`,
  );
}

/**
 * Decodes base64 (a `data:...;base64,` prefix is tolerated) into bytes, refusing with a
 * ChatError a text that decodes to more than `maxBytes` before decoding, and any character or
 * length that is not valid base64 rather than decoding garbage.
 */
export function decodeAttachment(data: string, maxBytes: number): Uint8Array {
  const text = attachmentText(data, maxBytes);
  try {
    return Uint8Array.fromBase64(text, { lastChunkHandling: "strict" });
  } catch {
    throw new ChatError("bad_base64", "File is not valid base64");
  }
}

/** Bytes decoded per step by {@link decodeAttachmentChunks}. */
export const DECODE_CHUNK_BYTES = 1024 * 1024;

/**
 * The same checks as {@link decodeAttachment}, the size one at once, but the bytes come out a
 * chunk at a time into one reused buffer (each chunk is valid until the next is asked for), so
 * a 10 MiB file never sits in memory whole next to the frame that carried it. A character that
 * is not base64 throws `bad_base64` when its chunk is reached.
 */
export function decodeAttachmentChunks(
  data: string,
  maxBytes: number,
  chunkBytes = DECODE_CHUNK_BYTES,
): Iterable<Uint8Array> {
  const text = attachmentText(data, maxBytes);
  return {
    *[Symbol.iterator]() {
      const buffer = new Uint8Array(Math.max(3, chunkBytes));
      let pos = 0;
      while (pos < text.length) {
        let step: { read: number; written: number };
        try {
          // A slice of a flat string shares its characters: nothing is copied.
          step = buffer.setFromBase64(pos === 0 ? text : text.slice(pos), {
            lastChunkHandling: "strict",
          });
        } catch {
          throw new ChatError("bad_base64", "File is not valid base64");
        }
        // No progress means input the decoder would not take: never end a file silently.
        if (step.read === 0) throw new ChatError("bad_base64", "File is not valid base64");
        pos += step.read;
        if (step.written > 0) yield buffer.subarray(0, step.written);
      }
    },
  };
}
