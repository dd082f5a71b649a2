/**
 * Engine.IO v4 + Socket.IO v5 server for `Deno.serve`, compatible with the official
 * `socket.io-client` 4.x.
 *
 * ```ts ignore
 * const io = new SocketIOServer({ pingInterval: 25_000 });
 * io.on("connection", (socket) => socket.on("hello", (name, ack) => ack?.(`hi ${name}`)));
 * Deno.serve((req, info) => io.handleRequest(req, info));
 * ```
 *
 * @module
 */

export {
  type AllowedOrigins,
  type EngineCloseReason,
  type EngineOptions,
  type EngineRequest,
  EngineServer,
  type EngineSocket,
  ErrorCode,
  type FrameBudgetHook,
  type TrafficHook,
  type TransportName,
} from "./engine.ts";
export {
  BODY_BYTES_PER_MS,
  BroadcastChannelRelay,
  type BroadcastChannelRelayOptions,
  type FrameSocket,
  nodeOfSid,
  type RelayOwner,
  type RelayReply,
  type SessionRelay,
} from "./relay.ts";
export {
  type Ack,
  BroadcastOperator,
  ConnectError,
  type DisconnectReason,
  Emitter,
  type Handshake,
  type Listener,
  type Middleware,
  Namespace,
  Socket,
  type SocketData,
  SocketIOServer,
  type SocketIOServerOptions,
  type TimedEmitter,
} from "./socket_io.ts";
export type { Packet, PacketType } from "./parser.ts";
export { PacketType as SocketPacketType, type SocketPacket } from "./socket_io_parser.ts";
