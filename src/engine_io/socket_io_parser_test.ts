import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  Decoder,
  encodePacket,
  hasBinary,
  PacketType,
  type SocketPacket,
  SocketParseError,
} from "./socket_io_parser.ts";

function decodeAll(chunks: (string | Uint8Array)[]): SocketPacket | undefined {
  const decoder = new Decoder();
  let packet: SocketPacket | undefined;
  for (const chunk of chunks) packet = decoder.add(chunk);
  return packet;
}

Deno.test("encodes the examples of the protocol document", () => {
  deepStrictEqual(encodePacket({ type: PacketType.CONNECT, nsp: "/" }), ["0"]);
  deepStrictEqual(
    encodePacket({ type: PacketType.CONNECT, nsp: "/admin", data: { sid: "oSO0" } }),
    ['0/admin,{"sid":"oSO0"}'],
  );
  deepStrictEqual(
    encodePacket({ type: PacketType.CONNECT_ERROR, nsp: "/", data: { message: "Not authorized" } }),
    ['4{"message":"Not authorized"}'],
  );
  deepStrictEqual(encodePacket({ type: PacketType.EVENT, nsp: "/", data: ["foo"] }), ['2["foo"]']);
  deepStrictEqual(encodePacket({ type: PacketType.EVENT, nsp: "/admin", data: ["bar"] }), [
    '2/admin,["bar"]',
  ]);
  deepStrictEqual(encodePacket({ type: PacketType.EVENT, nsp: "/", data: ["foo"], id: 12 }), [
    '212["foo"]',
  ]);
  deepStrictEqual(encodePacket({ type: PacketType.ACK, nsp: "/admin", data: ["bar"], id: 13 }), [
    '3/admin,13["bar"]',
  ]);
  deepStrictEqual(encodePacket({ type: PacketType.DISCONNECT, nsp: "/admin" }), ["1/admin,"]);
});

Deno.test("extracts binary values as attachments", () => {
  deepStrictEqual(
    encodePacket({ type: PacketType.EVENT, nsp: "/", data: ["baz", new Uint8Array([1, 2, 3, 4])] }),
    ['51-["baz",{"_placeholder":true,"num":0}]', new Uint8Array([1, 2, 3, 4])],
  );
  deepStrictEqual(
    encodePacket({
      type: PacketType.EVENT,
      nsp: "/admin",
      data: ["baz", new Uint8Array([1, 2]), { nested: [new Uint8Array([3, 4]).buffer] }],
    }),
    [
      '52-/admin,["baz",{"_placeholder":true,"num":0},{"nested":[{"_placeholder":true,"num":1}]}]',
      new Uint8Array([1, 2]),
      new Uint8Array([3, 4]),
    ],
  );
  deepStrictEqual(
    encodePacket({ type: PacketType.ACK, nsp: "/", id: 15, data: ["bar", new Uint8Array([1])] }),
    ['61-15["bar",{"_placeholder":true,"num":0}]', new Uint8Array([1])],
  );
  // A view over a larger buffer becomes just its own bytes.
  const big = new Uint8Array([0, 1, 2, 3, 4]);
  const [, part] = encodePacket({
    type: PacketType.EVENT,
    nsp: "/",
    data: ["x", new DataView(big.buffer, 1, 2)],
  });
  deepStrictEqual(part, new Uint8Array([1, 2]));
  ok(!hasBinary(["x", new Date(), { a: [1, "b"] }]));
  ok(hasBinary(["x", { a: [new Uint16Array(2)] }]));
});

