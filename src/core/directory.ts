/**
 * The relational directory's contract: users, rooms and participants.
 * Implementations live in `src/directory/` (Kysely on SQLite or Postgres).
 */

/**
 * The directory did not answer in time (a lock another process held past the wait, say): a
 * passing trouble, which callers answer as unavailable rather than as a failure.
 */
export class DirectoryUnavailable extends Error {
  /** Names what did not answer; `cause` keeps the engine's own error. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DirectoryUnavailable";
  }
}

/** A user as the directory keeps it; ids are strings (numeric ids as their decimal text). */
export interface DirectoryUser {
  /** User id as text. */
  id: string;
  /** Login handle. */
  username: string | null;
  /** Full name. */
  fullName: string | null;
  /** Email address. */
  email: string | null;
  /** Phone number. */
  phone: string | null;
  /** Avatar URL. */
  profileImage: string | null;
  /** Company name. */
  company: string | null;
  /** Role (`admin`, `super_admin`, `support`, `client`, ...). */
  role: string | null;
  /** Kind of user (`talker`, `listener`, ...). */
  userType: string | null;
}

/** A room the directory knows. */
export interface DirectoryRoom {
  /** Room kind: `ticket`, `chat`, `service-chat`, `support-chat`, `room`. */
  kind: string;
  /** Id within the kind, as text. */
  id: string;
  /** Optional title. */
  title: string | null;
  /** Owner user id, if any. */
  ownerId: string | null;
  /** Creation time, ISO 8601 UTC. */
  createdAt: string;
}

/** A user's membership of a room. */
export interface Participant {
  /** User id as text. */
  userId: string;
  /** Role in the room (`member`, `owner`, `agent`, ...). */
  role: string;
}

/** A participant to add: without `role`, `member` when new and the stored role kept otherwise. */
export type ParticipantInput = Pick<Participant, "userId"> & { role?: string };

/** Users, rooms and participants, on SQLite or Postgres. */
export interface Directory {
  /** Creates or upgrades the schema. */
  migrate(): Promise<void>;
  /** Checks that the database answers. */
  ping(): Promise<void>;
  /**
   * Inserts or updates a user (fields left undefined keep their stored value); returns it as
   * stored and as it was just before this write, read in the same transaction (null when new).
   */
  upsertUser(
    user: Partial<DirectoryUser> & { id: string },
  ): Promise<{ user: DirectoryUser; previous: DirectoryUser | null }>;
  /** Reads a user. */
  getUser(id: string): Promise<DirectoryUser | null>;
  /**
   * Deletes a user and their participations (also those of a user it never stored) and clears
   * them as owner of their rooms; says whether the user existed, the role they had, and which
   * rooms they took part in or owned, all read in the same transaction.
   */
  deleteUser(
    id: string,
  ): Promise<{ existed: boolean; role: string | null; rooms: { kind: string; id: string }[] }>;
  /** The rooms a user takes part in or owns (also a user it never stored), read without a lock. */
  userRooms(id: string): Promise<{ kind: string; id: string }[]>;
  /** Inserts or updates a room; fields left undefined keep their stored value. */
  upsertRoom(
    room: { kind: string; id: string; title?: string | null; ownerId?: string | null },
  ): Promise<DirectoryRoom>;
  /**
   * Inserts or updates a room and, when `participants` is given, replaces its participants, in
   * one transaction; `created` is true for exactly one of several concurrent first saves, and
   * `replaced` names who held the room by what the save replaced (the participants before, when
   * given; the owner before, when `ownerId` is given), for the caller to check who lost access.
   * A participant given without `role` is a `member` when new and keeps its stored role.
   */
  saveRoom(
    room: { kind: string; id: string; title?: string | null; ownerId?: string | null },
    participants?: ParticipantInput[],
  ): Promise<{ room: DirectoryRoom; created: boolean; replaced: string[] }>;
  /** Reads a room. */
  getRoom(kind: string, id: string): Promise<DirectoryRoom | null>;
  /** Deletes a room and its participants; true when it existed. */
  deleteRoom(kind: string, id: string): Promise<boolean>;
  /** Lists rooms of a kind ordered by id text, after `after` when given. */
  listRooms(kind: string, options?: { limit?: number; after?: string }): Promise<DirectoryRoom[]>;
  /** Replaces a room's participants with exactly this list (roles left out as in saveRoom). */
  setParticipants(kind: string, id: string, participants: ParticipantInput[]): Promise<void>;
  /**
   * Adds or updates one participant (without `role`: `member` when new, the stored role kept
   * otherwise); with `roomMustExist`, only while the directory stores the room (false when it
   * does not, and nothing is written).
   */
  addParticipant(
    kind: string,
    id: string,
    participant: ParticipantInput,
    options?: { roomMustExist?: boolean },
  ): Promise<boolean>;
  /** Removes one participant; true when they were one. */
  removeParticipant(kind: string, id: string, userId: string): Promise<boolean>;
  /** Lists a room's participants. */
  listParticipants(kind: string, id: string): Promise<Participant[]>;
  /**
   * What access needs to know in one round trip: whether the room is known, its owner, and
   * whether `userId` is a participant (participants of rooms the directory has no row for count).
   */
  roomAccess(
    kind: string,
    id: string,
    userId: string,
  ): Promise<{ known: boolean; ownerId: string | null; participant: boolean }>;
  /**
   * A value that differs whenever anyone may have changed the directory since it was last
   * taken, read without a round trip; absent or null when the engine cannot tell cheaply.
   */
  changeToken?(): string | null;
  /**
   * How long after another connection's commit {@link changeToken} may still give the value from
   * before it, ms (decisions reused under it are that stale); 0 or absent when never.
   */
  readonly changeTokenLagMs?: number;
  /** The participant entry of `userId` in the room, or null. */
  getParticipant(kind: string, id: string, userId: string): Promise<Participant | null>;
  /** Closes the connection pool. */
  close(): Promise<void>;
}
