/** The Socket.IO ticket chat (shared/specs/socketio-ticket-chat.md) with the official client. */

import { UNAUTHENTICATED_LARGE_MESSAGES } from "../src/dialects/socketio_ticket/socketio_ticket.ts";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import type { AppOverrides } from "../main.ts";
import { directoryWith } from "./api_helpers.ts";
import { assert, assertEquals, assertMatch, delay, within } from "./assert.ts";
import {
  adminCall,
  eventually,
  pollingSession,
  sendRawText,
  silentPeer,
  startTestServer,
  storeMessages,
  TestClient,
  type TestServer,
  throttledLink,
} from "./helpers.ts";

type Payload = Record<string, unknown>;

/** Resolves with the first argument of the next `event`, or fails after `ms`. */
function next<T = Payload>(socket: ClientSocket, event: string, ms = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    socket.once(event, (arg: T) => {
      clearTimeout(timer);
      resolve(arg);
    });
  });
}

async function withChat(
  fn: (s: TestServer, client: (o?: object) => ClientSocket) => Promise<void>,
  env = {},
  overrides: AppOverrides = {},
) {
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "500",
    SOCKETIO_PING_TIMEOUT_MS: "500",
    ...env,
  }, overrides);
  const clients: ClientSocket[] = [];
  try {
    await fn(server, (options = {}) => {
      const socket = connect(server.url, {
        forceNew: true,
        reconnectionDelay: 50,
        reconnectionDelayMax: 200,
        ...options,
      });
      clients.push(socket);
      return socket;
    });
  } finally {
    for (const c of clients) c.disconnect();
    await server.close();
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Overrides whose directory looks a user up only after `wait(id)` ms (a busy directory). */
function slowDirectory(wait: (id: string) => number): AppOverrides {
  return {
    directory: directoryWith("getUser", (getUser) => async (id) => {
      await delay(wait(String(id)));
      return await getUser(id);
    }),
  };
}

async function authenticated(socket: ClientSocket, token: string): Promise<Payload> {
  if (!socket.connected) await next(socket, "connect");
  socket.emit("authenticate", { token });
  return await next(socket, "authenticated");
}

async function joined(socket: ClientSocket, ticketId: string) {
  socket.emit("join_ticket", { ticketId });
  assertEquals(await next(socket, "joined_ticket"), { ticketId });
}

/** A WebSocket client of user 1, authenticated by its handshake and joined to `ticketId`. */
async function inTicket(
  server: TestServer,
  client: (o?: object) => ClientSocket,
  ticketId: string,
): Promise<ClientSocket> {
  const socket = client({
    auth: { token: await server.token({ sub: "1", rooms: [`ticket:${ticketId}`] }) },
    transports: ["websocket"],
  });
  await next(socket, "authenticated");
  await joined(socket, ticketId);
  return socket;
}

Deno.test("socket.io ticket chat: the document's whole flow for two users, polling+upgrade and websocket", async () => {
  await withChat(async (server, client) => {
    const aliceToken = await server.token({
      sub: "64a1",
      name: "Alice Client",
      email: "alice@example.com",
      company: "Acme",
      role: "client",
      rooms: ["ticket:t-1"],
    });
    const bobToken = await server.token({
      sub: "9",
      name: "Bob Admin",
      email: "bob@example.com",
      role: "super_admin",
    });
    const alice = client();
    const bob = client({ transports: ["websocket"] });
    assertEquals(await authenticated(alice, aliceToken), {
      user: { id: "64a1", name: "Alice Client", email: "alice@example.com", type: "Client" },
    });
    // A numeric id is a string here, as the Mongo ids of the source system are everywhere.
    assertEquals(await authenticated(bob, bobToken), {
      user: { id: "9", name: "Bob Admin", email: "bob@example.com", type: "SuperAdmin" },
    });
    await joined(alice, "t-1");
    await joined(bob, "t-1");
    // The default client starts on polling and moves to websocket.
    const deadline = Date.now() + 3000;
    while (alice.io.engine.transport.name !== "websocket" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(alice.io.engine.transport.name, "websocket");

    const arrivals = [alice, bob].map((socket) => next<{ data: Payload }>(socket, "new_message"));
    alice.emit("send_message", { ticketId: "t-1", message: "Hello, this is a text message!" });
    for (const arrival of arrivals) {
      const { data } = await arrival;
      assertEquals(data.ticketId, "t-1");
      assertEquals(data.message, "Hello, this is a text message!");
      assertEquals(data.sender, {
        _id: "64a1",
        name: "Alice Client",
        email: "alice@example.com",
        company: "Acme",
      });
      assertEquals(data.senderModel, "Client");
      assertEquals(data.attachments, []);
      assertMatch(data._id as string, /^[0-9a-f]{24}$/);
      assertMatch(data.createdAt as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }

    const jpeg = new Uint8Array(3000).map((_, i) => i % 256);
    jpeg.set([0xff, 0xd8, 0xff, 0xe0]);
    const fileArrivals = [alice, bob].map((socket) =>
      next<{ data: Payload }>(socket, "new_message")
    );
    bob.emit("send_message", {
      ticketId: "t-1",
      message: "",
      attachments: [
        { name: "photo.jpg", type: "image/jpeg", data: jpeg.toBase64() },
        { name: "notes.txt", type: "text/plain", data: btoa("hello") },
      ],
    });
    const { data } = await fileArrivals[0];
    assertEquals(data.senderModel, "SuperAdmin");
    const [photo, notes] = data.attachments as Payload[];
    // Stored as the document's "unique-filename.jpg": not guessable from the client's name.
    assertEquals([photo.originalname, photo.mimetype, photo.size], [
      "photo.jpg",
      "image/jpeg",
      3000,
    ]);
    assertMatch(photo.filename as string, /^[0-9a-f]{32}\.jpg$/);
    assertMatch(notes.filename as string, /^[0-9a-f]{32}\.txt$/);
    assertEquals(photo.path, `/uploads/chat/${photo.filename}`);
    assertEquals(photo.url, `${server.url}/uploads/chat/${photo.filename}`);
    const guessed = await fetch(`${server.url}/uploads/chat/photo.jpg`);
    await guessed.body?.cancel();
    assertEquals(guessed.status, 404);
    assertMatch(photo.uploadedAt as string, /Z$/);
    assertEquals(new Uint8Array(await (await fetch(photo.url as string)).arrayBuffer()), jpeg);
    assertEquals(await (await fetch(notes.url as string)).text(), "hello");
    assertEquals((await fileArrivals[1]).data, data);

    alice.emit("get_messages", { ticketId: "t-1" });
    const loaded = await next<{ messages: Payload[] }>(alice, "messages_loaded");
    assertEquals(loaded.messages.map((m) => m.message), ["Hello, this is a text message!", ""]);
    alice.emit("get_messages", { ticketId: "t-1", limit: 1 });
    assertEquals(
      (await next<{ messages: Payload[] }>(alice, "messages_loaded")).messages.length,
      1,
    );

    alice.emit("leave_ticket", { ticketId: "t-1" });
    await new Promise((r) => setTimeout(r, 100));
    const strayWait = next(alice, "new_message", 300).catch(() => null);
    const own = next(bob, "new_message");
    bob.emit("send_message", { ticketId: "t-1", message: "after leave" });
    await own;
    const stray = await strayWait;
    assertEquals(stray, null);
  });
});

Deno.test("socket.io ticket chat: every documented error text", async () => {
  await withChat(async (server, client) => {
    const socket = client();
    await next(socket, "connect");
    socket.emit("send_message", { ticketId: "1", message: "hi" });
    assertEquals(await next(socket, "send_message_error"), { message: "User not authenticated" });
    socket.emit("join_ticket", { ticketId: "1" });
    assertEquals(await next(socket, "join_ticket_error"), { message: "User not authenticated" });
    socket.emit("authenticate", { token: "not-a-token" });
    assertEquals(await next(socket, "authentication_error"), { message: "Invalid token" });
    socket.emit("authenticate", {});
    assertEquals(await next(socket, "authentication_error"), { message: "Token is required" });

    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:1"] }));
    socket.emit("join_ticket", { ticketId: "2" });
    assertEquals(await next(socket, "join_ticket_error"), {
      message: "Access denied to this ticket",
    });
    socket.emit("get_messages", { ticketId: "2" });
    assertEquals(await next(socket, "messages_error"), { message: "Access denied to this ticket" });
    socket.emit("send_message", { ticketId: "2", message: "x" });
    assertEquals(await next(socket, "send_message_error"), {
      message: "Access denied to this ticket",
    });
    socket.emit("send_message", { ticketId: "1", message: "", attachments: [] });
    assertEquals(await next(socket, "send_message_error"), {
      message: "Message or at least one file is required",
    });
    socket.emit("send_message", {
      ticketId: "1",
      attachments: [{
        name: "big.bin",
        type: "application/octet-stream",
        data: new Uint8Array(2049).toBase64(),
      }],
    });
    assertMatch(
      (await next<Payload>(socket, "send_message_error")).message as string,
      /too large.*2048 bytes/,
    );
    socket.emit("send_message", { ticketId: "1", attachments: [{ name: "x.bin", data: "%%%" }] });
    assertMatch(
      (await next<Payload>(socket, "send_message_error")).message as string,
      /not valid base64/,
    );
    // Malformed attachments are refused, not stored as empty files or dropped beside the text.
    for (
      const [attachments, text] of [
        [
          [{ name: "a.png", type: "image/png" }],
          'Each attachment needs its "data" (bytes or base64)',
        ],
        ["nope", '"attachments" must be a list of {name, data}'],
        [["a.png"], 'Each entry of "attachments" must be {name, data}'],
      ] as const
    ) {
      socket.emit("send_message", { ticketId: "1", message: "with files", attachments });
      assertEquals(await next(socket, "send_message_error"), { message: text });
    }
    // Still connected and working; an empty file (a zero-byte upload's base64) is a file.
    await joined(socket, "1");
    const arrival = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: "1", message: "fine" });
    assertEquals((await arrival).data.message, "fine");
    const empty = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: "1", attachments: [{ name: "empty.txt", data: "" }] });
    const [file] = (await empty).data.attachments as Payload[];
    assertEquals([file.originalname, file.size], ["empty.txt", 0]);
    const history = next<{ messages: Payload[] }>(socket, "messages_loaded");
    socket.emit("get_messages", { ticketId: "1" });
    assertEquals((await history).messages.map((m) => m.message), ["fine", ""]);
  }, { MAX_FILE_BYTES: "2048" });
});

Deno.test("socket.io ticket chat: acks return the stored message; a retried clientId is stored once", async () => {
  await withChat(async (server, client) => {
    const socket = client({
      auth: { token: await server.token({ sub: "1", rooms: ["ticket:5"] }) },
    });
    await next(socket, "authenticated");
    await joined(socket, "5");
    const broadcast = next(socket, "new_message");
    const first = await socket.timeout(3000).emitWithAck("send_message", {
      ticketId: "5",
      message: "at least once",
      clientId: "abc",
    });
    assertEquals(first.message, "at least once");
    assertEquals((await broadcast).data, first);
    // The retry gets the original back, by its ack and as a `new_message` to this socket alone
    // (the document's client marks a send as sent when its `new_message` comes).
    const other = client({
      auth: { token: await server.token({ sub: "2", rooms: ["ticket:5"] }) },
    });
    await next(other, "authenticated");
    await joined(other, "5");
    const again = next<{ data: Payload }>(socket, "new_message");
    const none = next(other, "new_message", 300).catch(() => null);
    const retry = await socket.timeout(3000).emitWithAck("send_message", {
      ticketId: "5",
      message: "at least once",
      clientId: "abc",
    });
    assertEquals(retry._id, first._id);
    assertEquals((await again).data, first);
    assertEquals(await none, null);
    const failed = await socket.timeout(3000).emitWithAck("send_message", { ticketId: "5" });
    assertEquals(failed, { error: "Message or at least one file is required" });
    // Ids that differ only past 128 characters must not be taken for one: the long one is refused.
    const bad: [string, unknown][] = [["clientId", "x".repeat(129)], ["client_id", { id: 1 }]];
    for (const [field, value] of bad) {
      const refused = await socket.timeout(3000).emitWithAck("send_message", {
        ticketId: "5",
        message: "long id",
        [field]: value,
      });
      assertEquals(refused, {
        error: `Field "${field}" must be a string of at most 128 characters`,
      });
    }
    // A number is its text (the reference's string schema casts it); an object is refused,
    // not dropped while the file beside it is stored.
    const numeric = await socket.timeout(3000).emitWithAck("send_message", {
      ticketId: "5",
      message: 12345,
    });
    assertEquals(numeric.message, "12345");
    const file = [{ name: "a.txt", data: new TextEncoder().encode("a").toBase64() }];
    const object = await socket.timeout(3000).emitWithAck("send_message", {
      ticketId: "5",
      message: { text: "hi" },
      attachments: file,
    });
    assertEquals(object, { error: '"message" must be a string' });
    const history = await socket.timeout(3000).emitWithAck("get_messages", { ticketId: "5" });
    assertEquals((history.messages as Payload[]).map((m) => m.message), [
      "at least once",
      "12345",
    ]);
  });
});

Deno.test("socket.io ticket chat: a polling-only client, once signed in, may send several files in one send_message too", async () => {
  await withChat(async (server, client) => {
    // Clients behind a proxy that blocks WebSocket.
    const socket = client({ transports: ["polling"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:16"] }));
    await joined(socket, "16");
    const files = [1, 2].map((k) => new Uint8Array(6 * 1024 * 1024).map((_, i) => (i * k) % 249));
    const disconnected = next(socket, "disconnect", 30_000).then((r) => `disconnect: ${r}`);
    const sent = socket.timeout(30_000).emitWithAck("send_message", {
      ticketId: "16",
      message: "two over polling",
      attachments: files.map((f, i) => ({ name: `p${i}.bin`, data: f.toBase64() })),
    });
    const stored = await Promise.race([sent, disconnected]);
    assert(typeof stored === "object", String(stored));
    const attachments = (stored as Payload).attachments as Payload[];
    assertEquals(attachments.map((a) => a.size), files.map((f) => f.length));
    assertEquals(socket.io.engine.transport.name, "polling");
  });
});

Deno.test("socket.io ticket chat: over WebSocket one send_message may carry several files of up to 10 MiB each, as the document's example sends every selected file", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "6");
    // Three files of 9 MiB: 36 MiB of base64 in one event, over any one file's frame.
    const files = [1, 2, 3].map((k) =>
      new Uint8Array(9 * 1024 * 1024).map((_, i) => (i * k) % 251)
    );
    const disconnected = next(socket, "disconnect", 20_000).then((reason) =>
      `disconnect: ${reason}`
    );
    const sent = socket.timeout(20_000).emitWithAck("send_message", {
      ticketId: "6",
      message: "three at once",
      attachments: files.map((f, i) => ({
        name: `part${i}.bin`,
        type: "application/octet-stream",
        data: f.toBase64(),
      })),
    });
    const stored = await Promise.race([sent, disconnected]);
    assert(typeof stored === "object", String(stored));
    const attachments = (stored as Payload).attachments as Payload[];
    assertEquals(attachments.map((a) => a.size), files.map((f) => f.length));
    for (const [i, a] of attachments.entries()) {
      const res = await fetch(a.url as string);
      assertEquals(new Uint8Array(await res.arrayBuffer()), files[i]);
    }
    // One file over the limit among them is still refused by name, and the socket stays.
    const refused = await socket.timeout(20_000).emitWithAck("send_message", {
      ticketId: "6",
      attachments: [
        { name: "ok.bin", data: new Uint8Array(10).toBase64() },
        { name: "big.bin", data: new Uint8Array(10 * 1024 * 1024 + 1).toBase64() },
      ],
    });
    assertMatch(refused.error, /^File is too large/);
    assert(socket.connected);
    // 36 MiB in one event on a loaded machine: the test's half-second pings would end the
    // session for a busy moment, which is not what this test is about.
  }, { SOCKETIO_PING_INTERVAL_MS: "5000", SOCKETIO_PING_TIMEOUT_MS: "5000" });
});

Deno.test("socket.io ticket chat: an event over the size limit is answered on send_message_error and its ack before the session ends", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "8");
    const error = next<Payload>(socket, "send_message_error");
    const disconnected = next<string>(socket, "disconnect");
    const acked = new Promise((resolve) =>
      socket.emit("send_message", { ticketId: "8", message: "x".repeat(200_000) }, resolve)
    );
    const { message } = await error;
    assertMatch(message as string, /^Message is too large: 2000\d\d bytes, the limit is \d+$/);
    assertEquals(await acked, { error: message });
    // The session ends as Node's does past its limit; the client reconnects and carries on.
    assertEquals(await disconnected, "transport close");
    await next(socket, "authenticated");
    await joined(socket, "8");
    const stored = await socket.timeout(3000).emitWithAck("send_message", {
      ticketId: "8",
      message: "after",
    });
    assertEquals(stored.message, "after");
    // A file sent as bytes goes in a binary frame of its own, after the event's start.
    const binaryError = next<Payload>(socket, "send_message_error");
    const binaryAck = new Promise((resolve) =>
      socket.emit("send_message", {
        ticketId: "8",
        attachments: [{ name: "big.bin", data: new Uint8Array(200_000) }],
      }, resolve)
    );
    assertEquals(
      (await binaryError).message,
      "Message is too large: 200000 bytes, the limit is " +
        /the limit is (\d+)$/.exec(message as string)![1],
    );
    assertEquals(await binaryAck, { error: (await binaryError).message });
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assertMatch(metrics, /chat_errors_total\{code="frame_too_large"\} 2/);
  }, { MAX_FILE_BYTES: "2048" });
});

