/** The admin API's route table: users, rooms, participants, messages and attachments. */

import { z } from "zod";
import { isAdminRole, normalizeUserId } from "../../auth/principal.ts";
import { storedRoleGrantsAccess } from "../../auth/directory_access.ts";
import { roleOpensRooms } from "../../auth/access.ts";
import type { SendInput } from "../../core/chat_service.ts";
import type { DirectoryRoom, DirectoryUser, Participant } from "../../core/directory.ts";
import {
  ChatError,
  type ChatErrorCode,
  rateLimited,
  ServerStopping,
  StorageShort,
} from "../../core/errors.ts";
import { failureLog } from "../../core/failure_log.ts";
import {
  type AppendResult,
  EVERY_ROOM,
  type Principal,
  type RoomEvent,
  type StoredNames,
  type UserId,
} from "../../core/types.ts";
import { baseUrlOf } from "../../dialects/context.ts";
import { nativeMessage } from "../../dialects/native/native.ts";
import { type ApiDeps, ApiError, type ApiRoute, defineRoute } from "./framework.ts";
import { buildOpenApiDocument } from "./openapi.ts";
import {
  ApiErrorBody,
  AttachmentUpload,
  History,
  HistoryQuery,
  KindPath,
  Message,
  MessageInput,
  ParticipantInput,
  ParticipantPath,
  Room,
  RoomInput,
  RoomList,
  RoomListQuery,
  RoomPath,
  User,
  UserInput,
  UserPath,
} from "./schemas.ts";

/** The directory user in the API's snake_case shape. */
function userBody(user: DirectoryUser): z.input<typeof User> {
  return {
    id: user.id,
    username: user.username,
    full_name: user.fullName,
    email: user.email,
    phone: user.phone,
    profile_image: user.profileImage,
    company: user.company,
    role: user.role,
    user_type: user.userType,
  };
}

/** A room and its participants in the API's shape. */
function roomBody(room: DirectoryRoom, participants: Participant[]): z.input<typeof Room> {
  return {
    kind: room.kind,
    id: room.id,
    title: room.title,
    owner_id: room.ownerId,
    created_at: room.createdAt,
    participants: participants.map((p) => ({ user_id: p.userId, role: p.role })),
  };
}

/** A directory user as the sender of a message: the same profile a token would give. */
function principalOf(user: DirectoryUser): Principal {
  return {
    id: normalizeUserId(user.id) ?? user.id,
    username: user.username ?? user.fullName ?? user.email ?? user.id,
    name: user.fullName ?? undefined,
    email: user.email ?? undefined,
    phone: user.phone ?? undefined,
    profileImage: user.profileImage ?? undefined,
    company: user.company ?? undefined,
    role: user.role ?? undefined,
    userType: user.userType ?? undefined,
    grants: [],
  };
}

const roomKeyOf = (kind: string, id: string) => `${kind}:${id}`;

/** The 409 of a send the room's deletion overtook. */
const roomDeletedMidSend = {
  description: "The room was deleted while the message was being stored (`room_deleted`); " +
    "nothing was stored.",
  schema: ApiErrorBody,
};

/** The HTTP status for a refusal of the core. */
const CHAT_ERROR_STATUS: Partial<Record<ChatErrorCode, number>> = {
  forbidden: 403,
  not_found: 404,
  room_deleted: 409,
  file_too_large: 413,
  rate_limited: 429,
  internal: 500,
};

/** A refusal of the core as an API error: its status, its message and its code. */
const apiErrorOf = (err: ChatError) => {
  // The server cannot take it now (stopping, its storage nearly full): try again later.
  const unavailable = err instanceof ServerStopping || err instanceof StorageShort;
  return new ApiError(
    unavailable ? 503 : CHAT_ERROR_STATUS[err.code] ?? 400,
    err.message,
    undefined,
    err.code,
    err.code === "rate_limited" || unavailable,
  );
};

/** Sends through the core, turning its refusals into API errors. */
async function send(
  deps: ApiDeps,
  sender: Principal | null,
  room: string,
  input: SendInput,
): Promise<AppendResult> {
  try {
    return await deps.chat.send(sender, room, input);
  } catch (err) {
    if (err instanceof ChatError) throw apiErrorOf(err);
    throw err;
  }
}

