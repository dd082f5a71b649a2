/** The chat page at `/`, its assets, and the development sign-in that mints tokens for it. */

import type { Hono } from "hono";
import { signDevToken } from "../auth/verifier.ts";
import { saysForwarded } from "../auth/request_origin.ts";
import { ApiError, readCapped } from "./api/framework.ts";

/** Largest body the dev sign-in reads. */
const DEV_TOKEN_BODY_BYTES = 16_384;

/** What the page needs from the composition root. */
export interface WebOptions {
  /** The development secret; when set (no JWT key configured), `POST /dev/token` exists. */
  devSecret?: string;
  /** Who the dev sign-in answers (see `Config.devSignIn`); `local` by default. */
  devSignIn?: "local" | "any" | "off";
  /** The `iss` the server requires (JWT_ISSUER), signed into dev tokens so that it takes them. */
  issuer?: string;
  /** The `aud` the server requires (JWT_AUDIENCE), signed into dev tokens so that it takes them. */
  audience?: string;
  /** Folder of the page's files; `web/` next to the sources by default. */
  webDir?: URL;
}

/** Room patterns a dev sign-in grants when the page does not ask for others. */
export const DEV_ROOMS = ["room:*", "ticket:*", "chat:*"];

/** How long a dev token lives. */
export const DEV_TOKEN_TTL = "12h";

// A fixed list, so no request path ever reaches the file system.
const ASSETS: Record<string, { file: string; type: string; anyOrigin?: boolean }> = {
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  // Imported by applications' own pages, on their own origins: a module script is fetched in CORS
  // mode, so without this header a browser refuses it. It holds nothing but public code.
  "/client.js": { file: "client.js", type: "text/javascript; charset=utf-8", anyOrigin: true },
  "/styles.css": { file: "styles.css", type: "text/css; charset=utf-8" },
};

// Scripts and styles only from here; media URLs may be absolute (PUBLIC_URL), so any http(s) image.
const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob: http: https:",
  "connect-src 'self' ws: wss: http: https:",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
  "form-action 'self'",
].join("; ");

const ROOM_GRANT = /^(\*|[a-z-]{1,20}:(\*|[A-Za-z0-9*][A-Za-z0-9_.@*-]{0,127}))$/;

/** Latin letters NFKD does not take apart, as they are spelled in ASCII ("Weiß" is not "Wei"). */
const LATIN_SPELLED: Record<string, string> = {
  ß: "ss",
  æ: "ae",
  œ: "oe",
  ø: "o",
  ł: "l",
  đ: "d",
  ð: "d",
  þ: "th",
  ħ: "h",
  ı: "i",
};

/**
 * A user id for a display name: `dev-` and a slug of its Latin letters and digits (accents
 * dropped), followed by a hash of the name when it has what the slug cannot spell, so that "Иван
 * (QA)" and "Олег (QA)" are two people, not both `dev-qa`.
 */
export async function devUserId(name: string): Promise<string> {
  const folded = name.normalize("NFKD").toLowerCase().replace(/[\u0300-\u036f]/g, "")
    .replace(/[ßæœøłđðþħı]/g, (c) => LATIN_SPELLED[c]);
  const slug = folded.replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);
  // Anything but spaces and punctuation that the slug cannot spell (another script's letters or
  // digits, a Latin letter not above: ə, ŋ; an emoji) calls for the hash; a long name's cut
  // keeps the id it had.
  if (slug && !/[^a-z0-9]/.test(folded.replace(/[\s\p{P}]/gu, ""))) return `dev-${slug}`;
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(name.normalize("NFC")),
  );
  const hex = [...new Uint8Array(digest).slice(0, 6)]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  return slug ? `dev-${slug}-${hex}` : `dev-${hex}`;
}

/** A loopback address, as Deno gives a peer's or as a Host header names one (IPv6 bracketed). */
const LOOPBACK = /^(127(\.\d{1,3}){3}|::1|::ffff:127(\.\d{1,3}){3}|localhost)$/;

/**
 * True for a request from this machine (a loopback address) that no proxy says it forwarded,
 * sent to a loopback name (`localhost`, `127.0.0.1`, `[::1]`): the only one the development
 * sign-in answers by default, as the server listens on every interface and the sign-in grants
 * whatever rooms it is asked for. The Host check stops a web page whose name an attacker points
 * at 127.0.0.1 (DNS rebinding) from minting tokens in a developer's browser.
 */
export function isLocalRequest(req: Request, remote?: Deno.Addr): boolean {
  if (remote?.transport !== "tcp" && remote?.transport !== "udp") return false;
  if (!LOOPBACK.test(remote.hostname.toLowerCase())) return false;
  // HTTP/2 has no Host header: the name is the URL's authority there.
  const host = (req.headers.get("host") ?? new URL(req.url).host).toLowerCase()
    .replace(/^\[(.*)\](:\d+)?$/, "$1").replace(/^([^:]*)(:\d+)?$/, "$1");
  // A proxy's header says the request came from elsewhere, whatever its address.
  return LOOPBACK.test(host) && !saysForwarded(req);
}

