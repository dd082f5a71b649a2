/**
 * Engine.IO v4 packet and payload encoding.
 *
 * A packet is a type digit followed by text, or raw bytes for a binary message. WebSocket frames
 * carry one packet each; long-polling bodies join packets with the record separator and carry
 * binary messages as `b` + base64.
 *
 * @module
 */

/** The seven Engine.IO packet types. */
export type PacketType = "open" | "close" | "ping" | "pong" | "message" | "upgrade" | "noop";

/** One Engine.IO packet; binary data is only meaningful on `message` packets. */
export interface Packet {
  /** What the packet means. */
  readonly type: PacketType;
  /** Text payload, or the bytes of a binary message. */
  readonly data?: string | Uint8Array;
}

/** Thrown when bytes on the wire are not a valid Engine.IO packet or payload. */
export class ParseError extends Error {
  override name = "ParseError";
}

/** Separates packets in a long-polling payload. */
export const SEPARATOR = "\x1e";

const TYPES: readonly PacketType[] = [
  "open",
  "close",
  "ping",
  "pong",
  "message",
  "upgrade",
  "noop",
];

const CODES: Readonly<Record<PacketType, string>> = {
  open: "0",
  close: "1",
  ping: "2",
  pong: "3",
  message: "4",
  upgrade: "5",
  noop: "6",
};

// A broadcast hands the same packet object to every recipient; caching the base64 form means the
// bytes are encoded once however many polling clients receive them.
const base64Cache = new WeakMap<Packet, string>();

/** Encodes a packet as one WebSocket frame: text with its type digit, or raw message bytes. */
export function encodeFrame(packet: Packet): string | Uint8Array {
  if (packet.data instanceof Uint8Array) return packet.data;
  return CODES[packet.type] + (packet.data ?? "");
}

/** Encodes a packet as text the way long-polling carries it (binary as `b` + base64). */
export function encodeText(packet: Packet): string {
  const data = packet.data;
  if (data instanceof Uint8Array) {
    let text = base64Cache.get(packet);
    if (text === undefined) {
      text = "b" + data.toBase64();
      base64Cache.set(packet, text);
    }
    return text;
  }
  return CODES[packet.type] + (data ?? "");
}

/** Decodes one packet from a WebSocket frame or from one record of a polling payload. */
export function decodePacket(raw: string | Uint8Array): Packet {
  if (typeof raw !== "string") return { type: "message", data: raw };
  if (raw.length === 0) throw new ParseError("empty packet");
  const head = raw.charCodeAt(0);
  if (head === 0x62 /* b */) {
    try {
      return { type: "message", data: Uint8Array.fromBase64(raw.slice(1)) };
    } catch {
      throw new ParseError("invalid base64 payload");
    }
  }
  const type = TYPES[head - 0x30];
  if (type === undefined) throw new ParseError("unknown packet type");
  return raw.length > 1 ? { type, data: raw.slice(1) } : { type };
}

/** Joins packets into one long-polling response body. */
export function encodePayload(packets: readonly Packet[]): string {
  if (packets.length === 1) return encodeText(packets[0]);
  return packets.map(encodeText).join(SEPARATOR);
}

/** Splits a long-polling request body into packets, failing on the first invalid one. */
export function decodePayload(payload: string): Packet[] {
  return payload.split(SEPARATOR).map(decodePacket);
}
