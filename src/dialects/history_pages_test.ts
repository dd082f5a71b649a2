import { assert, assertEquals } from "../../tests/assert.ts";
import type { Message } from "../core/types.ts";
import { fitHistory, frameBytes, historyBudget } from "./history_pages.ts";

const message = (seq: number, body: string): Message => ({
  room: "room:a",
  seq,
  id: String(seq).padStart(24, "0"),
  sender: null,
  body,
  attachments: [],
  createdAt: "2024-01-01T00:00:00.000Z",
});

Deno.test("fitHistory() keeps the messages nearest the reader that fit in the budget's UTF-8 bytes, at least one", () => {
  // Each rendering is {"seq":N,"body":"…"}: 100 CJK characters are 300 bytes of it.
  const page = [1, 2, 3, 4, 5].map((seq) => message(seq, "漢".repeat(100)));
  const render = (m: Message) => ({ seq: m.seq, body: m.body });
  const size = new TextEncoder().encode(JSON.stringify(render(page[0]))).length;
  const seqs = (fitted: { messages: Message[] }) => fitted.messages.map((m) => m.seq);

  const newest = fitHistory(page, render, 2 * size + 1, "newest");
  assertEquals(seqs(newest), [4, 5]);
  assertEquals(newest.rendered.map((r) => r.seq), [4, 5]);
  assertEquals(newest.cut, true);

  const oldest = fitHistory(page, render, 2 * size + 1, "oldest");
  assertEquals(seqs(oldest), [1, 2]);
  assertEquals(oldest.rendered.map((r) => r.seq), [1, 2]);
  assertEquals(oldest.cut, true);

  // One message larger than the budget still goes: a page is never empty while history is not.
  assertEquals(seqs(fitHistory(page, render, 10, "newest")), [5]);
  assertEquals(seqs(fitHistory(page, render, 10, "oldest")), [1]);

  // Five renderings and the four commas between them.
  const whole = fitHistory(page, render, 5 * size + 4, "newest");
  assertEquals(seqs(whole), [1, 2, 3, 4, 5]);
  assertEquals(whole.cut, false);
  assertEquals(fitHistory([], render, 10, "oldest"), { messages: [], rendered: [], cut: false });
});

Deno.test("historyBudget() is 1 MiB, or a quarter of a smaller slow-consumer bound", () => {
  assertEquals(historyBudget(4 * 1024 * 1024), 1024 * 1024);
  assertEquals(historyBudget(64 * 1024 * 1024), 1024 * 1024);
  assertEquals(historyBudget(1024 * 1024), 256 * 1024);
});

Deno.test("fitHistory() counts the whole frame: the bytes around the messages and the comma between each two", () => {
  const page = [1, 2, 3, 4, 5].map((seq) => message(seq, "x".repeat(100)));
  const render = (m: Message) => ({ seq: m.seq, body: m.body });
  const around = frameBytes({ type: "history", messages: [], has_more: false });
  const frame = (rendered: unknown[]) =>
    frameBytes({ type: "history", messages: rendered, has_more: false });
  const whole = frame(page.map(render));
  // Exactly the whole frame: all five. A byte less: the frame would pass it, so the oldest goes.
  assertEquals(fitHistory(page, render, whole, "newest", around).rendered.length, 5);
  const cut = fitHistory(page, render, whole - 1, "newest", around);
  assertEquals(cut.messages.map((m) => m.seq), [2, 3, 4, 5]);
  assert(frame(cut.rendered) <= whole - 1);
  // The messages alone fit in it: the frame's own bytes and its commas do not.
  const items = page.reduce((n, m) => n + frameBytes(render(m)), 0);
  assert(items <= whole - 1);
});
