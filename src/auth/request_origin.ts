/** The origin a request was sent to as its client saw it, behind a reverse proxy too. */

/** A Host as a proxy may pass it on: a DNS name, IPv4 or bracketed IPv6 address, and a port. */
const PLAIN_HOST =
  /^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;

/** The longest host[:port] taken: a DNS name has at most 253 characters. */
const MAX_HOST = 260;

/** What a proxy says of the request its client sent, each part only when it is well formed. */
interface ForwardedParts {
  /** `http` or `https`. */
  proto?: string;
  /** A plain host[:port], as {@link PLAIN_HOST} reads it. */
  host?: string;
}

/**
 * Splits `text` at each `separator` outside double quotes (RFC 7239 quotes values that hold
 * `:`, `[` or `,`), up to `limit` parts.
 */
function splitOutsideQuotes(text: string, separator: string, limit: number): string[] {
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length && parts.length < limit - 1; i++) {
    const c = text[i];
    if (c === "\\" && quoted) i++;
    else if (c === '"') quoted = !quoted;
    else if (c === separator && !quoted) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

/** A quoted-string's content, or the token as it is. */
function unquote(value: string): string {
  const v = value.trim();
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"')
    ? v.slice(1, -1).replace(/\\(.)/g, "$1")
    : v;
}

/** `value` when it is a plain host[:port] with a port a socket can have, else undefined. */
function plainHost(value: string | undefined): string | undefined {
  if (value === undefined || value.length > MAX_HOST || !PLAIN_HOST.test(value)) return undefined;
  const port = /:(\d+)$/.exec(value)?.[1];
  return port !== undefined && Number(port) > 65535 ? undefined : value;
}

/** `http` or `https` when `value` names one of them, else undefined. */
function webProto(value: string | undefined): string | undefined {
  const proto = value?.trim().toLowerCase();
  return proto === "http" || proto === "https" ? proto : undefined;
}

/** The first of a header's comma-separated values, trimmed. */
function firstValue(header: string | null): string | undefined {
  return header === null ? undefined : header.split(",", 1)[0].trim();
}

/**
 * The scheme and host the first proxy was asked for: `Forwarded`'s first element (the proxy
 * nearest the client writes it), else `X-Forwarded-Proto` and `X-Forwarded-Host`, each part on
 * its own, as a proxy may send one of them only (nginx `X-Forwarded-Proto` with `Host $host`).
 */
function forwardedParts(req: Request): ForwardedParts {
  const parts: ForwardedParts = {};
  const forwarded = req.headers.get("forwarded");
  if (forwarded !== null) {
    const first = splitOutsideQuotes(forwarded, ",", 2)[0];
    for (const pair of splitOutsideQuotes(first, ";", 32)) {
      const eq = pair.indexOf("=");
      if (eq < 0) continue;
      const name = pair.slice(0, eq).trim().toLowerCase();
      if (name === "proto") parts.proto ??= webProto(unquote(pair.slice(eq + 1)));
      else if (name === "host") parts.host ??= plainHost(unquote(pair.slice(eq + 1)));
    }
  }
  parts.proto ??= webProto(firstValue(req.headers.get("x-forwarded-proto")));
  parts.host ??= plainHost(firstValue(req.headers.get("x-forwarded-host")));
  return parts;
}

/**
 * The origin (`scheme://host[:port]`) the request's client sent it to: with `trustProxy`, the
 * scheme and host a proxy names in `Forwarded` or `X-Forwarded-Proto` / `X-Forwarded-Host` where
 * they are well formed, else (and always without `trustProxy`) the request URL's, from `Host`.
 * For the URLs the server builds for that client only: a page can add these headers to its own
 * credentialed fetch, so they never decide whose page the server trusts.
 */
export function requestOrigin(req: Request, trustProxy: boolean): string {
  const url = new URL(req.url);
  if (!trustProxy) return url.origin;
  const { proto, host } = forwardedParts(req);
  if (proto === undefined && host === undefined) return url.origin;
  try {
    return new URL(`${proto ?? url.protocol.slice(0, -1)}://${host ?? url.host}`).origin;
  } catch {
    // A name the URL parser still refuses (a label of digits past 255): the request's own.
    return url.origin;
  }
}

/** Headers a proxy adds to say it forwarded a request, or for whom (lower case, as Headers keys are). */
const FORWARDED = /^(forwarded|x-forwarded-[a-z0-9-]*|x-real-ip|x-client-ip|true-client-ip)$/;

/**
 * True when a request carries a header a proxy adds to say it forwarded it: `Forwarded`, any
 * `X-Forwarded-*`, `X-Real-IP`, `X-Client-IP`, `True-Client-IP` (nginx's common setups send
 * only some of them, `X-Real-IP` alone among them).
 */
export function saysForwarded(req: Request): boolean {
  for (const name of req.headers.keys()) if (FORWARDED.test(name)) return true;
  return false;
}
