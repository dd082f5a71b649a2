/**
 * Read cursors of users the admin API deletes or takes out of a room: a `joined` goes on listing
 * a cursor for as long as the room lives, and each counts toward the 100 readers past which
 * `reads` is left out for everyone.
 */

import { assertEquals } from "./assert.ts";
import { adminCall, startTestServer, TestClient, type TestServer } from "./helpers.ts";

const ADMIN = "an-admin-token-for-read-cursor-cleanup";

/** Opens a native socket of `sub`, whose token opens every ticket and chat room. */
async function connect(server: TestServer, sub: string): Promise<TestClient> {
  const token = await server.token({ sub, username: `user${sub}`, rooms: ["ticket:*", "chat:*"] });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

/** `sub` joins `room`, sends one message and reads up to it. */
async function readIn(server: TestServer, sub: string, room: string): Promise<void> {
  const ws = await connect(server, sub);
  ws.send({ type: "join", room, ref: "j" });
  assertEquals((await ws.next((f) => f.ref === "j")).type, "joined");
  ws.send({ type: "send", room, body: `from ${sub}`, ref: "s" });
  const ack = await ws.next((f) => f.ref === "s");
  ws.send({ type: "read", room, seq: ack.seq, ref: "r" });
  assertEquals((await ws.next((f) => f.ref === "r")).type, "read_ok");
  await ws.close();
}

/** Who a new join of `sub` in `room` is told has read it, sorted. */
async function readersOf(server: TestServer, sub: string, room: string): Promise<string[]> {
  const ws = await connect(server, sub);
  ws.send({ type: "join", room, ref: "j" });
  const joined = await ws.next((f) => f.ref === "j");
  await ws.close();
  return (joined.reads as { user_id: unknown }[]).map((r) => String(r.user_id)).sort();
}

/**
 * Every read cursor key in the server's KV as `room/user`, sorted, after checking that the
 * store's list of the rooms each user read names the same.
 */
async function cursorKeys(server: TestServer): Promise<string[]> {
  const kv = await Deno.openKv(`${server.dataDir}/chat.kv`);
  try {
    const cursors = (await Array.fromAsync(kv.list({ prefix: ["read"] })))
      .map((e) => `${String(e.key[1])}/${String(e.key[2])}`).sort();
    const listed = (await Array.fromAsync(kv.list({ prefix: ["read_room"] })))
      .map((e) => `${String(e.key[2])}/${String(e.key[1])}`).sort();
    assertEquals(listed, cursors);
    return cursors;
  } finally {
    kv.close();
  }
}

Deno.test("a user deleted through the admin API leaves no read cursor: not in rooms they took part in, not in rooms only their token opened; others' stay", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  try {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(server.url, ADMIN, method, path, json);
    for (const id of ["1", "2", "3"]) {
      assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
    }
    const participants = ["1", "2", "3"].map((user_id) => ({ user_id }));
    assertEquals(await api("PUT", "/api/rooms/ticket/7", { participants }), 201);
    // ticket:77 is unknown to the directory (the token's claim opens it); room:lobby is open to
    // everyone signed in.
    for (const room of ["ticket:7", "ticket:77", "room:lobby"]) {
      for (const id of ["1", "2", "3"]) await readIn(server, id, room);
    }
    assertEquals(await api("DELETE", "/api/users/2"), 204);
    for (const room of ["ticket:7", "ticket:77", "room:lobby"]) {
      assertEquals(await readersOf(server, "1", room), ["1", "3"], room);
    }
    assertEquals(await cursorKeys(server), [
      "room:lobby/1",
      "room:lobby/3",
      "ticket:7/1",
      "ticket:7/3",
      "ticket:77/1",
      "ticket:77/3",
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("a participant removed from a room loses their read cursor there (also when a room save drops them), not elsewhere, unless they still may enter", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  try {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(server.url, ADMIN, method, path, json);
    const participants = ["1", "2", "3", "4"].map((user_id) => ({ user_id }));
    for (const id of ["8", "9"]) {
      assertEquals(
        await api("PUT", `/api/rooms/ticket/${id}`, { owner_id: "4", participants }),
        201,
      );
    }
    for (const room of ["ticket:8", "ticket:9"]) {
      for (const id of ["1", "2", "3", "4"]) await readIn(server, id, room);
    }
    assertEquals(await api("DELETE", "/api/rooms/ticket/8/participants/2"), 204);
    // A save whose list leaves 3 out takes them out the same way.
    const kept = ["1", "4"].map((user_id) => ({ user_id }));
    assertEquals(await api("PUT", "/api/rooms/ticket/8", { participants: kept }), 200);
    // The owner still may enter: their cursor still says what they read.
    assertEquals(await api("DELETE", "/api/rooms/ticket/8/participants/4"), 204);
    assertEquals(await readersOf(server, "1", "ticket:8"), ["1", "4"]);
    assertEquals(await readersOf(server, "1", "ticket:9"), ["1", "2", "3", "4"]);
    assertEquals(await cursorKeys(server), [
      "ticket:8/1",
      "ticket:8/4",
      "ticket:9/1",
      "ticket:9/2",
      "ticket:9/3",
      "ticket:9/4",
    ]);
  } finally {
    await server.close();
  }
});