/** The sender named by `sender_id`, who must exist and be allowed in the room; null for none. */
async function senderOf(
  deps: ApiDeps,
  senderId: string | undefined,
  room: string,
): Promise<Principal | null> {
  if (senderId === undefined) return null;
  const stored = await deps.directory.getUser(senderId);
  if (!stored) throw new ApiError(404, `User "${senderId}" not found`);
  const sender = principalOf(stored);
  if (!(await deps.chat.canAccess(sender, room))) {
    throw new ApiError(
      403,
      `User "${senderId}" may not post in room "${room}"`,
      undefined,
      "forbidden",
    );
  }
  return sender;
}

/**
 * Closes the sockets of users who were owner or participant of a room and no longer may enter
 * it. Every isolate hears the event through the hub; a socket that misses it is still refused
 * on its next send, since access is checked there too.
 */
async function revokeLost(
  deps: ApiDeps,
  kind: string,
  id: string,
  before: Iterable<string>,
): Promise<void> {
  const room = roomKeyOf(kind, id);
  const lost: UserId[] = [];
  const revoke = (userId: string) => {
    const user = normalizeUserId(userId) ?? userId;
    lost.push(user);
    deps.events.publish({ type: "revoked", room, userId: user });
  };
  // Their read cursors go with their access, or every later join lists them as readers. One who
  // keeps access keeps theirs; one wrongly taken for lost (the catch below) gets it back at
  // their next read mark once the store accepts their marks there again (within minutes), while
  // a cursor left behind would stay for as long as the room lives.
  const forget = async () => {
    for (const user of lost) await deps.chat.forgetReads(user, [room]);
  };
  const pending = new Set(before);
  try {
    const [stored, participants] = await Promise.all([
      deps.directory.getRoom(kind, id),
      deps.directory.listParticipants(kind, id),
    ]);
    const keep = new Set(participants.map((p) => p.userId));
    if (stored?.ownerId) keep.add(stored.ownerId);
    for (const userId of [...pending]) {
      const keeps = keep.has(userId) ||
        storedRoleGrantsAccess(await deps.directory.getUser(userId), room);
      pending.delete(userId);
      if (!keeps) revoke(userId);
    }
  } catch (err) {
    // The change is committed, but who keeps access could not be read: take out everyone it may
    // have cut off (a rejoin checks access again), rather than leave a removed user reading the
    // room with nothing left to publish the eviction (a retry finds nothing to remove).
    for (const userId of pending) revoke(userId);
    await forget().catch(() => {});
    throw err;
  }
  await forget();
}

/**
 * Accepts read marks again of users given access back (created again, added back to `room`),
 * which a deletion or removal refused for a while. A failure is logged, not answered: the write
 * it follows is committed, and the refusal ends by itself when it expires.
 */
async function readmit(deps: ApiDeps, users: Iterable<string>, room?: string): Promise<void> {
  for (const userId of new Set(users)) {
    const user = normalizeUserId(userId) ?? userId;
    try {
      await deps.chat.readmitReads(user, room === undefined ? undefined : [room]);
    } catch (err) {
      failureLog.failed("api: accepting read marks again failed", err, `user ${user}`);
    }
  }
}

/**
 * Room keys, in characters, one `revocations` event names at most: its copy in the KV log must
 * stay well under KV's 64 KiB a value (a key is stored in at most two bytes a character).
 */
const REVOCATION_CHARS = 8_000;

/**
 * The events that close a deleted user's sockets in `rooms` (those the deletion took them out
 * of) on every isolate and instance. No room is checked: with the user went their
 * participations, ownerships and stored role, so nothing the directory holds lets them in any
 * more. A check per room (three reads) for a user in thousands of rooms, a support agent added
 * to every ticket, held the directory for seconds and everyone's sends waited behind it; and a
 * `revoked` per room cost every isolate a channel post per room.
 */
function revocations(userId: string, rooms: { kind: string; id: string }[]): RoomEvent[] {
  const events: RoomEvent[] = [];
  let batch: string[] = [];
  let chars = 0;
  const flush = () => {
    if (batch.length === 0) return;
    events.push({
      type: "revocations",
      room: EVERY_ROOM,
      userId: normalizeUserId(userId) ?? userId,
      rooms: batch,
    });
    batch = [];
    chars = 0;
  };
  for (const { kind, id } of rooms) {
    const room = roomKeyOf(kind, id);
    if (chars + room.length > REVOCATION_CHARS) flush();
    batch.push(room);
    chars += room.length;
  }
  flush();
  return events;
}

