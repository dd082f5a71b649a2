/**
 * Cross-isolate relay for Engine.IO sessions.
 *
 * `deno serve --parallel` spreads connections over isolates without sticky sessions, so a
 * long-polling request can reach an isolate that does not hold its session. The relay lets that
 * isolate hand the request to the owner and return the owner's answer, and bridges a WebSocket
 * upgrade that lands on a non-owner to the owner frame by frame.
 *
 * @module
 */

/** A two-way stream of WebSocket frames: a real socket, or one bridged through a relay. */
export interface FrameSocket {
  /** Sends one frame. */
  send(data: string | Uint8Array): void;
  /** Closes the stream; `onclose` still fires once. */
  close(code?: number, reason?: string): void;
  /** Receives each frame. */
  onmessage: ((data: string | Uint8Array) => void) | null;
  /** Fires once when the stream is closed, by either side. */
  onclose: ((code: number, reason: string) => void) | null;
}

/** An HTTP answer computed by the isolate that owns a session. */
export interface RelayReply {
  /** HTTP status. */
  status: number;
  /** Response body. */
  body: string;
  /** Value of the Content-Type header. */
  contentType: string;
}

/** What an isolate offers to serve requests for the sessions it owns. */
export interface RelayOwner {
  /** Serves a long-polling GET; resolves when packets are due, like a local poll. */
  relayPoll(sid: string): Promise<RelayReply>;
  /** Handles a POST body; `null` means the body exceeded maxPayload and the session must close. */
  relayPost(sid: string, body: string | null): RelayReply;
  /** Takes a bridged WebSocket as an upgrade candidate; false refuses it. */
  relayWebSocket(sid: string, frames: FrameSocket): boolean;
}

/** Carries session traffic from the isolate a request reached to the isolate owning the session. */
export interface SessionRelay {
  /** Identifies this isolate; the engine prefixes every sid it mints with it. */
  readonly nodeId: string;
  /** Starts answering requests from other isolates for the sessions `owner` holds. */
  attach(owner: RelayOwner): void;
  /** Forwards a GET; resolves null when no isolate owns the sid. */
  poll(sid: string, timeout: number): Promise<RelayReply | null>;
  /** Forwards a POST body (null: too large); resolves null when no isolate owns the sid. */
  post(sid: string, body: string | null): Promise<RelayReply | null>;
  /** Asks the owner to accept a WebSocket upgrade; resolves the bridge, or null if refused. */
  openWebSocket(sid: string): Promise<FrameSocket | null>;
  /** Stops relaying and closes every bridge. */
  close(): Promise<void>;
}

/** Returns the node id a sid was minted with, or null when the sid has none. */
export function nodeOfSid(sid: string): string | null {
  const dot = sid.indexOf(".");
  return dot > 0 ? sid.slice(0, dot) : null;
}

/** Options of a {@linkcode BroadcastChannelRelay}. */
export interface BroadcastChannelRelayOptions {
  /** Channel name every isolate serving the same Socket.IO path must share. */
  name: string;
  /**
   * Milliseconds to wait for the owner to acknowledge a request before calling the sid unknown
   * (default 5000), plus a millisecond per {@link BODY_BYTES_PER_MS} characters of its body.
   */
  ackTimeout?: number;
  /** Milliseconds to wait for the owner's answer to a POST or WebSocket request once acknowledged. */
  replyTimeout?: number;
}

type Timer = ReturnType<typeof setTimeout>;

type Operation = "poll" | "post" | "ws";

type Message =
  | {
    k: "req";
    to: string;
    from: string;
    id: string;
    op: Operation;
    sid: string;
    body?: string | null;
  }
  | { k: "ack"; to: string; id: string }
  | { k: "res"; to: string; from: string; id: string; reply?: RelayReply; ok?: boolean }
  | { k: "got"; to: string; id: string }
  | { k: "frame"; to: string; id: string; n: number; data: string | Uint8Array }
  | { k: "close"; to: string; id: string; code: number; reason: string };

type Result = Extract<Message, { k: "res" }>;

interface Call {
  timer: Timer;
  replyTimeout: number;
  resolve(result: Result | null): void;
  /** Sends the request again until the owner acknowledges it. */
  resend?: Timer;
  acked?: boolean;
}

/** A request this isolate serves: its answer is sent again until the requester has it. */
interface Served {
  reply?: Result;
  resend?: Timer;
}

