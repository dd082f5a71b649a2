/** A user list read when a socket joins never undoes a join or leave that happens meanwhile. */

import type { PresenceStore } from "../src/core/types.ts";
import { assert, assertEquals } from "./assert.ts";
import { startTestServer, TestClient } from "./helpers.ts";

/**
 * Wraps the presence store so that, once armed, the next room list keeps its answer (already
 * read) until the test opens the gate: the window in which another user joins or leaves.
 */
function gatedLists() {
  let armed = false;
  let open = () => {};
  let reached = () => {};
  let gate = Promise.resolve();
  let read = Promise.resolve();
  return {
    /** Holds the next list once it has read. */
    arm() {
      armed = true;
      gate = new Promise((r) => open = r);
      read = new Promise((r) => reached = r);
    },
    /** Resolves once the held list has read the room. */
    read: () => read,
    /** Lets the held list answer. */
    open: () => open(),
    wrap: (inner: PresenceStore): PresenceStore => ({
      enter: (room, user, connId) => inner.enter(room, user, connId),
      exit: (room, user, connId) => inner.exit(room, user, connId),
      sweep: (room, isOpen) => inner.sweep(room, isOpen),
      async list(room) {
        const users = await inner.list(room);
        if (armed) {
          armed = false;
          reached();
          await gate;
        }
        return users;
      },
    }),
  };
}

Deno.test("presence snapshot: chat rooms, a user who leaves while the list is read leaves for the newcomer too", async () => {
  const lists = gatedLists();
  const server = await startTestServer({}, { presence: lists.wrap });
  const open = async (n: number) => {
    const token = await server.token({ sub: `user-${n}`, username: `user${n}` });
    return await TestClient.open(`${server.wsUrl}/ws/rooms/general/?token=${token}`);
  };
  try {
    const leaver = await open(3);
    await leaver.next((f) => f.type === "room_users_list");
    const watcher = await open(4);
    await watcher.next((f) => f.type === "room_users_list");

    lists.arm();
    const newcomer = await open(1);
    await lists.read(); // the newcomer's list has user-3 in it
    await leaver.close();
    await watcher.next((f) => f.type === "user_leave" && f.user_id === "user-3");
    lists.open();

    const list = await newcomer.next();
    assertEquals(list.type, "room_users_list");
    assert((list.users as { id: string }[]).some((u) => u.id === "user-3"), "the race happened");
    assertEquals(await newcomer.next((f) => f.type === "user_leave"), {
      type: "user_leave",
      user_id: "user-3",
      username: "user3",
    });
    await newcomer.close();
    await watcher.close();
  } finally {
    await server.close();
  }
});

Deno.test("presence snapshot: native, a join while the joiner's list is read arrives after `joined`", async () => {
  const lists = gatedLists();
  const server = await startTestServer({}, { presence: lists.wrap });
  const connect = async (sub: string) => {
    const token = await server.token({ sub, username: `u${sub}`, rooms: ["chat:*"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await ws.next((f) => f.type === "welcome");
    return ws;
  };
  try {
    const a = await connect("1");
    const b = await connect("2");
    lists.arm();
    a.send({ type: "join", room: "chat:7", ref: 1 });
    await lists.read(); // a's list has only user 1 in it
    b.send({ type: "join", room: "chat:7", ref: 2 });
    await b.next((f) => f.type === "joined");
    lists.open();

    const first = await a.next((f) => f.type === "joined" || f.type === "presence");
    assertEquals(first.type, "joined", "the snapshot comes before the change it missed");
    assertEquals((first.presence as { id: unknown }[]).map((u) => String(u.id)), ["1"]);
    const presence = await a.next((f) => f.type === "presence");
    assertEquals([presence.action, String((presence.user as { id: unknown }).id)], ["join", "2"]);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});
