/** Access decided by the token alone: roles, open rooms and the `rooms` claim. */

import { grantMatches } from "../core/rooms.ts";
import type { AccessPolicy, Principal } from "../core/types.ts";
import { isAdminRole, isSupportRole } from "./principal.ts";

/**
 * The rules that need no database: admins enter every room, support staff every support chat,
 * anyone authenticated the named chat rooms (`room:<name>`, created on first join).
 */
export function roleGrantsAccess(user: Principal, room: string): boolean {
  if (isAdminRole(user.role)) return true;
  if (room.startsWith("room:")) return true;
  return isSupportRole(user.role) && room.startsWith("support-chat:");
}

/** True for the roles that open rooms by themselves (see {@link roleGrantsAccess}). */
export function roleOpensRooms(role: string | null | undefined): boolean {
  return isAdminRole(role) || isSupportRole(role);
}

/** The role rules, then the rooms the token's `rooms` claim lists. */
export class ClaimsAccessPolicy implements AccessPolicy {
  /** True when the token's role or grants cover the room. */
  canAccess(user: Principal, room: string): Promise<boolean> {
    return Promise.resolve(
      roleGrantsAccess(user, room) || user.grants.some((g) => grantMatches(g, room)),
    );
  }
}
