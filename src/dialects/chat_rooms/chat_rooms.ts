/**
 * The Django Channels chat-room server (shared/specs/chat-rooms.md): named rooms created on
 * first join, the users list and recent history on connect, `user_join` / `user_leave` per user.
 */

import { ChatError } from "../../core/errors.ts";
import { isoSeconds } from "../../core/time.ts";
import type { UserId } from "../../core/types.ts";
import { bodyWithFileUrls, type DialectContext, type WsRoute } from "../context.ts";
import { optionalClientId, optionalString, parseObject } from "../frames.ts";
import { type RoomSession, singleRoomRoute } from "../single_room.ts";

/** Close codes of this protocol. */
export const CHAT_ROOMS_CLOSE = { unauthorized: 4001, badRoom: 4000 } as const;

/**
 * The document shows every user id as a string (`"sender_id": "user-id"`), so a numeric `sub`
 * (which the core keeps as a number, as the Django protocols render it) is sent as its string.
 */
const idText = (id: UserId) => String(id);

/** Channels group names: ASCII letters, digits, hyphens, underscores, periods, under 100. */
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,99}$/;

/**
 * How long after its users list a socket is spared changes its view already holds, ms: a server
 * that has just begun following the room passes on the changes of the second before (see
 * KvRoomSignals), which the list may show already.
 */
export const SHOWN_MS = 3000;

/** The chat-rooms route at `path` (`/ws/rooms/:id{/}?` by default). */
export function chatRoomsRoute(ctx: DialectContext, path: string): WsRoute {
  /** Sockets whose user was not in the room before them, until they are told of their arrival. */
  const arrived = new WeakSet<RoomSession>();
  /**
   * While a socket's users list is read: each user's first change it heard meanwhile, whose frame
   * waits to follow the list (someone who came then is in both, and the document's clients add a
   * user per `user_join`).
   */
  const heard = new WeakMap<
    RoomSession,
    Map<string, { action: string; last: string; username: string }>
  >();
  /** For a while after its list: the users a socket was shown (see {@link SHOWN_MS}). */
  const shown = new WeakMap<RoomSession, Set<string>>();
  return singleRoomRoute(ctx, {
    name: "chat-rooms",
    pattern: new URLPattern({ pathname: path }),
    roomOf: (name) => ROOM_NAME.test(name) ? `room:${name}` : null,
    // 4000 is the document's "Room not found or could not be created".
    codes: { unauthorized: 4001, forbidden: 4003, badRoom: 4000, deleted: 4000 },
    wants(s, event) {
      if (event.type === "message") return true;
      if (event.type !== "presence") return false;
      // Asked once per event and socket (the hub's fanout): the first change of each user counts.
      const changes = heard.get(s);
      const id = idText(event.user.id);
      const change = changes?.get(id);
      const { action, user: { username } } = event;
      if (change) change.last = action;
      else changes?.set(id, { action, last: action, username });
      const users = shown.get(s);
      if (!users) return true;
      // Shown already as it says: a join of someone listed, a leave of someone never shown.
      if (users.has(id) === (action === "join")) return false;
      if (action === "join") users.add(id);
      else users.delete(id);
      return true;
    },
    everyMessage: true,
    render(s, event) {
      if (event.type === "message") {
        const m = event.message;
        return JSON.stringify({
          type: "chat_message",
          // The document's messages are text only: files (posted through the API or another
          // protocol) follow as URLs.
          message: bodyWithFileUrls(m.body, m.attachments, s.baseUrl),
          sender_username: m.sender?.username ?? "system",
          sender_id: m.sender ? idText(m.sender.id) : null,
          timestamp: isoSeconds(m.createdAt),
        });
      }
      if (event.type === "presence") {
        return JSON.stringify({
          type: event.action === "join" ? "user_join" : "user_leave",
          user_id: idText(event.user.id),
          username: event.user.username,
        });
      }
      return undefined;
    },
    errorFrame: (e) => JSON.stringify({ error: e.message }),
    async beforeJoin(s, entered) {
      if ((await entered).first) arrived.add(s);
      heard.set(s, new Map());
    },
    // Read once the socket is in the room: a join or leave after the read still reaches it. The
    // list is the room as it stood before the first change the socket hears after it.
    async snapshot(s) {
      const present = await ctx.chat.present(s.room);
      const changes = heard.get(s) ?? new Map();
      heard.delete(s);
      const users = present.map((u) => ({ id: idText(u.id), username: u.username }))
        .filter((u) => changes.get(u.id)?.action !== "join");
      for (const [id, { action, username }] of changes) {
        if (action === "leave" && !users.some((u) => u.id === id)) users.push({ id, username });
      }
      s.conn.send(JSON.stringify({ type: "room_users_list", users }));
      // As the changes held behind the list leave it, the socket itself too (its own arrival is
      // told by afterJoin).
      const view = new Set([...users.map((u) => u.id), idText(s.user.id)]);
      for (const [id, { last }] of changes) {
        if (last === "join") view.add(id);
        else view.delete(id);
      }
      shown.set(s, view);
      Deno.unrefTimer(setTimeout(() => shown.delete(s), SHOWN_MS));
    },
    // "All users receive user_join": the joiner too, after the list and the history, as a
    // Channels consumer that joins its group before it announces itself; once per user, as the
    // others hear it.
    afterJoin(s) {
      if (arrived.delete(s)) {
        s.conn.send(JSON.stringify({
          type: "user_join",
          user_id: idText(s.user.id),
          username: s.user.username,
        }));
      }
      return Promise.resolve();
    },
    async joinFrom(s) {
      return { since: await ctx.chat.seqBeforeNewest(s.room, ctx.config.historyOnConnect) };
    },
    async message(s, text) {
      const record = parseObject(text, "Expected a JSON object with a message");
      const message = optionalString(record, "message") ?? "";
      if (message.trim() === "") throw new ChatError("empty_message", "Message is required");
      return await ctx.chat.queue(s.user, s.room, {
        body: message,
        clientId: optionalClientId(record, "client_id"),
      });
    },
  });
}
