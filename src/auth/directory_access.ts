/**
 * Access decided by the relational directory (owners and participants), with the token's
 * claims for rooms the directory does not know, and the profile the directory adds to tokens.
 *
 * The rule, checked at join and on every send:
 *
 * 1. Role rules first: `admin` and `super_admin` enter every room, `support` every support
 *    chat, and named chat rooms (`room:<name>`) are open to anyone authenticated.
 * 2. A participant of the room (a `room_participants` row) or the owner of a room the directory
 *    knows may enter.
 * 3. A room the directory knows (a `rooms` row) is decided by the directory alone: a token
 *    whose `rooms` claim covers it is refused all the same, so removing a participant revokes
 *    access even for tokens minted before the removal (and creating the room, which publishes
 *    a `recheck`, ends the access its claim holders had).
 * 4. A room the directory does not know falls back to the token's `rooms` claim.
 *
 * A removal takes effect on the next send once it is seen, on every isolate and instance. Where
 * the directory can say cheaply whether anything changed (SQLite: a commit by anyone moves its
 * change token, read at most every 25 ms), a decision is reused until it does; otherwise
 * (Postgres) every check reads the directory (two indexed primary-key reads, issued together).
 */

import type { Directory, DirectoryUser } from "../core/directory.ts";
import { failureLog } from "../core/failure_log.ts";
import { grantMatches } from "../core/rooms.ts";
import type { AccessPolicy, Principal } from "../core/types.ts";
import { roleGrantsAccess } from "./access.ts";
import type { ProfileEnricher } from "./authenticator.ts";

/**
 * Principals whose role came from the directory rather than the token. Their role is read again
 * on each check, so demoting a user in the directory takes effect without a new token.
 */
const roleFromDirectory = new WeakSet<Principal>();

/** One access decision and the directory change token it was read under. */
interface Decision {
  room: string;
  token: string;
  allowed: boolean;
}

/** The {@link AccessPolicy} on the directory; see the module comment for the rule. */
export class DirectoryAccessPolicy implements AccessPolicy {
  #directory: Directory;
  /**
   * Decisions per principal (one per authenticated connection, so a token's own claims and
   * role stay with it) and room, each valid while the directory's change token is the same.
   * Most connections enter one room, so the first decision is kept bare and a map is made only
   * for a second room: idle sockets are many.
   */
  #decided = new WeakMap<Principal, Decision | Map<string, Decision>>();

  /** Decides with `directory`, read again whenever its data may have changed. */
  constructor(directory: Directory) {
    this.#directory = directory;
  }

  /** True when the user may read and write the room now. */
  async canAccess(user: Principal, room: string, options?: { fresh?: boolean }): Promise<boolean> {
    const token = this.#directory.changeToken?.() ?? null;
    // Fresh: another process's commit may be up to TOKEN_REUSE_MS behind the change token.
    if (token === null || options?.fresh) return await this.#decide(user, room);
    const held = this.#decided.get(user);
    const known = held instanceof Map ? held.get(room) : held?.room === room ? held : undefined;
    if (known && known.token === token) return known.allowed;
    const allowed = await this.#decide(user, room);
    // A decision read across a commit belongs to the token taken before it, which the next
    // check sees as stale; reads never see half a commit.
    const decision: Decision = { room, token, allowed };
    const now = this.#decided.get(user);
    if (now === undefined || (!(now instanceof Map) && now.room === room)) {
      this.#decided.set(user, decision);
    } else if (now instanceof Map) {
      if (now.size >= 64) now.clear();
      now.set(room, decision);
    } else {
      this.#decided.set(user, new Map([[now.room, now], [room, decision]]));
    }
    return allowed;
  }

  async #decide(user: Principal, room: string): Promise<boolean> {
    const roleIsStored = roleFromDirectory.has(user);
    // Open rooms need no role; a stored role must be read fresh before it counts.
    if (roleGrantsAccess(roleIsStored ? { ...user, role: undefined } : user, room)) return true;
    const colon = room.indexOf(":");
    const kind = colon > 0 ? room.slice(0, colon) : "";
    const id = colon > 0 ? room.slice(colon + 1) : "";
    const userId = String(user.id);
    const lookups = kind !== "" && id !== "";
    const [stored, access] = await Promise.all([
      roleIsStored ? this.#directory.getUser(userId) : Promise.resolve(null),
      lookups
        ? this.#directory.roomAccess(kind, id, userId)
        : Promise.resolve({ known: false, ownerId: null, participant: false }),
    ]);
    if (roleIsStored && roleGrantsAccess({ ...user, role: stored?.role ?? undefined }, room)) {
      return true;
    }
    if (access.participant || (access.known && access.ownerId === userId)) return true;
    if (access.known) return false;
    return user.grants.some((g) => grantMatches(g, room));
  }
}

/** True when the stored user alone (no token claims) may enter a room the directory knows. */
export function storedRoleGrantsAccess(user: DirectoryUser | null, room: string): boolean {
  if (!user) return false;
  return roleGrantsAccess({
    id: user.id,
    username: user.id,
    role: user.role ?? undefined,
    grants: [],
  }, room);
}

const claimText = (claims: Record<string, unknown>, name: string): boolean => {
  const v = claims[name];
  return (typeof v === "string" && v.trim() !== "") || typeof v === "number";
};

/**
 * Fills what the token lacks from the directory user with the same id (as text): username,
 * full name, email, phone, profile image, company, role and user type. A value the token
 * carries always wins. When the directory does not answer the token's profile is used as is
 * (access checks, which need the directory, fail on their own).
 */
export function directoryProfileEnricher(directory: Directory): ProfileEnricher {
  return async (user, claims) => {
    let stored: DirectoryUser | null;
    try {
      stored = await directory.getUser(String(user.id));
    } catch (err) {
      // Every socket that opens asks: a directory that does not answer is logged once for all.
      failureLog.failed("directory: profile lookup failed", err, `user ${user.id}`);
      return user;
    }
    if (!stored) return user;
    const or = (mine: string | undefined, theirs: string | null) => mine ?? theirs ?? undefined;
    const enriched: Principal = {
      ...user,
      name: or(user.name, stored.fullName),
      email: or(user.email, stored.email),
      phone: or(user.phone, stored.phone),
      profileImage: or(user.profileImage, stored.profileImage),
      company: or(user.company, stored.company),
      role: or(user.role, stored.role),
      userType: or(user.userType, stored.userType),
    };
    // Without a username claim, `principalFromClaims` fell back to the name, the email or the
    // id; the stored username is better than any of those.
    if (!claimText(claims, "username") && !claimText(claims, "preferred_username")) {
      enriched.username = stored.username ?? enriched.name ?? enriched.email ?? String(user.id);
    }
    if (user.role === undefined && stored.role !== null) roleFromDirectory.add(enriched);
    return enriched;
  };
}
