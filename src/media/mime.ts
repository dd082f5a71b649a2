/** Media types from names and bytes, and which of them a browser would execute. */

import { extname } from "node:path";

const BY_EXTENSION: Record<string, string> = {
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".jpe": "image/jpeg",
  ".jfif": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".avif": "image/avif",
  ".bmp": "image/bmp",
  ".ico": "image/x-icon",
  ".svg": "image/svg+xml",
  ".heic": "image/heic",
  ".heif": "image/heif",
  ".tif": "image/tiff",
  ".tiff": "image/tiff",
  ".pdf": "application/pdf",
  ".zip": "application/zip",
  ".gz": "application/gzip",
  ".tar": "application/x-tar",
  ".7z": "application/x-7z-compressed",
  ".rar": "application/vnd.rar",
  ".json": "application/json",
  ".xml": "application/xml",
  ".txt": "text/plain",
  ".log": "text/plain",
  ".md": "text/markdown",
  ".csv": "text/csv",
  ".html": "text/html",
  ".htm": "text/html",
  ".xhtml": "application/xhtml+xml",
  ".css": "text/css",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".mp3": "audio/mpeg",
  ".wav": "audio/wav",
  ".ogg": "audio/ogg",
  ".m4a": "audio/mp4",
  ".aac": "audio/aac",
  ".flac": "audio/flac",
  ".oga": "audio/ogg",
  ".opus": "audio/ogg",
  ".weba": "audio/webm",
  ".mp4": "video/mp4",
  ".m4v": "video/mp4",
  ".webm": "video/webm",
  ".ogv": "video/ogg",
  ".mkv": "video/x-matroska",
  ".3gp": "video/3gpp",
  ".mov": "video/quicktime",
  ".doc": "application/msword",
  ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  ".xls": "application/vnd.ms-excel",
  ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  ".ppt": "application/vnd.ms-powerpoint",
  ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
  ".odt": "application/vnd.oasis.opendocument.text",
  ".rtf": "application/rtf",
};

const SIGNATURES: [number[], string][] = [
  [[0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "image/png"],
  [[0xff, 0xd8, 0xff], "image/jpeg"],
  [[0x47, 0x49, 0x46, 0x38], "image/gif"],
  [[0x25, 0x50, 0x44, 0x46, 0x2d], "application/pdf"],
  [[0x1f, 0x8b], "application/gzip"],
  [[0x42, 0x4d], "image/bmp"],
  [[0x49, 0x44, 0x33], "audio/mpeg"],
  [[0x4f, 0x67, 0x67, 0x53], "audio/ogg"],
  [[0x1a, 0x45, 0xdf, 0xa3], "video/webm"],
];

const startsWith = (bytes: Uint8Array, sig: number[], at = 0) =>
  bytes.length >= at + sig.length && sig.every((b, i) => bytes[at + i] === b);

/** The media type a filename's extension implies, or `application/octet-stream`. */
export function mimeFromName(name: string): string {
  return BY_EXTENSION[extname(name).toLowerCase()] ?? "application/octet-stream";
}

/** Bytes of a file's start {@link detectMime} looks at. */
export const SNIFF_BYTES = 64;

/**
 * The type a file is served with: its name's, and where the name says nothing (no extension, or
 * one not known), its leading bytes' when they are conclusive. Only passive types (images, audio,
 * video, PDF, archives) are ever read from bytes. A message announces this same type, so that
 * what a client shows (an image, a player) is what the URL then gives it.
 */
export function detectMime(bytes: Uint8Array, name: string): string {
  const byName = mimeFromName(name);
  if (byName !== "application/octet-stream") return byName;
  for (const [sig, type] of SIGNATURES) if (startsWith(bytes, sig)) return type;
  if (
    startsWith(bytes, [0x52, 0x49, 0x46, 0x46]) && startsWith(bytes, [0x57, 0x45, 0x42, 0x50], 8)
  ) {
    return "image/webp";
  }
  if (startsWith(bytes, [0x50, 0x4b, 0x03, 0x04])) return "application/zip";
  // ISO media (`ftyp` and a brand): HEIF and AVIF pictures, AAC audio, else video.
  if (startsWith(bytes, [0x66, 0x74, 0x79, 0x70], 4)) {
    const brand = String.fromCharCode(...bytes.subarray(8, 12));
    if (brand === "avif" || brand === "avis") return "image/avif";
    if (["heic", "heix", "heim", "heis", "mif1", "msf1"].includes(brand)) return "image/heic";
    if (brand === "M4A " || brand === "M4B ") return "audio/mp4";
    return "video/mp4";
  }
  return byName;
}

/** A type without its parameters, lower-cased: `Text/HTML; charset=utf-8` is `text/html`. */
const essence = (mime: string) => mime.split(";")[0].trim().toLowerCase();

/** True for types a browser would render as a page or run as script: HTML, SVG, XML, JS. */
export function isActiveContent(mime: string): boolean {
  const type = essence(mime);
  return type === "text/html" || type === "application/xhtml+xml" || type === "image/svg+xml" ||
    type === "text/xml" || type === "application/xml" || type.endsWith("+xml") ||
    type === "text/javascript" || type === "application/javascript";
}

/**
 * True for types a page loads as its own script or style (`<script src>`, a worker,
 * `<link rel=stylesheet>`), which is what the page's origin vouches for.
 */
export function isScriptOrStyle(mime: string): boolean {
  const type = essence(mime);
  return type === "text/javascript" || type === "application/javascript" || type === "text/css";
}

/** A size as Django's filesizeformat-like text, 1024-based with one decimal: `100.0 KB`. */
export function formatSize(bytes: number): string {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  if (bytes < 1024) return `${bytes} bytes`;
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
