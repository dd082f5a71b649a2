/** The WebSocket transport: upgrade, frame size cap, slow-consumer guard, one-shot cleanup. */

import type { RateVerdict } from "../core/rate_limiter.ts";
import { ChatError, frameTooLarge } from "../core/errors.ts";
import type { Metrics } from "../core/metrics.ts";
import { utf8Length } from "../core/text.ts";
import { pollUntil, timerDelay } from "../core/time.ts";
import type { FrameBudget, FrameHolder } from "./frame_budget.ts";
import { QuietClose } from "./close_when_quiet.ts";
import { fixHeartbeat } from "./deno_heartbeat.ts";

/** Close codes the transport itself uses. */
export const CLOSE = {
  /** Server going away (shutdown); clients should reconnect. */
  goingAway: 1001,
  /** More received data waiting to be handled than the socket may hold (a flood of large frames). */
  tooMuchQueued: 1008,
  /** A frame over the size limit. */
  tooBig: 1009,
  /** The server failed to set the socket up (a store error); clients may reconnect. */
  internalError: 1011,
  /** The client could not keep up with the room; it should reconnect and recover by seq. */
  slowConsumer: 4008,
  /** The client kept flooding after being told to slow down (`admit` said `close`). */
  rateLimited: 4029,
} as const;

/** The reason Deno closes a socket with when the peer did not answer its heartbeat ping. */
const PING_TIMEOUT_REASON = "No response from ping frame.";

/** Settings of one socket. */
export interface SocketOptions {
  /** Protocol name for metrics. */
  protocol: string;
  /** Largest inbound frame in characters (text) or bytes (binary). */
  maxFrameSize: number;
  /**
   * Most frame bytes (counted like `maxFrameSize`) a socket may have received and not yet
   * handled, the frame being handled included; a frame past it is refused like one over the size
   * limit, but with 1008. A frame that arrives while nothing is queued is always taken. Unbounded
   * when absent.
   */
  maxQueuedBytes?: number;
  /** Seconds of silence before Deno pings; a peer that does not answer is closed. */
  idleTimeout: number;
  /** Outbound buffer above which the socket counts as a slow consumer. */
  maxBufferedBytes: number;
  /** Subprotocol to answer with. */
  subprotocol?: string;
  /** Counters. */
  metrics: Metrics;
  /** Every connection of the isolate open or still handling frames it received, for shutdown. */
  registry?: Set<Connection>;
  /** Bounds what the runtime keeps for sockets' large frames (see frame_budget.ts). */
  frames?: FrameBudget;
}

/**
 * How long after this side's close a socket whose peer never answered it stops counting for its
 * user, ms: two heartbeat periods (a minute without a heartbeat).
 */
export function goneAfterMs(idleTimeoutSeconds: number): number {
  return timerDelay((idleTimeoutSeconds > 0 ? 2 * idleTimeoutSeconds : 60) * 1000);
}

/**
 * How long a writer pacing itself (see `Connection.drained`) waits for the socket to drain, ms:
 * a peer that takes longer to read a quarter of its slow-consumer bound is a slow consumer.
 */
const DRAIN_TIMEOUT_MS = 30_000;

/** How a frame's slow part ended: its value, or what it threw. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * Finishes a socket may owe before its next frame waits for all of them: a client sending faster
 * than commits complete has at most this many sends queued ahead of their replies.
 */
const MAX_OWED_FINISHES = 64;