/**
 * Checks the user's sockets in every room again, on every isolate and instance: their stored
 * role changed or went, and a role opens rooms (all of them, every support chat) without a list
 * that could say which ones to revoke.
 */
function recheckUser(deps: ApiDeps, userId: string): void {
  deps.events.publish({
    type: "recheck",
    room: EVERY_ROOM,
    userId: normalizeUserId(userId) ?? userId,
  });
}

/**
 * How uploaded files are named: as the client named them in the rooms of the Django protocols
 * (their documents show such URLs), unguessably elsewhere.
 */
export function uploadNames(kind: string): StoredNames {
  return kind === "ticket" || kind === "chat" ? "client" : "tagged";
}

/** Where uploaded files go: the folder the room's own protocol uses. */
export function uploadFolder(kind: string, id: string, now = new Date()): string {
  if (kind === "ticket") return `files/ticket_${id}`;
  if (kind === "chat") {
    const pad = (n: number) => String(n).padStart(2, "0");
    return `chat_files/${now.getUTCFullYear()}/${pad(now.getUTCMonth() + 1)}/${
      pad(now.getUTCDate())
    }`;
  }
  return `native/${kind}_${id}`;
}

async function requireRoom(deps: ApiDeps, kind: string, id: string): Promise<DirectoryRoom> {
  const room = await deps.directory.getRoom(kind, id);
  if (!room) throw new ApiError(404, `Room "${roomKeyOf(kind, id)}" not found`);
  return room;
}

const notFound = (what: string) => ({
  description: `${what} does not exist.`,
  schema: ApiErrorBody,
});

/** The 404 of a send: no such sender, or a client_id whose first message is gone. */
const sendNotFound = {
  description: "The sender does not exist, or (`code`: `not_found`) the client_id was first " +
    "sent with a message the room no longer keeps (`HISTORY_LIMIT`): it is not stored again.",
  schema: ApiErrorBody,
};

