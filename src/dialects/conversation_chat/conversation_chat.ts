/**
 * The conversation chat of a Django Channels app (shared/specs/conversation-chat-files.md):
 * `/ws/chat/<conversation_id>/?token=`, `chat_message`, `file_message`, `typing`, `mark_read`.
 */

import { ChatError } from "../../core/errors.ts";
import { canonicalId, isValidRoomId, roomKey, type RoomKind } from "../../core/rooms.ts";
import { isoSeconds } from "../../core/time.ts";
import type { QueuedSend } from "../../core/chat_service.ts";
import type { Attachment, Message } from "../../core/types.ts";
import { mediaUrlPath } from "../../media/local_media_store.ts";
import { formatSize } from "../../media/mime.ts";
import { basePath, bodyWithFileUrls, type DialectContext, type WsRoute } from "../context.ts";
import { clip, optionalClientId, optionalString, parseObject, typingRecord } from "../frames.ts";
import { fitHistory, frameBytes, historyBudget } from "../history_pages.ts";
import { type RoomSession, singleRoomRoute } from "../single_room.ts";

/** Close codes of this protocol. */
export const CONVERSATION_CLOSE = { unauthorized: 4001, notParticipant: 4404 } as const;

/** Numeric ids render as numbers, as Django's integer primary keys do. */
export const idValue = (id: string): string | number => /^\d{1,15}$/.test(id) ? Number(id) : id;

/**
 * The room key of a URL id that {@link idValue} renders as a number: `007` and `7` are one
 * integer key, as the server we replace parses them, so they are one room.
 */
export const numericRoom = (kind: RoomKind, id: string): string | null =>
  isValidRoomId(id) ? roomKey(kind, canonicalId(kind, id)) : null;

function renderAttachment(a: Attachment, seq: number, baseUrl: string) {
  const path = mediaUrlPath(a.key);
  return {
    id: seq,
    // Django's FileField.url: MEDIA_URL, which carries the path the site is served under.
    file: basePath(baseUrl) + path,
    file_url: baseUrl + path,
    filename: a.originalName,
    file_size: a.size,
    file_size_display: formatSize(a.size),
    file_type: a.mime,
    uploaded_at: isoSeconds(a.uploadedAt),
  };
}

/** A message in the conversation chat's shape; `isRead` from the read cursors when known. */
export function conversationMessage(
  message: Message,
  conversation: string,
  baseUrl: string,
  isRead = false,
): Record<string, unknown> {
  const s = message.sender;
  const file = message.attachments[0];
  return {
    id: message.seq,
    conversation: idValue(conversation),
    sender: s
      ? {
        id: s.id,
        email: s.email ?? null,
        user_type: s.userType ?? null,
        full_name: s.name ?? s.username,
      }
      : { id: null, email: null, user_type: "system", full_name: "System" },
    // One file has a field; the others (a message from another protocol) go as links.
    content: bodyWithFileUrls(message.body, message.attachments.slice(1), baseUrl),
    message_type: file ? "file" : "text",
    is_read: isRead,
    created_at: isoSeconds(message.createdAt),
    file_attachment: file ? renderAttachment(file, message.seq, baseUrl) : null,
  };
}

/** True when someone other than the sender has read up to the message. */
function readByOthers(message: Message, cursors: Map<string, number>): boolean {
  for (const [user, cursor] of cursors) {
    if (cursor >= message.seq && user !== String(message.sender?.id)) return true;
  }
  return false;
}

/** Bytes of a `history` frame besides its messages (`has_more` at its longest). */
const HISTORY_FRAME = frameBytes({ type: "history", messages: [], has_more: false });

const datedFolder = (now = new Date()) =>
  `chat_files/${now.getUTCFullYear()}/${String(now.getUTCMonth() + 1).padStart(2, "0")}/${
    String(now.getUTCDate()).padStart(2, "0")
  }`;

/**
 * A `get_history` frame's `before`: a message id, as a number or its digits (as `limit` is
 * read); absent or null for the newest. Anything else is refused: a cursor read as absent gave
 * the newest page again with `has_more`, and a client paging back until it ended never did.
 */
function historyCursor(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  const n = typeof value === "string" && /^\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0) return n;
  throw new ChatError("invalid_frame", 'Field "before" must be a message id');
}

