/** The shape shared by the protocols whose socket URL names one room: auth, access, join, leave. */

import { findToken } from "../auth/token.ts";
import { asChatError, ChatError } from "../core/errors.ts";
import type { AppendResult, Principal, RoomEvent } from "../core/types.ts";
import type { Member } from "../hub/hub.ts";
import { Connection } from "../transport/websocket.ts";
import { baseUrlOf, type DialectContext, socketOptions, type WsRoute } from "./context.ts";

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
}

/** What a protocol supplies to {@link singleRoomRoute}. */
export interface SingleRoomDialect {
  /** Name for metrics and logs. */
  name: string;
  /** URL pattern with an `id` group. */
  pattern: URLPattern;
  /** Room key for the URL's id, or null when the id cannot name a room. */
  roomOf(id: string): string | null;
  /** Close codes: bad token, no access, a URL id that names no room. */
  codes: { unauthorized: number; forbidden: number; badRoom: number };
  /** Access rule; the core's access policy when omitted. */
  canEnter?(user: Principal, room: string): Promise<boolean>;
  /** Cache key for rendered frames (defaults to the protocol name plus the base URL). */
  renderKey?(session: RoomSession): string;
  /** Whether this member wants an event at all. */
  wants(session: RoomSession, event: RoomEvent): boolean;
  /** The event in this protocol's shape, or undefined to send nothing. */
  render(session: RoomSession, event: RoomEvent): string | undefined;
  /** The error frame for a refused command. */
  errorFrame(error: ChatError): string;
  /** Runs after the socket opens and before it joins the room (greetings, user lists). */
  beforeJoin?(session: RoomSession): Promise<void>;
  /** Where the member's live stream starts: `since` replays stored messages after that seq. */
  joinFrom?(session: RoomSession): Promise<{ since?: number }>;
  /** Runs once the member is live. */
  afterJoin?(session: RoomSession): Promise<void>;
  /**
   * Handles one client frame; a thrown ChatError becomes an error frame. A send returns its
   * result, so a retried client id can be answered with the original message.
   */
  message(session: RoomSession, text: string): Promise<AppendResult | void>;
  /** Runs once when the socket is gone. */
  closed?(session: RoomSession): Promise<void>;
}

/** Builds the WebSocket route of a single-room protocol. */
export function singleRoomRoute(ctx: DialectContext, dialect: SingleRoomDialect): WsRoute {
  return {
    pattern: dialect.pattern,
    async handle(req, params) {
      const { token, protocol } = findToken(req);
      const options = socketOptions(ctx, dialect.name, protocol);
      const user = await ctx.auth.authenticate(token);
      const id = params.id ?? "";
      const room = dialect.roomOf(id);
      let refuse: number | undefined;
      if (!user) refuse = dialect.codes.unauthorized;
      else if (!room) refuse = dialect.codes.badRoom;
      else if (!(await (dialect.canEnter?.(user, room) ?? ctx.chat.canAccess(user, room)))) {
        refuse = dialect.codes.forbidden;
      }
      if (refuse !== undefined) {
        const reason = refuse === dialect.codes.unauthorized ? "Unauthorized" : "Forbidden";
        return Connection.refuse(req, options, refuse, reason);
      }
      let session: RoomSession;
      const baseUrl = baseUrlOf(ctx.config, req);
      return Connection.upgrade(req, options, {
        async open(conn) {
          session = { conn, user: user!, room: room!, id, baseUrl, connId: crypto.randomUUID() };
          await dialect.beforeJoin?.(session);
          if (!conn.open) return;
          const member: Member = {
            user: user!,
            renderKey: dialect.renderKey?.(session) ?? `${dialect.name}|${baseUrl}`,
            wants: (event) => dialect.wants(session, event),
            render: (event) => dialect.render(session, event),
            send: (frame) => conn.send(frame),
            evict: (event) =>
              conn.close(
                event.type === "closed" ? 4004 : dialect.codes.forbidden,
                event.type === "closed" ? "Room deleted" : "Access revoked",
              ),
          };
          await ctx.hub.join(session.room, member, await dialect.joinFrom?.(session) ?? {});
          session.member = member;
          if (!conn.open) {
            ctx.hub.leave(session.room, member);
            return;
          }
          await dialect.afterJoin?.(session);
        },
        async message(conn, text) {
          try {
            const verdict = ctx.limiter.take(session.user.id, session.connId);
            if (verdict === "close") {
              conn.close(4029, "Rate limit exceeded");
              return;
            }
            if (verdict === "limited") {
              throw new ChatError("rate_limited", "Too many messages: slow down");
            }
            const result = await dialect.message(session, text);
            // The retry of a client id gets the original back (to this socket only), as the
            // first attempt's broadcast may be what the client missed.
            if (result?.duplicate && session.member) {
              const event = {
                type: "message",
                room: session.room,
                message: result.message,
              } as const;
              const frame = session.member.wants(event)
                ? dialect.render(session, event)
                : undefined;
              if (frame !== undefined) conn.send(frame);
            }
          } catch (err) {
            const error = asChatError(err);
            ctx.metrics.error(error.code);
            conn.send(dialect.errorFrame(error));
            if (error.code === "forbidden") conn.close(dialect.codes.forbidden, "Forbidden");
          }
        },
        closed() {
          if (!session) return;
          ctx.limiter.forget(session.connId);
          if (session.member) ctx.hub.leave(session.room, session.member);
          dialect.closed?.(session).catch((err) =>
            console.error(`${dialect.name}: cleanup failed:`, err)
          );
        },
      });
    },
  };
}
