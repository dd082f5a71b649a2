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

import { TokenBuckets } from "../core/rate_limiter.ts";

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
  /** Bytes written and not yet sent to the peer, where the stream can tell (0 otherwise). */
  unsent?(): number;
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
  /**
   * Handles a POST body; `null` means the body exceeded maxPayload, `false` that it was not
   * UTF-8, and the session must close.
   */
  relayPost(sid: string, body: string | null | false): Promise<RelayReply>;
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
  /**
   * Forwards a POST body (null: too large, false: not UTF-8); resolves null when no isolate owns
   * the sid.
   */
  post(sid: string, body: string | null | false): Promise<RelayReply | null>;
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
    body?: string | null | false;
  }
  | { k: "ack"; to: string; id: string }
  | { k: "res"; to: string; from: string; id: string; reply?: RelayReply; ok?: boolean }
  | { k: "got"; to: string; id: string }
  | { k: "frame"; to: string; from: string; id: string; n: number; data: string | Uint8Array }
  | { k: "close"; to: string; from: string; id: string; n: number; code: number; reason: string }
  /** Everything up to `n` arrived; with `gap`, `n + 1` to `gap` are missing and later ones came. */
  | { k: "fack"; to: string; from: string; id: string; n: number; gap?: number }
  /** The bridge ended at once, whatever was lost before (see `Bridge.shutdown`). */
  | { k: "abort"; to: string; from: string; id: string; code: number; reason: string };

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
  /** The owner asked, and whether it was not yet heard from when asked (see `#unproven`). */
  to: string;
  unproven?: boolean;
}

/** A request this isolate serves: its answer is sent again until the requester has it. */
interface Served {
  reply?: Result;
  resend?: Timer;
}

/**
 * First wait before a request, answer or bridged frame not yet confirmed is posted again (then
 * doubling; a request or answer waits a millisecond more per {@link BODY_BYTES_PER_MS}
 * characters): Deno drops channel messages for an isolate that falls behind, without a word to
 * either side.
 */
const RESEND_MS = 250;

/** Why a bridge ended that its other isolate stopped confirming. */
const FRAMES_LOST = "Frames were lost between isolates";

