/**
 * The admin API's request and response bodies as zod schemas: the handlers validate with them
 * and the OpenAPI document is generated from them, so the two cannot drift apart.
 */

import { z } from "zod";
import { MAX_BODY_CHARS, MAX_FILES_PER_MESSAGE } from "../../core/chat_service.ts";
import { canonicalId, ROOM_ID_PATTERN, ROOM_KINDS } from "../../core/rooms.ts";
import { INEXACT_NUMBER, isExactNumber } from "../../core/json.ts";

/**
 * Schemas that appear in request bodies, emitted under `components.schemas` as input types.
 * Descriptions go through `.describe()` (the global registry), which the generator reads too.
 */
export const requestSchemas = z.registry<{ id: string }>();

/** Schemas that appear in response bodies, emitted under `components.schemas` as output types. */
export const responseSchemas = z.registry<{ id: string }>();

/** A room kind in a path. */
export const RoomKind = z.enum(ROOM_KINDS).describe("Room kind");

/**
 * A room id in a path: what the socket URLs and the native protocol accept (`isValidRoomId`),
 * including chat-room names that start with `_` or `.`; 1 to 128 characters.
 */
export const RoomId = z.string().regex(
  ROOM_ID_PATTERN,
  "expected 1 to 128 letters, digits, '_', '.', '@' or '-' (not '.' or '..')",
).describe("Room id within its kind");

/**
 * Whether a string is valid Unicode: the directory stores UTF-8, where a lone surrogate (a valid
 * JSON escape) would become U+FFFD, and two different ids one.
 */
const wellFormed = (s: string) => s.isWellFormed();
const LONE_SURROGATE = "expected no lone surrogate (\\ud800-\\udfff alone is not Unicode text)";

/** A user id in a path or body: the token's `sub` as text. */
export const UserId = z.string().min(1).max(256).regex(
  // A token's subject is trimmed: an id with spaces at an end could never sign in.
  // deno-lint-ignore no-control-regex
  /^(?!\s)(?![\s\S]*\s$)[^\u0000-\u001f\u007f]+$/,
  "expected no control characters and no space at either end",
).refine(wellFormed, LONE_SURROGATE).describe("User id as text (the token's sub, user_id or id)");

/** Text without NUL, which Postgres cannot store (SQLite would cut the text short there). */
const text = (max: number) =>
  z.string().max(max).refine((s) => !s.includes("\u0000"), "expected no NUL character")
    .refine(wellFormed, LONE_SURROGATE);

const profileText = (max: number) => text(max).nullable().optional();

/** Path of a user. */
export const UserPath = z.object({ id: UserId });

/** Path of a room; its id as the room is known by (`007` of a numeric kind is chat `7`). */
export const RoomPath = z.object({ kind: RoomKind, id: RoomId })
  .transform((p) => ({ ...p, id: canonicalId(p.kind, p.id) }));

/** Path of a kind of room. */
export const KindPath = z.object({ kind: RoomKind });

/** Path of a participant, its room's id as in {@link RoomPath}. */
export const ParticipantPath = z.object({ kind: RoomKind, id: RoomId, user_id: UserId })
  .transform((p) => ({ ...p, id: canonicalId(p.kind, p.id) }));

const ROLE = text(64).min(1);

/** Body of `PUT /api/users/{id}`: fields left out keep their stored value, null clears one. */
export const UserInput = z.strictObject({
  username: profileText(150),
  full_name: profileText(300),
  email: profileText(320),
  phone: profileText(64),
  profile_image: profileText(2048),
  company: profileText(300),
  role: profileText(64).describe(
    "admin and super_admin enter every room, support every support chat",
  ),
  user_type: profileText(64),
}).describe("Profile fields to set; omitted fields keep their value, null clears one.").register(
  requestSchemas,
  { id: "UserInput" },
);

/** A directory user. */
export const User = z.object({
  id: z.string(),
  username: z.string().nullable(),
  full_name: z.string().nullable(),
  email: z.string().nullable(),
  phone: z.string().nullable(),
  profile_image: z.string().nullable(),
  company: z.string().nullable(),
  role: z.string().nullable(),
  user_type: z.string().nullable(),
}).describe("A user as the directory keeps it.").register(responseSchemas, { id: "User" });