/** What a dialect does with a socket. */
export interface SocketHandler {
  /** The socket is open. */
  open(conn: Connection): void | Promise<void>;
  /**
   * A text frame arrived (binary frames are decoded as UTF-8); also called, after `closed`, for
   * the frames the peer sent before it closed, with `conn.open` false then.
   */
  message(conn: Connection, text: string): void | Promise<void>;
  /**
   * Called as each text frame arrives, before it waits its turn behind slower ones: the rate
   * limit's verdict on it. `close` closes the socket with 4029 when the frame's turn comes
   * (after the replies owed for the frames before it); `limited` is the handler's to refuse in
   * its protocol's shape, which `conn.admission` tells it while it handles the frame. A limit counted
   * as frames are reached instead would take a burst after a stall (a slow commit, a directory
   * that does not answer) for a flood.
   */
  admit?(conn: Connection, text: string): RateVerdict;
  /** The socket is gone, whoever closed it; called exactly once. */
  closed(conn: Connection): void;
  /**
   * A frame was refused (too large, or too much queued) and the socket is about to close:
   * the last chance to tell the client why, in its protocol's own error shape.
   */
  refused?(conn: Connection, error: ChatError): void;
}

// Bytes that are not UTF-8 are no JSON text: a lenient decoder would store them as U+FFFD.
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A binary frame's text; not UTF-8, it is handed on as text no JSON parser takes. */
function binaryText(data: ArrayBuffer): string {
  try {
    return decoder.decode(data);
  } catch {
    return "";
  }
}

/**
 * One socket. Cleanup runs once, as soon as either side closes: Deno can leave a socket the
 * server closed in CLOSING for long, so nothing waits for its close event.
 */
export class Connection implements FrameHolder {
  #socket: WebSocket;
  #options: SocketOptions;
  #handler: SocketHandler;
  #done = false;
  /** This side closed the socket: frames received before are dropped, not handled. */
  #stopped = false;
  #counted = false;
  /** Frames written since `bufferedAmount` was last read. */
  #sinceCheck = 0;
  /** Bytes written since `bufferedAmount` was last read. */
  #bytesSinceCheck = 0;
  /**
   * Frames are handled one after another, so a slow one (a file) keeps its place in order.
   * Undefined while nothing is queued, so an idle socket holds no promise.
   */
  #inbound?: Promise<void>;
  /** Finishes not yet run (see {@link finishInOrder}), and the promise of the last one. */
  #owed = 0;
  #finishes?: Promise<void>;
  /** A frame was refused: the socket closes once the frames before it are done. */
  #refusing = false;
  /** Set by {@link takeNoMore}. */
  #takesNoMore = false;
  /** Callbacks of {@link whenGone}, until Deno lets the socket go (then undefined). */
  #gone: (() => void)[] | undefined = [];
  /** Runs them anyway once a close this side started has gone unanswered for long. */
  #goneTimer?: ReturnType<typeof setTimeout>;
  /**
   * Bytes of the frames received and not yet handled. Deno reads a socket as fast as the peer
   * sends, with no way to pause it, so without a bound a burst of large frames behind a slow one
   * (files being written) is held in memory whole.
   */
  #queuedBytes = 0;
  /** The rate limit's verdict on the frame being handled, from `admit` as it arrived. */
  #admission: RateVerdict = "ok";
  /** A close waits for the peer's answer, dropping its frames meanwhile. */
  #quiet = new QuietClose();

  private constructor(socket: WebSocket, options: SocketOptions, handler: SocketHandler) {
    this.#socket = socket;
    this.#options = options;
    this.#handler = handler;
    socket.onopen = () => {
      options.metrics.connection(options.protocol, 1);
      this.#counted = true;
      options.registry?.add(this);
      this.#run(() => handler.open(this));
    };
    socket.onmessage = (e) => this.#onMessage(e.data);
    // No error handler: on an open socket Deno follows every error event with a close event
    // (an upgrade that fails sends only the error, but then nothing was opened to clean up),
    // and each handler costs an idle socket a listener and its wrapper.
    socket.onclose = (event) => {
      // Deno's own heartbeat gave up on the peer (it also follows with a second close event).
      if (!this.#done && event.code === 1001 && event.reason === PING_TIMEOUT_REASON) {
        options.metrics.pingTimeouts++;
      }
      // Only now has Deno dropped the socket's buffers: a close this side started may take long.
      options.frames?.forget(this);
      this.#cleanup();
      this.#letGo();
    };
  }

