/** The shape shared by the protocols whose socket URL names one room: auth, access, join, leave. */

import { findToken } from "../auth/token.ts";
import { asChatError, ChatError, rateLimited } from "../core/errors.ts";
import { failureLog } from "../core/failure_log.ts";
import type { QueuedSend } from "../core/chat_service.ts";
import { type RateVerdict, TypingStarts } from "../core/rate_limiter.ts";
import type { AppendResult, Principal, RoomEvent } from "../core/types.ts";
import type { DirectSocket, Member, Pacer } from "../hub/hub.ts";
import { CLOSE, Connection, type SocketHandler } from "../transport/websocket.ts";
import {
  admitSocket,
  baseUrlOf,
  cookieOrigins,
  type DialectContext,
  intern,
  socketOptions,
  type WsRoute,
} from "./context.ts";

/** One open socket of a single-room protocol. */
export interface RoomSession {
  /** The socket. */
  conn: Connection;
  /** Who is connected. */
  user: Principal;
  /** Room key (`chat:1`). */
  room: string;
  /** The id part of the URL (`1`). */
  id: string;
  /** Base of absolute URLs for this client. */
  baseUrl: string;
  /** Unique id of this connection. */
  connId: string;
  /** The hub membership, once joined. */
  member?: Member;
  /** The room's generation (deletion count) read with the socket's access check. */
  epoch: number;
}

/** Longest frame `typingOf` is asked about: a typing frame is a few dozen characters. */
const MAX_TYPING_FRAME = 256;

/** What a protocol supplies to {@link singleRoomRoute}. */
export interface SingleRoomDialect {
  /** Name for metrics and logs. */
  name: string;
  /** URL pattern with an `id` group. */
  pattern: URLPattern;
  /** Room key for the URL's id, or null when the id cannot name a room. */
  roomOf(id: string): string | null;
  /**
   * Close codes: bad token, no access, a URL id that names no room, the room deleted (the
   * document's own code for a room that is not there, where it has one).
   */
  codes: { unauthorized: number; forbidden: number; badRoom: number; deleted: number };
  /** Access rule; the core's access policy when omitted. */
  canEnter?(user: Principal, room: string): Promise<boolean>;
  /** Cache key for rendered frames (defaults to the protocol name plus the base URL). */
  renderKey?(session: RoomSession): string;
  /** Whether this member wants an event at all. */
  wants(session: RoomSession, event: RoomEvent): boolean;
  /**
   * True when `wants` takes every message event: without a snapshot to hold frames for, the
   * hub then writes message frames straight to the socket (see the hub's `Member.direct`).
   */
  everyMessage?: boolean;
  /** The event in this protocol's shape, or undefined to send nothing. */
  render(session: RoomSession, event: RoomEvent): string | undefined;
  /** The error frame for a refused command. */
  errorFrame(error: ChatError): string;
  /**
   * For a frame that only says whether the user is typing: true for a start, false for a stop;
   * undefined for any other frame. Typing past the rate limit is dropped without an error.
   */
  typingOf?(text: string): boolean | undefined;
  /**
   * Runs after the socket opens and before it joins the room (greetings, user lists), as its
   * presence is written: `entered` settles once it is, `first` when the user had no other
   * connection in the room (the room heard their `join`).
   */
  beforeJoin?(session: RoomSession, entered: Promise<{ first: boolean }>): Promise<void>;
  /** Where the member's live stream starts: `since` replays stored messages after that seq. */
  joinFrom?(session: RoomSession): Promise<{ since?: number }>;
  /**
   * Sends a snapshot of the room (a user list) read once the member is in the room. Whatever the
   * room delivers meanwhile (the replay of `joinFrom`, live events) is held back and sent after
   * it, so a change the snapshot missed still reaches the socket, and after the snapshot.
   */
  snapshot?(session: RoomSession): Promise<void>;
  /** Runs once the member is live. */
  afterJoin?(session: RoomSession): Promise<void>;
  /**
   * Handles one client frame; a thrown ChatError becomes an error frame. A send returns it
   * queued (`ctx.chat.queue`): the socket's next frame is handled while it commits, its error
   * or the original message of a retried client id is sent in frame order. A frame that reads
   * what earlier frames sent (history, read marks) or answers directly (a pong) awaits
   * `session.conn.settled()` first.
   */
  message(session: RoomSession, text: string): Promise<QueuedSend | void>;
  /** Runs once when the socket is gone. */
  closed?(session: RoomSession): Promise<void>;
}