Deno.test("decodes namespaces, ack ids and payloads", () => {
  deepStrictEqual(decodeAll(["0"]), { type: 0, nsp: "/" });
  deepStrictEqual(decodeAll(['0{"token":"123"}']), { type: 0, nsp: "/", data: { token: "123" } });
  deepStrictEqual(decodeAll(["0/random"]), { type: 0, nsp: "/random" });
  deepStrictEqual(decodeAll(['0/custom,{"token":"abc"}']), {
    type: 0,
    nsp: "/custom",
    data: { token: "abc" },
  });
  deepStrictEqual(decodeAll(["1/custom,"]), { type: 1, nsp: "/custom" });
  deepStrictEqual(decodeAll(['2456["message-with-ack",1,"2",{"3":[false]}]']), {
    type: 2,
    nsp: "/",
    id: 456,
    data: ["message-with-ack", 1, "2", { "3": [false] }],
  });
  deepStrictEqual(decodeAll(['3/admin,13["bar"]']), {
    type: 3,
    nsp: "/admin",
    id: 13,
    data: ["bar"],
  });
  deepStrictEqual(decodeAll(["3/admin,13[]"]), { type: 3, nsp: "/admin", id: 13, data: [] });
});

Deno.test("reassembles attachments into Uint8Array", () => {
  const decoder = new Decoder();
  strictEqual(
    decoder.add(
      '52-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
    ),
    undefined,
  );
  strictEqual(decoder.add(new Uint8Array([1, 2, 3])), undefined);
  const packet = decoder.add(new Uint8Array([4, 5, 6]));
  deepStrictEqual(packet, {
    type: PacketType.BINARY_EVENT,
    nsp: "/",
    id: 789,
    data: ["message-with-ack", new Uint8Array([1, 2, 3]), new Uint8Array([4, 5, 6])],
  });
  // The decoder is ready for the next packet.
  deepStrictEqual(decoder.add('2["next"]'), { type: 2, nsp: "/", data: ["next"] });
});

Deno.test("round-trips binary data through encode and decode", () => {
  const data = ["upload", {
    name: "a.bin",
    bytes: new Uint8Array([7, 8, 9]),
    list: [new Uint8Array(0)],
  }];
  const [text, ...attachments] = encodePacket({
    type: PacketType.EVENT,
    nsp: "/files",
    data,
    id: 3,
  });
  const packet = decodeAll([text, ...attachments]);
  deepStrictEqual(packet, { type: PacketType.BINARY_EVENT, nsp: "/files", id: 3, data });
});

Deno.test("rejects malformed packets", () => {
  const bad = [
    "abc",
    "7",
    "2{}",
    "2",
    "2[]",
    '2abc["message-with-ack",1]',
    '2["connect"]',
    '2["disconnect"]',
    "2[null]",
    '2["x"',
    '1{"a":1}',
    "0[1]",
    "0null",
    "3{}",
    '5x-["a"]',
    '5-["a"]',
    '5-1["a"]',
    '511-["a"]', // more than maxAttachments
    '21234567890123456789["a"]', // ack id beyond safe integers
  ];
  for (const text of bad) {
    throws(() => new Decoder().add(text), SocketParseError, text);
  }
  throws(() => new Decoder().add(new Uint8Array([1])), SocketParseError);
  throws(() => new Decoder().add(""), SocketParseError);
  const waiting = new Decoder();
  waiting.add('51-["a",{"_placeholder":true,"num":0}]');
  throws(() => waiting.add('2["b"]'), SocketParseError);
});

Deno.test("rejects placeholders that do not point at an attachment", () => {
  for (
    const text of [
      '51-["a",{"_placeholder":true,"num":1}]',
      '51-["a",{"_placeholder":true,"num":-1}]',
      '51-["a",{"_placeholder":true,"num":"0"}]',
      '51-["a",{"_placeholder":true,"num":0.5}]',
    ]
  ) {
    throws(() => decodeAll([text, new Uint8Array([1])]), SocketParseError, text);
  }
});

Deno.test("a __proto__ key stays an own property when attachments are restored", () => {
  const packet = decodeAll([
    '51-["a",{"__proto__":{"_placeholder":true,"num":0},"x":1}]',
    new Uint8Array([1]),
  ]);
  const arg = (packet?.data as unknown[])[1] as Record<string, unknown>;
  strictEqual(Object.getPrototypeOf(arg), Object.prototype);
  ok(Object.hasOwn(arg, "__proto__"));
  deepStrictEqual(Object.getOwnPropertyDescriptor(arg, "__proto__")?.value, new Uint8Array([1]));
});