/** One participant to add. */
export const ParticipantInput = z.strictObject({
  user_id: UserId,
  role: ROLE.optional().describe(
    "Role in the room (member, owner, agent, ...); omitted: member for a new participant, " +
      "the stored role kept for one already there",
  ),
}).describe("A participant to add.").register(requestSchemas, { id: "ParticipantInput" });

/** A participant of a room. */
export const Participant = z.object({ user_id: z.string(), role: z.string() })
  .describe("A user's membership of a room.").register(responseSchemas, { id: "Participant" });

/** Body of `PUT /api/rooms/{kind}/{id}`. */
export const RoomInput = z.strictObject({
  title: text(500).nullable().optional(),
  owner_id: UserId.nullable().optional().describe("The owner may always enter the room"),
  participants: z.array(ParticipantInput).max(10_000).optional().describe(
    "Replaces the participant list exactly; users who lose access are removed from the room",
  ),
}).describe("Fields to set; omitted fields keep their value, null clears one.").register(
  requestSchemas,
  { id: "RoomInput" },
);

/** A room without its participants, as lists show it. */
export const RoomSummary = z.object({
  kind: z.string(),
  id: z.string(),
  title: z.string().nullable(),
  owner_id: z.string().nullable(),
  created_at: z.string().describe("ISO 8601, UTC"),
}).describe("A room the directory knows.").register(responseSchemas, { id: "RoomSummary" });

/** A room with its participants. */
export const Room = RoomSummary.extend({ participants: z.array(Participant) })
  .describe("A room with its participants.").register(responseSchemas, { id: "Room" });

/** A page of rooms. */
export const RoomList = z.object({
  rooms: z.array(RoomSummary),
  next_after: z.string().nullable().describe("Pass as `after` for the next page; null at the end"),
}).describe("Rooms of one kind, by id.").register(responseSchemas, { id: "RoomList" });

/**
 * A query parameter given empty or blank (`?before=`, a URL template filled with nothing) counts
 * as absent: coerced, it would be 0, and `before=0` is an empty page.
 */
const emptyIsAbsent = <T extends z.ZodType>(schema: T) =>
  z.preprocess((v) => (typeof v === "string" && v.trim() === "" ? undefined : v), schema);

/** Query of `GET /api/rooms/{kind}`. */
export const RoomListQuery = z.object({
  limit: emptyIsAbsent(z.coerce.number().int().min(1).max(500).default(100)).describe("Page size"),
  after: emptyIsAbsent(RoomId.optional()).describe("Only rooms whose id sorts after this one"),
});

/** A user as a message shows it (the native protocol's shape). */
export const MessageUser = z.object({
  id: z.union([z.string(), z.number().int()]),
  username: z.string(),
  name: z.string().nullable(),
  email: z.string().nullable(),
  profile_image: z.string().nullable(),
  role: z.string().nullable(),
}).describe("Who sent a message.").register(responseSchemas, { id: "MessageUser" });

/** A stored file of a message. */
export const MessageAttachment = z.object({
  id: z.string(),
  name: z.string(),
  mime: z.string(),
  size: z.number().int(),
  url: z.string().describe("Absolute URL of the file"),
}).describe("A file of a message.").register(responseSchemas, { id: "MessageAttachment" });

/** A stored message, exactly as the native WebSocket protocol renders it. */
export const Message = z.object({
  type: z.literal("message"),
  room: z.string(),
  seq: z.number().int().describe("Position in the room: 1, 2, 3, ..."),
  id: z.string(),
  sender: MessageUser.nullable().describe("Null for a system message"),
  body: z.string(),
  attachments: z.array(MessageAttachment),
  created_at: z.string().describe("ISO 8601, UTC, milliseconds"),
  client_id: z.string().nullable(),
}).describe("A stored message, in the shape of the native protocol's message frame.").register(
  responseSchemas,
  { id: "Message" },
);

