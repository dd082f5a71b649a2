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
  /**
   * Milliseconds a bridged WebSocket waits for the other isolate to confirm anything new before
   * it ends (default 10000).
   */
  giveUpMs?: number;
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
  | { k: "close"; to: string; from: string; id: string; n: number; code: number; reason: string }
  /** Everything up to `n` arrived; with `gap`, `n + 1` to `gap` are missing and later ones came. */
  | { k: "fack"; to: string; id: string; n: number; gap?: number };

/** What a bridge numbers: its frames, then its close. */
type Numbered = Extract<Message, { k: "frame" | "close" }>;

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
  #giveUpMs: number;
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
    this.#giveUpMs = options.giveUpMs ?? 10_000;
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
    for (const bridge of [...this.#bridges.values()]) bridge.shutdown(1001, "relay closed");
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
      () => {
        if (this.#bridges.get(id) === bridge) this.#bridges.delete(id);
      },
      { id, peer, self: this.nodeId, giveUpMs: this.#giveUpMs },
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
      case "close": {
        const bridge = this.#bridges.get(message.id);
        if (bridge) {
          bridge.receive(message);
        } else if (message.k === "close") {
          // Ended here already: the peer only needs to hear that its close arrived.
          this.#send({ k: "fack", to: message.from, id: message.id, n: message.n });
        }
        break;
      }
      case "fack":
        this.#bridges.get(message.id)?.acked(message.n, message.gap);
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

/** A frame, or the close, posted and not yet confirmed by the peer. */
interface Unconfirmed {
  message: Numbered;
  size: number;
  postedAt: number;
}

/** How long a bridge waits before confirming what it received (one confirmation for a burst). */
const CONFIRM_DELAY_MS = 20;

/** Bytes a bridge holds unconfirmed, or received past a hole, before it ends: above a 64 MiB frame. */
const MAX_HELD_BYTES = 80 * 1024 * 1024;

/** Bytes posted again per attempt, so that a long run of lost frames is not copied at once. */
const RESEND_BYTES = 4 * 1024 * 1024;

/** Longest wait between attempts to post unconfirmed frames again. */
const MAX_RESEND_MS = 2000;

function frameSize(message: Numbered): number {
  if (message.k === "close") return 0;
  return typeof message.data === "string" ? message.data.length : message.data.byteLength;
}

/**
 * One end of a WebSocket bridged between two isolates. Deno drops channel messages for an
 * isolate that falls behind without a word, so frames and the close are numbered, confirmed by
 * the peer, and posted again until they are: the peer hands them on once and in order, holding
 * those that arrive past a hole. A bridge whose peer confirms nothing new for a while ends.
 */
class Bridge implements FrameSocket {
  onclose: ((code: number, reason: string) => void) | null = null;
  #onmessage: ((data: string | Uint8Array) => void) | null = null;
  // Frames that arrive before anyone listens (between the owner's answer and the piping).
  #inbox: (string | Uint8Array)[] = [];
  #post: (message: Message) => void;
  #forget: () => void;
  #id: string;
  #peer: string;
  #self: string;
  #giveUpMs: number;
  #held: (string | Uint8Array)[] | null = null;
  /** Closed for this side: nothing more is sent or handed on. */
  #closed = false;
  /** Forgotten by the relay: timers stopped, nothing more posted. */
  #ended = false;
  /** Numbers given to frames and the close posted, and the highest handed on in order, from 1. */
  #sent = 0;
  #received = 0;
  #unconfirmed: Unconfirmed[] = [];
  #unconfirmedBytes = 0;
  /** Frames (or the close) received past a hole, by number. */
  #early = new Map<number, Numbered>();
  #earlyBytes = 0;
  #confirmTimer?: Timer;
  #resendTimer?: Timer;
  #resendWait = RESEND_MS;
  /** When the peer last confirmed something new (or the first frame went out). */
  #progressAt = 0;
  /** The hole last told to the peer (its last missing number), and when. */
  #gapTold = { until: 0, at: -Infinity };

  constructor(
    post: (message: Message) => void,
    forget: () => void,
    ids: { id: string; peer: string; self: string; giveUpMs: number },
  ) {
    this.#post = post;
    this.#forget = forget;
    this.#id = ids.id;
    this.#peer = ids.peer;
    this.#self = ids.self;
    this.#giveUpMs = ids.giveUpMs;
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
    this.#postNumbered({
      k: "frame",
      to: this.#peer,
      id: this.#id,
      n: ++this.#sent,
      data: payload,
    });
  }

  /** Closes this side; the close reaches the peer after every frame sent before it. */
  close(code = 1000, reason = ""): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#postNumbered(this.#closeMessage(code, reason));
    queueMicrotask(() => this.#notifyClose(code, reason));
  }

  /** Closes at once, telling the peer without waiting for its confirmation (the relay stops). */
  shutdown(code: number, reason: string): void {
    if (!this.#closed) {
      this.#closed = true;
      this.#post(this.#closeMessage(code, reason));
      queueMicrotask(() => this.#notifyClose(code, reason));
    }
    this.#end();
  }

  /** Takes a numbered frame or close from the peer: handed on once, in order. */
  receive(message: Numbered): void {
    if (this.#ended) return;
    const n = message.n;
    this.#confirmSoon();
    if (n <= this.#received || this.#early.has(n)) return; // posted again
    if (n !== this.#received + 1) {
      this.#early.set(n, message);
      this.#earlyBytes += frameSize(message);
      if (this.#earlyBytes > MAX_HELD_BYTES) this.#fail();
      else this.#tellGap();
      return;
    }
    this.#take(message);
    let next: Numbered | undefined;
    while (!this.#ended && (next = this.#early.get(this.#received + 1))) {
      this.#early.delete(next.n);
      this.#earlyBytes -= frameSize(next);
      this.#take(next);
    }
    this.#tellGap();
  }

  /**
   * Tells the peer at once of the first hole among what arrived, so that it posts the missing
   * frames again without waiting: once per hole (a hole filling up is the same hole), again if it
   * stays open.
   */
  #tellGap(): void {
    if (this.#ended || this.#early.size === 0) return;
    let next = Infinity;
    for (const n of this.#early.keys()) next = Math.min(next, n);
    const until = next - 1;
    const now = performance.now();
    if (this.#gapTold.until === until && now - this.#gapTold.at < RESEND_MS) return;
    this.#gapTold = { until, at: now };
    clearTimeout(this.#confirmTimer);
    this.#confirmTimer = undefined;
    this.#post({ k: "fack", to: this.#peer, id: this.#id, n: this.#received, gap: until });
  }

  /** The peer has everything up to `n`; with `gap`, it misses `n + 1` to `gap`, posted again now. */
  acked(n: number, gap?: number): void {
    let count = 0;
    while (count < this.#unconfirmed.length && this.#unconfirmed[count].message.n <= n) {
      this.#unconfirmedBytes -= this.#unconfirmed[count++].size;
    }
    if (gap !== undefined && !this.#ended) {
      const now = performance.now();
      let bytes = 0;
      for (let i = count; i < this.#unconfirmed.length && bytes <= RESEND_BYTES; i++) {
        const item = this.#unconfirmed[i];
        if (item.message.n > gap) break;
        // Posted again just now, for an earlier word of the same hole: still on its way.
        if (now - item.postedAt < RESEND_MS / 2) continue;
        this.#post(item.message);
        item.postedAt = now;
        bytes += item.size;
      }
    }
    if (count === 0) return;
    this.#unconfirmed.splice(0, count);
    this.#progressAt = performance.now();
    this.#resendWait = RESEND_MS;
    if (this.#unconfirmed.length > 0) return;
    clearTimeout(this.#resendTimer);
    this.#resendTimer = undefined;
    // Our close is confirmed: nothing more to do.
    if (this.#closed) this.#end();
  }

  #closeMessage(code: number, reason: string): Numbered {
    return {
      k: "close",
      to: this.#peer,
      from: this.#self,
      id: this.#id,
      n: ++this.#sent,
      code,
      reason,
    };
  }

  #take(message: Numbered): void {
    this.#received = message.n;
    if (message.k === "close") {
      // The peer's side is gone: what this side still had for it no longer matters.
      this.#unconfirmed = [];
      this.#unconfirmedBytes = 0;
      if (!this.#closed) {
        this.#closed = true;
        this.#notifyClose(message.code, message.reason);
      }
      this.#confirmNow();
      this.#end();
      return;
    }
    if (this.#closed) return;
    if (this.#onmessage) {
      this.#onmessage(message.data);
    } else {
      this.#inbox.push(message.data);
    }
  }

  #postNumbered(message: Numbered): void {
    if (this.#ended) return;
    const size = frameSize(message);
    const now = performance.now();
    if (this.#unconfirmed.length === 0) this.#progressAt = now;
    this.#unconfirmed.push({ message, size, postedAt: now });
    this.#unconfirmedBytes += size;
    this.#post(message);
    if (this.#unconfirmedBytes > MAX_HELD_BYTES + size) {
      this.#fail();
      return;
    }
    this.#resendTimer ??= setTimeout(() => this.#resend(), this.#resendWait);
  }

  /** Posts again what the peer has not confirmed for a while, oldest first. */
  #resend(): void {
    this.#resendTimer = undefined;
    if (this.#ended || this.#unconfirmed.length === 0) return;
    const now = performance.now();
    if (now - this.#progressAt > this.#giveUpMs) {
      this.#fail();
      return;
    }
    let bytes = 0;
    for (const item of this.#unconfirmed) {
      if (now - item.postedAt < this.#resendWait || bytes > RESEND_BYTES) break;
      this.#post(item.message);
      item.postedAt = now;
      bytes += item.size;
    }
    this.#resendWait = Math.min(this.#resendWait * 2, MAX_RESEND_MS);
    this.#resendTimer = setTimeout(() => this.#resend(), this.#resendWait);
  }

  #confirmSoon(): void {
    this.#confirmTimer ??= setTimeout(() => this.#confirmNow(), CONFIRM_DELAY_MS);
  }

  #confirmNow(): void {
    clearTimeout(this.#confirmTimer);
    this.#confirmTimer = undefined;
    this.#post({ k: "fack", to: this.#peer, id: this.#id, n: this.#received });
  }

  /** The peer stopped confirming, or fell too far behind: both sides end, the client reconnects. */
  #fail(): void {
    this.shutdown(1011, "Frames were lost between isolates");
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#resendTimer);
    clearTimeout(this.#confirmTimer);
    this.#unconfirmed = [];
    this.#early.clear();
    this.#forget();
  }

  #notifyClose(code: number, reason: string): void {
    const onclose = this.onclose;
    this.onclose = null;
    onclose?.(code, reason);
  }
}
