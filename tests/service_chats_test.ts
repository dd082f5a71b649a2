/** The FastAPI service and support chats (shared/specs/service-support-chats.md). */

import { assertEquals, assertMatch, within } from "./assert.ts";
import { adminCall, startTestServer, TestClient, type TestServer } from "./helpers.ts";

async function open(
  server: TestServer,
  kind: string,
  id: number | string,
  claims: object,
  via = "query",
) {
  const token = await server.token(claims);
  const url = `${server.wsUrl}/ws/${kind}/${id}`;
  return via === "cookie"
    ? await TestClient.open(url, { headers: { cookie: `access_token=${token}` } })
    : await TestClient.open(`${url}?token=${token}`);
}

Deno.test("service chats: a ping right behind a refused message is answered after its error", async () => {
  // Commits start 300 ms apart: "m1" waits for its commit, and the error of the empty message
  // after it waits its turn; a pong sent at once would overtake both.
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const master = await open(server, "service-chats", 2, { sub: 1, rooms: ["service-chat:2"] });
    const client = await open(server, "service-chats", 2, { sub: 2, rooms: ["service-chat:2"] });
    master.send({ type: "message", content: "m0" });
    assertEquals((await client.next()).content, "m0");
    master.send({ type: "message", content: "m1" });
    master.send({ type: "message", content: " " });
    master.send({ type: "ping" });
    assertEquals((await master.next()).type, "error");
    assertEquals(await master.next(), { type: "pong" });
    assertEquals((await client.next()).content, "m1");
    for (const ws of [master, client]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: messages sent right before the client closes, behind a ping that waits, are all delivered", async () => {
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const master = await open(server, "service-chats", 3, { sub: 1, rooms: ["service-chat:3"] });
    const client = await open(server, "service-chats", 3, { sub: 2, rooms: ["service-chat:3"] });
    master.send({ type: "message", content: "m0" });
    assertEquals((await client.next()).content, "m0");
    // The ping waits for m1's commit, 300 ms after m0's; the close comes meanwhile.
    master.send({ type: "message", content: "m1" });
    master.send("ping");
    master.send({ type: "message", content: "m2" });
    master.socket.close(1000);
    await master.closed;
    assertEquals((await client.next()).content, "m1");
    assertEquals((await client.next()).content, "m2");
    await client.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: an id field in a message is the client's own: every message is stored; client_id makes a send idempotent", async () => {
  const server = await startTestServer();
  try {
    const master = await open(server, "service-chats", 4, { sub: 1, rooms: ["service-chat:4"] });
    const client = await open(server, "service-chats", 4, { sub: 2, rooms: ["service-chat:4"] });
    master.send({ type: "message", content: "first load", id: 1 });
    master.send({ type: "message", content: "after a reload", id: 1 });
    master.send({ type: "message", content: "once", client_id: "c-1" });
    master.send({ type: "message", content: "once, resent", client_id: "c-1" });
    const got: unknown[] = [];
    for (let i = 0; i < 3; i++) got.push((await client.next()).content);
    assertEquals(got, ["first load", "after a reload", "once"]);
    await client.nothing();
    for (const ws of [master, client]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: a message reaches every participant except the sender", async () => {
  const server = await startTestServer();
  try {
    const master = await open(server, "service-chats", 1, { sub: 1, rooms: ["service-chat:1"] });
    const client = await open(
      server,
      "service-chats",
      1,
      { sub: 2, rooms: ["service-chat:1"] },
      "cookie",
    );
    const secondTab = await open(server, "service-chats", 1, { sub: 2, rooms: ["service-chat:1"] });
    master.send({ type: "message", content: "Привет!" });
    for (const ws of [client, secondTab]) {
      const m = await ws.next();
      assertEquals(Object.keys(m), ["type", "id", "content", "sender_id", "chat_id", "created_at"]);
      assertEquals([m.type, m.id, m.content, m.sender_id, m.chat_id], [
        "message",
        1,
        "Привет!",
        1,
        1,
      ]);
      assertMatch(m.created_at as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/);
    }
    await master.nothing();
    client.send({ type: "message", content: "Здравствуйте" });
    assertEquals((await master.next()).id, 2);
    // The sender's other tab is the same user: it gets nothing either.
    await secondTab.nothing();
    for (const ws of [master, client, secondTab]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: a message with files (sent in another protocol) carries their URLs after its text", async () => {
  const server = await startTestServer();
  try {
    const client = await open(server, "service-chats", 4, { sub: 2, rooms: ["service-chat:4"] });
    // The native protocol (and the chat page) can send files into the same chat.
    const token = await server.token({ sub: 1, rooms: ["service-chat:4"] });
    const master = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await master.next((f) => f.type === "welcome");
    master.send({ type: "join", room: "service-chat:4", ref: "j" });
    await master.next((f) => f.ref === "j");
    const data = new TextEncoder().encode("счёт").toBase64();
    master.send({
      type: "send",
      room: "service-chat:4",
      body: "see file",
      files: [{ name: "a.txt", data }],
    });
    master.send({ type: "send", room: "service-chat:4", files: [{ name: "b.txt", data }] });
    const [withText, fileOnly] = [await client.next(), await client.next()];
    const [text, url] = (withText.content as string).split("\n");
    assertEquals(text, "see file");
    assertEquals(await (await fetch(url)).text(), "счёт");
    // A file alone is its link, not an empty message.
    assertMatch(fileOnly.content as string, /^http:\/\/127\.0\.0\.1:\d+\/media\/\S+$/);
    assertEquals(await (await fetch(fileOnly.content as string)).text(), "счёт");
    for (const ws of [client, master]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: /ws/service-chats/007 and /ws/service-chats/7 are one chat, as its integer id is", async () => {
  const server = await startTestServer();
  try {
    const master = await open(server, "service-chats", "007", {
      sub: 1,
      rooms: ["service-chat:7"],
    });
    const client = await open(server, "service-chats", 7, { sub: 2, rooms: ["service-chat:7"] });
    master.send({ type: "message", content: "one chat" });
    const m = await client.next();
    assertEquals([m.content, m.chat_id], ["one chat", 7]);
    for (const ws of [master, client]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: ping/pong heartbeat in JSON and plain text, a line's newline after it too; a client's pong is taken quietly, any other unknown type named in its error", async () => {
  const server = await startTestServer();
  try {
    const ws = await open(server, "service-chats", 2, { sub: 1, rooms: ["service-chat:2"] });
    // A client's own pong is taken quietly: the next frame answered is the ping's.
    ws.send({ type: "pong" });
    ws.send({ type: "ping" });
    assertEquals(await ws.next(), { type: "pong" });
    // A line-based client's ping ends with its newline.
    for (const ping of ["ping", "ping\n"]) {
      ws.socket.send(ping);
      assertEquals(await ws.next<unknown>(), "pong", JSON.stringify(ping));
    }
    ws.send({ type: "dance" });
    assertEquals(await ws.next(), { type: "error", message: "Unknown message type: dance" });
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("service chats: a chat deleted through the API closes its sockets with 4004, as the README says", async () => {
  const admin = "an-admin-token-for-the-chat-deletion";
  const server = await startTestServer({ ADMIN_TOKEN: admin });
  try {
    const claims = { rooms: ["service-chat:3"] };
    const master = await open(server, "service-chats", 3, { sub: 1, ...claims });
    const client = await open(server, "service-chats", 3, { sub: 2, ...claims });
    master.send({ type: "message", content: "history to delete" });
    await client.next();
    assertEquals(await adminCall(server.url, admin, "DELETE", "/api/rooms/service-chat/3"), 204);
    for (const ws of [master, client]) {
      assertEquals((await within(ws.closed, "the deletion's close")).code, 4004);
    }
  } finally {
    await server.close();
  }
});

Deno.test("support chats: support staff enter every support chat; others need to be participants", async () => {
  const server = await startTestServer();
  try {
    const agent = await open(server, "support-chats", 7, { sub: 50, role: "support" });
    const customer = await open(server, "support-chats", 7, { sub: 3, rooms: ["support-chat:7"] });
    customer.send({ type: "message", content: "Help" });
    assertEquals((await agent.next()).content, "Help");
    // A support role does not open service chats, and a stranger gets 4003; bad token 4001.
    const agentToken = await server.token({ sub: 50, role: "support" });
    const stranger = await server.token({ sub: 4, rooms: ["support-chat:8"] });
    for (
      const [url, code] of [
        [`/ws/service-chats/7?token=${agentToken}`, 4003],
        [`/ws/support-chats/7?token=${stranger}`, 4003],
        [`/ws/support-chats/7?token=bad`, 4001],
        [`/ws/support-chats/7`, 4001],
      ] as const
    ) {
      const ws = TestClient.connect(server.wsUrl + url);
      assertEquals((await ws.closed).code, code, url);
    }
    customer.send({ type: "message", content: "" });
    assertEquals(await customer.next(), { type: "error", message: "Message content is required" });
    customer.send("{");
    assertEquals(await customer.next(), { type: "error", message: "Invalid JSON" });
    await agent.close();
    await customer.close();
  } finally {
    await server.close();
  }
});
