/**
 * A bound on the memory Deno keeps for large frames on open sockets.
 *
 * Deno's WebSocket reads each frame into a per-socket buffer that grows to the largest frame the
 * socket ever received and never shrinks until the socket closes (about 14 MB after a 10 MiB
 * attachment); the JS side also keeps the socket's last text frame alive until its next one. No
 * script can release either, so with many sockets that once sent a file, the only lever is to
 * close the ones that have been quiet longest, and let their clients reconnect.
 */

/** A socket the budget can reclaim: closing it frees what Deno holds for it. */
export interface FrameHolder {
  /** Closes the socket so that its client may reconnect. */
  reclaim(): void;
  /** True while a frame of this socket is still being handled: such a socket is passed over. */
  readonly busy?: boolean;
}

/** Frames below this size are not tracked: Deno's buffer starts at 8 KiB and small ones are cheap. */
export const DEFAULT_MIN_TRACKED_BYTES = 64 * 1024;

/**
 * Tracks, per socket, the largest frame it received (what Deno's read buffer holds for it), and
 * reclaims the least recently active sockets once the total passes the limit. With a limit of 0
 * it only counts, for the metrics. Sizes are whatever the caller counts (characters for text frames: exact for the
 * base64 attachments that make large frames, low for non-ASCII text).
 */
export class FrameBudget {
  #limit: number;
  #minTracked: number;
  /** Tracked open sockets, least recently active first, with the bytes Deno holds for each. */
  #held = new Map<FrameHolder, number>();
  #total = 0;
  /** Reclaimed sockets whose close has not completed: Deno still holds their buffers. */
  #closing = new Map<FrameHolder, number>();
  #closingTotal = 0;
  /** Sockets reclaimed since start, for metrics. */
  reclaimed = 0;

  /** A budget of `limitBytes` (0: counted, never reclaimed). */
  constructor(limitBytes: number, options: { minTrackedBytes?: number } = {}) {
    this.#limit = limitBytes;
    this.#minTracked = options.minTrackedBytes ?? DEFAULT_MIN_TRACKED_BYTES;
  }

  /** Bytes held for tracked open sockets: what the limit bounds. */
  get heldBytes(): number {
    return this.#total;
  }

  /** Bytes still held for reclaimed sockets whose close has not completed. */
  get closingBytes(): number {
    return this.#closingTotal;
  }

  /** Notes a frame of `size` bytes from `holder`; may reclaim other, quieter sockets. */
  received(holder: FrameHolder, size: number): void {
    const held = this.#held.get(holder);
    if (held === undefined) {
      // A reclaimed socket left `#held`: a frame still arriving on it is not counted again.
      if (size < this.#minTracked || this.#closing.has(holder)) return;
      this.#held.set(holder, size);
      this.#total += size;
    } else {
      // Re-inserting moves the socket to the most recently active end.
      this.#held.delete(holder);
      this.#held.set(holder, Math.max(held, size));
      this.#total += Math.max(0, size - held);
    }
    if (this.#limit === 0) return;
    for (const [other, bytes] of this.#held) {
      if (this.#total <= this.#limit) break;
      // The socket that just sent is the newest entry: it is never reclaimed for its own frame.
      if (other === holder) break;
      // Closing a socket whose frame is still being handled, or whose replies are still owed,
      // would cut off those replies (a file's echo, an ack) while freeing nothing: the handler,
      // or the commit, holds the frame's data.
      if (other.busy) continue;
      this.#held.delete(other);
      this.#total -= bytes;
      this.#closing.set(other, bytes);
      this.#closingTotal += bytes;
      this.reclaimed++;
      other.reclaim();
    }
  }

  /** Forgets a socket whose close completed (Deno has released its buffers). */
  forget(holder: FrameHolder): void {
    const held = this.#held.get(holder);
    if (held !== undefined) {
      this.#held.delete(holder);
      this.#total -= held;
    }
    const closing = this.#closing.get(holder);
    if (closing !== undefined) {
      this.#closing.delete(holder);
      this.#closingTotal -= closing;
    }
  }
}
