/**
 * The core's vocabulary: users, messages, room events and the interfaces of the seams.
 * Nothing here imports Deno, Hono or KV; `main.ts` wires concrete implementations.
 */

/** A user id as tokens carry it: numeric strings become numbers, everything else stays a string. */
export type UserId = string | number;

/** Who a user is, as far as a message or event needs to tell others. */
export interface UserProfile {
  /** Stable id from the token (`sub`, `user_id` or `id`). */
  id: UserId;
  /** Display handle; falls back to the name, the email or the id. */
  username: string;
  /** Full name (`name` or `full_name`). */
  name?: string;
  /** Email address. */
  email?: string;
  /** Phone number. */
  phone?: string;
  /** Absolute or relative URL of the avatar. */
  profileImage?: string;
  /** Company, for the Socket.IO ticket chat's clients. */
  company?: string;
  /** Role such as `admin`, `super_admin`, `support`, `client`. */
  role?: string;
  /** Kind of user as the conversation chat knows it (`talker`, `listener`, ...). */
  userType?: string;
}

/** An authenticated user: the profile plus what the token grants. */
export interface Principal extends UserProfile {
  /** Room patterns granted by the token's `rooms` claim (`ticket:1`, `ticket:*`). */
  grants: string[];
  /** When the token stops being taken (its `exp`, plus the clock tolerance), ms since the epoch. */
  expiresAt?: number;
}

/** A stored file that belongs to a message. */
export interface Attachment {
  /** Opaque unique id. */
  id: string;
  /** Path of the file under the media root, with forward slashes (`files/ticket_1/a.png`). */
  key: string;
  /** Stored basename, unique in its folder. */
  name: string;
  /** The name the client gave, reduced to a safe basename. */
  originalName: string;
  /** Media type from the bytes and the name. */
  mime: string;
  /** Size in bytes. */
  size: number;
  /** When it was stored (ISO 8601, UTC, milliseconds). */
  uploadedAt: string;
}

/** A message as the store keeps it; every dialect renders it in its own shape. */
export interface Message {
  /** Room key (`ticket:1`). */
  room: string;
  /** Position in the room: 1, 2, 3, ... with no gaps. */
  seq: number;
  /** Globally unique opaque id (24 hex digits, shaped like a Mongo ObjectId). */
  id: string;
  /** Who sent it, as they were when they sent it; null for system messages. */
  sender: UserProfile | null;
  /** Text, possibly empty when there are attachments. */
  body: string;
  /** Files sent with the message. */
  attachments: Attachment[];
  /** Commit time (ISO 8601, UTC, milliseconds). */
  createdAt: string;
  /** Client-supplied idempotency key, when one was given. */
  clientId?: string;
}

/** What a sender hands to the store; the store assigns seq, id and time. */
export interface MessageDraft {
  /** Sender profile, or null for a system message. */
  sender: UserProfile | null;
  /** Text body. */
  body: string;
  /** Already stored attachments. */
  attachments: Attachment[];
  /** Idempotency key: the same key from the same sender within its lifetime returns the first message. */
  clientId?: string;
  /**
   * The room's generation ({@link MessageStore.generation}) read before the sender's access was
   * checked; a draft whose room has been deleted since is refused with `room_deleted`.
   */
  generation?: number;
  /**
   * The {@link PendingFiles} entry naming its files until its commit, which deletes it: a crash
   * before the commit leaves the entry, and the files go when it is swept.
   */
  pendingFiles?: string;
}

/**
 * The files of sends not yet committed, named in the store as they are stored under public
 * names: a crash before a send's commit would otherwise leave its files served, though no message
 * names them. An entry the commit did not delete is swept later, its files deleted.
 */
export interface PendingFiles {
  /** Names (again) every file stored so far for the send `id`. */
  note(id: string, files: Attachment[]): Promise<void>;
  /** Forgets the send `id` (its files were discarded, or another message holds them). */
  forget(id: string): Promise<void>;
}

