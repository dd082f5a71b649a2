import { assertEquals, assertRejects } from "../../tests/assert.ts";
import { pollUntil } from "./time.ts";

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
