/** Token claims → the user the core works with. */

import type { Principal, UserId } from "../core/types.ts";
import { CLOCK_TOLERANCE_SECONDS } from "./verifier.ts";

const text = (v: unknown): string | undefined =>
  typeof v === "string" && v.trim() !== "" ? v : typeof v === "number" ? String(v) : undefined;

/** Numeric strings become numbers so ids compare and render like the source system's. */
export function normalizeUserId(value: unknown): UserId | undefined {
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  if (typeof value !== "string" || value.trim() === "") return undefined;
  const v = value.trim();
  // As the directory takes user ids (its API refuses the rest): a NUL cannot be stored on
  // Postgres at all.
  // deno-lint-ignore no-control-regex
  if (v.length > 256 || /[\u0000-\u001f\u007f]/.test(v)) return undefined;
  return /^(0|[1-9]\d{0,15})$/.test(v) && Number.isSafeInteger(Number(v)) ? Number(v) : v;
}

// Frozen, so a change meant for one principal fails loudly instead of reaching every other.
const NO_GRANTS = Object.freeze([]) as unknown as string[];

/**
 * Builds a principal from verified claims: id from `sub`, else `user_id` (Django SimpleJWT),
 * else `id`; returns null when none is present.
 */
export function principalFromClaims(claims: Record<string, unknown>): Principal | null {
  // The first claim given decides: one that names no valid user does not hand the choice to
  // the next (`{sub: "alice\u0000", user_id: 7}` is nobody, not user 7).
  const given = [claims.sub, claims.user_id, claims.id].find((v) =>
    v !== undefined && v !== null && !(typeof v === "string" && v.trim() === "")
  );
  const id = normalizeUserId(given);
  if (id === undefined) return null;
  const name = text(claims.name) ?? text(claims.full_name);
  const email = text(claims.email);
  // The principal lives as long as its socket: it keeps the claim's own array when that is
  // already clean (a filtered copy reserves room for 16 entries), and one shared empty list.
  const rooms = Array.isArray(claims.rooms)
    ? claims.rooms.every((r) => typeof r === "string")
      ? claims.rooms as string[]
      : claims.rooms.filter((r): r is string => typeof r === "string")
    : typeof claims.rooms === "string"
    ? claims.rooms.split(/[\s,]+/).filter(Boolean)
    : NO_GRANTS;
  return {
    id,
    username: text(claims.username) ?? text(claims.preferred_username) ?? name ?? email ??
      String(id),
    name,
    email,
    phone: text(claims.phone),
    profileImage: text(claims.profile_image) ?? text(claims.picture) ?? text(claims.avatar),
    company: text(claims.company),
    role: text(claims.role),
    userType: text(claims.user_type),
    grants: rooms,
    // When the verifier would refuse it: it compares `exp`, tolerance added, with the time in
    // whole seconds, so a fractional `exp` holds until the next whole second.
    ...(typeof claims.exp === "number"
      ? { expiresAt: (Math.ceil(claims.exp) + CLOCK_TOLERANCE_SECONDS) * 1000 }
      : {}),
  };
}

/**
 * A role as the access rules compare it: case, spaces, `_` and `-` aside, since the systems we
 * replace spell one role several ways (`super_admin`, `SuperAdmin`, the Socket.IO document's
 * model name; `Support`).
 */
function roleName(role: string | null | undefined): string {
  return role ? role.toLowerCase().replace(/[\s_-]/g, "") : "";
}

/** True for the roles that may enter every room (`admin`, `super_admin`, however spelt). */
export function isAdminRole(role: string | null | undefined): boolean {
  const name = roleName(role);
  return name === "admin" || name === "superadmin";
}

/** True for support staff, who enter every support chat (`support`, however spelt). */
export function isSupportRole(role: string | null | undefined): boolean {
  return roleName(role) === "support";
}
