/**
 * Closing a server-side WebSocket while the peer is still sending loses what this side sent just
 * before: Deno drops the connection when frames keep coming after its close, so the peer gets
 * neither the last replies (the `error` that says why) nor the close code, only 1006. A flood
 * closed with 4029 or a refused client that sends at once is exactly that case.
 */

/** The peer has stopped sending once nothing came for this long, ms. */
export const CLOSE_QUIET_MS = 100;
/** The longest a close waits for the peer to stop, ms: a peer that never does is cut off. */
export const CLOSE_LINGER_MAX_MS = 2_000;
/**
 * A frame larger than this, arriving while a close waits, ends the wait: Deno holds a read
 * buffer as large as the largest frame, and the frame budget no longer counts a closing socket.
 */
export const CLOSE_LINGER_MAX_FRAME = 64 * 1024;

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
    try {
      if (code === undefined) socket.close();
      else socket.close(code, reason);
    } catch {
      // Already closing.
    }
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
 * A socket's side of {@link closeWhenQuiet}: told of every frame as it arrives, it knows when the
 * peer last sent, and whether a close waits (during which frames are not to be handled).
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

  /** Closes `socket` once the peer is quiet (see {@link closeWhenQuiet}). */
  close(socket: WebSocket, code?: number, reason?: string): void {
    this.#closeNow = closeWhenQuiet(socket, () => this.#lastFrameAt, code, reason);
  }
}
