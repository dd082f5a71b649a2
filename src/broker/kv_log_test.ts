import { assertEquals } from "../../tests/assert.ts";
import { appendToLog, type Log, unseen } from "./kv_log.ts";

Deno.test("kv log: concurrent writers all land, in seq order, and the key keeps the newest", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // Twenty appends at once: most find the key changed under them and must read it again.
    await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) => appendToLog(kv, ["log"], i % 2 ? "b" : "a", [i], { kept: 15 }),
      ),
    );
    const log = (await kv.get<Log<number>>(["log"])).value!;
    assertEquals(log.entries.length, 15);
    const seqs = log.entries.map((e) => e.seq);
    assertEquals(seqs, [...seqs].sort((x, y) => x - y));
    assertEquals(log.seq, seqs.at(-1));
    // Seen from "a": only b's odd events, after the seq given.
    const fromA = unseen<number>(log, seqs[9], "a");
    assertEquals(fromA.seen, log.seq);
    assertEquals(
      fromA.entries.map((e) => e.event),
      log.entries.slice(10).filter((e) => e.origin === "b").map((e) => e.event),
    );
    assertEquals(unseen(log, log.seq, "a").entries, []);
    assertEquals(unseen(null, 5, "a"), { entries: [], seen: 5 });
  } finally {
    kv.close();
  }
});
