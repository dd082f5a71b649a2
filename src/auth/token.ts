/** Finding the bearer token in an HTTP or WebSocket upgrade request. */

const BEARER_PROTOCOL = "bearer.";

/** Where the token was found and, for the subprotocol route, which protocol to answer with. */
export interface FoundToken {
  /** The raw JWT, if any source carried one. */
  token?: string;
  /** Which source carried it: an ambient cookie is told apart from a token sent on purpose. */
  source?: "query" | "cookie" | "header" | "subprotocol";
  /** Subprotocol to echo in the upgrade response, when the client offered any. */
  protocol?: string;
}

/** Reads a cookie's value from a Cookie header. */
export function readCookie(header: string | null, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) {
      const value = part.slice(eq + 1).trim().replace(/^"(.*)"$/, "$1");
      try {
        return decodeURIComponent(value);
      } catch {
        return value;
      }
    }
  }
  return undefined;
}

/**
 * Whether the request's cookie may authenticate it. A browser sends cookies with cross-site
 * WebSocket handshakes and credentialed requests too, so another site's page could act as the
 * user (cross-site WebSocket hijacking): the cookie counts only without an `Origin`, from this
 * host, or from one of `trustedOrigins`.
 */
function cookieMayAuthenticate(req: Request, trustedOrigins: readonly string[]): boolean {
  const origin = req.headers.get("origin");
  return !origin || trustedOrigin(origin, req, trustedOrigins);
}

/**
 * Whether a request's `origin` is this server's own host (its `Host`, as the chat page at `/`
 * sends it) or one of `trustedOrigins`: the pages whose cookie signs in, and, once
 * ALLOWED_ORIGINS is set, the pages that may open sockets at all. Never a host that `Forwarded`
 * or `X-Forwarded-Host` names, TRUST_PROXY or not: another site's page can add those to a
 * credentialed fetch, and a proxy may pass them on (behind one that rewrites `Host`, PUBLIC_URL
 * among `trustedOrigins` names the public page).
 */
export function trustedOrigin(
  origin: string,
  req: Request,
  trustedOrigins: readonly string[],
): boolean {
  let host: string;
  try {
    host = new URL(origin).host;
  } catch {
    return false;
  }
  return host === req.headers.get("host") || trustedOrigins.includes(origin.replace(/\/$/, ""));
}

/**
 * Looks for a token in the `token` query parameter, an `Authorization: Bearer` header, a
 * `Sec-WebSocket-Protocol` entry `bearer.<token>` (browsers cannot set headers on a WebSocket),
 * and the `access_token` cookie (see {@link cookieMayAuthenticate}), in that order: the cookie
 * last, as a client's cookie jar may hold a stale one beside the token it sends on purpose.
 */
export function findToken(req: Request, trustedOrigins: readonly string[] = []): FoundToken {
  const offered = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((s) => s.trim()).filter(Boolean);
  const bearerEntry = offered.find((p) => p.startsWith(BEARER_PROTOCOL));
  const other = offered.find((p) => !p.startsWith(BEARER_PROTOCOL));
  // A browser fails the handshake when it offered protocols and none is echoed back.
  const protocol = other ?? bearerEntry;

  const query = new URL(req.url).searchParams.get("token")?.trim();
  if (query) return { token: query, source: "query", protocol };
  const auth = req.headers.get("authorization");
  const match = auth?.match(/^Bearer\s+(\S+)\s*$/i);
  if (match) return { token: match[1], source: "header", protocol };
  if (bearerEntry) {
    return { token: bearerEntry.slice(BEARER_PROTOCOL.length), source: "subprotocol", protocol };
  }
  const cookie = readCookie(req.headers.get("cookie"), "access_token");
  if (cookie && cookieMayAuthenticate(req, trustedOrigins)) {
    return { token: cookie.replace(/^Bearer\s+/i, ""), source: "cookie", protocol };
  }
  if (cookie) warnCookieOrigin(req.headers.get("origin") ?? "");
  return { protocol };
}

/** Origins already told of (a bounded few: the Origin header is the client's to choose). */
const warnedOrigins = new Set<string>();

/**
 * Says once per origin why a cookie was not used: the client only sees 4001, and a page served
 * from another origin (a dev server on another port) is the usual reason.
 */
function warnCookieOrigin(origin: string): void {
  if (warnedOrigins.has(origin) || warnedOrigins.size >= 20) return;
  warnedOrigins.add(origin);
  console.warn(
    `auth: a WebSocket from origin ${JSON.stringify(origin.slice(0, 200))} carried an ` +
      "access_token cookie that was not used: only the server's own origin, PUBLIC_URL's and " +
      "ALLOWED_ORIGINS may sign in by cookie",
  );
}
