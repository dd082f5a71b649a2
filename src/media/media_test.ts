import { assert, assertEquals, assertMatch, assertRejects } from "../../tests/assert.ts";
import { decodeAttachment, decodeAttachmentChunks, decodedLength } from "./base64.ts";
import { MediaAttachmentStore } from "./attachments.ts";
import { isHiddenName, LocalMediaStore, mediaUrlPath } from "./local_media_store.ts";
import { numberedName, safeFilename } from "./filename.ts";
import { detectMime, formatSize, isActiveContent, isScriptOrStyle } from "./mime.ts";

Deno.test("safeFilename() keeps only a harmless basename", () => {
  assertEquals(safeFilename("../../etc/passwd"), "passwd");
  assertEquals(safeFilename("a/b\\c.png"), "c.png");
  assertEquals(safeFilename(".."), "file");
  assertEquals(safeFilename(".htaccess"), "htaccess");
  assertEquals(safeFilename("invoice\u202Egpj.html"), "invoicegpj.html");
  assertEquals(safeFilename("a\u2066b\u2069\u200Fc.txt"), "abc.txt");
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
  // Whitespace is counted out when the size matters, and skipped when even the bound fits.
  assertEquals(decodedLength("QU JD\n", 0), 3);
  assertEquals(decodedLength("QQ==\n "), 1);
  assertEquals(decodedLength("QU JD\n", 100), 4);
  assertEquals(decodeAttachment("QU\nJD", 3), new TextEncoder().encode("ABC"));
  assertEquals(decodeAttachment("QUJD", 3), new TextEncoder().encode("ABC"));
  assertEquals(decodeAttachment("data:text/plain;base64,QUJD", 3), new TextEncoder().encode("ABC"));
  await assertRejects(() => decodeAttachment("QUJD", 2), /too large/);
  // A small limit is told in KiB, not as "0.0 MiB".
  await assertRejects(
    () => decodeAttachment("QUJD".repeat(10_001), 30_000),
    /the limit is 30000 bytes \(29 KiB\)$/,
  );
  await assertRejects(() => decodeAttachment("QUJ*", 10), /not valid base64/);
  await assertRejects(() => decodeAttachment("QUJDR", 10), /not valid base64/);
  await assertRejects(() => decodeAttachment("data:text/plain,hello", 10), /not valid base64/);
});

Deno.test("detectMime() trusts the name, and conclusive bytes where the name says nothing", () => {
  assertEquals(detectMime(new TextEncoder().encode("%PDF-1.4"), "x.bin"), "application/pdf");
  assertEquals(detectMime(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]), "x.png"), "image/png");
  assertEquals(detectMime(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]), "IMG_1"), "image/jpeg");
  const ftyp = (brand: string) => new TextEncoder().encode(`\0\0\0\x18ftyp${brand}`);
  assertEquals(detectMime(ftyp("heic"), "IMG_2"), "image/heic");
  assertEquals(detectMime(ftyp("isom"), "clip"), "video/mp4");
  assertEquals(detectMime(new Uint8Array([0x50, 0x4b, 3, 4]), "archive"), "application/zip");
  assertEquals(
    detectMime(new Uint8Array([0x50, 0x4b, 3, 4]), "x.docx"),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  );
  assertEquals(detectMime(new Uint8Array([1, 2]), "notes.txt"), "text/plain");
  assertEquals(detectMime(new Uint8Array([1, 2]), "blob"), "application/octet-stream");
  assertEquals(isActiveContent("image/svg+xml"), true);
  assertEquals(isActiveContent("text/html; charset=utf-8"), true);
  assertEquals(isActiveContent("image/png"), false);
  assertEquals(isScriptOrStyle("text/css; charset=utf-8"), true);
  assertEquals(isScriptOrStyle("application/javascript"), true);
  assertEquals(isScriptOrStyle("text/plain"), false);
  assertEquals(formatSize(102400), "100.0 KB");
  assertEquals(formatSize(500), "500 bytes");
  assertEquals(formatSize(10 * 1024 * 1024), "10.0 MB");
});

