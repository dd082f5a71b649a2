/** Access decided by the token alone: admin roles and the `rooms` claim. */

import { grantMatches } from "../core/rooms.ts";
import type { AccessPolicy, Principal } from "../core/types.ts";
import { isAdminRole } from "./principal.ts";

/** Admins enter every room; everyone else the rooms their `rooms` claim lists. */
export class ClaimsAccessPolicy implements AccessPolicy {
  /** True when the token's role or grants cover the room. */
  canAccess(user: Principal, room: string): Promise<boolean> {
    if (isAdminRole(user.role)) return Promise.resolve(true);
    return Promise.resolve(user.grants.some((g) => grantMatches(g, room)));
  }
}