/**
 * First wait before a request or answer not yet confirmed is posted again (then doubling, plus a
 * millisecond per {@link BODY_BYTES_PER_MS} characters): Deno drops channel messages for an
 * isolate that falls behind, without a word to either side.
 */
const RESEND_MS = 250;

/** How long an answer is posted again for a requester that never confirms it (gone, or stuck). */
const RESEND_FOR_MS = 30_000;

/**
 * Characters of a relayed body the owner is given a millisecond for, beyond the ack timeout: a
 * 13 MB polling body takes most of a second to cross a BroadcastChannel on an idle machine, and
 * requests queued behind it on the owner's channel wait as long.
 */
export const BODY_BYTES_PER_MS = 2000;

/** Channels to other nodes kept open at once (isolates of a process are a handful). */
const MAX_PEER_CHANNELS = 32;

const NODE_PATTERN = /^p([0-9a-z]+)n[0-9a-f]{8}$/;

function randomHex(bytes: number): string {
  return crypto.getRandomValues(new Uint8Array(bytes)).toHex();
}

/**
 * A {@linkcode SessionRelay} over one `BroadcastChannel`, which Deno shares between the isolates
 * of a process (so between the workers of `deno serve --parallel`).
 */
export class BroadcastChannelRelay implements SessionRelay {
  /** This isolate's id: the process id and a random part. */
  readonly nodeId: string;
  #name: string;
  #ackTimeout: number;
  #replyTimeout: number;
  #channel: BroadcastChannel | null = null;
  /**
   * One channel per node written to, named after it: a message (a polling body, a WebSocket
   * frame of up to 64 MiB) is copied to its addressee only, not to every isolate.
   */
  #peers = new Map<string, BroadcastChannel>();
  #owner: RelayOwner | null = null;
  #seq = 0;
  #calls = new Map<string, Call>();
  #bridges = new Map<string, Bridge>();
  /** Requests of other isolates served here, by id, until their answer is confirmed. */
  #served = new Map<string, Served>();
  #closed = false;

  /** Creates a relay; it listens only once attached to an engine. */
  constructor(options: BroadcastChannelRelayOptions) {
    this.#name = options.name;
    // Long enough for the owner's channel to work through a few large bodies queued before this
    // request: a sid called unknown ends the client's session (and its upload may be stored).
    this.#ackTimeout = options.ackTimeout ?? 5000;
    this.#replyTimeout = options.replyTimeout ?? 30_000;
    this.nodeId = `p${Deno.pid.toString(36)}n${randomHex(4)}`;
  }

