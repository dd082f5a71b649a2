/**
 * Read cursors of users the admin API deletes or takes out of a room: a `joined` goes on listing
 * a cursor for as long as the room lives, and each counts toward the 100 readers past which
 * `reads` is left out for everyone.
 */

import { signDevToken } from "../src/auth/verifier.ts";
import { assertEquals, eventually } from "./assert.ts";
import {
  adminCall,
  health,
  startTestServer,
  TEST_SECRET,
  TestClient,
  type TestServer,
} from "./helpers.ts";
import { mayMount, smallDisk, spawnServer, withDataDir } from "./server_process.ts";

const ADMIN = "an-admin-token-for-read-cursor-cleanup";

/** The admin API of the server at `url`, called with the admin token; resolves to the status. */
const apiAt = (url: string) => (method: string, path: string, json?: unknown) =>
  adminCall(url, ADMIN, method, path, json);

/** Runs `fn` with a server that has an admin token, and its admin API as `api`. */
async function withApi(
  fn: (
    server: TestServer,
    api: ReturnType<typeof apiAt>,
  ) => Promise<void>,
): Promise<void> {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  try {
    await fn(server, apiAt(server.url));
  } finally {
    await server.close();
  }
}

/** Opens a native socket of `sub`, whose token opens every ticket and chat room. */
async function connect(server: TestServer, sub: string): Promise<TestClient> {
  const token = await server.token({ sub, username: `user${sub}`, rooms: ["ticket:*", "chat:*"] });
  const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

/** Opens a native socket of `sub` at the server `url`, whose token claims no room. */
async function connectAt(url: string, sub: string): Promise<TestClient> {
  const token = await signDevToken(TEST_SECRET, { sub, username: `user${sub}` });
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

/** Opens sockets as connectAt does, each kept in `clients` to be closed after. */
const openInto = (clients: TestClient[]) => async (url: string, sub: string) => {
  const ws = await connectAt(url, sub);
  clients.push(ws);
  return ws;
};

/** Creates `users` through the admin API, and ticket 7 with them as its participants. */
async function ticketSevenWith(api: ReturnType<typeof apiAt>, users: string[]): Promise<void> {
  for (const id of users) {
    assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
  }
  const participants = users.map((user_id) => ({ user_id }));
  assertEquals(await api("PUT", "/api/rooms/ticket/7", { participants }), 201);
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
 * Every read cursor key in the KV of the server on `dataDir` as `room/user`, sorted, after
 * checking that the store's list of the rooms each user read names the same.
 */
async function cursorKeys(dataDir: string): Promise<string[]> {
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
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

Deno.test("a user deleted through the admin API leaves no read cursor: not in rooms they took part in, not in rooms only their token opened; others' stay", () =>
  withApi(async (server, api) => {
    await ticketSevenWith(api, ["1", "2", "3"]);
    // ticket:77 is unknown to the directory (the token's claim opens it); room:lobby is open to
    // everyone signed in.
    for (const room of ["ticket:7", "ticket:77", "room:lobby"]) {
      for (const id of ["1", "2", "3"]) await readIn(server, id, room);
    }
    assertEquals(await api("DELETE", "/api/users/2"), 204);
    for (const room of ["ticket:7", "ticket:77", "room:lobby"]) {
      assertEquals(await readersOf(server, "1", room), ["1", "3"], room);
    }
    assertEquals(await cursorKeys(server.dataDir), [
      "room:lobby/1",
      "room:lobby/3",
      "ticket:7/1",
      "ticket:7/3",
      "ticket:77/1",
      "ticket:77/3",
    ]);
  }));

Deno.test("a participant removed from a room loses their read cursor there (also when a room save drops them), not elsewhere, unless they still may enter", () =>
  withApi(async (server, api) => {
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
    assertEquals(await cursorKeys(server.dataDir), [
      "ticket:8/1",
      "ticket:8/4",
      "ticket:9/1",
      "ticket:9/2",
      "ticket:9/3",
      "ticket:9/4",
    ]);
  }));

Deno.test("a read that a server not yet told of a user's deletion or a participant's removal takes after it stores no cursor; the user created again and added back marks reads again", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const a = spawn(env);
    const open = openInto(clients);
    const urlA = await a.url();
    const urlB = await spawn(env).url();
    const api = apiAt(urlA);
    await ticketSevenWith(api, ["1", "2", "3"]);
    const one = await open(urlA, "1");
    one.send({ type: "join", room: "ticket:7", ref: "j" });
    assertEquals((await one.next((f) => f.ref === "j")).type, "joined");
    one.send({ type: "send", room: "ticket:7", body: "hello", ref: "s" });
    const seq = (await one.next((f) => f.ref === "s")).seq;
    // On B, which hears of revocations at its next read of the shared KV, not at once.
    const [two, three] = [await open(urlB, "2"), await open(urlB, "3")];
    for (const ws of [two, three]) {
      ws.send({ type: "join", room: "ticket:7", ref: "j" });
      assertEquals((await ws.next((f) => f.ref === "j")).type, "joined");
    }
    // Each read goes out the moment the admin API has answered, before B has heard.
    assertEquals(await api("DELETE", "/api/users/2"), 204);
    two.send({ type: "read", room: "ticket:7", seq, ref: "r" });
    assertEquals(await api("DELETE", "/api/rooms/ticket/7/participants/3"), 204);
    three.send({ type: "read", room: "ticket:7", seq, ref: "r" });
    for (const ws of [two, three]) {
      const answer = await ws.next((f) => f.ref === "r" || f.type === "removed");
      // Refused, the read is answered with the cursor as it stays: none.
      if (answer.type === "read_ok") assertEquals(answer.seq, 0);
    }
    await new Promise((r) => setTimeout(r, 1000));
    // User 1 never marked a read: nobody is left who has.
    assertEquals(await readersAt(urlA, "1", "ticket:7", open), []);
    assertEquals(await cursorKeys(dataDir), []);
    // Created again and added back, each marks reads at once.
    assertEquals(await api("PUT", "/api/users/2", { username: "user2" }), 200);
    for (const user_id of ["2", "3"]) {
      assertEquals(await api("POST", "/api/rooms/ticket/7/participants", { user_id }), 200);
      const ws = await open(urlB, user_id);
      ws.send({ type: "join", room: "ticket:7", ref: "j" });
      assertEquals((await ws.next((f) => f.ref === "j")).type, "joined");
      ws.send({ type: "read", room: "ticket:7", seq, ref: "r" });
      assertEquals((await ws.next((f) => f.ref === "r")).seq, seq);
    }
    assertEquals(await readersAt(urlA, "1", "ticket:7", open), ["2", "3"]);
  }, { prefix: "read-cursor-race-", extra: { ADMIN_TOKEN: ADMIN } });
});

/** Who a new join of `sub` in `room` at the server `url` is told has read it, sorted. */
async function readersAt(
  url: string,
  sub: string,
  room: string,
  open: (url: string, sub: string) => Promise<TestClient>,
): Promise<string[]> {
  const ws = await open(url, sub);
  ws.send({ type: "join", room, ref: "j" });
  const joined = await ws.next((f) => f.ref === "j");
  return (joined.reads as { user_id: unknown }[]).map((r) => String(r.user_id)).sort();
}

Deno.test({
  name:
    "a user deletion whose read cursor cleanup KV refused (full disk) answers 500 and can be retried, which deletes them all, also one stored before the list of a user's rooms",
  ignore: !(await mayMount()),
  async fn() {
    const disk = await smallDisk();
    // The directory elsewhere, so that only KV meets the full disk.
    const elsewhere = await Deno.makeTempDir({ prefix: "read-cursor-directory-" });
    const server = spawnServer({
      DATA_DIR: disk.dir,
      ADMIN_TOKEN: ADMIN,
      DATABASE_URL: `${elsewhere}/directory.sqlite3`,
    });
    const clients: TestClient[] = [];
    const open = openInto(clients);
    try {
      const url = await server.url();
      const api = apiAt(url);
      await ticketSevenWith(api, ["1", "2"]);
      const two = await open(url, "2");
      two.send({ type: "join", room: "ticket:7", ref: "j" });
      await two.next((f) => f.ref === "j");
      two.send({ type: "send", room: "ticket:7", body: "hi", ref: "s" });
      const seq = (await two.next((f) => f.ref === "s")).seq;
      two.send({ type: "read", room: "ticket:7", seq, ref: "r" });
      assertEquals((await two.next((f) => f.ref === "r")).type, "read_ok");
      two.socket.close();
      // As the release before the list stored it: the cursor without its ["read_room"] entry.
      const kv = await Deno.openKv(`${disk.dir}/chat.kv`);
      await kv.delete(["read_room", "2", "ticket:7"]);
      kv.close();
      await disk.fill();
      const statuses = [await api("DELETE", "/api/users/2")];
      await disk.free();
      statuses.push(await api("DELETE", "/api/users/2"));
      const readers = await readersAt(url, "1", "ticket:7", open);
      assertEquals({ statuses, readers }, { statuses: [500, 204], readers: [] });
    } finally {
      for (const ws of clients) ws.socket.close();
      await server.kill("SIGKILL");
      await disk.unmount();
      await Deno.remove(elsewhere, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test("deleting a user the directory does not know and no room names answers 404 and changes nothing: a user only tokens know keeps their cursors and marks reads", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  try {
    await readIn(server, "9", "ticket:99");
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/users/9"), 404);
    assertEquals(await readersOf(server, "8", "ticket:99"), ["9"]);
    // Their marks are taken, not refused for a while after a deletion that did not happen.
    await readIn(server, "9", "ticket:98");
    assertEquals(await readersOf(server, "8", "ticket:98"), ["9"]);
  } finally {
    await server.close();
  }
});

Deno.test("a user deleted and then added back to a room (only tokens know them) marks reads there at once", () =>
  withApi(async (server, api) => {
    assertEquals(await api("PUT", "/api/users/2", { username: "user2" }), 200);
    const participants = ["1", "2"].map((user_id) => ({ user_id }));
    assertEquals(await api("PUT", "/api/rooms/ticket/7", { participants }), 201);
    assertEquals(await api("DELETE", "/api/users/2"), 204);
    assertEquals(await api("POST", "/api/rooms/ticket/7/participants", { user_id: "2" }), 200);
    await readIn(server, "2", "ticket:7");
    assertEquals(await readersOf(server, "1", "ticket:7"), ["2"]);
  }));

Deno.test("a user deleted and created again (PUT /api/users) marks reads at once in a room only their token opens", () =>
  withApi(async (server, api) => {
    assertEquals(await api("PUT", "/api/users/2", { username: "user2" }), 200);
    assertEquals(await api("DELETE", "/api/users/2"), 204);
    assertEquals(await api("PUT", "/api/users/2", { username: "user2" }), 200);
    await readIn(server, "2", "ticket:50");
    assertEquals(await readersOf(server, "1", "ticket:50"), ["2"]);
  }));

Deno.test("a participant removed from a room and put back by a room save (PUT /api/rooms) marks reads there at once", () =>
  withApi(async (server, api) => {
    const participants = ["1", "3"].map((user_id) => ({ user_id }));
    assertEquals(await api("PUT", "/api/rooms/ticket/7", { participants }), 201);
    assertEquals(await api("DELETE", "/api/rooms/ticket/7/participants/3"), 204);
    assertEquals(await api("PUT", "/api/rooms/ticket/7", { participants }), 200);
    await readIn(server, "3", "ticket:7");
    assertEquals(await readersOf(server, "1", "ticket:7"), ["3"]);
  }));

Deno.test("a read mark the store refuses (the user deleted a moment ago, their token still good) tells the room nothing", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  const one = await connect(server, "1");
  try {
    assertEquals(
      await adminCall(server.url, ADMIN, "PUT", "/api/users/2", { username: "u2" }),
      200,
    );
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/users/2"), 204);
    one.send({ type: "join", room: "ticket:51", ref: "j" });
    assertEquals((await one.next((f) => f.ref === "j")).type, "joined");
    await readIn(server, "2", "ticket:51");
    await one.next((f) => f.type === "message");
    await one.nothing((f) => f.type === "read");
  } finally {
    await one.close();
    await server.close();
  }
});

/**
 * Writes read cursors (`room/user`, each at seq 1) into a new DATA_DIR's KV file as versions
 * before the list of a user's rooms stored them: without their ["read_room"] entries.
 */
async function olderCursors(cursors: string[]): Promise<string> {
  const dataDir = await Deno.makeTempDir({ prefix: "read-cursor-upgrade-" });
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  try {
    for (const cursor of cursors) {
      const [room, user] = cursor.split("/");
      await kv.set(["read", room, user], new Deno.KvU64(1n));
    }
  } finally {
    kv.close();
  }
  return dataDir;
}

/** Runs `fn` with a server on `dataDir` and its admin API, then stops it and removes the data. */
async function withServerOn(
  dataDir: string,
  fn: (
    url: string,
    api: ReturnType<typeof apiAt>,
    open: (url: string, sub: string) => Promise<TestClient>,
  ) => Promise<void>,
): Promise<void> {
  const server = spawnServer({ DATA_DIR: dataDir, ADMIN_TOKEN: ADMIN });
  const clients: TestClient[] = [];
  try {
    const url = await server.url();
    await fn(url, apiAt(url), openInto(clients));
  } finally {
    for (const ws of clients) ws.socket.close();
    await server.kill("SIGTERM");
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

/** Waits until every read cursor in the KV on `dataDir` is in the list of its user's rooms. */
async function cursorsListed(dataDir: string): Promise<void> {
  await eventually(
    () => cursorKeys(dataDir).then(() => true, () => false),
    10_000,
    "the start to list the cursors an older version stored",
  );
}

Deno.test("a user deleted after an upgrade from a version without the list of a user's rooms leaves no read cursor that version stored, also in rooms they took no part in; others' stay", async () => {
  // User 3 read an open named room and a ticket their token's claim opened; 5 is a user only
  // tokens know.
  const dataDir = await olderCursors([
    "room:general/1",
    "room:general/3",
    "room:general/5",
    "ticket:7/1",
    "ticket:7/3",
  ]);
  await withServerOn(dataDir, async (url, api, open) => {
    for (const id of ["1", "3"]) {
      assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
    }
    assertEquals(
      await api("PUT", "/api/rooms/ticket/7", { participants: [{ user_id: "1" }] }),
      201,
    );
    await cursorsListed(dataDir);
    assertEquals(await api("DELETE", "/api/users/3"), 204);
    assertEquals(await readersAt(url, "1", "room:general", open), ["1", "5"]);
    assertEquals(await readersAt(url, "1", "ticket:7", open), ["1"]);
    assertEquals(await cursorKeys(dataDir), ["room:general/1", "room:general/5", "ticket:7/1"]);
  });
});

Deno.test("a user an older version deleted (keeping their read cursors) is listed after the upgrade as a user only tokens know; created again and deleted, their cursors go", async () => {
  // User 3's directory row went with the older version's deletion; the cursors stayed.
  const dataDir = await olderCursors(["room:general/1", "room:general/3", "ticket:7/3"]);
  await withServerOn(dataDir, async (url, api, open) => {
    assertEquals(
      await api("PUT", "/api/rooms/ticket/7", { participants: [{ user_id: "1" }] }),
      201,
    );
    await cursorsListed(dataDir);
    // Nothing tells them from a user only tokens know, whom a mistyped id must not touch.
    assertEquals(await api("DELETE", "/api/users/3"), 404);
    assertEquals(await readersAt(url, "1", "room:general", open), ["1", "3"]);
    assertEquals(await api("PUT", "/api/users/3", { username: "user3" }), 200);
    assertEquals(await api("DELETE", "/api/users/3"), 204);
    assertEquals(await readersAt(url, "1", "room:general", open), ["1"]);
    assertEquals(await readersAt(url, "1", "ticket:7", open), []);
    assertEquals(await cursorKeys(dataDir), ["room:general/1"]);
  });
});

/** Whether the KV on `dataDir` holds the mark that every read cursor is in its user's list. */
async function listedMark(dataDir: string): Promise<boolean> {
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  try {
    return (await kv.get(["read_rooms_listed"])).versionstamp !== null;
  } finally {
    kv.close();
  }
}

/**
 * Stands in for a server of a version without the list of a user's rooms running on the KV of
 * `dataDir` (a rolling upgrade, a rollback): its registry entry as such versions wrote it, with
 * no `readRooms`, renewed every second until it leaves as they did; cursors it stores lack their
 * ["read_room"] entries. With `readRooms`, it stands in for another server of this version, whose
 * entry says it lists them.
 */
async function olderServer(dataDir: string, readRooms = false) {
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  const entry = ["instance", crypto.randomUUID()];
  const epoch = ["instance_epoch"];
  const value = () => ({ seenAt: Date.now(), pid: 1, ...(readRooms ? { readRooms } : {}) });
  await kv.atomic().set(entry, value(), { expireIn: 60_000 }).sum(epoch, 1n).commit();
  let beat = Promise.resolve();
  const timer = setInterval(() => {
    beat = kv.set(entry, value(), { expireIn: 60_000 }).then(() => {});
  }, 1000);
  let left = false;
  return {
    /** Stores the read cursor of `user` in `room` without its entry in the user's list. */
    read: (room: string, user: string) => kv.set(["read", room, user], new Deno.KvU64(1n)),
    /** Leaves as such a server does (a tombstone entry and the epoch bumped); once. */
    async leave(): Promise<void> {
      if (left) return;
      left = true;
      clearInterval(timer);
      await beat;
      await kv.atomic().set(entry, { seenAt: 0, pid: 1 }, { expireIn: 60_000 }).sum(epoch, 1n)
        .commit();
      kv.close();
    },
  };
}

/** `sub` joins `room` at the server `url`, sends one message and reads up to it. */
async function readAt(
  url: string,
  sub: string,
  room: string,
  open: (url: string, sub: string) => Promise<TestClient>,
): Promise<void> {
  const ws = await open(url, sub);
  ws.send({ type: "join", room, ref: "j" });
  assertEquals((await ws.next((f) => f.ref === "j")).type, "joined");
  ws.send({ type: "send", room, body: `from ${sub}`, ref: "s" });
  const ack = await ws.next((f) => f.ref === "s");
  ws.send({ type: "read", room, seq: ack.seq, ref: "r" });
  assertEquals((await ws.next((f) => f.ref === "r")).type, "read_ok");
}

Deno.test("in a rolling upgrade, read cursors a server of a version without the list of a user's rooms stores beside the new one are listed once it stops, and go with their user", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "read-cursor-rolling-" });
  const older = await olderServer(dataDir);
  try {
    await withServerOn(dataDir, async (url, api, open) => {
      for (const id of ["1", "3", "4"]) {
        assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
      }
      await readAt(url, "1", "room:general", open);
      // Users 3 and 4 still read on the older server, which the upgrade stops next.
      await older.read("room:general", "3");
      await older.read("room:general", "4");
      // Marked done now, the listing would never reach what the older server stores next.
      assertEquals(await listedMark(dataDir), false);
      // Deleted while the older server runs: the cursor it stored is not listed yet.
      assertEquals(await api("DELETE", "/api/users/4"), 204);
      await older.leave();
      await cursorsListed(dataDir);
      await eventually(() => listedMark(dataDir), 10_000, "the listing to be marked done");
      assertEquals(await cursorKeys(dataDir), ["room:general/1", "room:general/3"]);
      assertEquals(await api("DELETE", "/api/users/3"), 204);
      assertEquals(await readersAt(url, "1", "room:general", open), ["1"]);
      assertEquals(await cursorKeys(dataDir), ["room:general/1"]);
    });
  } finally {
    await older.leave().catch(() => {});
  }
});

Deno.test("after a rollback to a version without the list of a user's rooms, read cursors it stores are listed once it stops again, and go with their user", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "read-cursor-rollback-" });
  let older: Awaited<ReturnType<typeof olderServer>> | undefined;
  try {
    await withServerOn(dataDir, async (url, api, open) => {
      await eventually(() => listedMark(dataDir), 10_000, "the start to mark the listing done");
      for (const id of ["1", "3"]) {
        assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
      }
      await readAt(url, "1", "room:general", open);
      older = await olderServer(dataDir);
      await eventually(async () => !await listedMark(dataDir), 10_000, "the mark to be deleted");
      await older.read("room:general", "3");
      await older.leave();
      await cursorsListed(dataDir);
      await eventually(() => listedMark(dataDir), 10_000, "the listing to be marked done again");
      assertEquals(await api("DELETE", "/api/users/3"), 204);
      assertEquals(await readersAt(url, "1", "room:general", open), ["1"]);
      assertEquals(await cursorKeys(dataDir), ["room:general/1"]);
    });
  } finally {
    await older?.leave().catch(() => {});
  }
});