  /**
   * Upgrades, then closes at once with `code`: a browser client only ever sees a close code,
   * never an HTTP status, so refusals (bad token, no access) are told this way.
   */
  static refuse(req: Request, options: SocketOptions, code: number, reason: string): Response {
    return Connection.upgrade(req, options, {
      open: (conn) => conn.close(code, reason),
      message: () => {},
      closed: () => {},
    });
  }

  /** Upgrades the request and attaches the handler; returns the 101 response. */
  static upgrade(req: Request, options: SocketOptions, handler: SocketHandler): Response {
    let upgraded: { socket: WebSocket; response: Response };
    try {
      upgraded = Deno.upgradeWebSocket(req, {
        idleTimeout: options.idleTimeout,
        protocol: options.subprotocol,
      });
    } catch (err) {
      // A handshake no client library sends (a missing Sec-WebSocket-Key): the client's fault.
      return new Response(`Bad WebSocket handshake: ${(err as Error).message}`, { status: 400 });
    }
    const { socket, response } = upgraded;
    fixHeartbeat(socket, options.idleTimeout);
    new Connection(socket, options, handler);
    return response;
  }

  #run(task: () => void | Promise<void>): void {
    const next: Promise<void> = (this.#inbound ?? Promise.resolve()).then(task).catch((err) => {
      console.error(`${this.#options.protocol}: handler failed:`, err);
    }).then(() => {
      if (this.#inbound === next) this.#inbound = undefined;
      this.#release();
    });
    this.#inbound = next;
  }

  #onMessage(data: unknown): void {
    const size = typeof data === "string"
      ? data.length
      : data instanceof ArrayBuffer
      ? data.byteLength
      : (data as Blob).size ?? 0;
    if (this.#quiet.frame(size) || this.#done || this.#refusing || this.#takesNoMore) return;
    if (size > this.#options.maxFrameSize) {
      const unit = typeof data === "string" ? "characters" : "bytes";
      const error = frameTooLarge(size, unit, this.#options.maxFrameSize);
      this.#options.metrics.error(error.code);
      this.#refuse(size, CLOSE.tooBig, "Message too big", error);
      return;
    }
    const maxQueued = this.#options.maxQueuedBytes;
    if (maxQueued !== undefined && this.#queuedBytes > 0 && this.#queuedBytes + size > maxQueued) {
      this.#options.metrics.error("too_much_queued");
      const error = new ChatError(
        "rate_limited",
        "Too much data queued: send the next message after the reply to the last one",
      );
      this.#refuse(size, CLOSE.tooMuchQueued, "Too much data queued", error);
      return;
    }
    // `size` counts a text frame in characters, as its limits do; the metric says bytes.
    this.#options.metrics.bytesIn += typeof data === "string" ? utf8Length(data) : size;
    this.#options.frames?.received(this, size);
    const text = typeof data === "string"
      ? data
      : data instanceof ArrayBuffer
      ? binaryText(data)
      : undefined;
    if (text === undefined) return;
    this.#queuedBytes += size;
    const admission = this.#handler.admit?.(this, text) ?? "ok";
    this.#run(async () => {
      try {
        this.#admission = admission;
        if (this.#owed >= MAX_OWED_FINISHES) await this.settled();
        // A frame received before the peer closed is still handled (a message it sent and then
        // closed must not be lost behind a slow frame), but not after this side closed it (an
        // eviction, a refusal, a shutdown).
        if (this.#stopped) return;
        if (admission === "close") {
          // After the replies still owed: the acks of frames already queued say what was stored.
          await this.settled();
          this.close(CLOSE.rateLimited, "Rate limit exceeded");
          return;
        }
        await this.#handler.message(this, text);
      } finally {
        this.#queuedBytes -= size;
      }
    });
  }

  /**
   * Drops a frame and reads no more: the frames before it are still handled and their replies
   * sent, so that the client learns what became of each, and then the socket closes with `code`.
   */
  #refuse(size: number, code: number, reason: string, error: ChatError): void {
    // Deno's read buffer grew to hold it, and stays so until the close.
    this.#options.frames?.received(this, size);
    this.#refusing = true;
    this.#run(async () => {
      await this.settled();
      if (!this.#done) {
        try {
          this.#handler.refused?.(this, error);
        } catch (err) {
          console.error(`${this.#options.protocol}: refusal reply failed:`, err);
        }
      }
      this.close(code, reason);
    });
  }

  /**
   * Lets a frame's slow part (a commit) overlap the frames after it while its reply keeps its
   * place: `finish` gets the outcome of `work` once the finishes of every earlier frame have run.
   * The next frame is handled as soon as the handler returns, so a client sending one message
   * after another is not held to one commit per message. The outcome is taken at once, so a
   * `work` that fails before its turn is never an unhandled rejection.
   */
  finishInOrder<T>(work: Promise<T>, finish: (outcome: Outcome<T>) => void | Promise<void>): void {
    const outcome = work.then(
      (value): Outcome<T> => ({ ok: true, value }),
      (error): Outcome<T> => ({ ok: false, error }),
    );
    this.#owed++;
    const next: Promise<void> = (this.#finishes ?? Promise.resolve())
      .then(() => outcome)
      .then(finish)
      .catch((err) => console.error(`${this.#options.protocol}: reply failed:`, err))
      .then(() => {
        this.#owed--;
        if (this.#finishes === next) this.#finishes = undefined;
        this.#release();
      });
    this.#finishes = next;
  }

  /**
   * Resolves once every finish owed so far has run, to whether the socket is still open: a frame
   * that reads what the socket's earlier frames wrote (history, a read mark) or answers after
   * them waits for this first, and is dropped on false (a refused send's reply may close it).
   */
  async settled(): Promise<boolean> {
    await this.#finishes;
    return !this.#done;
  }

  /**
   * True once this side closed the socket (an eviction, a refusal, a rate limit, a shutdown);
   * false while it is open and after the peer closed it, when the frames it sent before are
   * still handled and what they store (a message, a read mark) still counts.
   */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** The rate limit's verdict on the frame being handled, given as it arrived (see `admit`). */
  get admission(): RateVerdict {
    return this.#admission;
  }

  /** True until either side has closed. */
  get open(): boolean {
    return !this.#done;
  }

  /** Bytes queued and not yet written to the network. */
  get bufferedAmount(): number {
    return this.#socket.bufferedAmount;
  }

  /**
   * Writes a frame; a socket over its outbound buffer bound is closed as a slow consumer.
   * Reading `bufferedAmount` is a call into the runtime, so on the fan-out path it is read every
   * 32 frames or 64 KiB, whichever comes first: the bound is overshot by at most that much.
   */
  send(frame: string): void {
    if (this.#done || this.#socket.readyState !== WebSocket.OPEN) return;
    this.#bytesSinceCheck += frame.length;
    if (++this.#sinceCheck >= 32 || this.#bytesSinceCheck >= 65_536) {
      this.#sinceCheck = 0;
      this.#bytesSinceCheck = 0;
      if (this.checkBuffer()) return;
    }
    this.#socket.send(frame);
    this.#options.metrics.framesOut++;
  }

  /**
   * The socket itself, for a fan-out that writes one frame to many sockets in a tight loop: it
   * skips `send`'s state check and counters (Deno's own send ignores a closing socket), so its
   * user counts the frames and calls `checkBuffer` for a share of them.
   */
  get writer(): { send(frame: string): void } {
    return this.#socket;
  }

  /**
   * Bytes the socket may take now without nearing its slow-consumer bound: half of the bound,
   * less what it has not sent yet (0 or less: none until {@link drained}). A burst written in
   * one go (a join's replay) is written in such parts, as the peer reads none of it meanwhile.
   */
  writable(): number {
    return this.#options.maxBufferedBytes / 2 - this.#socket.bufferedAmount;
  }

  /**
   * Resolves once the socket holds under a quarter of its slow-consumer bound unsent, to false
   * when it closed first; a peer that has not read that far within {@link DRAIN_TIMEOUT_MS} is
   * closed as a slow consumer. Deno tells no drain, so the amount is polled.
   */
  async drained(): Promise<boolean> {
    const drained = await pollUntil(
      () => this.#socket.bufferedAmount <= this.#options.maxBufferedBytes / 4,
      { timeoutMs: DRAIN_TIMEOUT_MS, gone: () => this.#done },
    );
    if (!drained && !this.#done) this.close(CLOSE.slowConsumer, "Slow consumer");
    return drained;
  }

  /**
   * Closes the socket as a slow consumer if it holds more unsent bytes than allowed, with `held`
   * more waiting to be written (frames queued behind a paced replay); true then.
   */
  checkBuffer(held = 0): boolean {
    if (this.#done || this.#socket.bufferedAmount + held <= this.#options.maxBufferedBytes) {
      return false;
    }
    this.close(CLOSE.slowConsumer, "Slow consumer");
    return true;
  }

  /**
   * Drops the frames that arrive from now on, for a shutdown: one handled after the drain saw
   * the socket idle would be stored with nowhere to send its reply, and a client resending what
   * it was never answered would store it twice.
   */
  takeNoMore(): void {
    this.#takesNoMore = true;
  }

  /** True while a frame of this socket is being handled or its reply is owed. */
  get busy(): boolean {
    return this.#inbound !== undefined || this.#owed > 0;
  }

  /**
   * Runs `fn` once Deno has let the socket go, or {@link goneAfterMs} after this side's close
   * went unanswered. A close this side started waits for its close frame to be written, and a
   * peer that stopped reading holds the connection, its file descriptor and its queued bytes
   * until it reads or goes: whatever bounds a user's sockets counts such a socket until then.
   */
  whenGone(fn: () => void): void {
    if (this.#gone === undefined) fn();
    else this.#gone.push(fn);
  }

  #letGo(): void {
    clearTimeout(this.#goneTimer);
    const gone = this.#gone;
    this.#gone = undefined;
    for (const fn of gone ?? []) {
      try {
        fn();
      } catch (err) {
        console.error(`${this.#options.protocol}: a close callback failed:`, err);
      }
    }
  }

  /** Closes with 1001 ("going away": reconnect), so that Deno frees the socket's frame buffer. */
  reclaim(): void {
    this.close(CLOSE.goingAway, "Server reclaiming memory; reconnect");
  }

  /** Closes with a code and reason and cleans up at once. */
  close(code: number, reason = ""): void {
    this.#stopped = true;
    if (
      this.#socket.readyState === WebSocket.OPEN || this.#socket.readyState === WebSocket.CONNECTING
    ) {
      // The session ends now (cleanup below); the connection once the peer answers the close,
      // or Deno would drop it at the peer's next frame and lose the replies just sent and the code.
      this.#quiet.close(this.#socket, code, reason);
      // Deno waits for the peer's answer to the close frame as long as the connection stays up,
      // and pings no more: a peer that vanished after its kernel took the frame would hold what
      // counts on this socket for good. Two heartbeat periods is when it would have been dropped.
      if (this.#gone !== undefined && this.#goneTimer === undefined) {
        this.#goneTimer = setTimeout(() => this.#letGo(), goneAfterMs(this.#options.idleTimeout));
        Deno.unrefTimer(this.#goneTimer);
      }
    }
    this.#cleanup();
  }

  /**
   * Leaves the registry once closed and idle: a socket the client closed stays while the frames
   * it sent before are handled, so that a shutdown waits for them too.
   */
  #release(): void {
    if (this.#done && !this.busy) this.#options.registry?.delete(this);
  }

  #cleanup(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#counted) this.#options.metrics.connection(this.#options.protocol, -1);
    this.#release();
    try {
      this.#handler.closed(this);
    } catch (err) {
      console.error(`${this.#options.protocol}: close handler failed:`, err);
    }
  }
}