Deno.test("socket.io ticket chat: a large event before authenticating ends the session, one past UNAUTHENTICATED_LARGE_MESSAGES at once; after it, over either way to WebSocket, the same event is stored", async () => {
  await withChat(async (server, client) => {
    const big = [{ name: "big.bin", data: new Uint8Array(100_000) }];
    const stranger = client({ transports: ["websocket"] });
    await next(stranger, "connect");
    const error = next<Payload>(stranger, "send_message_error");
    const disconnected = next<string>(stranger, "disconnect");
    const acked = new Promise((resolve) =>
      stranger.emit("send_message", { ticketId: "8", attachments: big }, resolve)
    );
    assertEquals(await error, { message: "User not authenticated" });
    assertEquals(await acked, { error: "User not authenticated" });
    assertEquals(await disconnected, "transport close");
    stranger.disconnect();
    // UNAUTHENTICATED_LARGE_MESSAGES (a frame each) wait for an authenticate; one more ends the
    // session at once. One named like a property every object has is no event with an error event
    // of its own: only its ack is answered (a packet naming no event was a parse error to the
    // client).
    const odd = client({ transports: ["websocket"] });
    await next(odd, "connect");
    const oddEnd = next<string>(odd, "disconnect");
    const started = performance.now();
    for (let i = 0; i < UNAUTHENTICATED_LARGE_MESSAGES; i++) {
      odd.emit("send_message", { ticketId: "8", attachments: big });
    }
    const oddAck = odd.timeout(3000).emitWithAck("constructor", { attachments: big });
    assertEquals(await oddAck, { error: "User not authenticated" });
    assertEquals(await oddEnd, "transport close");
    assert(performance.now() - started < 1500, "one more large event ended the session at once");
    odd.disconnect();
    const token = await server.token({ sub: "1", rooms: ["ticket:8"] });
    const upgraded = (socket: ClientSocket) =>
      eventually(() => socket.io.engine?.transport.name === "websocket", 5000, "the upgrade");
    // Authenticated while still polling, then upgraded; and upgraded first, then authenticated.
    const early = client();
    await authenticated(early, token);
    await upgraded(early);
    const late = client();
    await next(late, "connect");
    await upgraded(late);
    await authenticated(late, token);
    for (const socket of [early, late]) {
      await joined(socket, "8");
      const stored = await socket.timeout(5000).emitWithAck("send_message", {
        ticketId: "8",
        attachments: big,
      });
      assertEquals((stored.attachments as Payload[])[0].size, 100_000);
    }
  });
});

Deno.test("socket.io ticket chat: one socket's messages are stored in the order it sent them, a file's included", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "6");
    const seen: string[] = [];
    socket.on("new_message", (m: Payload) => seen.push((m.data as Payload).message as string));
    // The file takes longer to store than the text behind it; the text must still come second.
    const acks = Promise.all([
      socket.timeout(5000).emitWithAck("send_message", {
        ticketId: "6",
        message: "first, with a file",
        attachments: [{ name: "big.bin", data: new Uint8Array(4 * 1024 * 1024).fill(7) }],
      }),
      socket.timeout(5000).emitWithAck("send_message", { ticketId: "6", message: "second" }),
      socket.timeout(5000).emitWithAck("send_message", { ticketId: "6", message: "third" }),
    ]);
    const [first, second, third] = await acks;
    assertEquals([first.message, second.message, third.message], [
      "first, with a file",
      "second",
      "third",
    ]);
    await eventually(() => seen.length === 3);
    assertEquals(seen, ["first, with a file", "second", "third"]);
    const history = await socket.timeout(3000).emitWithAck("get_messages", { ticketId: "6" });
    assertEquals((history.messages as Payload[]).map((m) => m.message), seen);
  });
});

Deno.test("socket.io ticket chat: typing goes to the others in the ticket and expires", async () => {
  await withChat(async (server, client) => {
    const a = client({
      auth: { token: await server.token({ sub: "1", name: "Ann", rooms: ["ticket:7"] }) },
    });
    const b = client({
      query: { token: await server.token({ sub: "2", name: "Ben", rooms: ["ticket:7"] }) },
    });
    await Promise.all([next(a, "authenticated"), next(b, "authenticated")]);
    await joined(a, "7");
    await joined(b, "7");
    const selfTyping = next(a, "user_typing", 1500).catch(() => null);
    let typing = next(b, "user_typing");
    a.emit("typing_start", { ticketId: "7" });
    assertEquals(await typing, { userId: "1", userName: "Ann", ticketId: "7" });
    let stopped = next(b, "user_stopped_typing");
    a.emit("typing_stop", { ticketId: "7" });
    assertEquals(await stopped, { userId: "1", userName: "Ann", ticketId: "7" });
    typing = next(b, "user_typing");
    a.emit("typing_start", { ticketId: "7" });
    await typing;
    // Never stopped: it ends by itself.
    stopped = next(b, "user_stopped_typing", 5000);
    assertEquals(await stopped, { userId: "1", userName: "Ann", ticketId: "7" });
    assertEquals(await selfTyping, null);
  }, { TYPING_TIMEOUT_SECONDS: "3" });
});

Deno.test("socket.io ticket chat: typing in a ticket the socket never joined ends with its disconnect", async () => {
  await withChat(async (server, client) => {
    const a = client({
      auth: { token: await server.token({ sub: "1", name: "Ann", rooms: ["ticket:7"] }) },
    });
    const b = client({
      auth: { token: await server.token({ sub: "2", name: "Ben", rooms: ["ticket:7"] }) },
    });
    await Promise.all([next(a, "authenticated"), next(b, "authenticated")]);
    await joined(b, "7");
    const typing = next(b, "user_typing");
    a.emit("typing_start", { ticketId: "7" });
    assertEquals(await typing, { userId: "1", userName: "Ann", ticketId: "7" });
    // Well before TYPING_TIMEOUT_SECONDS (5 s).
    const stopped = next(b, "user_stopped_typing", 2000);
    a.disconnect();
    assertEquals(await stopped, { userId: "1", userName: "Ann", ticketId: "7" });
  });
});

Deno.test("socket.io ticket chat: one tab leaving does not stop the typing shown from another", async () => {
  await withChat(async (server, client) => {
    const tab = async () => {
      const socket = client({
        auth: { token: await server.token({ sub: "1", name: "Ann", rooms: ["ticket:7"] }) },
        transports: ["websocket"],
      });
      await next(socket, "authenticated");
      await joined(socket, "7");
      return socket;
    };
    const [typingTab, otherTab] = [await tab(), await tab()];
    const b = client({
      auth: { token: await server.token({ sub: "2", name: "Ben", rooms: ["ticket:7"] }) },
    });
    await next(b, "authenticated");
    await joined(b, "7");
    const seen: string[] = [];
    b.onAny((event: string) => seen.push(event));
    typingTab.emit("typing_start", { ticketId: "7" });
    await eventually(() => seen.includes("user_typing"));
    // The other tab leaves; its join afterwards is answered only once the leave has run.
    otherTab.emit("leave_ticket", { ticketId: "7" });
    await joined(otherTab, "7");
    const marker = next(b, "new_message");
    typingTab.emit("send_message", { ticketId: "7", message: "still typing" });
    await marker;
    assertEquals(seen, ["user_typing", "new_message"]);
    // The typing tab going away does end it, long before the typing timeout.
    const stopped = next(b, "user_stopped_typing", 3000);
    typingTab.disconnect();
    assertEquals(await stopped, { userId: "1", userName: "Ann", ticketId: "7" });
  }, { TYPING_TIMEOUT_SECONDS: "30" });
});

Deno.test("socket.io ticket chat: a bad handshake token never refuses the connection; the authenticate event still works", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "3", name: "Cy", rooms: ["ticket:4"] });
    // Sent on purpose (our addition to the document): connected, told, and free to authenticate.
    for (const options of [{ auth: { token: "garbage" } }, { query: { token: "garbage" } }]) {
      const socket = client({ ...options, reconnection: false });
      const told = next(socket, "authentication_error");
      await next(socket, "connect");
      assertEquals(await told, { message: "Invalid token" });
      assertEquals(((await authenticated(socket, token)).user as Payload).id, "3");
      await joined(socket, "4");
    }
    // A stale cookie left by another app on the host: passed over without a word.
    const stale = client({
      extraHeaders: { cookie: "access_token=expired.or.foreign" },
      transports: ["websocket"],
      reconnection: false,
    });
    const errors: unknown[] = [];
    stale.on("authentication_error", (e: unknown) => errors.push(e));
    stale.on("connect_error", (e: unknown) => errors.push(e));
    await next(stale, "connect");
    await authenticated(stale, token);
    await joined(stale, "4");
    assertEquals(errors, []);
  });
});

