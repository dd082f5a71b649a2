/**
 * A room deleted through the admin API while sockets are joining it (native, ticket socket, chat
 * rooms, Socket.IO): every socket ends either in the room's new life or told it is out, never in
 * the room's new life while joined under the old one.
 */

import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import type { Directory } from "../src/core/directory.ts";
import type { AccessPolicy, PresenceStore } from "../src/core/types.ts";
import { assertEquals, delay, nextEvent } from "./assert.ts";
import { adminCall, startTestServer, TestClient, type TestServer } from "./helpers.ts";
import { holdWriteLock } from "./server_process.ts";
import { directoryWith } from "./api_helpers.ts";
import { KV_KEYS } from "../src/store/kv_message_store.ts";

const ADMIN = "an-admin-token-for-the-deletion-races";

async function nativeClient(server: TestServer, sub: string): Promise<TestClient> {
  const token = await server.token({ sub, rooms: ["ticket:*"] });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

/** Joins and sends one message, so that the room has history to delete. */
async function roomWithHistory(server: TestServer, room: string): Promise<TestClient> {
  const a = await nativeClient(server, "1");
  a.send({ type: "join", room, ref: "j" });
  await a.next((f) => f.ref === "j");
  a.send({ type: "send", room, body: "old life", ref: "s" });
  await a.next((f) => f.ref === "s");
  return a;
}

/** A socket that is not in `room` is refused a send there. */
async function assertOutOf(ws: TestClient, room: string): Promise<void> {
  ws.send({ type: "send", room, body: "still here?", ref: "probe" });
  const reply = await ws.next((f) => f.ref === "probe");
  assertEquals([reply.type, reply.code], ["error", "not_found"]);
}

/** Holds the first call that passes it once armed, until released: a race's window, held open. */
class Gate {
  #armed?: { reached: () => void; open: Promise<void> };

  /** Arms it: `reached` settles once a call is held, which goes on at `release`. */
  arm(): { reached: Promise<void>; release: () => void } {
    let release = () => {};
    let reached = () => {};
    const held = new Promise<void>((r) => reached = r);
    this.#armed = { reached, open: new Promise<void>((r) => release = r) };
    return { reached: held, release };
  }

  /** Waits here when armed (the first call only). */
  async pass(): Promise<void> {
    const armed = this.#armed;
    if (!armed) return;
    this.#armed = undefined;
    armed.reached();
    await armed.open;
  }
}

/** Presence whose enters for user 2 pass `gate` first. */
const enterHeld = (gate: Gate) => (inner: PresenceStore): PresenceStore => ({
  enter: async (room, user, connId) => {
    if (String(user.id) === "2") await gate.pass();
    return await inner.enter(room, user, connId);
  },
  exit: (room, user, connId) => inner.exit(room, user, connId),
  sweep: (room, open) => inner.sweep(room, open),
  list: (room) => inner.list(room),
});

/** Access whose checks for user 2 (fresh ones, or the others) pass `gate` once decided. */
const checkHeld = (gate: Gate, fresh: boolean) => (inner: AccessPolicy): AccessPolicy => ({
  async canAccess(user, room, options) {
    const allowed = await inner.canAccess(user, room, options);
    if (String(user.id) === "2" && Boolean(options?.fresh) === fresh) await gate.pass();
    return allowed;
  },
});

Deno.test("room deletion races: a join whose presence write spans the deletion is refused with room_deleted", async () => {
  const gate = new Gate();
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { presence: enterHeld(gate) });
  try {
    const a = await roomWithHistory(server, "ticket:8");
    const { reached: entering, release } = gate.arm();
    const b = await nativeClient(server, "2");
    b.send({ type: "join", room: "ticket:8", since: 0, ref: "j" });
    // B has read the room's generation (0) and is writing its presence.
    await entering;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals((await a.next((f) => f.type === "removed")).reason, "room_deleted");
    release();
    const reply = await b.next((f) => f.ref === "j");
    assertEquals([reply.type, reply.code], ["error", "room_deleted"]);
    await assertOutOf(b, "ticket:8");
    // Joined again, B is in the room's new life.
    b.send({ type: "join", room: "ticket:8", ref: "again" });
    assertEquals((await b.next((f) => f.ref === "again")).epoch, 1);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion races: a socket deleted out of the room while its `joined` is prepared gets `removed`, then the join's error, never `joined`", async () => {
  const gate = new Gate();
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { access: checkHeld(gate, true) });
  try {
    const a = await roomWithHistory(server, "ticket:9");
    const { reached: inRoom, release } = gate.arm();
    const b = await nativeClient(server, "2");
    b.send({ type: "join", room: "ticket:9", ref: "j" });
    // B is a member of the room's hub; its `joined` is not sent yet.
    await inRoom;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/9"), 204);
    assertEquals((await b.next((f) => f.type === "removed")).reason, "room_deleted");
    release();
    const reply = await b.next((f) => f.ref === "j");
    assertEquals([reply.type, reply.code], ["error", "room_deleted"]);
    assertEquals(b.frames.some((f) => (f as { type?: string }).type === "joined"), false);
    await assertOutOf(b, "ticket:9");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion races: a socket that joined between the deletion's notice and the raise of the generation is removed once it is raised", async () => {
  // The deletion waits twice the directory's change-token lag between its notice and the purge:
  // a long lag holds that window open for a whole join.
  const lagMs = 400;
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, {
    directory: (inner: Directory): Directory =>
      new Proxy(inner, {
        get(target, key) {
          if (key === "changeTokenLagMs") return lagMs;
          const value = Reflect.get(target, key, target);
          return typeof value === "function" ? value.bind(target) : value;
        },
      }),
  });
  try {
    const a = await roomWithHistory(server, "ticket:10");
    const deleting = adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/10");
    assertEquals((await a.next((f) => f.type === "removed")).reason, "room_deleted");
    // Inside the window: the generation is not raised yet, so B joins the old one.
    const b = await nativeClient(server, "2");
    b.send({ type: "join", room: "ticket:10", ref: "j" });
    const joined = await b.next((f) => f.ref === "j");
    assertEquals([joined.type, joined.epoch], ["joined", 0]);
    assertEquals(await deleting, 204);
    assertEquals((await b.next((f) => f.type === "removed")).reason, "room_deleted");
    await assertOutOf(b, "ticket:10");
    // A socket joining now is in the new life, and stays.
    const c = await nativeClient(server, "3");
    c.send({ type: "join", room: "ticket:10", ref: "j" });
    assertEquals((await c.next((f) => f.ref === "j")).epoch, 1);
    c.send({ type: "send", room: "ticket:10", body: "new life", ref: "s" });
    assertEquals((await c.next((f) => f.ref === "s")).type, "ack");
    await a.close();
    await b.close();
    await c.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion races: a ticket socket whose access check spans the deletion is closed with 4004, never in the new life", async () => {
  const gate = new Gate();
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { access: checkHeld(gate, false) });
  try {
    const tok = (sub: string) => server.token({ sub, rooms: ["ticket:8"] });
    const a = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${await tok("1")}`);
    a.send({ body: "old life" });
    assertEquals((await a.next()).body, "old life");
    const { reached: checking, release } = gate.arm();
    // B's upgrade: its access is decided (allowed) before the deletion.
    const b = TestClient.connect(`${server.wsUrl}/ws/ticket/8/?token=${await tok("2")}`);
    await checking;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals((await a.closed).code, 4004);
    release();
    await b.opened;
    // The room's new life: a message sent after the deletion.
    const c = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${await tok("3")}`);
    await new Promise((r) => setTimeout(r, 200));
    c.send({ body: "new life" });
    await c.next();
    const outcome = await Promise.race([
      b.closed.then((e) => `closed ${e.code}`),
      b.next((f) => f.body === "new life", 2000).then(() => "received the new life"),
    ]);
    assertEquals(outcome, "closed 4004");
    await b.close();
    await c.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion races: a chat-rooms socket whose presence write spans the deletion is closed with 4000", async () => {
  const gate = new Gate();
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { presence: enterHeld(gate) });
  try {
    const url = async (sub: string) =>
      `${server.wsUrl}/ws/rooms/lobby/?token=${await server.token({ sub, username: `u${sub}` })}`;
    const a = await TestClient.open(await url("1"));
    await a.next((f) => f.type === "room_users_list");
    a.send({ message: "old life" });
    await a.next((f) => f.type === "chat_message");
    const { reached: entering, release } = gate.arm();
    const b = await TestClient.open(await url("2"));
    await entering;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/room/lobby"), 204);
    assertEquals((await a.closed).code, 4000);
    release();
    const c = await TestClient.open(await url("3"));
    await c.next((f) => f.type === "room_users_list");
    c.send({ message: "new life" });
    const outcome = await Promise.race([
      b.closed.then((e) => `closed ${e.code}`),
      b.next((f) => f.message === "new life", 2000).then(() => "received the new life"),
    ]);
    assertEquals(outcome, "closed 4000");
    await b.close();
    await c.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion races: a Socket.IO join_ticket whose access check spans the deletion is refused, never joined to the new life", async () => {
  const gate = new Gate();
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { access: checkHeld(gate, false) });
  const sockets: ClientSocket[] = [];
  try {
    const tok = (sub: string) => server.token({ sub, rooms: ["ticket:8"] });
    const a = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${await tok("1")}`);
    a.send({ body: "old life" });
    await a.next();
    const b = connect(server.url, {
      forceNew: true,
      reconnection: false,
      transports: ["websocket"],
      auth: { token: await tok("2") },
    });
    sockets.push(b);
    await nextEvent(b, "authenticated");
    const { reached: checking, release } = gate.arm();
    const events: string[] = [];
    b.on("joined_ticket", () => events.push("joined_ticket"));
    b.on("join_ticket_error", (e: { message: string }) => events.push(`error: ${e.message}`));
    b.on(
      "new_message",
      (e: { data: { message: string } }) => events.push(`new: ${e.data.message}`),
    );
    b.emit("join_ticket", { ticketId: "8" });
    await checking;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals((await a.closed).code, 4004);
    release();
    await new Promise((r) => setTimeout(r, 300));
    const c = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${await tok("3")}`);
    c.send({ body: "new life" });
    await c.next();
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(events.includes("joined_ticket"), false, JSON.stringify(events));
    await c.close();
  } finally {
    for (const s of sockets) s.disconnect();
    await server.close();
    await new Promise((r) => setTimeout(r, 50));
  }
});

