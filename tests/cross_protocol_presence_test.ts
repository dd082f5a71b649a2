/**
 * Presence across protocols: a user counts as present in a room through any protocol's socket in
 * it (ticket socket, Socket.IO ticket chat, conversation chat, service and support chats, native,
 * chat rooms), and leaves with the last of them, as docs/protocol.md promises.
 */

import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import { assertEquals } from "./assert.ts";
import {
  adminCall,
  pollingSession,
  rawUpgrade,
  startTestServer,
  TestClient,
  type TestServer,
} from "./helpers.ts";

type Frame = Record<string, unknown>;

/** A native socket of `username` (user id `sub`) in `room`, with its `joined` reply. */
async function native(server: TestServer, sub: string, username: string, room: string) {
  const token = await server.token({ sub, username, rooms: [room] }, "1h");
  const client = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await client.next((f) => f.type === "welcome");
  client.send({ type: "join", room });
  const joined = await client.next((f) => f.type === "joined");
  const listed = (joined.presence as Frame[]).map((u) => u.username as string).sort();
  return { client, listed };
}

/** The next presence frame of `client` about `username`. */
function presenceOf(client: TestClient, username: string): Promise<Frame> {
  return client.next((f) => f.type === "presence" && (f.user as Frame).username === username);
}

/** Fails if a presence frame about `username` reaches `client` within `ms`. */
function noPresenceOf(client: TestClient, username: string, ms = 500): Promise<void> {
  return client.nothing(
    (f) => f.type === "presence" && (f.user as Frame).username === username,
    ms,
  );
}

/** Resolves with the first argument of the next `event`, or fails after 5 s. */
function next(socket: ClientSocket, event: string): Promise<Frame> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), 5000);
    socket.once(event, (arg: Frame) => {
      clearTimeout(timer);
      resolve(arg);
    });
  });
}

/** A Socket.IO client of `username` (user id `sub`), signed in, recording every event's name. */
async function socketIo(server: TestServer, sub: string, username: string, rooms: string[]) {
  const token = await server.token({ sub, username, rooms }, "1h");
  const socket = connect(server.url, { forceNew: true, reconnection: false, auth: { token } });
  const events: string[] = [];
  socket.onAny((event: string) => events.push(event));
  await next(socket, "authenticated");
  return { socket, events };
}

async function withServer(fn: (server: TestServer) => Promise<void>, env = {}) {
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "500",
    SOCKETIO_PING_TIMEOUT_MS: "500",
    ...env,
  });
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

