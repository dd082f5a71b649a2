/** JWT verification with jose, the algorithms pinned to the configured key type. */

import * as jose from "jose";
import { createPublicKey } from "node:crypto";
import { join } from "node:path";

/** Checks a token and returns its claims, or throws. */
export interface TokenVerifier {
  /**
   * Verifies signature, `exp`, `nbf` and, when configured, `iss` and `aud`; throws
   * {@link KeySetUnavailable} when the keys could not be had, which says nothing of the token.
   */
  verify(token: string): Promise<Record<string, unknown>>;
  /** Human-readable description of the key in use, for the start-up log. */
  readonly description: string;
  /** How the remote key set fares, when the keys come from `JWT_JWKS_URL`. */
  readonly keySet?: KeySetState;
}

/**
 * A token could not be checked because the key set at `JWT_JWKS_URL` could not be fetched (the
 * identity provider is down or unreachable, or answers with something that is no key set): the
 * server's trouble, to be answered as a passing failure (503), never as the client's bad token.
 */
export class KeySetUnavailable extends Error {
  /**
   * Why: the key set could not be fetched (`down`), or it was fetched under a second ago and
   * lacks the token's key, which a rotation may have just added (`new_key`).
   */
  readonly reason: "down" | "new_key";

  /** Creates the error; `cause` is what the fetch failed with. */
  constructor(message: string, options?: ErrorOptions & { reason?: "down" | "new_key" }) {
    super(message, options);
    this.name = "KeySetUnavailable";
    this.reason = options?.reason ?? "down";
  }
}

/** Whether the remote key set answers, for the metrics. */
export interface KeySetState {
  /** False from a failed fetch of the key set until one succeeds. */
  readonly up: boolean;
  /** Tokens that could not be checked because the key set could not be fetched. */
  readonly refusals: number;
}

/** Which key verifies tokens. */
export interface VerifierOptions {
  /** HS256 shared secret. */
  secret?: string;
  /** PEM public key (RSA → RS256; EC P-256, P-384, P-521 → ES256, ES384, ES512). */
  publicKey?: string;
  /** JWKS endpoint; keys limited to asymmetric algorithms. */
  jwksUrl?: string;
  /** Required issuer. */
  issuer?: string;
  /** Required audience. */
  audience?: string;
  /** How long fetched keys are used before the key set is fetched again, ms (10 minutes). */
  keySetMaxAgeMs?: number;
  /**
   * A file that keeps the key set last fetched (public keys), so that a server restarted while
   * the key set cannot be fetched still checks tokens with it (see {@link KEY_SET_STALE_MS}).
   */
  keySetCachePath?: string;
}

/**
 * How long the keys last fetched stay in use while the key set cannot be fetched: an identity
 * provider's outage must not refuse every token, while a key it removed is dropped within a day.
 */
export const KEY_SET_STALE_MS = 24 * 3600_000;

const ASYMMETRIC = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
];

/** The algorithm of an EC key's curve (as node:crypto names it): the curve fixes the hash. */
const EC_ALGORITHMS: Record<string, string> = {
  prime256v1: "ES256",
  secp384r1: "ES384",
  secp521r1: "ES512",
};

/** What JWT_PUBLIC_KEY must hold, for the errors. */
const PEM_EXPECTED = 'expected an RSA or EC (P-256, P-384, P-521) "PUBLIC KEY" PEM';

/**
 * Picks RS256, or ES256, ES384 or ES512 by the curve, from the PEM's key type; anything else is a
 * configuration error naming JWT_PUBLIC_KEY.
 */
async function importPem(pem: string): Promise<{ key: CryptoKey; alg: string }> {
  const normalized = pem.replace(/\\n/g, "\n").trim();
  // What an identity provider's page often shows: node:crypto reads the key out of it, WebCrypto
  // does not, and the start would fail with words that name no setting.
  if (normalized.includes("-----BEGIN CERTIFICATE-----")) {
    throw new Error(
      `JWT_PUBLIC_KEY is an X.509 certificate, not a public key: give its public key (${PEM_EXPECTED}` +
        "; `openssl x509 -pubkey -noout -in cert.pem` prints it)",
    );
  }
  let type: string | undefined;
  let curve: string | undefined;
  try {
    const key = createPublicKey(normalized);
    type = key.asymmetricKeyType;
    curve = key.asymmetricKeyDetails?.namedCurve;
  } catch (err) {
    throw new Error(
      `JWT_PUBLIC_KEY is not a PEM public key (${PEM_EXPECTED}): ${(err as Error).message}`,
    );
  }
  const alg = type === "rsa" ? "RS256" : type === "ec" ? EC_ALGORITHMS[curve ?? ""] : undefined;
  if (!alg) {
    const what = type === "ec" ? `EC on the curve ${curve}` : `"${type}"`;
    throw new Error(`JWT_PUBLIC_KEY has an unsupported key type, ${what}: ${PEM_EXPECTED}`);
  }
  try {
    return { key: await jose.importSPKI(normalized, alg), alg };
  } catch (err) {
    // A key node:crypto reads in another form (PKCS#1 "RSA PUBLIC KEY", a private key).
    throw new Error(
      `JWT_PUBLIC_KEY could not be read as a "PUBLIC KEY" PEM (${PEM_EXPECTED}): ` +
        (err as Error).message,
    );
  }
}