Deno.test("socket.io ticket chat: connections that never authenticate are bounded: past the cap handshakes get 503, and each is closed after the auth timeout", async () => {
  await withChat(async (server, client) => {
    const handshake = () => fetch(`${server.url}/socket.io/?EIO=4&transport=polling`);
    // Two raw sessions that never join, and one client that joins but never authenticates.
    const sids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await handshake();
      assertEquals(res.status, 200);
      sids.push(JSON.parse((await res.text()).slice(1)).sid);
    }
    const quiet = client({ transports: ["websocket"] });
    await next(quiet, "connect");
    const refused = await handshake();
    assertEquals(refused.status, 503);
    assertEquals(refused.headers.get("retry-after"), "1");
    assertEquals(await refused.json(), {
      code: 4,
      message: "Server busy: too many connections waiting to authenticate; try again shortly",
    });
    // Authenticated connections do not count, and are let in once one waiting closes.
    const closeSession = (sid: string) =>
      fetch(`${server.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
        method: "POST",
        body: "1",
      }).then((r) => r.text());
    await closeSession(sids[0]);
    const token = await server.token({ sub: "3", name: "Cy", rooms: ["ticket:4"] });
    const member = client({ auth: { token }, transports: ["websocket"] });
    await next(member, "authenticated");
    const again = client({ transports: ["websocket"] });
    await next(again, "connect");
    assertEquals((await handshake()).status, 503);
    // The quiet client is closed like a lost transport, so it reconnects by itself, and can
    // authenticate then; the signed-in one stays.
    const reason = await next<string>(quiet, "disconnect", 5000);
    assertEquals(reason, "transport close");
    await next(quiet, "connect", 5000);
    await authenticated(quiet, token);
    assert(member.connected);
    await closeSession(sids[1]);
  }, {
    SOCKETIO_MAX_UNAUTHENTICATED: "3",
    SOCKETIO_AUTH_TIMEOUT_MS: "1500",
    // The raw sessions never answer pings: they must outlive the test.
    SOCKETIO_PING_INTERVAL_MS: "20000",
    SOCKETIO_PING_TIMEOUT_MS: "20000",
  });
});

/** A raw long-polling session joined to `/`, driven as python-engineio drives one. */
async function rawPolling(server: TestServer, handshake?: RequestInit) {
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const sid = JSON.parse((await (await fetch(base, handshake)).text()).slice(1)).sid as string;
  const url = `${base}&sid=${sid}`;
  const get = async () => {
    const res = await fetch(url);
    return { status: res.status, text: await res.text() };
  };
  const post = async (body: string) => {
    const res = await fetch(url, { method: "POST", body });
    await res.body?.cancel();
    return res.status;
  };
  assertEquals(await post("40"), 200);
  assertMatch((await get()).text, /^40/);
  return { get, post };
}

Deno.test("socket.io ticket chat: a polling session the server ends (its auth timeout) gets no Engine.IO close packet, which python-socketio takes for a deliberate close and never reconnects from: its parked GET gets a noop, the next one 400, and socket.io-client reconnects too", async () => {
  await withChat(async (server, client) => {
    const session = await rawPolling(server);
    // python-engineio's read loop: one GET at a time, parked until the server has something.
    assertEquals(await session.get(), { status: 200, text: "6" });
    // A status that is not 2xx is a lost transport to python-engineio: python-socketio reconnects.
    assertEquals((await session.get()).status, 400);
    const quiet = client({ transports: ["polling"] });
    await next(quiet, "connect");
    assertEquals(await next<string>(quiet, "disconnect", 5000), "transport error");
    assert(quiet.active, "the client gave up reconnecting");
    await next(quiet, "connect", 5000);
  }, {
    SOCKETIO_AUTH_TIMEOUT_MS: "1000",
    // No ping in the answers asserted above.
    SOCKETIO_PING_INTERVAL_MS: "20000",
    SOCKETIO_PING_TIMEOUT_MS: "20000",
  });
});

Deno.test("socket.io ticket chat: a server stopping answers a signed-in polling client's parked GET with a noop, not an Engine.IO close packet, so that python-socketio reconnects to the server that replaces it", async () => {
  const server = await startTestServer({ SOCKETIO_PING_INTERVAL_MS: "20000" });
  try {
    const session = await rawPolling(server);
    const token = await server.token({ sub: "1", username: "alice", rooms: ["ticket:*"] });
    assertEquals(await session.post(`42["authenticate",{"token":"${token}"}]`), 200);
    assertMatch((await session.get()).text, /"authenticated"/);
    const parked = session.get();
    await delay(100);
    const stopped = server.close();
    assertEquals(await parked, { status: 200, text: "6" });
    await stopped;
  } finally {
    await server.close();
  }
});

Deno.test("socket.io ticket chat: a polling bot that rejoins 20 tickets after its authenticate gets the 41 answers in polling answers of at most 16 packets, which python-engineio decodes (it drops a larger one whole, and the connection), every one once", async () => {
  await withChat(async (server) => {
    // Told by the User-Agent of requests, which python-engineio's Client polls with.
    const session = await rawPolling(server, {
      headers: { "user-agent": "python-requests/2.28.1" },
    });
    const token = await server.token({ sub: "52", username: "supportbot", rooms: ["ticket:*"] });
    // python-socketio's write loop sends what was emitted in one POST, its read loop GETs again
    // once it has handled the previous answer.
    const emitted = [`42["authenticate",{"token":"${token}"}]`];
    const expected: unknown[] = [["authenticated", null]];
    for (let i = 0; i < 20; i++) {
      emitted.push(
        `42["join_ticket",{"ticketId":"t${i}"}]`,
        `42["get_messages",{"ticketId":"t${i}"}]`,
      );
      expected.push(["joined_ticket", `t${i}`], ["messages_loaded", `t${i}`]);
    }
    const parked = session.get();
    await delay(20);
    assertEquals(await session.post(emitted.join("\x1e")), 200);
    let answer = await parked;
    const sizes: number[] = [];
    const events: unknown[] = [];
    for (let gets = 0; events.length < expected.length && gets < 100; gets++) {
      if (gets > 0) {
        // The client handles an answer, and crosses the network, before its next GET.
        await delay(250);
        answer = await session.get();
      }
      assertEquals(answer.status, 200);
      const packets = answer.text.split("\x1e");
      sizes.push(packets.length);
      for (const packet of packets.filter((p) => p.startsWith("42"))) {
        const [event, data] = JSON.parse(packet.slice(2));
        events.push([event, data?.ticketId ?? null]);
      }
    }
    // How many wait at each GET depends on the machine's speed: the cap itself, with more
    // waiting than it holds, is engine_io_protocol_test.ts's.
    assert(sizes.every((n) => n <= 16), `packets per answer: ${sizes}`);
    // Each once; a ticket's history may be read before its join is done (the engine's order is
    // engine_io_protocol_test.ts's).
    const sorted = (list: unknown[]) => list.map((e) => JSON.stringify(e)).sort();
    assertEquals(sorted(events), sorted(expected));
  }, { SOCKETIO_PING_INTERVAL_MS: "20000", SOCKETIO_PING_TIMEOUT_MS: "20000" });
});

Deno.test("socket.io ticket chat: a messages_loaded whose messages come to 1 MiB is cut so that its whole WebSocket frame is no larger than 1 MiB, python websockets' default max_size (a larger one it closes with 1009)", async () => {
  await withChat(async (server) => {
    const MIB = 1024 * 1024;
    const utf8 = (text: string) => new TextEncoder().encode(text).length;
    await storeMessages(server, "ticket:77", 1, () => "probe");
    const ws = new WebSocket(`${server.wsUrl}/socket.io/?EIO=4&transport=websocket`);
    const frames: string[] = [];
    const waiting: ((frame: string) => void)[] = [];
    ws.onmessage = (e) => (waiting.shift() ?? ((f: string) => frames.push(f)))(String(e.data));
    const frame = (start: string) =>
      within(
        (async () => {
          for (;;) {
            const next = frames.shift() ?? await new Promise<string>((r) => waiting.push(r));
            if (next.startsWith(start)) return next;
          }
        })(),
        `a frame starting ${start}`,
        10_000,
      );
    await frame("0");
    ws.send("40");
    await frame("40");
    const token = await server.token({ sub: "1", rooms: ["ticket:77"] });
    ws.send(`42["authenticate",{"token":"${token}"}]`);
    await frame('42["authenticated"');
    ws.send('42["join_ticket",{"ticketId":"77"}]');
    await frame('42["joined_ticket"');
    ws.send('42["get_messages",{"ticketId":"77","limit":1}]');
    const one = JSON.parse((await frame('42["messages_loaded"')).slice(2))[1];
    // A message's rendering besides its body; bodies whose renderings, the probe's with them, come
    // to exactly 1 MiB.
    const overhead = utf8(JSON.stringify(one.messages[0])) - "probe".length;
    const bodies: string[] = [];
    for (let total = overhead + "probe".length; total < MIB;) {
      const body = Math.min(19_000, MIB - total - overhead);
      bodies.push("y".repeat(body));
      total += overhead + body;
    }
    await storeMessages(server, "ticket:77", bodies.length, (i) => bodies[i - 1]);
    ws.send('42["get_messages",{"ticketId":"77"}]');
    const loaded = await frame('42["messages_loaded"');
    ws.close();
    assert(utf8(loaded) <= MIB, `a frame of ${utf8(loaded)} bytes`);
    const page = JSON.parse(loaded.slice(2))[1];
    // The newest that fit: only the probe is left out, and said to be.
    assertEquals(page.messages.length, bodies.length);
    assertEquals(page.hasMore, true);
  }, { SOCKETIO_PING_INTERVAL_MS: "20000", SOCKETIO_PING_TIMEOUT_MS: "20000" });
});

Deno.test("socket.io ticket chat: the browser client is served at /socket.io/socket.io.js (and .min.js), as Node's server serves it", async () => {
  await withChat(async (server) => {
    const res = await fetch(`${server.url}/socket.io/socket.io.js`);
    assertEquals(res.status, 200);
    assertEquals(res.headers.get("content-type"), "application/javascript; charset=utf-8");
    const body = await res.text();
    assertMatch(body.slice(0, 200), /Socket\.IO v4\.\d+\.\d+/);
    assert(body.length > 50_000);
    const head = await fetch(`${server.url}/socket.io/socket.io.js`, { method: "HEAD" });
    assertEquals([head.status, await head.text()], [200, ""]);
    // No version in the URL: revalidated each time, by ETag.
    const etag = res.headers.get("etag")!;
    assertEquals(res.headers.get("cache-control"), "public, max-age=0");
    const again = await fetch(`${server.url}/socket.io/socket.io.js`, {
      headers: { "if-none-match": etag },
    });
    assertEquals([again.status, await again.text()], [304, ""]);
    // At the minified bundle's name too (the same client), for pages that load that one.
    const min = await fetch(`${server.url}/socket.io/socket.io.min.js`);
    assertEquals([min.status, await min.text()], [200, body]);
    // Every other path under /socket.io/ is still Engine.IO's.
    const other = await fetch(`${server.url}/socket.io/socket.io.msgpack.min.js`);
    assertEquals(other.status, 400);
    await other.body?.cancel();
  });
});

Deno.test("socket.io ticket chat: get_messages before a time returns the messages created before it", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:30"] }));
    await joined(socket, "30");
    const sent: Payload[] = [];
    for (let i = 1; i <= 7; i++) {
      const arrival = next<{ data: Payload }>(socket, "new_message");
      socket.emit("send_message", { ticketId: "30", message: `m${i}` });
      sent.push((await arrival).data);
      await new Promise((r) => setTimeout(r, 3));
    }
    const load = async (before: string, limit?: number) => {
      socket.emit("get_messages", { ticketId: "30", before, limit });
      const { messages } = await next<{ messages: Payload[] }>(socket, "messages_loaded");
      return messages.map((m) => m.message);
    };
    assertEquals(await load(sent[4].createdAt as string), ["m1", "m2", "m3", "m4"]);
    assertEquals(await load(sent[4].createdAt as string, 2), ["m3", "m4"]);
    assertEquals(await load(sent[0].createdAt as string), []);
    assertEquals(await load("1970-01-01T00:00:00Z"), []);
    assertEquals(await load("2999-01-01T00:00:00Z", 3), ["m5", "m6", "m7"]);
  });
});

Deno.test("socket.io ticket chat: paging back by the oldest message's _id, or its createdAt in ms, reads every message once and ends; a before it cannot read is refused", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "32");
    const arrivals: Payload[] = [];
    const all = new Promise<void>((resolve) =>
      socket.on("new_message", ({ data }: { data: Payload }) => {
        if (arrivals.push(data) === 12) resolve();
      })
    );
    // In one commit, within one second: one creation second for all their _ids.
    for (let i = 1; i <= 12; i++) socket.emit("send_message", { ticketId: "32", message: `m${i}` });
    await all;
    const load = async (before?: unknown) => {
      const answer = await socket.timeout(5000).emitWithAck("get_messages", {
        ticketId: "32",
        before,
        limit: 5,
      });
      return answer as { messages: Payload[]; hasMore: boolean; error?: string };
    };
    // Created at distinct milliseconds (a room's times increase), so either cursor reads all.
    for (
      const cursor of [(m: Payload) => m._id, (m: Payload) => Date.parse(m.createdAt as string)]
    ) {
      const seen: string[] = [];
      for (let page = await load(), pages = 1;; page = await load(cursor(page.messages[0]))) {
        assert(pages++ <= 5, `paging never ends: ${seen}`);
        seen.unshift(...page.messages.map((m) => m.message as string));
        if (!page.hasMore) break;
      }
      assertEquals(seen, Array.from({ length: 12 }, (_, i) => `m${i + 1}`));
    }
    const message = 'Field "before" must be a message _id, a seq or a time (ISO, or ms since 1970)';
    for (const before of ["abc", true, {}, -1]) {
      const refused = next<Payload>(socket, "messages_error");
      assertEquals((await load(before)).error, message);
      assertEquals((await refused).message, message);
    }
    const unknown = await load("f".repeat(24));
    assertEquals(unknown.error, 'Field "before" names no message of this ticket');
    // Still connected.
    assertEquals((await load()).messages.length, 5);
  });
});

Deno.test("socket.io ticket chat: paging back by an _id that retention has dropped meanwhile ends the paging, as by its time", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "33");
    const send = (text: string) =>
      socket.timeout(5000).emitWithAck("send_message", { ticketId: "33", message: text });
    for (let i = 1; i <= 6; i++) await send(`m${i}`);
    const load = async (before?: unknown) =>
      (await socket.timeout(5000).emitWithAck("get_messages", {
        ticketId: "33",
        before,
        limit: 3,
      })) as { messages: Payload[]; hasMore: boolean; error?: string };
    const first = await load();
    assertEquals([first.messages.map((m) => m.message), first.hasMore], [["m4", "m5", "m6"], true]);
    const oldest = first.messages[0];
    // The ticket goes on: retention drops m1..m4 (a second after their commit).
    for (let i = 7; i <= 10; i++) await send(`m${i}`);
    await eventually(async () =>
      (await load()).messages.length === 3 &&
      (await load(Date.parse(oldest.createdAt as string))).messages.length === 0
    );
    for (const cursor of [Date.parse(oldest.createdAt as string), oldest._id]) {
      const page = await load(cursor);
      assertEquals([page.error, page.messages, page.hasMore], [undefined, [], false]);
    }
  }, { HISTORY_LIMIT: "6" });
});

Deno.test("socket.io ticket chat: paging back by the oldest message's createdAt misses none of the messages sent at once with it", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "31");
    const arrivals: Payload[] = [];
    const all = new Promise<void>((resolve) =>
      socket.on("new_message", ({ data }: { data: Payload }) => {
        if (arrivals.push(data) === 12) resolve();
      })
    );
    // Sent at once, as a client sends what it held while offline: stored in one commit.
    for (let i = 1; i <= 12; i++) socket.emit("send_message", { ticketId: "31", message: `m${i}` });
    await all;
    const load = async (before?: string) => {
      socket.emit("get_messages", { ticketId: "31", before, limit: 5 });
      return (await next<{ messages: Payload[] }>(socket, "messages_loaded")).messages;
    };
    const seen: string[] = [];
    for (let page = await load(); page.length > 0; page = await load(page[0].createdAt as string)) {
      seen.unshift(...page.map((m) => m.message as string));
    }
    assertEquals(seen, Array.from({ length: 12 }, (_, i) => `m${i + 1}`));
  });
});

/**
 * A data directory holding `ticket:<ticketId>`'s history as releases before 2026-11-24 stored
 * it: the messages of one commit (`commits` says how many each stored) shared its time, and
 * their ids named no millisecond.
 */
async function historyOfOlderRelease(
  ticketId: string,
  commits: number[],
  body: (seq: number) => string,
): Promise<string> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-older-history-" });
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  const room = `ticket:${ticketId}`;
  let seq = 0;
  let at = Date.parse("2026-11-20T10:00:00.000Z");
  for (const size of commits) {
    at += 7;
    for (let i = 0; i < size; i++) {
      seq++;
      const second = Math.floor(at / 1000).toString(16).padStart(8, "0");
      await kv.set(["msg", room, seq], {
        room,
        seq,
        id: `${second}a1b2c3d4e5${seq.toString(16).padStart(6, "0")}`,
        sender: { id: "1", username: "ann" },
        body: body(seq),
        attachments: [],
        createdAt: new Date(at).toISOString(),
      });
    }
  }
  await kv.set(["head", room], seq);
  kv.close();
  return dataDir;
}

/** Pages `ticketId` back by each page's oldest `createdAt` (as `time` gives it) to the end. */
async function pagedByTime(
  socket: ClientSocket,
  ticketId: string,
  limit: number | undefined,
  time: (createdAt: string) => unknown,
): Promise<string[]> {
  const seen: string[] = [];
  let before: unknown;
  for (let pages = 1;; pages++) {
    assert(pages <= 100, `paging never ends: ${seen}`);
    const page = (await socket.timeout(5000).emitWithAck("get_messages", {
      ticketId,
      before,
      limit,
    })) as { messages: Payload[]; hasMore: boolean };
    seen.unshift(...page.messages.map((m) => m.message as string));
    if (!page.hasMore) return seen;
    before = time(page.messages[0].createdAt as string);
  }
}

Deno.test("socket.io ticket chat: history an older release stored, its commits' messages sharing one time, paged back by createdAt skips none", async () => {
  const commits = [1, 5, 3, 7, 2, 1, 4, 6, 1];
  const dataDir = await historyOfOlderRelease("34", commits, (seq) => `m${seq}`);
  try {
    await withChat(async (server, client) => {
      const socket = await inTicket(server, client, "34");
      const all = Array.from({ length: 30 }, (_, i) => `m${i + 1}`);
      // In ms since 1970 (as Date.parse gives it) and as the ISO text itself.
      assertEquals(await pagedByTime(socket, "34", 1, Date.parse), all);
      assertEquals(await pagedByTime(socket, "34", 4, (t) => t), all);
      // A page ends where its oldest time does: past `limit` only to keep one time whole.
      const first = (await socket.timeout(5000).emitWithAck("get_messages", {
        ticketId: "34",
        limit: 2,
      })) as { messages: Payload[] };
      assertEquals(first.messages.map((m) => m.message), [
        "m24",
        "m25",
        "m26",
        "m27",
        "m28",
        "m29",
        "m30",
      ]);
    }, { DATA_DIR: dataDir });
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("socket.io ticket chat: a page of an older release's history that reaches the ticket's first message, which shares its time with the next, says there is no more", async () => {
  // The ticket's first commit stored three messages at one time, the next one.
  const dataDir = await historyOfOlderRelease("36", [3, 1], (seq) => `m${seq}`);
  try {
    await withChat(async (server, client) => {
      const socket = await inTicket(server, client, "36");
      const page = async (before?: number) => {
        const { messages, hasMore } = (await socket.timeout(5000).emitWithAck("get_messages", {
          ticketId: "36",
          before,
          limit: 1,
        })) as { messages: Payload[]; hasMore: boolean };
        return { messages, hasMore };
      };
      const newest = await page();
      assertEquals([newest.messages.map((m) => m.message), newest.hasMore], [["m4"], true]);
      // Past `limit` to the first message: nothing is older, as a client's "load more" must hear.
      const oldest = await page(Date.parse(newest.messages[0].createdAt as string));
      assertEquals([oldest.messages.map((m) => m.message), oldest.hasMore], [
        ["m1", "m2", "m3"],
        false,
      ]);
    }, { DATA_DIR: dataDir });
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("socket.io ticket chat: a page of an older release's history cut to its byte budget ends where one time does", async () => {
  // 9 KB rendered each against a budget of 32 KiB (a quarter of SLOW_CONSUMER_BYTES): three fit,
  // and the newest three hold one of a commit of three.
  const commits = [2, 2, 1, 3, 2];
  const dataDir = await historyOfOlderRelease(
    "35",
    commits,
    (seq) => `m${seq} `.padEnd(9_000, "x"),
  );
  try {
    await withChat(async (server, client) => {
      const socket = await inTicket(server, client, "35");
      const seen = await pagedByTime(socket, "35", undefined, Date.parse);
      assertEquals(
        seen.map((m) => m.split(" ")[0]),
        Array.from({ length: 10 }, (_, i) => `m${i + 1}`),
      );
    }, { SLOW_CONSUMER_BYTES: String(128 * 1024), DATA_DIR: dataDir });
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("socket.io ticket chat: a page of an older release's history cut to its byte budget within one time, all it holds, keeps every message that fits", async () => {
  // 9 KB rendered each against a budget of 32 KiB: three of one commit's five fit.
  const dataDir = await historyOfOlderRelease("37", [5], (seq) => `m${seq} `.padEnd(9_000, "x"));
  try {
    await withChat(async (server, client) => {
      const socket = await inTicket(server, client, "37");
      const page = (await socket.timeout(5000).emitWithAck("get_messages", {
        ticketId: "37",
      })) as { messages: Payload[]; hasMore: boolean };
      assertEquals(
        [page.messages.map((m) => (m.message as string).split(" ")[0]), page.hasMore],
        [["m3", "m4", "m5"], true],
      );
    }, { SLOW_CONSUMER_BYTES: String(128 * 1024), DATA_DIR: dataDir });
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("socket.io ticket chat: a WebSocket peer that stops reading is closed as a slow consumer", async () => {
  const server = await startTestServer({
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
    SLOW_CONSUMER_BYTES: String(1024 * 1024),
  });
  let writer: ClientSocket | undefined;
  try {
    const token = await server.token({ sub: "9", rooms: ["ticket:*"] });
    const sockets = server.app.io.of("/").sockets;
    // A raw peer that connects, joins ticket 3 and never reads again (nor answers pings, which
    // take 45 s to matter at the default settings).
    const conn = await silentPeer(
      server.port,
      `/socket.io/?EIO=4&transport=websocket&token=${token}`,
    );
    await sendRawText(conn, "40");
    await sendRawText(conn, '42["join_ticket",{"ticketId":"3"}]');
    await eventually(() => sockets.size === 1, 3000, "the raw peer's socket");
    await new Promise((r) => setTimeout(r, 200));
    writer = connect(server.url, { forceNew: true, transports: ["websocket"] });
    await authenticated(writer, token);
    await joined(writer, "3");
    const message = "y".repeat(19_000);
    let sent = 0;
    // 2,000 messages of 19 kB would be 38 MB for the stalled reader: far past any kernel buffer.
    while (sent < 2000 && sockets.size === 2) {
      await Promise.all(
        Array.from(
          { length: 25 },
          () => writer!.emitWithAck("send_message", { ticketId: "3", message }),
        ),
      );
      sent += 25;
    }
    await eventually(() => sockets.size === 1, 5000, "the slow consumer's eviction");
    assert(sent < 2000, "the stalled reader was never closed");
    assert(writer.connected);
    conn.close();
  } finally {
    writer?.disconnect();
    await server.close();
  }
});

Deno.test("socket.io ticket chat: a polling client that keeps sending but never fetches is closed past SLOW_CONSUMER_BYTES", async () => {
  const server = await startTestServer({ SLOW_CONSUMER_BYTES: "20000" });
  let writer: ClientSocket | undefined;
  try {
    const token = await server.token({ sub: "9", rooms: ["ticket:*"] });
    writer = connect(server.url, { forceNew: true, transports: ["websocket"] });
    await authenticated(writer, token);
    await joined(writer, "4");
    for (let i = 0; i < 10; i++) {
      await writer.emitWithAck("send_message", { ticketId: "4", message: "z".repeat(1000) });
    }
    const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const open = await (await fetch(`${base}&token=${token}`)).text();
    const sid = JSON.parse(open.slice(1)).sid as string;
    const post = async (packet: string) => {
      const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body: packet });
      await res.body?.cancel();
      return res.status;
    };
    assertEquals(await post("40"), 200);
    await (await fetch(`${base}&sid=${sid}`)).text(); // the CONNECT reply
    assertEquals(await post('42["join_ticket",{"ticketId":"4"}]'), 200);
    // It keeps its session alive by POSTing; what the room sends it is never fetched. (Its own
    // get_messages answers wait for it to take the one before, so they do not pile up.)
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 30; i++) {
      await writer.emitWithAck("send_message", { ticketId: "4", message: "y".repeat(1000) });
      if (i % 10 === 0) await post("3");
    }
    await new Promise((r) => setTimeout(r, 100));
    const poll = await fetch(`${base}&sid=${sid}`);
    assertEquals([poll.status, await poll.json()], [400, {
      code: 1,
      message: "Session ID unknown",
    }]);
  } finally {
    writer?.disconnect();
    await server.close();
  }
});

Deno.test("socket.io ticket chat: a flood of authenticate events, even without a token, is rate-limited, then the transport closed (the client reconnects)", async () => {
  await withChat(async (_server, client) => {
    const socket = client({ transports: ["websocket"] });
    await next(socket, "connect");
    let checked = 0;
    const errors: string[] = [];
    socket.on("authentication_error", (e: Payload) => {
      errors.push(String(e.message));
      if (e.message === "Invalid token") checked++;
    });
    const gone = next<string>(socket, "disconnect");
    for (let i = 0; i < 200; i++) socket.emit("authenticate", { token: "garbage" });
    // A transport close: after a Socket.IO disconnect packet the client would stop for good.
    assertEquals(await gone, "transport close");
    assert(socket.active, "the client gave up reconnecting");
    await next(socket, "connect");
    // Only the burst allowance was verified (40), not all 200; the last word says why.
    assert(checked > 0 && checked <= 50, `${checked} tokens checked`);
    assertEquals(errors.at(-1), "Too many messages: slow down");
  });
});

Deno.test("socket.io ticket chat: a token whose role is the document's model name, SuperAdmin, is an admin", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"] });
    const token = await server.token({ sub: "7", name: "Eve", role: "SuperAdmin" });
    assertEquals(((await authenticated(socket, token)).user as Payload).type, "SuperAdmin");
    // No `rooms` claim: every ticket is open to a super admin.
    await joined(socket, "any-ticket");
  });
});

Deno.test("socket.io ticket chat: get_messages without a limit returns the ticket's history whole (up to 500), and says when more is left", async () => {
  await withChat(async (server, client) => {
    const chat = server.app.context.chat;
    // System messages (no sender): what the admin API posts.
    for (let i = 1; i <= 60; i++) await chat.send(null, "ticket:9", { body: `m${i}` });
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:9"] }));
    const all = next<Payload>(socket, "messages_loaded");
    socket.emit("get_messages", { ticketId: "9" });
    const loaded = await all;
    assertEquals((loaded.messages as Payload[]).length, 60);
    assertEquals([(loaded.messages as Payload[])[0].message, loaded.hasMore], ["m1", false]);
    const page = next<Payload>(socket, "messages_loaded");
    socket.emit("get_messages", { ticketId: "9", limit: 10 });
    const newest = await page;
    assertEquals((newest.messages as Payload[]).map((m) => m.message).at(0), "m51");
    assertEquals(newest.hasMore, true);
    // Long messages: the newest that fit in about 1 MiB of JSON, the rest left for `before`.
    for (let i = 1; i <= 60; i++) await chat.send(null, "ticket:10", { body: "y".repeat(20_000) });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:10"] }));
    const long = next<Payload>(socket, "messages_loaded");
    socket.emit("get_messages", { ticketId: "10" });
    const fitted = await long;
    const count = (fitted.messages as Payload[]).length;
    assert(count >= 40 && count < 60 && fitted.hasMore === true, `${count} ${fitted.hasMore}`);
    assertEquals((fitted.messages as Payload[]).at(-1)!.message, "y".repeat(20_000));
  });
});

Deno.test("socket.io ticket chat: get_messages with an ack on long CJK messages keeps the session, and paging back brings the rest once each", async () => {
  await withChat(async (server, client) => {
    const chat = server.app.context.chat;
    // 3 bytes a character on the wire: a page of 1 MiB of characters, twice, passed the 4 MiB of
    // SLOW_CONSUMER_BYTES the moment it was written.
    const body = "我们已经收到您的问题".repeat(1990);
    await Promise.all(
      Array.from(
        { length: 60 },
        (_, i) => chat.send(null, "ticket:12", { body: `${i + 1} ${body}` }),
      ),
    );
    const socket = client({ transports: ["websocket"], reconnection: false });
    const ended: string[] = [];
    socket.on("disconnect", (reason) => ended.push(reason));
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:12"] }));
    const seen: number[] = [];
    let before: string | undefined;
    for (let hasMore = true; hasMore;) {
      const loaded = next<Payload>(socket, "messages_loaded");
      const page = await socket.timeout(10_000).emitWithAck("get_messages", {
        ticketId: "12",
        before,
      }) as { messages: Payload[]; hasMore: boolean };
      assertEquals((await loaded).messages, page.messages);
      assert(page.messages.length > 0 && page.messages.length < 60, `${page.messages.length}`);
      seen.unshift(...page.messages.map((m) => parseInt(m.message as string)));
      before = page.messages[0].createdAt as string;
      hasMore = page.hasMore;
    }
    assertEquals(seen, Array.from({ length: 60 }, (_, i) => i + 1));
    await new Promise((r) => setTimeout(r, 300));
    assertEquals([socket.connected, ended], [true, []]);
  });
});

Deno.test("socket.io ticket chat: a fractional get_messages limit is floored, not an internal error", async () => {
  await withChat(async (server, client) => {
    const chat = server.app.context.chat;
    for (let i = 1; i <= 20; i++) await chat.send(null, "ticket:11", { body: `m${i}` });
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:11"] }));
    const page = await socket.timeout(3000).emitWithAck("get_messages", {
      ticketId: "11",
      limit: 12.5,
    }) as { messages: Payload[]; hasMore: boolean };
    assertEquals(page.messages.map((m) => m.message), [
      "m9",
      "m10",
      "m11",
      "m12",
      "m13",
      "m14",
      "m15",
      "m16",
      "m17",
      "m18",
      "m19",
      "m20",
    ]);
    assertEquals(page.hasMore, true);
    const tiny = await socket.timeout(3000).emitWithAck("get_messages", {
      ticketId: "11",
      limit: 0.5,
    }) as { messages: Payload[] };
    assertEquals(tiny.messages.map((m) => m.message), ["m20"]);
  });
});

Deno.test("socket.io ticket chat: typing on every keystroke past the rate limit is dropped, not a reason to disconnect", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "3");
    let disconnected = false;
    socket.on("disconnect", () => disconnected = true);
    // What socket.io-client sends at once after an outage, when the page emitted typing_start
    // on every input event meanwhile.
    for (let i = 0; i < 150; i++) socket.emit("typing_start", { ticketId: "3" });
    socket.emit("typing_stop", { ticketId: "3" });
    await new Promise((r) => setTimeout(r, 300));
    const sent = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: "3", message: "still here" });
    assertEquals((await sent).data.message, "still here");
    assertEquals(disconnected, false);
  });
});

Deno.test("socket.io ticket chat: a held key (typing_start ~30/s) then Enter: the message sent right after is taken", async () => {
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "5");
    const errors: unknown[] = [];
    socket.on("send_message_error", (m: Payload) => errors.push(m.message));
    for (let i = 0; i < 60; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 33));
      socket.emit("typing_start", { ticketId: "5" });
    }
    socket.emit("typing_stop", { ticketId: "5" });
    const sent = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: "5", message: "after typing" });
    assertEquals((await sent).data.message, "after typing");
    assertEquals(errors, []);
  }, { RATE_LIMIT_PER_SECOND: "5" });
});

Deno.test("socket.io ticket chat: a typing_stop after a flood of typing_start still goes out", async () => {
  await withChat(async (server, client) => {
    const a = client({ transports: ["websocket"] });
    const b = client({ transports: ["websocket"] });
    await authenticated(a, await server.token({ sub: "1", rooms: ["ticket:4"] }));
    await authenticated(b, await server.token({ sub: "2", rooms: ["ticket:4"] }));
    await joined(a, "4");
    await joined(b, "4");
    const started = next<Payload>(b, "user_typing");
    for (let i = 0; i < 150; i++) a.emit("typing_start", { ticketId: "4" });
    await started;
    // Well within the typing timeout (5 s), which would end it anyway.
    const stopped = next<Payload>(b, "user_stopped_typing", 2000);
    a.emit("typing_stop", { ticketId: "4" });
    assertEquals((await stopped).userId, "1");
  });
});

Deno.test("socket.io ticket chat: events sent right after authenticate, without waiting for its answer, are handled as signed in", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:6"] });
    const socket = client();
    const errors: unknown[] = [];
    for (const e of ["join_ticket_error", "messages_error", "send_message_error"]) {
      socket.on(e, (m: Payload) => errors.push([e, m.message]));
    }
    const joinedTicket = next(socket, "joined_ticket");
    const loading = next<Payload>(socket, "messages_loaded");
    // The document's connect handler: authenticate, then at once join and load the history.
    socket.on("connect", () => {
      socket.emit("authenticate", { token });
      socket.emit("join_ticket", { ticketId: "6" });
      socket.emit("send_message", { ticketId: "6", message: "first" });
      socket.emit("get_messages", { ticketId: "6" });
    });
    assertEquals(await joinedTicket, { ticketId: "6" });
    const loaded = await loading;
    assertEquals((loaded.messages as Payload[]).map((m) => m.message), ["first"]);
    assertEquals(errors, []);
  });
});

Deno.test("socket.io ticket chat: events emitted while offline, which the client sends before its connect handler's authenticate, wait for it and are handled as signed in", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const other = client({ transports: ["websocket"] });
    await authenticated(other, await server.token({ sub: "2", rooms: ["ticket:9"] }));
    await joined(other, "9");
    const arrival = next<{ data: Payload }>(other, "new_message");
    const socket = client({ autoConnect: false });
    const errors: unknown[] = [];
    socket.on("send_message_error", (m: Payload) => errors.push(m.message));
    // The document's connect handler.
    socket.on("connect", () => socket.emit("authenticate", { token }));
    // Emitted while offline: socket.io-client buffers it and sends it first thing on connect.
    const acked = socket.emitWithAck("send_message", { ticketId: "9", message: "from offline" });
    socket.connect();
    assertEquals((await arrival).data.message, "from offline");
    assertEquals(((await acked) as Payload).message, "from offline");
    assertEquals(errors, []);
    // Without any authenticate, such an event is refused, after the wait.
    const stranger = client({ autoConnect: false, transports: ["websocket"] });
    const refused = next<Payload>(stranger, "send_message_error", 5000);
    stranger.emit("send_message", { ticketId: "9", message: "never signed in" });
    stranger.connect();
    assertEquals((await refused).message, "User not authenticated");
  });
});

Deno.test("socket.io ticket chat: an event sent while offline waits for an authenticate however long its check takes", async () => {
  let slow = false;
  await withChat(
    async (server, client) => {
      const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
      const socket = client({ autoConnect: false, transports: ["websocket"] });
      const errors: unknown[] = [];
      socket.on("send_message_error", (m: Payload) => errors.push(m.message));
      socket.on("connect", () => socket.emit("authenticate", { token }));
      // The directory takes longer than the 2 s an event waits for an authenticate to come.
      slow = true;
      const acked = socket.timeout(8000).emitWithAck("send_message", {
        ticketId: "9",
        message: "from offline",
      });
      socket.connect();
      assertEquals(((await acked) as Payload).message, "from offline");
      assertEquals(errors, []);
    },
    {},
    slowDirectory(() => slow ? 2500 : 0),
  );
});

Deno.test("socket.io ticket chat: on a 256 kbit/s uplink, six messages typed while offline (a typing_start per character) are all stored, though their buffer takes over 2 s to arrive before the authenticate", async () => {
  await withChat(async (server) => {
    // A Mongo id, as the document's tickets have: the buffer's 1,500 typing_start frames come to
    // about 100 KB, some 3 s at this rate.
    const ticketId = "64a1f0c2e4b0a1b2c3d4e5f6";
    const token = await server.token({ sub: "1", rooms: [`ticket:${ticketId}`] });
    const link = throttledLink(server.port, 32_000, "up");
    const page = connect(`http://127.0.0.1:${link.port}`, {
      forceNew: true,
      autoConnect: false,
      reconnection: false,
      transports: ["websocket"],
    });
    try {
      const errors: unknown[] = [];
      page.on("send_message_error", (m: Payload) => errors.push(m.message));
      page.on("connect", () => page.emit("authenticate", { token }));
      // The document's page while offline: typing_start on every input event, then the send.
      const acks: Promise<unknown>[] = [];
      for (let i = 0; i < 6; i++) {
        for (let c = 0; c < 250; c++) page.emit("typing_start", { ticketId });
        acks.push(
          page.timeout(15_000).emitWithAck("send_message", { ticketId, message: `m${i}` })
            .then((answer: Payload) => answer.error ?? answer.message, String),
        );
      }
      page.emit("typing_stop", { ticketId });
      page.connect();
      const expected = [0, 1, 2, 3, 4, 5].map((i) => `m${i}`);
      assertEquals({ acks: await Promise.all(acks), errors }, { acks: expected, errors: [] });
      const stored = await server.app.context.chat.historyPage(`ticket:${ticketId}`, {
        limit: 100,
      });
      assertEquals(stored.messages.map((m) => m.body), expected);
    } finally {
      page.disconnect();
      await link.close();
    }
    // The default ping times: the client's pong waits behind its buffer on the uplink too.
  }, { SOCKETIO_PING_INTERVAL_MS: "25000", SOCKETIO_PING_TIMEOUT_MS: "20000" });
});

