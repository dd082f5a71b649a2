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
 * Looks for a token in the `token` query parameter, the `access_token` cookie, an
 * `Authorization: Bearer` header, and a `Sec-WebSocket-Protocol` entry `bearer.<token>`
 * (browsers cannot set headers on a WebSocket), in that order.
 */
export function findToken(req: Request): FoundToken {
  const offered = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((s) => s.trim()).filter(Boolean);
  const bearerEntry = offered.find((p) => p.startsWith(BEARER_PROTOCOL));
  const other = offered.find((p) => !p.startsWith(BEARER_PROTOCOL));
  // A browser fails the handshake when it offered protocols and none is echoed back.
  const protocol = other ?? bearerEntry;

  const query = new URL(req.url).searchParams.get("token")?.trim();
  if (query) return { token: query, source: "query", protocol };
  const cookie = readCookie(req.headers.get("cookie"), "access_token");
  if (cookie) return { token: cookie.replace(/^Bearer\s+/i, ""), source: "cookie", protocol };
  const auth = req.headers.get("authorization");
  const match = auth?.match(/^Bearer\s+(\S+)\s*$/i);
  if (match) return { token: match[1], source: "header", protocol };
  if (bearerEntry) {
    return { token: bearerEntry.slice(BEARER_PROTOCOL.length), source: "subprotocol", protocol };
  }
  return { protocol };
}