/**
 * How soon after a fetch of the key set a token naming a key it lacks fetches it again. An
 * identity provider that rotates publishes the new key and signs with it at once: within this
 * the token is answered as unchecked (retry), not as invalid (see `verify`).
 */
export const KEY_SET_REFETCH_MS = 1000;

/** Seconds by which a token's `exp` and `nbf` may be off, for clocks that disagree a little. */
export const CLOCK_TOLERANCE_SECONDS = 5;

/** Builds the verifier for the first configured key source: JWKS, then public key, then secret. */
export async function createVerifier(options: VerifierOptions): Promise<TokenVerifier> {
  const common = {
    issuer: options.issuer,
    audience: options.audience,
    clockTolerance: CLOCK_TOLERANCE_SECONDS,
    // A token without `exp` would never expire: refused, as the systems we replace never issue one.
    requiredClaims: ["exp"],
  };
  if (options.jwksUrl) {
    const url = options.jwksUrl;
    const state = { up: true, refusals: 0, fetches: 0, fetchedAt: -Infinity };
    const fetchKeySet = remoteKeySetFetch(url, state, await readKeySetCache(options, url));
    const jwks = jose.createRemoteJWKSet(new URL(url), {
      [jose.customFetch]: fetchKeySet,
      cooldownDuration: KEY_SET_REFETCH_MS,
      ...(options.keySetMaxAgeMs !== undefined ? { cacheMaxAge: options.keySetMaxAgeMs } : {}),
    });
    // Fetched once at start, so that an unusable URL is in the log before any client meets it
    // (and the first clients do not wait for the fetch); a failure here is logged by the fetch.
    jwks.reload().catch(() => {});
    return {
      description: `JWKS ${url}`,
      keySet: state,
      async verify(token) {
        const check = async () =>
          (await jose.jwtVerify(token, jwks, { ...common, algorithms: ASYMMETRIC }))
            .payload as Record<string, unknown>;
        let fetches = state.fetches;
        try {
          try {
            return await check();
          } catch (err) {
            // jose holds its refetch back by the wall clock, which a step back (NTP) holds for
            // the step's length: past a second by the monotonic clock, the set is fetched here.
            if (
              !(err instanceof jose.errors.JWKSNoMatchingKey) || !state.up ||
              state.fetches !== fetches ||
              performance.now() - state.fetchedAt < KEY_SET_REFETCH_MS
            ) throw err;
            fetches = state.fetches;
            await jwks.reload().catch(() => {});
            return await check();
          }
        } catch (err) {
          // Checked against the keys last fetched while the key set is down, or fetched under a
          // second ago (no set was fetched for it, above): a key they lack may be a new one (a
          // rotation), so the token is not called invalid. A set fetched for this token, or
          // while it waited, is the provider's word: its key is not there.
          const noKey = err instanceof jose.errors.JWKSNoMatchingKey;
          const unknownKey = noKey && !state.up;
          const justFetched = noKey && state.up && state.fetches === fetches;
          if (justFetched) {
            throw new KeySetUnavailable(
              `The key set at JWT_JWKS_URL (${url}), fetched under a second ago, lacks this ` +
                "token's key: it is fetched again at the next try",
              { cause: err, reason: "new_key" },
            );
          }
          if (!(err instanceof KeySetUnavailable) && !unknownKey) throw err;
          state.refusals++;
          if (unknownKey) {
            throw new KeySetUnavailable(
              `The key set at JWT_JWKS_URL (${url}) cannot be fetched, and its keys fetched ` +
                "last lack this token's",
              { cause: err },
            );
          }
          throw err;
        }
      },
    };
  }
  if (options.publicKey) {
    const { key, alg } = await importPem(options.publicKey);
    return {
      description: `${alg} public key`,
      async verify(token) {
        const { payload } = await jose.jwtVerify(token, key, { ...common, algorithms: [alg] });
        return payload as Record<string, unknown>;
      },
    };
  }
  if (!options.secret) throw new Error("No JWT key configured");
  // Imported once: given raw bytes, jose would import the key again for every token.
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(options.secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["verify"],
  );
  return {
    description: "HS256 secret",
    async verify(token) {
      const { payload } = await jose.jwtVerify(token, key, { ...common, algorithms: ["HS256"] });
      return payload as Record<string, unknown>;
    },
  };
}

