/** Serving stored attachments over HTTP. */

import type { Hono } from "hono";
import { isHiddenName, type LocalMediaStore } from "../media/local_media_store.ts";
import {
  detectMime,
  isActiveContent,
  isScriptOrStyle,
  mimeFromName,
  SNIFF_BYTES,
} from "../media/mime.ts";

/**
 * Headers for a stored file: the type its message announced (from its name, or from its first
 * bytes, `head`, when the name says nothing; never an active type from bytes), never run as a
 * page, nor loaded by one as a script or style.
 */
export function mediaHeaders(
  name: string,
  size: number,
  head: Uint8Array = new Uint8Array(),
): Headers {
  const type = detectMime(head, name);
  // The chat page's CSP trusts 'self': an upload served as script or style would let an
  // injected tag run or style it. As plain text, nosniff keeps it from loading.
  const served = isScriptOrStyle(type) ? "text/plain" : type;
  const headers = new Headers({
    "content-type": served.startsWith("text/") ? `${served}; charset=utf-8` : served,
    "content-length": String(size),
    "x-content-type-options": "nosniff",
    // Not kept by shared caches (a CDN): a deleted message's or room's files must stop being
    // served when the server stops serving them.
    "cache-control": "private, max-age=3600",
    "accept-ranges": "bytes",
  });
  if (isActiveContent(type) || type.startsWith("text/")) {
    headers.set("content-security-policy", "default-src 'none'; sandbox");
  }
  if (isActiveContent(type)) {
    headers.set(
      "content-disposition",
      `attachment; filename*=UTF-8''${encodeURIComponent(name.toWellFormed())}`,
    );
  }
  return headers;
}

/** Longest `Range` header read; a longer one is answered with the whole file. */
const MAX_RANGE_HEADER = 200;

/**
 * The byte range a `Range` header asks of a `size`-byte file: undefined to send it whole (no
 * header, a unit other than bytes, or several ranges, which a server may answer whole), null
 * when no byte of it exists (416).
 */