/** Every route of the admin API, in document order. */
export const API_ROUTES: ApiRoute[] = [
  defineRoute({
    method: "get",
    path: "/api/openapi.json",
    operationId: "getOpenApi",
    summary: "This document",
    tag: "meta",
    public: true,
    responses: {
      200: {
        description: "The OpenAPI 3.1 document of this API.",
        schema: z.record(z.string(), z.unknown()),
      },
    },
    handle: (_input, deps) =>
      Promise.resolve({ status: 200, body: openApiDocument(deps.config.publicUrl) }),
  }),

  defineRoute({
    method: "put",
    path: "/api/users/{id}",
    operationId: "upsertUser",
    summary: "Create or update a user",
    description: "Fields left out keep their stored value; null clears one. Profile fields fill " +
      "in what tokens lack (phone, profile_image, full_name, user_type, company, role).",
    tag: "users",
    params: UserPath,
    body: { type: "json", schema: UserInput },
    responses: { 200: { description: "The user as stored.", schema: User } },
    async handle({ params, body }, deps) {
      const { user, previous } = await deps.directory.upsertUser({
        id: params.id,
        username: body.username,
        fullName: body.full_name,
        email: body.email,
        phone: body.phone,
        profileImage: body.profile_image,
        company: body.company,
        role: body.role,
        userType: body.user_type,
      });
      // The role this write replaced, read under the row's lock: one read before the write could
      // miss a concurrent change that opened rooms, and this write would close them unchecked.
      // Also when the role stays: a retry of a request whose recheck failed must send it again.
      // Other roles open nothing that a change could close.
      if (body.role !== undefined && roleOpensRooms(previous?.role)) {
        recheckUser(deps, params.id);
      }
      if (previous === null) await readmit(deps, [params.id]);
      return { status: 200, body: userBody(user) };
    },
  }),

  defineRoute({
    method: "get",
    path: "/api/users/{id}",
    operationId: "getUser",
    summary: "Read a user",
    tag: "users",
    params: UserPath,
    responses: { 200: { description: "The user.", schema: User }, 404: notFound("The user") },
    async handle({ params }, deps) {
      const user = await deps.directory.getUser(params.id);
      if (!user) throw new ApiError(404, `User "${params.id}" not found`);
      return { status: 200, body: userBody(user) };
    },
  }),

  defineRoute({
    method: "delete",
    path: "/api/users/{id}",
    operationId: "deleteUser",
    summary: "Delete a user and their participations",
    description: "Their participations end and rooms they own lose their owner_id; their " +
      "sockets in those rooms are closed (a role their token carries may let them join again), " +
      "and their read cursors are deleted in every room. " +
      "A user the directory has no row for (one only tokens know) is taken out of the rooms " +
      "they take part in or own the same way.",
    tag: "users",
    params: UserPath,
    responses: {
      204: { description: "Deleted." },
      404: notFound("The user (neither in the directory nor in any room)"),
    },
    async handle({ params }, deps) {
      // Their read cursors first, or every later join lists them as readers: while the directory
      // still names their rooms, so that a deletion KV refuses (full disk) answers 500 and is
      // retried whole, rather than leave cursors a retry no longer finds. In every room the store
      // knows they read (also rooms their token or an open room let them in), and in those the
      // directory knows them in, for cursors stored before the store kept that list; marks that
      // servers not yet told of the deletion take after it are refused.
      const known = await deps.directory.userRooms(params.id);
      // Nobody to delete (a mistyped id): answered with nothing changed, not with a user only
      // tokens know losing their cursors and marks for a while.
      if (known.length === 0 && await deps.directory.getUser(params.id) === null) {
        throw new ApiError(404, `User "${params.id}" not found`);
      }
      await deps.chat.forgetReads(
        normalizeUserId(params.id) ?? params.id,
        known.map((r) => roomKeyOf(r.kind, r.id)),
        true,
      );
      // The rooms and the role come from the deletion itself: read before it, a participation
      // added or a role given in between was deleted without its sockets being closed.
      const { existed, role, rooms } = await deps.directory.deleteUser(params.id);
      const publishes = revocations(params.id, rooms).map((event) => () =>
        deps.events.publish(event)
      );
      if (roleOpensRooms(role)) publishes.push(() => recheckUser(deps, params.id));
      // Every event is tried: the deletion is committed, so a retry would find none of them.
      let failure: { error: unknown } | undefined;
      for (const publish of publishes) {
        try {
          publish();
        } catch (error) {
          failure ??= { error };
        }
      }
      if (failure) throw failure.error;
      // A user only tokens know may still take part in rooms: removed from them, it was there.
      if (!existed && rooms.length === 0) throw new ApiError(404, `User "${params.id}" not found`);
      return { status: 204 };
    },
  }),

  defineRoute({
    method: "get",
    path: "/api/rooms/{kind}",
    operationId: "listRooms",
    summary: "List the rooms of a kind",
    description: "Ordered by id (code point order); page with `after` = the previous " +
      "`next_after`.",
    tag: "rooms",
    params: KindPath,
    query: RoomListQuery,
    responses: { 200: { description: "A page of rooms.", schema: RoomList } },
    async handle({ params, query }, deps) {
      // One more than the page: a last page that is full says so (null), not one page later.
      const found = await deps.directory.listRooms(params.kind, {
        limit: query.limit + 1,
        after: query.after,
      });
      const rooms = found.slice(0, query.limit);
      return {
        status: 200,
        body: {
          rooms: rooms.map((r) => {
            const { participants: _, ...summary } = roomBody(r, []);
            return summary;
          }),
          next_after: found.length > query.limit ? rooms.at(-1)!.id : null,
        },
      };
    },
  }),

  defineRoute({
    method: "put",
    path: "/api/rooms/{kind}/{id}",
    operationId: "upsertRoom",
    summary: "Create or update a room",
    description: "A room the directory knows is entered only by its owner, its participants " +
      "and admin roles (support staff: every support chat), except named chat rooms " +
      "(`room`), which stay open to anyone with a valid token; the token's `rooms` claim no " +
      "longer counts for it, and sockets that entered by the claim alone are closed when the " +
      "room is created. `participants` replaces the list; users who lose access have " +
      "their sockets in the room closed.",
    tag: "rooms",
    params: RoomPath,
    body: { type: "json", schema: RoomInput },
    responses: {
      200: { description: "Updated.", schema: Room },
      201: { description: "Created.", schema: Room },
    },
    async handle({ params, body }, deps) {
      const { kind, id } = params;
      // One transaction: a deletion at the same time comes wholly before or after, never between
      // the room and its participants; of two first saves only one answers 201; and who held the
      // room before is read in it, so that a concurrent save's participants are not missed.
      const { room, created, replaced } = await deps.directory.saveRoom(
        { kind, id, title: body.title, ownerId: body.owner_id },
        body.participants?.map((p) => ({ userId: p.user_id, role: p.role })),
      );
      // Every member is checked again: a save can shut out more than the participants it drops
      // (token claims, when it creates the room; the previous owner), and a retry of one whose
      // publish failed finds nothing created or replaced any more.
      deps.events.publish({ type: "recheck", room: roomKeyOf(kind, id) });
      // A room created again is no longer being deleted: those it turns away are turned away.
      if (created) await deps.chat.unmarkDeleting(roomKeyOf(kind, id));
      // Those who were not in the room before: one taken out a moment ago marks reads again.
      const given = (body.participants ?? []).map((p) => p.user_id);
      if (body.owner_id) given.push(body.owner_id);
      await readmit(deps, given.filter((user) => !replaced.includes(user)), roomKeyOf(kind, id));
      if (replaced.length > 0) await revokeLost(deps, kind, id, replaced);
      const participants = await deps.directory.listParticipants(kind, id);
      return { status: created ? 201 : 200, body: roomBody(room, participants) };
    },
  }),

  defineRoute({
    method: "get",
    path: "/api/rooms/{kind}/{id}",
    operationId: "getRoom",
    summary: "Read a room and its participants",
    tag: "rooms",
    params: RoomPath,
    responses: { 200: { description: "The room.", schema: Room }, 404: notFound("The room") },
    async handle({ params }, deps) {
      const room = await requireRoom(deps, params.kind, params.id);
      const participants = await deps.directory.listParticipants(params.kind, params.id);
      return { status: 200, body: roomBody(room, participants) };
    },
  }),

  defineRoute({
    method: "delete",
    path: "/api/rooms/{kind}/{id}",
    operationId: "deleteRoom",
    summary: "Delete a room, close its sockets and delete its history",
    description: "Every socket in the room is closed (ticket socket and service chats: 4004; " +
      "conversation chat: 4404; chat rooms: 4000; native protocol: a " +
      "`removed` frame), then its messages, their files, read cursors and client ids are " +
      "deleted. Message numbers are not reused: a room created again under the same id " +
      "continues after the last one. The room, now unknown to the directory, falls back to " +
      "token claims; what is sent to it after the deletion stays, while a send under way when " +
      "it is deleted is refused (`room_deleted`; 409 for this API's sends). A room the directory does " +
      "not know (one that token claims open) is deleted the same way when it has history.",
    tag: "rooms",
    params: RoomPath,
    responses: {
      204: { description: "Deleted." },
      404: notFound("The room (neither in the directory nor with history)"),
    },
    async handle({ params }, deps) {
      const { kind, id } = params;
      const room = roomKeyOf(kind, id);
      // Before the row goes: servers that find their members' access gone before the notice
      // below reaches them tell them the room was deleted, not that they were turned away.
      const stamp = await deps.chat.markDeleting(room);
      let known: boolean;
      try {
        known = await deps.directory.deleteRoom(kind, id);
      } catch (err) {
        await deps.chat.unmarkDeleting(room, stamp).catch(() => {});
        throw err;
      }
      if (!known && (await deps.chat.history(room, { limit: 1 })).length === 0) {
        // Only its own note: one a deletion before it (this may be that one's retry) or beside it
        // wrote stays.
        await deps.chat.unmarkDeleting(room, stamp);
        throw new ApiError(404, `Room "${room}" not found`);
      }
      const closed = (generation: number) =>
        deps.events.publish({ type: "closed", room, reason: "Room deleted", generation });
      // Named with the generation this deletion raises the room to: every member of the room's
      // life so far leaves, and a copy of the notice that comes late (each isolate hears it
      // through two paths) does not evict a member of the next one.
      closed(await deps.chat.generation(room, { fresh: true }) + 1);
      // The purge refuses sends whose access was decided before it. Access decisions reused under
      // a directory change token read before the deletion would admit sends after it: the purge
      // waits until no such token is in use anywhere (also when another request deleted the row
      // a moment ago and this one found it gone).
      const lag = deps.directory.changeTokenLagMs ?? 0;
      if (lag > 0) await new Promise((r) => setTimeout(r, 2 * lag));
      try {
        // Said again once the room's generation is raised: a join that read the old one and
        // entered the room after the notice above is still in it, under a count now gone.
        await deps.chat.deleteHistory(room, closed);
      } catch (err) {
        failureLog.failed("api: deleting a room's history failed", err, `room ${room}`);
        throw new ApiError(
          500,
          "The room is deleted, but deleting its history failed; the server tries again later",
        );
      }
      return { status: 204 };
    },
  }),

  defineRoute({
    method: "post",
    path: "/api/rooms/{kind}/{id}/participants",
    operationId: "addParticipant",
    summary: "Add a participant, or change their role",
    tag: "rooms",
    params: RoomPath,
    body: { type: "json", schema: ParticipantInput },
    responses: {
      200: { description: "The room with its participants.", schema: Room },
      404: notFound("The room"),
    },
    async handle({ params, body }, deps) {
      const added = await deps.directory.addParticipant(params.kind, params.id, {
        userId: body.user_id,
        role: body.role,
      }, { roomMustExist: true });
      if (!added) throw new ApiError(404, `Room "${roomKeyOf(params.kind, params.id)}" not found`);
      await readmit(deps, [body.user_id], roomKeyOf(params.kind, params.id));
      const room = await requireRoom(deps, params.kind, params.id);
      const participants = await deps.directory.listParticipants(params.kind, params.id);
      return { status: 200, body: roomBody(room, participants) };
    },
  }),

  defineRoute({
    method: "delete",
    path: "/api/rooms/{kind}/{id}/participants/{user_id}",
    operationId: "removeParticipant",
    summary: "Remove a participant and close their sockets in the room",
    description: "Unless the user still may enter (owner, admin or support role in the " +
      "directory), their sockets in the room are closed (ticket socket 4003, conversation " +
      "chat 4404, native protocol: a `removed` frame), their next send is refused and their " +
      "read cursor in the room is deleted.",
    tag: "rooms",
    params: ParticipantPath,
    responses: { 204: { description: "Removed." }, 404: notFound("The participant") },
    async handle({ params }, deps) {
      const { kind, id, user_id } = params;
      if (!(await deps.directory.removeParticipant(kind, id, user_id))) {
        throw new ApiError(404, `User "${user_id}" is not a participant of "${kind}:${id}"`);
      }
      await revokeLost(deps, kind, id, [user_id]);
      return { status: 204 };
    },
  }),

  defineRoute({
    method: "get",
    path: "/api/rooms/{kind}/{id}/messages",
    operationId: "listMessages",
    summary: "Read a room's history by seq cursor",
    description: "Any room, known to the directory or not. Without `after`, the newest " +
      "`limit` messages before `before`; with `after`, the oldest ones after it.",
    tag: "messages",
    params: RoomPath,
    query: HistoryQuery,
    responses: { 200: { description: "Messages in ascending seq order.", schema: History } },
    async handle({ params, query, req }, deps) {
      const room = roomKeyOf(params.kind, params.id);
      const { before, after, limit } = query;
      const { messages, hasMore } = await deps.chat.historyPage(room, { before, after, limit });
      const baseUrl = baseUrlOf(deps.config, req);
      return {
        status: 200,
        body: {
          room,
          messages: messages.map((m) => nativeMessage(m, baseUrl)),
          has_more: hasMore,
          first_seq: messages[0]?.seq ?? null,
          last_seq: messages.at(-1)?.seq ?? null,
        },
      };
    },
  }),

  defineRoute({
    method: "post",
    path: "/api/rooms/{kind}/{id}/messages",
    operationId: "publishMessage",
    summary: "Publish a message as a user or as the system",
    description: "It reaches the room's clients on every protocol. With `sender_id` the " +
      "sender must be a directory user allowed in the room; without, it is a system message.",
    tag: "messages",
    params: RoomPath,
    body: { type: "json", schema: MessageInput },
    responses: {
      201: { description: "Stored and delivered.", schema: Message },
      200: { description: "A repeated client_id: the original message.", schema: Message },
      403: {
        description: "The caller carries no admin role, or the sender may not enter the room.",
        schema: ApiErrorBody,
      },
      404: sendNotFound,
      409: roomDeletedMidSend,
    },
    async handle({ params, body, req }, deps) {
      const room = roomKeyOf(params.kind, params.id);
      const sender = await senderOf(deps, body.sender_id, room);
      const result = await send(deps, sender, room, {
        body: body.body,
        clientId: body.client_id,
      });
      return {
        status: result.duplicate ? 200 : 201,
        body: nativeMessage(result.message, baseUrlOf(deps.config, req)),
      };
    },
  }),

  defineRoute({
    method: "post",
    path: "/api/rooms/{kind}/{id}/attachments",
    operationId: "uploadAttachments",
    summary: "Upload files as one message (multipart/form-data)",
    description: "For files too large for a socket frame: the message reaches every " +
      "protocol's clients like one sent over a socket. Each file is at most MAX_FILE_BYTES, " +
      "and the whole request at most MAX_FILE_BYTES plus 256 KiB. Besides ADMIN_TOKEN and " +
      "admin tokens, any user's token may call it, to post as that user in a room they may " +
      "enter (the chat page uploads this way).",
    tag: "messages",
    members: true,
    params: RoomPath,
    body: { type: "multipart", schema: AttachmentUpload, arrays: ["file"] },
    responses: {
      201: { description: "Stored and delivered.", schema: Message },
      200: { description: "A repeated client_id: the original message.", schema: Message },
      404: sendNotFound,
      409: roomDeletedMidSend,
      429: {
        description: "An ordinary user over the per-user send limit the sockets apply, or with " +
          "UPLOADS_PER_USER uploads already under way.",
        schema: ApiErrorBody,
      },
      413: {
        description: "A file is over MAX_FILE_BYTES, or the whole request over MAX_FILE_BYTES " +
          "plus 256 KiB.",
        schema: ApiErrorBody,
      },
    },
    // Before the upload is read, so that a user over the limit or outside the room costs no
    // memory; the send checks access again.
    async admit({ params, caller }, deps) {
      if (caller?.kind !== "user" || isAdminRole(caller.user.role)) return;
      // The same per-user send limit as on the sockets, or this route would be the way around it.
      const verdict = deps.limiter?.take(caller.user.id, `api:${caller.user.id}`) ?? "ok";
      if (verdict !== "ok") throw apiErrorOf(rateLimited());
      if (!(await deps.chat.canAccess(caller.user, roomKeyOf(params.kind, params.id)))) {
        throw apiErrorOf(new ChatError("forbidden", "Access denied to this room"));
      }
    },
    async handle({ params, body, req, caller }, deps) {
      const room = roomKeyOf(params.kind, params.id);
      // An admin may post as anyone (or as the system); any other user only as themselves, in
      // rooms they may enter: the browser client's upload path. A user's token without
      // `sender_id` posts as that user, an admin's too (the chat page sends none).
      let sender: Principal | null;
      if (caller?.kind === "user" && !isAdminRole(caller.user.role)) {
        if (body.sender_id !== undefined && body.sender_id !== String(caller.user.id)) {
          throw new ApiError(403, `User "${caller.user.id}" may only post as themselves`);
        }
        sender = caller.user;
      } else if (caller?.kind === "user" && body.sender_id === undefined) {
        sender = caller.user;
      } else {
        sender = await senderOf(deps, body.sender_id, room);
      }
      const files = await Promise.all(
        body.file.map(async (f) => ({ name: f.name, data: new Uint8Array(await f.arrayBuffer()) })),
      );
      const result = await send(deps, sender, room, {
        // Every form encoder (browsers, Deno, undici) sends a text entry's line breaks as CRLF
        // (HTML's form normalisation): taken back to LF, a caption is stored as the sender wrote
        // it and counted as the sockets count it.
        body: (body.body ?? "").replaceAll("\r\n", "\n"),
        files,
        mediaDir: uploadFolder(params.kind, params.id),
        names: uploadNames(params.kind),
        clientId: body.client_id,
      });
      return {
        status: result.duplicate ? 200 : 201,
        body: nativeMessage(result.message, baseUrlOf(deps.config, req)),
      };
    },
  }),
];

let cachedDocument: { publicUrl?: string; document: Record<string, unknown> } | undefined;

/** The OpenAPI 3.1 document of {@link API_ROUTES} served from `publicUrl`, built once. */
export function openApiDocument(publicUrl?: string): Record<string, unknown> {
  if (!cachedDocument || cachedDocument.publicUrl !== publicUrl) {
    cachedDocument = { publicUrl, document: buildOpenApiDocument(API_ROUTES, publicUrl) };
  }
  return cachedDocument.document;
}
