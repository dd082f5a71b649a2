/**
 * The names of a multipart/form-data body's parts, read from their headers as the body streams
 * by. Deno's FormData parser splits a `Content-Disposition` at every `;` and `=`, quoted or not:
 * a file a browser sends as `filename="Budget; v2.pdf"` comes out named `"Budget`. The parser
 * still reads the parts' contents; these are the names to give them.
 */

/** One part's names, as its `Content-Disposition` gives them. */
export interface PartNames {
  name?: string;
  filename?: string;
}

/** Longest header block of one part kept; past it the parser's names stay. */
const MAX_HEADER_BYTES = 16 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CRLFCRLF = encoder.encode("\r\n\r\n");

/** Horspool's shift table for `needle`. */
function shifts(needle: Uint8Array): Uint32Array {
  const table = new Uint32Array(256).fill(needle.length);
  for (let k = 0; k < needle.length - 1; k++) table[needle[k]] = needle.length - 1 - k;
  return table;
}

/** Where `needle` first starts in `hay` at or after `from`, or -1 (Horspool's search). */
function find(hay: Uint8Array, needle: Uint8Array, table: Uint32Array, from: number): number {
  const last = needle.length - 1;
  for (let i = from; i + last < hay.length; i += table[hay[i + last]]) {
    if (hay[i + last] !== needle[last]) continue;
    let j = last - 1;
    while (j >= 0 && hay[i + j] === needle[j]) j--;
    if (j < 0) return i;
  }
  return -1;
}

/**
 * Where `delimiter` (`\r\n--` and the boundary) first starts in `hay` at or after `from`, or -1.
 * Linear in `hay` whatever its bytes, unlike a skip search (a boundary of `a`s over content of
 * `a`s took seconds a chunk): a boundary holds no CR, so the bytes compared after one `\r\n--`
 * never reach past the next CR, where the next candidate starts.
 */
