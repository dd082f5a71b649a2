import { Hono } from "hono";
import { assertEquals } from "../../tests/assert.ts";
import { LocalMediaStore } from "../media/local_media_store.ts";
import { byteRange, mediaHeaders, mountMedia } from "./media_routes.ts";

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

Deno.test("mediaHeaders: uploaded HTML, SVG, XML and text are sandboxed, scripts and styles served as plain text", () => {
  const cases: [string, string, boolean][] = [
    // name, content-type served, sandboxed
    ["page.html", "text/html; charset=utf-8", true],
    ["x.svg", "image/svg+xml", true],
    ["feed.xml", "application/xml", true],
    ["notes.txt", "text/plain; charset=utf-8", true],
    // The chat page's `script-src 'self'` would run them if served as what they are.
    ["evil.js", "text/plain; charset=utf-8", true],
    ["evil.css", "text/plain; charset=utf-8", true],
    ["photo.png", "image/png", false],
  ];
  for (const [name, type, sandboxed] of cases) {
    const headers = mediaHeaders(name, 10);
    assertEquals(headers.get("content-type"), type, name);
    assertEquals(headers.get("x-content-type-options"), "nosniff", name);
    assertEquals(
      headers.get("content-security-policy"),
      sandboxed ? "default-src 'none'; sandbox" : null,
      name,
    );
  }
});

Deno.test("media routes: the store's own files (a half-written upload, a deleted name's mark) and folders answer 404, as a missing file", async () => {
  const root = await Deno.makeTempDir({ prefix: "media-routes-" });
  try {
    const folder = `${root}/files/ticket_1/0123456789abcdef0123456789abcdef`;
    await Deno.mkdir(folder, { recursive: true });
    for (const name of ["a.png", ".upload-0123abcd", ".gone-b.png"]) {
      await Deno.writeTextFile(`${folder}/${name}`, "bytes");
    }
    const app = new Hono();
    mountMedia(app, new LocalMediaStore(root));
    const status = async (path: string) => {
      const res = await app.request(path);
      await res.body?.cancel();
      return res.status;
    };
    const path = "/media/files/ticket_1/0123456789abcdef0123456789abcdef";
    assertEquals(await status(`${path}/a.png`), 200);
    for (const hidden of [`${path}/.upload-0123abcd`, `${path}/.gone-b.png`, path]) {
      assertEquals(await status(hidden), 404, hidden);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