Deno.test("socket.io ticket chat: a client without a token that keeps sending events holds its early ones no longer than SOCKETIO_AUTH_TIMEOUT_MS: then its session is closed and nothing stored", async () => {
  await withChat(async (server, client) => {
    const stranger = client({ autoConnect: false, reconnection: false, transports: ["websocket"] });
    let answered = false;
    stranger.emit("send_message", { ticketId: "9", message: "never signed in" }, () => {
      answered = true;
    });
    const ended = next<string>(stranger, "disconnect", 8000);
    const started = performance.now();
    stranger.connect();
    // Never 2 s apart, so the wait for an authenticate never lapses of itself.
    const trickle = setInterval(() => stranger.emit("typing_start", { ticketId: "9" }), 500);
    try {
      assertEquals(await ended, "transport close");
    } finally {
      clearInterval(trickle);
    }
    const after = performance.now() - started;
    assert(after >= 2500 && after < 5000, `closed after ${after} ms`);
    await delay(200);
    const stored = await server.app.context.chat.historyPage("ticket:9", { limit: 100 });
    assertEquals({ stored: stored.messages.length, answered }, { stored: 0, answered: false });
  }, { SOCKETIO_AUTH_TIMEOUT_MS: "3000" });
});

Deno.test("socket.io ticket chat: events a client without a token sent wait for an authenticate 10 s in all, however often it sends: then they are refused and nothing stored", async () => {
  await withChat(async (server, client) => {
    const stranger = client({ autoConnect: false, reconnection: false, transports: ["websocket"] });
    const acked = stranger.timeout(15_000).emitWithAck("send_message", {
      ticketId: "9",
      message: "never signed in",
    });
    const started = performance.now();
    stranger.connect();
    // Never 2 s apart, and the connection's own timeout a minute away.
    const trickle = setInterval(() => stranger.emit("typing_start", { ticketId: "9" }), 500);
    try {
      assertEquals(await acked, { error: "User not authenticated" });
    } finally {
      clearInterval(trickle);
    }
    const after = performance.now() - started;
    assert(after >= 9500 && after < 13_000, `refused after ${after} ms`);
    const stored = await server.app.context.chat.historyPage("ticket:9", { limit: 100 });
    assertEquals(stored.messages.length, 0);
  });
});

/**
 * User 1's page (the document's: it authenticates on `connect`) with a message emitted while
 * offline, sent before its `authenticate` and stored right after it, in ticket 9, which user 2
 * is in when `observed`. It joins ticket 9 only once its send is acked (stored), as a join sent
 * on `authenticated` may come after the store; with `heldBroadcast`, the broadcast of the
 * message here waits until the page has joined. Returns the `new_message`s each got.
 */
async function ownOfflineSend(options: { observed: boolean; heldBroadcast?: boolean }) {
  let result: { page: string[]; observer: string[] } | undefined;
  await withChat(async (server, client) => {
    const observer: string[] = [];
    if (options.observed) {
      const other = client({ transports: ["websocket"] });
      await authenticated(other, await server.token({ sub: "2", rooms: ["ticket:9"] }));
      await joined(other, "9");
      other.on("new_message", (m: { data: Payload }) => observer.push(m.data.message as string));
    }
    const hub = server.app.context.hub;
    const committed = hub.committed.bind(hub);
    const held: Parameters<typeof committed>[0][] = [];
    if (options.heldBroadcast) hub.committed = (message) => void held.push(message);
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const socket = client({ autoConnect: false, transports: ["websocket"] });
    const page: string[] = [];
    socket.on("new_message", (m: { data: Payload }) => page.push(m.data.message as string));
    socket.on("connect", () => socket.emit("authenticate", { token }));
    const acked = socket.timeout(5000).emitWithAck("send_message", {
      ticketId: "9",
      message: "from offline",
    });
    socket.connect();
    assertEquals(((await acked) as Payload).message, "from offline");
    await joined(socket, "9");
    hub.committed = committed;
    for (const message of held) committed(message);
    await settles(() => page.length > 1 || (options.observed && observer.length > 1), 500);
    if (options.observed) await eventually(() => observer.length > 0, 2000, "the broadcast");
    result = { page, observer };
  });
  return result!;
}

Deno.test("socket.io ticket chat: a message emitted while offline comes back to its sender once as new_message, though the page joins its ticket only after it is stored", async () => {
  // Nobody else in the ticket (a restarted server): no broadcast at all.
  assertEquals(await ownOfflineSend({ observed: false }), { page: ["from offline"], observer: [] });
  // Broadcast to the ticket before the page was in it.
  assertEquals(await ownOfflineSend({ observed: true }), {
    page: ["from offline"],
    observer: ["from offline"],
  });
  // Broadcast once the page is in the ticket, after it was told: not told a second time.
  assertEquals(await ownOfflineSend({ observed: true, heldBroadcast: true }), {
    page: ["from offline"],
    observer: ["from offline"],
  });
});

Deno.test("socket.io ticket chat: a send to a ticket the page never joined comes back by its ack only, not as that ticket's new_message, which the document's page would show in the ticket on screen", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:8", "ticket:9"] });
    const page = client({ transports: ["websocket"] });
    await authenticated(page, token);
    await joined(page, "8");
    const got: string[] = [];
    page.on(
      "new_message",
      (m: { data: Payload }) => got.push(`${m.data.ticketId}:${m.data.message}`),
    );
    const ack = await page.timeout(5000).emitWithAck("send_message", {
      ticketId: "9",
      message: "to nine",
    });
    assertEquals((ack as Payload).ticketId, "9");
    await delay(500);
    assertEquals(got, []);
  });
});

Deno.test("socket.io ticket chat: a send followed at once by a join of its ticket (a leave and rejoin, or a first join) comes back to its sender once as new_message, the join under way as it is stored", async () => {
  await withChat(async (server, client) => {
    const other = client({ transports: ["websocket"] });
    await authenticated(other, await server.token({ sub: "2", rooms: ["ticket:9"] }));
    await joined(other, "9");
    const page = client({ transports: ["websocket"] });
    await authenticated(page, await server.token({ sub: "1", rooms: ["ticket:9"] }));
    const counts: Record<string, number> = {};
    page.on("new_message", (m: { data: Payload }) => {
      const text = m.data.message as string;
      counts[text] = (counts[text] ?? 0) + 1;
    });
    for (let i = 0; i < 20; i++) {
      // In the ticket for the first half (leave and rejoin), out of it for the second (join).
      const inTicketNow = i < 10;
      if (i === 0) await joined(page, "9");
      const ack = page.timeout(5000).emitWithAck("send_message", {
        ticketId: "9",
        message: `m${i}`,
      });
      if (inTicketNow) page.emit("leave_ticket", { ticketId: "9" });
      await joined(page, "9");
      await ack;
      if (!inTicketNow || i === 9) page.emit("leave_ticket", { ticketId: "9" });
    }
    await delay(500);
    const wrong = Array.from({ length: 20 }, (_, i) => `m${i}`).filter((m) => counts[m] !== 1);
    assertEquals(wrong.map((m) => `${m}: ${counts[m] ?? 0}`), []);
  });
});

Deno.test("socket.io ticket chat: a socket signed in as another user while the first user's send is stored is not told that message, of a ticket the second may not see", async () => {
  await withChat(async (server, client) => {
    const one = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const two = await server.token({ sub: "2", rooms: ["ticket:7"] });
    const page = client({ transports: ["websocket"] });
    await authenticated(page, one);
    await joined(page, "9");
    const events: string[] = [];
    page.on(
      "new_message",
      (m: { data: Payload }) => events.push(`new_message ${m.data.ticketId}:${m.data.message}`),
    );
    page.on("authenticated", (m: { user: Payload }) => events.push(`authenticated ${m.user.id}`));
    const ack = page.timeout(5000).emitWithAck("send_message", { ticketId: "9", message: "one's" });
    page.emit("authenticate", { token: two });
    assertEquals(((await ack) as Payload).message, "one's");
    await delay(500);
    const after = events.slice(events.indexOf("authenticated 2") + 1);
    assertEquals({ events, after }, { events, after: [] });
  });
});

Deno.test("socket.io ticket chat: 45 sends emitted while offline, sent before the connect handler's authenticate, use up the burst but never get the authenticate refused: the page signs in and rejoins", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const socket = client({ autoConnect: false, transports: ["websocket"], reconnection: false });
    const authErrors: unknown[] = [];
    const sendErrors: unknown[] = [];
    socket.on("authentication_error", (m: Payload) => authErrors.push(m.message));
    socket.on("send_message_error", (m: Payload) => sendErrors.push(m.message));
    // The document's page; a second authenticate at once is limited as any event past the rate.
    socket.on("connect", () => {
      socket.emit("authenticate", { token });
      socket.emit("authenticate", { token });
    });
    socket.on("authenticated", () => socket.emit("join_ticket", { ticketId: "9" }));
    for (let i = 0; i < 45; i++) socket.emit("send_message", { ticketId: "9", message: `m${i}` });
    const joinedTicket = next(socket, "joined_ticket", 5000);
    socket.connect();
    assertEquals(await joinedTicket, { ticketId: "9" });
    await settles(() => sendErrors.length + authErrors.length >= 6, 2000);
    const stored = await server.app.context.chat.historyPage("ticket:9", { limit: 100 });
    // The burst (40) took as many sends, give or take what it refilled as they came.
    assert(stored.messages.length >= 40, `${stored.messages.length} stored`);
    assertEquals(stored.messages.length + sendErrors.length, 45);
    assert(sendErrors.every((m) => m === "Too many messages: slow down"), String(sendErrors));
    assertEquals(authErrors, ["Too many messages: slow down"]);
    assert(socket.connected);
  });
});

Deno.test("socket.io ticket chat: ten messages written while offline with a pause to think in each are all stored: the typing starts and stops sent ahead of them take none of the sends' burst", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const page = client({ autoConnect: false, reconnection: false, transports: ["websocket"] });
    const errors: unknown[] = [];
    page.on("send_message_error", (m: Payload) => errors.push(m.message));
    page.on("connect", () => page.emit("authenticate", { token }));
    // The document's page, buffered while offline: typing_start on every input event, the
    // debounced typing_stop after the pause and after the send: 82 typing events per message, 820
    // in all, whose starts and stops not dropped as repeats use up a burst (40) before the last
    // sends.
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < 10; i++) {
      for (let c = 0; c < 40; c++) page.emit("typing_start", { ticketId: "9" });
      page.emit("typing_stop", { ticketId: "9" });
      for (let c = 0; c < 40; c++) page.emit("typing_start", { ticketId: "9" });
      acks.push(
        page.timeout(8000).emitWithAck("send_message", { ticketId: "9", message: `m${i}` })
          .then((answer: Payload) => answer.error ?? answer.message, String),
      );
      page.emit("typing_stop", { ticketId: "9" });
    }
    page.connect();
    const expected = [...Array(10).keys()].map((i) => `m${i}`);
    assertEquals({ acks: await Promise.all(acks), errors }, { acks: expected, errors: [] });
    assert(page.connected);
  });
});