/** The store's answer to an append. */
export interface AppendResult {
  /** The stored message (the original one when the append was a duplicate). */
  message: Message;
  /** True when the client id had been seen already and nothing new was stored. */
  duplicate: boolean;
}

/** Which slice of a room's history to read; results are always in ascending seq order. */
export interface HistoryQuery {
  /** Only messages with seq greater than this. */
  after?: number;
  /** Only messages with seq less than this. */
  before?: number;
  /** At most this many messages: the oldest ones after `after`, else the newest ones. */
  limit: number;
}

/** Durable, ordered message history per room. */
export interface MessageStore {
  /**
   * Stores a message with the room's next seq; resolves only once it is durable. Appends get
   * seqs in the order of the calls, so a caller need not wait for one before making the next.
   */
  append(room: string, draft: MessageDraft): Promise<AppendResult>;
  /**
   * Refuses with `error` every append not yet in a commit, and every later one (a shutdown);
   * the commit under way still ends.
   */
  refuseAppends?(error: () => Error): void;
  /** Reads a slice of history in ascending seq order. */
  list(room: string, query: HistoryQuery): Promise<Message[]>;
  /** The seq of the room's newest message, 0 when it has none. */
  head(room: string): Promise<number>;
  /** Reads one message by seq. */
  get(room: string, seq: number): Promise<Message | null>;
  /** The lowest seq still kept (1 unless retention removed older messages; head + 1 when empty). */
  tail(room: string): Promise<number>;
  /**
   * Deletes the room's messages, their files, read cursors and client ids; resolves to how many
   * messages went. `marked` hears the room's new generation as soon as it is stored, before the
   * deleting starts.
   */
  purge(room: string, marked?: (generation: number) => void): Promise<number>;
  /** How many times the room has been purged: a draft carrying an older value is refused. */
  generation(room: string, options?: { fresh?: boolean }): Promise<number>;
  /**
   * Notes that the room is being deleted (before its directory row goes: a server that finds a
   * member's access gone before the deletion's notice reaches it can tell the two apart); resolves
   * to the note's stamp for {@link unmarkDeleting}, or null when another deletion's note already
   * stood (this one then never takes it back).
   */
  markDeleting(room: string): Promise<string | null>;
  /**
   * Takes the room's deletion note back: only the note `stamp` names, and only if no later mark
   * replaced it (the deletion found no room: another's note must stay), or any note when `stamp`
   * is undefined (the room was created again).
   */
  unmarkDeleting(room: string, stamp?: string | null): Promise<void>;
  /** True within a minute of a deletion {@link markDeleting} noted and did not take back. */
  deleting(room: string): Promise<boolean>;
}

/** Per-user read cursors: the highest seq each user has read in a room. */
export interface ReadCursorStore {
  /**
   * Raises the user's cursor to `seq` (never lowers it); resolves to the cursor now stored, or
   * to null, with nothing written, while {@link forgetReader} refuses their marks in the room.
   */
  markRead(room: string, user: UserId, seq: number): Promise<number | null>;
  /** The user's cursor, 0 when unset. */
  cursor(room: string, user: UserId): Promise<number>;
  /** Every user's cursor in the room, or the first `limit` of them by user id. */
  cursors(room: string, limit?: number): Promise<Map<string, number>>;
  /**
   * Deletes the user's cursors in `rooms` and, when `everywhere` (by default when `rooms` is
   * omitted), in every room they have one; for a while refuses their marks there (everywhere:
   * in every room), so that a server not yet told of why cannot store a cursor again.
   */
  forgetReader(user: UserId, rooms?: Iterable<string>, everywhere?: boolean): Promise<void>;
  /** Accepts the user's marks again in `rooms` (every room when omitted) before that while ends. */
  readmitReader(user: UserId, rooms?: Iterable<string>): Promise<void>;
}

