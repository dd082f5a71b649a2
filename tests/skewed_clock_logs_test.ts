/**
 * Two server processes on one KV file, the second's clock 20 minutes behind the first's. The
 * logs that carry removals, deletions and signals between them expire after 10 quiet minutes and
 * then start over at their next writer's clock: one started over by the slower server must still
 * reach the faster one, which heard a log of higher seqs before. The expiry is done here by
 * deleting the log's keys from this process, as KV does once their time is up.
 */

import { assertEquals, delay, eventually, within } from "./assert.ts";
import { adminCall, TEST_SECRET, TestClient } from "./helpers.ts";
import { withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

const ADMIN = "a-long-enough-admin-token-for-tests";

/** Servers A (on time) and B (20 minutes behind) on one data directory, and the log's expiry. */
async function withSkewedPair(
  fn: (s: { a: string; b: string; expire: (prefix: Deno.KvKey) => Promise<void> }) => Promise<void>,
) {
  // Renewed every second: a server first reads the other's entry as 20 minutes old (by the
  // writer's clock), and counts it alive once it sees it renewed.
  const extra = { ADMIN_TOKEN: ADMIN, PRESENCE_TTL_SECONDS: "3" };
  await withDataDir(async ({ dataDir, env, spawn }) => {
    const servers = [spawn(env), spawn(env, { clockOffsetMs: -20 * 60_000 })];
    const [a, b] = await Promise.all(servers.map((s) => s.url()));
    const expire = async (prefix: Deno.KvKey) => {
      // Past the 250 ms between reads of the head: the server that wrote it has heard it too.
      await delay(1000);
      const kv = await Deno.openKv(`${dataDir}/chat.kv`);
      try {
        for await (const { key } of kv.list({ prefix })) await kv.delete(key);
      } finally {
        kv.close();
      }
    };
    await fn({ a, b, expire });
  }, { prefix: "chat-skewed-", extra });
}

/** A ticket socket of user `sub` on the server at `base`. */
async function ticketSocket(base: string, ticket: number, sub: string): Promise<TestClient> {
  const token = await signDevToken(TEST_SECRET, { sub });
  return await TestClient.open(
    `${base.replace(/^http/, "ws")}/ws/ticket/${ticket}/?token=${token}`,
  );
}

Deno.test("skewed clocks: a removal and a deletion made through a server whose clock is behind, after the log of them expired, close the sockets on the other server", async () => {
  await withSkewedPair(async ({ a, b, expire }) => {
    const api = (base: string, method: string, path: string, json?: unknown) =>
      adminCall(base, ADMIN, method, path, json);
    for (const [ticket, users] of [[7, ["5", "6"]], [8, ["7", "8"]]] as const) {
      const participants = users.map((user_id) => ({ user_id }));
      assertEquals(await api(a, "PUT", `/api/rooms/ticket/${ticket}`, { participants }), 201);
    }
    const [five, six, seven] = await Promise.all([
      ticketSocket(a, 7, "5"),
      ticketSocket(a, 7, "6"),
      ticketSocket(a, 8, "7"),
    ]);
    // Once A follows B's commits, a message sent through B reaches A's sockets.
    const sixOnB = await ticketSocket(b, 7, "6");
    await eventually(
      async () => {
        sixOnB.send({ body: "through B" });
        return await six.next((f) => f.body === "through B", 500).then(() => true, () => false);
      },
      10_000,
      "A to follow B",
    );
    await sixOnB.close();
    // A starts the log at its clock, and its own follower hears that head.
    assertEquals(await api(a, "DELETE", "/api/rooms/ticket/7/participants/5"), 204);
    assertEquals((await within(five.closed, "the first removal")).code, 4003);
    await expire(["room_events"]);
    // B starts it over at its clock, 20 minutes of seqs below.
    assertEquals(await api(b, "DELETE", "/api/rooms/ticket/7/participants/6"), 204);
    assertEquals((await within(six.closed, "the removal through B")).code, 4003);
    // Once more at A's clock, then at B's, for a deletion.
    await expire(["room_events"]);
    assertEquals(await api(a, "DELETE", "/api/rooms/ticket/8/participants/8"), 204);
    await expire(["room_events"]);
    assertEquals(await api(b, "DELETE", "/api/rooms/ticket/8"), 204);
    assertEquals((await within(seven.closed, "the deletion through B")).code, 4004);
  });
});

Deno.test("skewed clocks: typing through a server whose clock is behind, after the room's signals log expired, reaches the other server", async () => {
  await withSkewedPair(async ({ a, b, expire }) => {
    const native = async (base: string, sub: string) => {
      const token = await signDevToken(TEST_SECRET, { sub, rooms: ["ticket:*"] });
      const ws = await TestClient.open(`${base.replace(/^http/, "ws")}/ws?token=${token}`);
      await ws.next((f) => f.type === "welcome");
      ws.send({ type: "join", room: "ticket:9" });
      await ws.next((f) => f.type === "joined");
      return ws;
    };
    const [onA, onB] = await Promise.all([native(a, "1"), native(b, "2")]);
    const typing = (isTyping: boolean) => (f: Record<string, unknown>) =>
      f.type === "typing" && f.is_typing === isTyping;
    // Until the servers have found each other, a signal has nobody to go to: A types until one
    // arrives.
    await eventually(
      async () => {
        onA.send({ type: "typing", room: "ticket:9" });
        return await onB.next(typing(true), 300).then(() => true, () => false);
      },
      10_000,
      "typing from A",
    );
    onA.send({ type: "typing", room: "ticket:9", is_typing: false });
    await onB.next(typing(false));
    // B's join may have started the log; once it expired, A starts it over at its clock.
    await expire(["signals", "ticket:9"]);
    onA.send({ type: "typing", room: "ticket:9" });
    await onB.next(typing(true));
    onA.send({ type: "typing", room: "ticket:9", is_typing: false });
    await onB.next(typing(false));
    await expire(["signals", "ticket:9"]);
    onB.send({ type: "typing", room: "ticket:9" });
    await onA.next((f) => typing(true)(f) && (f.user as { id: unknown }).id === 2);
    await Promise.all([onA.close(), onB.close()]);
  });
});
