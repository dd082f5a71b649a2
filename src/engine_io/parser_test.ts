import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  decodePacket,
  decodePayload,
  encodeFrame,
  encodePayload,
  encodeText,
  type Packet,
  ParseError,
  SEPARATOR,
  utf8Length,
} from "./parser.ts";

Deno.test("encodes every packet type with its digit", () => {
  const types = ["open", "close", "ping", "pong", "message", "upgrade", "noop"] as const;
  types.forEach((type, digit) => {
    strictEqual(encodeText({ type }), String(digit));
    strictEqual(encodeFrame({ type }), String(digit));
  });
  strictEqual(encodeText({ type: "message", data: "hello" }), "4hello");
  strictEqual(encodeFrame({ type: "ping", data: "probe" }), "2probe");
});

Deno.test("binary messages are raw in frames and b+base64 in text", () => {
  const packet: Packet = { type: "message", data: new Uint8Array([1, 2, 3, 4]) };
  deepStrictEqual(encodeFrame(packet), new Uint8Array([1, 2, 3, 4]));
  strictEqual(encodeText(packet), "bAQIDBA==");
  // The cached form is returned for the same packet object.
  strictEqual(encodeText(packet), "bAQIDBA==");
});

Deno.test("decodes text, base64 and binary packets", () => {
  deepStrictEqual(decodePacket("4hello"), { type: "message", data: "hello" });
  deepStrictEqual(decodePacket("2"), { type: "ping" });
  deepStrictEqual(decodePacket("2probe"), { type: "ping", data: "probe" });
  deepStrictEqual(decodePacket("bAQIDBA=="), {
    type: "message",
    data: new Uint8Array([1, 2, 3, 4]),
  });
  deepStrictEqual(decodePacket(new Uint8Array([9])), {
    type: "message",
    data: new Uint8Array([9]),
  });
});

Deno.test("rejects malformed packets", () => {
  for (const bad of ["", "abc", "9", "7x", "b!!!", " 4"]) {
    throws(() => decodePacket(bad), ParseError, JSON.stringify(bad));
  }
});

Deno.test("payloads join and split on the record separator", () => {
  const packets: Packet[] = [
    { type: "message", data: "hello" },
    { type: "ping" },
    { type: "message", data: new Uint8Array([1, 2, 3, 4]) },
  ];
  const payload = encodePayload(packets);
  strictEqual(payload, `4hello${SEPARATOR}2${SEPARATOR}bAQIDBA==`);
  deepStrictEqual(decodePayload(payload), packets);
  deepStrictEqual(decodePayload("4test1\x1e4test2\x1e4test3").map((p) => p.data), [
    "test1",
    "test2",
    "test3",
  ]);
  throws(() => decodePayload("4ok\x1eabc"), ParseError);
  throws(() => decodePayload(""), ParseError);
});

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
