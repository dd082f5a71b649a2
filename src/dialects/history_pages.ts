/** History answers of the socket protocols, bounded by the bytes they take on the socket. */

import type { Message } from "../core/types.ts";
import { utf8Length } from "../core/text.ts";

/** Bytes of rendered messages one history answer holds at most (less under a small bound). */
export const HISTORY_MAX_BYTES = 1024 * 1024;

/**
 * The bytes of rendered messages one history answer may hold on a socket closed as a slow
 * consumer past `slowConsumerBytes` unsent: a quarter of that, so that the answer, with what
 * the socket holds besides (a paced replay keeps within half, live traffic comes meanwhile),
 * stays under the bound for a reader that keeps up. 200 messages of 20,000 characters are 12 MB
 * of UTF-8 in CJK text, three times the default bound, written at once.
 */
export function historyBudget(slowConsumerBytes: number): number {
  return Math.min(HISTORY_MAX_BYTES, slowConsumerBytes / 4);
}

/** The UTF-8 bytes of `frame` as JSON: a history answer's, with no messages, for {@link fitHistory}. */
export function frameBytes(frame: unknown): number {
  return utf8Length(JSON.stringify(frame));
}

/** A history page cut to its byte budget (see {@link fitHistory}). */
export interface FittedPage<T> {
  /** The messages kept, in ascending seq order. */
  messages: Message[];
  /** Their renderings, in the same order. */
  rendered: T[];
  /** True when some of the page's messages were left out. */
  cut: boolean;
}

/**
 * Renders the messages of `page` (ascending seq) that fit in `budget` bytes, counted in the
 * UTF-8 of the whole frame as the socket counts it: `around`, the frame's bytes with no messages
 * (see {@link frameBytes}), then each rendering's JSON and the comma before it; always at least
 * one. Those nearest the reader are kept: the newest for a page read backwards (the newest
 * messages, or `before` a seq), the oldest for one read forwards (`after`), so that the next
 * page's cursor, taken from the messages kept, misses and repeats none.
 */
export function fitHistory<T>(
  page: readonly Message[],
  render: (message: Message) => T,
  budget: number,
  keep: "newest" | "oldest",
  around = 0,
): FittedPage<T> {
  const messages: Message[] = [];
  const rendered: T[] = [];
  // A page that fills the budget with its messages alone was a frame just past it, which a
  // client that takes at most that much (Python's websockets: 1 MiB) closes with 1009.
  let bytes = around;
  const count = page.length;
  for (let i = 0; i < count; i++) {
    const message = page[keep === "newest" ? count - 1 - i : i];
    const item = render(message);
    bytes += utf8Length(JSON.stringify(item)) + (rendered.length > 0 ? 1 : 0);
    if (bytes > budget && rendered.length > 0) break;
    messages.push(message);
    rendered.push(item);
  }
  if (keep === "newest") {
    messages.reverse();
    rendered.reverse();
  }
  return { messages, rendered, cut: messages.length < count };
}
