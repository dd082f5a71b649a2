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
  /** Closes the socket with a code that tells the client to reconnect. */
  reclaim(): void;
}

/** Frames below this size are not tracked: Deno's buffer starts at 8 KiB and small ones are cheap. */
export const DEFAULT_MIN_TRACKED_BYTES = 64 * 1024;

/**
 * Tracks, per socket, the largest frame it received (what Deno's read buffer holds for it), and
 * reclaims the least recently active sockets once the total passes the limit. A limit of 0 turns
 * tracking off.
 */
export class FrameBudget {
  #limit: number;
  #minTracked: number;
  /** Tracked sockets, least recently active first, with the bytes Deno holds for each. */
  #held = new Map<FrameHolder, number>();
  #total = 0;
  /** Sockets reclaimed since start, for metrics. */
  reclaimed = 0;

  /** A budget of `limitBytes` (0: unbounded and untracked). */
  constructor(limitBytes: number, options: { minTrackedBytes?: number } = {}) {
    this.#limit = limitBytes;
    this.#minTracked = options.minTrackedBytes ?? DEFAULT_MIN_TRACKED_BYTES;
  }

  /** Bytes held by tracked sockets. */
  get heldBytes(): number {
    return this.#total;
  }

  /** Notes a frame of `size` bytes from `holder`; may reclaim other, quieter sockets. */
  received(holder: FrameHolder, size: number): void {
    if (this.#limit === 0) return;
    const held = this.#held.get(holder);
    if (held === undefined) {
      if (size < this.#minTracked) return;
      this.#held.set(holder, size);
      this.#total += size;
    } else {
      // Re-inserting moves the socket to the most recently active end.
      this.#held.delete(holder);
      this.#held.set(holder, Math.max(held, size));
      this.#total += Math.max(0, size - held);
    }
    for (const [other, bytes] of this.#held) {
      if (this.#total <= this.#limit) break;
      // The socket that just sent is the newest entry: it is never reclaimed for its own frame.
      if (other === holder) break;
      this.#held.delete(other);
      this.#total -= bytes;
      this.reclaimed++;
      other.reclaim();
    }
  }

  /** Forgets a socket that closed. */
  forget(holder: FrameHolder): void {
    const held = this.#held.get(holder);
    if (held === undefined) return;
    this.#held.delete(holder);
    this.#total -= held;
  }
}
