import { assertEquals, assertRejects } from "../../tests/assert.ts";
import { isoMillis, pollUntil } from "./time.ts";

Deno.test("pollUntil() resolves true once ready holds, false when gone or past the timeout, and rejects with what ready throws", async () => {
  let asked = 0;
  assertEquals(await pollUntil(() => ++asked === 3, { timeoutMs: 1000 }), true);
  assertEquals(asked, 3);
  const started = performance.now();
  assertEquals(await pollUntil(() => false, { timeoutMs: 30 }), false);
  assertEquals(performance.now() - started >= 30, true);
  assertEquals(await pollUntil(() => true, { timeoutMs: 1000, gone: () => true }), false);
  await assertRejects(() =>
    pollUntil(() => {
      throw new Error("broken");
    }, { timeoutMs: 1000 }), /broken/);
});

Deno.test("isoMillis() formats as toISOString does, in one second and across seconds, years and the edges", () => {
  const times = [
    0,
    1,
    9,
    10,
    99,
    100,
    999,
    1000,
    1001,
    Date.now(),
    253402300799999,
    253402300800000,
  ];
  for (let t = 1_700_000_000_000; t < 1_700_000_002_100; t += 7) times.push(t);
  times.push(1_700_000_000_500, 1_600_000_000_500, -1, -1000, 1.5);
  for (const t of times) assertEquals(isoMillis(t), new Date(t).toISOString(), String(t));
});
