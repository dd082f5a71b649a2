import { assertEquals, assertMatch, assertRejects } from "../../tests/assert.ts";
import { decodeAttachment, decodedLength } from "./base64.ts";
import { numberedName, safeFilename } from "./filename.ts";
import { detectMime, formatSize, isActiveContent } from "./mime.ts";

Deno.test("safeFilename() keeps only a harmless basename", () => {
  assertEquals(safeFilename("../../etc/passwd"), "passwd");
  assertEquals(safeFilename("a/b\\c.png"), "c.png");
  assertEquals(safeFilename(".."), "file");
  assertEquals(safeFilename(".htaccess"), "htaccess");
  assertEquals(safeFilename("re\u0000po\u001frt.pdf"), "report.pdf");
  assertEquals(safeFilename("what?.txt"), "what_.txt");
  const long = safeFilename("é".repeat(300) + ".jpeg");
  assertEquals(new TextEncoder().encode(long).length <= 255, true);
  assertMatch(long, /\.jpeg$/);
  assertEquals(numberedName("a.png", 3), "a_3.png");
});

Deno.test("decodeAttachment() refuses oversize input before decoding and bad input always", async () => {
  assertEquals(decodedLength("QUJD"), 3);
  assertEquals(decodedLength("QUI="), 2);
  assertEquals(decodedLength("QQ=="), 1);
  assertEquals(decodeAttachment("QUJD", 3), new TextEncoder().encode("ABC"));
  assertEquals(decodeAttachment("data:text/plain;base64,QUJD", 3), new TextEncoder().encode("ABC"));
  await assertRejects(() => decodeAttachment("QUJD", 2), /too large/);
  await assertRejects(() => decodeAttachment("QUJ*", 10), /not valid base64/);
  await assertRejects(() => decodeAttachment("QUJDR", 10), /not valid base64/);
  await assertRejects(() => decodeAttachment("data:text/plain,hello", 10), /not valid base64/);
});

Deno.test("detectMime() trusts conclusive bytes and otherwise the name", () => {
  assertEquals(detectMime(new TextEncoder().encode("%PDF-1.4"), "x.bin"), "application/pdf");
  assertEquals(detectMime(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]), "x.png"), "image/jpeg");
  assertEquals(
    detectMime(new Uint8Array([0x50, 0x4b, 3, 4]), "x.docx"),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  );
  assertEquals(detectMime(new Uint8Array([1, 2]), "notes.txt"), "text/plain");
  assertEquals(detectMime(new Uint8Array([1, 2]), "blob"), "application/octet-stream");
  assertEquals(isActiveContent("image/svg+xml"), true);
  assertEquals(isActiveContent("text/html; charset=utf-8"), true);
  assertEquals(isActiveContent("image/png"), false);
  assertEquals(formatSize(102400), "100.0 KB");
  assertEquals(formatSize(500), "500 bytes");
  assertEquals(formatSize(10 * 1024 * 1024), "10.0 MB");
});
