/**
 * Socket.IO v5 packet encoding on top of Engine.IO messages.
 *
 * Text form: `<type>[<attachments>-][<nsp>,][<ack id>][<JSON>]`. Binary values inside the data are
 * replaced by `{"_placeholder":true,"num":N}` and travel as the N following binary messages.
 *
 * @module
 */

import { parseJson } from "../core/json.ts";

/** Socket.IO packet type codes. */
export const PacketType = {
  CONNECT: 0,
  DISCONNECT: 1,
  EVENT: 2,
  ACK: 3,
  CONNECT_ERROR: 4,
  BINARY_EVENT: 5,
  BINARY_ACK: 6,
} as const;

/** One of the {@linkcode PacketType} codes. */
export type PacketType = typeof PacketType[keyof typeof PacketType];

/** A decoded Socket.IO packet. */
export interface SocketPacket {
  /** Packet type code. */
  type: PacketType;
  /** Namespace, `/` for the main one. */
  nsp: string;
  /** JSON payload with binary values restored (or to be extracted when encoding). */
  data?: unknown;
  /** Acknowledgement id. */
  id?: number;
}

/** Thrown when a Socket.IO packet is malformed; the connection that sent it must be closed. */
export class SocketParseError extends Error {
  override name = "SocketParseError";
}

/** Event names the protocol reserves; a peer must not emit them. */
export const RESERVED_EVENTS: ReadonlySet<string> = new Set([
  "connect",
  "connect_error",
  "disconnect",
  "disconnecting",
  "newListener",
  "removeListener",
]);

/** Whether a value is raw bytes that must travel as an attachment. */
export function isBinary(value: unknown): value is ArrayBuffer | ArrayBufferView {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value);
}

