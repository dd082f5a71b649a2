import { assert, assertEquals } from "../../tests/assert.ts";
import { RateLimiter, TypingStarts } from "./rate_limiter.ts";

Deno.test("RateLimiter allows a burst, refuses a flood, then says close", () => {
  let now = 0;
  const limiter = new RateLimiter({ perConnection: 5, perUser: 100 }, () => now);
  const verdicts = Array.from({ length: 25 }, () => limiter.take(1, "c"));
  assertEquals(verdicts.slice(0, 10), Array(10).fill("ok"));
  assertEquals(verdicts.slice(10, 20), Array(10).fill("limited"));
  assertEquals(verdicts[20], "close");
  now += 1000;
  assertEquals(limiter.take(1, "c"), "ok");
});

Deno.test("RateLimiter shares one budget across a user's connections", () => {
  const now = 0;
  const limiter = new RateLimiter({ perConnection: 100, perUser: 2 }, () => now);
  assertEquals([limiter.take("u", "a"), limiter.take("u", "b"), limiter.take("u", "c")], [
    "ok",
    "ok",
    "ok",
  ]);
  assertEquals(limiter.take("u", "d"), "ok");
  assertEquals(limiter.take("u", "e"), "limited");
  assertEquals(limiter.take("other", "f"), "ok");
});

Deno.test("RateLimiter.typing: buckets of its own, per connection and per user, that leave the frames' tokens whole and strike only when asked", () => {
  let now = 0;
  const limiter = new RateLimiter({ perConnection: 5, perUser: 100 }, () => now);
  const typed = Array.from({ length: 25 }, () => limiter.typing(1, "c"));
  assertEquals(typed.slice(0, 10), Array(10).fill("ok"));
  assertEquals(typed.slice(10), Array(15).fill("limited"));
  // The frames' burst is whole, and the 15 refusals were no strikes: 10 refusals later, no close.
  const verdicts = Array.from({ length: 20 }, () => limiter.take(1, "c"));
  assertEquals(verdicts, [...Array(10).fill("ok"), ...Array(10).fill("limited")]);
  now += 1000;
  assertEquals(limiter.typing(1, "c"), "ok");
  // The user's typing is shared by its connections.
  const user = new RateLimiter({ perConnection: 100, perUser: 2 }, () => now);
  assertEquals(["a", "b", "c", "d", "e"].map((c) => user.typing("u", c)), [
    "ok",
    "ok",
    "ok",
    "ok",
    "limited",
  ]);
  assertEquals(user.take("u", "f"), "ok");
  // Asked to, its refusals are strikes of the connection: past twice the rate, a close.
  const striking = new RateLimiter({ perConnection: 5, perUser: 100 }, () => now);
  const struck = Array.from({ length: 21 }, () => striking.typing(1, "s", true));
  assertEquals(struck.slice(0, 10), Array(10).fill("ok"));
  assertEquals(struck.slice(10, 20), Array(10).fill("limited"));
  assertEquals(struck[20], "close");
  // Typing taken never clears the strikes of a flood of other frames: sends at many times the
  // rate, a typing frame now and then, are still closed.
  const mixed = new RateLimiter({ perConnection: 5, perUser: 100 }, () => now);
  const sends: string[] = [];
  for (let i = 0; i < 40; i++) {
    sends.push(mixed.take(1, "m"));
    if (i % 4 === 0) assertEquals(mixed.typing(1, "m", true), "ok");
  }
  assertEquals(sends.includes("close"), true);
});

Deno.test("RateLimiter.pace: takes down to a quarter of the burst, says how long to wait, and never strikes", () => {
  let now = 0;
  const limiter = new RateLimiter({ perConnection: 10, perUser: 100 }, () => now);
  // Of a burst of 20, 15 paced frames go at once; the last 5 tokens are kept for the others.
  const paced = Array.from({ length: 16 }, () => limiter.pace(1, "c"));
  assertEquals(paced.slice(0, 15), Array(15).fill(0));
  assertEquals(paced[15], 100);
  now += 100;
  assertEquals([limiter.pace(1, "c"), limiter.pace(1, "c")], [0, 100]);
  // The kept tokens go to frames that are refused when over, whose refusals are strikes; paced
  // frames waiting meanwhile are none: the 21st refusal closes, as without them.
  const taken = Array.from({ length: 25 }, () => [limiter.take(1, "c"), limiter.pace(1, "c")][0]);
  assertEquals(taken.slice(0, 5), Array(5).fill("ok"));
  assertEquals(taken.slice(5, 25), Array(20).fill("limited"));
  assertEquals(limiter.take(1, "c"), "close");
});