/** How long a closing relay waits for its last answers to be confirmed. */
const CLOSE_CONFIRM_MS = 1000;

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
 * A {@linkcode SessionRelay} over `BroadcastChannel`s (one per isolate, and one where they greet
 * each other), which Deno shares between the isolates of a process (so between the workers of
 * `deno serve --parallel`).
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
   * One channel per node written to, named after it, so that only the addressee handles a
   * message (a polling body, a WebSocket frame of up to 64 MiB); Deno still queues every post in
   * every isolate of the process. Least recently used first.
   */
  #peers = new Map<string, BroadcastChannel>();
  #lastTo?: string;
  #owner: RelayOwner | null = null;
  /** Where the isolates greet each other (see `attach`). */
  #hello: BroadcastChannel | null = null;
  #seq = 0;
  #calls = new Map<string, Call>();
  #bridges = new Map<string, Bridge>();
  /** Requests of other isolates served here, by id, until their answer is confirmed. */
  #served = new Map<string, Served>();
  /** Bridges told they ended (see `#abortUnknown`), with when. */
  #aborted = new Map<string, number>();
  /** Aborts to be posted again (see `#abort`). */
  #abortTimers = new Set<Timer>();
  /** Per node, what its bridges may still post again (see `#mayResend`). */
  #resendBudgets = new TokenBuckets(
    RESEND_BUDGET * 1000 / RESEND_BUDGET_MS,
    RESEND_BUDGET,
    (tokens, at) => ({ tokens, at }),
  );
  /** Nodes heard from (they exist), and nodes that never acknowledged, with until when. */
  #known = new Set<string>();
  #silent = new Map<string, number>();
  /** Requests to nodes not yet heard from, waiting for an acknowledgement. */
  #unproven = 0;
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
    // The isolates of the process greet each other, so that each knows its siblings before a
    // request names one (requests to nodes never heard from are few at a time: see `#reachable`).
    const hello = new BroadcastChannel(`${this.#name}:*`);
    hello.onmessage = (event: MessageEvent<{ k?: unknown; from?: unknown; reply?: unknown }>) => {
      const { k, from, reply } = event.data ?? {};
      if (k !== "hello" || typeof from !== "string" || from === this.nodeId) return;
      this.#heardFrom(from);
      if (!reply) hello.postMessage({ k: "hello", from: this.nodeId, reply: true });
    };
    hello.postMessage({ k: "hello", from: this.nodeId });
    this.#hello = hello;
  }

  /** Forwards a GET and waits up to `timeout` ms after the owner's ack for its answer. */
  async poll(sid: string, timeout: number): Promise<RelayReply | null> {
    const result = await this.#call(sid, "poll", undefined, timeout);
    return result?.reply ?? null;
  }

  /** Forwards a POST body to the owner. */
  async post(sid: string, body: string | null | false): Promise<RelayReply | null> {
    const result = await this.#call(sid, "post", body, this.#replyTimeout);
    return result?.reply ?? null;
  }

  /** Asks the owner to take a WebSocket; the returned bridge carries its frames. */
  async openWebSocket(sid: string): Promise<FrameSocket | null> {
    if (this.#closed) return null;
    const id = this.#nextId();
    const owner = nodeOfSid(sid);
    // Registered before asking, so frames the owner sends right after accepting are not lost.
    const bridge = this.#bridge(id, owner ?? "");
    const result = await this.#call(sid, "ws", undefined, this.#replyTimeout, id);
    // Even closed by the owner already (its frames and close came before its answer was
    // handled): they are handed on once someone listens.
    if (result?.ok) return bridge;
    // No answer: the owner may have taken it, and must hear that nobody will use it.
    if (result === null && this.#reachable(owner)) {
      bridge.shutdown(1011, "Upgrade abandoned");
    } else bridge.aborted(1011, "Upgrade refused");
    return null;
  }

  /**
   * Closes every bridge, fails pending calls and leaves the channel. Answers to polls the
   * shutdown ended, and the last frames and closes of bridged sockets it closed, are posted
   * again until the other isolates confirm them, for a second at most.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const call of this.#calls.values()) {
      clearTimeout(call.timer);
      clearTimeout(call.resend);
      call.resolve(null);
    }
    this.#calls.clear();
    this.#owner = null;
    if (this.#channel) {
      // Let the answers to polls, and the closes of sockets, the shutdown ended leave first.
      await new Promise((resolve) => setTimeout(resolve, 0));
      for (const bridge of [...this.#bridges.values()]) {
        if (!bridge.closing) bridge.shutdown(1001, "relay closed");
      }
      const deadline = performance.now() + CLOSE_CONFIRM_MS;
      while (
        ([...this.#served.values()].some((served) => served.reply) || this.#bridges.size > 0) &&
        performance.now() < deadline
      ) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    for (const bridge of [...this.#bridges.values()]) bridge.shutdown(1001, "relay closed");
    this.#bridges.clear();
    if (this.#channel) {
      this.#channel.close();
      this.#channel = null;
      this.#hello?.close();
      this.#hello = null;
      for (const peer of this.#peers.values()) peer.close();
      this.#peers.clear();
    }
    for (const served of this.#served.values()) clearTimeout(served.resend);
    this.#served.clear();
    for (const timer of this.#abortTimers) clearTimeout(timer);
    this.#abortTimers.clear();
  }

  #send(message: Message): void {
    if (!this.#channel) return;
    let peer = this.#peers.get(message.to);
    if (peer) {
      // Kept in order of last use; the last one used is at the end already.
      if (message.to !== this.#lastTo) {
        this.#peers.delete(message.to);
        this.#peers.set(message.to, peer);
      }
    } else {
      // Node ids come from sids a client sends: the least used channel goes past a few dozen.
      if (this.#peers.size >= MAX_PEER_CHANNELS) {
        const [oldest, channel] = this.#peers.entries().next().value!;
        channel.close();
        this.#peers.delete(oldest);
      }
      peer = new BroadcastChannel(`${this.#name}:${message.to}`);
      this.#peers.set(message.to, peer);
    }
    this.#lastTo = message.to;
    peer.postMessage(message);
  }

  #bridge(id: string, peer: string): Bridge {
    const bridge = new Bridge(
      (message) => this.#send(message),
      () => {
        if (this.#bridges.get(id) === bridge) this.#bridges.delete(id);
      },
      { id, peer, self: this.nodeId, giveUpMs: this.#giveUpMs },
      { mayResend: () => this.#mayResend(peer), abort: (message) => this.#abort(message) },
    );
    this.#bridges.set(id, bridge);
    return bridge;
  }

  #nextId(): string {
    return `${this.nodeId}:${++this.#seq}`;
  }

  /** Takes one message from the budget of what may be posted again to `peer` now. */
  #mayResend(peer: string): boolean {
    return this.#resendBudgets.take(peer, 1, performance.now()) === 1;
  }

  /**
   * Posts an abort now and again a little later: a quiet peer sends nothing that an abort for
   * an unknown bridge would answer, and would stay open until its heartbeat.
   */
  #abort(message: Message): void {
    this.#send(message);
    for (const wait of ABORT_AGAIN_MS) {
      const timer = setTimeout(() => {
        this.#abortTimers.delete(timer);
        this.#send(message);
      }, wait);
      this.#abortTimers.add(timer);
    }
  }

  /** Notes that `node` exists (it posted to this one, or acknowledged a request). */
  #heardFrom(node: string): void {
    // A known node is never taken for gone (see `#call`): nothing to do on the hot path.
    if (this.#known.has(node)) return;
    this.#silent.delete(node);
    if (this.#known.size >= 1000) this.#known.clear();
    this.#known.add(node);
  }

  #reachable(node: string | null): node is string {
    if (node === null || node === this.nodeId) return false;
    const match = NODE_PATTERN.exec(node);
    // A sid minted by another process (a previous run) has no owner here: fail fast. So does
    // one of a node that never acknowledged (gone, or made up).
    if (match === null || match[1] !== Deno.pid.toString(36)) return false;
    if (this.#known.has(node)) return true;
    const silent = this.#silent.get(node);
    if (silent !== undefined && performance.now() < silent) return false;
    return this.#unproven < MAX_UNPROVEN_CALLS;
  }

  #call(
    sid: string,
    op: Operation,
    body: string | null | false | undefined,
    replyTimeout: number,
    id = this.#nextId(),
  ): Promise<Result | null> {
    const to = nodeOfSid(sid);
    if (this.#closed || !this.#channel || !this.#reachable(to)) return Promise.resolve(null);
    return new Promise((resolve) => {
      const unproven = !this.#known.has(to);
      if (unproven) this.#unproven++;
      const finish = (result: Result | null) => {
        const call = this.#calls.get(id);
        if (!call) return;
        clearTimeout(call.timer);
        clearTimeout(call.resend);
        this.#calls.delete(id);
        if (call.unproven) {
          this.#unproven--;
          // Never acknowledged: taken for gone a while, so that its sids fail at once.
          if (result === null && !this.#closed && !this.#known.has(to)) {
            if (this.#silent.size >= 1000) this.#silent.clear();
            this.#silent.set(to, performance.now() + SILENT_NODE_MS);
          }
        }
        resolve(result);
      };
      const call: Call = {
        timer: setTimeout(
          () => finish(null),
          this.#ackTimeout + (body ? body.length : 0) / BODY_BYTES_PER_MS,
        ),
        replyTimeout,
        resolve: finish,
        to,
        unproven,
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
      resend(RESEND_MS + (body ? body.length : 0) / BODY_BYTES_PER_MS);
    });
  }

  #receive(message: Message): void {
    // Closing, it takes no more requests, but still confirms and ends what it is told of (the
    // other isolates may be closing too, and wait for that).
    if (message.to !== this.nodeId || (this.#closed && message.k === "req")) return;
    if ("from" in message) this.#heardFrom(message.from);
    switch (message.k) {
      case "req":
        this.#serve(message);
        break;
      case "ack": {
        const call = this.#calls.get(message.id);
        // A repeated ack (for a repeated request) must not push the reply's deadline back.
        if (call && !call.acked) {
          call.acked = true;
          if (call.unproven) {
            call.unproven = false;
            this.#unproven--;
          }
          this.#heardFrom(call.to);
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
          this.#send({
            k: "fack",
            to: message.from,
            from: this.nodeId,
            id: message.id,
            n: message.n,
          });
        } else {
          this.#abortUnknown(message);
        }
        break;
      }
      case "fack": {
        const bridge = this.#bridges.get(message.id);
        if (bridge) bridge.acked(message.n, message.gap);
        else this.#abortUnknown(message);
        break;
      }
      case "abort":
        this.#bridges.get(message.id)?.aborted(message.code, message.reason);
        break;
    }
  }

  /** Posts an answer, and again until the requester confirms it or {@link RESEND_FOR_MS} pass. */
  #answer(id: string, served: Served, result: Result): void {
    served.reply = result;
    this.#send(result);
    // Confirmed already, or the relay closed for good: sent this once.
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

  /**
   * Tells a peer still sending for a bridge that ended here (its abort lost) that it is over;
   * once per bridge and second at most.
   */
  #abortUnknown(message: { from: string; id: string }): void {
    const now = performance.now();
    if (now - (this.#aborted.get(message.id) ?? -Infinity) < 1000) return;
    if (this.#aborted.size >= 1000) this.#aborted.clear();
    this.#aborted.set(message.id, now);
    this.#send({
      k: "abort",
      to: message.from,
      from: this.nodeId,
      id: message.id,
      code: 1011,
      reason: FRAMES_LOST,
    });
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
        // Sent even while closing: a shutdown answers parked polls (with a noop), and the
        // channel stays open until those answers are out.
        owner.relayPoll(sid).then((reply) => answer({ reply }));
        break;
      case "post":
        owner.relayPost(sid, request.body ?? null).then((reply) => answer({ reply }));
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
  /** When it was last posted again (not when first posted): a resend is not repeated at once. */
  resentAt: number;
}

/** How long a bridge waits before confirming what it received (one confirmation for a burst). */
const CONFIRM_DELAY_MS = 20;

/** Bytes a bridge holds unconfirmed, or received past a hole, before it ends: above a 64 MiB frame. */
const MAX_HELD_BYTES = 80 * 1024 * 1024;

/** What a held frame costs beyond its payload, for that bound (small frames are mostly this). */
const HELD_OVERHEAD_BYTES = 256;

/**
 * Messages, and bytes, one bridge posts again at once: Deno keeps 256 messages for each isolate,
 * and a resend that overflows them makes the losses it repairs.
 */
const RESEND_COUNT = 64;
const RESEND_BYTES = 4 * 1024 * 1024;

/**
 * Messages every bridge to one isolate together may post again per {@link RESEND_BUDGET_MS}:
 * Deno queues every post in every isolate of the process (256 each, whatever the channel's
 * name), so resends beyond what the lagging isolate reads make the losses they repair.
 */
const RESEND_BUDGET = 128;
const RESEND_BUDGET_MS = 100;

/** When an abort is posted again after the first (see `BroadcastChannelRelay.#abort`). */
const ABORT_AGAIN_MS = [300, 1200];

/** How long a node that never acknowledged a request is taken for gone. */
const SILENT_NODE_MS = 30_000;

/**
 * Requests to nodes not yet heard from that may wait for an acknowledgement at once: node ids
 * come from sids a client sends, and each such request is posted several times.
 */
const MAX_UNPROVEN_CALLS = 32;

/** Longest wait between attempts to post unconfirmed frames again. */
const MAX_RESEND_MS = 2000;

/**
 * A wait spread over ±25%: bridges that lost their frames together must not post them again
 * together, round after round.
 */
function jittered(ms: number): number {
  return ms * (0.75 + Math.random() / 2);
}

function frameSize(message: Numbered): number {
  if (message.k === "close") return HELD_OVERHEAD_BYTES;
  const data = message.data;
  return HELD_OVERHEAD_BYTES + (typeof data === "string" ? data.length : data.byteLength);
}

/**
 * One end of a WebSocket bridged between two isolates. Deno drops channel messages for an
 * isolate that falls behind without a word, so frames and the close are numbered, confirmed by
 * the peer, and posted again until they are: the peer hands them on once and in order, holding
 * those that arrive past a hole, and names the first hole so that it is posted again at once. A
 * bridge whose peer confirms nothing new for a while ends, with an abort the peer applies at once
 * (it is not numbered, so nothing lost before it holds it back).
 */
class Bridge implements FrameSocket {
  #onclose: ((code: number, reason: string) => void) | null = null;
  #onmessage: ((data: string | Uint8Array) => void) | null = null;
  // Frames, and the close, that arrive before anyone listens (between the owner's answer and
  // the piping; the owner's frames may come before its answer is handled).
  #inbox: (string | Uint8Array)[] = [];
  #closedUnheard?: { code: number; reason: string };
  #post: (message: Message) => void;
  #forget: () => void;
  #id: string;
  #peer: string;
  #self: string;
  #giveUpMs: number;
  #link: { mayResend: () => boolean; abort: (message: Message) => void };
  /** Frames, then perhaps the close, written while the owner decides (see `hold`). */
  #held: (string | Uint8Array)[] | null = null;
  #heldClose?: { code: number; reason: string };
  /** Closed for this side: nothing more is sent or handed on. */
  #closed = false;
  /** Forgotten by the relay: timers stopped, nothing more posted. */
  #ended = false;
  /** Numbers given to frames and the close posted, and the highest handed on in order, from 1. */
  #sent = 0;
  #received = 0;
  #unconfirmed: Unconfirmed[] = [];
  #unconfirmedBytes = 0;
  /** Frames (or the close) received past a hole, by number, and the lowest of those numbers. */
  #early = new Map<number, Numbered>();
  #earlyBytes = 0;
  #earlyMin = Infinity;
  #confirmTimer?: Timer;
  #resendTimer?: Timer;
  #resendWait = RESEND_MS;
  /** When the peer last confirmed something new (or a frame went out with nothing unconfirmed). */
  #progressAt = 0;
  /** The last hole named to the peer: the end of the batch it posts again for it, and when. */
  #gapTold = { until: 0, at: -Infinity };

  constructor(
    post: (message: Message) => void,
    forget: () => void,
    ids: { id: string; peer: string; self: string; giveUpMs: number },
    link: {
      /** Whether one more message may be posted again to the peer now (see `#mayResend`). */
      mayResend: () => boolean;
      /** Posts an abort, and again a little later in case the channel drops it. */
      abort: (message: Message) => void;
    },
  ) {
    this.#post = post;
    this.#forget = forget;
    this.#id = ids.id;
    this.#peer = ids.peer;
    this.#self = ids.self;
    this.#giveUpMs = ids.giveUpMs;
    this.#link = link;
  }

  /** True while this side has closed and waits for the peer to confirm its last frames. */
  get closing(): boolean {
    return this.#closed && !this.#ended;
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

  get onclose(): ((code: number, reason: string) => void) | null {
    return this.#onclose;
  }

  set onclose(listener: ((code: number, reason: string) => void) | null) {
    this.#onclose = listener;
    const unheard = this.#closedUnheard;
    if (!listener || !unheard) return;
    this.#closedUnheard = undefined;
    this.#notifyClose(unheard.code, unheard.reason);
  }

  hold(): void {
    this.#held = [];
  }

  /** Posts what was written while held: its frames, then its close. */
  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const data of held) this.#sendNow(data);
    const close = this.#heldClose;
    this.#heldClose = undefined;
    if (close) this.#postNumbered(this.#closeMessage(close.code, close.reason));
  }

  send(data: string | Uint8Array): void {
    if (this.#closed) return;
    if (this.#held) {
      this.#held.push(data);
      return;
    }
    this.#sendNow(data);
  }

  #sendNow(data: string | Uint8Array): void {
    // Structured clone copies a view's whole buffer; copy just the bytes when the view is partial.
    const payload = typeof data === "string" || data.byteLength === data.buffer.byteLength
      ? data
      : data.slice();
    this.#postNumbered({
      k: "frame",
      to: this.#peer,
      from: this.#self,
      id: this.#id,
      n: ++this.#sent,
      data: payload,
    });
  }

  /** Closes this side; the close reaches the peer after every frame sent before it. */
  close(code = 1000, reason = ""): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#held) this.#heldClose = { code, reason };
    else this.#postNumbered(this.#closeMessage(code, reason));
    queueMicrotask(() => this.#notifyClose(code, reason));
  }

  /**
   * Ends both sides at once (the relay stops, or the peer stopped confirming): the peer is told
   * with an abort, which nothing lost before it holds back.
   */
  shutdown(code: number, reason: string): void {
    if (this.#ended) return;
    this.#link.abort({ k: "abort", to: this.#peer, from: this.#self, id: this.#id, code, reason });
    this.aborted(code, reason);
  }

  /** The peer ended the bridge at once (see `shutdown`). */
  aborted(code: number, reason: string): void {
    if (!this.#closed) {
      this.#closed = true;
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
      this.#earlyMin = Math.min(this.#earlyMin, n);
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
    if (this.#earlyMin <= this.#received) {
      // The lowest held was handed on: found again once per hole filled, not per frame.
      this.#earlyMin = Infinity;
      for (const k of this.#early.keys()) this.#earlyMin = Math.min(this.#earlyMin, k);
    }
    this.#tellGap();
  }

  /**
   * The peer has everything up to `n`; with `gap`, it misses `n + 1` to `gap`: the first
   * {@link RESEND_COUNT} of those are posted again now, unless just posted again.
   */
  acked(n: number, gap?: number): void {
    let count = 0;
    while (count < this.#unconfirmed.length && this.#unconfirmed[count].message.n <= n) {
      this.#unconfirmedBytes -= this.#unconfirmed[count++].size;
    }
    if (gap !== undefined && !this.#ended) {
      this.#resendFrom(count, performance.now(), (item) => item.message.n <= gap);
    }
    if (count === 0) return;
    this.#unconfirmed.splice(0, count);
    this.#progressAt = performance.now();
    this.#resendWait = RESEND_MS;
    if (this.#unconfirmed.length > 0) return;
    clearTimeout(this.#resendTimer);
    this.#resendTimer = undefined;
    // Our close is confirmed: nothing more to do.
    if (this.#closed && this.#held === null) this.#end();
  }

  /**
   * Names the first hole to the peer at once, so that it posts it again without waiting: once per
   * batch it posts again (a long hole takes several), and again if one does not come.
   */
  #tellGap(): void {
    if (this.#ended || this.#early.size === 0) return;
    const now = performance.now();
    // The batch posted again for the hole last named is still on its way.
    if (this.#received < this.#gapTold.until && now - this.#gapTold.at < RESEND_MS) return;
    const until = Math.min(this.#earlyMin - 1, this.#received + RESEND_COUNT);
    this.#gapTold = { until, at: now };
    this.#confirmNow(this.#earlyMin - 1);
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
      // The peer's side is gone: what this side still had for it no longer matters (`#end`).
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
    if (this.#unconfirmed.length === 0) this.#progressAt = performance.now();
    this.#unconfirmed.push({ message, size, resentAt: -Infinity });
    this.#unconfirmedBytes += size;
    this.#post(message);
    if (this.#unconfirmedBytes > MAX_HELD_BYTES + size) {
      this.#fail();
      return;
    }
    this.#resendTimer ??= setTimeout(() => this.#resend(), jittered(this.#resendWait));
  }

  /**
   * Posts again, from position `from` of the unconfirmed, those `wanted` says, oldest first, at
   * most {@link RESEND_COUNT} and {@link RESEND_BYTES}; one posted again within half a resend
   * wait is still on its way.
   */
  #resendFrom(from: number, now: number, wanted: (item: Unconfirmed) => boolean): void {
    let count = 0;
    let bytes = 0;
    for (let i = from; i < this.#unconfirmed.length; i++) {
      const item = this.#unconfirmed[i];
      if (!wanted(item) || count >= RESEND_COUNT || bytes > RESEND_BYTES) break;
      if (now - item.resentAt < RESEND_MS / 2) continue;
      // The peer's other bridges are owed their turn too.
      if (!this.#link.mayResend()) break;
      this.#post(item.message);
      item.resentAt = now;
      count++;
      bytes += item.size;
    }
  }

  /**
   * Posts again the oldest frames the peer has not confirmed for a resend wait: the peer confirms
   * in order, so the first of them is what it misses (the hole it would name, were its word lost).
   */
  #resend(): void {
    this.#resendTimer = undefined;
    if (this.#ended || this.#unconfirmed.length === 0) return;
    const now = performance.now();
    if (now - this.#progressAt > this.#giveUpMs) {
      this.#fail();
      return;
    }
    if (now - this.#progressAt >= this.#resendWait) {
      this.#resendFrom(0, now, () => true);
      this.#resendWait = Math.min(this.#resendWait * 2, MAX_RESEND_MS);
    }
    this.#resendTimer = setTimeout(() => this.#resend(), jittered(this.#resendWait));
  }

  #confirmSoon(): void {
    this.#confirmTimer ??= setTimeout(() => this.#confirmNow(), CONFIRM_DELAY_MS);
  }

  /** Confirms what arrived in order, naming the first hole (its last missing number) if given. */
  #confirmNow(gap?: number): void {
    clearTimeout(this.#confirmTimer);
    this.#confirmTimer = undefined;
    const fack: Message = {
      k: "fack",
      to: this.#peer,
      from: this.#self,
      id: this.#id,
      n: this.#received,
    };
    if (gap !== undefined) fack.gap = gap;
    this.#post(fack);
  }

  /** The peer stopped confirming, or fell too far behind: both sides end, the client reconnects. */
  #fail(): void {
    this.shutdown(1011, FRAMES_LOST);
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
    const onclose = this.#onclose;
    this.#onclose = null;
    if (onclose) onclose(code, reason);
    else this.#closedUnheard = { code, reason };
  }
}
