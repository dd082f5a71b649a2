import { assertEquals } from "../../tests/assert.ts";
import { byteRange } from "./media_routes.ts";

Deno.test("byteRange reads one range, blanks allowed around its parts, and leaves the rest whole", () => {
  const cases: [string | undefined, ReturnType<typeof byteRange>][] = [
    [undefined, undefined],
    ["bytes=0-9", { start: 0, end: 9 }],
    [" Bytes = 2 - 5 ", { start: 2, end: 5 }],
    ["bytes=90-", { start: 90, end: 99 }],
    ["bytes=-10", { start: 90, end: 99 }],
    ["bytes=50-1000", { start: 50, end: 99 }],
    ["bytes=100-", null],
    ["bytes=-0", null],
    ["bytes=5-2", undefined],
    ["bytes=-", undefined],
    ["bytes=0-1,5-6", undefined],
    ["items=0-9", undefined],
    ["bytes=1 2-3", undefined],
    ["bytes=x-3", undefined],
    ["bytes 0-9", undefined],
  ];
  for (const [header, expected] of cases) assertEquals(byteRange(header, 100), expected, header);
});

Deno.test("byteRange answers a header longer than any single range with the whole file, at once", () => {
  assertEquals(byteRange("bytes=0-9" + " ".repeat(300), 100), undefined);
  // Blanks around an optional part made the old pattern's time grow with their square: a header
  // like this one held the server for seconds.
  assertEquals(byteRange("bytes=" + " ".repeat(64_000) + "x", 100), undefined);
  assertEquals(byteRange("bytes=" + " ".repeat(150) + "1-2", 100), { start: 1, end: 2 });
});
