/**
 * Typing and presence between isolates of one process when the channel drops posts: two servers
 * in this process on one data directory stand for two isolates of `deno serve --parallel`, linked
 * by an in-memory channel that loses chosen posts, as Deno's does for an isolate that falls
 * behind. The KV signals log brings what was lost, never out of order.
 */

import { assertEquals, delay, eventually } from "./assert.ts";
import { passPresence, peersFound, startTestServer, TEST_SECRET, TestClient } from "./helpers.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { MemoryBroker, MemoryBus } from "../src/broker/memory_broker.ts";
import type { Broker, PresenceStore, RoomEvent } from "../src/core/types.ts";

type Frame = Record<string, unknown>;

/** A channel that loses the posts `drop` picks. */
class LossyBroker implements Broker {
  #inner: MemoryBroker;
  drop: (event: RoomEvent) => boolean = () => false;
  constructor(bus: MemoryBus) {
    this.#inner = new MemoryBroker(bus);
  }
  publish(event: RoomEvent): void {
    if (!this.drop(event)) this.#inner.publish(event);
  }
  subscribe(room: string, handler: (event: RoomEvent) => void): () => void {
    return this.#inner.subscribe(room, handler);
  }
  close(): void {
    this.#inner.close();
  }
}

/** Two sibling servers: A's channel posts can be dropped, B's presence reads answer late. */
async function withSiblings(
  fn: (s: {
    a: { port: number; close(): Promise<void> };
    b: { port: number };
    dropOnA: (drop: (event: RoomEvent) => boolean) => void;
    slowReadsOnB: (ms: number) => void;
    client: (port: number, sub: string) => Promise<TestClient>;
  }) => Promise<void>,
) {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-siblings-" });
  const bus = new MemoryBus();
  const brokerA = new LossyBroker(bus);
  let slowMs = 0;
  const shared = {
    DATA_DIR: dataDir,
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
    TYPING_TIMEOUT_SECONDS: "3",
  };
  const a = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/a.sqlite3` }, {
    broker: brokerA,
  });
  const b = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/b.sqlite3` }, {
    broker: new LossyBroker(bus),
    presence: (inner: PresenceStore): PresenceStore => ({
      ...passPresence(inner),
      list: async (room) => {
        const users = await inner.list(room);
        if (slowMs > 0) await delay(slowMs);
        return users;
      },
    }),
  });
  const clients: TestClient[] = [];
  try {
    // Each has registered and found the other (an isolate of this process) before anything.
    await peersFound([a, b]);
    await fn({
      a,
      b,
      dropOnA: (drop) => brokerA.drop = drop,
      slowReadsOnB: (ms) => slowMs = ms,
      client: async (port, sub) => {
        const token = await signDevToken(TEST_SECRET, { sub, rooms: ["ticket:*"] });
        const ws = await TestClient.open(`ws://127.0.0.1:${port}/ws?token=${token}`);
        clients.push(ws);
        await ws.next((f) => f.type === "welcome");
        return ws;
      },
    });
  } finally {
    for (const ws of clients) await ws.close().catch(() => {});
    await a.close();
    await b.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

const join = async (ws: TestClient, room: string) => {
  ws.send({ type: "join", room });
  await ws.next((f) => f.type === "joined");
};

/** What `observer` was told of `user`'s `type` (typing states or presence actions), in order. */
const told = (observer: TestClient, user: string, type: "typing" | "presence") =>
  observer.frames.filter((f) => {
    const frame = f as Frame;
    return frame.type === type && String((frame.user as Frame)?.id) === user;
  }).map((f) => type === "typing" ? (f as Frame).is_typing : (f as Frame).action);

Deno.test("siblings: a typing start the channel lost, brought by the log after the stop that followed it, is not shown", async () => {
  await withSiblings(async ({ a, b, dropOnA, client }) => {
    const observer = await client(b.port, "1");
    await join(observer, "ticket:1");
    const typist = await client(a.port, "7");
    await join(typist, "ticket:1");
    dropOnA((e) => e.type === "typing" && e.isTyping);
    // A ping first: the start and the stop then leave in one TCP segment, as a quick client's
    // would, and are handled together (the stop overtakes the log's start).
    typist.send({ type: "ping" });
    typist.send({ type: "typing", room: "ticket:1", is_typing: true });
    typist.send({ type: "typing", room: "ticket:1", is_typing: false });
    // Past the typing timeout (3 s) and the log's margin for a stop that never comes.
    await delay(5000);
    assertEquals(told(observer, "7", "typing").at(-1), false);
  });
});

Deno.test("siblings: a join the channel lost, checked against the store while the leave came by the channel, is not shown after the leave", async () => {
  await withSiblings(async ({ a, b, dropOnA, slowReadsOnB, client }) => {
    const observer = await client(b.port, "1");
    await join(observer, "ticket:2");
    const user = await client(a.port, "7");
    slowReadsOnB(800);
    dropOnA((e) => e.type === "presence" && e.action === "join");
    await join(user, "ticket:2");
    // The log's join is being checked on B (the store says present) when the user leaves.
    await delay(200);
    dropOnA(() => false);
    user.send({ type: "leave", room: "ticket:2" });
    await delay(2500);
    assertEquals(told(observer, "7", "presence").at(-1), "leave");
  });
});

Deno.test("siblings: a leave the channel lost, checked against the store while the rejoin came by the channel, is not shown after the join", async () => {
  await withSiblings(async ({ a, b, dropOnA, slowReadsOnB, client }) => {
    const observer = await client(b.port, "1");
    await join(observer, "ticket:3");
    const user = await client(a.port, "7");
    await join(user, "ticket:3");
    await eventually(() => told(observer, "7", "presence").length === 1, 5000, "the join");
    slowReadsOnB(800);
    dropOnA((e) => e.type === "presence" && e.action === "leave");
    user.send({ type: "leave", room: "ticket:3" });
    await user.next((f) => f.type === "left");
    await delay(200);
    dropOnA(() => false);
    await join(user, "ticket:3");
    await delay(2500);
    assertEquals(told(observer, "7", "presence").at(-1), "join");
  });
});

Deno.test("siblings: every user of a server that stops is shown leaving on the other, though the stop's channel posts are lost", async () => {
  await withSiblings(async ({ a, b, dropOnA, client }) => {
    const observer = await client(b.port, "1");
    await join(observer, "ticket:4");
    const users = Array.from({ length: 20 }, (_, i) => String(100 + i));
    for (const user of users) await join(await client(a.port, user), "ticket:4");
    const shown = (action: string) =>
      users.filter((u) => told(observer, u, "presence").at(-1) === action);
    await eventually(() => shown("join").length === users.length, 10_000, "the joins");
    // As for another instance: only the log can tell. The stop removes its users' entries
    // itself, so no sweep on B would ever find them gone.
    dropOnA(() => true);
    await a.close();
    await eventually(() => shown("leave").length === users.length, 10_000, "the leaves").catch(
      () => assertEquals(shown("join"), []),
    );
  });
});
