/**
 * A server stopped past its presence lease (SIGSTOP), swept by another and resumed: its own
 * clients, which never saw its users go, are not told they joined again; another server's
 * client sees each of them leave once and come back once.
 */

import { assertEquals, eventually } from "./assert.ts";
import { joinRoom, TEST_SECRET, TestClient } from "./helpers.ts";
import { lapsesOf, spawnServer, withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

const TTL_SECONDS = 2;
const ROOM = "room:lobby";
/** A fresh DATA_DIR named `prefix`, presence lapsing after TTL_SECONDS. */
const LAPSE_DIR = (prefix: string) => ({
  prefix,
  extra: { PRESENCE_TTL_SECONDS: String(TTL_SECONDS) },
});

type Frame = Record<string, unknown>;

const token = (user: string) =>
  signDevToken(TEST_SECRET, { sub: user, username: user, rooms: ["room:*"] }, "1h");

/** A native client of `user` in the room, once joined. */
async function native(url: string, user: string): Promise<TestClient> {
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${await token(user)}`);
  await ws.next((f) => f.type === "welcome", 10_000);
  ws.send({ type: "join", room: ROOM, ref: "j" });
  await ws.next((f) => f.type === "joined" && f.room === ROOM, 10_000);
  return ws;
}

/** A chat-rooms client of `user` in the room, once it has the users list. */
const chatRooms = async (url: string, user: string): Promise<TestClient> =>
  (await joinRoom(url, "lobby", user, 10_000)).client;

/** The presence changes a client was told, as `join:user` / `leave:user`, in order. */
function told(ws: TestClient): string[] {
  return (ws.frames as Frame[]).flatMap((f) => {
    if (f.type === "presence" && f.room === ROOM) {
      return [`${f.action}:${(f.user as { username: string }).username}`];
    }
    if (f.type === "user_join" || f.type === "user_leave") {
      return [`${f.type === "user_join" ? "join" : "leave"}:${f.username}`];
    }
    return [];
  });
}

/** The presence entries in the KV file, as the usernames they name. */
async function entries(dataDir: string): Promise<string[]> {
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  try {
    const out: string[] = [];
    for await (
      const e of kv.list<{ user: { username: string } }>({ prefix: ["presence"] })
    ) out.push(e.value.user.username);
    return out.sort();
  } finally {
    kv.close();
  }
}

Deno.test("presence lapse: the resumed server's own clients are told nothing of the users it held throughout; another server's client sees each leave once, then join once", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    // One after the other, as the other tests of two servers on one DATA_DIR start them.
    const a = spawn(env);
    const urlA = await a.url();
    const urlB = await spawn(env).url();
    const held = ["n1", "obsA", "r1", "roomsA", "markA"];
    const n1 = await native(urlA, "n1");
    const r1 = await chatRooms(urlA, "r1");
    const obsA = await native(urlA, "obsA");
    const roomsA = await chatRooms(urlA, "roomsA");
    const obsB = await native(urlB, "obsB");
    clients.push(n1, r1, obsA, roomsA, obsB);
    // Every join so far has reached A's observers (obsB's, from the other server, came last).
    await eventually(() => told(obsA).includes("join:obsB"), 10_000, "obsA told of obsB");
    await eventually(() => told(roomsA).includes("join:obsB"), 10_000, "roomsA told of obsB");
    // B follows the room's signals from a second before obsB joined: A's joins, which obsB's
    // list showed already, may still reach it. A marker from A, after them in A's signals: once
    // obsB has it, B has read past them.
    const markA = await native(urlA, "markA");
    clients.push(markA);
    await eventually(() => told(obsB).includes("join:markA"), 10_000, "obsB told of markA");
    await eventually(() => told(obsA).includes("join:markA"), 10_000, "obsA told of markA");
    await eventually(() => told(roomsA).includes("join:markA"), 10_000, "roomsA told of markA");
    for (const c of [obsA, roomsA, obsB]) c.frames.length = 0;

    a.child.kill("SIGSTOP");
    await eventually(
      async () => (await entries(dataDir)).join() === "obsB",
      6 * TTL_SECONDS * 1000,
      "B to sweep A's entries",
    );
    const lapses = lapsesOf(a);
    a.child.kill("SIGCONT");
    await eventually(() => lapsesOf(a) > lapses, 10_000, "A's lapse");
    // A marker from B, after B's leaves in its signals, while B has not yet read the registry
    // again (up to a second: it judged A dead, and counts A again at its next read): once A's
    // clients have it, A has read past those leaves.
    const late = await native(urlB, "late");
    clients.push(late);
    // A writes its users back and tells B; B had told its client they left.
    await eventually(
      () => held.every((u) => told(obsB).includes(`join:${u}`)),
      10_000,
      "obsB told A's users are back",
    );
    await eventually(() => told(obsA).includes("join:late"), 10_000, "obsA told of late");
    await eventually(() => told(roomsA).includes("join:late"), 10_000, "roomsA told of late");

    assertEquals(
      { obsA: told(obsA), roomsA: told(roomsA) },
      { obsA: ["join:late"], roomsA: ["join:late"] },
    );
    const onB = Object.fromEntries(
      held.map((u) => [u, told(obsB).filter((t) => t.endsWith(`:${u}`))]),
    );
    assertEquals(onB, Object.fromEntries(held.map((u) => [u, [`leave:${u}`, `join:${u}`]])));
  }, LAPSE_DIR("lapse-own-"));
});

Deno.test("presence lapse: two servers that lapse together, a user with a tab on each: neither server's own clients are told that user joined; another server's client sees one leave, then one join", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    // One after the other, as the test above starts them.
    const servers: ReturnType<typeof spawnServer>[] = [];
    const urls: string[] = [];
    for (let i = 0; i < 3; i++) {
      servers.push(spawn(env));
      urls.push(await servers[i].url());
    }
    const [a, a2] = servers;
    const [urlA, urlA2, urlB] = urls;
    const uA = await native(urlA, "u");
    const uA2 = await native(urlA2, "u");
    const obsA = await native(urlA, "obsA");
    const roomsA = await chatRooms(urlA, "roomsA");
    const obsA2 = await native(urlA2, "obsA2");
    const roomsA2 = await chatRooms(urlA2, "roomsA2");
    const obsB = await native(urlB, "obsB");
    clients.push(uA, uA2, obsA, roomsA, obsA2, roomsA2, obsB);
    for (const c of [obsA, roomsA, obsA2, roomsA2]) {
      await eventually(() => told(c).includes("join:obsB"), 10_000, "told of obsB");
    }
    // Markers from A and A2, after their earlier joins in their signals (which B, following
    // the room from a second before obsB joined, may still pass on): once obsB has them, B has
    // read past those.
    clients.push(await native(urlA, "markA"), await native(urlA2, "markA2"));
    await eventually(
      () => ["join:markA", "join:markA2"].every((m) => told(obsB).includes(m)),
      10_000,
      "obsB told of the markers",
    );
    for (const c of [obsA, roomsA, obsA2, roomsA2, obsB]) c.frames.length = 0;

    a.child.kill("SIGSTOP");
    a2.child.kill("SIGSTOP");
    await eventually(
      async () => (await entries(dataDir)).join() === "obsB",
      6 * TTL_SECONDS * 1000,
      "B to sweep A's and A2's entries",
    );
    const lapses = [lapsesOf(a), lapsesOf(a2)];
    a.child.kill("SIGCONT");
    a2.child.kill("SIGCONT");
    await eventually(() => lapsesOf(a) > lapses[0] && lapsesOf(a2) > lapses[1], 10_000, "lapses");
    await eventually(() => told(obsB).includes("join:u"), 10_000, "obsB told u is back");
    const late = await native(urlB, "late");
    clients.push(late);
    for (const c of [obsA, roomsA, obsA2, roomsA2]) {
      await eventually(() => told(c).includes("join:late"), 10_000, "told of late");
    }
    const onU = (c: TestClient) => told(c).filter((t) => t.endsWith(":u"));
    assertEquals(
      {
        obsA: onU(obsA),
        roomsA: onU(roomsA),
        obsA2: onU(obsA2),
        roomsA2: onU(roomsA2),
        obsB: onU(obsB),
      },
      { obsA: [], roomsA: [], obsA2: [], roomsA2: [], obsB: ["leave:u", "join:u"] },
    );
  }, LAPSE_DIR("lapse-two-"));
});