/** A slice of a room's history. */
export const History = z.object({
  room: z.string(),
  messages: z.array(Message).describe("Ascending seq order"),
  has_more: z.boolean(),
  first_seq: z.number().int().nullable(),
  last_seq: z.number().int().nullable(),
}).describe("A slice of a room's history.").register(responseSchemas, { id: "History" });

const seq = z.coerce.number().int().min(0);

/** Query of `GET .../messages`. */
export const HistoryQuery = z.object({
  before: emptyIsAbsent(seq.optional()).describe("Only messages with a lower seq"),
  after: emptyIsAbsent(seq.optional()).describe("Only messages with a higher seq (oldest first)"),
  limit: emptyIsAbsent(z.coerce.number().int().min(1).max(200).default(50)).describe(
    "At most this many",
  ),
});

/** Read as every protocol reads it: a number is its digits, an empty one is none. */
const clientId = z.preprocess(
  (v) =>
    v === "" || v === null ? undefined : typeof v === "number" && isExactNumber(v) ? String(v) : v,
  z.string({
    error: (issue) =>
      typeof issue.input === "number" ? `A client_id that ${INEXACT_NUMBER}` : undefined,
  }).max(128).optional(),
).describe(
  "Idempotency key: the same key from the same sender within 24 hours stores one message",
);

/**
 * JSON Schemas the OpenAPI document gives for request schemas whose own one says less than they
 * take: zod describes a preprocessed field by what it becomes, not by what it is given.
 */
export const documentedInputs = new WeakMap<z.ZodType, Record<string, unknown>>();

// A JSON body may carry the key as a number (or null), not only as the string a form field is:
// generated clients and validating gateways must let through what the server takes.
const jsonClientId = clientId.describe(
  "Idempotency key: the same key from the same sender within 24 hours stores one message. A " +
    'number is stored as its digits (42 as "42"); an empty string or null is none',
);
documentedInputs.set(jsonClientId, {
  anyOf: [
    { type: "string", maxLength: 128 },
    { type: "number", minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
    { type: "null" },
  ],
});

/** Body of `POST .../messages`. */
export const MessageInput = z.strictObject({
  // Length and blankness are the core's to refuse, with the codes every protocol gives.
  body: z.string().describe(
    `At most ${MAX_BODY_CHARS} characters (UTF-16 code units), not blank ` +
      "(`body_too_long`, `empty_message`)",
  ),
  sender_id: UserId.optional().describe(
    "A directory user who may enter the room; omitted for a system message",
  ),
  client_id: jsonClientId,
}).describe("A text message to publish.").register(requestSchemas, { id: "MessageInput" });

/** Fields of the multipart body of `POST .../attachments`. */
export const AttachmentUpload = z.strictObject({
  file: z.array(z.file()).min(1).max(MAX_FILES_PER_MESSAGE).describe(
    "One or more files, each at most MAX_FILE_BYTES",
  ),
  body: z.string().describe(
    `At most ${MAX_BODY_CHARS} characters (UTF-16 code units) (\`body_too_long\`); CRLF is ` +
      "stored as LF, since form encoders send every line break as CRLF",
  ).optional(),
  sender_id: UserId.optional().describe(
    "Admins only: a directory user who may enter the room. Omitted: the caller of a user's " +
      "token, or a system message for ADMIN_TOKEN",
  ),
  client_id: clientId,
}).describe("Files (field `file`, repeatable) and an optional text for one message.").register(
  requestSchemas,
  { id: "AttachmentUpload" },
);

/** Every error the API returns. */
export const ApiErrorBody = z.object({
  status: z.number().int().describe("The HTTP status, repeated"),
  message: z.string(),
  code: z.string().optional().describe(
    "The chat error code (as in the native protocol: file_too_large, empty_message, forbidden, " +
      "rate_limited, room_deleted, ...) " +
      "when the refusal is one the sockets share",
  ),
  issues: z.array(z.object({ path: z.string(), message: z.string() })).optional().describe(
    "What was wrong with the request, field by field",
  ),
}).describe("An error.").register(responseSchemas, { id: "Error" });