Deno.test("room deletion races: an API upload whose access check spans the deletion is answered 409 room_deleted, not 403", async () => {
  const gate = new Gate();
  let checks = 0;
  // User 2's second check, the send's own after the upload's admission, waits before deciding.
  const access = (inner: AccessPolicy): AccessPolicy => ({
    async canAccess(user, room, options) {
      if (String(user.id) === "2" && ++checks === 2) await gate.pass();
      return await inner.canAccess(user, room, options);
    },
  });
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, { access });
  try {
    const room = { title: "t", participants: [{ user_id: "2" }] };
    assertEquals(await adminCall(server.url, ADMIN, "PUT", "/api/rooms/ticket/5", room), 201);
    const { reached: checking, release } = gate.arm();
    const form = new FormData();
    form.append("file", new File([new Uint8Array([1, 2, 3])], "a.png"));
    const upload = fetch(`${server.url}/api/rooms/ticket/5/attachments`, {
      method: "POST",
      headers: { authorization: `Bearer ${await server.token({ sub: "2" })}` },
      body: form,
    });
    await checking;
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/5"), 204);
    // Past the directory's change token reuse, so that the check reads the deletion.
    await delay(100);
    release();
    const res = await upload;
    const body = await res.json();
    assertEquals([res.status, body.code], [409, "room_deleted"], JSON.stringify(body));
  } finally {
    await server.close();
  }
});