/** Something that happens in a room and is fanned out to its members. */
export type RoomEvent = RoomEventKind & {
  /**
   * The server that published it, for events that reach the other isolates by two routes (the
   * channel, and a KV log for when the channel drops): see `serial`.
   */
  origin?: string;
  /**
   * How many events `origin` published before this one: a hub hands each event on once, and
   * none of a user's typing, read or presence events in a room after a later one of the same
   * origin (the two routes do not keep each other's order).
   */
  serial?: number;
};

type RoomEventKind =
  | { type: "message"; room: string; message: Message }
  | { type: "typing"; room: string; user: UserProfile; isTyping: boolean }
  /**
   * With `connId`, the connection that moved the cursor: it has its answer already, and the user's
   * other connections (their other devices) are told.
   */
  | { type: "read"; room: string; user: UserProfile; seq: number; connId?: string }
  | { type: "presence"; room: string; user: UserProfile; action: "join" | "leave" }
  /**
   * The room was deleted. With `generation` (the count the deletion raises the room's to), only
   * members that joined under an older count leave: a notice that comes twice (once through
   * each of two paths), or late, leaves the room's next life alone.
   */
  | { type: "closed"; room: string; reason: string; generation?: number }
  | { type: "revoked"; room: string; userId: UserId }
  /**
   * `userId` may enter none of `rooms` any more (room {@link EVERY_ROOM}): a deleted user's
   * rooms, which may be thousands, a few events for all of them where a `revoked` per room cost
   * every isolate a channel post per room, each slower the more channels were open.
   */
  | { type: "revocations"; room: string; userId: UserId; rooms: string[] }
  /**
   * Access changed for members the change does not name: the directory took over a room that
   * token claims opened (every member is checked again), or a user's stored role changed (with
   * `userId` and room {@link EVERY_ROOM}: that user's members in every room are).
   */
  | { type: "recheck"; room: string; userId?: UserId };

/** The room of events meant for every room (a user's role opens rooms nobody lists). */
export const EVERY_ROOM = "*";

/** The events that take members out of rooms, which must reach every isolate and instance. */
export type EvictionEvent = RoomEvent & {
  type: "revoked" | "revocations" | "closed" | "recheck";
};

/** True for the events that must reach every isolate and instance (see {@link EvictionEvent}). */
export function isEviction(event: RoomEvent): event is EvictionEvent {
  return event.type === "revoked" || event.type === "revocations" || event.type === "closed" ||
    event.type === "recheck";
}

/** Publish/subscribe of room events between hubs (isolates and instances). */
export interface Broker {
  /** Sends an event to every other hub subscribed to its room. */
  publish(event: RoomEvent): void;
  /** Calls `handler` for events of `room` published elsewhere; returns the unsubscribe function. */
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void;
  /** Releases every channel. */
  close(): void;
}

/** Decides who may enter a room. */
export interface AccessPolicy {
  /**
   * True when `user` may read and write `room`; `fresh` asks past any cached decision (a join
   * checking again after it entered the room).
   */
  canAccess(user: Principal, room: string, options?: { fresh?: boolean }): Promise<boolean>;
}

/** A file the media store has written. */
export interface StoredFile {
  /** Path under the media root with forward slashes. */
  key: string;
  /** Stored basename, unique in its folder. */
  name: string;
  /** Size in bytes. */
  size: number;
}

/** Where attachment bytes live. */
export interface MediaStore {
  /**
   * Writes the bytes, or the chunks in order (each written before the next is asked for), as
   * `filename` (already safe) inside `dir`, renaming on collision. A chunk source that throws
   * leaves nothing behind. `linked` is awaited once the file has its name, while a crash would
   * still leave it found and removed by a sweep (so that whatever records the name for later
   * can do so first); when it throws, so does `put`, and the file stays for the caller to remove.
   */
  put(
    dir: string,
    filename: string,
    bytes: Uint8Array | Iterable<Uint8Array>,
    options?: { linked?: (file: StoredFile) => Promise<void> },
  ): Promise<StoredFile>;
  /**
   * Removes a stored file; true when it existed. Its name stays taken, as its URL may be held
   * by anyone who saw the message, unless `unannounced` says no message carried it or the file
   * had a folder of its own (whose random name is never given again; the folder goes too).
   */
  delete(key: string, options?: { unannounced?: boolean }): Promise<boolean>;
}

