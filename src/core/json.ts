/**
 * `JSON.parse` that leaves long string values in the text they came in. A 10 MiB file arrives as
 * a 14 MB base64 string inside a JSON frame; `JSON.parse` would copy it into a second 14 MB
 * string, while a slice of the frame costs nothing (V8 shares the characters).
 *
 * One difference: a long value holding a raw control character other than whitespace (which
 * JSON.parse refuses) comes back with it. The only fields that long are base64 payloads, whose
 * strict decoding refuses it; every other string field has a length limit far below.
 */

/** Texts shorter than this are parsed as they are. */
const MIN_TEXT = 256 * 1024;
/**
 * Bounds on the structure of a long text, outside its strings. A frame that long is a file
 * (one long string) in a small record; 12 MB of nested or countless arrays and objects made
 * `JSON.parse` spend seconds and hundreds of MB, before any check of who sent it.
 */
const MAX_DEPTH = 64;
const MAX_CONTAINERS = 10_000;
/** Commas outside strings: values in arrays and members of objects, all but one of each. */
const MAX_COMMAS = 100_000;
/** String literals at least this long are lifted out before parsing. */
const MIN_STRING = 64 * 1024;
/** Stands in for a lifted string; random per process, so no client can forge one. */
const PLACEHOLDER = `\u2063lifted:${crypto.randomUUID()}:`;
/**
 * Characters that keep a literal from being lifted: JSON's escape, and the whitespace controls
 * JSON forbids raw inside a string, which a base64 decoder would skip where JSON.parse refuses.
 * Each is found with `includes` (a memchr): a regular expression over the character range took
 * 14 ms on a 10 MiB file's text, and 55 ms in the benchmark's busy server (probably V8 dropping
 * the compiled code of an expression used this rarely, and interpreting it).
 */
const NOT_LIFTED = ["\\", "\n", "\r", "\t", "\f"];

/** True when the quote at `at` is escaped (preceded by an odd run of backslashes). */
function escaped(text: string, at: number): boolean {
  let n = 0;
  while (at - 1 - n >= 0 && text.charCodeAt(at - 1 - n) === 92) n++;
  return n % 2 === 1;
}

/** True when `text[from, to)` needs JSON's own string parsing (escapes or raw whitespace). */
function needsParsing(text: string, from: number, to: number): boolean {
  // The slice shares the text's characters, and bounds the scan to this one literal.
  const literal = text.slice(from, to);
  return NOT_LIFTED.some((c) => literal.includes(c));
}

/** True when the literal closing at `close` is an object key (a colon follows). */
function isKey(text: string, close: number): boolean {
  let i = close + 1;
  while (i < text.length && " \t\n\r".includes(text[i])) i++;
  return text[i] === ":";
}

/** Puts the lifted strings back where their placeholders are, without recursion. */
function restore(root: unknown, lifted: string[]): unknown {
  const put = (v: unknown) =>
    typeof v === "string" && v.startsWith(PLACEHOLDER)
      ? lifted[Number(v.slice(PLACEHOLDER.length))]
      : v;
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const node = stack.pop();
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) {
        node[i] = put(node[i]);
        if (typeof node[i] === "object" && node[i] !== null) stack.push(node[i]);
      }
    } else if (typeof node === "object" && node !== null) {
      const record = node as Record<string, unknown>;
      for (const key of Object.keys(record)) {
        record[key] = put(record[key]);
        if (typeof record[key] === "object" && record[key] !== null) stack.push(record[key]);
      }
    }
  }
  return put(root);
}

/**
 * Parses like `JSON.parse` (and throws its SyntaxError for text that is not JSON, but for the
 * one difference in the module comment). String values (not keys) of 64 Ki characters or more,
 * free of escapes and raw whitespace controls, come back as slices of `text`; `stats`, when
 * given, learns how many. A text of 256 Ki characters or more whose structure is deeper, or has
 * more arrays, objects or commas, than any frame needs throws {@link JsonTooComplexError}.
 */
export function parseJson(text: string, stats?: { lifted: number }): unknown {
  if (text.length < MIN_TEXT) return JSON.parse(text);
  // Outside strings JSON has no quotes, so quotes pair up as string delimiters: an opening one,
  // then the next unescaped one closes it. A lifted literal has no escapes and no raw control
  // characters, so it was valid as it stood, and the skeleton is JSON exactly when the text is.
  const lifted: string[] = [];
  const parts: string[] = [];
  let copied = 0;
  let open = text.indexOf('"');
  while (open >= 0) {
    let close = text.indexOf('"', open + 1);
    while (close >= 0 && escaped(text, close)) close = text.indexOf('"', close + 1);
    if (close < 0) break;
    if (
      close - open - 1 >= MIN_STRING && !isKey(text, close) &&
      !needsParsing(text, open + 1, close)
    ) {
      parts.push(text.slice(copied, open), `"${PLACEHOLDER}${lifted.length}"`);
      lifted.push(text.slice(open + 1, close));
      copied = close + 1;
    }
    open = text.indexOf('"', close + 1);
  }
  if (stats) stats.lifted = lifted.length;
  let skeleton = text;
  if (lifted.length > 0) {
    parts.push(text.slice(copied));
    skeleton = parts.join("");
  }
  refuseComplex(skeleton);
  if (lifted.length === 0) return JSON.parse(text);
  return restore(JSON.parse(skeleton), lifted);
}

/** A long text refused for its structure (see {@link parseJson}); its message says the bounds. */
export class JsonTooComplexError extends SyntaxError {}

/** Throws when `text`, outside its strings, passes a bound on its structure. */
function refuseComplex(text: string): void {
  let depth = 0;
  let containers = 0;
  let commas = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      // A string: to its closing quote, over escapes.
      for (i++; i < text.length && text.charCodeAt(i) !== 34; i++) {
        if (text.charCodeAt(i) === 92) i++;
      }
    } else if (c === 91 || c === 123) {
      if (++depth > MAX_DEPTH || ++containers > MAX_CONTAINERS) break;
    } else if (c === 93 || c === 125) {
      depth--;
    } else if (c === 44 && ++commas > MAX_COMMAS) {
      break;
    }
  }
  if (depth > MAX_DEPTH || containers > MAX_CONTAINERS || commas > MAX_COMMAS) {
    throw new JsonTooComplexError(
      `JSON too complex: at most ${MAX_DEPTH} levels, ${MAX_CONTAINERS} arrays and objects and ` +
        `${MAX_COMMAS} commas (outside strings) in a text this long`,
    );
  }
}

/**
 * True for a number every JSON reader takes as this very value: finite, and no larger than
 * JavaScript's exact integers. Python, Go and Java read a larger integer exactly where
 * JavaScript rounds it, so an id of that size would be told apart from (or echoed as) another.
 */
export function isExactNumber(n: number): boolean {
  return Number.isFinite(n) && Math.abs(n) <= Number.MAX_SAFE_INTEGER;
}

/** The message for a number refused by {@link isExactNumber}. */
export const INEXACT_NUMBER = "is a number too large to be read exactly: send it as a string";