Deno.test("room deletion: a ticket created again right after its deletion is live: an outsider's join_ticket is denied access, not told the ticket was deleted", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  const outsider = connect(server.url, {
    forceNew: true,
    reconnection: false,
    transports: ["websocket"],
    auth: { token: await server.token({ sub: "4" }) },
  });
  const authenticated = nextEvent(outsider, "authenticated");
  try {
    const room = { title: "t", participants: [{ user_id: "2" }] };
    assertEquals(await adminCall(server.url, ADMIN, "PUT", "/api/rooms/ticket/8", room), 201);
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals(await adminCall(server.url, ADMIN, "PUT", "/api/rooms/ticket/8", room), 201);
    await authenticated;
    outsider.emit("join_ticket", { ticketId: "8" });
    // "Deleted" would also tell outsiders which tickets were deleted.
    assertEquals(await nextEvent(outsider, "join_ticket_error"), [
      { message: "Access denied to this ticket" },
    ]);
  } finally {
    outsider.disconnect();
    await server.close();
  }
});

Deno.test("room deletion: a room deleted while another process holds the KV write lock for a moment (an instance sharing the file) is deleted, as a send then is stored", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  try {
    const api = (method: string, path: string, json?: unknown) =>
      adminCall(server.url, ADMIN, method, path, json);
    assertEquals(
      await api("PUT", "/api/rooms/ticket/7", { participants: [{ user_id: "1" }] }),
      201,
    );
    const token = await server.token({ sub: "1", username: "u1" });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await ws.next((f) => f.type === "welcome");
    ws.send({ type: "join", room: "ticket:7", ref: "j" });
    assertEquals((await ws.next((f) => f.ref === "j")).type, "joined");
    // The lock stops a send for its length, which then goes through: it is held.
    let lock = await holdWriteLock(`${server.dataDir}/chat.kv`);
    ws.send({ type: "send", room: "ticket:7", body: "during", ref: "s" });
    await delay(200);
    await lock.release();
    assertEquals((await ws.next((f) => f.ref === "s")).type, "ack");
    lock = await holdWriteLock(`${server.dataDir}/chat.kv`);
    const deleting = api("DELETE", "/api/rooms/ticket/7");
    await delay(200);
    await lock.release();
    assertEquals(await deleting, 204);
    assertEquals((await ws.next((f) => f.type === "removed")).room, "ticket:7");
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("room deletion: a room that does not exist, deleted while another process takes the KV write lock between the deletion's note and its taking back, answers 404 and leaves no note", async () => {
  let kvPath = "";
  let released: Promise<void> | undefined;
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN }, {
    // Just as the directory answers: the note is written, and its taking back comes next.
    directory: directoryWith("deleteRoom", (deleteRoom) => async (...args) => {
      const known = await deleteRoom(...args);
      const lock = await holdWriteLock(kvPath);
      released = delay(300).then(() => lock.release());
      return known;
    }),
  });
  kvPath = `${server.dataDir}/chat.kv`;
  const kv = await Deno.openKv(kvPath);
  try {
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/404"), 404);
    assertEquals((await kv.get(KV_KEYS.deleting("ticket:404"))).value, null);
  } finally {
    await released;
    kv.close();
    await server.close();
  }
});