/** The conversation chat route at `path` (`/ws/chat/:id{/}?` by default). */
export function conversationChatRoute(ctx: DialectContext, path: string): WsRoute {
  const error = (message: string) => JSON.stringify({ type: "error", message });
  /** Refuses (the socket then closes with 4404) a user who may no longer see the room. */
  const requireAccess = async (s: RoomSession) => {
    if (!(await ctx.chat.canAccess(s.user, s.room))) {
      throw new ChatError("forbidden", "Access denied to this room");
    }
  };
  const sendFrom = async (
    s: RoomSession,
    record: Record<string, unknown>,
    file: boolean,
  ): Promise<QueuedSend> => {
    const content = optionalString(record, "message") ?? "";
    const clientId = optionalClientId(record, "client_id");
    if (!file) {
      if (content.trim() === "") {
        throw new ChatError("empty_message", "Message content is required");
      }
      return await ctx.chat.queue(s.user, s.room, { body: content, clientId });
    }
    const data = optionalString(record, "file");
    const filename = optionalString(record, "filename");
    if (!data || !filename?.trim()) {
      throw new ChatError("filename_required", "File data and filename are required");
    }
    return await ctx.chat.queue(s.user, s.room, {
      body: content,
      files: [{ name: filename, data }],
      mediaDir: datedFolder(),
      clientId,
    });
  };

  return singleRoomRoute(ctx, {
    name: "conversation",
    pattern: new URLPattern({ pathname: path }),
    roomOf: (id) => numericRoom("chat", id),
    // The document's one code past 4001: the user is not (or no longer) in the conversation.
    codes: { unauthorized: 4001, forbidden: 4404, badRoom: 4404, deleted: 4404 },
    everyMessage: true,
    wants(s, event) {
      if (event.type === "message") return true;
      if (event.type === "typing" || event.type === "read") {
        return String(event.user.id) !== String(s.user.id);
      }
      return false;
    },
    render(s, event) {
      switch (event.type) {
        case "message":
          return JSON.stringify(conversationMessage(event.message, s.id, s.baseUrl));
        case "typing":
          return JSON.stringify({
            type: "typing",
            user_id: event.user.id,
            user_email: event.user.email ?? null,
            is_typing: event.isTyping,
          });
        case "read":
          return JSON.stringify({ type: "read_receipt", user_id: event.user.id });
        default:
          return undefined;
      }
    },
    // A filename with nothing showable left (`/`) is refused by the media store in words of its
    // own; the document has one text for a missing file or name.
    errorFrame: (e) =>
      error(e.code === "filename_required" ? "File data and filename are required" : e.message),
    // Sent once the socket is live in the room, so a client that waits for it misses nothing.
    afterJoin(s) {
      s.conn.send(JSON.stringify({
        type: "connection_established",
        message: `Connected to conversation ${s.id}`,
      }));
      return Promise.resolve();
    },
    typingOf(text) {
      const record = typingRecord(text);
      return record ? typingFlag(record.is_typing) : undefined;
    },
    async message(s, text) {
      const record = parseObject(text, "Expected a JSON object with a type");
      const type = record.type;
      switch (type) {
        case "chat_message":
          return await sendFrom(s, record, false);
        case "file_message":
          return await sendFrom(s, record, true);
        case "typing":
          if (!(await s.conn.settled())) return;
          ctx.chat.typing(s.user, s.room, typingFlag(record.is_typing), s.connId);
          return;
        case "mark_read":
          // Up to the socket's own messages sent before it too; a client that marks and closes
          // at once still has its mark stored.
          await s.conn.settled();
          if (s.conn.stopped) return;
          await requireAccess(s);
          await ctx.chat.markRead(s.user, s.room);
          return;
        case "get_history": {
          if (!(await s.conn.settled())) return;
          // Written as the socket drains: pages asked for back to back would pass the
          // slow-consumer bound together before the reader could take them.
          if (s.conn.writable() <= 0 && !(await s.conn.drained())) return;
          // Asked again, as sends are: a participant the application removed in the database
          // (no event reaches this socket) must not read on.
          await requireAccess(s);
          // Our extension: the conversation's messages with their read state, oldest first.
          // Floored, as a bad limit is clamped, not refused: KV's list throws on a fraction.
          const limit = Math.floor(Math.min(Math.max(Number(record.limit ?? 50) || 50, 1), 200));
          const before = historyCursor(record.before);
          const [page, cursors] = await Promise.all([
            ctx.chat.historyPage(s.room, { before, limit }),
            ctx.chat.readCursors(s.room),
          ]);
          // The newest that fit in about 1 MiB: 200 messages of 20,000 CJK characters were one
          // 12 MB frame, which closed a steady reader as slow once live traffic came. The
          // oldest id sent is the next page's `before`.
          const { rendered, cut } = fitHistory(
            page.messages,
            (m) => conversationMessage(m, s.id, s.baseUrl, readByOthers(m, cursors)),
            historyBudget(ctx.config.slowConsumerBytes),
            "newest",
            HISTORY_FRAME,
          );
          s.conn.send(JSON.stringify({
            type: "history",
            messages: rendered,
            has_more: page.hasMore || cut,
          }));
          return;
        }
        default:
          throw new ChatError(
            "invalid_frame",
            typeof type === "string"
              ? `Unknown message type: ${clip(type)}`
              : "Message type is required",
          );
      }
    },
    closed(s) {
      ctx.chat.stopTyping(s.user, s.room, s.connId);
      return Promise.resolve();
    },
  });
}

/**
 * `is_typing` read as the Python consumer we replace reads it: absent means typing, and `0`,
 * `null`, `""` and empty lists or objects are false like `false`.
 */
function typingFlag(value: unknown): boolean {
  if (value === undefined) return true;
  if (Array.isArray(value)) return value.length > 0;
  if (value !== null && typeof value === "object") return Object.keys(value).length > 0;
  return Boolean(value);
}
