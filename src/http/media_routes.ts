/** Serving stored attachments over HTTP. */

import type { Hono } from "hono";
import type { LocalMediaStore } from "../media/local_media_store.ts";
import { isActiveContent, mimeFromName } from "../media/mime.ts";

/** Headers for a stored file: type from its name, never sniffed, never run as a page. */
export function mediaHeaders(name: string, size: number): Headers {
  const type = mimeFromName(name);
  const headers = new Headers({
    "content-type": type.startsWith("text/") ? `${type}; charset=utf-8` : type,
    "content-length": String(size),
    "x-content-type-options": "nosniff",
    "cache-control": "public, max-age=3600",
    "accept-ranges": "none",
  });
  if (isActiveContent(type) || type.startsWith("text/")) {
    headers.set("content-security-policy", "default-src 'none'; sandbox");
  }
  if (isActiveContent(type)) {
    headers.set("content-disposition", `attachment; filename*=UTF-8''${encodeURIComponent(name)}`);
  }
  return headers;
}

/** Serves `/media/<key>` and `/uploads/<key>` from the media store, GET and HEAD. */
export function mountMedia(app: Hono, media: LocalMediaStore): void {
  const serve = (prefix: string) => async (c: { req: { path: string; method: string } }) => {
    let key: string;
    try {
      key = decodeURIComponent(c.req.path.slice(prefix.length));
    } catch {
      return new Response("Bad path", { status: 400 });
    }
    if (prefix === "/") key = key.replace(/^\/+/, "");
    const path = media.pathOf(key);
    if (!path || key.split("/").some((part) => part.startsWith(".upload-"))) {
      return new Response("Not found", { status: 404 });
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch {
      return new Response("Not found", { status: 404 });
    }
    const info = await file.stat();
    if (!info.isFile) {
      file.close();
      return new Response("Not found", { status: 404 });
    }
    const headers = mediaHeaders(path.split("/").pop()!, info.size);
    if (c.req.method === "HEAD") {
      file.close();
      return new Response(null, { headers });
    }
    return new Response(file.readable, { headers });
  };
  app.on(["GET", "HEAD"], "/media/*", serve("/media/"));
  app.on(["GET", "HEAD"], "/uploads/*", serve("/"));
}
