import { assertEquals } from "../../tests/assert.ts";
import { goneAfterMs } from "./websocket.ts";

Deno.test("goneAfterMs: two heartbeat periods, a minute without one, and never past what a timer takes", () => {
  assertEquals(goneAfterMs(30), 60_000);
  assertEquals(goneAfterMs(0), 60_000);
  // 2,200,000 s would overflow a timer, which then fires at once.
  assertEquals(goneAfterMs(1_100_000), 2 ** 31 - 1);
});
