/**
 * Socket.IO v5 server on top of {@linkcode EngineServer}: namespaces, connect middleware, events,
 * acknowledgements, binary attachments, rooms and broadcasts.
 *
 * @module
 */

import {
  type EngineCloseReason,
  type EngineOptions,
  EngineServer,
  type EngineSocket,
} from "./engine.ts";
import type { Packet } from "./parser.ts";
import {
  Decoder,
  encodePacket,
  PacketType,
  RESERVED_EVENTS,
  type SocketPacket,
} from "./socket_io_parser.ts";

/** An event listener; arguments are whatever the peer sent. */
// deno-lint-ignore no-explicit-any
export type Listener = (...args: any[]) => unknown;

/** The acknowledgement callback handed to a listener when the client asked for one. */
export type Ack = (...args: unknown[]) => void;

/** Default shape of `socket.data`. */
// deno-lint-ignore no-explicit-any
export type SocketData = Record<string, any>;

/** Why a socket left its namespace. */
export type DisconnectReason =
  | EngineCloseReason
  | "server shutting down"
  | "client namespace disconnect"
  | "server namespace disconnect";

/** Connect middleware: call `next()` to accept, `next(error)` to refuse with a CONNECT_ERROR. */
export type Middleware<Data = SocketData> = (
  socket: Socket<Data>,
  next: (error?: Error) => void,
) => unknown;

/** What the client sent when it connected. */
export interface Handshake {
  /** Headers of the Engine.IO handshake request, names in lower case. */
  headers: Record<string, string>;
  /** When the connection was made, as a date string. */
  time: string;
  /** Client address. */
  address: string;
  /** Whether the request was cross-origin (it carried an Origin header). */
  xdomain: boolean;
  /** Whether the request came over TLS. */
  secure: boolean;
  /** When the connection was made, in epoch milliseconds. */
  issued: number;
  /** URL of the handshake request. */
  url: string;
  /** Query parameters of the handshake request. */
  query: Record<string, string>;
  /** The CONNECT packet's payload (`auth` option of the client). */
  auth: Record<string, unknown>;
}

/** Options of a {@linkcode SocketIOServer}: the Engine.IO ones plus Socket.IO's own. */
export interface SocketIOServerOptions extends EngineOptions {
  /** Milliseconds a new connection has to join a namespace before it is closed; default 45 000. */
  connectTimeout?: number;

  /** Most binary attachments one packet may carry; default 10. */
  maxAttachments?: number;
  /**
   * The socket.io-client browser bundle, served at `<path>socket.io.js` and at
   * `<path>socket.io.min.js`, as Node's server does by default (`serveClient`), for pages that
   * load the client with a script tag; not served when unset.
   */
  clientBundle?: string;
  /**
   * Told of an event refused over WebSocket for its size (`maxPayload`), with the client's ack
   * when it asked for one, just before the session ends for it: a chance to say why on the
   * application's own error event. Node's server has no such hook; its session just ends.
   */
  // deno-lint-ignore no-explicit-any
  oversized?: (socket: Socket<any>, event: string, size: number, ack?: Ack) => void;
}

/** An `Error` whose `data` is sent to the client along with the message in CONNECT_ERROR. */
export class ConnectError extends Error {
  /** Extra details the client receives as `err.data`. */
  data?: unknown;

  /** Creates the error. */
  constructor(message: string, data?: unknown) {
    super(message);
    this.name = "ConnectError";
    this.data = data;
  }
}

/** Emitting through a timeout: acks get `(err, ...args)`, and `emitWithAck` rejects on timeout. */
export interface TimedEmitter {
  /** Emits; a trailing callback receives `(err, ...args)`. */
  emit(event: string, ...args: unknown[]): boolean;
  /** Emits and resolves with the first acknowledgement argument. */
  // deno-lint-ignore no-explicit-any
  emitWithAck(event: string, ...args: unknown[]): Promise<any>;
}

const kPacket = Symbol("packet");
const kConnect = Symbol("connect");
const kClose = Symbol("close");
const kJoin = Symbol("join");
const kLeave = Symbol("leave");
const kAdd = Symbol("add");
const kRemove = Symbol("remove");
const kRun = Symbol("run");
const kBroadcast = Symbol("broadcast");
const kWrite = Symbol("write");
const kWriteFrames = Symbol("writeFrames");
const kAck = Symbol("ack");
const kJoined = Symbol("joined");
const kWaiting = Symbol("waiting");

function report(error: unknown): void {
  console.error("socket.io: listener failed:", error);
}