/** Builds the WebSocket route of a single-room protocol. */
export function singleRoomRoute(ctx: DialectContext, dialect: SingleRoomDialect): WsRoute {
  return {
    pattern: dialect.pattern,
    async handle(req, params) {
      const { token, protocol } = findToken(req, cookieOrigins(ctx.config));
      const options = socketOptions(ctx, dialect.name, protocol);
      const user = await ctx.auth.authenticate(token);
      const id = params.id ?? "";
      const room = dialect.roomOf(id);
      let refuse: number | undefined;
      let epoch = 0;
      if (!user) refuse = dialect.codes.unauthorized;
      else if (!room) refuse = dialect.codes.badRoom;
      else {
        // Read with the check: a deletion after it is found, once the socket is in the room, as
        // a generation past this one (see `#join`).
        const [allowed, generation] = await Promise.all([
          dialect.canEnter?.(user, room) ?? ctx.chat.canAccess(user, room),
          // Cached: one deletion older only closes a socket that connected as the room was deleted.
          ctx.chat.generation(room),
        ]);
        if (!allowed) refuse = dialect.codes.forbidden;
        epoch = generation;
      }
      if (refuse !== undefined) {
        const reason = refuse === dialect.codes.unauthorized ? "Unauthorized" : "Forbidden";
        return Connection.refuse(req, options, refuse, reason);
      }
      return Connection.upgrade(
        req,
        options,
        new RoomSocket(ctx, dialect, user!, room!, id, baseUrlOf(ctx.config, req), epoch),
      );
    },
  };
}

// A socket's handler and its hub membership are classes rather than object literals of
// closures: with tens of thousands of idle sockets, the closures and their contexts were about
// half a kilobyte per socket.

/** The hub membership of one session. */
class SessionMember implements Member {
  readonly user: Principal;
  readonly renderKey: string;
  readonly direct?: DirectSocket;
  /** The socket a join's replay (`joinFrom`'s `since`) waits on. */
  readonly pacer: Pacer;
  readonly epoch: number;
  #session: RoomSession;
  #dialect: SingleRoomDialect;
  /** Frames held back until the dialect's snapshot is out; undefined when not holding. */
  #held?: string[];
  /** Characters of the frames held while the release writes (bounded like unsent bytes). */
  #queued = -1;

  constructor(session: RoomSession, dialect: SingleRoomDialect) {
    this.user = session.user;
    this.epoch = session.epoch;
    this.#session = session;
    this.#dialect = dialect;
    this.renderKey = dialect.renderKey?.(session) ?? intern(`${dialect.name}|${session.baseUrl}`);
    if (dialect.snapshot) this.#held = [];
    else if (dialect.everyMessage) this.direct = session.conn;
    this.pacer = session.conn;
  }

  /**
   * Sends the frames held back while the snapshot was read, and stops holding. They may be a
   * replay of long messages: written as the socket drains (frames that come meanwhile queue
   * behind them), not in one go that would pass its slow-consumer bound before it read any.
   */
  async release(): Promise<void> {
    const conn = this.#session.conn;
    const held = this.#held ?? [];
    // The snapshot's frames are paced; those that come meanwhile count against the socket's
    // slow-consumer bound as they wait, so a reader slower than the room is closed, not fed
    // into memory without end.
    const paced = held.length;
    this.#queued = 0;
    for (let i = 0; i < paced; i++) {
      if (conn.writable() <= 0 && !(await conn.drained())) break;
      conn.send(held[i]);
    }
    for (let i = paced; i < held.length; i++) conn.send(held[i]);
    this.#held = undefined;
  }

  wants(event: RoomEvent): boolean {
    return this.#dialect.wants(this.#session, event);
  }

  render(event: RoomEvent): string | undefined {
    return this.#dialect.render(this.#session, event);
  }

