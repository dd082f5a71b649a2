/** Joins that fail or are cut short leave nothing behind: no hub member, no missing presence. */

import type { PresenceStore } from "../src/core/types.ts";
import { assertEquals } from "./assert.ts";
import { startTestServer, TestClient, type TestServer } from "./helpers.ts";

/** Wraps the presence store; `enter`, `exit`, `list` run `before`'s first (which may wait or throw). */
function faulty(
  before: {
    enter?: () => Promise<void>;
    exit?: () => Promise<void>;
    list?: () => Promise<void>;
  },
): (inner: PresenceStore) => PresenceStore {
  return (inner) => ({
    enter: async (room, user, connId) => {
      await before.enter?.();
      return await inner.enter(room, user, connId);
    },
    exit: async (room, user, connId) => {
      await before.exit?.();
      return await inner.exit(room, user, connId);
    },
    sweep: (room, open) => inner.sweep(room, open),
    list: async (room) => {
      await before.list?.();
      return await inner.list(room);
    },
  });
}

async function nativeClient(server: TestServer, sub: string) {
  const token = await server.token({ sub, username: `u${sub}`, rooms: ["chat:*"] });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

Deno.test("join failures: a native join whose presence write failed is whole when retried", async () => {
  let fail = true;
  const server = await startTestServer({}, {
    presence: faulty({
      enter: () => {
        if (!fail) return Promise.resolve();
        fail = false;
        return Promise.reject(new Error("store hiccup"));
      },
    }),
  });
  try {
    const ws = await nativeClient(server, "1");
    ws.send({ type: "join", room: "chat:7", ref: 1 });
    assertEquals((await ws.next()).type, "error");
    ws.send({ type: "join", room: "chat:7", ref: 2 });
    const joined = await ws.next((f) => f.type === "joined");
    assertEquals((joined.presence as { id: unknown }[]).map((u) => String(u.id)), ["1"]);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("join failures: a presence exit that failed is written again by the sweep, so no ghost stays in the room", async () => {
  let failures = 0;
  const server = await startTestServer({ PRESENCE_TTL_SECONDS: "3" }, {
    presence: faulty({
      exit: () => {
        if (failures++ > 0) return Promise.resolve();
        return Promise.reject(new Error("database is locked"));
      },
    }),
  });
  try {
    const goes = await nativeClient(server, "1");
    goes.send({ type: "join", room: "chat:8" });
    await goes.next((f) => f.type === "joined");
    // The room's only socket on this server: no sweep of the room would follow its failed exit.
    await goes.close();
    // The sweep (every second here) writes the exit again.
    await new Promise((r) => setTimeout(r, 2500));
    const comes = await nativeClient(server, "3");
    comes.send({ type: "join", room: "chat:8" });
    const joined = await comes.next((f) => f.type === "joined");
    assertEquals((joined.presence as { id: unknown }[]).map((u) => String(u.id)), ["3"]);
    await comes.close();
  } finally {
    await server.close();
  }
});

Deno.test("join failures: a socket closed while its presence exit failed is announced gone to the room once the sweep writes the exit", async () => {
  let failing = false;
  const logged = console.error;
  console.error = () => {};
  const server = await startTestServer({ PRESENCE_TTL_SECONDS: "3" }, {
    presence: faulty({
      exit: () => failing ? Promise.reject(new Error("database is locked")) : Promise.resolve(),
    }),
  });
  try {
    const stays = await nativeClient(server, "1");
    const goes = await nativeClient(server, "2");
    for (const ws of [stays, goes]) {
      ws.send({ type: "join", room: "chat:9", ref: "j" });
      await ws.next((f) => f.ref === "j");
    }
    failing = true;
    await goes.close();
    await new Promise((r) => setTimeout(r, 300));
    failing = false;
    // The sweep (every second here) writes the exit again; else user 2 stays listed, a ghost.
    const left = await stays.next((f) => f.type === "presence" && f.action === "leave");
    assertEquals(String((left.user as { id: unknown }).id), "2");
    await stays.close();
  } finally {
    console.error = logged;
    await server.close();
  }
});

Deno.test("join failures: a native socket closed while its batch join waits leaves no member and no presence behind", async () => {
  let open = () => {};
  const gate = new Promise<void>((r) => open = r);
  let reached = () => {};
  const waiting = new Promise<void>((r) => reached = r);
  const server = await startTestServer({}, {
    presence: faulty({
      enter: async () => {
        reached();
        await gate;
      },
    }),
  });
  try {
    const ws = await nativeClient(server, "1");
    const rooms = ["chat:7", "chat:8", "chat:9"];
    ws.send({ type: "join", rooms, ref: 1 });
    await waiting;
    await ws.close();
    await new Promise((r) => setTimeout(r, 50));
    // The close's presence exit has run; the join's presence write lands only now.
    open();
    await new Promise((r) => setTimeout(r, 200));
    for (const room of rooms) {
      assertEquals(server.app.context.hub.members(room).size, 0);
      assertEquals(await server.app.context.chat.present(room), [], room);
    }
  } finally {
    await server.close();
  }
});

Deno.test("join failures: a chat-rooms socket whose user list cannot be read is closed with 1011", async () => {
  const server = await startTestServer({}, {
    presence: faulty({ list: () => Promise.reject(new Error("store hiccup")) }),
  });
  try {
    const token = await server.token({ sub: "user-1", username: "user1" });
    const ws = await TestClient.open(`${server.wsUrl}/ws/rooms/general/?token=${token}`);
    const closed = await Promise.race([
      ws.closed,
      new Promise<{ code: number; reason: string }>((r) =>
        setTimeout(() => r({ code: 0, reason: "still open" }), 3000)
      ),
    ]);
    assertEquals([closed.code, closed.reason], [1011, "Internal error"]);
    assertEquals(server.app.context.hub.members("room:general").size, 0);
  } finally {
    await server.close();
  }
});