function findDelimiter(hay: Uint8Array, delimiter: Uint8Array, from: number): number {
  const size = delimiter.length;
  for (let i = from; i + size <= hay.length; i++) {
    if (hay[i] !== 13 || hay[i + 1] !== 10 || hay[i + 2] !== 45 || hay[i + 3] !== 45) continue;
    let j = 4;
    while (j < size && hay[i + j] === delimiter[j]) j++;
    if (j === size) return i;
  }
  return -1;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Reads the parts' headers of a body split by `boundary`, chunk by chunk. */
export class MultipartNames {
  /** The parts whose headers were read, in order. */
  readonly parts: PartNames[] = [];
  #delimiter: Uint8Array;
  #crlfTable = shifts(CRLFCRLF);
  /** Bytes of the last chunks still to be looked at with the next one. */
  #pending: Uint8Array;
  #inHeaders = false;
  #ended = false;
  /** A part's headers were too long to keep: its names are not known. */
  #lost = false;

  /** A scanner for the body of a form whose `Content-Type` names `boundary` (no CR or LF in it). */
  constructor(boundary: string) {
    this.#delimiter = encoder.encode(`\r\n--${boundary}`);
    // The first delimiter opens the body, with no line break before it.
    this.#pending = encoder.encode("\r\n");
  }

  /** True once the closing delimiter came: a body without it was cut off. */
  get ended(): boolean {
    return this.#ended;
  }

  /** True when every part's headers were read, up to the closing delimiter. */
  get complete(): boolean {
    return this.#ended && !this.#lost;
  }

  /** Looks at the next bytes of the body. */
  push(chunk: Uint8Array): void {
    if (this.#ended) return;
    const pending = this.#pending;
    const size = this.#delimiter.length;
    if (pending.length === 0) return this.#scan(chunk, 0);
    // Headers cut by a chunk's end, or a chunk too short to look past: joined whole (rare, small).
    if (this.#inHeaders || chunk.length < 4 * size) return this.#scan(concat(pending, chunk), 0);
    // Otherwise the chunk is joined to them only when a delimiter begun in the bytes kept ends in
    // it (once a part at most): a large chunk is not copied for nothing.
    const head = concat(pending, chunk.subarray(0, size + 2));
    const at = findDelimiter(head, this.#delimiter, 0);
    this.#scan(at >= 0 && at < pending.length ? concat(pending, chunk) : chunk, 0);
  }

  #end(): void {
    this.#ended = true;
    this.#pending = new Uint8Array(0);
  }

  /** Reads `data` from `pos`, keeping what the next chunk may complete. */
  #scan(data: Uint8Array, pos: number): void {
    this.#pending = new Uint8Array(0);
    for (;;) {
      if (this.#inHeaders) {
        const end = find(data, CRLFCRLF, this.#crlfTable, pos);
        if (end >= 0) {
          this.parts.push(partNames(decoder.decode(data.subarray(pos, end))));
          this.#inHeaders = false;
          pos = end + CRLFCRLF.length;
        } else if (data.length - pos > MAX_HEADER_BYTES) {
          // Not kept; the delimiters after them still are looked for.
          this.#lost = true;
          this.#inHeaders = false;
          pos = Math.max(pos, data.length - this.#delimiter.length + 1);
        } else {
          this.#pending = data.slice(pos);
          return;
        }
      }
      const at = findDelimiter(data, this.#delimiter, pos);
      const after = at + this.#delimiter.length;
      if (at < 0 || data.length < after + 2) {
        // Kept: a delimiter may begin in these bytes and end in the next chunk.
        const keep = at < 0 ? Math.max(pos, data.length - this.#delimiter.length + 1) : at;
        this.#pending = data.slice(keep);
        return;
      }
      if (data[after] === 0x2d && data[after + 1] === 0x2d) return this.#end();
      // The rest of the delimiter's line (padding, CRLF), then the headers.
      this.#inHeaders = true;
      pos = after;
    }
  }
}

/** The names in a part's header block (its first line is the delimiter line's end). */
function partNames(block: string): PartNames {
  for (const line of block.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon < 0 || line.slice(0, colon).trim().toLowerCase() !== "content-disposition") continue;
    return dispositionNames(line.slice(colon + 1));
  }
  return {};
}

/**
 * `name` and `filename` of a `Content-Disposition` value: quoted strings read whole (`;` and
 * `=` inside them included, `\"` escapes too), the `%22`, `%0D`, `%0A` of the HTML standard's
 * form encoding undone, and `filename*` (RFC 5987) preferred when it can be read.
 */
export function dispositionNames(value: string): PartNames {
  const params = new Map<string, string>();
  let i = value.indexOf(";");
  while (i >= 0 && i < value.length) {
    i++;
    const eq = value.indexOf("=", i);
    if (eq < 0) break;
    const key = value.slice(i, eq).trim().toLowerCase();
    let j = eq + 1;
    while (value[j] === " " || value[j] === "\t") j++;
    let raw = "";
    if (value[j] === '"') {
      j++;
      while (j < value.length && value[j] !== '"') {
        if (value[j] === "\\" && (value[j + 1] === '"' || value[j + 1] === "\\")) j++;
        raw += value[j++];
      }
      i = value.indexOf(";", j);
    } else {
      const semi = value.indexOf(";", j);
      raw = value.slice(j, semi < 0 ? undefined : semi).trim();
      i = semi;
    }
    if (!params.has(key)) params.set(key, raw);
  }
  const unescape = (text: string) =>
    text.replace(/%(22|0d|0a)/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  const out: PartNames = {};
  const name = params.get("name");
  if (name !== undefined) out.name = unescape(name);
  const filename = params.get("filename");
  if (filename !== undefined) out.filename = unescape(filename);
  const extended = /^utf-8'[^']*'(.*)$/i.exec(params.get("filename*") ?? "");
  if (extended) {
    try {
      out.filename = decodeURIComponent(extended[1]);
    } catch {
      // Not percent-encoded UTF-8: the plain filename stands.
    }
  }
  return out;
}