Deno.test("beside another server of this version, one of a version without the list of a user's rooms that comes and goes is heard of though no server count changes alone: the cursors it stores are listed once it stops, and go with their user", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "read-cursor-three-" });
  let peer: Awaited<ReturnType<typeof olderServer>> | undefined;
  let older: Awaited<ReturnType<typeof olderServer>> | undefined;
  try {
    await withServerOn(dataDir, async (url, api, open) => {
      await eventually(() => listedMark(dataDir), 10_000, "the start to mark the listing done");
      for (const id of ["1", "3"]) {
        assertEquals(await api("PUT", `/api/users/${id}`, { username: `user${id}` }), 200);
      }
      await readAt(url, "1", "room:general", open);
      // Another server of this version, known before the older one comes: neither the older
      // server's start nor its stop then changes whether this one is alone or has peers elsewhere.
      peer = await olderServer(dataDir, true);
      await eventually(async () => Number((await health(url)).body.peers) === 1, 10_000, "peer");
      older = await olderServer(dataDir);
      await eventually(async () => !await listedMark(dataDir), 10_000, "the mark to be deleted");
      await older.read("room:general", "3");
      await older.leave();
      await cursorsListed(dataDir);
      await eventually(() => listedMark(dataDir), 10_000, "the listing to be marked done again");
      assertEquals(await api("DELETE", "/api/users/3"), 204);
      assertEquals(await readersAt(url, "1", "room:general", open), ["1"]);
      assertEquals(await cursorKeys(dataDir), ["room:general/1"]);
    });
  } finally {
    await older?.leave().catch(() => {});
    await peer?.leave().catch(() => {});
  }
});
