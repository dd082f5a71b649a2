/** The commands every dialect shares: access, send, history, typing, read. */

import { ChatError } from "./errors.ts";
import type { Metrics } from "./metrics.ts";
import type {
  AccessPolicy,
  AppendResult,
  AttachmentStore,
  Fanout,
  FileInput,
  HistoryQuery,
  Message,
  MessageStore,
  Principal,
  ReadCursorStore,
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
  /** Idempotency key. */
  clientId?: string;
}

/** The profile part of a principal, as stored with messages. */
export function profileOf(user: Principal): UserProfile {
  const { grants: _grants, ...profile } = user;
  return profile;
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
}

/** The core: one instance per isolate, shared by every dialect. */
export class ChatService {
  #deps: ChatServiceDeps;

  /** Wires the core to its stores and fan-out. */
  constructor(deps: ChatServiceDeps) {
    this.#deps = deps;
  }

  /** True when the user may enter the room. */
  canAccess(user: Principal, room: string): Promise<boolean> {
    return this.#deps.access.canAccess(user, room);
  }

  /**
   * Validates, stores attachments, appends with the room's next seq and fans the message out
   * once it is durable. A repeated client id returns the original message and sends nothing.
   */
  async send(user: Principal | null, room: string, input: SendInput): Promise<AppendResult> {
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
    if (user && !(await this.canAccess(user, room))) {
      throw new ChatError("forbidden", "Access denied to this room");
    }
    const attachments = files.length > 0
      ? await this.#deps.attachments.save(input.mediaDir ?? "files", files)
      : [];
    let result: AppendResult;
    try {
      result = await this.#deps.store.append(room, {
        sender: user ? profileOf(user) : null,
        body,
        attachments,
        clientId: input.clientId,
      });
    } catch (err) {
      await this.#deps.attachments.discard(attachments);
      throw err;
    }
    const metrics = this.#deps.metrics;
    if (result.duplicate) {
      await this.#deps.attachments.discard(attachments);
      return result;
    }
    metrics.messagesIn++;
    for (const a of attachments) metrics.attachmentBytes += a.size;
    this.#deps.fanout.committed(result.message);
    return result;
  }

  /** Reads history in ascending seq order. */
  history(room: string, query: HistoryQuery): Promise<Message[]> {
    return this.#deps.store.list(room, query);
  }

  /** The room's newest seq. */
  head(room: string): Promise<number> {
    return this.#deps.store.head(room);
  }

  /** Tells the room's other members that the user started or stopped typing. */
  typing(user: Principal, room: string, isTyping: boolean): void {
    this.#deps.fanout.publish({ type: "typing", room, user: profileOf(user), isTyping });
  }

  /** Raises the user's read cursor (to the head when `seq` is omitted) and tells the room. */
  async markRead(user: Principal, room: string, seq?: number): Promise<number> {
    const target = seq ?? await this.#deps.store.head(room);
    const cursor = await this.#deps.store.markRead(room, user.id, target);
    this.#deps.fanout.publish({ type: "read", room, user: profileOf(user), seq: cursor });
    return cursor;
  }

  /** Every user's read cursor in a room. */
  readCursors(room: string): Promise<Map<string, number>> {
    return this.#deps.store.cursors(room);
  }
}
