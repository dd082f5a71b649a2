/** FreshReads: callers share reads, and never one that began before they asked. */

import { assertEquals } from "../../tests/assert.ts";
import { FreshReads } from "./kv_reads.ts";

Deno.test("FreshReads shares one read among callers waiting together", async () => {
  const reads = new FreshReads<number>();
  let runs = 0;
  const read = async () => {
    runs++;
    await new Promise((r) => setTimeout(r, 10));
    return runs;
  };
  const results = await Promise.all(Array.from({ length: 20 }, () => reads.read("k", read)));
  assertEquals(runs, 1);
  assertEquals(new Set(results).size, 1);
});

Deno.test("FreshReads never hands a caller a read that started before it asked", async () => {
  const reads = new FreshReads<number>();
  let value = 0;
  let runs = 0;
  const read = async () => {
    runs++;
    const seen = value;
    await new Promise((r) => setTimeout(r, 20));
    return seen;
  };
  const early = reads.read("k", read);
  await new Promise((r) => setTimeout(r, 5)); // the first read is under way and saw 0
  value = 1;
  const late = Promise.all([reads.read("k", read), reads.read("k", read), reads.read("k", read)]);
  assertEquals(await early, 0);
  assertEquals(await late, [1, 1, 1], "the late callers share one read started after them");
  assertEquals(runs, 2);
  assertEquals(await reads.read("other", () => Promise.resolve(7)), 7, "keys are separate");
});

Deno.test("FreshReads lets a failed read fail only its own callers", async () => {
  const reads = new FreshReads<number>();
  const failing = reads.read("k", () => Promise.reject(new Error("boom")));
  const next = (async () => {
    await new Promise((r) => setTimeout(r, 0));
    return reads.read("k", () => Promise.resolve(2));
  })();
  let failed = false;
  await failing.catch(() => failed = true);
  assertEquals(failed, true);
  assertEquals(await next, 2);
});