  send(frame: string): void {
    if (!this.#held) return this.#session.conn.send(frame);
    this.#held.push(frame);
    if (this.#queued < 0) return;
    this.#queued += frame.length;
    this.#session.conn.checkBuffer(this.#queued);
  }

  evict(event: RoomEvent & { type: "closed" | "revoked" }): void {
    this.#session.conn.close(
      event.type === "closed" ? this.#dialect.codes.deleted : this.#dialect.codes.forbidden,
      event.type === "closed" ? "Room deleted" : "Access revoked",
    );
  }
}

/** The socket handler of one accepted session: join on open, commands, leave on close. */
class RoomSocket implements SocketHandler {
  #ctx: DialectContext;
  #dialect: SingleRoomDialect;
  #user: Principal;
  #room: string;
  #id: string;
  #baseUrl: string;
  #epoch: number;
  #session?: RoomSession;
  /** A frame was refused and its error is not yet sent (see `message`). */
  #errorOwed = false;
  /** Counted among the user's sockets (see `open`). */
  #counted = false;
  /** The socket's one typing state: whether its last typing frame taken was a start, and when. */
  #typing = new TypingStarts(1);

  constructor(
    ctx: DialectContext,
    dialect: SingleRoomDialect,
    user: Principal,
    room: string,
    id: string,
    baseUrl: string,
    epoch: number,
  ) {
    this.#ctx = ctx;
    this.#dialect = dialect;
    this.#user = user;
    this.#room = room;
    this.#id = id;
    this.#baseUrl = baseUrl;
    this.#epoch = epoch;
  }

  async open(conn: Connection): Promise<void> {
    const refused = admitSocket(this.#ctx, this.#user.id);
    if (refused) {
      // Before the join, the close code is all the client gets.
      conn.close(CLOSE.rateLimited, refused);
      return;
    }
    this.#counted = true;
    try {
      await this.#join(conn);
    } catch (err) {
      // Half joined (no user list, or not in the room) is worse than a close to reconnect on.
      failureLog.failed(`${this.#dialect.name}: join failed`, err, `user ${this.#user.id}`);
      conn.close(CLOSE.internalError, "Internal error");
    }
  }

  async #join(conn: Connection): Promise<void> {
    const ctx = this.#ctx;
    const dialect = this.#dialect;
    const session: RoomSession = {
      conn,
      user: this.#user,
      room: this.#room,
      id: this.#id,
      baseUrl: this.#baseUrl,
      connId: crypto.randomUUID(),
      member: undefined,
      epoch: this.#epoch,
    };
    this.#session = session;
    // Every protocol's socket counts for presence, whether or not it renders presence events: a
    // native client sees the user of a ticket socket, and their leave only with their last
    // socket. Entered with the session, so that `closed` exits exactly once however far the
    // join got (the exit waits for this enter). Its write is not waited for before the hub join
    // (unless `beforeJoin` waits): a ticket socket has no greeting, and its client takes it as
    // in the room once open, so a message sent meanwhile must reach it.
    const entered = ctx.chat.enter(session.user, session.room, session.connId);
    // Awaited below; a socket that closes first has its exit in `closed`, which waits for it.
    entered.catch(() => {});
    await dialect.beforeJoin?.(session, entered);
    if (!conn.open) return;
    const member = new SessionMember(session, dialect);
    try {
      await ctx.hub.join(session.room, member, await dialect.joinFrom?.(session) ?? {});
      session.member = member;
      if (!conn.open) {
        ctx.hub.leave(session.room, member);
        return;
      }
      // Not counted for presence is half joined: closed to reconnect on, as a failed hub join is.
      await entered;
      // Access removed since the upgrade's check was published before this member was in the
      // room to be evicted: asked again, past any cache, now that a later removal will find it.
      const { user, room } = session;
      if (
        !(await (dialect.canEnter?.(user, room) ??
          ctx.chat.canAccess(user, room, { fresh: true })))
      ) {
        member.evict({ type: "revoked", room: session.room, userId: session.user.id });
        return;
      }
      // The same for a deletion: its notices went before this member was in the room, or
      // spared it as joined under the new generation, which it was not.
      if (await ctx.chat.deletedSince(room, session.epoch)) {
        member.evict({ type: "closed", room, reason: "Room deleted" });
        return;
      }
      await dialect.snapshot?.(session);
    } finally {
      await member.release();
    }
    await dialect.afterJoin?.(session);
  }

