/**
 * The FastAPI service and support chats (shared/specs/service-support-chats.md):
 * `/ws/service-chats/{id}` and `/ws/support-chats/{id}`, `{"type": "message", "content"}` in,
 * the stored message out to every participant but the sender, ping/pong heartbeat.
 */

import { ChatError } from "../../core/errors.ts";
import { isoNaive } from "../../core/time.ts";
import { idValue, numericRoom } from "../conversation_chat/conversation_chat.ts";
import { bodyWithFileUrls, type DialectContext, type WsRoute } from "../context.ts";
import { clip, optionalClientId, optionalString, parseObject } from "../frames.ts";
import { singleRoomRoute } from "../single_room.ts";

/** Close codes of this protocol. */
export const SERVICE_CLOSE = { unauthorized: 4001, forbidden: 4003 } as const;

/** The routes for `/ws/service-chats/{id}` and `/ws/support-chats/{id}`. */
export function serviceChatRoutes(ctx: DialectContext): WsRoute[] {
  return (["service-chat", "support-chat"] as const).map((kind) =>
    singleRoomRoute(ctx, {
      name: kind,
      pattern: new URLPattern({ pathname: `/ws/${kind}s/:id{/}?` }),
      roomOf: (id) => numericRoom(kind, id),
      codes: { unauthorized: 4001, forbidden: 4003, badRoom: 4003, deleted: 4004 },
      wants: (s, event) =>
        event.type === "message" && String(event.message.sender?.id) !== String(s.user.id),
      render: (s, event) =>
        event.type === "message"
          ? JSON.stringify({
            type: "message",
            id: event.message.seq,
            // Its shape has no field for files: their URLs follow the text, as in the other
            // text-only protocols, rather than a file-only message arriving empty.
            content: bodyWithFileUrls(event.message.body, event.message.attachments, s.baseUrl),
            sender_id: event.message.sender?.id ?? null,
            chat_id: idValue(s.id),
            created_at: isoNaive(event.message.createdAt),
          })
          : undefined,
      errorFrame: (e) => JSON.stringify({ type: "error", message: e.message }),
      async message(s, text) {
        // A pong comes after the replies owed to the frames before the ping.
        if (text.trim() === "ping") {
          if (await s.conn.settled()) s.conn.send("pong");
          return;
        }
        const record = parseObject(text, "Expected a JSON object with a type");
        if (record.type === "ping") {
          if (await s.conn.settled()) s.conn.send(JSON.stringify({ type: "pong" }));
          return;
        }
        if (record.type === "pong") return;
        if (record.type !== "message") {
          throw new ChatError(
            "invalid_frame",
            typeof record.type === "string"
              ? `Unknown message type: ${clip(record.type)}`
              : "Message type is required",
          );
        }
        const content = optionalString(record, "content") ?? "";
        if (content.trim() === "") {
          throw new ChatError("empty_message", "Message content is required");
        }
        return await ctx.chat.queue(s.user, s.room, {
          body: content,
          clientId: optionalClientId(record, "client_id"),
        });
      },
    })
  );
}
