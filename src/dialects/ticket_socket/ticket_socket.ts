/**
 * The ticket socket of a Django Channels ticket system (shared/specs/ticket-socket.md):
 * `/ws/ticket/<id>/?token=`, frames `{body, file, filename}`, broadcast `{pk, body, sender,
 * file, created_at}` to everyone in the ticket, errors `{"error"}` to the sender only.
 */

import { asChatError, ChatError } from "../../core/errors.ts";
import { isValidRoomId, roomKey } from "../../core/rooms.ts";
import { isoSeconds } from "../../core/time.ts";
import type { Message, Principal, RoomEvent } from "../../core/types.ts";
import type { Member } from "../../hub/hub.ts";
import { mediaUrlPath } from "../../media/local_media_store.ts";
import { Connection } from "../../transport/websocket.ts";
import { findToken } from "../../auth/token.ts";
import { baseUrlOf, type DialectContext, socketOptions, type WsRoute } from "../context.ts";

/** Close codes of this protocol. */
export const TICKET_CLOSE = {
  /** Missing, invalid or expired token. */
  unauthorized: 4001,
  /** Valid token, no access to the ticket (also when access is revoked later). */
  forbidden: 4003,
  /** The ticket was deleted. */
  deleted: 4004,
} as const;

/** Renders a stored message in the ticket socket's broadcast shape. */
export function renderTicketMessage(message: Message, baseUrl: string): string {
  const sender = message.sender;
  const file = message.attachments[0];
  return JSON.stringify({
    pk: message.seq,
    body: message.body,
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

const errorFrame = (message: string) => JSON.stringify({ error: message });

/** Reads an optional string field, refusing other types with a clear message. */
function optionalString(frame: Record<string, unknown>, field: string): string | undefined {
  const value = frame[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") {
    throw new ChatError("invalid_frame", `Field "${field}" must be a string`);
  }
  return value;
}

/** Decodes a client frame into a send, or throws a ChatError with the text for `{"error"}`. */
export function parseTicketFrame(text: string): {
  body: string;
  file?: string;
  filename?: string;
  clientId?: string;
} {
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new ChatError("invalid_json", "Invalid JSON");
  }
  if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
    throw new ChatError("invalid_frame", "Expected a JSON object with body or file");
  }
  const record = frame as Record<string, unknown>;
  const body = optionalString(record, "body") ?? "";
  const file = optionalString(record, "file") || undefined;
  const filename = optionalString(record, "filename");
  const clientId = optionalString(record, "client_id");
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
  return {
    pattern: new URLPattern({ pathname: "/ws/ticket/:id{/}?" }),
    async handle(req, params) {
      const { token, protocol } = findToken(req);
      const user = await ctx.auth.authenticate(token);
      const id = params.id ?? "";
      let closeCode: number | undefined;
      if (!user) closeCode = TICKET_CLOSE.unauthorized;
      else if (!isValidRoomId(id) || !(await ctx.chat.canAccess(user, roomKey("ticket", id)))) {
        closeCode = TICKET_CLOSE.forbidden;
      }
      const baseUrl = baseUrlOf(ctx.config, req);
      return Connection.upgrade(
        req,
        socketOptions(ctx, "ticket", protocol),
        closeCode !== undefined ? refuse(closeCode) : ticketHandler(ctx, user!, id, baseUrl),
      );
    },
  };
}

/** Accepts, then closes with the code: Channels clients read the code from the close event. */
function refuse(code: number) {
  return {
    open: (conn: Connection) => conn.close(code, code === 4001 ? "Unauthorized" : "Forbidden"),
    message: () => {},
    closed: () => {},
  };
}

function ticketHandler(ctx: DialectContext, user: Principal, id: string, baseUrl: string) {
  const room = roomKey("ticket", id);
  let member: Member | undefined;
  return {
    async open(conn: Connection) {
      member = {
        user,
        renderKey: `ticket|${baseUrl}`,
        wants: (event: RoomEvent) => event.type === "message",
        render: (event: RoomEvent) =>
          event.type === "message" ? renderTicketMessage(event.message, baseUrl) : undefined,
        send: (frame: string) => conn.send(frame),
        evict: (event: RoomEvent) =>
          conn.close(
            event.type === "closed" ? TICKET_CLOSE.deleted : TICKET_CLOSE.forbidden,
            event.type === "closed" ? "Ticket deleted" : "Access revoked",
          ),
      };
      await ctx.hub.join(room, member);
    },
    async message(conn: Connection, text: string) {
      try {
        const frame = parseTicketFrame(text);
        await ctx.chat.send(user, room, {
          body: frame.body,
          files: frame.file ? [{ name: frame.filename, data: frame.file }] : [],
          mediaDir: `files/ticket_${id}`,
          clientId: frame.clientId,
        });
      } catch (err) {
        const error = asChatError(err);
        ctx.metrics.error(error.code);
        conn.send(errorFrame(error.message));
        if (error.code === "forbidden") conn.close(TICKET_CLOSE.forbidden, "Forbidden");
      }
    },
    closed() {
      if (member) ctx.hub.leave(room, member);
    },
  };
}