function call(listener: Listener, args: readonly unknown[]): void {
  try {
    const result = listener(...args);
    if (result instanceof Promise) result.catch(report);
  } catch (error) {
    report(error);
  }
}

function toFrames(packet: SocketPacket): Packet[] {
  const [text, ...attachments] = encodePacket(packet);
  const frames: Packet[] = [{ type: "message", data: text }];
  for (const data of attachments) frames.push({ type: "message", data });
  return frames;
}

function toList(rooms: string | readonly string[]): readonly string[] {
  return typeof rooms === "string" ? [rooms] : rooms;
}

function checkEvent(event: string): void {
  if (RESERVED_EVENTS.has(event)) throw new Error(`"${event}" is a reserved event name`);
}

function randomId(): string {
  return crypto.getRandomValues(new Uint8Array(15)).toBase64({ alphabet: "base64url" });
}

/** A small event emitter whose listeners cannot break the caller (errors are logged). */
export class Emitter {
  #listeners = new Map<string, Listener[]>();

  /** Adds a listener. */
  on(event: string, listener: Listener): this {
    const list = this.#listeners.get(event);
    if (list) {
      list.push(listener);
    } else {
      this.#listeners.set(event, [listener]);
    }
    return this;
  }

  /** Adds a listener that runs once. */
  once(event: string, listener: Listener): this {
    const wrapper = Object.assign((...args: unknown[]) => {
      this.off(event, wrapper);
      return listener(...args);
    }, { listener });
    return this.on(event, wrapper);
  }

  /** Removes a listener, or every listener of the event. */
  off(event: string, listener?: Listener): this {
    const list = this.#listeners.get(event);
    if (!list) return this;
    if (!listener) {
      this.#listeners.delete(event);
      return this;
    }
    const index = list.findIndex((item) =>
      item === listener || (item as { listener?: Listener }).listener === listener
    );
    if (index !== -1) list.splice(index, 1);
    if (list.length === 0) this.#listeners.delete(event);
    return this;
  }

