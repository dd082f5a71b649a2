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
