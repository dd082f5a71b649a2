/**
 * A user moving between servers on one data directory (a rolling restart: the new process
 * started beside the old one, the balancer switched to it, the old one stopped): the other
 * server's change, checked against the store, must not come after this server's own and undo
 * it. Each server has a channel of its own (as processes do), so only the KV log carries the
 * changes between them; the new process's isolates share one. The new process's checks of the
 * moving user are held after their read, the window in which the user arrives there.
 */

import type { PresenceStore } from "../src/core/types.ts";
import type { UserPresence } from "../src/core/chat_service.ts";
import { MemoryBroker, MemoryBus } from "../src/broker/memory_broker.ts";
import { SHOWN_MS } from "../src/dialects/chat_rooms/chat_rooms.ts";
import { assert, assertEquals, delay, eventually } from "./assert.ts";
import { peersFound, startTestServer, TestClient, type TestServer } from "./helpers.ts";

type Frame = Record<string, unknown>;

/**
 * Wraps a server's presence store so that, once armed for a user, the next check of that user
 * (`isPresent`, which only checks of other servers' changes read) keeps its answer, already
 * read, until the test opens the gate.
 */
function gatedChecks() {
  let armedFor: string | undefined;
  let open = () => {};
  let reached = () => {};
  let gate = Promise.resolve();
  let read = Promise.resolve();
  return {
    /** Holds the next check of `user` once it has read. */
    arm(user: string) {
      armedFor = user;
      gate = new Promise((r) => open = r);
      read = new Promise((r) => reached = r);
    },
    /** Resolves once the held check has read. */
    read: () => read,
    /** Lets the held check answer. */
    open: () => open(),
    wrap: (store: PresenceStore): PresenceStore & UserPresence => {
      const inner = store as PresenceStore & UserPresence;
      return {
        enter: (room, user, connId) => inner.enter(room, user, connId),
        exit: (room, user, connId) => inner.exit(room, user, connId),
        sweep: (room, isOpen) => inner.sweep(room, isOpen),
        list: (room) => inner.list(room),
        invalidateSweeps: () => inner.invalidateSweeps?.(),
        async isPresent(room, userId) {
          const present = await inner.isPresent!(room, userId);
          if (armedFor === String(userId)) {
            armedFor = undefined;
            reached();
            await gate;
          }
          return present;
        },
      };
    },
  };
}

/**
 * The old server `a` and the new process's isolates `b` (one, or two sharing a channel), on one
 * data directory, each isolate of the new process with its checks gated.
 */
