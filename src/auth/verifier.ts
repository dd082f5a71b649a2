/** JWT verification with jose, the algorithms pinned to the configured key type. */

import * as jose from "jose";
import { createPublicKey } from "node:crypto";
import { join } from "node:path";

/** Checks a token and returns its claims, or throws. */
export interface TokenVerifier {
  /** Verifies signature, `exp`, `nbf` and, when configured, `iss` and `aud`. */
  verify(token: string): Promise<Record<string, unknown>>;
  /** Human-readable description of the key in use, for the start-up log. */
  readonly description: string;
}

/** Which key verifies tokens. */
export interface VerifierOptions {
  /** HS256 shared secret. */
  secret?: string;
  /** PEM public key (RSA → RS256, EC P-256 → ES256). */
  publicKey?: string;
  /** JWKS endpoint; keys limited to asymmetric algorithms. */
  jwksUrl?: string;
  /** Required issuer. */
  issuer?: string;
  /** Required audience. */
  audience?: string;
}

const ASYMMETRIC = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "EdDSA",
];

/** Picks RS256 or ES256 from the PEM's key type; anything else is a configuration error. */
async function importPem(pem: string): Promise<{ key: CryptoKey; alg: string }> {
  const normalized = pem.replace(/\\n/g, "\n").trim();
  let type: string | undefined;
  try {
    type = createPublicKey(normalized).asymmetricKeyType;
  } catch (err) {
    throw new Error(`JWT_PUBLIC_KEY is not a PEM public key: ${(err as Error).message}`);
  }
  const alg = type === "rsa" ? "RS256" : type === "ec" ? "ES256" : undefined;
  if (!alg) throw new Error(`JWT_PUBLIC_KEY has unsupported key type "${type}" (RSA or EC P-256)`);
  return { key: await jose.importSPKI(normalized, alg), alg };
}

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
    const jwks = jose.createRemoteJWKSet(new URL(options.jwksUrl));
    return {
      description: `JWKS ${options.jwksUrl}`,
      async verify(token) {
        const { payload } = await jose.jwtVerify(token, jwks, {
          ...common,
          algorithms: ASYMMETRIC,
        });
        return payload as Record<string, unknown>;
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

/**
 * Reads the development secret, creating a random one when absent; `created` tells the caller
 * to log it. Safe when several isolates start at once: only one file creation can win.
 */
export async function ensureDevSecret(
  dataDir: string,
): Promise<{ secret: string; created: boolean }> {
  const path = devSecretPath(dataDir);
  await Deno.mkdir(dataDir, { recursive: true });
  const fresh = jose.base64url.encode(crypto.getRandomValues(new Uint8Array(32)));
  try {
    await Deno.writeTextFile(path, fresh + "\n", { createNew: true, mode: 0o600 });
    return { secret: fresh, created: true };
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
  }
  for (let attempt = 0; attempt < 50; attempt++) {
    const secret = (await Deno.readTextFile(path)).trim();
    if (secret) return { secret, created: false };
    // Another isolate created the file and has not written it yet.
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`Development secret ${path} is empty`);
}
