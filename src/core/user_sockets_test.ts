import { assertEquals } from "../../tests/assert.ts";
import { UserSockets } from "./user_sockets.ts";

Deno.test("UserSockets counts each user's sockets up to the bound, and their opens up to the rate", () => {
  let now = 0;
  const sockets = new UserSockets(3, 2, () => now);
  assertEquals([sockets.admit(1), sockets.admit(1), sockets.admit(1)], [
    undefined,
    undefined,
    undefined,
  ]);
  assertEquals(sockets.admit(1), "too_many");
  // Another user is counted apart.
  assertEquals(sockets.admit("2"), undefined);
  sockets.release(1);
  assertEquals(sockets.openOf(1), 2);
  // The burst is twice the rate, four opens: the fourth goes, the fifth waits for the bucket.
  assertEquals(sockets.admit(1), undefined);
  sockets.release(1);
  assertEquals(sockets.admit(1), "too_fast");
  now += 500;
  assertEquals(sockets.admit(1), undefined);
  for (let i = 0; i < 3; i++) sockets.release(1);
  assertEquals(sockets.openOf(1), 0);
});
