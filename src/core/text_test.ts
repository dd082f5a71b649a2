import { strictEqual } from "node:assert/strict";
import { utf8Length } from "./text.ts";

Deno.test("utf8Length matches TextEncoder", () => {
  const encoder = new TextEncoder();
  for (
    const text of [
      "",
      "ascii",
      "é",
      "€uro",
      "😀 emoji",
      "\ud800 lone high",
      "lone low \udc00",
      "末尾\ud83d",
      "\ud800\ud800",
      "\udc00\ud800",
      "\ud83d\ude00x\ud83d",
      "\u007f\u0080\u07ff\u0800\uffff",
      "中".repeat(1000),
      "a".repeat(70_000) + "é",
      "😀" + "a".repeat(70_000),
    ]
  ) {
    strictEqual(
      utf8Length(text),
      encoder.encode(text).byteLength,
      JSON.stringify(text.slice(0, 20)),
    );
  }
});

Deno.test("utf8Length matches TextEncoder on random text", () => {
  const encoder = new TextEncoder();
  // Mostly ASCII with any UTF-16 unit mixed in: lone and paired surrogates in every position.
  for (let n = 0; n < 2_000; n++) {
    let text = "";
    const length = Math.floor(Math.random() * 24);
    for (let i = 0; i < length; i++) {
      text += String.fromCharCode(
        Math.random() < 0.5
          ? Math.floor(Math.random() * 0x80)
          : Math.floor(Math.random() * 0x10000),
      );
    }
    strictEqual(utf8Length(text), encoder.encode(text).byteLength, JSON.stringify(text));
  }
});