/** Most characters of a key set fetch's failure quoted in the log. */
const MAX_REASON = 300;

/**
 * jose's fetch of the key set, with every way it can fail (no connection, no answer in time, a
 * status other than 200, a body that is no JWK set) thrown as {@link KeySetUnavailable}: jose
 * throws them as errors that read like a bad token's, and a token it could not check was
 * refused as invalid. Logs once when the key set stops answering and once when it answers again,
 * not for every token meanwhile.
 */
function remoteKeySetFetch(
  url: string,
  state: { up: boolean; fetches: number; fetchedAt: number },
  cache: { path?: string; last?: CachedKeySet; writtenAt?: number },
): jose.FetchImplementation {
  /** The last key set fetched, and when (Date.now()). */
  let last = cache.last;
  const stale = () => last !== undefined && Date.now() - last.at < KEY_SET_STALE_MS;
  const down = (reason: string, cause?: unknown): KeySetUnavailable => {
    const error = new KeySetUnavailable(
      `The key set at JWT_JWKS_URL (${url}) could not be fetched: ${reason.slice(0, MAX_REASON)}`,
      { cause },
    );
    if (state.up) {
      state.up = false;
      console.error(
        `auth: ${error.message}. ` +
          (stale()
            ? `Until it answers, tokens are checked with the keys fetched at ${
              new Date(last!.at).toISOString()
            } (for up to a day); one signed by another key is refused with 503`
            : "Until it answers, tokens cannot be checked: sockets are refused with 503 " +
              "(Socket.IO: authentication_error), the API answers 503"),
      );
    }
    return error;
  };
  const fetchKeys = async (...[input, init]: Parameters<jose.FetchImplementation>) => {
    let response: Response;
    try {
      response = await fetch(input, init);
    } catch (err) {
      const timedOut = err instanceof DOMException && err.name === "TimeoutError";
      throw down(timedOut ? "no answer in time" : (err as Error).message, err);
    }
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => {});
      throw down(`it answered HTTP ${response.status}, not 200`);
    }
    let body: unknown;
    try {
      body = await response.json();
    } catch (err) {
      throw down("its answer is not JSON", err);
    }
    const keys = (body as { keys?: unknown } | null)?.keys;
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === "object" && k !== null)) {
      throw down('its answer is not a JWK set ({"keys": [...]})');
    }
    if (!state.up) {
      state.up = true;
      console.log(`auth: the key set at JWT_JWKS_URL (${url}) answers again`);
    }
    return body;
  };
  return async (...args) => {
    state.fetches++;
    state.fetchedAt = performance.now();
    try {
      const body = await fetchKeys(...args);
      const changed = JSON.stringify(body) !== JSON.stringify(last?.body);
      last = { body, at: Date.now() };
      // Kept for a restart during an outage; written again when the keys change, or at most
      // hourly to move its time on (a failed write costs only that).
      if (cache.path && (changed || last.at - (cache.writtenAt ?? 0) > 3600_000)) {
        cache.writtenAt = last.at;
        await writeKeySetCache(cache.path, url, last).catch((err) =>
          console.error(`auth: the key set could not be kept in ${cache.path}: ${err}`)
        );
      }
    } catch (err) {
      // The keys fetched last, for a while: the outage is the identity provider's, and the
      // tokens its keys signed are still good.
      if (!(err instanceof KeySetUnavailable) || !stale()) throw err;
    }
    return Response.json(last!.body);
  };
}

/** A key set kept on disk: what it answered, from where, and when (Date.now()). */
interface CachedKeySet {
  body: unknown;
  at: number;
}

/** The key set kept at `keySetCachePath` for this URL, if any can be read. */
async function readKeySetCache(
  options: VerifierOptions,
  url: string,
): Promise<{ path?: string; last?: CachedKeySet; writtenAt?: number }> {
  const path = options.keySetCachePath;
  if (!path) return {};
  try {
    const kept = JSON.parse(await Deno.readTextFile(path));
    // Another URL's keys (the setting changed) must not check this one's tokens; nor may keys
    // "fetched" in the future (a clock that was ahead) be kept past a day from now.
    if (
      kept?.url !== url || typeof kept.at !== "number" || kept.at > Date.now() + 60_000 ||
      !Array.isArray(kept.body?.keys)
    ) {
      return { path };
    }
    return { path, last: { body: kept.body, at: kept.at }, writtenAt: kept.at };
  } catch {
    return { path };
  }
}