/**
 * User 2 in ticket 9, and user 1's socket over WebSocket (the README's advice across processes;
 * under Deno the default transports go WebSocket first), or over `transports`, with the document's
 * connect handler (authenticate on every connect, then rejoin), in ticket 9 and then cut off: the
 * server loses the transport and socket.io-client reconnects, sending what is emitted now first
 * thing, before the handler's `authenticate`. `errors` collects user 1's `send_message_error`s.
 */
async function cutOffInTicket(
  server: TestServer,
  client: (o?: object) => ClientSocket,
  transports = ["websocket"],
) {
  const other = client({ transports: ["websocket"] });
  await authenticated(other, await server.token({ sub: "2", rooms: ["ticket:9"] }));
  await joined(other, "9");
  const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
  const socket = client({ transports });
  const errors: unknown[] = [];
  socket.on("send_message_error", (m: Payload) => errors.push(m.message));
  socket.on("connect", () => socket.emit("authenticate", { token }));
  socket.on("authenticated", () => socket.emit("join_ticket", { ticketId: "9" }));
  await next(socket, "joined_ticket");
  const [serverSide] = [...server.app.io.of("/").sockets.values()].filter((s) =>
    s.data.user?.id === 1
  );
  serverSide.conn.close();
  await next(socket, "disconnect");
  return { other, socket, errors };
}

Deno.test("socket.io ticket chat: a photo emitted while offline over WebSocket, which the client sends before its connect handler's authenticate, is stored and its file served", async () => {
  await withChat(async (server, client) => {
    const { other, socket, errors } = await cutOffInTicket(server, client);
    const arrival = next<{ data: Payload }>(other, "new_message", 8000);
    // Meanwhile a photo of 200 KB: buffered, and sent first thing on the reconnect, before the
    // `authenticate` of the connect handler, in a frame past the 64 KiB of an unsigned socket.
    const photo = new Uint8Array(200_000).map((_, i) => i % 251);
    const acked = socket.timeout(8000).emitWithAck("send_message", {
      ticketId: "9",
      message: "photo from the train",
      attachments: [{ name: "photo.jpg", type: "image/jpeg", data: photo.toBase64() }],
    });
    const { data } = await arrival;
    assertEquals(data.message, "photo from the train");
    assertEquals(((await acked) as Payload).message, "photo from the train");
    assertEquals(errors, []);
    const [attachment] = data.attachments as Payload[];
    assertEquals(attachment.size, 200_000);
    const served = await fetch(attachment.url as string);
    assertEquals(served.status, 200);
    assertEquals(new Uint8Array(await served.arrayBuffer()), photo);
  });
});

/** The bytes of frames held in sockets still open, as /metrics counts them. */
async function heldBytes(server: TestServer): Promise<number> {
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  return Number(/chat_frame_buffer_bytes\{state="open"\} (\d+)/.exec(metrics)![1]);
}

Deno.test("socket.io ticket chat: a large event from a WebSocket client that never authenticates waits as other early events do, then is refused and its session ended", async () => {
  await withChat(async (server, client) => {
    const stranger = client({ autoConnect: false, transports: ["websocket"] });
    const refused = next<Payload>(stranger, "send_message_error", 5000);
    const acked = new Promise((resolve) =>
      stranger.emit("send_message", {
        ticketId: "9",
        attachments: [{ name: "photo.jpg", data: new Uint8Array(200_000).toBase64() }],
      }, resolve)
    );
    const ended = next<string>(stranger, "disconnect", 5000);
    const started = performance.now();
    stranger.connect();
    // Counted against FRAME_MEMORY_BUDGET_BYTES while it waits, as a signed-in socket's file is.
    await eventually(async () => await heldBytes(server) >= 266_000, 1500, "the frame counted");
    assertEquals(await refused, { message: "User not authenticated" });
    assertEquals(await acked, { error: "User not authenticated" });
    // Held for the 2 s an early event waits for an authenticate, as a text one is.
    const refusedAfter = performance.now() - started;
    assert(refusedAfter >= 1500, `refused after ${refusedAfter} ms`);
    // Then not held open (the auth timeout is 60 s): Deno keeps a buffer that large for it.
    assertEquals(await ended, "transport close");
    const endedAfter = performance.now() - started;
    assert(endedAfter < 4000, `ended after ${endedAfter} ms`);
    stranger.disconnect();
    await eventually(async () => await heldBytes(server) === 0, 3000, "the frame's buffer let go");
  });
});

/** A photo of 200 KB, different for each `n`. */
const photo = (n: number) => new Uint8Array(200_000).map((_, i) => (i + n) % 251);

/**
 * Has user 1's socket (the document's connect handler: authenticate, then rejoin ticket 9) over
 * `transports` lose its transport, emits what `emitWhileOffline` emits meanwhile (sent first thing
 * on the reconnect, before the `authenticate`), and checks that user 2 gets `expected`, each acked.
 */
async function sentWhileOffline(
  emitWhileOffline: (socket: ClientSocket) => Promise<unknown>[],
  expected: string[],
  transports = ["websocket"],
  env = {},
) {
  await withChat(async (server, client) => {
    const { other, socket, errors } = await cutOffInTicket(server, client, transports);
    const got: string[] = [];
    other.on("new_message", (m: { data: Payload }) => got.push(m.data.message as string));
    const acks = await Promise.all(
      emitWhileOffline(socket).map((a) => a.then((r) => (r as Payload).error ?? "ok", String)),
    );
    await eventually(() => got.length >= expected.length, 8000, "messages").catch(() => {});
    assertEquals({ got, errors, acks }, {
      got: expected,
      errors: [],
      acks: expected.map(() => "ok"),
    });
  }, env);
}

Deno.test("socket.io ticket chat: three photos emitted while offline over polling alone, more than the unsigned budget holds but for a session's first, are all stored", async () => {
  await sentWhileOffline(
    (socket) =>
      [1, 2, 3].map((n) =>
        socket.timeout(8000).emitWithAck("send_message", {
          ticketId: "9",
          message: `photo ${n}`,
          attachments: [{ name: `p${n}.jpg`, type: "image/jpeg", data: photo(n).toBase64() }],
        })
      ),
    ["photo 1", "photo 2", "photo 3"],
    ["polling"],
    TWO_PHOTOS,
  );
});

Deno.test("socket.io ticket chat: two messages with a photo each, emitted while offline, are both stored after a WebSocket reconnect", async () => {
  await sentWhileOffline(
    (socket) =>
      [1, 2].map((n) =>
        socket.timeout(8000).emitWithAck("send_message", {
          ticketId: "9",
          message: `photo ${n}`,
          attachments: [{ name: `p${n}.jpg`, type: "image/jpeg", data: photo(n).toBase64() }],
        })
      ),
    ["photo 1", "photo 2"],
  );
});

Deno.test("socket.io ticket chat: one message with two photos, emitted while offline, is stored after a WebSocket reconnect", async () => {
  await sentWhileOffline((socket) => [
    socket.timeout(8000).emitWithAck("send_message", {
      ticketId: "9",
      message: "two photos",
      attachments: [1, 2].map((n) => ({
        name: `p${n}.jpg`,
        type: "image/jpeg",
        data: photo(n).toBase64(),
      })),
    }),
  ], ["two photos"]);
});

Deno.test("socket.io ticket chat: one message with a binary photo (a Socket.IO attachment), emitted while offline, is stored after a WebSocket reconnect", async () => {
  await sentWhileOffline((socket) => [
    socket.timeout(8000).emitWithAck("send_message", {
      ticketId: "9",
      message: "binary photo",
      attachments: [{ name: "p.jpg", type: "image/jpeg", data: photo(1) }],
    }),
  ], ["binary photo"]);
});

Deno.test("socket.io ticket chat: one message with two binary photos (a frame each), emitted while offline, is stored after a WebSocket reconnect", async () => {
  await sentWhileOffline((socket) => [
    socket.timeout(8000).emitWithAck("send_message", {
      ticketId: "9",
      message: "two binary photos",
      attachments: [1, 2].map((n) => ({ name: `p${n}.jpg`, type: "image/jpeg", data: photo(n) })),
    }),
  ], ["two binary photos"]);
});

Deno.test("socket.io ticket chat: eleven messages with a photo each, emitted while offline, are all stored after a WebSocket reconnect: more large frames before sign-in than a message has files", async () => {
  const messages = Array.from({ length: 11 }, (_, n) => `photo ${n + 1}`);
  await sentWhileOffline(
    (socket) =>
      messages.map((message, n) =>
        socket.timeout(8000).emitWithAck("send_message", {
          ticketId: "9",
          message,
          attachments: [{ name: `p${n}.jpg`, type: "image/jpeg", data: photo(n).toBase64() }],
        })
      ),
    messages,
  );
});

/**
 * `texts` typed while offline over polling as the document's page types them (a typing_start on
 * every input event, then the send), all sent in one POST on reconnect: each must be stored once.
 */
async function typedOfflineOverPolling(texts: string[], ackMs = 8000) {
  await sentWhileOffline(
    (socket) =>
      texts.map((message) => {
        for (let key = 0; key < message.length; key++) {
          socket.emit("typing_start", { ticketId: "9" });
        }
        return socket.timeout(ackMs).emitWithAck("send_message", { ticketId: "9", message });
      }),
    texts,
    ["polling"],
  );
}

Deno.test("socket.io ticket chat: four messages typed while offline over polling, a typing_start for every key pressed, are all stored: socket.io-client sends them in one POST of over 1,000 packets", async () => {
  await typedOfflineOverPolling(
    [1, 2, 3, 4].map((n) => `message ${n} `.padEnd(260, "typed offline ")),
  );
});

Deno.test("socket.io ticket chat: ten messages typed while offline over polling, 5,000 typing_starts among them, are all stored: one POST of thousands of packets is a real offline buffer", async () => {
  await typedOfflineOverPolling(
    Array.from({ length: 10 }, (_, n) => `message ${n + 1} `.padEnd(500, "typed ")),
    15_000,
  );
});

/** A message of 330,000 bytes for ticket 9, in a polling POST: about a file's frame of TWO_PHOTOS. */
const bigSend = (n: number) =>
  `42["send_message",{"ticketId":"9","message":"${String(n).padEnd(329_950, "x")}"}]`;

/**
 * A polling session without a token, connected (CONNECT) and with its first large POST taken,
 * which a session's first always is once read: `post` answers a POST's status, `polled` a GET's
 * text.
 */
async function unsignedPolling(server: TestServer) {
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const sid = JSON.parse((await (await fetch(base)).text()).slice(1)).sid as string;
  const session = {
    async post(body: string): Promise<number> {
      const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body });
      await res.body?.cancel();
      return res.status;
    },
    async polled(): Promise<string> {
      return await (await fetch(`${base}&sid=${sid}`)).text();
    },
  };
  assertEquals(await session.post("40"), 200);
  assertEquals(await session.post(bigSend(0)), 200);
  return session;
}

Deno.test("socket.io ticket chat: polling POSTs of clients without a token count against two files' frames until the session signs in or ends, not only while read: a third is refused while two wait", async () => {
  // MAX_FILE_BYTES 200000: a file's frame is 346,240 bytes, so two POSTs of 330,000 fit, not three.
  // Long heartbeats: these sessions never poll, and a ping timeout would end them.
  await withChat(async (server) => {
    const open = () => unsignedPolling(server);
    // Each with its first taken already (a first is read within the budget too).
    const [a, b, c, d, e, f] = [
      await open(),
      await open(),
      await open(),
      await open(),
      await open(),
      await open(),
    ];
    // Read, their events wait for an authenticate: held, and counted, meanwhile.
    assertEquals([await a.post(bigSend(1)), await b.post(bigSend(2))], [200, 200]);
    assertEquals(await c.post(bigSend(3)), 503);
    // An authenticate still goes.
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    assertEquals(await a.post(`42["authenticate",{"token":"${token}"}]`), 200);
    let answers = "";
    while (!answers.includes('"authenticated"')) answers += await a.polled();
    // Signed in, A's share is given back.
    assertEquals(await d.post(bigSend(4)), 200);
    // And ended, B's.
    assertEquals(await e.post(bigSend(5)), 503);
    assertEquals(await b.post("1"), 200);
    assertEquals(await f.post(bigSend(6)), 200);
  }, { ...TWO_PHOTOS, SOCKETIO_PING_INTERVAL_MS: "25000", SOCKETIO_PING_TIMEOUT_MS: "20000" });
});

Deno.test("socket.io ticket chat: a polling session without a token whose POST counts against two files' frames is ended once the wait for its authenticate lapses, giving its share back", async () => {
  await withChat(async (server) => {
    // Each with its first taken already (a first is read within the budget too).
    const [a, b, c, d] = [
      await unsignedPolling(server),
      await unsignedPolling(server),
      await unsignedPolling(server),
      await unsignedPolling(server),
    ];
    assertEquals([await a.post(bigSend(1)), await b.post(bigSend(2)), await c.post(bigSend(3))], [
      200,
      200,
      503,
    ]);
    // No authenticate comes for A's and B's: 2 s after their last event, they are refused and
    // the sessions end, rather than hold their shares until SOCKETIO_AUTH_TIMEOUT_MS (a minute).
    await delay(3000);
    assertEquals(await d.post(bigSend(4)), 200);
  }, { ...TWO_PHOTOS, SOCKETIO_PING_INTERVAL_MS: "25000", SOCKETIO_PING_TIMEOUT_MS: "20000" });
});

/**
 * A WebSocket client without a token that sends `photos` messages with a photo each as it
 * connects, and never authenticates: when (ms after the connect) each was refused `User not
 * authenticated`, in order, and when and how its session ended.
 */
function strangerSends(client: (o?: object) => ClientSocket, photos: number) {
  const stranger = client({ autoConnect: false, reconnection: false, transports: ["websocket"] });
  const started = performance.now();
  // Otherwise what happened instead, for the assertion to show.
  const refusals = Array.from(
    { length: photos },
    (_, n) =>
      stranger.timeout(5000).emitWithAck("send_message", {
        ticketId: "9",
        attachments: [{ name: `p${n}.jpg`, data: photo(n).toBase64() }],
      }).then(
        (answer: Payload) =>
          answer.error === "User not authenticated"
            ? performance.now() - started
            : `answered ${JSON.stringify(answer)}`,
        String,
      ),
  );
  const ended = next<string>(stranger, "disconnect", 5000).then((reason) => ({
    reason,
    after: performance.now() - started,
  }));
  stranger.connect();
  return { refused: Promise.all(refusals), ended };
}

// MAX_FILE_BYTES 200000: a file's frame is 346,240 characters, so the large messages of sessions
// nobody signed in, but for each session's first, hold at most 692,480 in all: two photos (266,751
// each), not three.
const TWO_PHOTOS = { MAX_FILE_BYTES: "200000" };

Deno.test("socket.io ticket chat: photos from a WebSocket client that never authenticates are held for the wait, refused, and the session ended, giving back what they held: the next client's are held again", async () => {
  await withChat(async (_server, client) => {
    for (const round of [1, 2]) {
      const { refused, ended } = strangerSends(client, 2);
      // Both held for the 2 s early events wait for an authenticate, none refused at once.
      for (const after of await refused) {
        assert(typeof after === "number" && after >= 1500, `round ${round}: refused: ${after}`);
      }
      const end = await ended;
      assertEquals(end.reason, "transport close");
      assert(end.after < 4000, `round ${round}: ended after ${end.after} ms`);
    }
  }, TWO_PHOTOS);
});

Deno.test("socket.io ticket chat: photos held before sign-in, past each session's first, are bounded server-wide: past two files' frames, another client's second is refused at once and its session ended; a signed-in user's still goes", async () => {
  await withChat(async (server, client) => {
    const member = await inTicket(server, client, "9");
    // Its first photo is its own; the second and third fill the budget.
    const holder = strangerSends(client, 3);
    await eventually(async () => await heldBytes(server) >= 266_000, 1500, "the first photo taken");
    // The others follow it on the same connection.
    await delay(300);
    const late = strangerSends(client, 2);
    const refusedAfter = (await late.refused)[1];
    assert(typeof refusedAfter === "number" && refusedAfter < 1500, `refused: ${refusedAfter}`);
    assertEquals((await late.ended).reason, "transport close");
    // The budget is only for sessions nobody signed in.
    const acked = await member.timeout(5000).emitWithAck("send_message", {
      ticketId: "9",
      message: "signed in",
      attachments: [{ name: "p.jpg", data: photo(3).toBase64() }],
    });
    assertEquals((acked as Payload).message, "signed in");
    // The holder's are still held for the wait, then refused.
    for (const after of await holder.refused) {
      assert(typeof after === "number" && after >= 1500, `refused: ${after}`);
    }
    assertEquals((await holder.ended).reason, "transport close");
  }, TWO_PHOTOS);
});

Deno.test("socket.io ticket chat: clients without a token that fill the server-wide bound with photos do not cost a page its one photo emitted while offline: a session's first is always held for its authenticate", async () => {
  await withChat(async (server, client) => {
    // Two photos each, never an authenticate: their second ones fill the bound.
    const strangers = [strangerSends(client, 2), strangerSends(client, 2)];
    await delay(300);
    // The document's page of user 1, with a photo emitted while offline.
    const token = await server.token({ sub: "1", rooms: ["ticket:9"] });
    const page = client({ autoConnect: false, transports: ["websocket"] });
    page.on("connect", () => page.emit("authenticate", { token }));
    const acked = page.timeout(5000).emitWithAck("send_message", {
      ticketId: "9",
      message: "my photo",
      attachments: [{ name: "p.jpg", type: "image/jpeg", data: photo(3).toBase64() }],
    }).then((answer: Payload) => answer.error ?? answer.message, String);
    page.connect();
    assertEquals(await acked, "my photo");
    await Promise.all(strangers.map((stranger) => stranger.ended));
  }, TWO_PHOTOS);
});