/** Checks a dev sign-in request; returns the name and grants, or an error message. */
export function parseDevSignIn(
  input: unknown,
): { name: string; rooms: string[] } | { error: string } {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return { error: 'Expected a JSON object {"name": "...", "rooms"?: ["room:*", ...]}' };
  }
  const record = input as Record<string, unknown>;
  const name = typeof record.name === "string" ? record.name.trim() : "";
  // deno-lint-ignore no-control-regex
  if (!name || name.length > 64 || /[\u0000-\u001f\u007f]/.test(name)) {
    return { error: 'Field "name" must be 1 to 64 printable characters' };
  }
  if (record.rooms === undefined || record.rooms === null) return { name, rooms: DEV_ROOMS };
  if (
    !Array.isArray(record.rooms) || record.rooms.length === 0 || record.rooms.length > 50 ||
    !record.rooms.every((r) => typeof r === "string" && ROOM_GRANT.test(r))
  ) {
    return {
      error:
        'Field "rooms" must be a list of 1 to 50 room keys or patterns (room:general, ticket:*)',
    };
  }
  return { name, rooms: [...new Set(record.rooms as string[])] };
}

/** Serves the page at `/` and its assets; adds `POST /dev/token` only with a development secret. */
export function mountWeb(app: Hono, options: WebOptions = {}): void {
  const webDir = options.webDir ?? new URL("../../web/", import.meta.url);
  const mode = options.devSecret === undefined ? "off" : options.devSignIn ?? "local";
  // The remote address is Deno's `info`, which the composition root hands Hono as its env.
  const mayMint = (req: Request, env: unknown) =>
    mode === "any" ||
    (mode === "local" &&
      isLocalRequest(req, (env as Deno.ServeHandlerInfo | undefined)?.remoteAddr));
  const common = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  };

  app.get("/", async (c) => {
    const devSignIn = mayMint(c.req.raw, c.env);
    let html: string;
    try {
      html = await Deno.readTextFile(new URL("index.html", webDir));
    } catch {
      return new Response("The page is not installed", { status: 404 });
    }
    // The page offers the dev sign-in only when the server mints tokens for it.
    html = html.replace('data-dev-sign-in="off"', `data-dev-sign-in="${devSignIn ? "on" : "off"}"`);
    return new Response(html, {
      headers: {
        ...common,
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": PAGE_CSP,
      },
    });
  });

  for (const [path, asset] of Object.entries(ASSETS)) {
    app.get(path, async () => {
      try {
        const body = await Deno.readFile(new URL(asset.file, webDir));
        return new Response(body, {
          headers: {
            ...common,
            "content-type": asset.type,
            ...(asset.anyOrigin ? { "access-control-allow-origin": "*" } : {}),
          },
        });
      } catch {
        return new Response("Not found", { status: 404 });
      }
    });
  }

  const secret = options.devSecret;
  if (secret === undefined || mode === "off") return;
  app.post("/dev/token", async (c) => {
    if (!mayMint(c.req.raw, c.env)) {
      return c.json({
        error:
          "The development sign-in answers only requests from this machine: configure a JWT key, or set DEV_SIGN_IN=any on a server nobody else can reach",
      }, 403);
    }
    let input: unknown;
    try {
      // Unauthenticated: a sign-in is a few hundred bytes, so a body past the cap is not read on.
      input = JSON.parse(
        new TextDecoder().decode(await readCapped(c.req.raw, DEV_TOKEN_BODY_BYTES, "Body")),
      );
    } catch (err) {
      if (err instanceof ApiError) {
        return c.json({ error: err.message }, err.status as 413);
      }
      return c.json({ error: "Expected a JSON body" }, 400);
    }
    const parsed = parseDevSignIn(input);
    if ("error" in parsed) return c.json({ error: parsed.error }, 400);
    const sub = await devUserId(parsed.name);
    const username = sub.slice("dev-".length);
    const claims: Record<string, unknown> = {
      sub,
      username,
      name: parsed.name,
      rooms: parsed.rooms,
    };
    // Configured with them, the server refuses a token without them (`deno task token` signs them).
    if (options.issuer !== undefined) claims.iss = options.issuer;
    if (options.audience !== undefined) claims.aud = options.audience;
    const token = await signDevToken(secret, claims, DEV_TOKEN_TTL);
    return c.json(
      { token, user: { id: sub, username, name: parsed.name }, expires_in: DEV_TOKEN_TTL },
      200,
      { "cache-control": "no-store" },
    );
  });
}
