/** The commands every dialect shares: access, send, history, typing, read. */

import { ChatError, roomDeleted } from "./errors.ts";
import { failureLog } from "./failure_log.ts";
import { msOfId, objectId, secondOfId } from "./ids.ts";
import type { Metrics } from "./metrics.ts";
import { timerDelay } from "./time.ts";
import type {
  AccessPolicy,
  AppendResult,
  Attachment,
  AttachmentStore,
  Fanout,
  FileInput,
  HistoryQuery,
  Message,
  MessageStore,
  PendingFiles,
  PresenceStore,
  Principal,
  ReadCursorStore,
  RoomEvent,
  StoredNames,
  UserId,
  UserProfile,
} from "./types.ts";

/** Longest text body; Deno KV caps a value at 64 KiB and a character can take two bytes. */
export const MAX_BODY_CHARS = 20_000;

/** Most files in one message. */
export const MAX_FILES_PER_MESSAGE = 10;

/** What a dialect asks to send. */
export interface SendInput {
  /** Text; may be empty when files are given. */
  body?: string;
  /** Files to store with the message. */
  files?: FileInput[];
  /** Media folder for the files (`files/ticket_1`). */
  mediaDir?: string;
  /** How the files are named on disk (their client names by default). */
  names?: StoredNames;
  /** Idempotency key. */
  clientId?: string;
}

/** A send queued for the store: messages queued one after another are stored in that order. */
export interface QueuedSend {
  /** Settles once the message is durable and fanned out, or refused. */
  result: Promise<AppendResult>;
}

/** The profile part of a principal, as stored with messages. */
export function profileOf(user: Principal): UserProfile {
  const { grants: _grants, expiresAt: _expiresAt, ...profile } = user;
  return profile;
}

/**
 * {@link profileOf} made once per principal (one per authenticated connection) for its sends,
 * which then share it: nothing changes a principal or a message's sender once made.
 */
const sendersOf = new WeakMap<Principal, UserProfile>();
function senderOf(user: Principal): UserProfile {
  let profile = sendersOf.get(user);
  if (!profile) sendersOf.set(user, profile = profileOf(user));
  return profile;
}

/** What a presence store may add to {@link PresenceStore}: one user's presence, read on its own. */
export interface UserPresence {
  /**
   * Whether the user has a live connection in the room, read fresh; without it a check reads
   * the whole room.
   */
  isPresent?(room: string, userId: UserId): Promise<boolean>;
}

/** Dependencies of {@link ChatService}. */
export interface ChatServiceDeps {
  /** History. */
  store: MessageStore & ReadCursorStore;
  /** Delivery to members. */
  fanout: Fanout;
  /** Attachment validation and storage. */
  attachments: AttachmentStore;
  /** Who may enter which room. */
  access: AccessPolicy;
  /** Counters. */
  metrics: Metrics;
  /** Who is in which room. */
  presence: PresenceStore & UserPresence;
  /** Names the files of sends not yet committed; without it a crash may leave them served. */
  pending?: PendingFiles;
  /** A typing state not renewed within this many ms ends by itself (default 5000). */
  typingTimeoutMs?: number;
  /** How often the rooms with members here are swept of dead servers' presence (default 10000). */
  presenceSweepMs?: number;
  /** What a send is refused with for now, if anything (DATA_DIR nearly full). */
  refusal?: () => Error | undefined;
}

/** The core: one instance per isolate, shared by every dialect. */
/** The key of one connection's membership of one room, in the maps below. */
const connKey = (room: string, connId: string) => `${room}\u0000${connId}`;

/** Most messages `seqOfId` reads after an id's second before it gives up. */
const SEQ_OF_ID_SCAN = 2000;
/** Messages `historyPageByTime` reads at a time past a page's oldest one that share its time. */
const TIED_READ = 50;
/** Messages `seqBeforeNewest` reads at a time: no more than the KV store's list returns. */
const NEWEST_PAGE = 1000;

/**
 * Connections a restore writes back at once: the presence store commits the changes waiting
 * together in a few commits, where one connection at a time took a commit each.
 */
const RESTORE_CHUNK = 1000;

/** The first pause before a failed restore is tried again, ms; it doubles up to a sweep's. */
const RESTORE_RETRY_MS = 500;