async function withServers(
  isolates: number,
  fn: (s: {
    a: TestServer;
    b: { server: TestServer; checks: ReturnType<typeof gatedChecks> }[];
    native: (server: TestServer, sub: string) => Promise<TestClient>;
    rooms: (
      server: TestServer,
      sub: string,
      room: string,
      list?: (frame: Frame) => void,
    ) => Promise<TestClient>;
  }) => Promise<void>,
) {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-moving-" });
  const shared = {
    DATA_DIR: dataDir,
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
  };
  const servers: TestServer[] = [];
  const clients: TestClient[] = [];
  try {
    const a = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/a.sqlite3` }, {
      broker: new MemoryBroker(),
    });
    servers.push(a);
    const bus = new MemoryBus();
    const b = [];
    for (let i = 0; i < isolates; i++) {
      const checks = gatedChecks();
      const server = await startTestServer(
        { ...shared, DATABASE_URL: `${dataDir}/b${i}.sqlite3` },
        { broker: new MemoryBroker(bus), presence: checks.wrap },
      );
      servers.push(server);
      b.push({ server, checks });
    }
    await peersFound(servers);
    await fn({
      a,
      b,
      native: async (server, sub) => {
        const token = await server.token({ sub, rooms: ["ticket:*"] });
        const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
        clients.push(ws);
        await ws.next((f) => f.type === "welcome");
        return ws;
      },
      rooms: async (server, sub, room, list) => {
        const token = await server.token({ sub, username: sub });
        const ws = await TestClient.open(`${server.wsUrl}/ws/rooms/${room}/?token=${token}`);
        clients.push(ws);
        list?.(await ws.next((f) => f.type === "room_users_list"));
        return ws;
      },
    });
  } finally {
    for (const ws of clients) await ws.close().catch(() => {});
    for (const server of servers) await server.close().catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

const join = async (ws: TestClient, room: string) => {
  ws.send({ type: "join", room, ref: `join ${room}` });
  assertEquals((await ws.next((f) => f.ref === `join ${room}`)).type, "joined");
};

/** The presence actions `observer` (native) was told of `user`, in order. */
const told = (observer: TestClient, user: string) =>
  observer.frames.filter((f) => {
    const frame = f as Frame;
    return frame.type === "presence" && String((frame.user as Frame)?.id) === user;
  }).map((f) => (f as Frame).action);

/**
 * Has `typist` (on the old server) type in `room` and waits until `observer` is told: the KV log
 * hands a room's signals on in order, so whatever the held check decides is decided by then.
 */
const passedOn = async (typist: TestClient, observer: TestClient, room: string) => {
  typist.send({ type: "typing", room, is_typing: true });
  await observer.next((f) => f.type === "typing" && f.room === room, 10_000);
};

Deno.test("moving presence: a chat-rooms user who moves to the new server is not shown leaving after the new server's `user_join`", async () => {
  await withServers(1, async ({ a, b: [b], native, rooms }) => {
    // Chat rooms' "lobby" is the native room:lobby: a native observer hears typing there too.
    const room = "room:lobby";
    const watcher = await rooms(b.server, "watcher", "lobby");
    const observer = await native(b.server, "observer");
    await join(observer, room);
    const typist = await native(a, "typist");
    await join(typist, room);
    const onA = await rooms(a, "mover", "lobby");
    await watcher.next((f) => f.type === "user_join" && f.user_id === "mover", 10_000);
    await eventually(() => told(observer, "mover").length === 1, 10_000, "the join");
    // Past the while after its list in which the watcher is spared a join of someone it shows.
    await delay(SHOWN_MS);

    // The old server's tab closes: B reads the store (no entry left) and its check waits.
    b.checks.arm("mover");
    await onA.close();
    await b.checks.read();
    // The user is on B now: B's own join reaches B's clients first.
    await rooms(b.server, "mover", "lobby");
    await watcher.next((f) => f.type === "user_join" && f.user_id === "mover");
    await eventually(() => told(observer, "mover").length === 2, 5000, "B's join");
    b.checks.open();
    await passedOn(typist, observer, room);

    await watcher.nothing((f) => f.type === "user_leave" && f.user_id === "mover", 100);
    assertEquals(told(observer, "mover"), ["join", "join"]);
    // What the clients show is what the store says.
    await rooms(b.server, "fresh", "lobby", (list) => {
      assert((list.users as Frame[]).some((u) => u.id === "mover"), "the store lists the mover");
    });
  });
});

Deno.test("moving presence: a join from the old server, checked while the user was there, is not shown after the user's leave on the new one", async () => {
  await withServers(1, async ({ a, b: [b], native }) => {
    const room = "ticket:8";
    const observer = await native(b.server, "observer");
    await join(observer, room);
    const typist = await native(a, "typist");
    await join(typist, room);

    // The join on A is checked on B (present), and waits.
    b.checks.arm("mover");
    const onA = await native(a, "mover");
    await join(onA, room);
    await b.checks.read();
    // A tab on B too, then both close: B's exit is the last, and B's clients hear its leave.
    const onB = await native(b.server, "mover");
    await join(onB, room);
    onA.send({ type: "leave", room, ref: "left A" });
    await onA.next((f) => f.ref === "left A");
    onB.send({ type: "leave", room, ref: "left B" });
    await onB.next((f) => f.ref === "left B");
    await eventually(() => told(observer, "mover").length === 1, 5000, "B's leave");
    b.checks.open();
    await passedOn(typist, observer, room);

    assertEquals(told(observer, "mover"), ["leave"]);
  });
});

Deno.test("moving presence: a user who moves to one isolate of the new process is not shown leaving to its sibling's clients", async () => {
  await withServers(2, async ({ a, b: [b1, b2], native }) => {
    const room = "ticket:9";
    const observer = await native(b2.server, "observer");
    await join(observer, room);
    const typist = await native(a, "typist");
    await join(typist, room);
    const onA = await native(a, "mover");
    await join(onA, room);
    await eventually(() => told(observer, "mover").length === 1, 10_000, "the join");

    // The sibling reads the store for A's leave (no entry) and waits.
    b2.checks.arm("mover");
    onA.send({ type: "leave", room, ref: "left A" });
    await onA.next((f) => f.ref === "left A");
    await b2.checks.read();
    // The user arrives on the other isolate, whose join the channel brings to the sibling.
    const onB1 = await native(b1.server, "mover");
    await join(onB1, room);
    await eventually(() => told(observer, "mover").length === 2, 5000, "B1's join");
    b2.checks.open();
    await passedOn(typist, observer, room);

    assertEquals(told(observer, "mover"), ["join", "join"]);
  });
});