export function byteRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | null | undefined {
  // A single range is a few dozen characters. Split rather than matched whole: a pattern with
  // blanks on either side of an optional part takes time growing with their square.
  if (header === undefined || header.length > MAX_RANGE_HEADER) return undefined;
  const eq = header.indexOf("=");
  const dash = header.indexOf("-", eq + 1);
  if (eq < 0 || dash < 0 || header.slice(0, eq).trim().toLowerCase() !== "bytes") return undefined;
  const from = header.slice(eq + 1, dash).trim();
  const to = header.slice(dash + 1).trim();
  if (!/^\d*$/.test(from) || !/^\d*$/.test(to) || (from === "" && to === "")) return undefined;
  if (from === "") {
    // A suffix: the last N bytes.
    const n = Number(to);
    if (n === 0 || size === 0) return null;
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(from);
  const end = to === "" ? size - 1 : Math.min(Number(to), size - 1);
  if (to !== "" && Number(to) < start) return undefined;
  if (start >= size) return null;
  return { start, end };
}

/** True when an `If-None-Match` list names `etag` (weak comparison, as RFC 9110 says). */
function noneMatch(header: string, etag: string): boolean {
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}

/** A stream of `length` bytes of `file` from `start`, closing the file when done or cancelled. */
function slice(file: Deno.FsFile, start: number, length: number): ReadableStream<Uint8Array> {
  let left = length;
  let positioned = false;
  return new ReadableStream({
    async pull(controller) {
      try {
        if (!positioned) {
          await file.seek(start, Deno.SeekMode.Start);
          positioned = true;
        }
        const chunk = new Uint8Array(Math.min(left, 64 * 1024));
        const n = await file.read(chunk);
        if (n === null || n === 0) throw new Error("The file ended before its range");
        left -= n;
        controller.enqueue(chunk.subarray(0, n));
        if (left === 0) {
          file.close();
          controller.close();
        }
      } catch (err) {
        file.close();
        controller.error(err);
      }
    },
    cancel() {
      file.close();
    },
  });
}

/** True for the open failures that say the server cannot read its volume, not that no file is. */
function unreadable(err: unknown): boolean {
  return err instanceof Deno.errors.PermissionDenied ||
    err instanceof Deno.errors.FilesystemLoop ||
    (err as { code?: string }).code === "EIO";
}

/**
 * Serves `/media/<key>` and `/uploads/<key>` from the media store, GET and HEAD, with an ETag
 * (answered 304 when the client has it) and single byte ranges (206, or 416 past the end), which
 * a browser needs to seek in an audio or video attachment.
 */
export function mountMedia(app: Hono, media: LocalMediaStore): void {
  const serve = (prefix: string) =>
  async (
    c: { req: { path: string; method: string; header(name: string): string | undefined } },
  ) => {
    let key: string;
    try {
      key = decodeURIComponent(c.req.path.slice(prefix.length));
    } catch {
      return new Response("Bad path", { status: 400 });
    }
    if (prefix === "/") key = key.replace(/^\/+/, "");
    const path = media.pathOf(key);
    if (!path || key.split("/").some(isHiddenName)) {
      return new Response("Not found", { status: 404 });
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (err) {
      // A volume the server cannot read (permissions, I/O) is not a file that was deleted; any
      // other failure (a name too long, not a directory) is a name that finds no file.
      if (!unreadable(err)) return new Response("Not found", { status: 404 });
      console.error(`media: cannot read ${JSON.stringify(key.slice(0, 200))}: ${err}`);
      return new Response("Media unavailable", { status: 503 });
    }
    const info = await file.stat();
    if (!info.isFile) {
      file.close();
      return new Response("Not found", { status: 404 });
    }
    const name = path.split("/").pop()!;
    let head: Uint8Array<ArrayBuffer> | undefined;
    if (mimeFromName(name) === "application/octet-stream") {
      // A name that says nothing (`IMG_0042`): its first bytes, as when its message was sent.
      head = new Uint8Array(SNIFF_BYTES);
      try {
        let read = 0;
        while (read < head.length) {
          const n = await file.read(head.subarray(read));
          if (n === null) break;
          read += n;
        }
        head = head.subarray(0, read);
        await file.seek(0, Deno.SeekMode.Start);
      } catch (err) {
        file.close();
        throw err;
      }
    }
    const headers = mediaHeaders(name, info.size, head);
    // Files are never rewritten in place, but a name freed by a failed send's cleanup can be
    // used again: that is another inode written at another time.
    const etag = `"${info.size.toString(36)}-${(info.mtime?.getTime() ?? 0).toString(36)}-${
      (info.ino ?? 0).toString(36)
    }"`;
    headers.set("etag", etag);
    const ifNoneMatch = c.req.header("if-none-match");
    if (ifNoneMatch !== undefined && noneMatch(ifNoneMatch, etag)) {
      file.close();
      headers.delete("content-length");
      return new Response(null, { status: 304, headers });
    }
    const ifRange = c.req.header("if-range");
    const range = ifRange === undefined || ifRange.trim() === etag
      ? byteRange(c.req.header("range"), info.size)
      : undefined;
    if (range === null) {
      file.close();
      return new Response("Range not satisfiable", {
        status: 416,
        headers: { "content-range": `bytes */${info.size}`, "etag": etag },
      });
    }
    let status = 200;
    if (range) {
      status = 206;
      headers.set("content-range", `bytes ${range.start}-${range.end}/${info.size}`);
      headers.set("content-length", String(range.end - range.start + 1));
    }
    if (c.req.method === "HEAD") {
      file.close();
      return new Response(null, { status, headers });
    }
    const body = range ? slice(file, range.start, range.end - range.start + 1) : file.readable;
    return new Response(body, { status, headers });
  };
  app.on(["GET", "HEAD"], "/media/*", serve("/media/"));
  app.on(["GET", "HEAD"], "/uploads/*", serve("/"));
}