Deno.test("socket.io ticket chat: photos held before sign-in are held no longer than the wait though the client's authenticate comes behind 150 paced joins: a bad one ends the session at once", async () => {
  await withChat(async (_server, client) => {
    const stranger = client({ autoConnect: false, reconnection: false, transports: ["websocket"] });
    for (const n of [1, 2]) {
      stranger.emit("send_message", {
        ticketId: "9",
        attachments: [{ name: `p${n}.jpg`, data: photo(n).toBase64() }],
      });
    }
    // Past the burst, paced at the rate: about 5.5 s of line for an authenticate behind it.
    for (let t = 0; t < 150; t++) stranger.emit("join_ticket", { ticketId: `t${t}` });
    stranger.emit("authenticate", { token: "not a token" });
    const ended = next<string>(stranger, "disconnect", 10_000);
    const started = performance.now();
    stranger.connect();
    assertEquals(await ended, "transport close");
    const after = performance.now() - started;
    assert(after < 2000, `ended after ${after} ms`);
  }, TWO_PHOTOS);
});

Deno.test("socket.io ticket chat: the client's own reconnection, then re-authenticate and rejoin", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:8"] });
    const socket = client();
    const other = client({ transports: ["websocket"] });
    // The document's reconnection recipe: authenticate again on every connect, then rejoin.
    let connects = 0;
    socket.on("connect", () => {
      connects++;
      socket.emit("authenticate", { token });
    });
    socket.on("authenticated", () => socket.emit("join_ticket", { ticketId: "8" }));
    await next(socket, "joined_ticket");
    await authenticated(other, await server.token({ sub: "2", rooms: ["ticket:8"] }));
    await joined(other, "8");
    // The server drops the transport under the client.
    const [serverSocket] = [...server.app.io.of("/").sockets.values()].filter((s) =>
      s.data.user?.id === 1
    );
    serverSocket.conn.close();
    await next(socket, "disconnect");
    await next(socket, "joined_ticket", 5000);
    assert(connects >= 2);
    const arrival = next<{ data: Payload }>(socket, "new_message");
    other.emit("send_message", { ticketId: "8", message: "after reconnect" });
    assertEquals((await arrival).data.message, "after reconnect");
  });
});

Deno.test("socket.io ticket chat: a leave or disconnect during a join leaves nothing behind; a later joiner gets each message once", async () => {
  await withChat(async (server, client) => {
    const hub = server.app.context.hub;
    const token = await server.token({ sub: "3", username: "user3", rooms: ["ticket:*"] });
    const leaver = client({ auth: { token }, transports: ["websocket"] });
    await next(leaver, "authenticated");
    const ids = Array.from({ length: 60 }, (_, i) => `race-${i}`);
    const acks: Promise<unknown>[] = [];
    for (const [i, ticketId] of ids.entries()) {
      leaver.emit("join_ticket", { ticketId });
      // The leave lands anywhere from before the access check to after the bridge is live.
      for (let k = 0; k < i % 10; k++) await new Promise((r) => setTimeout(r, 0));
      acks.push(leaver.emitWithAck("leave_ticket", { ticketId }));
    }
    await Promise.all(acks);
    // Sockets that go away in the middle of their joins.
    const gone = Array.from({ length: 30 }, (_, i) => `gone-${i}`);
    for (const [i, ticketId] of gone.entries()) {
      const quitter = client({ auth: { token }, transports: ["websocket"] });
      await next(quitter, "authenticated");
      quitter.emit("join_ticket", { ticketId });
      for (let k = 0; k < i % 10; k++) await new Promise((r) => setTimeout(r, 0));
      quitter.disconnect();
    }
    const all = [...ids, ...gone];
    await eventually(
      () => all.every((id) => hub.members(`ticket:${id}`).size === 0),
      5000,
      "every ticket to be empty in the hub",
    );

    let leaverGot = 0;
    leaver.on("new_message", () => leaverGot++);
    const later = client({ auth: { token }, transports: ["websocket"] });
    await next(later, "authenticated");
    const seen = new Map<string, number>();
    later.on("new_message", ({ data }: { data: Payload }) => {
      const id = data.ticketId as string;
      seen.set(id, (seen.get(id) ?? 0) + 1);
    });
    for (const ticketId of all) await joined(later, ticketId);
    await Promise.all(
      all.map((ticketId) => later.emitWithAck("send_message", { ticketId, message: "once" })),
    );
    await eventually(() => seen.size === all.length, 3000, "a message in every ticket");
    // A second copy would come from a bridge a raced join left in the room.
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(all.filter((id) => seen.get(id) !== 1), []);
    assertEquals(all.filter((id) => hub.members(`ticket:${id}`).size !== 1), []);
    assertEquals(leaverGot, 0);
  }, { RATE_LIMIT_PER_SECOND: "1000", RATE_LIMIT_USER_PER_SECOND: "1000" });
});

Deno.test("socket.io ticket chat: a slow join holds up only its own ticket; a join whose second access check fails is undone", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let failNext = true;
  await withChat(
    async (server, client) => {
      const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
      const socket = client({ auth: { token }, transports: ["websocket"] });
      await next(socket, "authenticated");
      await joined(socket, "other");
      socket.emit("join_ticket", { ticketId: "slow" });
      // Other tickets' joins and leaves go on while that one's access check waits.
      await joined(socket, "fast");
      assertEquals(await socket.timeout(2000).emitWithAck("leave_ticket", { ticketId: "other" }), {
        ticketId: "other",
      });
      const slowJoined = next(socket, "joined_ticket");
      release();
      assertEquals(await slowJoined, { ticketId: "slow" });

      // The directory fails on the check after the bridge is live: refused, and not half joined.
      const refused = next(socket, "join_ticket_error");
      socket.emit("join_ticket", { ticketId: "err" });
      assertEquals(await refused, { message: "Internal server error" });
      assertEquals(server.app.context.hub.members("ticket:err").size, 0);
      const stray = next(socket, "new_message", 300).catch(() => null);
      await server.app.context.chat.send(null, "ticket:err", { body: "not for you" });
      assertEquals(await stray, null);
      // Joining again does the whole join, not an ack of the half one.
      await joined(socket, "err");
      assertEquals(server.app.context.hub.members("ticket:err").size, 1);
    },
    {},
    {
      access: (inner) => ({
        async canAccess(user, room, options) {
          if (room === "ticket:slow" && !options?.fresh) await gate;
          if (room === "ticket:err" && options?.fresh && failNext) {
            failNext = false;
            throw new Error("directory down");
          }
          return await inner.canAccess(user, room, options);
        },
      }),
    },
  );
});

Deno.test("socket.io ticket chat: a socket that becomes another user during its join is refused, not told it joined", async () => {
  let started!: () => void;
  const checking = new Promise<void>((r) => started = r);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  await withChat(
    async (server, client) => {
      const socket = client({ transports: ["websocket"] });
      await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:swap"] }));
      const answer = Promise.race([
        next(socket, "joined_ticket").then((p) => ["joined_ticket", p]),
        next(socket, "join_ticket_error").then((p) => ["join_ticket_error", p]),
      ]);
      socket.emit("join_ticket", { ticketId: "swap" });
      // Held in the check made once the socket is in the room; meanwhile it signs in as user 2.
      await checking;
      try {
        await authenticated(socket, await server.token({ sub: "2", rooms: ["ticket:swap"] }));
      } finally {
        release();
      }
      assertEquals(await answer, ["join_ticket_error", {
        message: "Access denied to this ticket",
      }]);
      assertEquals(server.app.context.hub.members("ticket:swap").size, 0);
      // As user 2 it joins like anyone else.
      await joined(socket, "swap");
    },
    {},
    {
      access: (inner) => ({
        async canAccess(user, room, options) {
          if (room === "ticket:swap" && options?.fresh && String(user.id) === "1") {
            started();
            await gate;
          }
          return await inner.canAccess(user, room, options);
        },
      }),
    },
  );
});

/**
 * An access policy that holds user 1's check of `room` (its `fresh` one, or the first) until
 * released, so that the socket can sign in as someone else meanwhile.
 */
function heldCheck(room: string, fresh: boolean) {
  let started!: () => void;
  const checking = new Promise<void>((r) => started = r);
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const overrides: AppOverrides = {
    access: (inner) => ({
      async canAccess(user, r, options) {
        if (r === room && Boolean(options?.fresh) === fresh && String(user.id) === "1") {
          started();
          await gate;
        }
        return await inner.canAccess(user, r, options);
      },
    }),
  };
  return { checking, release, overrides };
}

Deno.test("socket.io ticket chat: a join whose access check for the first user ends after the socket signed in as another user, who may not enter, is refused and leaves it out of the ticket", async () => {
  const held = heldCheck("ticket:held", false);
  await withChat(
    async (server, client) => {
      const socket = client({ transports: ["websocket"] });
      await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
      const answer = Promise.race([
        next(socket, "joined_ticket").then((p) => ["joined_ticket", p]),
        next(socket, "join_ticket_error").then((p) => ["join_ticket_error", p]),
      ]);
      socket.emit("join_ticket", { ticketId: "held" });
      // User 1's check is under way; the socket becomes user 2's, who may enter ticket 999 only.
      await held.checking;
      try {
        await authenticated(socket, await server.token({ sub: "2", rooms: ["ticket:999"] }));
      } finally {
        held.release();
      }
      assertEquals(await answer, ["join_ticket_error", {
        message: "Access denied to this ticket",
      }]);
      assertEquals(server.app.context.hub.members("ticket:held").size, 0);
      const leaked = next(socket, "new_message", 500).catch(() => null);
      await server.app.context.chat.send(null, "ticket:held", { body: "secret" });
      assertEquals(await leaked, null);
    },
    {},
    held.overrides,
  );
});

Deno.test("socket.io ticket chat: a get_messages checked for the first user and read after the socket signed in as another user is refused, not answered with the first user's ticket", async () => {
  const held = heldCheck("ticket:held", true);
  await withChat(
    async (server, client) => {
      await server.app.context.chat.send(null, "ticket:held", { body: "secret" });
      const socket = client({ transports: ["websocket"] });
      await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
      const events: unknown[] = [];
      for (const e of ["messages_loaded", "messages_error"]) {
        socket.on(e, (d: Payload) => events.push([e, d]));
      }
      const acked = socket.timeout(5000).emitWithAck("get_messages", { ticketId: "held" });
      // Checked again, past any cache, as its turn came: held while the socket becomes user 2's.
      await held.checking;
      try {
        await authenticated(socket, await server.token({ sub: "2", rooms: ["ticket:999"] }));
      } finally {
        held.release();
      }
      assertEquals(await acked, { error: "Access denied to this ticket" });
      assertEquals(events, [["messages_error", { message: "Access denied to this ticket" }]]);
    },
    {},
    held.overrides,
  );
});

Deno.test("socket.io ticket chat: Socket.IO and ticket-socket clients share the ticket", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({
      sub: "3",
      username: "user3",
      name: "User Three",
      rooms: ["ticket:42"],
    });
    const sio = client({ auth: { token } });
    await next(sio, "authenticated");
    await joined(sio, "42");
    const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/42/?token=${token}`);
    const arrival = next<{ data: Payload }>(sio, "new_message");
    ws.send({ body: "from the ticket socket" });
    assertEquals((await arrival).data.message, "from the ticket socket");
    assertEquals((await ws.next()).body, "from the ticket socket");
    const own = next<{ data: Payload }>(sio, "new_message");
    sio.emit("send_message", { ticketId: "42", message: "from socket.io" });
    assertEquals((await own).data.message, "from socket.io");
    const seen = await ws.next();
    assertEquals([seen.pk, seen.body, (seen.sender as Payload).username], [
      2,
      "from socket.io",
      "user3",
    ]);
    // The document's one `file` is the first; the others follow the body as URLs, which serve.
    const png = (n: number) => ({ name: `p${n}.png`, data: new Uint8Array([n, n, n]).toBase64() });
    for (const message of ["two files", ""]) {
      const echo = next<{ data: Payload }>(sio, "new_message");
      sio.emit("send_message", { ticketId: "42", message, attachments: [png(1), png(2), png(3)] });
      const { file, body } = await ws.next();
      const [first, second, third] = (await echo).data.attachments as Payload[];
      assertEquals(file, first.url);
      const urls = [second.url, third.url] as string[];
      assertEquals(body, (message === "" ? urls : [message, ...urls]).join("\n"));
      for (const [i, url] of [first.url as string, ...urls].entries()) {
        assertEquals([...new Uint8Array(await (await fetch(url)).arrayBuffer())], [
          i + 1,
          i + 1,
          i + 1,
        ]);
      }
    }
    await ws.close();
  });
});

Deno.test("socket.io ticket chat: past FRAME_MEMORY_BUDGET_BYTES the quietest file sender's transport closes and the client reconnects", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "9", name: "Bob Admin", role: "super_admin" });
    // Alice starts on polling and upgrades, Bob opens a WebSocket at once: both kinds are counted.
    const [alice, bob] = [client(), client({ transports: ["websocket"] })];
    for (const socket of [alice, bob]) {
      await authenticated(socket, token);
      await joined(socket, "t-2");
    }
    await eventually(() => alice.io.engine.transport.name === "websocket", 3000, "upgrade");
    // About 1.07 MB of base64 per frame: one fits the 1.5 MB budget, two do not.
    const data = new Uint8Array(800_000).map((_, i) => i % 253);
    const send = async (socket: ClientSocket, message: string) => {
      const arrival = next<{ data: Payload }>(socket, "new_message");
      socket.emit("send_message", {
        ticketId: "t-2",
        message,
        attachments: [{ name: "big.bin", type: "application/octet-stream", data: data.toBase64() }],
      });
      return (await arrival).data;
    };
    await send(alice, "first");
    const dropped = next<string>(alice, "disconnect");
    const second = await send(bob, "second");
    assertEquals(await dropped, "transport close");
    assertEquals(bob.connected, true);
    const [file] = second.attachments as Payload[];
    assertEquals(new Uint8Array(await (await fetch(file.url as string)).arrayBuffer()), data);
    // The client reconnects on its own; both messages are in the history it reloads.
    await authenticated(alice, token);
    alice.emit("get_messages", { ticketId: "t-2" });
    const loaded = await next<{ messages: Payload[] }>(alice, "messages_loaded");
    assertEquals(loaded.messages.map((m) => m.message), ["first", "second"]);
  }, { FRAME_MEMORY_BUDGET_BYTES: "1500000" });
});

Deno.test("socket.io ticket chat: a burst of file sends past INBOUND_QUEUE_BYTES ends the session after the earlier acks; exactly the acked ones are stored", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:8"] });
    const socket = client({ auth: { token }, transports: ["websocket"] });
    await next(socket, "authenticated");
    await joined(socket, "8");
    const data = new Uint8Array(150_000).fill(7);
    // The burst's sends after its first carry their bytes in a field the chat ignores: those are
    // held until answered all the same, so they count.
    const send = (i: number) =>
      socket.timeout(3000).emitWithAck("send_message", {
        ticketId: "8",
        message: `m${i}`,
        ...(i <= 3 ? { attachments: [{ name: `f${i}.bin`, data }] } : { pad: [data] }),
      });
    // One at a time, with typing meanwhile: every one is taken.
    for (let i = 0; i < 3; i++) {
      const sent = send(i);
      socket.emit("typing_start", { ticketId: "8" });
      assertEquals((await sent).message, `m${i}`);
    }
    // An event counts until answered, and commits start 300 ms apart: the burst piles up.
    const dropped = next<string>(socket, "disconnect");
    const burst = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => send(i + 3)));
    assertEquals(await dropped, "transport close");
    const acked = burst.filter((r) => r.status === "fulfilled").length;
    assert(acked < 20, "every send of the burst was taken");
    // The acked sends are the ones before the refused one, in order.
    assertEquals(
      burst.slice(0, acked).map((r) => r.status === "fulfilled" && r.value.message),
      Array.from({ length: acked }, (_, i) => `m${i + 3}`),
    );
    assertEquals(server.app.context.metrics.errors.get("too_much_queued"), 1);
    // The client reconnects on its own and reloads exactly those messages.
    await next(socket, "authenticated");
    const history = await socket.timeout(3000).emitWithAck("get_messages", { ticketId: "8" });
    assertEquals(
      (history.messages as Payload[]).map((m) => m.message),
      Array.from({ length: 3 + acked }, (_, i) => `m${i}`),
    );
  }, {
    MAX_FILE_BYTES: "150000",
    INBOUND_QUEUE_BYTES: "1",
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
});

Deno.test("socketio: polling POSTs of sessions without a token hold at most two files' frames at once; past that they get 503", async () => {
  // MAX_FILE_BYTES 3000: a frame is 4,000 + 64 KiB, so two hold 139,072 bytes; each POST's
  // first 16 KiB is not counted.
  await withChat(async (s) => {
    const base = `${s.url}/socket.io/?EIO=4&transport=polling`;
    const session = async () => {
      const open = await (await fetch(base)).text();
      return JSON.parse(open.slice(1)).sid as string;
    };
    // A POST whose first 69,000 bytes have come (52,616 counted), the rest held back.
    const held = async () => {
      const sid = await session();
      let finish!: () => void;
      const rest = new Promise<void>((r) => finish = r);
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(new TextEncoder().encode(`42["x","${"a".repeat(68_992)}`));
          await rest;
          controller.enqueue(new TextEncoder().encode(`"]`));
          controller.close();
        },
      });
      const reply = fetch(`${base}&sid=${sid}`, { method: "POST", body });
      return { reply, finish };
    };
    const first = await held();
    const second = await held();
    try {
      await new Promise((r) => setTimeout(r, 300));
      const sid = await session();
      const refused = await fetch(`${base}&sid=${sid}`, {
        method: "POST",
        body: `42["x","${"b".repeat(68_992)}"]`,
      });
      await refused.body?.cancel();
      assertEquals(refused.status, 503);
      // A tokenless client's CONNECT still goes through.
      const small = await fetch(`${base}&sid=${await session()}`, { method: "POST", body: "40" });
      await small.body?.cancel();
      assertEquals(small.status, 200);
    } finally {
      first.finish();
      second.finish();
    }
    for (const r of [first, second]) {
      const res = await r.reply;
      assertEquals(res.status, 200);
      await res.body?.cancel();
    }
  }, { MAX_FILE_BYTES: "3000" });
});

Deno.test("socketio: once a shutdown's drain is over, an event is dropped, not stored with its session about to close", async () => {
  await withChat(async (s, client) => {
    const socket = await inTicket(s, client, "t-drain");
    const first = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: "t-drain", message: "before" });
    assertEquals((await first).data.message, "before");
    await s.app.drain();
    socket.emit("send_message", { ticketId: "t-drain", message: "too late" });
    // Neither echoed nor stored.
    const late = await next(socket, "new_message", 500).then(() => "echoed", () => "dropped");
    assertEquals(late, "dropped");
    const stored = await s.app.context.chat.history("ticket:t-drain", { limit: 10 });
    assertEquals(stored.map((m) => m.body), ["before"]);
  });
});