/** Writes the key set kept for a restart, whole or not at all (a rename). */
async function writeKeySetCache(path: string, url: string, last: CachedKeySet): Promise<void> {
  const temporary = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(temporary, JSON.stringify({ url, at: last.at, body: last.body }), {
    mode: 0o600,
  });
  await Deno.rename(temporary, path).catch(async (err) => {
    await Deno.remove(temporary).catch(() => {});
    throw err;
  });
}

/** Signs an HS256 token, for the `token` task, the dev sign-in and tests. */
export async function signDevToken(
  secret: string,
  claims: Record<string, unknown>,
  expiresIn: string | number = "12h",
): Promise<string> {
  return await new jose.SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** Path of the development secret inside the data directory. */
export function devSecretPath(dataDir: string): string {
  return join(dataDir, "dev-jwt-secret");
}

/** Path of the last key set fetched from `JWT_JWKS_URL`, inside the data directory. */
export function keySetCachePath(dataDir: string): string {
  return join(dataDir, "jwks_cache.json");
}

/**
 * How old an empty development secret must be to count as left by a start that failed between
 * creating and writing it (a full disk, a kill -9): younger, its creator may be writing it still.
 */
const DEV_SECRET_LEFTOVER_MS = 3_000;

/**
 * Reads the development secret, creating a random one when absent, or when the file is empty and
 * older than `leftoverMs`: a start that failed after creating it left it so. `created` tells the
 * caller to log it, `replaced` that it was such a leftover. Safe when several isolates start at
 * once: the file is never removed, and it is only written under its lock, once seen empty.
 */
export async function ensureDevSecret(
  dataDir: string,
  { leftoverMs = DEV_SECRET_LEFTOVER_MS }: { leftoverMs?: number } = {},
): Promise<{ secret: string; created: boolean; replaced: boolean }> {
  const path = devSecretPath(dataDir);
  // Owner only, as the server creates it: `deno task token` may run before its first start, and
  // the directory goes on to hold every message and the directory database.
  await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
  // What to do, said where a start fails on the file: nothing else tells it.
  const advice = (doing: "created" | "read" | "written", err: unknown) =>
    new Error(
      `Development secret ${path} could not be ${doing}: ${(err as Error).message}; ` +
        (doing === "read"
          ? "remove it to have a new one created (tokens signed with the old one stop working)"
          : `DATA_DIR (${dataDir}) may be full or not writable: make room and start again`) +
        ", or set JWT_SECRET",
    );
  let file: Deno.FsFile;
  let creator = false;
  try {
    file = await Deno.open(path, { read: true, write: true, createNew: true, mode: 0o600 });
    creator = true;
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) throw advice("created", err);
    try {
      file = await Deno.open(path, { read: true, write: true });
    } catch {
      // Readable but not ours to write (another user's `deno task token`): it must be whole.
      const secret = await Deno.readTextFile(path).then(secretIn, (err) => {
        throw advice("read", err);
      });
      if (secret) return { secret, created: false, replaced: false };
      throw new Error(
        `Development secret ${path} is empty and not writable: remove it to have a new one ` +
          "created, or set JWT_SECRET",
      );
    }
  }
  try {
    while (true) {
      await file.lock(true);
      try {
        await file.seek(0, Deno.SeekMode.Start);
        const secret = await readAll(file).then(
          (bytes) => secretIn(new TextDecoder().decode(bytes)),
          (err) => {
            throw advice("read", err);
          },
        );
        if (secret) return { secret, created: false, replaced: false };
        // An mtime far in the future (the clock was set back since) is no creator's either.
        const written = (await file.stat()).mtime?.getTime() ?? 0;
        if (creator || Math.abs(Date.now() - written) >= leftoverMs) {
          const fresh = jose.base64url.encode(crypto.getRandomValues(new Uint8Array(32)));
          await writeSecret(file, fresh).catch((err) => {
            throw advice("written", err);
          });
          return { secret: fresh, created: true, replaced: !creator };
        }
      } finally {
        await file.unlock();
      }
      // Another isolate created the file and has not written it yet (one of an earlier version,
      // which writes it without the lock, or this one before it took the lock).
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    file.close();
  }
}

/** The secret a development secret file holds; "" when blank (a power cut may leave NULs). */
function secretIn(text: string): string {
  return text.replaceAll("\0", "").trim();
}

/** What is left to read of a small file. */
async function readAll(file: Deno.FsFile): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(4096);
  for (let n; (n = await file.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
  const all = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  chunks.reduce((at, c) => (all.set(c, at), at + c.length), 0);
  return all;
}

/** Replaces the file's content with the secret, through the handle that holds its lock. */
async function writeSecret(file: Deno.FsFile, secret: string): Promise<void> {
  await file.truncate(0);
  await file.seek(0, Deno.SeekMode.Start);
  const bytes = new TextEncoder().encode(secret + "\n");
  for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
}