  /**
   * Counts a frame against the rate limits as it arrives (see `SocketHandler.admit`), typing
   * frames apart: the documents send one on every keystroke, and a held key repeats faster than
   * the limit. Typing takes from buckets of its own (`RateLimiter.typing`), never a token a
   * message needs: a client sends a start and a stop around every pause, and one back online sends
   * its messages behind them; refused there, it is a strike, as a flood of typing alone is still
   * a flood. A start repeated within `TYPING_REPEAT_MS` is dropped
   * without a token; a stop after a start that was taken always goes (the others would see the
   * user typing until the typing timeout). A typing frame refused is dropped without an error
   * (`message`).
   */
  admit(_conn: Connection, text: string): RateVerdict {
    const session = this.#session;
    if (!session) return "ok";
    const limiter = this.#ctx.limiter;
    const typing = this.#typingOf(text);
    if (typing === undefined) return limiter.take(session.user.id, session.connId);
    if (!typing) {
      if (!this.#typing.typing("")) return limiter.typing(session.user.id, session.connId, true);
      // Taken from what is left, never refused nor a strike: see above.
      limiter.typing(session.user.id, session.connId);
      this.#typing.stopped("");
      return "ok";
    }
    const now = performance.now();
    if (this.#typing.repeats("", now)) return "limited";
    const verdict = limiter.typing(session.user.id, session.connId, true);
    if (verdict !== "ok") return verdict;
    this.#typing.started("", now);
    return "ok";
  }

  /** What `typingOf` says of a frame short enough to be a typing frame. */
  #typingOf(text: string): boolean | undefined {
    return text.length <= MAX_TYPING_FRAME ? this.#dialect.typingOf?.(text) : undefined;
  }

  async message(conn: Connection, text: string): Promise<void> {
    const ctx = this.#ctx;
    const dialect = this.#dialect;
    const session = this.#session;
    if (!session) return;
    // These protocols have no request ids: a client tells which frame an error answers by the
    // order of what it receives. An error waits for the sends before it to commit, and the echo
    // of a send after it, committed with them, would come first; so that send waits for the
    // error to be out.
    if (this.#errorOwed) {
      this.#errorOwed = false;
      await conn.settled();
      // Closed by the peer meanwhile, the frame is still handled (it was sent before the close);
      // closed by this side (a refusal that closes), it is not.
      if (conn.stopped) return;
    }
    let work: Promise<AppendResult | undefined>;
    try {
      // `close` the transport acts on itself; typing refused is dropped without a word (`admit`).
      if (conn.admission === "limited") {
        if (this.#typingOf(text) === undefined) throw rateLimited();
        return;
      }
      work = (await dialect.message(session, text))?.result ?? Promise.resolve(undefined);
    } catch (err) {
      work = Promise.reject(err);
      this.#errorOwed = true;
    }
    conn.finishInOrder(work, (outcome) => {
      if (!outcome.ok) {
        const error = asChatError(
          outcome.error,
          `${dialect.name}, room ${session.room}, user ${session.user.id}`,
        );
        ctx.metrics.error(error.code);
        conn.send(dialect.errorFrame(error));
        if (error.code === "forbidden") conn.close(dialect.codes.forbidden, "Forbidden");
        if (error.code === "room_deleted") conn.close(dialect.codes.deleted, "Room deleted");
        return;
      }
      // The retry of a client id gets the original back (to this socket only), as the
      // first attempt's broadcast may be what the client missed.
      const result = outcome.value;
      if (result?.duplicate && session.member) {
        const event = {
          type: "message",
          room: session.room,
          message: result.message,
        } as const;
        const frame = session.member.wants(event) ? dialect.render(session, event) : undefined;
        if (frame !== undefined) conn.send(frame);
      }
    });
  }

  refused(conn: Connection, error: ChatError): void {
    // Before the join, the protocol's own close code is all the client gets.
    if (this.#session) conn.send(this.#dialect.errorFrame(error));
  }

  closed(conn: Connection): void {
    // Still the user's while Deno holds the connection (a peer that stopped reading).
    if (this.#counted) conn.whenGone(() => this.#ctx.sockets.release(this.#user.id));
    const session = this.#session;
    if (!session) return;
    this.#ctx.limiter.forget(session.connId);
    if (session.member) this.#ctx.hub.leave(session.room, session.member);
    this.#ctx.chat.exit(session.user, session.room, session.connId).catch((err) =>
      failureLog.failed(
        `${this.#dialect.name}: presence exit failed`,
        err,
        `room ${session.room}, user ${this.#user.id}`,
      )
    );
    this.#dialect.closed?.(session).catch((err) =>
      failureLog.failed(
        `${this.#dialect.name}: cleanup failed`,
        err,
        `room ${session.room}, user ${this.#user.id}`,
      )
    );
  }
}