Deno.test("cross-protocol presence: a user on Socket.IO, the ticket socket and native leaves only with the last; a newcomer lists one connected through the others alone", async () => {
  await withServer(async (server) => {
    const annToken = await server.token({ sub: "7", username: "ann", rooms: ["ticket:1"] }, "1h");
    const phone = await socketIo(server, "7", "ann", ["ticket:1"]);
    phone.socket.emit("join_ticket", { ticketId: "1" });
    await next(phone.socket, "joined_ticket");
    const ticketTab = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${annToken}`);
    const laptop = await native(server, "7", "ann", "ticket:1");
    const ben = await native(server, "8", "ben", "ticket:1");
    assertEquals(ben.listed, ["ann", "ben"]);

    await laptop.client.close();
    await noPresenceOf(ben.client, "ann");
    // Connected through Socket.IO and the ticket socket only.
    const carol = await native(server, "9", "carol", "ticket:1");
    assertEquals(carol.listed, ["ann", "ben", "carol"]);
    await carol.client.close();

    phone.socket.disconnect();
    await noPresenceOf(ben.client, "ann");
    const dan = await native(server, "10", "dan", "ticket:1");
    assertEquals(dan.listed, ["ann", "ben", "dan"]);
    await dan.client.close();

    await ticketTab.close();
    assertEquals((await presenceOf(ben.client, "ann")).action, "leave");
    // Neither protocol has presence frames: nothing of it reached their clients.
    assertEquals(ticketTab.frames, []);
    assertEquals(phone.events, ["authenticated", "joined_ticket"]);
    await ben.client.close();
  });
});

Deno.test("cross-protocol presence: a Socket.IO socket enters with join_ticket and leaves with leave_ticket, its disconnect, or the end of a polling session; a refused join never enters", async () => {
  await withServer(async (server) => {
    const ben = await native(server, "8", "ben", "ticket:2");
    const eve = await socketIo(server, "11", "eve", ["ticket:2"]);
    // No access to ticket 3: refused before it is in the ticket, nobody hears of it.
    eve.socket.emit("join_ticket", { ticketId: "3" });
    await next(eve.socket, "join_ticket_error");
    const outsider = await native(server, "8", "ben", "ticket:3");
    assertEquals(outsider.listed, ["ben"]);
    await outsider.client.close();

    eve.socket.emit("join_ticket", { ticketId: "2" });
    await next(eve.socket, "joined_ticket");
    assertEquals((await presenceOf(ben.client, "eve")).action, "join");
    eve.socket.emit("leave_ticket", { ticketId: "2" });
    assertEquals((await presenceOf(ben.client, "eve")).action, "leave");
    eve.socket.emit("join_ticket", { ticketId: "2" });
    assertEquals((await presenceOf(ben.client, "eve")).action, "join");
    eve.socket.disconnect();
    assertEquals((await presenceOf(ben.client, "eve")).action, "leave");

    // A long-polling session that stops polling ends after the ping timeout, and leaves.
    const token = await server.token({ sub: "12", username: "fay", rooms: ["ticket:2"] }, "1h");
    const fay = await pollingSession(server.url, token);
    assertEquals(await fay.post("40"), 200);
    await fay.poll();
    assertEquals(await fay.post('42["join_ticket",{"ticketId":"2"}]'), 200);
    assertEquals((await presenceOf(ben.client, "fay")).action, "join");
    assertEquals((await presenceOf(ben.client, "fay")).action, "leave");
    await ben.client.close();
  });
});

Deno.test("cross-protocol presence: the conversation chat and the service and support chats count; their clients get no presence frames", async () => {
  await withServer(async (server) => {
    for (
      const [path, room, greeting] of [
        ["chat/5", "chat:5", ["connection_established"]],
        ["service-chats/6", "service-chat:6", []],
        ["support-chats/7", "support-chat:7", []],
      ] as const
    ) {
      const ben = await native(server, "8", "ben", room);
      const token = await server.token({ sub: "13", username: "gus", rooms: [room] }, "1h");
      const gus = await TestClient.open(`${server.wsUrl}/ws/${path}/?token=${token}`);
      assertEquals((await presenceOf(ben.client, "gus")).action, "join", path);
      const carol = await native(server, "9", "carol", room);
      assertEquals(carol.listed, ["ben", "carol", "gus"], path);
      await carol.client.close();
      await gus.close();
      assertEquals((await presenceOf(ben.client, "gus")).action, "leave", path);
      assertEquals(gus.frames.map((f) => (f as Frame).type), [...greeting], path);
      await ben.client.close();
    }
  });
});

Deno.test("cross-protocol presence: a ticket socket whose connection is cut without a close leaves, no ghost", async () => {
  await withServer(async (server) => {
    const ben = await native(server, "8", "ben", "ticket:8");
    const token = await server.token({ sub: "7", username: "ann", rooms: ["ticket:8"] }, "1h");
    const { conn } = await rawUpgrade(
      Number(new URL(server.url).port),
      `/ws/ticket/8/?token=${token}`,
    );
    assertEquals((await presenceOf(ben.client, "ann")).action, "join");
    conn.close();
    assertEquals((await presenceOf(ben.client, "ann")).action, "leave");
    const carol = await native(server, "9", "carol", "ticket:8");
    assertEquals(carol.listed, ["ben", "carol"]);
    await carol.client.close();
    await ben.client.close();
  });
});

Deno.test("cross-protocol presence: the ticket socket and Socket.IO sockets of a deleted ticket leave its presence", async () => {
  const admin = "a-long-enough-admin-token-for-tests";
  await withServer(async (server) => {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(server.url, admin, method, path, json);
    const room = { participants: [{ user_id: "7" }, { user_id: "9" }] };
    assertEquals(await api("PUT", "/api/rooms/ticket/9", room), 201);
    const token = await server.token({ sub: "7", username: "ann" }, "1h");
    const tab = await TestClient.open(`${server.wsUrl}/ws/ticket/9/?token=${token}`);
    const phone = await socketIo(server, "7", "ann", []);
    phone.socket.emit("join_ticket", { ticketId: "9" });
    await next(phone.socket, "joined_ticket");
    const carolToken = await server.token({ sub: "9", username: "carol" }, "1h");
    const carol = await TestClient.open(`${server.wsUrl}/ws?token=${carolToken}`);
    await carol.next((f) => f.type === "welcome");
    carol.send({ type: "join", room: "ticket:9" });
    const before = await carol.next((f) => f.type === "joined");
    assertEquals((before.presence as Frame[]).map((u) => u.username).sort(), ["ann", "carol"]);

    const removed = carol.next((f) => f.type === "removed");
    const evicted = next(phone.socket, "join_ticket_error");
    assertEquals(await api("DELETE", "/api/rooms/ticket/9"), 204);
    assertEquals((await tab.closed).code, 4004);
    await Promise.all([removed, evicted]);
    // The ticket made again: none of Ann's sockets is in it, and the list says so.
    assertEquals(await api("PUT", "/api/rooms/ticket/9", room), 201);
    carol.send({ type: "join", room: "ticket:9" });
    const after = await carol.next((f) => f.type === "joined");
    assertEquals((after.presence as Frame[]).map((u) => u.username), ["carol"]);
    phone.socket.disconnect();
    await carol.close();
  }, { ADMIN_TOKEN: admin });
});
