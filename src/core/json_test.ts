/** parseJson answers what JSON.parse answers, long strings included (one documented difference). */

import { assertEquals, assertThrows } from "../../tests/assert.ts";
import { parseJson } from "./json.ts";

const long = (n: number, c = "A") => c.repeat(n);

Deno.test("parseJson() equals JSON.parse on large frames, lifted strings or not", () => {
  const file = long(300_000, "QUJD");
  const texts = [
    JSON.stringify({ body: "hi", file, filename: "a.bin" }),
    JSON.stringify({ type: "send", files: [{ name: "a", data: file }, { name: "b", data: file }] }),
    JSON.stringify(["message", { body: 'quote " and \\ backslash', file }]),
    // Escaped quotes and backslashes just before and inside the long values.
    JSON.stringify({ a: 'x\\"', b: "\\", file, c: `${long(70_000)}"${long(10)}` }),
    JSON.stringify({ nested: { deeper: [[{ file }]] }, n: 1.5, t: true, z: null }),
    JSON.stringify(file),
    JSON.stringify({ small: long(1000) }) + " ".repeat(300_000),
    // A string that looks like a key inside another string.
    JSON.stringify({ body: '"file":"', file, tail: "\u2063" }),
    // Long keys stay keys (two equal ones must still collapse into one), with spaces before `:`.
    `{"${file}" : 1, "${file}":2, "v": "${file}"}`,
  ];
  const lifted: number[] = [];
  for (const text of texts) {
    const stats = { lifted: -1 };
    assertEquals(parseJson(text, stats), JSON.parse(text));
    lifted.push(stats.lifted);
  }
  // Every long escape-free value is lifted; the one with a quote inside is parsed.
  assertEquals(lifted, [1, 2, 1, 1, 1, 1, 0, 1, 1]);
});

Deno.test("parseJson() refuses what JSON.parse refuses", () => {
  const file = long(300_000);
  const bad = [
    `{"file":"${file}"`, // unterminated object
    `{"file":"${file}`, // unterminated string
    `{"file":"${file}\n"}`, // a raw newline inside a string
    `{"file":"${long(100)}\r${file}\t"}`, // a raw carriage return and tab inside a long one
    `{"file":"${file}\f"}`, // a raw form feed
    `{"file":"${file}", x}`,
    `{"a": x"${file}"}`,
    `{"file":"${file}\\q"}`, // a bad escape
  ];
  for (const text of bad) {
    assertThrows(() => JSON.parse(text), SyntaxError);
    assertThrows(() => parseJson(text), SyntaxError);
  }
});

Deno.test("parseJson() hands a long value with a raw control other than whitespace to its field's check", () => {
  const file = long(300_000);
  const text = `{"file":"${file}\u0001"}`;
  assertThrows(() => JSON.parse(text), SyntaxError);
  assertEquals(parseJson(text), { file: `${file}\u0001` });
});

Deno.test("parseJson() refuses a long text whose structure passes its bounds, before JSON.parse builds it", () => {
  const file = long(300_000);
  const nested = (levels: number) => "[".repeat(levels) + "]".repeat(levels);
  const refused = [
    `{"file":"${file}","x":${nested(65)}}`,
    `{"file":"${file}","x":[${Array(10_001).fill("{}").join(",")}]}`,
    `{"file":"${file}","x":[${Array(100_001).fill("0").join(",")}]}`,
    // No long string to lift: the whole text is the structure.
    nested(3_000_000),
  ];
  for (const text of refused) {
    assertEquals(JSON.parse(text) !== undefined, true);
    assertThrows(() => parseJson(text), SyntaxError);
  }
  // Brackets and commas inside strings are text, and the bounds themselves are allowed.
  const allowed = [
    `{"file":"${file}","x":${nested(63)}}`,
    `{"file":"${file}","body":"${"[{,".repeat(40_000)}","y":"${'[\\"'.repeat(30_000)}"}`,
    `{"file":"${file}","x":[${Array(9_998).fill("{}").join(",")}]}`,
  ];
  for (const text of allowed) assertEquals(parseJson(text), JSON.parse(text));
  // Short texts cost little whatever their shape, and are parsed as they are.
  assertEquals(parseJson(nested(1000)), JSON.parse(nested(1000)));
});
