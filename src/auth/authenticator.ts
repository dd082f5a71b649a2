/** Token → principal: verification plus the profile the directory adds. */

import type { Principal } from "../core/types.ts";
import { principalFromClaims } from "./principal.ts";
import { KeySetUnavailable, type TokenVerifier } from "./verifier.ts";

/**
 * Fills profile fields a token lacks (from the directory, when there is one); `claims` tells
 * which fields the token really carried and which `principalFromClaims` derived.
 */
export type ProfileEnricher = (
  user: Principal,
  claims: Record<string, unknown>,
) => Promise<Principal>;

/** Turns a raw token into a principal, or null for a missing, invalid or expired one. */
export class Authenticator {
  #verifier: TokenVerifier;
  #enrich?: ProfileEnricher;

  /** Verifies with `verifier`, then lets `enrich` complete the profile. */
  constructor(verifier: TokenVerifier, enrich?: ProfileEnricher) {
    this.#verifier = verifier;
    this.#enrich = enrich;
  }

  /**
   * Null for any token that does not verify or names no user. Throws {@link KeySetUnavailable}
   * when the token could not be checked at all (the JWKS could not be fetched): callers answer
   * that as a passing failure, since clients give up for good on a token called invalid.
   */
  async authenticate(token: string | undefined): Promise<Principal | null> {
    if (!token) return null;
    let claims: Record<string, unknown>;
    try {
      claims = await this.#verifier.verify(token);
    } catch (err) {
      if (err instanceof KeySetUnavailable) throw err;
      return null;
    }
    if (!isAccessToken(claims)) return null;
    const user = principalFromClaims(claims);
    if (!user) return null;
    return this.#enrich ? await this.#enrich(user, claims) : user;
  }
}

/**
 * False for a token its issuer marked as for another use: a SimpleJWT `token_type` other than
 * `access` (a refresh token lives for days and must only buy new access tokens), or a Keycloak
 * `typ` of `Refresh`, `Offline` or `ID`. A token that says nothing of its use is taken.
 */
export function isAccessToken(claims: Record<string, unknown>): boolean {
  if (claims.token_type !== undefined && claims.token_type !== "access") return false;
  const typ = typeof claims.typ === "string" ? claims.typ.toLowerCase() : undefined;
  return typ !== "refresh" && typ !== "offline" && typ !== "id";
}