export class ChatService {
  #deps: ChatServiceDeps;
  /** Typing states: room and user → the timeout and the user's connections typing here. */
  #typing = new Map<
    string,
    { timer: ReturnType<typeof setTimeout>; user: Principal; conns: Set<string> }
  >();
  /** Presence entries of this isolate's connections: room → connection id → user. */
  #present = new Map<string, Map<string, Principal>>();
  /** Exits whose presence write failed, by room and connection: the sweep writes them again. */
  #failedExits = new Map<string, { user: Principal; room: string; connId: string }>();
  #sweepTimer?: ReturnType<typeof setInterval>;
  /** Enters under way, by room and connection, so that an exit waits for its own enter. */
  #entering = new Map<string, Promise<unknown>>();
  /** Exits under way, by room and connection, so that an enter of it again waits for them. */
  #exiting = new Map<string, Promise<unknown>>();
  /** Work a shutdown waits for: presence updates, and sends from their files to their answer. */
  #inflight = new Set<Promise<unknown>>();
  /** Set by {@link refuseSends}: what a send is refused with. */
  #refusal?: () => Error;
  /**
   * Connections a restore has yet to write back, by room and connection: a lapse puts a new
   * object for each, so that one written before it is written again after.
   */
  #toRestore = new Map<string, { room: string; connId: string; again: boolean }>();
  /** The restore under way: a lapse meanwhile adds to its work instead of running another. */
  #restoring?: Promise<void>;
  /** Ends the pause before a failed restore's next try (a stop). */
  #wakeRestore?: () => void;
  /** Set by {@link close}: a restore under way tries no more. */
  #closed = false;

  /** Wires the core to its stores and fan-out. */
  constructor(deps: ChatServiceDeps) {
    this.#deps = deps;
  }

  /** True when the user may enter the room. */
  canAccess(user: Principal, room: string, options?: { fresh?: boolean }): Promise<boolean> {
    return this.#deps.access.canAccess(user, room, options);
  }

  /**
   * Validates, stores attachments, appends with the room's next seq and fans the message out
   * once it is durable. A repeated client id returns the original message and sends nothing.
   */
  async send(user: Principal | null, room: string, input: SendInput): Promise<AppendResult> {
    return await (await this.queue(user, room, input)).result;
  }

  /**
   * {@link send} in two steps: resolves once the message is queued for its commit, so that a
   * socket can take its next frame while this one commits. Sends queued in order keep it.
   */
  async queue(user: Principal | null, room: string, input: SendInput): Promise<QueuedSend> {
    // Tracked whole, files to answer: a shutdown that closed the stores while a send was writing
    // its files left them (a temporary one, or one under its served name no message names).
    let done!: () => void;
    this.#track(new Promise<void>((r) => done = r));
    try {
      const queued = await this.#queue(user, room, input);
      queued.result.then(done, done);
      return queued;
    } catch (err) {
      done();
      throw err;
    }
  }