/** Concatenates chunks, copying each before the shared buffer is reused. */
function joined(chunks: Iterable<Uint8Array>): Uint8Array {
  const parts = [...(function* () {
    for (const c of chunks) yield c.slice();
  })()];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

Deno.test("decodeAttachmentChunks() decodes across chunk edges, with whitespace and a data URL", async () => {
  const bytes = new Uint8Array(1000).map((_, i) => (i * 7) % 256);
  const text = bytes.toBase64();
  for (const size of [3, 4, 5, 64, 999, 1000, 4096]) {
    assertEquals(joined(decodeAttachmentChunks(text, 1000, size)), bytes, `chunks of ${size}`);
  }
  const spaced = text.replace(/(.{76})/g, "$1\r\n");
  assertEquals(joined(decodeAttachmentChunks(spaced, 1000, 7)), bytes);
  assertEquals(joined(decodeAttachmentChunks(`data:x/y;base64,${text}`, 1000, 10)), bytes);
  assertEquals(joined(decodeAttachmentChunks("", 10)), new Uint8Array());
  // The size is refused before anything is decoded; bad characters when their chunk comes.
  await assertRejects(() => joined(decodeAttachmentChunks(text, 999)), /too large/);
  const bad = text.slice(0, 800) + "*" + text.slice(801);
  await assertRejects(
    () => joined(decodeAttachmentChunks(bad, 1000, 30)),
    /not valid base64/,
  );
  await assertRejects(
    () => joined(decodeAttachmentChunks("QUJDR", 10, 3)),
    /not valid base64/,
  );
});

Deno.test("attachment store: a file whose base64 breaks late leaves no file, not even its neighbours", async () => {
  const root = await Deno.makeTempDir();
  try {
    const store = new MediaAttachmentStore(new LocalMediaStore(root), 10 * 1024 * 1024);
    const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251);
    const good = big.toBase64();
    // The bad character sits past the first decoded megabyte.
    const broken = good.slice(0, 3_500_000) + "!" + good.slice(3_500_001);
    // Told of each file as it is stored, and of the failure while the files are still there.
    const told: string[] = [];
    // Each file sits in a folder of its own under files/t.
    const listed = () =>
      [...Deno.readDirSync(`${root}/files/t`)].flatMap((e) =>
        e.isDirectory
          ? [...Deno.readDirSync(`${root}/files/t/${e.name}`)].map((f) => f.name)
          : [e.name]
      ).sort();
    await assertRejects(
      () =>
        store.save(
          "files/t",
          [{ name: "ok.bin", data: good }, { name: "bad.bin", data: broken }],
          {
            onStored: (stored) => {
              told.push(`stored ${stored.map((a) => a.name)}`);
              return Promise.resolve();
            },
            onAbandon: () => {
              told.push(`abandoned with ${listed().filter((n) => !n.startsWith("."))}`);
              return Promise.resolve(true);
            },
          },
        ),
      /not valid base64/,
    );
    assertEquals(told, ["stored ok.bin", "abandoned with ok.bin"]);
    // Nothing is left, not even the folders the file emptied.
    assertEquals(await Deno.stat(`${root}/files/t`).then(() => "there", () => "gone"), "gone");
    // The good one alone is stored whole, its type told from its first bytes.
    const [stored] = await store.save("files/t", [{
      name: "pic.bin",
      data: new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, ...big]).toBase64(),
    }]);
    assertEquals(stored.size, big.length + 8);
    assertEquals(stored.mime, "image/png");
    const onDisk = await Deno.readFile(`${root}/${stored.key}`);
    assertEquals(onDisk.subarray(8), big);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: a deleted file's name is never given again, unless no message carried it", async () => {
  const root = await Deno.makeTempDir();
  try {
    const media = new LocalMediaStore(root);
    const bytes = new Uint8Array([1, 2, 3]);
    const first = await media.put("d", "a.txt", bytes);
    assertEquals(await media.delete(first.key), true);
    assertEquals((await media.put("d", "a.txt", bytes)).name, "a_1.txt");
    // The mark is empty and hidden; the bytes are gone.
    const names: string[] = [];
    for await (const e of Deno.readDir(`${root}/d`)) names.push(e.name);
    const marks = names.filter(isHiddenName);
    assertEquals(marks.length, 1);
    assertEquals((await Deno.stat(`${root}/d/${marks[0]}`)).size, 0);
    assertEquals(await media.delete(first.key), false);
    const unshown = await media.put("d", "b.txt", bytes);
    assertEquals(await media.delete(unshown.key, { unannounced: true }), true);
    assertEquals((await media.put("d", "b.txt", bytes)).name, "b.txt");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: a name holding random digits goes without a mark, and so does a folder its last file leaves empty", async () => {
  const root = await Deno.makeTempDir();
  try {
    const media = new LocalMediaStore(root);
    const store = new MediaAttachmentStore(media, 1024);
    const data = btoa("x");
    // Stored names of every form: no extension, an odd one, a long name cut to fit.
    const names = ["a.txt", "README", "x.b c", "é".repeat(250) + ".jpeg", "a_1.txt"];
    const keys: string[] = [];
    for (const form of ["tagged", "random"] as const) {
      const saved = await store.save("r", names.map((name) => ({ name, data })), { names: form });
      keys.push(...saved.map((a) => a.key));
    }
    // Past a collision, numbered after the random digits.
    const hex = "0123456789ab4def8123456789abcdef";
    for (const name of [`${hex}.png`, hex, `a_${hex}.txt`]) {
      for (let n = 0; n < 2; n++) keys.push((await media.put("r", name, [])).key);
    }
    assertEquals(keys.filter((key) => key.includes(`${hex}_1`)).length, 3);
    // A legacy name keeps its mark, and with it its folder; so does a client's name of 32 hex
    // digits (an MD5) stored before names were random, which an older server would give again.
    const legacy = await media.put("old", "a.txt", []);
    const md5 = await media.put("old", "d41d8cd98f00b204e9800998ecf8427e.png", []);
    for (const key of [...keys, legacy.key, md5.key]) {
      assertEquals(await media.delete(key), true, key);
    }
    assertEquals(await Deno.stat(`${root}/r`).then(() => "there", () => "gone"), "gone");
    assertEquals([...Deno.readDirSync(`${root}/old`)].map((e) => isHiddenName(e.name)), [
      true,
      true,
    ]);
    assertEquals(
      (await media.put("old", "d41d8cd98f00b204e9800998ecf8427e.png", [])).key,
      "old/d41d8cd98f00b204e9800998ecf8427e_1.png",
    );
    // A folder of its own goes, then the one that held it, no further.
    const [own] = await store.save("files/t", [{ name: "a.png", data }]);
    await store.discard([own]);
    assertEquals([...Deno.readDirSync(`${root}/files`)], []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: a put whose folder a delete removed before its first write makes the folder again", async () => {
  const root = await Deno.makeTempDir();
  const { open } = Deno;
  try {
    const media = new LocalMediaStore(root);
    const last = await media.put("r", "a_0123456789ab4def8123456789abcdef.txt", []);
    // The room's last file goes just as the next put has made the folder, before its write.
    let raced = false;
    (Deno as { open: unknown }).open = async (path: string, options: Deno.OpenOptions) => {
      if (!raced && String(path).includes(".upload-")) {
        raced = true;
        assertEquals(await media.delete(last.key), true);
      }
      return await open(path, options);
    };
    const next = await media.put("r", "b.txt", new Uint8Array([7]));
    assert(raced);
    assertEquals(await Deno.readFile(`${root}/${next.key}`), new Uint8Array([7]));
  } finally {
    (Deno as { open: unknown }).open = open;
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("attachment store: a file is shown by the client's name, stored by a safe one", async () => {
  const root = await Deno.makeTempDir();
  try {
    const store = new MediaAttachmentStore(new LocalMediaStore(root), 1024);
    const data = new Uint8Array([1]).toBase64();
    const long = "Отчёт ".repeat(40) + "итог.pdf";
    const names = ["Отчёт: итоги года?.pdf", 'Q1 <draft> "final".docx', long, "a\u202Egpj.html"];
    const saved = await store.save("d", names.map((name) => ({ name, data })));
    assertEquals(saved.map((a) => a.originalName), [
      "Отчёт: итоги года?.pdf",
      'Q1 <draft> "final".docx',
      long.trim(),
      "agpj.html",
    ]);
    assertEquals(saved[0].name, "Отчёт_ итоги года_.pdf");
    assertEquals(saved[1].name, "Q1 _draft_ _final_.docx");
    // 254 characters, over 255 bytes on disk: cut there, in full here.
    assertEquals(new TextEncoder().encode(saved[2].name).length <= 255, true);
    assertEquals([...saved[2].originalName].length, [...long].length);
    // The type a message gives is the one the file is served with, from the name on disk.
    const svg = new TextEncoder().encode("<svg xmlns='http://www.w3.org/2000/svg'/>").toBase64();
    const [dotted] = await store.save("d", [{ name: "logo.svg.", data: svg }]);
    assertEquals([dotted.originalName, dotted.name, dotted.mime], [
      "logo.svg.",
      "logo.svg",
      "image/svg+xml",
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("attachment store: `.` and `..` are shown as stored; a binary file too large is told like a base64 one", async () => {
  const root = await Deno.makeTempDir();
  try {
    const store = new MediaAttachmentStore(new LocalMediaStore(root), 1024);
    const data = new Uint8Array([1]).toBase64();
    // Accepted as the hostile names they are, and shown as they are stored.
    const dots = await store.save("d", [".", "..", "a/..", " .. "].map((name) => ({ name, data })));
    // Each in a folder of its own, so the same name four times.
    assertEquals(dots.map((a) => [a.originalName, a.name]), [
      ["file", "file"],
      ["file", "file"],
      ["file", "file"],
      ["file", "file"],
    ]);
    assertEquals(new Set(dots.map((a) => a.key)).size, 4);
    const binary = await assertRejects(() =>
      store.save("d", [{ name: "big.bin", data: new Uint8Array(1025) }])
    );
    const base64 = await assertRejects(() =>
      store.save("d", [{ name: "big.bin", data: new Uint8Array(1025).toBase64() }])
    );
    assertEquals((binary as Error).message, (base64 as Error).message);
    assertEquals(
      (binary as Error).message,
      "File is too large: 1025 bytes, the limit is 1024 bytes (1 KiB)",
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: a retired name is passed over before any link, so a crash right after linking never leaves bytes at it", async () => {
  const root = await Deno.makeTempDir();
  try {
    const media = new LocalMediaStore(root);
    const first = await media.put("d", "a.txt", new Uint8Array([1]));
    await media.delete(first.key);
    // Every name that appears in the folder while the next a.txt is stored.
    const seen: string[] = [];
    const watcher = Deno.watchFs(`${root}/d`);
    const watching = (async () => {
      for await (const event of watcher) seen.push(...event.paths.map((p) => p.split("/").pop()!));
    })();
    assertEquals((await media.put("d", "a.txt", new Uint8Array([2]))).name, "a_1.txt");
    await new Promise((r) => setTimeout(r, 200));
    watcher.close();
    await watching;
    assert(seen.includes("a_1.txt"), seen.join(" "));
    assertEquals(seen.filter((n) => n === "a.txt"), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("attachment store: a temporary name that cannot be removed fails the save, and its file goes, before any commit could name it", async () => {
  const root = await Deno.makeTempDir();
  try {
    const store = new MediaAttachmentStore(new LocalMediaStore(root), 1024);
    const noted: string[][] = [];
    await assertRejects(() =>
      store.save("t", [{ name: "a.txt", data: new Uint8Array([1, 2]) }], {
        names: "random",
        onStored: (stored) => {
          noted.push(stored.map((a) => a.name));
          // The volume refuses the unlink: a folder now stands where the temporary file was.
          for (const e of Deno.readDirSync(`${root}/t`)) {
            if (!e.name.startsWith(".upload-")) continue;
            Deno.removeSync(`${root}/t/${e.name}`);
            Deno.mkdirSync(`${root}/t/${e.name}/x`, { recursive: true });
          }
          return Promise.resolve();
        },
      })
    );
    assertEquals(noted.length, 1);
    // What it linked is gone with it; only the stand-in folder is left.
    const left = [...Deno.readDirSync(`${root}/t`)];
    assertEquals(left.filter((e) => !e.name.startsWith(".")).map((e) => e.name), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("mediaUrlPath() writes a URL for a key stored with a lone surrogate: the name the disk has", () => {
  assertEquals(mediaUrlPath("files/ticket_1/\ud800.png"), "/media/files/ticket_1/%EF%BF%BD.png");
  assertEquals(mediaUrlPath("uploads/a b.png"), "/uploads/a%20b.png");
});

Deno.test("attachment store: a file not stored (bytes that are not base64) takes the folder of its own with it", async () => {
  const root = await Deno.makeTempDir();
  try {
    const store = new MediaAttachmentStore(new LocalMediaStore(root), 1024);
    const [kept] = await store.save("files/t", [{ name: "ok.txt", data: btoa("fine") }]);
    for (const data of ["@@@@", "QUJD!!!!"]) {
      await assertRejects(
        () => store.save("files/t", [{ name: "a.png", data }]),
        /not valid base64/,
      );
    }
    // The stored file's folder alone.
    assertEquals([...Deno.readDirSync(`${root}/files/t`)].map((e) => e.name), [
      kept.key.split("/")[2],
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/**
 * Runs `fn` with Deno.link failing as it does on a volume without hard links (SMB, FUSE), after
 * `delayMs` (a network volume's round trip).
 */
async function withoutHardLinks(
  fn: (warnings: string[]) => Promise<void>,
  delayMs = 0,
): Promise<void> {
  const { link } = Deno;
  const { warn } = console;
  const warnings: string[] = [];
  // What Deno 2.9 throws for link(2)'s ENOTSUP (a FUSE volume refusing links, tried by hand).
  (Deno as { link: typeof Deno.link }).link = async () => {
    if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    throw Object.assign(new Error("Operation not supported (os error 95)"), { code: "ENOTSUP" });
  };
  console.warn = (text: string) => warnings.push(text);
  try {
    await fn(warnings);
  } finally {
    (Deno as { link: typeof Deno.link }).link = link;
    console.warn = warn;
  }
}

Deno.test("media store: a volume without hard links takes files by renaming them over an empty file of their name, never over another's, and says so once", async () => {
  const root = await Deno.makeTempDir();
  try {
    await withoutHardLinks(async (warnings) => {
      const media = new LocalMediaStore(root);
      const first = await media.put("d", "a.txt", new Uint8Array([1]));
      const second = await media.put("d", "a.txt", new Uint8Array([2, 2]));
      // Taken one after the other, and side by side.
      const together = await Promise.all(
        [3, 4, 5].map((n) => media.put("d", "a.txt", new Uint8Array(n).fill(n))),
      );
      assertEquals([first.name, second.name], ["a.txt", "a_1.txt"]);
      assertEquals(new Set([first, second, ...together].map((f) => f.name)).size, 5);
      for (const file of [first, second, ...together]) {
        assertEquals((await Deno.readFile(`${root}/${file.key}`)).length, file.size);
      }
      // Nothing hidden is left: no temporary file, no claim.
      assertEquals([...Deno.readDirSync(`${root}/d`)].filter((e) => isHiddenName(e.name)), []);
      assertEquals(warnings.length, 1);
      assertMatch(warnings[0], /makes no hard links/);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: without hard links, a file whose save a crash cut short is found by its claim and swept; a recorded one is left", async () => {
  const root = await Deno.makeTempDir();
  try {
    await withoutHardLinks(async () => {
      const media = new LocalMediaStore(root);
      // A save that never returns: the process dies while the message is committed.
      let crashed!: () => void;
      const cut = new Promise<void>((resolve) => crashed = resolve);
      void media.put("d", "lost.txt", new Uint8Array([9]), {
        linked: () => {
          crashed();
          return new Promise(() => {});
        },
      });
      await cut;
      const kept = await media.put("d", "kept.txt", new Uint8Array([1]));
      // An hour later, as the sweep sees them.
      const old = new Date(Date.now() - 2 * 60 * 60_000);
      for (const e of Deno.readDirSync(`${root}/d`)) {
        Deno.utimeSync(`${root}/d/${e.name}`, old, old);
      }
      assertEquals(await media.sweepTemporary(60 * 60_000), 1);
      const left = [...Deno.readDirSync(`${root}/d`)].map((e) => e.name);
      assert(!left.includes("lost.txt"), left.join(" "));
      assert(left.includes(kept.name), left.join(" "));
      // Its name stays taken, as any swept file's.
      assertEquals((await media.put("d", "lost.txt", new Uint8Array([1]))).name, "lost_1.txt");
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("media store: the first files a volume without hard links takes at once are all stored, whichever link was refused first", async () => {
  const root = await Deno.makeTempDir();
  try {
    await withoutHardLinks(async (warnings) => {
      const media = new LocalMediaStore(root);
      // All three links under way when the first is refused.
      const files = await Promise.all(
        [1, 2, 3].map((n) => media.put("d", `f${n}.txt`, new Uint8Array([n]))),
      );
      assertEquals(files.map((f) => f.name), ["f1.txt", "f2.txt", "f3.txt"]);
      assertEquals(warnings.length, 1);
    }, 50);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** Every file under `root`, relative to it, with its size. */
function tree(root: string, rel = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(`${root}/${rel}`)) {
    if (e.isDirectory) out.push(...tree(root, `${rel}${e.name}/`));
    else out.push(`${rel}${e.name} (${Deno.statSync(`${root}/${rel}${e.name}`).size} B)`);
  }
  return out.sort();
}

Deno.test("media store: without hard links, a put whose rename failed and that died freeing its name leaves no claim that would sweep the file another message names there next", async () => {
  const root = await Deno.makeTempDir();
  const { rename, remove } = Deno;
  let crashed!: () => void;
  const crash = new Promise<void>((resolve) => crashed = resolve);
  try {
    await withoutHardLinks(async () => {
      // The volume fails the rename once (a network volume's hiccup)...
      (Deno as { rename: unknown }).rename = () => {
        (Deno as { rename: unknown }).rename = rename;
        return Promise.reject(
          Object.assign(new Error("Input/output error (os error 5)"), { code: "EIO" }),
        );
      };
      // ...and the process dies as it frees the name: the first removal it makes never returns.
      let removals = 0;
      (Deno as { remove: unknown }).remove = (path: string, ...rest: unknown[]) => {
        if (!String(path).includes(".upload-") || ++removals < 2) {
          return (remove as (...a: unknown[]) => Promise<void>)(path, ...rest);
        }
        crashed();
        return new Promise(() => {});
      };
      void new LocalMediaStore(root).put("uploads", "photo.png", new Uint8Array([1, 2, 3]))
        .catch(() => {});
      await crash;
      (Deno as { remove: unknown }).remove = remove;
      // Restarted: another user's photo takes the first free name, and a message names it.
      const restarted = new LocalMediaStore(root);
      const named = await restarted.put("uploads", "photo.png", new Uint8Array([7, 7, 7, 7]));
      // The next start's sweep, hours later.
      const old = new Date(Date.now() - 2 * 60 * 60_000);
      for (const e of Deno.readDirSync(`${root}/uploads`)) {
        Deno.utimeSync(`${root}/uploads/${e.name}`, old, old);
      }
      await restarted.sweepTemporary(60 * 60_000);
      assert(tree(root).includes(`${named.key} (4 B)`), tree(root).join(" "));
    });
  } finally {
    (Deno as { rename: unknown }).rename = rename;
    (Deno as { remove: unknown }).remove = remove;
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("LocalMediaStore.checkUsable() refuses a file or a path under one, makes a missing root, passes a link to nothing yet, and leaves no file behind", async () => {
  const base = await Deno.makeTempDir({ prefix: "media-usable-" });
  try {
    await Deno.writeTextFile(`${base}/file`, "x");
    await assertRejects(
      () => new LocalMediaStore(`${base}/file`).checkUsable(),
      /^it exists and is not a directory$/,
    );
    await assertRejects(
      () => new LocalMediaStore(`${base}/file/media`).checkUsable(),
      /^Not a directory \(os error 20\)/,
    );
    await new LocalMediaStore(`${base}/made/media`).checkUsable();
    assertEquals([...Deno.readDirSync(`${base}/made/media`)], []);
    // A volume mounted later, linked to before it is there.
    await Deno.symlink(`${base}/volume/media`, `${base}/link`);
    await new LocalMediaStore(`${base}/link`).checkUsable();
    await new LocalMediaStore(`${base}/link/sub`).checkUsable();
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});
