/**
 * Our own protocol at `/ws` (docs/protocol.md): several rooms on one socket, recovery by seq,
 * idempotent sends with acknowledgements, typing, read cursors, history paging and presence.
 */

import { normalizeUserId } from "../../auth/principal.ts";
import { findToken } from "../../auth/token.ts";
import { MAX_BODY_CHARS, MAX_FILES_PER_MESSAGE } from "../../core/chat_service.ts";
import { asChatError, ChatError, rateLimited } from "../../core/errors.ts";
import { failureLog } from "../../core/failure_log.ts";
import { type RateVerdict, TokenBuckets, TypingStarts } from "../../core/rate_limiter.ts";
import { INEXACT_NUMBER, isExactNumber } from "../../core/json.ts";
import { canonicalId, MAX_ROOMS_PER_SOCKET, parseRoomKey } from "../../core/rooms.ts";
import type { AppendResult, Message, Principal, RoomEvent, UserProfile } from "../../core/types.ts";
import type { DirectSocket, Member, Pacer } from "../../hub/hub.ts";
import { mediaUrlPath } from "../../media/local_media_store.ts";
import { CLOSE, Connection, type SocketHandler } from "../../transport/websocket.ts";
import {
  admitSocket,
  baseUrlOf,
  cookieOrigins,
  type DialectContext,
  intern,
  maxFrameSize,
  socketOptions,
  type WsRoute,
} from "../context.ts";
import { clip, optionalClientId, optionalString, parseObject, typingRecord } from "../frames.ts";
import { fitHistory, frameBytes, historyBudget } from "../history_pages.ts";

/** Close codes of the native protocol. */
export const NATIVE_CLOSE = {
  /** Missing, invalid or expired token: do not reconnect with the same token. */
  unauthorized: 4001,
  /** The client could not keep up; reconnect and recover with `since`. */
  slowConsumer: 4008,
  /** The client kept flooding after being told to slow down. */
  rateLimited: CLOSE.rateLimited,
} as const;

/** How every presence frame of this protocol begins (see `renderEvent`). */
const PRESENCE_FRAME = '{"type":"presence"';

/**
 * A user's replay allowance (all their sockets on this isolate together) is this many joins'
 * worth of `REPLAY_LIMIT` messages, refilled at one join's worth a second: a reconnect to many
 * rooms replays in full, a loop of rejoins does not, nor do many sockets each rejoining.
 */
const REPLAY_BURST_JOINS = 10;
/**
 * Rooms of one socket whose messages the hub may write straight to it. The hub checks a direct
 * socket's outbound buffer per room (every 32 messages or 64 KiB of each), so a socket in many
 * busy rooms could go unchecked for that much from every one; past this many rooms, messages go
 * through the socket's own send, which checks across all of them.
 */
const MAX_DIRECT_ROOMS = 4;
/**
 * Most read cursors a `joined` lists; a room with more leaves them out (listing every reader of
 * a large room on every join would cost each join a read per reader, and show no one anything).
 */
const READS_IN_JOINED = 100;

/** The most messages one history read of the store returns (see MessageStore.list). */
const HISTORY_PAGE = 1000;

/** A user as the native protocol shows it. */
export function nativeUser(user: UserProfile | null) {
  if (!user) return null;
  return {
    id: user.id,
    username: user.username,
    name: user.name ?? null,
    email: user.email ?? null,
    profile_image: user.profileImage ?? null,
    role: user.role ?? null,
  };
}

/** A stored message as the native protocol shows it. */
export function nativeMessage(message: Message, baseUrl: string) {
  return {
    type: "message",
    room: message.room,
    seq: message.seq,
    id: message.id,
    sender: nativeUser(message.sender),
    body: message.body,
    attachments: message.attachments.map((a) => ({
      id: a.id,
      name: a.originalName,
      mime: a.mime,
      size: a.size,
      url: baseUrl + mediaUrlPath(a.key),
    })),
    created_at: message.createdAt,
    client_id: message.clientId ?? null,
  };
}

function renderEvent(event: RoomEvent, baseUrl: string): string | undefined {
  switch (event.type) {
    case "message":
      return JSON.stringify(nativeMessage(event.message, baseUrl));
    case "typing":
      return JSON.stringify({
        type: "typing",
        room: event.room,
        user: nativeUser(event.user),
        is_typing: event.isTyping,
      });
    case "read":
      return JSON.stringify({
        type: "read",
        room: event.room,
        user: nativeUser(event.user),
        seq: event.seq,
      });
    case "presence":
      return JSON.stringify({
        type: "presence",
        room: event.room,
        action: event.action,
        user: nativeUser(event.user),
      });
    default:
      return undefined;
  }
}

