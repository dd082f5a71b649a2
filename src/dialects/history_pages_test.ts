import { assertEquals } from "../../tests/assert.ts";
import type { Message } from "../core/types.ts";
import { fitHistory, historyBudget } from "./history_pages.ts";

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

  const whole = fitHistory(page, render, 5 * size, "newest");
  assertEquals(seqs(whole), [1, 2, 3, 4, 5]);
  assertEquals(whole.cut, false);
  assertEquals(fitHistory([], render, 10, "oldest"), { messages: [], rendered: [], cut: false });
});

Deno.test("historyBudget() is 1 MiB, or a quarter of a smaller slow-consumer bound", () => {
  assertEquals(historyBudget(4 * 1024 * 1024), 1024 * 1024);
  assertEquals(historyBudget(64 * 1024 * 1024), 1024 * 1024);
  assertEquals(historyBudget(1024 * 1024), 256 * 1024);
});
