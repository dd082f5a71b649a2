/**
 * The ticket socket of a Django Channels ticket system (shared/specs/ticket-socket.md):
 * `/ws/ticket/<id>/?token=`, frames `{body, file, filename}`, broadcast `{pk, body, sender,
 * file, created_at}` to everyone in the ticket, errors `{"error"}` to the sender only.
 */

import { ChatError } from "../../core/errors.ts";
import { isValidRoomId, roomKey } from "../../core/rooms.ts";
import { isoSeconds } from "../../core/time.ts";
import type { Message } from "../../core/types.ts";
import { mediaUrlPath } from "../../media/local_media_store.ts";
import { bodyWithFileUrls, type DialectContext, type WsRoute } from "../context.ts";
import { optionalClientId, optionalString, parseObject } from "../frames.ts";
import { singleRoomRoute } from "../single_room.ts";

/** Close codes of this protocol. */
export const TICKET_CLOSE = {
  /** Missing, invalid or expired token. */
  unauthorized: 4001,
  /** Valid token, no access to the ticket (also when access is revoked later). */
  forbidden: 4003,
  /** The ticket was deleted. */
  deleted: 4004,
} as const;

/**
 * Renders a stored message in the ticket socket's broadcast shape. The document has one `file`;
 * a message with more (sent through Socket.IO, the native protocol or the API) carries the
 * absolute URLs of the others one per line after its body, so a client shows them rather than
 * nothing.
 */
export function renderTicketMessage(message: Message, baseUrl: string): string {
  const sender = message.sender;
  const file = message.attachments[0];
  const body = message.attachments.length > 1
    ? bodyWithFileUrls(message.body, message.attachments.slice(1), baseUrl)
    : message.body;
  return JSON.stringify({
    pk: message.seq,
    body,
    sender: sender
      ? {
        id: sender.id,
        username: sender.username,
        phone: sender.phone ?? null,
        profile_image: sender.profileImage ?? null,
      }
      : { id: null, username: "system", phone: null, profile_image: null },
    file: file ? baseUrl + mediaUrlPath(file.key) : null,
    created_at: isoSeconds(message.createdAt),
  });
}

/** Decodes a client frame into a send, or throws a ChatError with the text for `{"error"}`. */
export function parseTicketFrame(text: string): {
  body: string;
  file?: string;
  filename?: string;
  clientId?: string;
} {
  const record = parseObject(text, "Expected a JSON object with body or file");
  const body = optionalString(record, "body") ?? "";
  const file = optionalString(record, "file") || undefined;
  const filename = optionalString(record, "filename");
  const clientId = optionalClientId(record, "client_id");
  if (body.trim() === "" && !file) {
    throw new ChatError("empty_message", "Either body or file is required");
  }
  if (file && !filename?.trim()) {
    throw new ChatError("filename_required", "Filename is required when sending a file");
  }
  return { body, file, filename, clientId };
}

/** The `/ws/ticket/<id>/` route. */
export function ticketSocketRoute(ctx: DialectContext): WsRoute {
  return singleRoomRoute(ctx, {
    name: "ticket",
    pattern: new URLPattern({ pathname: "/ws/ticket/:id{/}?" }),
    roomOf: (id) => isValidRoomId(id) ? roomKey("ticket", id) : null,
    codes: { unauthorized: 4001, forbidden: 4003, badRoom: 4003, deleted: TICKET_CLOSE.deleted },
    wants: (_s, event) => event.type === "message",
    everyMessage: true,
    render: (s, event) =>
      event.type === "message" ? renderTicketMessage(event.message, s.baseUrl) : undefined,
    errorFrame: (error) => JSON.stringify({ error: error.message }),
    async message(s, text) {
      const frame = parseTicketFrame(text);
      return await ctx.chat.queue(s.user, s.room, {
        body: frame.body,
        files: frame.file ? [{ name: frame.filename, data: frame.file }] : [],
        mediaDir: `files/ticket_${s.id}`,
        clientId: frame.clientId,
      });
    },
  });
}