const optionalSeq = (record: Record<string, unknown>, field: string): number | undefined => {
  const value = record[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new ChatError("invalid_frame", `Field "${field}" must be a whole number ≥ 0`);
  }
  return value;
};

/** A send's `files`: absent, or a list of `{name, data}` whose data is a non-empty string. */
function optionalFiles(record: Record<string, unknown>): { name?: string; data: string }[] {
  if (record.files === undefined || record.files === null) return [];
  if (!Array.isArray(record.files)) {
    throw new ChatError("invalid_frame", '"files" must be a list of {name, data}');
  }
  return record.files.map((f) => {
    if (typeof f !== "object" || f === null || Array.isArray(f)) {
      throw new ChatError("invalid_frame", 'Each entry of "files" must be {name, data}');
    }
    const file = f as Record<string, unknown>;
    const data = optionalString(file, "data");
    // "" is an empty file, which the upload route takes too.
    if (data === undefined) {
      throw new ChatError("invalid_frame", 'Each file needs its base64 "data"');
    }
    return { name: optionalString(file, "name"), data };
  });
}

const requireRoom = (record: Record<string, unknown>): string => {
  const room = optionalString(record, "room");
  if (!room) throw new ChatError("invalid_frame", 'Field "room" is required');
  const key = parseRoomKey(room);
  if (!key) {
    throw new ChatError(
      "invalid_frame",
      `Invalid room "${clip(room)}": expected kind:id, e.g. ticket:1`,
    );
  }
  // `chat:007` is chat 7 on every other way in (URLs, the API): as a room of its own it would be
  // one that no participant list covers and no API call can delete.
  const canonical = canonicalId(key.kind, key.id);
  if (canonical !== key.id) {
    throw new ChatError(
      "invalid_frame",
      `Invalid room "${room}": write it ${key.kind}:${canonical}`,
    );
  }
  return room;
};

/** The frame's room as {@link requireRoom} reads it, or undefined when it names none. */
const validRoom = (record: Record<string, unknown>): string | undefined => {
  try {
    return requireRoom(record);
  } catch {
    return undefined;
  }
};

/** The native protocol's route: `/ws`. */
export function nativeRoute(ctx: DialectContext): WsRoute {
  const limit = ctx.config.replayLimit;
  const replay = new TokenBuckets(limit, limit * REPLAY_BURST_JOINS, (tokens, at) => ({
    tokens,
    at,
  }));
  return {
    pattern: new URLPattern({ pathname: "/ws{/}?" }),
    async handle(req) {
      const { token, protocol } = findToken(req, cookieOrigins(ctx.config));
      const options = socketOptions(ctx, "native", protocol);
      const user = await ctx.auth.authenticate(token);
      const baseUrl = baseUrlOf(ctx.config, req);
      if (!user) {
        return Connection.refuse(req, options, NATIVE_CLOSE.unauthorized, "Unauthorized");
      }
      return Connection.upgrade(req, options, new NativeSession(ctx, user, baseUrl, replay));
    },
  };
}

/** Tells a client to rebuild its view of a room from `firstSeq` (see docs/protocol.md). */
function resyncFrame(room: string, reason: string, firstSeq: number, head: number): string {
  return JSON.stringify({ type: "resync", room, reason, first_seq: firstSeq, head });
}

// The session and its hub memberships are classes rather than object literals of closures:
// with tens of thousands of idle sockets, the closures and their contexts cost about a
// kilobyte per socket.

/** One socket's membership of one room. */
class NativeMember implements Member {
  readonly user: Principal;
  readonly renderKey: string;
  /**
   * Message frames are never held back (only presence is), so the hub may write them itself, for
   * the socket's first few rooms (see {@link MAX_DIRECT_ROOMS}).
   */
  readonly direct?: DirectSocket;
  /** The socket a join's replay waits on, in every room (not only the direct ones). */
  readonly pacer: Pacer;
  #session: NativeSession;
  #conn: Connection;
  #room: string;
  // A presence event can reach a new member before the `joined` reply whose snapshot was read
  // before that change committed; sent first, the snapshot would undo it. Held back until the
  // reply is out, the event lands after it (or repeats what the snapshot has, which is harmless).
  #holding = true;
  #held?: string[];
  /** The room's generation when the join read it. */
  readonly epoch: number;
  /** Why the socket was taken out of the room, once it was (see `drop`). */
  droppedFor?: "access_revoked" | "room_deleted";

  constructor(
    session: NativeSession,
    conn: Connection,
    room: string,
    direct: boolean,
    epoch: number,
  ) {
    this.user = session.user;
    this.epoch = epoch;
    this.renderKey = session.renderKey;
    this.direct = direct ? conn : undefined;
    this.pacer = conn;
    this.#session = session;
    this.#conn = conn;
    this.#room = room;
  }