function toBytes(value: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

/** Whether a value contains bytes anywhere, looking through arrays and plain-ish objects. */
export function hasBinary(value: unknown, depth = 0): boolean {
  if (value === null || typeof value !== "object" || depth > 64) return false;
  if (isBinary(value)) return true;
  if (Array.isArray(value)) return value.some((item) => hasBinary(item, depth + 1));
  // Values with toJSON (Date, ...) serialize themselves; their innards are not attachments.
  if (typeof (value as { toJSON?: unknown }).toJSON === "function") return false;
  for (const key in value) {
    if (
      Object.hasOwn(value, key) && hasBinary((value as Record<string, unknown>)[key], depth + 1)
    ) {
      return true;
    }
  }
  return false;
}

function deconstruct(value: unknown, buffers: Uint8Array[], depth: number): unknown {
  if (value === null || typeof value !== "object" || depth > 64) return value;
  if (isBinary(value)) {
    const placeholder = { _placeholder: true, num: buffers.length };
    buffers.push(toBytes(value));
    return placeholder;
  }
  if (Array.isArray(value)) return value.map((item) => deconstruct(item, buffers, depth + 1));
  if (typeof (value as { toJSON?: unknown }).toJSON === "function") return value;
  const out: Record<string, unknown> = {};
  for (const key in value) {
    if (Object.hasOwn(value, key)) {
      // defineProperty keeps a key named __proto__ an ordinary own property.
      Object.defineProperty(out, key, {
        value: deconstruct((value as Record<string, unknown>)[key], buffers, depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
  }
  return out;
}

/**
 * Encodes a packet as its text part followed by binary attachments, turning EVENT and ACK into
 * BINARY_EVENT and BINARY_ACK when the data holds bytes.
 */
export function encodePacket(packet: SocketPacket): [string, ...Uint8Array[]] {
  let type: number = packet.type;
  let data = packet.data;
  const buffers: Uint8Array[] = [];
  if ((type === PacketType.EVENT || type === PacketType.ACK) && hasBinary(data)) {
    type = type === PacketType.EVENT ? PacketType.BINARY_EVENT : PacketType.BINARY_ACK;
  }
  if (type === PacketType.BINARY_EVENT || type === PacketType.BINARY_ACK) {
    data = deconstruct(data, buffers, 0);
  }
  let text = String(type);
  if (type === PacketType.BINARY_EVENT || type === PacketType.BINARY_ACK) {
    text += buffers.length + "-";
  }
  if (packet.nsp && packet.nsp !== "/") text += packet.nsp + ",";
  if (packet.id !== undefined) text += packet.id;
  if (data !== undefined && data !== null) text += JSON.stringify(data);
  return [text, ...buffers];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPayloadValid(type: PacketType, payload: unknown): boolean {
  switch (type) {
    case PacketType.CONNECT:
      return payload === undefined || isObject(payload);
    case PacketType.DISCONNECT:
      return payload === undefined;
    case PacketType.CONNECT_ERROR:
      return typeof payload === "string" || isObject(payload);
    case PacketType.EVENT:
    case PacketType.BINARY_EVENT:
      return Array.isArray(payload) && payload.length > 0 &&
        (typeof payload[0] === "number" ||
          (typeof payload[0] === "string" && !RESERVED_EVENTS.has(payload[0])));
    case PacketType.ACK:
    case PacketType.BINARY_ACK:
      return Array.isArray(payload);
  }
}

function isDigit(code: number): boolean {
  return code >= 0x30 && code <= 0x39;
}

interface PendingPacket {
  packet: SocketPacket;
  attachments: number;
}

function decodeString(text: string, maxAttachments: number): PendingPacket {
  const type = text.charCodeAt(0) - 0x30;
  if (!(type >= 0 && type <= 6)) {
    throw new SocketParseError("unknown packet type");
  }
  let i = 1;
  let attachments = 0;
  if (type === PacketType.BINARY_EVENT || type === PacketType.BINARY_ACK) {
    const dash = text.indexOf("-", i);
    const count = dash > i ? text.slice(i, dash) : "";
    if (!/^[0-9]{1,6}$/.test(count)) throw new SocketParseError("illegal attachments");
    attachments = Number(count);
    if (attachments > maxAttachments) throw new SocketParseError("too many attachments");
    i = dash + 1;
  }
  let nsp = "/";
  if (text.charCodeAt(i) === 0x2f /* / */) {
    const comma = text.indexOf(",", i);
    const end = comma === -1 ? text.length : comma;
    nsp = text.slice(i, end);
    i = comma === -1 ? end : end + 1;
  }
  let id: number | undefined;
  const idStart = i;
  while (i < text.length && isDigit(text.charCodeAt(i))) i++;
  if (i > idStart) {
    id = Number(text.slice(idStart, i));
    if (!Number.isSafeInteger(id)) throw new SocketParseError("invalid ack id");
  }
  let data: unknown;
  if (i < text.length) {
    try {
      data = parseJson(text.slice(i));
    } catch {
      throw new SocketParseError("invalid payload");
    }
  }
  if (!isPayloadValid(type as PacketType, data)) throw new SocketParseError("invalid payload");
  const packet: SocketPacket = { type: type as PacketType, nsp };
  if (data !== undefined) packet.data = data;
  if (id !== undefined) packet.id = id;
  return { packet, attachments };
}

function reconstruct(value: unknown, buffers: readonly Uint8Array[], depth: number): unknown {
  if (value === null || typeof value !== "object" || depth > 64) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = reconstruct(value[i], buffers, depth + 1);
    return value;
  }
  const record = value as Record<string, unknown>;
  if (record._placeholder === true) {
    const num = record.num;
    if (typeof num !== "number" || !Number.isInteger(num) || num < 0 || num >= buffers.length) {
      throw new SocketParseError("illegal attachments");
    }
    return buffers[num];
  }
  for (const key of Object.keys(record)) {
    const before = record[key];
    const after = reconstruct(before, buffers, depth + 1);
    if (after !== before) {
      Object.defineProperty(record, key, {
        value: after,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
  }
  return record;
}

/** Options of a {@linkcode Decoder}. */
export interface DecoderOptions {
  /** Most binary attachments one packet may announce. */
  maxAttachments?: number;
}

/** Turns the Engine.IO messages of one connection back into Socket.IO packets. */
export class Decoder {
  #maxAttachments: number;
  #pending: PendingPacket | null = null;
  #buffers: Uint8Array[] = [];

  /** Creates a decoder; one per connection, since attachments follow their packet. */
  constructor(options: DecoderOptions = {}) {
    this.#maxAttachments = options.maxAttachments ?? 10;
  }

  /** Feeds one message and returns a packet once it is complete, or undefined while bytes are due. */
  add(chunk: string | Uint8Array): SocketPacket | undefined {
    if (typeof chunk === "string") {
      if (this.#pending) throw new SocketParseError("got text while waiting for attachments");
      if (chunk.length === 0) throw new SocketParseError("empty packet");
      const partial = decodeString(chunk, this.#maxAttachments);
      if (partial.attachments === 0) return this.#finish(partial, []);
      this.#pending = partial;
      this.#buffers = [];
      return undefined;
    }
    const pending = this.#pending;
    if (!pending) throw new SocketParseError("got binary data outside of a packet");
    this.#buffers.push(chunk);
    if (this.#buffers.length < pending.attachments) return undefined;
    const buffers = this.#buffers;
    this.reset();
    return this.#finish(pending, buffers);
  }

  /** The packet whose attachments are still due, if any. */
  get pending(): SocketPacket | undefined {
    return this.#pending?.packet;
  }

  /** Drops a half-received packet. */
  reset(): void {
    this.#pending = null;
    this.#buffers = [];
  }

  #finish(partial: PendingPacket, buffers: readonly Uint8Array[]): SocketPacket {
    const packet = partial.packet;
    const type = packet.type;
    if (type === PacketType.BINARY_EVENT || type === PacketType.BINARY_ACK) {
      packet.data = reconstruct(packet.data, buffers, 0);
    }
    return packet;
  }
}