  /** Opens the channel and serves requests addressed to this node with `owner`. */
  attach(owner: RelayOwner): void {
    if (this.#closed || this.#channel) return;
    this.#owner = owner;
    this.#channel = new BroadcastChannel(`${this.#name}:${this.nodeId}`);
    this.#channel.onmessage = (event: MessageEvent<Message>) => this.#receive(event.data);
  }

  /** Forwards a GET and waits up to `timeout` ms after the owner's ack for its answer. */
  async poll(sid: string, timeout: number): Promise<RelayReply | null> {
    const result = await this.#call(sid, "poll", undefined, timeout);
    return result?.reply ?? null;
  }

  /** Forwards a POST body to the owner. */
  async post(sid: string, body: string | null): Promise<RelayReply | null> {
    const result = await this.#call(sid, "post", body, this.#replyTimeout);
    return result?.reply ?? null;
  }

  /** Asks the owner to take a WebSocket; the returned bridge carries its frames. */
  async openWebSocket(sid: string): Promise<FrameSocket | null> {
    const id = this.#nextId();
    // Registered before asking, so frames the owner sends right after accepting are not lost.
    const bridge = this.#bridge(id, nodeOfSid(sid) ?? "");
    const result = await this.#call(sid, "ws", undefined, this.#replyTimeout, id);
    if (result?.ok) return bridge;
    this.#bridges.delete(id);
    return null;
  }

  /** Closes every bridge, fails pending calls and leaves the channel. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const call of this.#calls.values()) {
      clearTimeout(call.timer);
      clearTimeout(call.resend);
      call.resolve(null);
    }
    this.#calls.clear();
    for (const served of this.#served.values()) clearTimeout(served.resend);
    this.#served.clear();
    for (const bridge of [...this.#bridges.values()]) bridge.close(1001, "relay closed");
    this.#bridges.clear();
    this.#owner = null;
    if (this.#channel) {
      // Let the close notices and the answers to polls ended by the shutdown leave first.
      await new Promise((resolve) => setTimeout(resolve, 0));
      this.#channel.close();
      this.#channel = null;
      for (const peer of this.#peers.values()) peer.close();
      this.#peers.clear();
    }
  }

  #send(message: Message): void {
    if (!this.#channel) return;
    let peer = this.#peers.get(message.to);
    if (!peer) {
      // Node ids come from sids a client sends: the oldest channel goes past a few dozen.
      if (this.#peers.size >= MAX_PEER_CHANNELS) {
        const [oldest, channel] = this.#peers.entries().next().value!;
        channel.close();
        this.#peers.delete(oldest);
      }
      peer = new BroadcastChannel(`${this.#name}:${message.to}`);
      this.#peers.set(message.to, peer);
    }
    peer.postMessage(message);
  }

  #bridge(id: string, peer: string): Bridge {
    const bridge = new Bridge(
      (message) => this.#send(message),
      () => this.#bridges.delete(id),
      id,
      peer,
    );
    this.#bridges.set(id, bridge);
    return bridge;
  }

  #nextId(): string {
    return `${this.nodeId}:${++this.#seq}`;
  }

  #reachable(node: string | null): node is string {
    if (node === null || node === this.nodeId) return false;
    const match = NODE_PATTERN.exec(node);
    // A sid minted by another process (a previous run) has no owner here: fail fast.
    return match !== null && match[1] === Deno.pid.toString(36);
  }

  #call(
    sid: string,
    op: Operation,
    body: string | null | undefined,
    replyTimeout: number,
    id = this.#nextId(),
  ): Promise<Result | null> {
    const to = nodeOfSid(sid);
    if (this.#closed || !this.#channel || !this.#reachable(to)) return Promise.resolve(null);
    return new Promise((resolve) => {
      const finish = (result: Result | null) => {
        const call = this.#calls.get(id);
        if (!call) return;
        clearTimeout(call.timer);
        clearTimeout(call.resend);
        this.#calls.delete(id);
        resolve(result);
      };
      const call: Call = {
        timer: setTimeout(
          () => finish(null),
          this.#ackTimeout + (body?.length ?? 0) / BODY_BYTES_PER_MS,
        ),
        replyTimeout,
        resolve: finish,
      };
      this.#calls.set(id, call);
      const message: Extract<Message, { k: "req" }> = {
        k: "req",
        to,
        from: this.nodeId,
        id,
        op,
        sid,
      };
      if (body !== undefined) message.body = body;
      this.#send(message);
      // The owner serves a request once, however many copies reach it.
      const resend = (wait: number) => {
        call.resend = setTimeout(() => {
          if (call.acked || this.#calls.get(id) !== call) return;
          this.#send(message);
          resend(wait * 2);
        }, wait);
      };
      resend(RESEND_MS + (body?.length ?? 0) / BODY_BYTES_PER_MS);
    });
  }

  #receive(message: Message): void {
    if (this.#closed || message.to !== this.nodeId) return;
    switch (message.k) {
      case "req":
        this.#serve(message);
        break;
      case "ack": {
        const call = this.#calls.get(message.id);
        // A repeated ack (for a repeated request) must not push the reply's deadline back.
        if (call && !call.acked) {
          call.acked = true;
          clearTimeout(call.resend);
          clearTimeout(call.timer);
          call.timer = setTimeout(() => call.resolve(null), call.replyTimeout);
        }
        break;
      }
      case "res":
        // Confirmed even when repeated or late, so that the owner stops sending it.
        this.#send({ k: "got", to: message.from, id: message.id });
        this.#calls.get(message.id)?.resolve(message);
        break;
      case "got": {
        const served = this.#served.get(message.id);
        if (served?.reply) {
          clearTimeout(served.resend);
          this.#served.delete(message.id);
        }
        break;
      }
      case "frame":
        this.#bridges.get(message.id)?.deliver(message.data, message.n);
        break;
      case "close":
        this.#bridges.get(message.id)?.closedByPeer(message.code, message.reason);
        break;
    }
  }

  /** Posts an answer, and again until the requester confirms it or {@link RESEND_FOR_MS} pass. */
  #answer(id: string, served: Served, result: Result): void {
    served.reply = result;
    this.#send(result);
    // Closing: sent once (a shutdown answers parked polls), while the channel is still open.
    if (this.#served.get(id) !== served) return;
    const until = performance.now() + RESEND_FOR_MS;
    const resend = (wait: number) => {
      served.resend = setTimeout(() => {
        if (this.#served.get(id) !== served) return;
        if (performance.now() >= until) {
          this.#served.delete(id);
          return;
        }
        this.#send(result);
        resend(wait * 2);
      }, wait);
    };
    resend(RESEND_MS + sizeOf(result) / BODY_BYTES_PER_MS);
  }

  #serve(request: Extract<Message, { k: "req" }>): void {
    const owner = this.#owner;
    if (!owner) return;
    const { from, id, sid } = request;
    this.#send({ k: "ack", to: from, id });
    // A copy of a request served already (its ack was lost): served once, its answer repeated.
    const known = this.#served.get(id);
    if (known) {
      if (known.reply) this.#send(known.reply);
      return;
    }
    const served: Served = {};
    this.#served.set(id, served);
    const answer = (reply: Omit<Result, "k" | "to" | "from" | "id">) =>
      this.#answer(id, served, { k: "res", to: from, from: this.nodeId, id, ...reply });
    switch (request.op) {
      case "poll":
        // Sent even while closing: a shutdown answers parked polls with a close packet, and the
        // channel stays open until those answers are out.
        owner.relayPoll(sid).then((reply) => answer({ reply }));
        break;
      case "post":
        answer({ reply: owner.relayPost(sid, request.body ?? null) });
        break;
      case "ws": {
        const bridge = this.#bridge(id, from);
        // Frames the owner writes while deciding are held until the answer has been posted.
        bridge.hold();
        const ok = owner.relayWebSocket(sid, bridge);
        answer({ ok });
        if (ok) {
          bridge.release();
        } else {
          this.#bridges.delete(id);
        }
        break;
      }
    }
  }
}

/** Characters of an answer as posted, for the wait before it is posted again. */
function sizeOf(result: Result): number {
  return result.reply?.body.length ?? 0;
}

/** One end of a WebSocket bridged between two isolates. */
class Bridge implements FrameSocket {
  onclose: ((code: number, reason: string) => void) | null = null;
  #onmessage: ((data: string | Uint8Array) => void) | null = null;
  // Frames that arrive before anyone listens (between the owner's answer and the piping).
  #inbox: (string | Uint8Array)[] = [];
  #post: (message: Message) => void;
  #forget: () => void;
  #id: string;
  #peer: string;
  #held: (string | Uint8Array)[] | null = null;
  #closed = false;
  /** Frames posted, and frames received, numbered from 1: a gap is a frame the channel dropped. */
  #sent = 0;
  #received = 0;

