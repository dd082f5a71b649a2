/**
 * Closing a server-side WebSocket while the peer is still sending loses what this side sent just
 * before: Deno 2.9 ends a server socket's connection at the first data frame that arrives after
 * its close, with that frame and any behind it unread, so the kernel resets the connection and
 * throws away what it had not sent yet (the last replies, the `error` that says why, the close
 * frame), and the peer's next write fails. The peer gets 1006 (code 0 in Deno's client), and a
 * client told to reconnect at once comes straight back. A flood closed with 4029 or a refused
 * client that sends at once is exactly that case.
 *
 * So the close frame goes out at once, behind what is queued, and the frames the peer sent before
 * it read it are read and dropped until its close frame answers ours, as RFC 6455 has it (a client
 * sends nothing after that): Deno then ends the connection with nothing unread. Deno reads on a
 * client socket after its close, so the socket is marked as one for that while it lingers (its
 * role, read by nothing else once the close is sent). Where that mark is missing (another Deno),
 * the close waits for the peer to be quiet instead.
 */

/** The peer has stopped sending once nothing came for this long, ms. */
export const CLOSE_QUIET_MS = 100;
/**
 * The longest a close waits for the peer to answer it (or, without the lingering read, to stop),
 * ms: a peer still sending after that is cut off at its next frame.
 */
export const CLOSE_LINGER_MAX_MS = 2_000;
/**
 * A frame larger than this, arriving while a close waits, ends the wait: Deno holds a read
 * buffer as large as the largest frame, and the frame budget no longer counts a closing socket.
 */
export const CLOSE_LINGER_MAX_FRAME = 64 * 1024;

const ROLE = "[[role]]";
/** Deno's values of the role slot: a client socket reads on after its close, a server's does not. */
const SERVER_ROLE = 0;
const CLIENT_ROLE = 1;

/**
 * True when Deno's WebSocket event loop ends a closing socket at a data frame for servers alone
 * (`readyState == CLOSING && kind <= 3 && role !== CLIENT`): what the lingering read relies on.
 */
export const lingeringCloseApplies: boolean = (() => {
  const loop = Object.getOwnPropertySymbols(WebSocket.prototype).find((s) =>
    s.description === "[[eventLoop]]"
  );
  // deno-lint-ignore no-explicit-any
  const code = loop ? String((WebSocket.prototype as any)[loop]) : "";
  return /this\[[\w$]+\]==[\w$]+&&[\w$]+<=3&&this\[[\w$]+\]!==[\w$]+/.test(code);
})();

/** The lingering closes under way, each settled once answered or no longer waited for. */
const lingering = new Set<Promise<void>>();

/**
 * Resolves once every close now waiting for the peer's answer has it (or has stopped waiting):
 * Deno's server shutdown, or the exit, would end those sockets before, with the peer's frames
 * unread, which resets the connections, and the peer's answer would fail (code 0 in Deno's
 * client, 1006 in browsers).
 */
export async function closesAnswered(): Promise<void> {
  await Promise.all(lingering);
}

/** The role slot of a Deno server socket, when the lingering read applies to it. */
function roleSlot(socket: WebSocket): symbol | undefined {
  if (!lingeringCloseApplies) return undefined;
  const slot = Object.getOwnPropertySymbols(socket).find((s) => s.description === ROLE);
  // deno-lint-ignore no-explicit-any
  return slot && (socket as any)[slot] === SERVER_ROLE ? slot : undefined;
}

/** Sends `socket`'s close frame (with `code` and `reason` when given); false if it was closing. */
function closeWith(socket: WebSocket, code?: number, reason?: string): boolean {
  try {
    if (code === undefined) socket.close();
    else socket.close(code, reason);
    return true;
  } catch {
    return false;
  }
}

/**
 * Closes an open server `socket` with `code` at once and reads on until the peer answers, for at
 * most {@link CLOSE_LINGER_MAX_MS}; the function returned ends the wait (the next frame then ends
 * the connection). Undefined, and nothing done, when Deno's socket is not the one this expects.
 */
function closeLingering(
  socket: WebSocket,
  code?: number,
  reason?: string,
): (() => void) | undefined {
  const slot = socket.readyState === WebSocket.OPEN ? roleSlot(socket) : undefined;
  if (!slot) return undefined;
  if (!closeWith(socket, code, reason)) return undefined;
  // deno-lint-ignore no-explicit-any
  const marked = socket as any;
  marked[slot] = CLIENT_ROLE;
  let settle = () => {};
  const answered = new Promise<void>((resolve) => settle = resolve);
  lingering.add(answered);
  answered.then(() => lingering.delete(answered));
  const stop = () => {
    clearTimeout(timer);
    marked[slot] = SERVER_ROLE;
    settle();
  };
  const timer = setTimeout(stop, CLOSE_LINGER_MAX_MS);
  // Not to hold a process (or a test) that is done for a peer that is slow to answer.
  Deno.unrefTimer(timer);
  socket.addEventListener("close", () => {
    clearTimeout(timer);
    settle();
  }, { once: true });
  return stop;
}

/**
 * Closes `socket` with `code` once `lastFrameAt()` (performance.now() of the peer's last frame)
 * is {@link CLOSE_QUIET_MS} in the past, at once when it already is, and after
 * {@link CLOSE_LINGER_MAX_MS} whatever the peer does. The caller stops handling frames meanwhile;
 * the function returned closes at once (for a frame over {@link CLOSE_LINGER_MAX_FRAME}).
 */
export function closeWhenQuiet(
  socket: WebSocket,
  lastFrameAt: () => number,
  code?: number,
  reason?: string,
): () => void {
  const deadline = performance.now() + CLOSE_LINGER_MAX_MS;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const closeNow = () => {
    clearTimeout(timer);
    if (socket.readyState === WebSocket.CLOSING || socket.readyState === WebSocket.CLOSED) return;
    closeWith(socket, code, reason);
  };
  const attempt = () => {
    const now = performance.now();
    const wait = lastFrameAt() + CLOSE_QUIET_MS - now;
    if (wait > 0 && now < deadline) {
      timer = setTimeout(attempt, Math.min(wait, deadline - now));
      return;
    }
    closeNow();
  };
  attempt();
  return closeNow;
}

/**
 * A socket's side of a close that keeps the peer's last replies: told of every frame as it
 * arrives, it knows when the peer last sent, and whether a close waits (during which frames are
 * not to be handled).
 */
export class QuietClose {
  #lastFrameAt = 0;
  #closeNow?: () => void;

  /**
   * Notes a frame of `size` (characters or bytes) arriving; true while a close waits, when the
   * frame is to be dropped (one over {@link CLOSE_LINGER_MAX_FRAME} ends the wait at once).
   */
  frame(size: number): boolean {
    this.#lastFrameAt = performance.now();
    if (!this.#closeNow) return false;
    if (size > CLOSE_LINGER_MAX_FRAME) this.#closeNow();
    return true;
  }

  /**
   * Closes `socket` at once and reads on until the peer answers, or, where Deno does not allow
   * that, once the peer is quiet (see {@link closeWhenQuiet}).
   */
  close(socket: WebSocket, code?: number, reason?: string): void {
    this.#closeNow = closeLingering(socket, code, reason) ??
      closeWhenQuiet(socket, () => this.#lastFrameAt, code, reason);
  }
}
