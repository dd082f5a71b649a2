/** Token → principal: verification plus the profile the directory adds. */

import type { Principal } from "../core/types.ts";
import { principalFromClaims } from "./principal.ts";
import type { TokenVerifier } from "./verifier.ts";

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

  /** Null for any token that does not verify or names no user. */
  async authenticate(token: string | undefined): Promise<Principal | null> {
    if (!token) return null;
    let claims: Record<string, unknown>;
    try {
      claims = await this.#verifier.verify(token);
    } catch {
      return null;
    }
    const user = principalFromClaims(claims);
    if (!user) return null;
    return this.#enrich ? await this.#enrich(user, claims) : user;
  }
}