  /** Returns the listeners of an event. */
  listeners(event: string): Listener[] {
    return [...(this.#listeners.get(event) ?? [])];
  }

  /** Runs the listeners of an event locally. */
  protected dispatch(event: string, args: readonly unknown[]): void {
    const list = this.#listeners.get(event);
    if (!list) return;
    for (const listener of [...list]) call(listener, args);
  }
}

type Timer = ReturnType<typeof setTimeout>;

interface PendingAck {
  settle(error: Error | null, args: unknown[]): void;
  timer?: Timer;
}

// deno-lint-ignore no-explicit-any
let clientOf: (socket: Socket<any>) => Client;

/** One client in one namespace. */
export class Socket<Data = SocketData> extends Emitter {
  /** Socket id, also the name of its private room. */
  readonly id: string;
  /** Namespace the socket belongs to. */
  readonly nsp: Namespace<Data>;
  /** What the client sent when it connected. */
  readonly handshake: Handshake;
  /** The underlying Engine.IO session (shared by the client's namespaces). */
  readonly conn: EngineSocket;
  /** Free storage for the application. */
  data: Data = {} as Data;
  /** Whether the socket is in its namespace. */
  connected = false;
  #client: Client;
  #rooms = new Set<string>();
  #acks = new Map<number, PendingAck>();
  #nextAck = 0;
  #any: Listener[] = [];

  static {
    // Gives this module (and only it) the connection behind a socket without a public property.
    clientOf = (socket) => socket.#client;
  }

  /** Created by the server when a client asks to join a namespace. */
  constructor(nsp: Namespace<Data>, client: Client, auth: Record<string, unknown>) {
    super();
    this.id = randomId();
    this.nsp = nsp;
    this.#client = client;
    this.conn = client.conn;
    const request = client.conn.request;
    const headers: Record<string, string> = {};
    request.headers.forEach((value, name) => headers[name] = value);
    this.handshake = {
      headers,
      time: request.time.toString(),
      address: request.remoteAddress,
      xdomain: request.headers.has("origin"),
      secure: request.secure,
      issued: request.time.getTime(),
      url: request.url,
      query: Object.fromEntries(request.query),
      auth,
    };
  }

  /** Rooms the socket is in, its own id included. */
  get rooms(): ReadonlySet<string> {
    return this.#rooms;
  }

  /** Whether the socket has left its namespace. */
  get disconnected(): boolean {
    return !this.connected;
  }

  /** Listens for a client event or for `disconnect` / `disconnecting`. */
  override on(
    event: "disconnect" | "disconnecting",
    listener: (reason: DisconnectReason, description?: string) => unknown,
  ): this;
  /** Listens for a client event; an acknowledgement callback is appended when the client wants one. */
  override on(event: string, listener: Listener): this;
  override on(event: string, listener: Listener): this {
    return super.on(event, listener);
  }

  /** Listens for every client event, with the event name first. */
  onAny(listener: Listener): this {
    this.#any.push(listener);
    return this;
  }

  /** Removes a catch-all listener, or all of them. */
  offAny(listener?: Listener): this {
    this.#any = listener ? this.#any.filter((item) => item !== listener) : [];
    return this;
  }

  /** Sends an event; a trailing function receives the client's acknowledgement. */
  emit(event: string, ...args: unknown[]): boolean {
    return this.#emit(event, args, undefined);
  }

  /** Sends an event and resolves with the first argument of the client's acknowledgement. */
  // deno-lint-ignore no-explicit-any
  emitWithAck(event: string, ...args: unknown[]): Promise<any> {
    return this.#emitWithAck(event, args, undefined);
  }

  /** Returns an emitter whose acknowledgements fail after `ms` milliseconds. */
  timeout(ms: number): TimedEmitter {
    return {
      emit: (event, ...args) => this.#emit(event, args, ms),
      emitWithAck: (event, ...args) => this.#emitWithAck(event, args, ms),
    };
  }

  /** Sends a `message` event. */
  send(...args: unknown[]): this {
    this.emit("message", ...args);
    return this;
  }

  /** Joins one or more rooms. */
  join(rooms: string | readonly string[]): void {
    if (!this.connected) return;
    for (const room of toList(rooms)) {
      if (this.#rooms.has(room)) continue;
      this.#rooms.add(room);
      this.nsp[kJoin](this, room);
    }
  }

  /** Leaves a room. */
  leave(room: string): void {
    if (!this.#rooms.delete(room)) return;
    this.nsp[kLeave](this, room);
  }

  /** Targets the sockets in the rooms, this one excepted. */
  to(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(this.nsp, new Set(toList(rooms)), new Set([this.id]));
  }

  /** Same as {@linkcode Socket.to}. */
  in(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.to(rooms);
  }

  /** Targets every socket of the namespace but this one and those in the rooms. */
  except(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(this.nsp, new Set(), new Set([this.id, ...toList(rooms)]));
  }

  /** Targets every socket of the namespace but this one. */
  get broadcast(): BroadcastOperator<Data> {
    return new BroadcastOperator(this.nsp, new Set(), new Set([this.id]));
  }

  /** Leaves the namespace; with `close`, ends the whole connection (every namespace). */
  disconnect(close = false): this {
    if (!this.connected) return this;
    if (close) {
      this.#client.disconnectAll();
    } else {
      this.#client[kWrite]({ type: PacketType.DISCONNECT, nsp: this.nsp.name });
      this[kClose]("server namespace disconnect");
    }
    return this;
  }

  /** Completes the connection once the middlewares accepted it. */
  [kConnect](): void {
    this.connected = true;
    this.join(this.id);
    this.#client[kWrite]({ type: PacketType.CONNECT, nsp: this.nsp.name, data: { sid: this.id } });
  }

  /** Handles a packet the client sent to this namespace. */
  [kPacket](packet: SocketPacket): void {
    switch (packet.type) {
      case PacketType.EVENT:
      case PacketType.BINARY_EVENT:
        this.#onEvent(packet);
        break;
      case PacketType.ACK:
      case PacketType.BINARY_ACK:
        this.#onAck(packet);
        break;
      case PacketType.DISCONNECT:
        this[kClose]("client namespace disconnect");
        break;
    }
  }

  /** Leaves the namespace without telling the client. */
  [kClose](reason: DisconnectReason, description?: string): void {
    if (!this.connected) return;
    this.dispatch("disconnecting", [reason, description]);
    for (const room of [...this.#rooms]) this.leave(room);
    this.connected = false;
    this.nsp[kRemove](this);
    this.#client.remove(this);
    const acks = [...this.#acks.values()];
    this.#acks.clear();
    const error = new Error("socket has been disconnected");
    for (const ack of acks) {
      clearTimeout(ack.timer);
      ack.settle(error, []);
    }
    this.dispatch("disconnect", [reason, description]);
  }

  #emit(event: string, args: unknown[], timeout: number | undefined): boolean {
    checkEvent(event);
    const packet: SocketPacket = { type: PacketType.EVENT, nsp: this.nsp.name };
    const last = args[args.length - 1];
    if (typeof last === "function") {
      const callback = last as Listener;
      packet.data = [event, ...args.slice(0, -1)];
      packet.id = this.#register(timeout, (error, values) => {
        if (timeout !== undefined) {
          callback(error, ...values);
        } else if (!error) {
          callback(...values);
        }
      });
    } else {
      packet.data = [event, ...args];
    }
    if (this.connected) this.#client[kWrite](packet);
    return true;
  }

  // deno-lint-ignore no-explicit-any
  #emitWithAck(event: string, args: unknown[], timeout: number | undefined): Promise<any> {
    return new Promise((resolve, reject) => {
      const settle = (error: Error | null, ...values: unknown[]) => {
        if (error) {
          reject(error);
        } else {
          resolve(values[0]);
        }
      };
      // Always the error-first form internally, so disconnects reject instead of hanging.
      this.#emit(event, [...args, settle], timeout ?? Infinity);
    });
  }

  #register(timeout: number | undefined, settle: PendingAck["settle"]): number {
    const id = this.#nextAck++;
    const pending: PendingAck = { settle };
    if (timeout !== undefined && Number.isFinite(timeout)) {
      pending.timer = setTimeout(() => {
        this.#acks.delete(id);
        settle(new Error("operation has timed out"), []);
      }, timeout);
    }
    this.#acks.set(id, pending);
    return id;
  }

  #onEvent(packet: SocketPacket): void {
    // A shutdown under way: handled now, its reply would have no socket to go to.
    if (this.nsp.server.takingNoMore) return;
    const args = [...(packet.data as unknown[])];
    if (packet.id !== undefined) args.push(this.#ackFor(packet.id));
    for (const listener of [...this.#any]) call(listener, args);
    this.dispatch(String(args[0]), args.slice(1));
  }

  /** The acknowledgement function for the client's packet `id`. */
  [kAck](id: number): Ack {
    return this.#ackFor(id);
  }

  #ackFor(id: number): Ack {
    let sent = false;
    return (...args: unknown[]) => {
      if (sent || !this.connected) return;
      sent = true;
      this.#client[kWrite]({ type: PacketType.ACK, nsp: this.nsp.name, id, data: args });
    };
  }

  #onAck(packet: SocketPacket): void {
    const id = packet.id;
    if (id === undefined) return;
    const pending = this.#acks.get(id);
    if (!pending) return;
    this.#acks.delete(id);
    clearTimeout(pending.timer);
    pending.settle(null, packet.data as unknown[]);
  }
}

/** A set of target sockets (rooms, exceptions) for emitting and bulk operations. */
export class BroadcastOperator<Data = SocketData> {
  #nsp: Namespace<Data>;
  #rooms: ReadonlySet<string>;
  #except: ReadonlySet<string>;

  /** Targets `rooms` (all sockets when empty) minus the sockets in `except`. */
  constructor(
    nsp: Namespace<Data>,
    rooms: ReadonlySet<string> = new Set(),
    except: ReadonlySet<string> = new Set(),
  ) {
    this.#nsp = nsp;
    this.#rooms = rooms;
    this.#except = except;
  }

  /** Adds rooms to target. */
  to(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(
      this.#nsp,
      new Set([...this.#rooms, ...toList(rooms)]),
      this.#except,
    );
  }

  /** Same as {@linkcode BroadcastOperator.to}. */
  in(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.to(rooms);
  }

  /** Excludes the sockets in these rooms. */
  except(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(
      this.#nsp,
      this.#rooms,
      new Set([...this.#except, ...toList(rooms)]),
    );
  }

  /** Sends an event to every target; the packet is encoded once for all of them. */
  emit(event: string, ...args: unknown[]): boolean {
    checkEvent(event);
    if (typeof args[args.length - 1] === "function") {
      throw new Error("acknowledgements are not supported when broadcasting");
    }
    this.#nsp[kBroadcast]({ type: PacketType.EVENT, nsp: this.#nsp.name, data: [event, ...args] }, [
      ...this.#targets(),
    ]);
    return true;
  }

  /** Sends a `message` event to every target. */
  send(...args: unknown[]): this {
    this.emit("message", ...args);
    return this;
  }

  /** Returns the target sockets. */
  fetchSockets(): Promise<Socket<Data>[]> {
    return Promise.resolve([...this.#targets()]);
  }

  /** Makes every target join the rooms. */
  socketsJoin(rooms: string | readonly string[]): void {
    for (const socket of [...this.#targets()]) socket.join(rooms);
  }

  /** Makes every target leave the rooms. */
  socketsLeave(rooms: string | readonly string[]): void {
    for (const socket of [...this.#targets()]) {
      for (const room of toList(rooms)) socket.leave(room);
    }
  }

  /** Disconnects every target from the namespace; with `close`, ends their connections. */
  disconnectSockets(close = false): void {
    for (const socket of [...this.#targets()]) socket.disconnect(close);
  }

  *#targets(): Generator<Socket<Data>> {
    const rooms = this.#nsp.rooms;
    const excluded = new Set<Socket<Data>>();
    for (const room of this.#except) {
      for (const socket of rooms.get(room) ?? []) excluded.add(socket);
    }
    if (this.#rooms.size === 0) {
      for (const socket of this.#nsp.sockets.values()) {
        if (!excluded.has(socket)) yield socket;
      }
      return;
    }
    const seen = new Set<Socket<Data>>();
    for (const room of this.#rooms) {
      for (const socket of rooms.get(room) ?? []) {
        if (excluded.has(socket) || seen.has(socket)) continue;
        seen.add(socket);
        yield socket;
      }
    }
  }
}

/** A namespace: its sockets, rooms, middlewares and `connection` listeners. */
export class Namespace<Data = SocketData> extends Emitter {
  /** Name, starting with `/`. */
  readonly name: string;
  /** The server this namespace belongs to. */
  readonly server: SocketIOServer<Data>;
  /** Connected sockets by id. */
  readonly sockets: Map<string, Socket<Data>> = new Map();
  #rooms = new Map<string, Set<Socket<Data>>>();
  #middlewares: Middleware<Data>[] = [];

  /** Created through {@linkcode SocketIOServer.of}. */
  constructor(server: SocketIOServer<Data>, name: string) {
    super();
    this.server = server;
    this.name = name;
  }

  /** Sockets by room name, for this isolate. */
  get rooms(): ReadonlyMap<string, ReadonlySet<Socket<Data>>> {
    return this.#rooms;
  }

  /** Listens for new sockets. */
  override on(event: "connection" | "connect", listener: (socket: Socket<Data>) => unknown): this;
  /** Listens for a namespace event. */
  override on(event: string, listener: Listener): this;
  override on(event: string, listener: Listener): this {
    return super.on(event === "connect" ? "connection" : event, listener);
  }

  /** Adds a connect middleware; they run in order before `connection`. */
  use(middleware: Middleware<Data>): this {
    this.#middlewares.push(middleware);
    return this;
  }

  /** Targets the sockets in the rooms. */
  to(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(this, new Set(toList(rooms)));
  }

  /** Same as {@linkcode Namespace.to}. */
  in(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.to(rooms);
  }

  /** Targets every socket but those in the rooms. */
  except(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return new BroadcastOperator(this, new Set(), new Set(toList(rooms)));
  }

  /** Sends an event to every socket of the namespace. */
  emit(event: string, ...args: unknown[]): boolean {
    return new BroadcastOperator(this).emit(event, ...args);
  }

  /** Sends a `message` event to every socket of the namespace. */
  send(...args: unknown[]): this {
    this.emit("message", ...args);
    return this;
  }

  /** Returns the sockets of the namespace. */
  fetchSockets(): Promise<Socket<Data>[]> {
    return new BroadcastOperator(this).fetchSockets();
  }

  /** Makes every socket join the rooms. */
  socketsJoin(rooms: string | readonly string[]): void {
    new BroadcastOperator(this).socketsJoin(rooms);
  }

  /** Makes every socket leave the rooms. */
  socketsLeave(rooms: string | readonly string[]): void {
    new BroadcastOperator(this).socketsLeave(rooms);
  }

  /** Disconnects every socket; with `close`, ends their connections. */
  disconnectSockets(close = false): void {
    new BroadcastOperator(this).disconnectSockets(close);
  }

  /** Runs the middlewares; resolves with the refusal, or null to accept. */
  async [kRun](socket: Socket<Data>): Promise<Error | null> {
    for (const middleware of this.#middlewares) {
      const error = await new Promise<Error | null>((resolve) => {
        let settled = false;
        const next = (error?: unknown) => {
          if (settled) return;
          settled = true;
          resolve(
            error === undefined || error === null
              ? null
              : error instanceof Error
              ? error
              : new Error(String(error)),
          );
        };
        try {
          const result = middleware(socket, next);
          if (result instanceof Promise) {
            result.catch((error) => next(error ?? new Error("middleware failed")));
          }
        } catch (error) {
          next(error ?? new Error("middleware failed"));
        }
      });
      if (error) return error;
    }
    return null;
  }

  /** Registers an accepted socket and announces it. */
  [kAdd](socket: Socket<Data>): void {
    this.sockets.set(socket.id, socket);
    socket[kConnect]();
    this.dispatch("connection", [socket]);
  }

  /** Forgets a socket that left. */
  [kRemove](socket: Socket<Data>): void {
    this.sockets.delete(socket.id);
  }

  /** Adds a socket to a room. */
  [kJoin](socket: Socket<Data>, room: string): void {
    let members = this.#rooms.get(room);
    if (!members) {
      members = new Set();
      this.#rooms.set(room, members);
    }
    members.add(socket);
  }

  /** Removes a socket from a room, dropping the room once empty. */
  [kLeave](socket: Socket<Data>, room: string): void {
    const members = this.#rooms.get(room);
    if (!members) return;
    members.delete(socket);
    if (members.size === 0) this.#rooms.delete(room);
  }

  /** Encodes a packet once and queues the same frames on every target's connection. */
  [kBroadcast](packet: SocketPacket, targets: readonly Socket<Data>[]): void {
    if (targets.length === 0) return;
    const frames = toFrames(packet);
    for (const socket of targets) clientOf(socket)[kWriteFrames](frames);
  }
}

/** One Engine.IO connection seen by Socket.IO: the namespaces it joined and its decoder. */
class Client {
  readonly conn: EngineSocket;
  // deno-lint-ignore no-explicit-any
  #server: SocketIOServer<any>;
  #decoder: Decoder;
  // deno-lint-ignore no-explicit-any
  #sockets = new Map<string, Socket<any>>();
  // Packets for a namespace whose middlewares are still running, delivered once it is joined.
  #connecting = new Map<string, SocketPacket[]>();
  #connectTimer: Timer | undefined;
  #connectTimeout = 0;

  // deno-lint-ignore no-explicit-any
  constructor(server: SocketIOServer<any>, conn: EngineSocket, options: ClientOptions) {
    this.#server = server;
    this.conn = conn;
    this.#decoder = new Decoder({ maxAttachments: options.maxAttachments });
    conn.onmessage = (data) => this.#receive(data);
    conn.onclose = (reason, description) => this.#closed(reason, description);
    const oversized = options.oversized;
    if (oversized) {
      conn.ontoolarge = (head, size) => {
        let nsp: string, id: number | undefined, event: string;
        if (head === "") {
          // An attachment: the event is the one whose attachments were being received.
          const pending = this.#decoder.pending;
          const name = (pending?.data as unknown[] | undefined)?.[0];
          if (pending?.type !== PacketType.BINARY_EVENT || typeof name !== "string") return;
          [nsp, id, event] = [pending.nsp, pending.id, name];
        } else {
          const match = EVENT_HEAD.exec(head);
          if (!match) return;
          try {
            event = JSON.parse(`"${match[3]}"`);
          } catch {
            return;
          }
          [nsp, id] = [match[1] ?? "/", match[2] ? Number(match[2]) : undefined];
        }
        const socket = this.#sockets.get(nsp);
        if (!socket?.connected) return;
        oversized(socket, event, size, id === undefined ? undefined : socket[kAck](id));
      };
    }
    this.#connectTimeout = options.connectTimeout;
    this.#armConnectTimer();
  }

  /** Closes the connection unless it is in a namespace by the connect timeout. */
  #armConnectTimer(): void {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = setTimeout(() => {
      if (this.#sockets.size === 0) this.conn.close();
    }, this.#connectTimeout);
  }

  /** Encodes and queues one packet. */
  [kWrite](packet: SocketPacket): void {
    this[kWriteFrames](toFrames(packet));
  }

  /** Queues already encoded frames. */
  [kWriteFrames](frames: readonly Packet[]): void {
    if (this.conn.readyState === "open") this.conn.sendPackets(frames);
  }

  /** Forgets a socket that left its namespace. */
  // deno-lint-ignore no-explicit-any
  remove(socket: Socket<any>): void {
    if (this.#sockets.get(socket.nsp.name) !== socket) return;
    this.#sockets.delete(socket.nsp.name);
    // A connection that left every namespace is waiting again, under the same timeout as a new
    // one: kept alive by pings alone, it would otherwise escape both forever.
    if (this.#sockets.size === 0 && this.conn.readyState === "open") {
      this.#server[kWaiting](this);
      this.#armConnectTimer();
    }
  }

  /** Disconnects every namespace, then closes the connection once the packets are out. */
  disconnectAll(): void {
    for (const socket of [...this.#sockets.values()]) socket.disconnect();
    this.conn.close();
  }

  /** Drops every namespace with `reason` without telling the client. */
  drop(reason: DisconnectReason): void {
    for (const socket of [...this.#sockets.values()]) socket[kClose](reason);
  }

  #receive(data: string | Uint8Array): void {
    let packet: SocketPacket | undefined;
    try {
      packet = this.#decoder.add(data);
    } catch {
      // A malformed packet means the peer is not speaking the protocol: drop the connection.
      this.drop("parse error");
      this.conn.close();
      return;
    }
    if (!packet) return;
    const socket = this.#sockets.get(packet.nsp);
    if (packet.type === PacketType.CONNECT) {
      if (socket) {
        // Connecting twice to the same namespace is a protocol violation.
        this.drop("parse error");
        this.conn.close();
        return;
      }
      void this.#connect(packet.nsp, (packet.data ?? {}) as Record<string, unknown>);
    } else if (packet.type === PacketType.CONNECT_ERROR) {
      this.drop("parse error");
      this.conn.close();
    } else if (socket) {
      socket[kPacket](packet);
    } else {
      const early = this.#connecting.get(packet.nsp);
      if (!early) return; // A namespace this client has left: in-flight, harmless.
      if (early.length >= MAX_EARLY_PACKETS) {
        this.drop("parse error");
        this.conn.close();
        return;
      }
      early.push(packet);
    }
  }

  async #connect(name: string, auth: Record<string, unknown>): Promise<void> {
    const nsp = this.#server.namespaces.get(name);
    if (!nsp) {
      this[kWrite]({
        type: PacketType.CONNECT_ERROR,
        nsp: name,
        data: { message: "Invalid namespace" },
      });
      return;
    }
    if (this.#connecting.has(name)) return;
    const early: SocketPacket[] = [];
    this.#connecting.set(name, early);
    const socket = new Socket(nsp, this, auth);
    const error = await nsp[kRun](socket);
    this.#connecting.delete(name);
    if (this.conn.readyState !== "open" || this.#sockets.has(name)) return;
    if (error) {
      const data: { message: string; data?: unknown } = { message: error.message };
      const extra = (error as { data?: unknown }).data;
      if (extra !== undefined) data.data = extra;
      this[kWrite]({ type: PacketType.CONNECT_ERROR, nsp: name, data });
      return;
    }
    this.#sockets.set(name, socket);
    clearTimeout(this.#connectTimer);
    this.#server[kJoined](this);
    nsp[kAdd](socket);
    for (const packet of early) {
      if (!socket.connected) break;
      socket[kPacket](packet);
    }
  }

  #closed(reason: EngineCloseReason, description?: string): void {
    clearTimeout(this.#connectTimer);
    this.#decoder.reset();
    for (const socket of [...this.#sockets.values()]) socket[kClose](reason, description);
    this.#sockets.clear();
  }
}

// What a client may send to a namespace before its CONNECT has been answered.
const MAX_EARLY_PACKETS = 1000;

interface ClientOptions {
  connectTimeout: number;
  maxAttachments: number;
  // deno-lint-ignore no-explicit-any
  oversized?: (socket: Socket<any>, event: string, size: number, ack?: Ack) => void;
}

/** An EVENT packet's namespace, ack id and event name, read from its start. */
const EVENT_HEAD = /^2(?:(\/[^,]*),)?(\d*)\["((?:[^"\\]|\\.)*)"/;

/** 32-bit FNV-1a of some bytes: a cheap, stable ETag for a fixed file. */
function fnv1a(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (const b of bytes) hash = Math.imul(hash ^ b, 0x01000193) >>> 0;
  return hash;
}

/** A Socket.IO v5 server; plug `handleRequest` into `Deno.serve` or a router for its path. */
export class SocketIOServer<Data = SocketData> {
  /** The Engine.IO server underneath. */
  readonly engine: EngineServer;
  #namespaces = new Map<string, Namespace<Data>>();
  #clients = new Set<Client>();
  /** Clients that have not joined a namespace yet. */
  #waiting = new Set<Client>();
  #clientOptions: ClientOptions;
  #clientBundle?: { bytes: Uint8Array<ArrayBuffer>; etag: string };
  /** The paths it is served at. */
  #clientBundlePaths: string[] = [];
  #takingNoMore = false;

  /** Creates a server with the main namespace `/`. */
  constructor(options: SocketIOServerOptions = {}) {
    this.engine = new EngineServer(options);
    if (options.clientBundle !== undefined) {
      const bytes = new TextEncoder().encode(options.clientBundle);
      this.#clientBundle = { bytes, etag: `"${fnv1a(bytes).toString(16)}-${bytes.length}"` };
      // The package exports only the full bundle, which serves for the minified one's name too.
      this.#clientBundlePaths = ["socket.io.js", "socket.io.min.js"]
        .map((name) => this.engine.path + name);
    }
    this.#clientOptions = {
      connectTimeout: options.connectTimeout ?? 45_000,
      maxAttachments: options.maxAttachments ?? 10,
      oversized: options.oversized,
    };
    this.engine.onconnection = (conn) => {
      const client = new Client(this, conn, this.#clientOptions);
      this.#clients.add(client);
      this.#waiting.add(client);
      const onclose = conn.onclose;
      conn.onclose = (reason, description) => {
        this.#clients.delete(client);
        this.#waiting.delete(client);
        onclose?.(reason, description);
      };
    };
    this.of("/");
  }

  /** True once {@link takeNoMore} was called. */
  get takingNoMore(): boolean {
    return this.#takingNoMore;
  }

  /**
   * Drops the events clients send from now on, unanswered, for a shutdown: one handled while the
   * sessions close would be stored with nowhere to send its acknowledgement, and a client
   * resending what it was never answered would store it twice.
   */
  takeNoMore(): void {
    this.#takingNoMore = true;
  }

  /**
   * Connections that have not joined a namespace yet: each is held for up to `connectTimeout`
   * without a word from the client, so `refuseHandshake` may want to bound them.
   */
  get waitingConnections(): number {
    return this.#waiting.size;
  }

  /** Notes that a client joined its first namespace: it no longer counts as waiting. */
  [kJoined](client: Client): void {
    this.#waiting.delete(client);
  }

  /** Notes that a client left its last namespace: it counts as waiting again. */
  [kWaiting](client: Client): void {
    if (this.#clients.has(client)) this.#waiting.add(client);
  }

  /** Namespaces by name. */
  get namespaces(): ReadonlyMap<string, Namespace<Data>> {
    return this.#namespaces;
  }

  /** The main namespace. */
  get sockets(): Namespace<Data> {
    return this.of("/");
  }

  /** Returns the namespace, creating it on first use. */
  of(name: string): Namespace<Data> {
    const normalized = name.startsWith("/") ? name : "/" + name;
    let nsp = this.#namespaces.get(normalized);
    if (!nsp) {
      nsp = new Namespace(this, normalized);
      this.#namespaces.set(normalized, nsp);
    }
    return nsp;
  }

  /** Adds a connect middleware to the main namespace. */
  use(middleware: Middleware<Data>): this {
    this.sockets.use(middleware);
    return this;
  }

  /** Listens for new sockets on the main namespace. */
  on(event: "connection" | "connect", listener: (socket: Socket<Data>) => unknown): this {
    this.sockets.on(event, listener);
    return this;
  }

  /** Targets rooms of the main namespace. */
  to(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.sockets.to(rooms);
  }

  /** Same as {@linkcode SocketIOServer.to}. */
  in(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.sockets.to(rooms);
  }

  /** Targets the main namespace minus the rooms. */
  except(rooms: string | readonly string[]): BroadcastOperator<Data> {
    return this.sockets.except(rooms);
  }

  /** Sends an event to every socket of the main namespace. */
  emit(event: string, ...args: unknown[]): boolean {
    return this.sockets.emit(event, ...args);
  }

  /** Answers a request under the path (see {@linkcode EngineServer.handleRequest}). */
  handleRequest(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const bundle = this.#clientBundle;
    if (
      // Every polling request passes here: the URL is parsed only when it can be the bundle's.
      bundle && (req.method === "GET" || req.method === "HEAD") && req.url.includes(".js") &&
      this.#clientBundlePaths.includes(new URL(req.url).pathname)
    ) {
      // Revalidated every time, as Node's server does: the URL carries no version, so a cached
      // copy must not outlive an upgrade.
      const headers = {
        "content-type": "application/javascript; charset=utf-8",
        "cache-control": "public, max-age=0",
        etag: bundle.etag,
      };
      if (req.headers.get("if-none-match") === bundle.etag) {
        return Promise.resolve(new Response(null, { status: 304, headers }));
      }
      return Promise.resolve(
        new Response(req.method === "HEAD" ? null : bundle.bytes, {
          headers: { ...headers, "content-length": String(bundle.bytes.length) },
        }),
      );
    }
    return this.engine.handleRequest(req, info);
  }

  /** Disconnects every socket (`server shutting down`), then closes the engine. */
  async close(): Promise<void> {
    for (const client of [...this.#clients]) client.drop("server shutting down");
    this.#clients.clear();
    await this.engine.close();
  }
}