  constructor(post: (message: Message) => void, forget: () => void, id: string, peer: string) {
    this.#post = post;
    this.#forget = forget;
    this.#id = id;
    this.#peer = peer;
  }

  get onmessage(): ((data: string | Uint8Array) => void) | null {
    return this.#onmessage;
  }

  set onmessage(listener: ((data: string | Uint8Array) => void) | null) {
    this.#onmessage = listener;
    if (!listener) return;
    const inbox = this.#inbox;
    this.#inbox = [];
    for (const data of inbox) listener(data);
  }

  hold(): void {
    this.#held = [];
  }

  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const data of held) this.send(data);
  }

  send(data: string | Uint8Array): void {
    if (this.#closed) return;
    if (this.#held) {
      this.#held.push(data);
      return;
    }
    // Structured clone copies a view's whole buffer; copy just the bytes when the view is partial.
    const payload = typeof data === "string" || data.byteLength === data.buffer.byteLength
      ? data
      : data.slice();
    this.#post({ k: "frame", to: this.#peer, id: this.#id, n: ++this.#sent, data: payload });
  }

  close(code = 1000, reason = ""): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#forget();
    this.#post({ k: "close", to: this.#peer, id: this.#id, code, reason });
    queueMicrotask(() => this.#notifyClose(code, reason));
  }

  deliver(data: string | Uint8Array, n: number): void {
    if (this.#closed) return;
    // Deno drops channel messages for an isolate that falls behind (it keeps 256 for the whole
    // process) without a word: a stream with a hole must end, so that the client reconnects
    // rather than missing packets while it seems connected.
    if (n !== ++this.#received) {
      this.close(1011, "Frames were lost between isolates");
      return;
    }
    if (this.#onmessage) {
      this.#onmessage(data);
    } else {
      this.#inbox.push(data);
    }
  }

  closedByPeer(code: number, reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#forget();
    this.#notifyClose(code, reason);
  }

  #notifyClose(code: number, reason: string): void {
    const onclose = this.onclose;
    this.onclose = null;
    onclose?.(code, reason);
  }
}