/** How a WebSocket client of `token` fares: "in", or the `authentication_error` it is told. */
async function signIn(client: (o?: object) => ClientSocket, token: string): Promise<string> {
  const socket = client({ auth: { token }, transports: ["websocket"] });
  try {
    return await Promise.race([
      next(socket, "authenticated").then(() => "in"),
      next<{ message: string }>(socket, "authentication_error").then((e) => e.message),
    ]);
  } finally {
    socket.disconnect();
  }
}

/** Sends one masked client text frame of any length below 64 KiB on a raw connection. */
async function sendFrame(conn: Deno.TcpConn, text: string): Promise<void> {
  const payload = new TextEncoder().encode(text);
  const mask = [7, 1, 2, 9];
  const head = payload.length < 126
    ? [0x81, 0x80 | payload.length]
    : [0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff];
  await conn.write(new Uint8Array([...head, ...mask, ...payload.map((b, i) => b ^ mask[i % 4])]));
}

Deno.test("socketio: a WebSocket session closed as a slow consumer still counts against its user's SOCKETS_PER_USER while its peer holds the connection unread", async () => {
  await withChat(async (s, client) => {
    const token = await s.token({ sub: "9", rooms: ["ticket:t-z"] });
    const conn = await silentPeer(s.port, "/socket.io/?EIO=4&transport=websocket");
    await sendFrame(conn, `40${JSON.stringify({ token })}`);
    await sendFrame(conn, '42["join_ticket",{"ticketId":"t-z"}]');
    const open = () => s.app.context.metrics.connections.get("socket.io") ?? 0;
    await eventually(() => open() === 1, 3000, "the silent session");
    const writer = await inTicket(s, client, "t-z");
    await new Promise((r) => setTimeout(r, 200));
    const message = "y".repeat(19_000);
    for (let sent = 0; sent < 2000 && open() === 2; sent += 25) {
      const echoes = Array.from({ length: 25 }, () => next(writer, "new_message"));
      for (let i = 0; i < 25; i++) writer.emit("send_message", { ticketId: "t-z", message });
      await Promise.all(echoes.map((e) => e.catch(() => {})));
    }
    await eventually(() => open() === 1, 5000, "the eviction");
    // Closed, but its connection is held by the peer that never reads: still user 9's.
    assertEquals(await signIn(client, token), "Too many connections for this user");
    conn.close();
    await eventually(async () => await signIn(client, token) === "in", 5000, "the slot back");
  }, {
    SOCKETS_PER_USER: "1",
    SLOW_CONSUMER_BYTES: String(1024 * 1024),
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
  });
});