Deno.test("RateLimiter.strike counts towards the close as a refusal does, and a frame taken clears it", () => {
  const limiter = new RateLimiter({ perConnection: 5, perUser: 100 }, () => 0);
  assertEquals(Array.from({ length: 10 }, () => limiter.strike("c")), Array(10).fill("limited"));
  assertEquals(limiter.take(1, "c"), "ok");
  assertEquals(Array.from({ length: 10 }, () => limiter.strike("c")), Array(10).fill("limited"));
  assertEquals(limiter.strike("c"), "close");
});

Deno.test("RateLimiter.pace waits for the user's budget too, keeping a quarter of it", () => {
  let now = 0;
  const limiter = new RateLimiter({ perConnection: 100, perUser: 4 }, () => now);
  // Of a user's burst of 8 over three connections, 6 paced frames go; 2 are kept.
  const paced = Array.from({ length: 7 }, (_, i) => limiter.pace("u", `c${i % 3}`));
  assertEquals(paced, [0, 0, 0, 0, 0, 0, 250]);
  assertEquals([limiter.take("u", "other"), limiter.take("u", "other")], ["ok", "ok"]);
  assertEquals(limiter.take("u", "other"), "limited");
  // Half a second brings 2 tokens back, which are kept: one more is a quarter of a second off.
  now += 500;
  assertEquals(limiter.pace("u", "c0"), 250);
  now += 250;
  assertEquals(limiter.pace("u", "c0"), 0);
});

Deno.test("RateLimiter forgets buckets that refilled, so keys never closed do not pile up", () => {
  let now = 0;
  const limiter = new RateLimiter({ perConnection: 5, perUser: 5 }, () => now);
  // The REST API's key per user is never forgotten by a close: 100,000 callers, one each.
  for (let i = 0; i < 100_000; i++) {
    assertEquals(limiter.take(`u${i}`, `api:u${i}`), "ok");
    now += 1;
  }
  assert(limiter.size < 2 * 30_000, `expected idle buckets swept, ${limiter.size} held`);
  // A flooding connection's bucket is not idle: a sweep keeps it, and the flood is still closed.
  const flood = Array.from({ length: 21 }, () => limiter.take("f", "flood"));
  assertEquals(flood[20], "close");
  for (let i = 0; i < 30_000; i++) limiter.take(`v${i}`, `api:v${i}`);
  assertEquals(limiter.take("f", "flood"), "close");
});

Deno.test("TypingStarts: a start within TYPING_REPEAT_MS of the last one taken repeats it; a stop forgets it", () => {
  const starts = new TypingStarts(2);
  assertEquals([starts.typing("a"), starts.repeats("a", 0)], [false, false]);
  starts.started("a", 0);
  assertEquals([starts.typing("a"), starts.repeats("a", 999), starts.repeats("a", 1000)], [
    true,
    true,
    false,
  ]);
  starts.stopped("a");
  assertEquals([starts.typing("a"), starts.repeats("a", 10)], [false, false]);
  // Past its bound it starts over.
  starts.started("a", 0);
  starts.started("b", 0);
  starts.started("c", 0);
  assertEquals([starts.typing("a"), starts.typing("b"), starts.typing("c")], [false, false, true]);
});

Deno.test("RateLimiter.forget() drops a closed connection's typing bucket with its frames' one; the user's stay for their other connections", () => {
  const limiter = new RateLimiter({ perConnection: 5, perUser: 100 }, () => 0);
  assertEquals([limiter.take("u", "c"), limiter.typing("u", "c")], ["ok", "ok"]);
  assertEquals(limiter.size, 4);
  limiter.forget("c");
  assertEquals(limiter.size, 2);
});