  async #queue(user: Principal | null, room: string, input: SendInput): Promise<QueuedSend> {
    // Refused before its files are written, which its append would only discard.
    // Stopping (for good), or the storage nearly full (for now).
    const refused = this.#refusal?.() ?? this.#deps.refusal?.();
    if (refused) throw refused;
    const body = input.body ?? "";
    const files = input.files ?? [];
    if (body.trim() === "" && files.length === 0) {
      throw new ChatError("empty_message", "Message body or file is required");
    }
    if (body.length > MAX_BODY_CHARS) {
      throw new ChatError(
        "body_too_long",
        `Message is too long: ${body.length} characters, the limit is ${MAX_BODY_CHARS}`,
      );
    }
    if (files.length > MAX_FILES_PER_MESSAGE) {
      throw new ChatError("invalid_frame", `At most ${MAX_FILES_PER_MESSAGE} files per message`);
    }
    // A lone surrogate is stored as U+FFFD in a KV key: two different ids would be one, and the
    // second message taken for a repeat of the first.
    if (input.clientId !== undefined && !input.clientId.isWellFormed()) {
      throw new ChatError("invalid_frame", "client_id must be well-formed Unicode");
    }
    // Read before the access check: a deletion after that check refuses the send at its commit
    // instead of storing it in the room's next life (a room re-created under the same id).
    const generation = await this.#deps.store.generation(room);
    if (user && !(await this.canAccess(user, room))) {
      if (await this.deletedPast(room, generation)) throw roomDeleted();
      throw new ChatError("forbidden", "Access denied to this room");
    }
    const pending = files.length > 0 ? this.#deps.pending : undefined;
    const pendingId = pending ? objectId() : undefined;
    let attachments: Attachment[] = [];
    if (files.length > 0) {
      attachments = await this.#deps.attachments.save(input.mediaDir ?? "files", files, {
        names: input.names,
        // Named before the next file is written: a crash leaves at most one file unnamed.
        onStored: pending ? (stored) => pending.note(pendingId!, stored) : undefined,
        // Forgotten before the files go: once gone, their names may be given to other files,
        // which a sweep of a forgotten entry left behind would delete.
        onAbandon: pending ? () => this.#forget(pendingId) : undefined,
      });
    }
    const appended = this.#deps.store.append(room, {
      sender: user ? senderOf(user) : null,
      body,
      attachments,
      clientId: input.clientId,
      generation,
      ...(pendingId ? { pendingFiles: pendingId } : {}),
    });
    return { result: this.#committed(appended, attachments, pendingId) };
  }

  async #committed(
    appended: Promise<AppendResult>,
    attachments: Attachment[],
    pendingId?: string,
  ): Promise<AppendResult> {
    let result: AppendResult;
    try {
      result = await appended;
    } catch (err) {
      await this.#discardUnsent(attachments, pendingId);
      throw err;
    }
    const metrics = this.#deps.metrics;
    if (result.duplicate) {
      await this.#discardUnsent(attachments, pendingId);
      return result;
    }
    metrics.messagesIn++;
    for (const a of attachments) metrics.attachmentBytes += a.size;
    this.#deps.fanout.committed(result.message);
    return result;
  }

  /**
   * Deletes the files of a send no message holds, after the entry that named them: the names
   * are free once the files go, and a sweep must never find them named for this send then.
   */
  async #discardUnsent(attachments: Attachment[], pendingId?: string): Promise<void> {
    // Not forgotten (the store failing), the entry stays for the sweep: the files then go as
    // dropped ones do, their names never given again, so that the sweep cannot delete another
    // file by them.
    const forgotten = await this.#forget(pendingId);
    await this.#deps.attachments.discard(attachments, forgotten ? { unannounced: true } : {});
  }

  /** Forgets a send's pending files; resolves to whether that worked (true without any). */
  async #forget(pendingId?: string): Promise<boolean> {
    const pending = this.#deps.pending;
    if (!pendingId || !pending) return true;
    return await pending.forget(pendingId).then(() => true, () => false);
  }

  /** Reads history in ascending seq order. */
  history(room: string, query: HistoryQuery): Promise<Message[]> {
    return this.#deps.store.list(room, query);
  }

  /**
   * One page of history in ascending seq order, and whether more lies beyond it in the paging
   * direction (past the newest with `after`, before the oldest without). One message more than
   * `limit` is read, so a full page that happens to end the history does not claim more.
   */
  async historyPage(
    room: string,
    query: HistoryQuery,
  ): Promise<{ messages: Message[]; hasMore: boolean }> {
    const messages = await this.#deps.store.list(room, { ...query, limit: query.limit + 1 });
    if (messages.length <= query.limit) return { messages, hasMore: false };
    return {
      messages: query.after !== undefined ? messages.slice(0, query.limit) : messages.slice(1),
      hasMore: true,
    };
  }

  /**
   * One page as {@link historyPage} reads it back from `before`, extended past `limit` to the
   * older messages that share its oldest one's time, so that a next page asked for before that
   * time skips none. Messages stored before 2026-11-24 took their commit's time, so several may
   * share one; a room's later times are each one message's, and a page of them costs no more.
   */
  async historyPageByTime(
    room: string,
    query: { before?: number; limit: number },
  ): Promise<{ messages: Message[]; hasMore: boolean }> {
    const read = await this.#deps.store.list(room, { ...query, limit: query.limit + 1 });
    if (read.length <= query.limit) return { messages: read, hasMore: false };
    const messages = read.slice(1);
    let older = read.slice(0, 1);
    for (;;) {
      while (older.length > 0 && older.at(-1)!.createdAt === messages[0].createdAt) {
        messages.unshift(older.pop()!);
      }
      if (older.length > 0) return { messages, hasMore: true };
      older = await this.#deps.store.list(room, { before: messages[0].seq, limit: TIED_READ });
      if (older.length === 0) return { messages, hasMore: false };
    }
  }

  /**
   * A seq bound for "created before `time`" (an ISO time): every stored message below it is
   * older, none from it up is. Seq order is time order, so a binary search finds it in a few
   * reads however long the history (walking back page by page read all of it).
   */
  async seqBefore(room: string, time: string): Promise<number> {
    let lo = await this.#deps.store.tail(room);
    let hi = (await this.#deps.store.head(room)) + 1;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      // The first stored message from `mid` up: seqs between `mid` and it are gone, so moving
      // `hi` to `mid` bounds the same messages as moving it to that message's seq.
      const [m] = await this.#deps.store.list(room, { after: mid - 1, limit: 1 });
      if (m && m.seq < hi && m.createdAt < time) lo = m.seq + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * The seq of the message of `room` whose id is `id`, found from the time the id names (see
   * `objectId`: a message's id is made from its `createdAt`): a client that pages by the ids it
   * was given (Socket.IO's `_id`) has no seq. An id older than the room's oldest message
   * (history since dropped) gives the oldest seq, so that a page before it is empty and says
   * there is no more; undefined when the room holds no such message.
   */
  async seqOfId(room: string, id: string): Promise<number | undefined> {
    const second = secondOfId(id);
    if (second === undefined) return undefined;
    const tail = await this.#deps.store.tail(room);
    const [oldest] = await this.#deps.store.list(room, { after: tail - 1, limit: 1 });
    if (!oldest) return undefined;
    // An id that names its millisecond leads to its message at once: a room's times are each
    // one message's. One older than the oldest kept was dropped; any other is no message here.
    const at = msOfId(id);
    if (at !== undefined) {
      const seq = await this.seqBefore(room, new Date(at).toISOString());
      const [found] = await this.#deps.store.list(room, { after: seq - 1, limit: 1 });
      if (found?.id === id) return found.seq;
      return at < Date.parse(oldest.createdAt) ? oldest.seq : undefined;
    }
    // An id made before ids named their millisecond (or one that is no message's): looked for
    // from its second on, for a minute, as such an id was made from its commit's clock while its
    // message was stamped after the one before it (a burst's run into the next seconds, a
    // faster clock's message). Not found, and of a second no later than the oldest kept
    // message's id, it was dropped.
    const until = second + 61_000;
    const dropped = second <= (secondOfId(oldest.id) ?? 0) ? oldest.seq : undefined;
    // Its minute over before the oldest kept message: nothing to read.
    if (until <= Date.parse(oldest.createdAt)) return dropped;
    let after = (await this.seqBefore(room, new Date(second).toISOString())) - 1;
    for (let read = 0; read < SEQ_OF_ID_SCAN;) {
      const page = await this.#deps.store.list(room, { after, limit: 200 });
      for (const m of page) {
        if (m.id === id) return m.seq;
        if (Date.parse(m.createdAt) >= until) return dropped;
      }
      if (page.length < 200) return dropped;
      after = page[page.length - 1].seq;
      read += page.length;
    }
    // Read as far as it may without reaching the minute's end: not known to be dropped, and an
    // empty page would tell the client that the history ends here.
    return undefined;
  }

  /**
   * Deletes the room's history, with its files; resolves to how many messages went. `marked`
   * hears the room's new generation once it is stored, before the deleting starts.
   */
  deleteHistory(room: string, marked?: (generation: number) => void): Promise<number> {
    return this.#deps.store.purge(room, marked);
  }

  /** Notes that the room is being deleted; resolves to the note's stamp (see MessageStore). */
  markDeleting(room: string): Promise<string | null> {
    return this.#deps.store.markDeleting(room);
  }

  /** Takes a deletion note back (see MessageStore.unmarkDeleting). */
  unmarkDeleting(room: string, stamp?: string | null): Promise<void> {
    return this.#deps.store.unmarkDeleting(room, stamp);
  }

  /**
   * True when the room was deleted since `generation` was read, or a deletion was begun within
   * the last minute (and the room not created again): a deletion on another server takes the
   * directory row before its notice arrives, so a member refused access meanwhile is out because
   * the room is gone, not because it was turned away.
   */
  async deletedPast(room: string, generation: number): Promise<boolean> {
    return await this.deletedSince(room, generation) || await this.#deps.store.deleting(room);
  }

  /** True within a minute of a room's deletion (see MessageStore.deleting). */
  deleting(room: string): Promise<boolean> {
    return this.#deps.store.deleting(room);
  }

  /** The lowest seq the room's history still holds. */
  tail(room: string): Promise<number> {
    return this.#deps.store.tail(room);
  }

  /**
   * How many times the room has been deleted (0 for never); a read may be up to 250 ms old
   * unless `fresh`.
   */
  generation(room: string, options?: { fresh?: boolean }): Promise<number> {
    return this.#deps.store.generation(room, options);
  }

  /**
   * True when the room was deleted since `generation` was read (read fresh): a socket that
   * joined under it entered after the deletion's notices, and must be told it is out.
   */
  async deletedSince(room: string, generation: number): Promise<boolean> {
    return (await this.generation(room, { fresh: true })) > generation;
  }

  /**
   * The seq after which the room's newest `count` stored messages lie, 0 when it holds no more
   * than that: counted, not taken from the head, as seqs skip (a restored backup starts its rooms
   * a million past their heads, see scripts/backup.ts).
   */
  async seqBeforeNewest(room: string, count: number): Promise<number> {
    const head = await this.head(room);
    if (count <= 0) return head;
    // No more seqs than that: no more messages.
    if (head <= count) return 0;
    // Seqs skip only below the messages kept (a jump, a deletion, retention): when the count-th
    // from the head is there, so are those after it. One message read, not `count`.
    if (await this.#deps.store.get(room, head - count + 1)) return head - count;
    let before: number | undefined;
    for (let left = count; left > 0;) {
      // Pages no longer than the store's longest read, whose shortfall then means the start.
      const limit = Math.min(left, NEWEST_PAGE);
      const page = await this.#deps.store.list(room, { before, limit });
      if (page.length < limit) return 0;
      before = page[0].seq;
      left -= limit;
    }
    return before === undefined ? 0 : before - 1;
  }

  /** The room's newest seq. */
  head(room: string): Promise<number> {
    return this.#deps.store.head(room);
  }

  /**
   * Tells the room that the user started or stopped typing on one connection. A start not renewed
   * within the typing timeout ends by itself, so a client that vanishes mid-sentence does not type
   * forever; a stop ends the user's state only once no other tab of theirs here is typing.
   */
  typing(user: Principal, room: string, isTyping: boolean, connId: string): void {
    const key = `${room}\u0000${user.id}`;
    const current = this.#typing.get(key);
    if (isTyping) {
      if (current) clearTimeout(current.timer);
      const conns = current?.conns ?? new Set<string>();
      conns.add(connId);
      const timer = setTimeout(() => {
        this.#typing.delete(key);
        this.#deps.fanout.publish({ type: "typing", room, user: profileOf(user), isTyping: false });
      }, timerDelay(this.#deps.typingTimeoutMs ?? 5000));
      this.#typing.set(key, { timer, user, conns });
    } else if (current) {
      current.conns.delete(connId);
      // Another tab still typing keeps the indicator; its own stop or the timeout ends it.
      if (current.conns.size > 0) return;
      clearTimeout(current.timer);
      this.#typing.delete(key);
    }
    this.#deps.fanout.publish({ type: "typing", room, user: profileOf(user), isTyping });
  }

  /** Ends the connection's typing state in the room if it has one (e.g. on leave or close). */
  stopTyping(user: Principal, room: string, connId: string): void {
    if (this.#typing.get(`${room}\u0000${user.id}`)?.conns.has(connId)) {
      this.typing(user, room, false, connId);
    }
  }

  /**
   * Records a connection's presence; the room hears `join` only for the user's first
   * connection. The entry lives as long as this server does (see the presence store).
   */
  enter(user: Principal, room: string, connId: string): Promise<{ first: boolean }> {
    const key = connKey(room, connId);
    // A connection that left the room and comes back (a Socket.IO socket's leave_ticket and
    // join_ticket, or its sign-in as another user) while its exit still waits for the store:
    // that exit, taking the entry out after this enter wrote it, would leave it in the room
    // unseen.
    const exiting = this.#exiting.get(key);
    const entering = this.#track(
      exiting
        ? exiting.catch(() => {}).then(() => this.#enter(user, room, connId))
        : this.#enter(user, room, connId),
    );
    this.#entering.set(key, entering);
    const done = () => {
      if (this.#entering.get(key) === entering) this.#entering.delete(key);
    };
    entering.then(done, done);
    return entering;
  }

  async #enter(user: Principal, room: string, connId: string): Promise<{ first: boolean }> {
    let conns = this.#present.get(room);
    if (!conns) this.#present.set(room, conns = new Map());
    conns.set(connId, user);
    this.#failedExits.delete(connKey(room, connId));
    this.#startSweeping();
    const result = await this.#deps.presence.enter(room, profileOf(user), connId);
    if (result.first) {
      this.#announce(room, profileOf(user), "join");
    }
    return result;
  }

  /** Removes a connection's presence; the room hears `leave` only when it was the user's last. */
  exit(user: Principal, room: string, connId: string): Promise<{ last: boolean }> {
    const key = connKey(room, connId);
    const exiting = this.#track(this.#exit(user, room, connId));
    this.#exiting.set(key, exiting);
    const done = () => {
      if (this.#exiting.get(key) === exiting) this.#exiting.delete(key);
    };
    exiting.then(done, done);
    return exiting;
  }

  async #exit(user: Principal, room: string, connId: string): Promise<{ last: boolean }> {
    // An exit that overtook its own enter would be undone by it: the entry would stay forever.
    await this.#entering.get(connKey(room, connId))?.catch(() => {});
    const conns = this.#present.get(room);
    conns?.delete(connId);
    if (conns?.size === 0) this.#present.delete(room);
    this.#failedExits.delete(connKey(room, connId));
    if (this.#present.size === 0 && this.#failedExits.size === 0) this.#stopSweeping();
    // Before the presence write: the typing tab is gone whether or not others of the user stay.
    this.stopTyping(user, room, connId);
    let result: { last: boolean };
    try {
      result = await this.#deps.presence.exit(room, user.id, connId);
    } catch (err) {
      // The entry stays in the store, and its server is alive: nothing else would ever take it
      // out (a ghost for as long as this server runs). The sweep writes the exit again.
      this.#failedExits.set(connKey(room, connId), { user, room, connId });
      this.#startSweeping();
      throw err;
    }
    if (result.last) {
      this.#announce(room, profileOf(user), "leave");
    }
    return result;
  }

  /**
   * The users present in a room, each once: the store's, and those this isolate holds a
   * connection of, whose entries the store may not show (lapsed, not yet written back).
   */
  async present(room: string): Promise<UserProfile[]> {
    // Taken before the read: a user entering meanwhile is announced to the newcomer after its
    // list, which must not show them already. A restore's join is not told here (see
    // restorePresence): a newcomer here learns of those users from this list alone.
    const held = [...this.#entered(room)];
    const listed = await this.#deps.presence.list(room);
    const ids = new Set(listed.map((u) => String(u.id)));
    for (const user of held) {
      if (ids.has(String(user.id))) continue;
      ids.add(String(user.id));
      listed.push(profileOf(user));
    }
    return listed;
  }

  /** Whether this isolate holds a live connection of the user in the room, entered already. */
  holdsHere(room: string, userId: UserId): boolean {
    const id = String(userId);
    for (const [connId, user] of this.#present.get(room) ?? []) {
      if (String(user.id) === id && !this.#entering.has(connKey(room, connId))) return true;
    }
    return false;
  }

  /**
   * The users of this isolate's connections in a room, but those still entering: not yet
   * announced, a change from elsewhere before their join is the store's to judge (a user moving
   * between servers sends both at once).
   */
  *#entered(room: string): Iterable<Principal> {
    for (const [connId, user] of this.#present.get(room) ?? []) {
      if (!this.#entering.has(connKey(room, connId))) yield user;
    }
  }

  /**
   * Whether a presence change heard from another server still holds: the user is present for a
   * join, absent for a leave. One user's tabs closing on one server and opening on another at
   * once send changes that may arrive in either order; the store says which came last.
   */
  async presenceHolds(event: RoomEvent & { type: "presence" }): Promise<boolean> {
    // Present whatever the store says: this server holds their socket, and writes their entry
    // back if it was swept (a lapse), announcing it to the others but not here. The hub drops
    // such a leave too (it hears other routes); here it spares the store's read.
    if (event.action === "leave" && this.holdsHere(event.room, event.user.id)) return false;
    const presence = this.#deps.presence;
    // The user's own entries: a burst of changes into a room of thousands checked each against
    // a read of the whole room took tens of seconds to pass on.
    const present = presence.isPresent
      ? await presence.isPresent(event.room, event.user.id)
      : (await presence.list(event.room)).some((u) => String(u.id) === String(event.user.id));
    return present === (event.action === "join");
  }

  #startSweeping(): void {
    if (this.#sweepTimer !== undefined) return;
    this.#sweepTimer = setInterval(() => {
      // Through the failure log: on a full disk the sweep fails every round for as long as it lasts.
      this.sweepPresence().catch((err) => failureLog.failed("presence sweep failed", err));
    }, this.#deps.presenceSweepMs ?? 10_000);
  }

  #stopSweeping(): void {
    clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
  }

  /**
   * Announces the users of this isolate's rooms whose servers died (their entries lapsed), and
   * removes entries of this isolate's connections that are gone (an exit that failed).
   */
  async sweepPresence(): Promise<void> {
    for (const [key, { user, room, connId }] of [...this.#failedExits]) {
      if (this.#failedExits.get(key)?.user !== user) continue;
      // Back in the room on the same connection (a leave, then a join): its entry is wanted.
      if (this.#present.get(room)?.has(connId)) {
        this.#failedExits.delete(key);
        continue;
      }
      try {
        const { last } = await this.#track(this.#deps.presence.exit(room, user.id, connId));
        if (this.#failedExits.get(key)?.user === user) this.#failedExits.delete(key);
        if (last) this.#announce(room, profileOf(user), "leave");
      } catch (err) {
        // Every socket closed during a KV outage is retried each round: logged once for all.
        failureLog.failed("presence: an exit failed again", err, `room ${room}, user ${user.id}`);
      }
    }
    if (this.#present.size === 0 && this.#failedExits.size === 0) this.#stopSweeping();
    for (const room of [...this.#present.keys()]) {
      const open = (connId: string) => this.#present.get(room)?.has(connId) ?? false;
      for (const user of await this.#deps.presence.sweep(room, open)) {
        this.#announce(room, user, "leave");
      }
    }
  }

  /**
   * Writes every presence entry of this isolate again, after its lease had lapsed and others may
   * have swept them, or shown its users gone; users who come back as first are announced again.
   * With `onlySwept` (it had not lapsed: another server removed some of its entries), a user
   * whose own entry was left is not announced. What fails is tried again, with growing pauses,
   * until every connection open now is written back or has closed, or the service is closed;
   * resolves then. A lapse while a restore runs adds to it rather than running another.
   */
  restorePresence(options: { onlySwept?: boolean } = {}): Promise<void> {
    const again = options.onlySwept === true;
    for (const [room, conns] of this.#present) {
      for (const connId of conns.keys()) {
        const key = connKey(room, connId);
        // A full lapse waiting still must announce its users, whatever a later mark says.
        const waiting = this.#toRestore.get(key);
        this.#toRestore.set(key, { room, connId, again: again && (waiting?.again ?? true) });
      }
    }
    // Started a turn later, so that a restore with nothing to do is not kept as under way.
    return this.#restoring ??= Promise.resolve().then(() => this.#restoreAll());
  }

  async #restoreAll(): Promise<void> {
    try {
      for (let failures = 0; this.#toRestore.size > 0 && !this.#closed;) {
        if (failures > 0) {
          const cap = this.#deps.presenceSweepMs ?? 10_000;
          await this.#pause(Math.min(RESTORE_RETRY_MS * 2 ** (failures - 1), cap));
          if (this.#closed) break;
        }
        const failed = await this.#restoreRound();
        failures = failed ? failures + 1 : 0;
        this.#deps.presence.invalidateSweeps?.();
      }
    } finally {
      // In the same turn as the last look at the work: a lapse after it starts a restore anew.
      this.#restoring = undefined;
    }
  }

  /**
   * Writes back the connections waiting, {@link RESTORE_CHUNK} at once; resolves to whether any
   * failed (they stay waiting).
   */
  async #restoreRound(): Promise<boolean> {
    const waiting = [...this.#toRestore];
    let tried = 0;
    let failed = 0;
    let error: unknown;
    const restore = async (key: string, conn: { room: string; connId: string; again: boolean }) => {
      const { room, connId, again } = conn;
      const user = this.#present.get(room)?.get(connId);
      // Closed meanwhile: its exit took the entry out, or the sweep will.
      if (!user) {
        if (this.#toRestore.get(key) === conn) this.#toRestore.delete(key);
        return;
      }
      tried++;
      try {
        const { first } = await this.#track(
          this.#deps.presence.enter(room, profileOf(user), connId, { again }),
        );
        // Not to this isolate's members: no leave of a user it holds is passed on here (see
        // presenceHolds), so they never saw the user go, and a join would show them twice.
        if (first) this.#announce(room, profileOf(user), "join", { elsewhereOnly: true });
        if (this.#toRestore.get(key) === conn) this.#toRestore.delete(key);
      } catch (err) {
        failed++;
        error ??= err;
      }
    };
    for (let i = 0; i < waiting.length && !this.#closed; i += RESTORE_CHUNK) {
      await Promise.all(
        waiting.slice(i, i + RESTORE_CHUNK).map(([key, conn]) => restore(key, conn)),
      );
    }
    if (failed > 0) {
      // Through the failure log: a KV outage fails every round for as long as it lasts.
      failureLog.failed(
        "presence: writing entries back after a lapse failed; trying again",
        error,
        `${failed} of ${tried} connections`,
      );
    }
    return failed > 0;
  }

  /** Waits `ms`, or until the service is closed. */
  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakeRestore = undefined;
        resolve();
      };
      const timer = setTimeout(done, timerDelay(ms));
      this.#wakeRestore = done;
    });
  }

  /** Tells the room's members that a user came or went. */
  #announce(
    room: string,
    user: UserProfile,
    action: "join" | "leave",
    options?: { elsewhereOnly?: boolean },
  ): void {
    this.#deps.fanout.publish({ type: "presence", room, user, action }, options);
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#inflight.add(promise);
    promise.finally(() => this.#inflight.delete(promise)).catch(() => {});
    return promise;
  }

  /**
   * Refuses sends with `error` from now on, those waiting for their commit too (a shutdown about
   * to close the sockets: see KvMessageStore.refuseAppends); a send writing its files is refused
   * at its append, and its files discarded.
   */
  refuseSends(error: () => Error): void {
    this.#refusal = error;
    this.#deps.store.refuseAppends?.(error);
  }

  /**
   * Waits for the presence updates and sends under way, so that a shutdown does not cut them off,
   * until `deadline` (a `performance.now()` time, which a wall clock's step does not move) when
   * given; resolves to whether they all ended.
   */
  async settle(deadline = Infinity): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((r) => {
      if (deadline !== Infinity) {
        timer = setTimeout(r, Math.max(0, deadline - performance.now()));
      }
    });
    try {
      while (this.#inflight.size > 0 && performance.now() < deadline) {
        await Promise.race([Promise.allSettled([...this.#inflight]), late]);
      }
      return this.#inflight.size === 0;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the timers (typing expiry, presence sweeps) and a restore of presence under way. */
  close(): void {
    this.#closed = true;
    this.#wakeRestore?.();
    this.#stopSweeping();
    for (const { timer } of this.#typing.values()) clearTimeout(timer);
    this.#typing.clear();
  }

  /**
   * Raises the user's read cursor (to the head when `seq` is omitted, and never past it) and
   * tells the room; resolves to the cursor stored (unchanged when the store refuses the mark).
   * Past the head it could never come back, as cursors only move forward. `connId` names the
   * connection that asked, which the event tells apart from the user's other ones.
   */
  async markRead(user: Principal, room: string, seq?: number, connId?: string): Promise<number> {
    const head = await this.#deps.store.head(room);
    const target = seq === undefined ? head : Math.min(seq, head);
    const cursor = await this.#deps.store.markRead(room, user.id, target);
    // Refused (the user deleted, or taken out of the room, a moment ago): the cursor stays as it
    // is, and the room hears nothing of a read it will not be shown.
    if (cursor === null) return await this.#deps.store.cursor(room, user.id);
    this.#deps.fanout.publish({ type: "read", room, user: profileOf(user), seq: cursor, connId });
    return cursor;
  }

  /** Every user's read cursor in a room (by user id as text), or the first `limit` of them. */
  readCursors(room: string, limit?: number): Promise<Map<string, number>> {
    return this.#deps.store.cursors(room, limit);
  }

  /**
   * Deletes the user's read cursors in `rooms` and, when `everywhere` (by default when `rooms` is
   * omitted), in every room they have one, and refuses their read marks there for a while: a
   * user deleted or taken out of a room would otherwise be listed as a reader for as long as the
   * room lives (also after a mark that a server not yet told of it took), and count toward the
   * readers past which a join lists none.
   */
  forgetReads(user: UserId, rooms?: Iterable<string>, everywhere?: boolean): Promise<void> {
    return this.#deps.store.forgetReader(user, rooms, everywhere);
  }

  /**
   * Accepts the user's read marks again in `rooms`, or in every room when it is omitted: a user
   * created again or added back to a room marks reads at once.
   */
  readmitReads(user: UserId, rooms?: Iterable<string>): Promise<void> {
    return this.#deps.store.readmitReader(user, rooms);
  }
}
