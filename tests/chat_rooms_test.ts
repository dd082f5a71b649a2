/** The chat-room server (shared/specs/chat-rooms.md): users list, history, joins and leaves. */

import type { PresenceStore } from "../src/core/types.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { assertEquals, assertMatch, within } from "./assert.ts";
import {
  adminCall,
  eventually,
  passPresence,
  peersFound,
  silentPeer,
  startTestServer,
  TEST_SECRET,
  TestClient,
  type TestServer,
} from "./helpers.ts";
import { withDataDir } from "./server_process.ts";

const user = (n: number) => ({ sub: `user-${n}`, username: `user${n}` });

async function enter(
  server: TestServer,
  room: string,
  claims: object,
  via = "header",
  path = "rooms",
) {
  const token = await server.token(claims);
  const url = `${server.wsUrl}/ws/${path}/${room}/`;
  return via === "header"
    ? await TestClient.open(url, { headers: { authorization: `Bearer ${token}` } })
    : await TestClient.open(`${url}?token=${token}`);
}

Deno.test("chat rooms: client_id makes a send idempotent; an id field is the client's own and stores every message", async () => {
  const server = await startTestServer();
  try {
    const a = await enter(server, "ids", user(1));
    assertEquals((await a.next()).type, "room_users_list");
    assertEquals((await a.next()).type, "user_join");
    // A client that numbers its messages per page load sends id 1 again after a reload.
    a.send({ message: "first load", id: 1 });
    assertEquals((await a.next()).message, "first load");
    a.send({ message: "after a reload", id: 1 });
    assertEquals((await a.next()).message, "after a reload");
    a.send({ message: "once", client_id: "c-1" });
    assertEquals((await a.next()).message, "once");
    a.send({ message: "once, resent", client_id: "c-1" });
    // The retry gets the original back, and nothing new is stored.
    assertEquals((await a.next()).message, "once");
    await a.close();
    const b = await enter(server, "ids", user(2));
    await b.next((f) => f.type === "room_users_list");
    const history: unknown[] = [];
    for (let i = 0; i < 3; i++) history.push((await b.next()).message);
    assertEquals(history, ["first load", "after a reload", "once"]);
    assertEquals((await b.next()).type, "user_join");
    await b.nothing();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: the document's flow for two users", async () => {
  const server = await startTestServer();
  try {
    const a = await enter(server, "general", user(1));
    assertEquals(await a.next(), {
      type: "room_users_list",
      users: [{ id: "user-1", username: "user1" }],
    });
    // "All users receive user_join": the one who joined too, after the list (and history).
    assertEquals(await a.next(), { type: "user_join", user_id: "user-1", username: "user1" });
    const b = await enter(server, "general", user(2), "query");
    const list = await b.next();
    assertEquals(list.type, "room_users_list");
    assertEquals(
      (list.users as { id: string }[]).map((u) => u.id).sort(),
      ["user-1", "user-2"],
    );
    for (const ws of [a, b]) {
      assertEquals(await ws.next(), { type: "user_join", user_id: "user-2", username: "user2" });
    }
    b.send({ message: "Hi!" });
    for (const ws of [a, b]) {
      const m = await ws.next();
      assertEquals(Object.keys(m), [
        "type",
        "message",
        "sender_username",
        "sender_id",
        "timestamp",
      ]);
      assertEquals([m.type, m.message, m.sender_username, m.sender_id], [
        "chat_message",
        "Hi!",
        "user2",
        "user-2",
      ]);
      assertMatch(m.timestamp as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    }
    await b.close();
    assertEquals(await a.next(), { type: "user_leave", user_id: "user-2", username: "user2" });
    a.send("{oops");
    assertEquals(await a.next(), { error: "Invalid JSON" });
    a.send({ text: "wrong field" });
    assertEquals(await a.next(), { error: "Message is required" });
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: numeric user ids are sent as strings, as the document shows them", async () => {
  const server = await startTestServer();
  try {
    // A string `sub` that looks like a number, and a number `sub`: the core keeps both as numbers.
    const a = await enter(server, "ids", { sub: "5", username: "ann" });
    assertEquals(await a.next(), {
      type: "room_users_list",
      users: [{ id: "5", username: "ann" }],
    });
    assertEquals(await a.next(), { type: "user_join", user_id: "5", username: "ann" });
    a.send({ message: "before" });
    assertEquals((await a.next()).sender_id, "5");
    const b = await enter(server, "ids", { sub: 6, username: "ben" });
    const list = await b.next();
    assertEquals((list.users as { id: unknown }[]).map((u) => u.id).sort(), ["5", "6"]);
    const history = await b.next();
    assertEquals([history.message, history.sender_id], ["before", "5"]);
    for (const ws of [a, b]) {
      assertEquals(await ws.next(), { type: "user_join", user_id: "6", username: "ben" });
    }
    b.send({ message: "live" });
    for (const ws of [a, b]) assertEquals((await ws.next()).sender_id, "6");
    await b.close();
    assertEquals(await a.next(), { type: "user_leave", user_id: "6", username: "ben" });
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: history on connect comes after the users list, oldest first, last N only", async () => {
  const server = await startTestServer({ HISTORY_ON_CONNECT: "3" });
  try {
    const a = await enter(server, "lobby", user(1));
    await a.next();
    for (let i = 1; i <= 5; i++) a.send({ message: `m${i}` });
    for (let i = 1; i <= 5; i++) await a.next();
    const b = await enter(server, "lobby", user(2));
    const frames = [await b.next(), await b.next(), await b.next(), await b.next()];
    assertEquals(frames[0].type, "room_users_list");
    assertEquals(frames.slice(1).map((f) => f.message), ["m3", "m4", "m5"]);
    a.send({ message: "live" });
    assertEquals((await b.next((f) => f.type === "chat_message")).message, "live");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: history on connect of long messages is written as the socket drains, not closed as a slow consumer", async () => {
  const server = await startTestServer({ HISTORY_ON_CONNECT: "100" });
  try {
    // 100 messages of 20,000 characters of CJK (3 bytes each): 6 MB, past SLOW_CONSUMER_BYTES.
    const body = "我们已经收到您的问题".repeat(1990);
    await Promise.all(
      Array.from(
        { length: 100 },
        (_, i) => server.app.context.chat.send(null, "room:long", { body: `${i + 1} ${body}` }),
      ),
    );
    const a = await enter(server, "long", user(1));
    assertEquals((await a.next()).type, "room_users_list");
    const history: number[] = [];
    for (let i = 0; i < 100; i++) {
      const f = await a.next(() => true, 10_000).catch(async (e) => {
        const { code, reason } = await a.closed;
        throw new Error(`closed ${code} ${reason} after ${i} messages: ${e.message.slice(0, 60)}`);
      });
      history.push(parseInt(f.message as string));
    }
    assertEquals(history, Array.from({ length: 100 }, (_, i) => i + 1));
    assertEquals((await a.next()).type, "user_join");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a second tab of the same user is neither a join nor, closing, a leave", async () => {
  const server = await startTestServer();
  try {
    const watcher = await enter(server, "tabs", user(1));
    assertEquals((await watcher.next()).type, "room_users_list");
    assertEquals((await watcher.next()).user_id, "user-1");
    const tab1 = await enter(server, "tabs", user(2));
    assertEquals((await watcher.next()).user_id, "user-2");
    const tab2 = await enter(server, "tabs", user(2));
    const list = await tab2.next();
    assertEquals((list.users as unknown[]).length, 2);
    // The user was here already: no join for the others, nor for the second tab itself.
    await tab2.nothing((f) => f.type === "user_join", 300);
    await tab1.close();
    await watcher.nothing((f) => f.type === "user_join" || f.type === "user_leave", 400);
    await tab2.close();
    assertEquals((await watcher.next()).type, "user_leave");
    await watcher.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: bad token 4001, invalid room name 4000 (one of 100 characters; 99 is a room), and the /ws/chat/ setting", async () => {
  const server = await startTestServer({ CHAT_PATH_PROTOCOL: "rooms" });
  try {
    for (
      const [path, code] of [["/ws/rooms/general/", 4001], [
        "/ws/rooms/general/?token=x",
        4001,
      ]] as const
    ) {
      assertEquals((await TestClient.connect(server.wsUrl + path).closed).code, code);
    }
    const token = await server.token(user(1));
    // A Channels group name is under 100 characters.
    const longest = await TestClient.open(
      `${server.wsUrl}/ws/rooms/${"x".repeat(99)}/?token=${token}`,
    );
    assertEquals((await longest.next()).type, "room_users_list");
    await longest.close();
    const badName = TestClient.connect(
      `${server.wsUrl}/ws/rooms/${"x".repeat(100)}/?token=${token}`,
    );
    assertEquals((await within(badName.closed, "the long name's close")).code, 4000);
    const weird = TestClient.connect(`${server.wsUrl}/ws/rooms/a%20b/?token=${token}`);
    assertEquals((await weird.closed).code, 4000);
    // A SimpleJWT refresh token (or a Keycloak one) is not an access token; an explicit
    // `token_type: "access"` is.
    for (const claims of [{ token_type: "refresh" }, { typ: "Refresh" }]) {
      const refresh = await server.token({ ...user(1), ...claims });
      const refused = TestClient.connect(`${server.wsUrl}/ws/rooms/general/?token=${refresh}`);
      // Admitted, it would be sent the room's users instead of being closed.
      const outcome = await Promise.race([
        refused.closed.then((c) => c.code),
        refused.next().then((f) => f.type),
      ]);
      refused.socket.close();
      assertEquals(outcome, 4001);
    }
    // A client whose cookie jar holds an expired access_token still signs in by its header.
    const stale = await server.token(user(4), -60);
    const jarred = TestClient.connect(`${server.wsUrl}/ws/rooms/general/`, {
      headers: { authorization: `Bearer ${token}`, cookie: `access_token=${stale}` },
    });
    const jarredOutcome = await Promise.race([
      jarred.closed.then((c) => c.code),
      jarred.next().then((f) => f.type),
    ]);
    jarred.socket.close();
    assertEquals(jarredOutcome, "room_users_list");
    const access = await server.token({ ...user(3), token_type: "access" });
    const admitted = await TestClient.open(`${server.wsUrl}/ws/rooms/general/?token=${access}`);
    assertEquals((await admitted.next()).type, "room_users_list");
    await admitted.close();
    // With CHAT_PATH_PROTOCOL=rooms, /ws/chat/<name>/ is the chat-rooms protocol.
    const onChatPath = await enter(server, "general", user(1), "header", "chat");
    assertEquals((await onChatPath.next()).type, "room_users_list");
    const onRoomsPath = await enter(server, "general", user(2), "header", "rooms");
    await onRoomsPath.next();
    onRoomsPath.send({ message: "same room" });
    assertEquals((await onChatPath.next((f) => f.type === "chat_message")).message, "same room");
    await onChatPath.close();
    await onRoomsPath.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: users who came or went while a socket's list was read are announced to it once, after a list without them or with them", async () => {
  // A list read waits while `held` is set: others enter or leave the room meanwhile.
  let held: Promise<void> | undefined;
  let letGo = () => {};
  let waiting = false;
  const hold = () => held = new Promise<void>((r) => letGo = r);
  const server = await startTestServer({}, {
    presence: (inner: PresenceStore): PresenceStore => ({
      ...passPresence(inner),
      list: async (room) => {
        const gate = held;
        held = undefined;
        waiting = gate !== undefined;
        await gate;
        waiting = false;
        return await inner.list(room);
      },
    }),
  });
  const listed = (frame: Record<string, unknown>) =>
    (frame.users as { id: string }[]).map((u) => u.id).sort();
  try {
    hold();
    const a = await enter(server, "race", user(1));
    await eventually(() => Promise.resolve(waiting), 5_000, "the list read");
    const b = await enter(server, "race", user(2));
    assertEquals(listed(await b.next()), ["user-1", "user-2"]);
    assertEquals(await b.next(), { type: "user_join", user_id: "user-2", username: "user2" });
    letGo();
    // The room as it stood before the join the socket hears next: user-2 once.
    const list = await a.next();
    assertEquals([list.type, listed(list)], ["room_users_list", ["user-1"]]);
    const joins = [(await a.next()).user_id, (await a.next()).user_id];
    assertEquals(joins.sort(), ["user-1", "user-2"]);
    await a.nothing();

    // One who leaves while the list is read is on it, then leaves.
    hold();
    const c = await enter(server, "race", user(3));
    await eventually(() => Promise.resolve(waiting), 5_000, "the list read");
    await b.close();
    assertEquals(await a.next((f) => f.type === "user_leave"), {
      type: "user_leave",
      user_id: "user-2",
      username: "user2",
    });
    letGo();
    assertEquals(listed(await c.next()), ["user-1", "user-2", "user-3"]);
    const after = [await c.next(), await c.next()].map((f) => `${f.type} ${f.user_id}`);
    assertEquals(after.sort(), ["user_join user-3", "user_leave user-2"]);
    await c.nothing();
    // A join after the list is news.
    const again = await enter(server, "race", user(2));
    for (const ws of [a, c]) {
      assertEquals(await ws.next((f) => f.type === "user_join" && f.user_id === "user-2"), {
        type: "user_join",
        user_id: "user-2",
        username: "user2",
      });
    }
    for (const ws of [a, c, again]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: the first socket of a room on a server, whose changes of the second before come after its list, is told of each user once", async () => {
  await withDataDir(async ({ env, clients, spawn }) => {
    const urls: string[] = [];
    for (let i = 0; i < 2; i++) urls.push(await spawn(env).url());
    await peersFound(urls.map((url) => ({ url })));
    const open = async (url: string, room: string, n: number) => {
      const token = await signDevToken(TEST_SECRET, user(n));
      const ws = await TestClient.open(
        `${url.replace(/^http/, "ws")}/ws/rooms/${room}/?token=${token}`,
      );
      clients.push(ws);
      return ws;
    };
    for (let round = 0; round < 3; round++) {
      // A user comes on one server, and at once the room's first socket on the other, which
      // follows the room's changes from a second before it joined: the list shows the user.
      const room = `first-${round}`;
      await open(urls[0], room, 10 * round + 1);
      const ws = await open(urls[1], room, 10 * round + 2);
      const list = await ws.next((f) => f.type === "room_users_list");
      await new Promise((r) => setTimeout(r, 1500));
      const told = new Map<string, number>();
      for (const f of [list, ...ws.frames as Record<string, unknown>[]]) {
        assertEquals(f.type === "user_leave", false, JSON.stringify(f));
        const ids = f.type === "room_users_list"
          ? (f.users as { id: string }[]).map((u) => u.id)
          : f.type === "user_join"
          ? [f.user_id as string]
          : [];
        for (const id of ids) told.set(id, (told.get(id) ?? 0) + 1);
      }
      // Its own arrival is told after the list as well, as the document says.
      const expected = new Map([[`user-${10 * round + 1}`, 1], [`user-${10 * round + 2}`, 2]]);
      assertEquals(told, expected, `round ${round}`);
    }
  }, { prefix: "chat-rooms-first-" });
});

Deno.test("chat rooms: a user whose isolate died leaves after the presence TTL", async () => {
  const server = await startTestServer({ PRESENCE_TTL_SECONDS: "1" });
  try {
    const watcher = await enter(server, "ghosts", user(1));
    await watcher.next();
    // Another instance records presence and dies without cleaning up.
    const kv = await Deno.openKv(`${server.dataDir}/chat.kv`);
    const { KvPresenceStore } = await import("../src/store/kv_presence_store.ts");
    const { InstanceRegistry } = await import("../src/broker/instance_registry.ts");
    const dying = await InstanceRegistry.start(kv, { staleMs: 1000, heartbeatMs: 300 });
    await new KvPresenceStore(kv, dying).enter(
      "room:ghosts",
      { id: "ghost", username: "ghost" },
      "c1",
    );
    dying.abandon();
    kv.close();
    const late = await enter(server, "ghosts", user(3));
    const list = await late.next();
    assertEquals((list.users as { id: string }[]).map((u) => u.id).sort(), [
      "ghost",
      "user-1",
      "user-3",
    ]);
    // To those shown the ghost (a socket shown nobody's arrival is spared its leave for a while
    // after its list, as it may be a change the list already holds).
    assertEquals(
      await late.next((f) => f.type === "user_leave", 5000),
      { type: "user_leave", user_id: "ghost", username: "ghost" },
    );
    await late.close();
    await watcher.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a peer that stops answering pings is dropped and leaves presence", async () => {
  const server = await startTestServer({ HEARTBEAT_SECONDS: "1" });
  try {
    const watcher = await enter(server, "silent", user(1));
    await watcher.next();
    const token = await server.token(user(2));
    const conn = await silentPeer(server.port, `/ws/rooms/silent/?token=${token}`);
    assertEquals((await watcher.next()).type, "user_join");
    // The raw peer never answers the server's pings: it must be gone within a few seconds.
    assertEquals(await watcher.next((f) => f.type === "user_leave", 6000), {
      type: "user_leave",
      user_id: "user-2",
      username: "user2",
    });
    conn.close();
    await watcher.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a message with files (posted through the API) carries their URLs, which serve the bytes", async () => {
  const server = await startTestServer();
  try {
    const a = await enter(server, "files", user(1));
    await a.next((f) => f.type === "room_users_list");
    const token = await server.token(user(2));
    const upload = async (body: string, name: string, bytes: Uint8Array<ArrayBuffer>) => {
      const form = new FormData();
      if (body) form.append("body", body);
      form.append("file", new File([bytes], name));
      const res = await fetch(`${server.url}/api/rooms/room/files/attachments`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
        body: form,
      });
      assertEquals(res.status, 201, await res.clone().text());
      await res.body?.cancel();
    };
    const bytes = crypto.getRandomValues(new Uint8Array(3000));
    await upload("", "photo.png", bytes);
    const fileOnly = await a.next((f) => f.type === "chat_message");
    const url = fileOnly.message as string;
    // Named unguessably: the client's name, a random tag, its extension.
    assertMatch(url, /^http:\/\/127\.0\.0\.1:\d+\/media\/\S+\/photo_[0-9a-f]{32}\.png$/);
    assertEquals(new Uint8Array(await (await fetch(url)).arrayBuffer()), bytes);
    await upload("see this", "notes.txt", new TextEncoder().encode("notes"));
    const withText = (await a.next((f) => f.type === "chat_message")).message as string;
    const [text, link] = withText.split("\n");
    assertEquals(text, "see this");
    assertEquals(await (await fetch(link)).text(), "notes");
    // The history sent on connect renders them the same way.
    const b = await enter(server, "files", user(3));
    const history = [];
    for (let i = 0; i < 2; i++) history.push(await b.next((f) => f.type === "chat_message"));
    assertEquals(history.map((f) => f.message), [url, withText]);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a message posted through the API without a sender comes from `system`, with sender_id null", async () => {
  const admin = "an-admin-token-for-the-system-message";
  const server = await startTestServer({ ADMIN_TOKEN: admin });
  try {
    const a = await enter(server, "lobby", user(1));
    await a.next((f) => f.type === "room_users_list");
    assertEquals(
      await adminCall(server.url, admin, "POST", "/api/rooms/room/lobby/messages", {
        body: "Maintenance at noon",
      }),
      201,
    );
    const m = await a.next((f) => f.type === "chat_message");
    assertEquals([m.message, m.sender_username, m.sender_id], [
      "Maintenance at noon",
      "system",
      null,
    ]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a room whose name starts with '_' or '.' is the native protocol's room:<name> too", async () => {
  const server = await startTestServer();
  try {
    for (const name of ["_private", ".dot", "-dash"]) {
      const a = await enter(server, name, user(1));
      await a.next((f) => f.type === "user_join");
      const native = await TestClient.open(
        `${server.wsUrl}/ws?token=${await server.token(user(2))}`,
      );
      await native.next((f) => f.type === "welcome");
      native.send({ type: "join", room: `room:${name}`, ref: "j" });
      assertEquals((await native.next((f) => f.ref === "j")).type, "joined");
      native.send({ type: "send", room: `room:${name}`, body: `into ${name}` });
      assertEquals((await a.next((f) => f.type === "chat_message")).message, `into ${name}`);
      await native.close();
      await a.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("chat rooms: a reader that stops reading while its history on connect is written is closed as a slow consumer once what waits for it passes the bound", async () => {
  const server = await startTestServer({
    SLOW_CONSUMER_BYTES: String(1024 * 1024),
    HISTORY_ON_CONNECT: "500",
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
  });
  try {
    const chat = server.app.context.chat;
    const hub = server.app.context.hub;
    const body = "z".repeat(19_000);
    const burst = (from: number) =>
      Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          chat.send(null, "room:busy", { body: `${from + i} ${body}` })),
      );
    // 9.5 MB of history: its release waits for a reader that never reads.
    for (let i = 0; i < 500; i += 50) await burst(i);
    const token = await server.token(user(1));
    const peer = await silentPeer(server.port, `/ws/rooms/busy/?token=${token}`);
    try {
      await eventually(() => hub.members("room:busy").size === 1, 5000, "the reader in the room");
      let sent = 0;
      for (let i = 0; i < 100 && hub.members("room:busy").size > 0; i++) {
        await new Promise((r) => setTimeout(r, i === 0 ? 200 : 0));
        await burst(500 + sent);
        sent += 50;
      }
      // Live frames waiting behind the release count against the bound (1 MiB): closed within
      // a few hundred kilobytes past it, not kept in memory as the room goes on.
      assertEquals(hub.members("room:busy").size, 0, `still in after ${sent} live messages`);
      assertEquals(sent > 0 && sent <= 150, true, `closed after ${sent} live messages of 19 kB`);
    } finally {
      peer.close();
    }
  } finally {
    await server.close();
  }
});