/** A file as a client sent it, before it is checked and stored. */
export interface FileInput {
  /** Client filename; required. */
  name?: string;
  /** Base64 text (a data URL prefix is tolerated) or raw bytes. */
  data: string | Uint8Array;
}

/**
 * How stored files are named: `client`, as the client named them, in a folder of 32 random hex
 * digits of its own (the Django protocols, whose documents show such names, and whose clients may
 * show a URL's last part); `random`, 32 random hex digits and the client name's extension
 * (Socket.IO's `unique-filename.jpg`); `tagged`, the client name with 32 random hex digits
 * before its extension (`a_3f…9c.png`). Media URLs are public, so none can be guessed.
 */
export type StoredNames = "client" | "random" | "tagged";

/** Checks, decodes and stores the files of one message, all or nothing. */
export interface AttachmentStore {
  /**
   * Validates every file first (name, size, encoding), then writes them under `dir`, each named
   * as `names` says (its client name by default).
   */
  save(
    dir: string,
    files: FileInput[],
    options?: {
      names?: StoredNames;
      /** Told, before the next file is written, of every file stored so far under its name. */
      onStored?: (stored: Attachment[]) => Promise<void>;
      /**
       * Told when the save fails, before the files it stored are deleted: resolves to whether
       * their names may be given again (else they never are, as dropped files' names never are).
       */
      onAbandon?: () => Promise<boolean>;
    },
  ): Promise<Attachment[]>;
  /**
   * Removes stored files: ones retention dropped, or, `unannounced`, ones no message carried (its
   * commit failed, it was a duplicate), whose names may be given again.
   */
  discard(attachments: Attachment[], options?: { unannounced?: boolean }): Promise<void>;
}

/** Where committed messages and ephemeral events go to reach the members of a room. */
export interface Fanout {
  /** Delivers a committed message to every member of its room, everywhere. */
  committed(message: Message): void;
  /**
   * Delivers an ephemeral event (typing, read, presence) to every member of its room; with
   * `elsewhereOnly`, only to those of the other isolates and servers.
   */
  publish(event: RoomEvent, options?: { elsewhereOnly?: boolean }): void;
}

/** Who is in a room now, across isolates and instances, with expiry so a crash leaves no ghost. */
export interface PresenceStore {
  /**
   * Records a connection; `first` is true when the user had no other live connection there. With
   * `again` (a connection written back after its server lapsed), its own entry counts too: `first`
   * only when nothing of the user was left, so that users nobody removed are not announced again.
   */
  enter(
    room: string,
    user: UserProfile,
    connId: string,
    options?: { again?: boolean },
  ): Promise<{ first: boolean }>;
  /** Removes a connection; `last` is true when it was the user's last live one there. */
  exit(room: string, userId: UserId, connId: string): Promise<{ last: boolean }>;
  /** The users with at least one live connection, each once. */
  list(room: string): Promise<UserProfile[]>;
  /**
   * Removes the entries of servers that died, and this server's entries whose connection `open`
   * says is gone; returns the users left with none (each reported once overall, whichever
   * server sweeps).
   */
  sweep(room: string, open?: (connId: string) => boolean): Promise<UserProfile[]>;
  /**
   * Makes the next sweeps read every room, for a store that skips rooms it swept clean: the
   * server wrote entries again (after its lease lapsed) and an exit may have raced them.
   */
  invalidateSweeps?(): void;
}
