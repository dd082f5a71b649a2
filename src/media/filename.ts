/** Turning a client's filename into a safe basename. */

const MAX_NAME_BYTES = 255;
const encoder = new TextEncoder();

/** Splits `name.ext` into stem and extension (with its dot); dotfiles have no extension. */
export function splitExtension(name: string): [string, string] {
  const dot = name.lastIndexOf(".");
  if (dot <= 0 || dot === name.length - 1) return [name, ""];
  return [name.slice(0, dot), name.slice(dot)];
}

/** Cuts a string to at most `max` UTF-8 bytes without splitting a character. */
function truncateBytes(text: string, max: number): string {
  if (encoder.encode(text).length <= max) return text;
  let out = "";
  let bytes = 0;
  for (const ch of text) {
    const size = encoder.encode(ch).length;
    if (bytes + size > max) break;
    out += ch;
    bytes += size;
  }
  return out;
}

/**
 * Control characters, bidirectional controls (which can make `x\u202Egpj.html` read as
 * `xlmth.jpg`) and invisible spaces (zero-width space, word joiner, BOM).
 */
const UNSHOWABLE =
  // deno-lint-ignore no-control-regex
  /[\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]/g;

/**
 * The name a file is shown by (a message's `filename`): the client's basename as it was, but for
 * control and bidirectional characters; its name on disk is {@link safeFilename}'s.
 */
export function displayFilename(input: string): string {
  const shown = shownPart(input);
  // A directory's names, not a file's: shown as they are stored.
  return shown === "." || shown === ".." ? safeFilename(shown) : shown || "file";
}

/** What of a client's filename can be shown: its basename without unshowable characters. */
export function shownPart(input: string): string {
  return (input.split(/[\\/]/).pop() ?? "").replace(UNSHOWABLE, "").trim();
}

/**
 * Reduces a client filename to a basename that is safe on disk and in a URL path segment: no
 * directory part (either slash), no control characters, no bidirectional controls (which can
 * make `x\u202Egpj.html` read as `xlmth.jpg`), not `.` or `..`, at most 255 UTF-8 bytes with the
 * extension kept. Returns `file` when nothing usable is left.
 */
export function safeFilename(input: string): string {
  const base = input.split(/[\\/]/).pop() ?? "";
  let name = base
    .replace(UNSHOWABLE, "")
    .replace(/[<>:"|?*]/g, "_")
    .trim()
    .replace(/^\.+/, "")
    .replace(/[. ]+$/, "");
  if (name === "") name = "file";
  const [stem, ext] = splitExtension(name);
  const safeExt = truncateBytes(ext, 32);
  return truncateBytes(stem, MAX_NAME_BYTES - encoder.encode(safeExt).length) + safeExt ||
    "file";
}

/**
 * An alternative to a name taken already, by number or tag: `a.png` → `a_1.png`, within 255 bytes.
 */
export function numberedName(name: string, n: number | string): string {
  const [stem, ext] = splitExtension(name);
  const suffix = `_${n}${ext}`;
  return truncateBytes(stem, MAX_NAME_BYTES - encoder.encode(suffix).length) + suffix;
}

/** Byte length of a name in UTF-8. */
export function nameBytes(name: string): number {
  return encoder.encode(name).length;
}
