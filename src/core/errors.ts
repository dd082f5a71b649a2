/** Errors the core raises for bad client input; dialects turn them into their own error shapes. */

import { failureLog } from "./failure_log.ts";

/** Why a command was refused. */
export type ChatErrorCode =
  | "invalid_json"
  | "invalid_frame"
  | "empty_message"
  | "body_too_long"
  | "filename_required"
  | "filename_too_long"
  | "bad_base64"
  | "file_too_large"
  | "frame_too_large"
  | "forbidden"
  | "not_authenticated"
  | "not_found"
  | "rate_limited"
  | "room_deleted"
  | "internal";

/** A refusal the client caused; `message` is safe to show to the client. */
export class ChatError extends Error {
  /** Machine-readable reason. */
  readonly code: ChatErrorCode;

  /** Creates the error with a machine-readable code and a client-facing message. */
  constructor(code: ChatErrorCode, message: string) {
    super(message);
    this.name = "ChatError";
    this.code = code;
  }
}

/** The refusal of a frame (or upload) over the send rate limits, the same text everywhere. */
export function rateLimited(): ChatError {
  return new ChatError("rate_limited", "Too many messages: slow down");
}

/** The refusal of a send admitted to a room that was deleted before the send was stored. */
export function roomDeleted(): ChatError {
  return new ChatError("room_deleted", "This room was deleted");
}

/**
 * The refusal of a send a shutdown stopped before its commit: nothing was stored, so the client
 * may send it again (to this server once it is back, or another). `internal` in the protocols,
 * whose clients already send such a message again; 503 in the REST API.
 */
export class ServerStopping extends ChatError {
  /** Creates the refusal; its message is the same everywhere. */
  constructor() {
    super("internal", "The server is shutting down: the message was not stored; send it again");
  }
}

/**
 * The refusal of a send while DATA_DIR is nearly full (its space reserve released, see
 * space_reserve.ts): nothing was stored, and the room left is kept for the server's own writes.
 * `internal` in the protocols, as a send a full disk refused; 503 in the REST API.
 */
export class StorageShort extends ChatError {
  /** Creates the refusal; its message is the same everywhere. */
  constructor() {
    super(
      "internal",
      "The server's storage is nearly full: the message was not stored; try again later",
    );
  }
}

/** The refusal of a message over the size limit, the same text in every protocol. */
export function frameTooLarge(
  size: number,
  unit: "bytes" | "characters",
  limit: number,
): ChatError {
  return new ChatError(
    "frame_too_large",
    `Message is too large: ${size} ${unit}, the limit is ${limit}`,
  );
}

/**
 * The error as a ChatError: unexpected ones are logged, with `where` (protocol, room, user) for
 * the operator, and become a generic `internal` error. A store's outage is logged once for all
 * the frames it fails, other errors a few times a minute each (see failure_log.ts).
 */
export function asChatError(err: unknown, where?: string): ChatError {
  if (err instanceof ChatError) return err;
  failureLog.failed("Unexpected error while handling a client frame", err, where);
  return new ChatError("internal", "Internal server error");
}