  wants(event: RoomEvent): boolean {
    if (event.type === "message" || event.type === "presence") return true;
    // Nobody is shown their own typing; but a read cursor moved on one of the user's devices
    // must reach their others (their unread state clears), all but the socket that has `read_ok`.
    if (event.type === "read") return event.connId !== this.#session.connId;
    return event.type === "typing" && String(event.user.id) !== String(this.user.id);
  }

  render(event: RoomEvent): string | undefined {
    return renderEvent(event, this.#session.baseUrl);
  }

  send(frame: string): void {
    if (this.#holding && frame.startsWith(PRESENCE_FRAME)) (this.#held ??= []).push(frame);
    else this.#conn.send(frame);
  }

  gap(firstSeq: number, head: number): void {
    this.#conn.send(resyncFrame(this.#room, "history_truncated", firstSeq, head));
  }

  /** Sends the presence frames held back while the join read its snapshot, and stops holding. */
  release(): void {
    this.#holding = false;
    const held = this.#held;
    this.#held = undefined;
    // Out of the room already (the join failed, or the socket was taken out): none of it goes.
    if (this.#session.memberOf(this.#room) !== this) return;
    for (const frame of held ?? []) this.#conn.send(frame);
  }

  evict(event: RoomEvent & { type: "closed" | "revoked" }): void {
    if (this.#session.memberOf(this.#room) === this) {
      this.#session.drop(
        this.#conn,
        this.#room,
        event.type === "closed" ? "room_deleted" : "access_revoked",
      );
    }
  }
}

/** The `removed` reason of a send refused because the socket may no longer be in the room. */
const REMOVED_BY: Partial<Record<string, "access_revoked" | "room_deleted">> = {
  forbidden: "access_revoked",
  room_deleted: "room_deleted",
};

/**
 * Of a typing frame, the room it starts typing in (`is_typing` absent or true; null for a stop or a
 * start without a room), else undefined.
 */
function typingStartRoom(text: string): string | null | undefined {
  const record = text.length <= MAX_TYPING_FRAME ? typingRecord(text) : undefined;
  if (!record) return undefined;
  return record.is_typing !== false && typeof record.room === "string" ? record.room : null;
}

/** Longest frame looked at for a typing start: one is well under this, its room included. */
const MAX_TYPING_FRAME = 512;

/** Longest a send refused for the rate limit holds back the connection's later sends. */
const SEND_HOLD_MS = 5000;

/** Frames still handled after the client closed its socket (see `message`). */
const KEPT_AFTER_CLOSE = new Set(["join", "leave", "read"]);

/** True for a `ref` the protocol allows: absent (or null), a number, a short string. */
function isRef(ref: unknown): boolean {
  return ref === undefined || ref === null || (typeof ref === "number" && isExactNumber(ref)) ||
    (typeof ref === "string" && ref.length <= 128);
}

/** One authenticated socket of the native protocol: its rooms and its commands. */
class NativeSession implements SocketHandler {
  readonly user: Principal;
  readonly baseUrl: string;
  readonly renderKey: string;
  #ctx: DialectContext;
  #connId = crypto.randomUUID();
  /** When a typing start was last taken, per room (see `admit`). */
  #typingAt = new TypingStarts(MAX_ROOMS_PER_SOCKET);
  /** A send refused for the rate limit, until it comes again (see `#keepSendOrder`). */
  #heldSend?: { clientId: string; until: number };
  #rooms = new Map<string, NativeMember>();
  /**
   * The rooms the socket was in when its client closed it: frames it sent before closing are
   * still handled (see the transport), and its sends to those rooms are still stored.
   */
  #roomsAtClose?: Set<string>;
  /** Counted among the user's sockets (see `open`). */
  #counted = false;
  /** Messages each user may still have replayed, shared by the route's sockets. */
  #replay: TokenBuckets;

  /** The socket's id, unique across isolates and servers (a random UUID). */
  get connId(): string {
    return this.#connId;
  }

  constructor(ctx: DialectContext, user: Principal, baseUrl: string, replay: TokenBuckets) {
    this.#ctx = ctx;
    this.user = user;
    this.baseUrl = baseUrl;
    this.renderKey = intern(`native|${baseUrl}`);
    this.#replay = replay;
  }

  /**
   * How many of `wanted` messages a join may replay (at most `REPLAY_LIMIT`, within what the
   * user's allowance holds), taken from the allowance.
   */
  #replayAllowance(wanted: number): number {
    const limit = this.#ctx.config.replayLimit;
    return this.#replay.take(String(this.user.id), Math.min(wanted, limit), performance.now());
  }

  /** The socket's membership of `room`, if it joined it. */
  memberOf(room: string): NativeMember | undefined {
    return this.#rooms.get(room);
  }

  #reply(conn: Connection, frame: Record<string, unknown>, ref: unknown): void {
    // A null ref is none (docs/protocol.md): echoed, it would be one a client never gave.
    conn.send(JSON.stringify(ref === undefined || ref === null ? frame : { ...frame, ref }));
  }