for (
  const [ending, body] of [
    ["the client closes it", "1"],
    ["a packet it cannot parse", "49"],
    ["its namespace is left", "41"],
  ]
) {
  Deno.test(`socketio: a session that ends (${ending}) while its WebSocket upgrade is being probed keeps its user's slot until that connection goes`, async () => {
    await withChat(async (s, client) => {
      const token = await s.token({ sub: "9", rooms: ["ticket:t-p"] });
      const base = `${s.url}/socket.io/?EIO=4&transport=polling`;
      const sid = JSON.parse((await (await fetch(base)).text()).slice(1)).sid as string;
      const post = async (text: string) => {
        const res = await fetch(`${base}&sid=${sid}`, { method: "POST", body: text });
        await res.body?.cancel();
      };
      await post(`40${JSON.stringify({ token })}`);
      await (await fetch(`${base}&sid=${sid}`)).text();
      // The upgrade is probed by a peer that then goes silent.
      const conn = await silentPeer(s.port, `/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
      await sendFrame(conn, "2probe");
      await new Promise((r) => setTimeout(r, 200));
      await post(body);
      await new Promise((r) => setTimeout(r, 200));
      assertEquals(await signIn(client, token), "Too many connections for this user");
      conn.close();
      await eventually(async () => await signIn(client, token) === "in", 5000, "the slot back");
    }, { SOCKETS_PER_USER: "1" });
  });
}

Deno.test("socket.io ticket chat: get_messages for six tickets of long CJK messages at once keeps the session, every ticket loaded, answered in the order asked", async () => {
  await withChat(async (server, client) => {
    const chat = server.app.context.chat;
    // 20,000 characters, 60 kB of UTF-8: each answer is cut at 1 MiB, and six at once pass
    // SLOW_CONSUMER_BYTES (4 MiB) unless each waits for the reader to take the one before.
    const body = "我们已经收到您的问题".repeat(1990);
    const tickets = ["41", "42", "43", "44", "45", "46"];
    for (const t of tickets) {
      await Promise.all(
        Array.from(
          { length: 40 },
          (_, i) => chat.send(null, `ticket:${t}`, { body: `${i} ${body}` }),
        ),
      );
    }
    const socket = client({ transports: ["websocket"], reconnection: false });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    const ended: string[] = [];
    socket.on("disconnect", (reason: string) => ended.push(reason));
    const order: string[] = [];
    socket.on("messages_loaded", (data: { ticketId: string }) => order.push(data.ticketId));
    const pages = await Promise.all(
      tickets.map((ticketId) =>
        socket.timeout(20_000).emitWithAck("get_messages", { ticketId }) as Promise<
          { messages: unknown[] }
        >
      ),
    );
    assertEquals(ended, []);
    assertEquals(order, tickets);
    assert(pages.every((p) => p.messages.length > 0), "a ticket loaded no messages");
  });
});

/**
 * A server whose ticket 6 holds about 1 MB of history (one page) and ticket 7 one short message
 * ("first"), and a long-polling session of user 9 (who may enter every ticket) not yet connected
 * to the namespace: for `get_messages` that wait behind a page not yet fetched.
 */
async function behindABigPage(env: Record<string, string> = {}) {
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "25000",
    SOCKETIO_PING_TIMEOUT_MS: "20000",
    ...env,
  });
  try {
    const chat = server.app.context.chat;
    await Promise.all(
      Array.from({ length: 50 }, () => chat.send(null, "ticket:6", { body: "y".repeat(20_000) })),
    );
    await chat.send(null, "ticket:7", { body: "first" });
    const token = await server.token({ sub: "9", rooms: ["ticket:*"] });
    return { server, chat, token, ...(await pollingSession(server.url, token)) };
  } catch (err) {
    await server.close();
    throw err;
  }
}

Deno.test("socket.io ticket chat: a get_messages waiting for its reader is read when its turn comes (so it holds what was sent meanwhile), and only so many wait", async () => {
  // Past the rate limit they would wait for their turn, not for the page: a rate that lets them
  // all in at once.
  const { server, chat, events, post, poll } = await behindABigPage({
    RATE_LIMIT_PER_SECOND: "1000",
    RATE_LIMIT_USER_PER_SECOND: "1000",
  });
  try {
    assertEquals(await post("40"), 200);
    await poll();
    assertEquals(await post('42["join_ticket",{"ticketId":"7"}]'), 200);
    await poll();
    events.length = 0;
    // Ticket 6's answer (with an ack, so twice) is not fetched yet: ticket 7's waits for it,
    // and so do 104 more, past the 100 that may wait (one for every ticket of a socket).
    assertEquals(await post('421["get_messages",{"ticketId":"6"}]'), 200);
    assertEquals(await post('42["get_messages",{"ticketId":"7"}]'), 200);
    const more = Array(104).fill('42["get_messages",{"ticketId":"7"}]');
    assertEquals(await post(more.join("\x1e")), 200);
    await new Promise((r) => setTimeout(r, 200));
    await chat.send(null, "ticket:7", { body: "late" });
    for (let i = 0; i < 40 && events.filter((e) => e[0] === "messages_loaded").length < 2; i++) {
      await poll();
    }
    const refused = events.filter(([name]) => name === "messages_error");
    assertEquals(refused.length >= 4, true, `${refused.length} refused`);
    assertEquals(refused[0][1], { message: "Too many messages: slow down" });
    const late = events.findIndex(([name, d]) =>
      name === "new_message" && (d.data as { message: string }).message === "late"
    );
    const loaded = events.find(([name, d]) => name === "messages_loaded" && d.ticketId === "7")!;
    assertEquals(late >= 0, true, "new_message(late)");
    assertEquals(
      (loaded[1].messages as { message: string }[]).map((m) => m.message),
      ["first", "late"],
    );
  } finally {
    await server.close();
  }
});

Deno.test("socket.io ticket chat: a get_messages waiting its turn is answered though the socket authenticated again with the same token meanwhile", async () => {
  const { server, token, events, post, poll } = await behindABigPage();
  try {
    await post("40");
    await poll();
    // Ticket 6's page (twice, with an ack) is not fetched: ticket 7's waits behind it.
    await post('421["get_messages",{"ticketId":"6"}]');
    await post('42["get_messages",{"ticketId":"7"}]');
    await post(`42["authenticate",{"token":"${token}"}]`);
    for (
      let i = 0;
      i < 40 && !events.some(([n, d]) => n === "messages_loaded" && d.ticketId === "7");
      i++
    ) {
      await poll();
    }
    assertEquals(events.filter(([n]) => n === "messages_error"), []);
    const loaded = events.find(([n, d]) => n === "messages_loaded" && d.ticketId === "7");
    assertEquals((loaded?.[1].messages as { message: string }[]).map((m) => m.message), ["first"]);
  } finally {
    await server.close();
  }
});

Deno.test("socket.io: a connection may be in 100 tickets; the 101st join is refused on join_ticket_error and the ack, the socket stays, and a leave makes room", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    for (let i = 1; i <= 100; i++) {
      const acked = await socket.timeout(5000).emitWithAck("join_ticket", { ticketId: String(i) });
      assertEquals(acked, { ticketId: String(i) });
    }
    const refused = next(socket, "join_ticket_error");
    const ack = await socket.timeout(5000).emitWithAck("join_ticket", { ticketId: "101" });
    const message = "At most 100 tickets per connection: leave one (leave_ticket) first";
    assertEquals([ack, await refused], [{ error: message }, { message }]);
    // Still connected and in its tickets: a message in one of them arrives.
    socket.emit("send_message", { ticketId: "100", message: "still here" });
    assertEquals((await next<{ data: Payload }>(socket, "new_message")).data.message, "still here");
    await socket.timeout(5000).emitWithAck("leave_ticket", { ticketId: "1" });
    assertEquals(await socket.timeout(5000).emitWithAck("join_ticket", { ticketId: "101" }), {
      ticketId: "101",
    });
  }, { RATE_LIMIT_PER_SECOND: "100000", RATE_LIMIT_USER_PER_SECOND: "100000" });
});

Deno.test("socket.io: SOCKETIO_AUTH_TIMEOUT_MS past a timer's 2^31 - 1 ms (35 days) leaves a connection its time, not 1 ms", async () => {
  await withChat(async (_server, client) => {
    const socket = client({ transports: ["websocket"], reconnection: false });
    await next(socket, "connect");
    const outcome = await new Promise<string>((resolve) => {
      socket.on("disconnect", (reason) => resolve(`disconnected: ${reason}`));
      setTimeout(() => resolve("still connected"), 1000);
    });
    assertEquals(outcome, "still connected");
  }, { SOCKETIO_AUTH_TIMEOUT_MS: "3000000000" });
});

/** Resolves once `done` holds or `ms` have passed, whichever is first (the caller asserts). */
async function settles(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await delay(20);
}

/**
 * A client of user 1 in `tickets` (one message each), running the document's connect handler:
 * authenticate, then at once a `join_ticket` and a `get_messages` for every open ticket. What it
 * is told is counted: tickets joined and loaded on the last connect, errors, disconnects.
 */
async function rejoiner(
  server: TestServer,
  client: (o?: object) => ClientSocket,
  tickets: string[],
  options: object = {},
) {
  const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
  const socket = client({ transports: ["websocket"], ...options });
  const seen = { connects: 0, joined: new Set<string>(), loaded: new Set<string>() };
  const errors: unknown[] = [];
  const disconnects: string[] = [];
  socket.on("connect", () => {
    seen.connects++;
    seen.joined.clear();
    seen.loaded.clear();
    socket.emit("authenticate", { token });
    for (const ticketId of tickets) {
      socket.emit("join_ticket", { ticketId });
      socket.emit("get_messages", { ticketId });
    }
  });
  socket.on("joined_ticket", (d: Payload) => seen.joined.add(String(d.ticketId)));
  socket.on("messages_loaded", (d: { ticketId: string; messages: Payload[] }) => {
    if (d.messages.at(-1)?.message === `in ${d.ticketId}`) seen.loaded.add(d.ticketId);
  });
  for (const e of ["authentication_error", "join_ticket_error", "messages_error"]) {
    socket.on(e, (m: Payload) => errors.push(`${e}: ${m.message}`));
  }
  socket.on("disconnect", (reason: string) => disconnects.push(reason));
  const everyTicket = () =>
    seen.joined.size === tickets.length && seen.loaded.size === tickets.length;
  const summary = () => ({
    connects: seen.connects,
    joined: seen.joined.size,
    loaded: seen.loaded.size,
    errors: errors.length,
    firstErrors: errors.slice(0, 2),
    disconnects: disconnects.length,
  });
  return { socket, everyTicket, summary };
}

/** Ticket ids 1 to `n`, each holding one message, `in <id>`. */
async function ticketsWithAMessage(server: TestServer, n: number): Promise<string[]> {
  const tickets = Array.from({ length: n }, (_, i) => String(i + 1));
  await Promise.all(
    tickets.map((t) => server.app.context.chat.send(null, `ticket:${t}`, { body: `in ${t}` })),
  );
  return tickets;
}

Deno.test("socket.io ticket chat: the document's reconnect handler rejoining 45 tickets at once (past the burst of 40) gets back into each, with its history, and stays connected, also after the transport drops", async () => {
  await withChat(async (server, client) => {
    const tickets = await ticketsWithAMessage(server, 45);
    const agent = await rejoiner(server, client, tickets);
    const expected = (connects: number, disconnects: number) => ({
      connects,
      joined: 45,
      loaded: 45,
      errors: 0,
      firstErrors: [],
      disconnects,
    });
    await settles(() => agent.everyTicket(), 10_000);
    assertEquals(agent.summary(), expected(1, 0));
    // What a server restart is to the client: the transport drops, it reconnects by itself and
    // its connect handler sends the same burst again.
    for (const socket of server.app.io.of("/").sockets.values()) socket.conn.close();
    await settles(() => agent.summary().connects === 2 && agent.everyTicket(), 10_000);
    await delay(300);
    assertEquals(agent.summary(), expected(2, 1));
  });
});

Deno.test("socket.io ticket chat: three tabs of one user, signed in by their handshakes, rejoining 40 tickets each at once (past the user's burst of 100) all get back in", async () => {
  await withChat(async (server, client) => {
    const tickets = await ticketsWithAMessage(server, 40);
    const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
    const tabs = await Promise.all(
      [1, 2, 3].map(() => rejoiner(server, client, tickets, { auth: { token } })),
    );
    await settles(() => tabs.every((t) => t.everyTicket()), 10_000);
    await delay(300);
    assertEquals(
      tabs.map((t) => t.summary()),
      tabs.map(() => ({
        connects: 1,
        joined: 40,
        loaded: 40,
        errors: 0,
        firstErrors: [],
        disconnects: 0,
      })),
    );
  });
});

Deno.test("socket.io ticket chat: a loop of joins and leaves waits its turn under the rate (no close; past 400 waiting one is refused), while a flood of sends meanwhile is still closed", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"], reconnection: false });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    const disconnects: string[] = [];
    socket.on("disconnect", (reason: string) => disconnects.push(reason));
    let done = 0;
    const refused: unknown[] = [];
    const answer = (reply: Payload) => reply.error === undefined ? done++ : refused.push(reply);
    for (let i = 0; i < 225; i++) {
      socket.emit("join_ticket", { ticketId: "1" }, answer);
      socket.emit("leave_ticket", { ticketId: "1" }, answer);
    }
    await delay(1000);
    // The burst (less what is kept for sends) and a second at 20/s, not 450 at once.
    assert(done >= 30 && done <= 70, `${done} joins and leaves handled in a second`);
    assert(refused.length > 0, "none refused past the 400 waiting");
    assertEquals(
      new Set(refused.map((r) => JSON.stringify(r))),
      new Set([
        JSON.stringify({ error: "Too many messages: slow down" }),
      ]),
    );
    assertEquals(disconnects, []);
    // Sends are refused past the rate as before, and a flood of them closes the transport: the
    // joins taken meanwhile do not clear its strikes.
    for (let i = 0; i < 100; i++) socket.emit("send_message", { ticketId: "1", message: `${i}` });
    await settles(() => disconnects.length > 0, 5000);
    assertEquals(disconnects, ["transport close"]);
  });
});

Deno.test("socket.io ticket chat: a send right after a rejoin of 17 tickets (34 events, past what goes at once) waits for the join sent before it: the sender gets its own new_message, and every event its answer", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"], reconnection: false });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    const log: string[] = [];
    socket.on("joined_ticket", (d: Payload) => log.push(`joined ${d.ticketId}`));
    socket.on("new_message", (d: { data: Payload }) => log.push(`new_message ${d.data.ticketId}`));
    for (const e of ["join_ticket_error", "messages_error", "send_message_error"]) {
      socket.on(e, (m: Payload) => log.push(`${e}: ${m.message}`));
    }
    const acks: string[] = [];
    const acked = (what: string) => (reply: Payload) =>
      acks.push(reply.error === undefined ? what : `${what}: ${reply.error}`);
    // The document's reconnect handler in 17 tickets (the burst less what is kept for sends lets
    // 30 go at once: the last join waits its turn), then a message in the last one.
    for (let t = 1; t <= 17; t++) {
      socket.emit("join_ticket", { ticketId: String(t) }, acked(`join ${t}`));
      socket.emit("get_messages", { ticketId: String(t) }, acked(`get ${t}`));
    }
    socket.emit("send_message", { ticketId: "17", message: "hello" }, acked("send"));
    await settles(() => acks.length === 35 && log.includes("new_message 17"), 5000);
    assertEquals(log.filter((line) => !line.startsWith("joined")), ["new_message 17"]);
    assert(log.indexOf("joined 17") < log.indexOf("new_message 17"), log.join(", "));
    // Each answered (side by side, so not in the order sent), none refused, the send after its join.
    assertEquals(
      acks.toSorted(),
      [...Array.from({ length: 17 }, (_, i) => [`join ${i + 1}`, `get ${i + 1}`]).flat(), "send"]
        .toSorted(),
    );
    assert(acks.indexOf("join 17") < acks.indexOf("send"), acks.join(", "));
    const stored = await server.app.context.chat.historyPage("ticket:17", { limit: 10 });
    assertEquals(stored.messages.map((m) => m.body), ["hello"]);
  });
});

Deno.test("socket.io ticket chat: a send right after a join whose access check is slow waits for that join, so the sender gets its own new_message", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let held = false;
  await withChat(
    async (server, client) => {
      const socket = client({ transports: ["websocket"] });
      await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
      const got: string[] = [];
      socket.on("new_message", (d: { data: Payload }) => got.push(String(d.data.message)));
      socket.emit("join_ticket", { ticketId: "slow" });
      const ack = socket.timeout(5000).emitWithAck("send_message", {
        ticketId: "slow",
        message: "mine",
      });
      await delay(300);
      release();
      assertEquals((await ack).message, "mine");
      await settles(() => got.length > 0, 2000);
      assertEquals(got, ["mine"]);
    },
    {},
    {
      access: (inner) => ({
        async canAccess(user, room, options) {
          // The join's first check only: the send's goes through at once.
          if (room === "ticket:slow" && !held) {
            held = true;
            await gate;
          }
          return await inner.canAccess(user, room, options);
        },
      }),
    },
  );
});

Deno.test("socket.io ticket chat: joins sent after one user's authenticate, still being checked, and before another user's are the first user's: the second waits its turn, and is not left in them", async () => {
  const tickets = 60;
  await withChat(
    async (server, client) => {
      const one = await server.token({ sub: "1", rooms: ["ticket:*"] });
      const two = await server.token({ sub: "2", rooms: ["ticket:*"] });
      const poster = client({ transports: ["websocket"] });
      await authenticated(poster, await server.token({ sub: "3", rooms: ["ticket:*"] }));
      await joined(poster, String(tickets));
      const page = client({ transports: ["websocket"] });
      await next(page, "connect");
      const answers: string[] = [];
      const events: string[] = [];
      page.on("authenticated", (m: { user: Payload }) => events.push(`authenticated ${m.user.id}`));
      page.on(
        "new_message",
        (m: { data: Payload }) => events.push(`new_message ${m.data.ticketId}`),
      );
      // A switch of account without waiting for answers: past the rate, the joins wait in line.
      page.emit("authenticate", { token: one });
      for (let t = 1; t <= tickets; t++) {
        page.emit("join_ticket", { ticketId: String(t) }, (reply: Payload) => {
          answers.push(reply.error === undefined ? "joined" : String(reply.error));
        });
      }
      page.emit("authenticate", { token: two });
      await settles(() => answers.length >= tickets, 15_000);
      const ack = await poster.timeout(5000).emitWithAck("send_message", {
        ticketId: String(tickets),
        message: "for the ticket's members",
      });
      assertEquals((ack as Payload).message, "for the ticket's members");
      await delay(500);
      // User 1's joins are answered as user 1's (all but one racing the switch, at most), and the
      // sign-in as user 2 leaves them: user 2 hears nothing of them.
      assertEquals({
        refused: answers.filter((a) => a !== "joined").length <= 1,
        after: events.slice(events.indexOf("authenticated 2") + 1),
      }, { refused: true, after: [] });
    },
    {},
    slowDirectory((id) => id === "1" ? 300 : 0),
  );
});

Deno.test("socket.io ticket chat: an authenticate waiting in line behind joins goes ahead once the one before it fails, and a file sent before sign-in waits for it: the page signs in and stays", async () => {
  await withChat(
    async (server, client) => {
      const one = await server.token({ sub: "1", rooms: ["ticket:*"] });
      const two = await server.token({ sub: "2", rooms: ["ticket:*"] });
      // User 1's one socket allowed is taken elsewhere: the page's authenticate as user 1 fails.
      const holder = client({ transports: ["websocket"], auth: { token: one } });
      await next(holder, "authenticated");
      const page = client({ transports: ["websocket"], reconnection: false });
      await next(page, "connect");
      const log: string[] = [];
      page.on("authenticated", (m: { user: Payload }) => log.push(`authenticated ${m.user.id}`));
      page.on("disconnect", (reason: string) => log.push(`disconnect ${reason}`));
      page.emit("authenticate", { token: one });
      for (let t = 1; t <= 60; t++) page.emit("join_ticket", { ticketId: String(t) });
      const sent = page.timeout(8000).emitWithAck("send_message", {
        ticketId: "7",
        message: "photo",
        attachments: [{ name: "p.bin", data: new Uint8Array(100_000) }],
      });
      page.emit("authenticate", { token: two });
      assertEquals(((await sent) as Payload).message, "photo");
      await delay(300);
      assertEquals(log, ["authenticated 2"]);
    },
    { SOCKETS_PER_USER: "1" },
    slowDirectory((id) => id === "1" ? 300 : 0),
  );
});

Deno.test("socket.io ticket chat: an authenticate behind a rejoin emitted while offline is handled at once, and the joins before it wait for it however long their line (80 joins, 2.5 s past what goes at once)", async () => {
  await withChat(async (server, client) => {
    const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
    const socket = client({ autoConnect: false, transports: ["websocket"], reconnection: false });
    const errors: unknown[] = [];
    socket.on("join_ticket_error", (m: Payload) => errors.push(m.message));
    socket.on("connect", () => socket.emit("authenticate", { token }));
    const joinedTickets: unknown[] = [];
    for (let t = 1; t <= 80; t++) {
      socket.emit("join_ticket", { ticketId: String(t) }, (reply: Payload) => {
        if (reply.error === undefined) joinedTickets.push(reply.ticketId);
        else errors.push(reply.error);
      });
    }
    socket.connect();
    await settles(() => joinedTickets.length + errors.length >= 80, 8000);
    assertEquals({ joined: joinedTickets.length, errors }, { joined: 80, errors: [] });
  });
});

Deno.test("socketio: a send waiting in line behind a rejoin when a shutdown begins is still stored and answered", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"], reconnection: false });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    let answered = 0;
    for (let t = 1; t <= 17; t++) {
      socket.emit("join_ticket", { ticketId: String(t) }, () => answered++);
      socket.emit("get_messages", { ticketId: String(t) }, () => answered++);
    }
    const ack = socket.timeout(5000).emitWithAck("send_message", {
      ticketId: "17",
      message: "in line",
    });
    // The 30 that went at once are answered; the last joins, and the send behind them, wait.
    await settles(() => answered >= 30, 2000);
    await server.app.drain();
    assertEquals(((await ack) as Payload).message, "in line");
    const stored = await server.app.context.chat.historyPage("ticket:17", { limit: 10 });
    assertEquals(stored.messages.map((m) => m.body), ["in line"]);
  });
});

Deno.test("socket.io ticket chat: a flood of join_ticket past the 400 that may wait is refused and then closed like any flood, not answered as fast as it comes", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"], reconnection: false });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    let refused = 0;
    socket.on("join_ticket_error", () => refused++);
    const disconnects: string[] = [];
    socket.on("disconnect", (reason: string) => disconnects.push(reason));
    // 1,000 at once, 50 times the rate: 30 go, 400 wait, and the rest are refused.
    for (let i = 0; i < 1000; i++) socket.emit("join_ticket", { ticketId: String(1 + (i % 5)) });
    await settles(() => disconnects.length > 0, 5000);
    assertEquals(disconnects, ["transport close"]);
    // The 40 refusals a connection's burst allows, then the one that closes it.
    assertEquals(refused, 41);
  });
});

Deno.test("socket.io ticket chat: a send and a typing_start made as one user behind that user's slow join, before the socket signs in as another, are the first user's: stored as sent by them, never shown as the second's", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  let held = false;
  await withChat(
    async (server, client) => {
      // Another agent in the ticket, who sees what the others do there.
      const observer = client({ transports: ["websocket"] });
      await authenticated(observer, await server.token({ sub: "3", rooms: ["ticket:*"] }));
      await joined(observer, "slow");
      const seen: string[] = [];
      observer.on("user_typing", (d: Payload) => seen.push(`typing ${d.userId}`));
      observer.on(
        "new_message",
        (d: { data: { sender: Payload } }) => seen.push(`message from ${d.data.sender._id}`),
      );
      const socket = client({ transports: ["websocket"], reconnection: false });
      await authenticated(
        socket,
        await server.token({ sub: "1", name: "Ann", rooms: ["ticket:*"] }),
      );
      // Ann opens the ticket (its access check is slow), types and at once answers in it.
      socket.emit("join_ticket", { ticketId: "slow" });
      socket.emit("typing_start", { ticketId: "slow" });
      const ack = socket.timeout(5000).emitWithAck("send_message", {
        ticketId: "slow",
        message: "written by Ann",
      });
      // Then the page signs in as Bob, who may enter the ticket too, on the same socket.
      const bob = await server.token({ sub: "2", name: "Bob", rooms: ["ticket:*"] });
      await authenticated(socket, bob);
      release();
      assertEquals(((await ack) as { sender: Payload }).sender._id, "1");
      const page = await server.app.context.chat.historyPage("ticket:slow", { limit: 10 });
      assertEquals(page.messages.map((m) => [m.body, String(m.sender?.id)]), [
        ["written by Ann", "1"],
      ]);
      await settles(() => seen.length > 0, 2000);
      await delay(300);
      // Ann's typing is dropped: she left the socket, and Bob typed nothing.
      assertEquals(seen, ["message from 1"]);
    },
    {},
    {
      access: (inner) => ({
        async canAccess(user, room, options) {
          // User 1's join's first check only.
          if (room === "ticket:slow" && String(user.id) === "1" && !held) {
            held = true;
            await gate;
          }
          return await inner.canAccess(user, room, options);
        },
      }),
    },
  );
});

for (const transports of [["websocket"], ["polling"]]) {
  Deno.test(`socketio: a send waiting in line behind a rejoin of 100 tickets (longer than the drain) when a shutdown begins is answered, its ack and its own new_message though its ticket's join was dropped, over ${transports}`, async () => {
    await withChat(async (server, client) => {
      const socket = client({ transports, reconnection: false });
      const told: string[] = [];
      socket.on(
        "new_message",
        (d: { data: Payload }) => told.push(`new_message ${d.data.message}`),
      );
      await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:*"] }));
      // The document's reconnect handler in 100 tickets: about 8.5 s of pacing.
      for (let t = 1; t <= 100; t++) {
        socket.emit("join_ticket", { ticketId: String(t) });
        socket.emit("get_messages", { ticketId: String(t) });
      }
      // In the last ticket, whose join still waits when the stop drops it: the document's client
      // (no ack) learns the send went from its own new_message.
      const ack = socket.timeout(8000).emitWithAck("send_message", {
        ticketId: "100",
        message: "in line",
      }).catch((err) => ({ error: `no answer: ${err.message}` }));
      await delay(500);
      await server.app.drain();
      // Stored within the drain, as the server is not behind its commits here.
      const answer = await ack as Payload;
      assertEquals({ message: answer.message, error: answer.error, told }, {
        message: "in line",
        error: undefined,
        told: ["new_message in line"],
      });
      const stored = await server.app.context.chat.historyPage("ticket:100", { limit: 10 });
      assertEquals(stored.messages.map((m) => m.body), ["in line"]);
    });
  });
}

Deno.test("socket.io ticket chat: a send waiting in line behind a rejoin when the transport drops is not stored: it was never answered, and the client sends it again once reconnected", async () => {
  await withChat(async (server, client) => {
    const tickets = Array.from({ length: 100 }, (_, i) => String(i + 1));
    const agent = await rejoiner(server, client, tickets);
    await settles(() => agent.summary().connects === 1, 3000);
    await delay(200);
    let acked = false;
    agent.socket.emit("send_message", { ticketId: "3", message: "reply" }, () => acked = true);
    await delay(500);
    for (const s of server.app.io.of("/").sockets.values()) s.conn.close();
    await settles(() => agent.summary().connects === 2, 3000);
    await delay(1000);
    const page = await server.app.context.chat.historyPage("ticket:3", { limit: 10 });
    assertEquals({ acked, stored: page.messages.map((m) => m.body) }, { acked: false, stored: [] });
  });
});

Deno.test("socket.io ticket chat: a user's typing in a ticket it never joined ends when the socket signs in as another user, not at the typing timeout", async () => {
  await withChat(async (server, client) => {
    const observer = client({ transports: ["websocket"] });
    await authenticated(observer, await server.token({ sub: "3", rooms: ["ticket:*"] }));
    await joined(observer, "x");
    const seen: string[] = [];
    observer.on("user_typing", (d: Payload) => seen.push(`typing ${d.userId}`));
    observer.on("user_stopped_typing", (d: Payload) => seen.push(`stopped ${d.userId}`));
    const page = client({ transports: ["websocket"] });
    await authenticated(page, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    // The document lets a client type in a ticket it has not joined.
    page.emit("typing_start", { ticketId: "x" });
    await settles(() => seen.length === 1, 3000);
    await authenticated(page, await server.token({ sub: "2", rooms: ["ticket:*"] }));
    await settles(() => seen.length === 2, 3000);
    assertEquals(seen, ["typing 1", "stopped 1"]);
  }, { TYPING_TIMEOUT_SECONDS: "30" });
});

Deno.test("socket.io ticket chat: a send waiting behind its ticket's join when a flood ends the session is stored and its sender, not in the ticket, gets its own new_message", async () => {
  await withChat(async (server, client) => {
    const observer = client({ transports: ["websocket"] });
    await authenticated(observer, await server.token({ sub: "2", rooms: ["ticket:*"] }));
    await joined(observer, "100");
    const seen: string[] = [];
    observer.on("new_message", (d: { data: Payload }) => seen.push(d.data.message as string));
    // The document's page: it sends without an ack and learns "sent" from its own new_message.
    const page = client({ transports: ["websocket"], reconnection: false });
    const told: string[] = [];
    page.on("new_message", (d: { data: Payload }) => told.push(d.data.message as string));
    await authenticated(page, await server.token({ sub: "1", rooms: ["ticket:*"] }));
    // Its reconnect handler in 100 tickets, a reply in the last, then a flood that ends it.
    for (let t = 1; t <= 100; t++) {
      page.emit("join_ticket", { ticketId: String(t) });
      page.emit("get_messages", { ticketId: String(t) });
    }
    page.emit("send_message", { ticketId: "100", message: "in line" });
    await delay(200);
    for (let i = 0; i < 120; i++) page.emit("send_message", { ticketId: "1", message: "" });
    await settles(() => told.includes("in line") && seen.includes("in line"), 3000);
    const stored = await server.app.context.chat.historyPage("ticket:100", { limit: 10 });
    assertEquals({ stored: stored.messages.map((m) => m.body), seen, told }, {
      stored: ["in line"],
      seen: ["in line"],
      told: ["in line"],
    });
  });
});

Deno.test("socket.io ticket chat: a socket that authenticates again as another user leaves the first user's tickets, so the second hears nothing of them", async () => {
  await withChat(async (server, client) => {
    const shared = client({ transports: ["websocket"] });
    await authenticated(shared, await server.token({ sub: "1", rooms: ["ticket:5"] }));
    await joined(shared, "5");
    const second = await authenticated(
      shared,
      await server.token({ sub: "2", rooms: ["ticket:6"] }),
    );
    assertEquals((second.user as Payload).id, "2");
    const heard: unknown[] = [];
    shared.on("new_message", (m) => heard.push(m));
    const other = client({ transports: ["websocket"] });
    await authenticated(other, await server.token({ sub: "3", rooms: ["ticket:5"] }));
    await joined(other, "5");
    const own = next(other, "new_message");
    other.emit("send_message", { ticketId: "5", message: "for ticket 5 only" });
    await own;
    await delay(300);
    assertEquals(heard, []);
  });
});

Deno.test("socket.io ticket chat: a socket that authenticates again as another user gives the first user's SOCKETS_PER_USER slot back", async () => {
  await withChat(async (server, client) => {
    const alice = await server.token({ sub: "1", rooms: ["ticket:5"] });
    const shared = client({ transports: ["websocket"] });
    await authenticated(shared, alice);
    const bob = await authenticated(shared, await server.token({ sub: "2", rooms: ["ticket:5"] }));
    assertEquals((bob.user as Payload).id, "2");
    // Alice's one socket is now Bob's: she may open another.
    const again = client({ transports: ["websocket"] });
    await next(again, "connect");
    const outcome = Promise.race([
      next<{ user: Payload }>(again, "authenticated").then((a) => a.user.id),
      next<Payload>(again, "authentication_error").then((e) => e.message),
    ]);
    again.emit("authenticate", { token: alice });
    assertEquals(await outcome, "1");
  }, { SOCKETS_PER_USER: "1" });
});

Deno.test("socket.io ticket chat: a member of a ticket deleted through the API is told `This ticket no longer exists` on join_ticket_error", async () => {
  const admin = "an-admin-token-for-the-ticket-deletion";
  await withChat(async (server, client) => {
    const socket = await inTicket(server, client, "5");
    // A ticket exists once it has a message.
    const sent = next(socket, "new_message");
    socket.emit("send_message", { ticketId: "5", message: "before" });
    await sent;
    const told = next(socket, "join_ticket_error");
    assertEquals(await adminCall(server.url, admin, "DELETE", "/api/rooms/ticket/5"), 204);
    assertEquals(await told, { message: "This ticket no longer exists" });
  }, { ADMIN_TOKEN: admin });
});

Deno.test("socket.io ticket chat: a numeric ticketId names the ticket its digits do: joined, sent and loaded as that ticket's string id", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:42"] }));
    socket.emit("join_ticket", { ticketId: 42 });
    assertEquals(await next(socket, "joined_ticket"), { ticketId: "42" });
    const arrival = next<{ data: Payload }>(socket, "new_message");
    socket.emit("send_message", { ticketId: 42, message: "by number" });
    const { data } = await arrival;
    assertEquals([data.ticketId, data.message], ["42", "by number"]);
    const history = next<{ messages: Payload[] }>(socket, "messages_loaded");
    socket.emit("get_messages", { ticketId: 42 });
    assertEquals((await history).messages.map((m) => m.message), ["by number"]);
  });
});

Deno.test("socket.io ticket chat: get_messages answers at most 500 messages, the newest, without a limit or with a larger one, and says more are left", async () => {
  await withChat(async (server, client) => {
    await storeMessages(server, "ticket:9", 501);
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:9"] }));
    for (const limit of [undefined, 500, 1000]) {
      const loaded = next<{ messages: Payload[]; hasMore: boolean }>(socket, "messages_loaded");
      socket.emit("get_messages", { ticketId: "9", limit });
      const { messages, hasMore } = await loaded;
      assertEquals(
        [messages.length, messages[0].message, messages.at(-1)!.message, hasMore],
        [500, "m2", "m501", true],
        `limit ${limit}`,
      );
    }
  });
});

Deno.test("socket.io ticket chat: a send_message of only spaces is refused with the document's text, `Message or at least one file is required`", async () => {
  await withChat(async (server, client) => {
    const socket = client({ transports: ["websocket"] });
    await authenticated(socket, await server.token({ sub: "1", rooms: ["ticket:5"] }));
    for (const message of ["   ", "\n\t"]) {
      socket.emit("send_message", { ticketId: "5", message });
      assertEquals(await next(socket, "send_message_error"), {
        message: "Message or at least one file is required",
      }, JSON.stringify(message));
    }
  });
});