  async #join(
    conn: Connection,
    room: string,
    since: number | undefined,
    epoch: number | undefined,
    ref: unknown,
  ) {
    const ctx = this.#ctx;
    // A rejoin refused takes the socket out of the room too (with `removed`): it may not be in
    // it, whatever membership it had before.
    const refuse = (reason: "access_revoked" | "room_deleted", error: ChatError) => {
      if (conn.open) this.drop(conn, room, reason);
      return error;
    };
    if (!(await ctx.chat.canAccess(this.user, room))) {
      // A rejoin of a room whose deletion is under way (its notice may not have come here) is
      // told so. Only then: told later, anyone could learn which rooms were ever deleted.
      if (epoch !== undefined && await ctx.chat.deleting(room)) {
        throw refuse("room_deleted", new ChatError("room_deleted", `Room "${room}" was deleted`));
      }
      throw refuse("access_revoked", new ChatError("forbidden", `Access denied to room "${room}"`));
    }
    // The room's deletions so far: a client that held the room under an earlier count holds
    // messages that are gone, and sends meant for a room that is no more. Read fresh: a stale
    // count handed out here would refuse the client's next rejoin.
    const current = await ctx.chat.generation(room, { fresh: true });
    if (epoch !== undefined && epoch < current) {
      throw refuse("room_deleted", new ChatError("room_deleted", `Room "${room}" was deleted`));
    }
    const rooms = this.#rooms;
    if (!rooms.has(room) && rooms.size >= MAX_ROOMS_PER_SOCKET) {
      throw new ChatError("invalid_frame", `At most ${MAX_ROOMS_PER_SOCKET} rooms per socket`);
    }
    const existing = rooms.get(room);
    if (existing) ctx.hub.leave(room, existing);
    // No `ref` on a resync: it is not the join's reply, and a client settling the join on the
    // first frame carrying its ref must get `joined` (or the error).
    const resync = (reason: string, firstSeq: number, head: number) =>
      conn.send(resyncFrame(room, reason, firstSeq, head));
    let from = since;
    /** Where a replay limited in a room whose seqs skip starts: after a stored message. */
    let limitedFrom: number | undefined;
    if (since !== undefined) {
      let tail: number, head: number;
      try {
        [tail, head] = await Promise.all([ctx.chat.tail(room), ctx.chat.head(room)]);
      } catch (err) {
        // The membership this rejoin replaces is out of the hub already: left whole, so that
        // the socket is not kept in a room it hears nothing of (the error says to join again).
        if (existing && rooms.get(room) === existing) {
          await this.#leave(room).catch((e) => this.#leaveFailed(room, e));
        }
        throw err;
      }
      // Read from the store, as this isolate's hub may not have delivered its newest messages.
      const start = since > head ? tail - 1 : Math.max(since, tail - 1);
      const allowed = this.#replayAllowance(head - start);
      // Seqs skip where a restored backup's rooms jump a million (see scripts/backup.ts): there
      // the replay counts messages, not seqs, and is charged for those it sends.
      let fits = false;
      if (since <= head && head - start > allowed && allowed > 0) {
        const [next] = await ctx.chat.history(room, { after: head - allowed, limit: 1 });
        if (next?.seq !== head - allowed + 1) {
          const after = await ctx.chat.history(room, { after: start, limit: allowed });
          if (after.length < Math.min(allowed, HISTORY_PAGE)) {
            fits = true;
            this.#replay.get(String(this.user.id), performance.now()).tokens += allowed -
              after.length;
          } else {
            const before = await ctx.chat.seqBeforeNewest(room, allowed);
            if (before <= start) fits = true;
            else limitedFrom = before;
          }
        }
      }
      if (since > head) {
        // The client is ahead of the store (it was reset): it must rebuild from what follows.
        from = head - allowed;
        resync("ahead_of_history", from + 1, head);
      } else if (head - start > allowed && !fits) {
        // History lost past `since` is said first, as a client that reads history from `since`
        // would find a hole without a word.
        if (since + 1 < tail) resync("history_truncated", tail, head);
        // More than one join replays: the newest ones come, the older ones are the client's to
        // read with `history` (one frame a page, so a loop of rejoins cannot make the server
        // write a room's whole history again and again).
        from = limitedFrom ?? head - allowed;
        resync("replay_limited", from + 1, head);
      } else if (since + 1 < tail) {
        // History no longer reaches back to what the client has: said, not left a silent gap.
        resync("history_truncated", tail, head);
        from = tail - 1;
      }
    }
    // Closed while its access or history was read: the close found no room to leave, and
    // presence recorded now would never be taken back. The sends the client made after this
    // join, before closing, are still stored.
    if (!conn.open) {
      (this.#roomsAtClose ??= new Set()).add(room);
      return;
    }
    // At most MAX_DIRECT_ROOMS direct members at once: each had fewer other rooms when made.
    const others = rooms.size - (existing ? 1 : 0);
    const member = new NativeMember(this, conn, room, others < MAX_DIRECT_ROOMS, current);
    rooms.set(room, member);
    try {
      // Presence first: the others hear the join, the joiner sees itself in `presence`.
      if (!existing) await ctx.chat.enter(this.user, room, this.#connId);
      // Retention may delete past the tail read above before the replay reads: the replay
      // reports what it finds missing.
      const head = await ctx.hub.join(
        room,
        member,
        from === undefined ? {} : {
          since: from,
          onGap: (firstSeq, head) => resync("history_truncated", firstSeq, head),
          stopped: () => !conn.open || rooms.get(room) !== member,
        },
      );
      if (!this.#stillJoining(conn, room, member)) {
        // Closed while joining: the leave could not take out a member not yet in.
        ctx.hub.leave(room, member);
        return;
      }
      // Access removed since the check above was published before this member was in the
      // room to be evicted: asked again, past any cache, now that a later removal will find it.
      if (!(await ctx.chat.canAccess(this.user, room, { fresh: true }))) {
        throw new ChatError("forbidden", `Access denied to room "${room}"`);
      }
      // The same for a deletion: its notices went before this member was in the room, or
      // spared it as joined under the new generation, which it was not.
      if (await ctx.chat.deletedSince(room, current)) {
        throw new ChatError("room_deleted", `Room "${room}" was deleted`);
      }
      const [present, cursors] = await Promise.all([
        ctx.chat.present(room),
        ctx.chat.readCursors(room, READS_IN_JOINED + 1),
      ]);
      // Taken out meanwhile (`removed` is sent): a `joined` now would say the opposite.
      if (!this.#stillJoining(conn, room, member)) return;
      const joined: Record<string, unknown> = {
        type: "joined",
        room,
        head,
        epoch: current,
        presence: present.map(nativeUser),
      };
      // Read before `joined` goes, with the socket already in the room: a cursor that moves
      // meanwhile comes as a `read` frame after it, and cursors only move forward.
      if (cursors.size <= READS_IN_JOINED) {
        joined.reads = [...cursors].map(([id, seq]) => ({
          user_id: normalizeUserId(id) ?? id,
          seq,
        }));
      }
      this.#reply(conn, joined, ref);
    } catch (err) {
      // Undone, so that trying again starts afresh (and records the presence again).
      if (rooms.get(room) === member) {
        this.#leave(room).catch((e) => this.#leaveFailed(room, e));
      }
      throw err;
    } finally {
      member.release();
    }
  }

  /** Whether a send or read mark for `room` counts: the socket is in it, or was at its close. */
  #inRoom(conn: Connection, room: string): boolean {
    return this.#rooms.has(room) || (!conn.open && this.#roomsAtClose?.has(room) === true);
  }

  /** Takes the socket out of a room it may no longer be in, and says so. */
  drop(conn: Connection, room: string, reason: "room_deleted" | "access_revoked"): void {
    const member = this.#rooms.get(room);
    if (!member) return;
    member.droppedFor = reason;
    this.#leave(room).catch((err) => this.#leaveFailed(room, err));
    conn.send(JSON.stringify({ type: "removed", room, reason }));
  }

  /**
   * False when the socket closed while `member` was joining; throws the reason when it was taken
   * out of the room meanwhile (after `removed`, the join's reply is that error).
   */
  #stillJoining(conn: Connection, room: string, member: NativeMember): boolean {
    if (!conn.open) return false;
    if (this.#rooms.get(room) === member) return true;
    if (member.droppedFor === "room_deleted") {
      throw new ChatError("room_deleted", `Room "${room}" was deleted`);
    }
    if (member.droppedFor === "access_revoked") {
      throw new ChatError("forbidden", `Access denied to room "${room}"`);
    }
    return false;
  }

  async #leave(room: string): Promise<boolean> {
    const member = this.#rooms.get(room);
    if (!member) return false;
    this.#rooms.delete(room);
    this.#ctx.hub.leave(room, member);
    await this.#ctx.chat.exit(this.user, room, this.#connId);
    return true;
  }

  /**
   * Closes with 4001 once the token has expired, for a frame that would reach a room the socket
   * is not in (a join, another room's history): the rooms it is in stay as long as it does, but
   * an expired token opens no more. Clients reconnect with a fresh token (the typed client asks
   * its token function again) and rejoin.
   */
  #closeIfExpired(conn: Connection): boolean {
    const expiresAt = this.user.expiresAt;
    if (expiresAt === undefined || Date.now() < expiresAt) return false;
    conn.close(NATIVE_CLOSE.unauthorized, "Token expired");
    return true;
  }

  async #handle(conn: Connection, record: Record<string, unknown>): Promise<void> {
    const ctx = this.#ctx;
    const user = this.user;
    const ref = record.ref;
    switch (record.type) {
      case "join": {
        if (this.#closeIfExpired(conn)) return;
        // One room (`room`, `since`) or several (`rooms`: names or {room, since}).
        if (record.rooms !== undefined && record.rooms !== null && !Array.isArray(record.rooms)) {
          throw new ChatError("invalid_frame", '"rooms" must be a list of rooms or {room, since}');
        }
        const list: unknown[] = Array.isArray(record.rooms)
          ? record.rooms
          : [{ room: record.room, since: record.since, epoch: record.epoch }];
        // Checked before any work: each entry costs an access check and a reply.
        if (list.length === 0 || list.length > MAX_ROOMS_PER_SOCKET) {
          throw new ChatError(
            "invalid_frame",
            `"rooms" must list 1 to ${MAX_ROOMS_PER_SOCKET} rooms`,
          );
        }
        // Every entry gets its own `joined` or error (naming the room), so one refused room
        // neither stops the rest nor leaves the client waiting for a reply that never comes.
        const listed = new Set<string>();
        for (const raw of list) {
          // Closed by this side: nothing more. Closed by the client: each entry is still checked,
          // so that its sends made before closing are stored (see `#join`).
          if (conn.stopped) return;
          const item = typeof raw === "string" ? { room: raw } : raw;
          let room: string | undefined;
          try {
            if (typeof item !== "object" || item === null) {
              throw new ChatError(
                "invalid_frame",
                'Each entry of "rooms" must be a room or {room, since}',
              );
            }
            const entry = item as Record<string, unknown>;
            room = requireRoom(entry);
            // A second entry would leave and rejoin the room, replaying its history again.
            if (listed.has(room)) {
              throw new ChatError("invalid_frame", `Room "${room}" is listed twice`);
            }
            listed.add(room);
            await this.#join(
              conn,
              room,
              optionalSeq(entry, "since"),
              optionalSeq(entry, "epoch"),
              ref,
            );
          } catch (err) {
            this.#replyError(conn, err, ref, room);
          }
        }
        return;
      }
      case "leave": {
        const room = requireRoom(record);
        this.#roomsAtClose?.delete(room);
        await this.#leave(room);
        this.#reply(conn, { type: "left", room }, ref);
        return;
      }
      case "send": {
        const room = requireRoom(record);
        if (!this.#inRoom(conn, room)) {
          throw new ChatError("not_found", `Join room "${room}" first`);
        }
        const files = optionalFiles(record);
        // The next frame is taken while this one commits; the ack or error keeps its place.
        let work: Promise<AppendResult>;
        try {
          work = (await ctx.chat.queue(user, room, {
            body: optionalString(record, "body") ?? "",
            clientId: optionalClientId(record, "client_id"),
            mediaDir: `native/${room.replace(":", "_")}`,
            // No document fixes these URLs, and media is public: names nobody can guess.
            names: "tagged",
            files,
          })).result;
        } catch (err) {
          work = Promise.reject(err);
        }
        conn.finishInOrder(work, (outcome) => {
          if (!outcome.ok) {
            // Access was withdrawn, or the room deleted, since the join: leave the room as the
            // revocation or deletion would have it left.
            const reason = outcome.error instanceof ChatError
              ? REMOVED_BY[outcome.error.code]
              : undefined;
            if (reason) this.drop(conn, room, reason);
            // The error frame of a send names no room (docs/protocol.md); the log does.
            this.#replyError(conn, outcome.error, ref, undefined, room);
            return;
          }
          const result = outcome.value;
          this.#reply(conn, {
            type: "ack",
            room,
            client_id: result.message.clientId ?? null,
            id: result.message.id,
            seq: result.message.seq,
            created_at: result.message.createdAt,
            duplicate: result.duplicate,
          }, ref);
        });
        return;
      }
      case "typing": {
        const room = requireRoom(record);
        if (!this.#rooms.has(room)) throw new ChatError("not_found", `Join room "${room}" first`);
        if (record.is_typing !== undefined && typeof record.is_typing !== "boolean") {
          throw new ChatError("invalid_frame", '"is_typing" must be true or false');
        }
        ctx.chat.typing(user, room, record.is_typing !== false, this.#connId);
        return;
      }
      case "read": {
        const room = requireRoom(record);
        if (!this.#inRoom(conn, room)) {
          throw new ChatError("not_found", `Join room "${room}" first`);
        }
        const seq = await ctx.chat.markRead(user, room, optionalSeq(record, "seq"), this.#connId);
        this.#reply(conn, { type: "read_ok", room, seq }, ref);
        return;
      }
      case "history": {
        const room = requireRoom(record);
        if (!this.#rooms.has(room) && this.#closeIfExpired(conn)) return;
        // Written as the socket drains, as a join's replay is: pages asked for back to back (a
        // gap read page after page, several rooms' at once) would pass the slow-consumer bound
        // together before the reader could take them.
        if (conn.writable() <= 0 && !(await conn.drained())) return;
        if (!(await ctx.chat.canAccess(user, room))) {
          throw new ChatError("forbidden", `Access denied to room "${room}"`);
        }
        const limit = record.limit ?? 50;
        if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > 200) {
          throw new ChatError(
            "invalid_frame",
            'Field "limit" must be a whole number from 1 to 200',
          );
        }
        const before = optionalSeq(record, "before");
        const after = optionalSeq(record, "after");
        const page = await ctx.chat.historyPage(room, { before, after, limit });
        // 200 messages of 20,000 characters are 12 MB in CJK text, one frame three times the
        // default SLOW_CONSUMER_BYTES: a steady reader was closed as slow once live traffic made
        // the socket look at its buffer. Cut on the side away from the reader, so that the next
        // page's cursor (first_seq or last_seq) goes on from what was sent.
        // The frame around them, its seqs at their longest.
        const most = Number.MAX_SAFE_INTEGER;
        const around = frameBytes({
          type: "history",
          room,
          messages: [],
          has_more: false,
          first_seq: most,
          last_seq: most,
          ...(ref === undefined || ref === null ? {} : { ref }),
        });
        const { messages, rendered, cut } = fitHistory(
          page.messages,
          (m) => nativeMessage(m, this.baseUrl),
          historyBudget(ctx.config.slowConsumerBytes),
          after !== undefined ? "oldest" : "newest",
          around,
        );
        this.#reply(conn, {
          type: "history",
          room,
          messages: rendered,
          has_more: page.hasMore || cut,
          first_seq: messages[0]?.seq ?? null,
          last_seq: messages.at(-1)?.seq ?? null,
        }, ref);
        return;
      }
      case "ping":
        this.#reply(conn, { type: "pong" }, ref);
        return;
      default:
        throw new ChatError(
          "invalid_frame",
          typeof record.type === "string"
            ? `Unknown type "${clip(record.type)}"`
            : record.type === undefined || record.type === null
            ? 'Field "type" is required'
            : 'Field "type" must be a string',
        );
    }
  }

  open(conn: Connection): void {
    const config = this.#ctx.config;
    const refused = admitSocket(this.#ctx, this.user.id);
    if (refused) {
      conn.close(CLOSE.rateLimited, refused);
      return;
    }
    this.#counted = true;
    conn.send(JSON.stringify({
      type: "welcome",
      user: nativeUser(this.user),
      conn_id: this.#connId,
      // So that a client refuses a file or frame too large before sending it: a frame over the
      // limit closes the socket, and a client resending it after reconnecting would loop.
      limits: {
        max_body_chars: MAX_BODY_CHARS,
        max_files: MAX_FILES_PER_MESSAGE,
        max_file_bytes: config.maxFileBytes,
        max_frame_chars: maxFrameSize(config),
        // So that a client with much to send (rejoins, sends queued offline) paces it rather
        // than being refused and, going on, closed (4029).
        frames_per_second: config.rateLimitPerSecond,
        // Shared by all of the user's sockets on this server (isolate).
        user_frames_per_second: config.rateLimitUserPerSecond,
      },
      // A client that sends something (a ping) more often than every half of this is never
      // pinged by the runtime: fewer frames, and no reliance on Deno's heartbeat.
      heartbeat_ms: config.heartbeatSeconds * 1000,
    }));
  }

  /**
   * Counts a frame against the rate limits as it arrives (see `SocketHandler.admit`). Typing takes
   * from buckets of its own (`RateLimiter.typing`), never a token a message needs: a client sends
   * a start and a stop around every pause, and one back online sends its messages behind them;
   * refused there, it is a strike, as a flood of typing alone is still a flood. A typing start
   * for a room repeated within `TYPING_REPEAT_MS` of the last one taken (one per keystroke, a held
   * key) is refused without a token, and typing refused is dropped without an error (see
   * `message`).
   */
  admit(_conn: Connection, text: string): RateVerdict {
    const room = typingStartRoom(text);
    if (room === undefined) return this.#ctx.limiter.take(this.user.id, this.#connId);
    const now = performance.now();
    if (room !== null && this.#typingAt.repeats(room, now)) return "limited";
    const verdict = this.#ctx.limiter.typing(this.user.id, this.#connId, true);
    if (verdict !== "ok") return verdict;
    if (room !== null) this.#typingAt.started(room, now);
    return "ok";
  }

  async message(conn: Connection, text: string): Promise<void> {
    // Taken before parsing: a flood of malformed frames is a flood too (the transport closes
    // one that goes on).
    const verdict = conn.admission;
    let ref: unknown;
    let record: Record<string, unknown> | undefined;
    try {
      record = parseObject(text, "Expected a JSON object with a type", true);
      // Copied into the reply: an unbounded one would let a client make the server echo megabytes.
      if (!isRef(record.ref)) {
        throw new ChatError(
          "invalid_frame",
          typeof record.ref === "number"
            ? `Field "ref" ${INEXACT_NUMBER}`
            : 'Field "ref" must be a number or a string of at most 128 characters',
        );
      }
      ref = record.ref;
      if (record.type === "send") this.#keepSendOrder(record, verdict);
      if (record.type === "typing" && record.is_typing === false) {
        this.#typingAt.stopped(String(record.room));
      }
      if (verdict === "limited") {
        // Typing says nothing a later frame does not say again.
        if (record.type === "typing") return;
        throw rateLimited();
      }
      // Sends overlap their commits; anything else sees, and answers after, what they did. Once
      // this side closed the socket (one of their replies, an eviction) nothing more is done;
      // once the client did, what its frames store still counts: sends, read marks, and the
      // joins and leaves they depend on.
      if (
        record.type !== "send" && !(await conn.settled()) &&
        (conn.stopped || !KEPT_AFTER_CLOSE.has(record.type as string))
      ) return;
      await this.#handle(conn, record);
    } catch (err) {
      const error = verdict === "limited" ? rateLimited() : err;
      // The frame's room, when it names a valid one, for the log of an unexpected error alone
      // (see `#replyError`).
      const about = record && !(error instanceof ChatError) ? validRoom(record) : undefined;
      conn.finishInOrder(
        Promise.resolve(),
        () => this.#replyError(conn, error, ref, undefined, about),
      );
    }
  }

  /**
   * A send refused for the rate limit is sent again by a client that retries with its
   * `client_id` (the typed client does), and the sends after it must not overtake it, though on
   * a slow link the bucket has refilled by the time they arrive. So until that send comes again,
   * or {@link SEND_HOLD_MS} pass, the connection's later sends are refused the same way.
   */
  #keepSendOrder(record: Record<string, unknown>, verdict: RateVerdict): void {
    const raw = record.client_id;
    const clientId = typeof raw === "string" || typeof raw === "number" ? String(raw) : undefined;
    const held = this.#heldSend;
    const now = performance.now();
    if (held) {
      if (clientId !== held.clientId && now < held.until) throw rateLimited();
      this.#heldSend = undefined;
    }
    if (verdict === "limited" && clientId) {
      this.#heldSend = { clientId, until: now + SEND_HOLD_MS };
    }
  }

  /** Tells the client why the socket is closing for a frame it sent (too large, too many). */
  refused(conn: Connection, error: ChatError): void {
    // Counted by the transport, which refused it.
    this.#reply(conn, { type: "error", code: error.code, message: error.message }, undefined);
  }

  /**
   * Answers a refused request with an `error` frame, naming `room` when given one (join's
   * entries); an unexpected error is logged with `about`, the room the request named.
   */
  #replyError(
    conn: Connection,
    err: unknown,
    ref: unknown,
    room?: string,
    about: string | undefined = room,
  ): void {
    const error = asChatError(err, `native, room ${about ?? "none"}, user ${this.user.id}`);
    this.#ctx.metrics.error(error.code);
    this.#reply(conn, {
      type: "error",
      code: error.code,
      message: error.message,
      ...(room === undefined ? {} : { room }),
    }, ref);
  }

  /** Logs a leave that failed: once for all while a store is down (see failure_log.ts). */
  #leaveFailed(room: string, err: unknown): void {
    failureLog.failed("native: leave failed", err, `room ${room}, user ${this.user.id}`);
  }

  closed(conn: Connection): void {
    this.#ctx.limiter.forget(this.#connId);
    // Still the user's while Deno holds the connection (a peer that stopped reading).
    if (this.#counted) conn.whenGone(() => this.#ctx.sockets.release(this.user.id));
    for (const room of [...this.#rooms.keys()]) {
      // Taken out by the server (revoked, deleted) is not in `#rooms`: those sends are refused.
      (this.#roomsAtClose ??= new Set()).add(room);
      this.#leave(room).catch((err) => this.#leaveFailed(room, err));
    }
  }
}
