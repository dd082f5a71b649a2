/**
 * What deleted files leave on the media volume: a name holding 32 random hex digits is never
 * given again, so retention and a room's deletion remove it without a mark, and a room's folder
 * goes with its last file; the URLs of kept files still serve.
 */

import { io as connectSocketIo, type Socket as SocketIoClient } from "socket.io-client";
import { assert, assertEquals, nextEvent } from "./assert.ts";
import {
  adminCall,
  eventually,
  listFiles,
  startTestServer,
  TestClient,
  type TestServer,
} from "./helpers.ts";

type Frame = Record<string, unknown>;

const ADMIN = "an-admin-token-for-the-media-marks-test";

/** A client of every protocol that stores files in their own layout, all in ticket `id`. */
async function clientsIn(server: TestServer, id: string) {
  const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
  const native = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
  await native.next((f) => f.type === "welcome");
  native.send({ type: "join", room: `ticket:${id}`, ref: "j" });
  await native.next((f) => f.ref === "j");
  const ticket = await TestClient.open(`${server.wsUrl}/ws/ticket/${id}/?token=${token}`);
  const socketIo = connectSocketIo(server.url, {
    forceNew: true,
    reconnection: false,
    auth: { token },
    transports: ["websocket"],
  });
  await nextEvent(socketIo, "authenticated");
  socketIo.emit("join_ticket", { ticketId: id });
  await nextEvent(socketIo, "joined_ticket");
  return { native, ticket, socketIo };
}

/**
 * Sends one file per protocol (native: `a_<hex>.txt`; ticket socket: a folder of its own;
 * Socket.IO: `<hex>.txt` in its shared folder) and answers each file's URL and bytes, as the
 * native client is told of them.
 */
async function sendRound(
  clients: { native: TestClient; ticket: TestClient; socketIo: SocketIoClient },
  id: string,
  round: number,
): Promise<{ url: string; bytes: string }[]> {
  const sent: { url: string; bytes: string }[] = [];
  for (const via of ["native", "ticket", "socketio"]) {
    const body = `${via} ${round}`;
    const bytes = `the file of ${body}`;
    const data = btoa(bytes);
    if (via === "native") {
      clients.native.send({
        type: "send",
        room: `ticket:${id}`,
        body,
        files: [{ name: "a.txt", data }],
      });
    } else if (via === "ticket") {
      clients.ticket.send({ body, file: data, filename: "a.txt" });
    } else {
      clients.socketIo.emit("send_message", {
        ticketId: id,
        message: body,
        attachments: [{ name: "a.txt", data }],
      });
    }
    const message = await clients.native.next((f) => f.type === "message" && f.body === body);
    sent.push({ url: (message.attachments as Frame[])[0].url as string, bytes });
  }
  return sent;
}

async function close(
  clients: { native: TestClient; ticket: TestClient; socketIo: SocketIoClient },
) {
  clients.socketIo.disconnect();
  await clients.native.close();
  await clients.ticket.close();
  await new Promise((r) => setTimeout(r, 50));
}

async function status(url: string): Promise<number> {
  const res = await fetch(url);
  await res.body?.cancel();
  return res.status;
}

async function serves(file: { url: string; bytes: string }) {
  const res = await fetch(file.url);
  assertEquals([res.status, await res.text()], [200, file.bytes], file.url);
}

/** The names of a folder's entries, or null when it does not exist. */
async function entries(dir: string): Promise<string[] | null> {
  try {
    return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** Every mark of a deleted name under the media root. */
async function marks(media: string): Promise<string[]> {
  return (await listFiles(media)).filter((path) => path.split("/").pop()!.startsWith(".gone-"));
}

Deno.test("media: files retention drops leave no mark, in every protocol's layout; kept files still serve", async () => {
  const LIMIT = 3;
  const server = await startTestServer({ HISTORY_LIMIT: String(LIMIT) });
  const media = `${server.dataDir}/media`;
  try {
    const clients = await clientsIn(server, "41");
    const rounds: { url: string; bytes: string }[][] = [];
    for (let round = 0; round < 4; round++) rounds.push(await sendRound(clients, "41", round));
    await close(clients);
    const [kept, dropped] = [rounds.at(-1)!, rounds.slice(0, -1).flat()];
    // Each round is LIMIT messages: the last round alone is kept.
    assertEquals(kept.length, LIMIT);
    for (const file of dropped) {
      await eventually(async () => await status(file.url) === 404, 10_000, `${file.url} gone`);
    }
    for (const file of kept) await serves(file);
    assertEquals(await marks(media), []);
    // One entry each for the one file kept: its name, or its folder of its own.
    assertEquals((await entries(`${media}/native/ticket_41`))?.length, 1);
    assertEquals((await entries(`${media}/uploads/chat`))?.length, 1);
    assertEquals((await entries(`${media}/files/ticket_41`))?.length, 1);
    assertEquals((await listFiles(media)).length, LIMIT);
  } finally {
    await server.close();
  }
});

Deno.test("media: a deleted room's files go without marks and its folders with them; another room's still serve", async () => {
  const server = await startTestServer({ ADMIN_TOKEN: ADMIN });
  const media = `${server.dataDir}/media`;
  try {
    const files = new Map<string, { url: string; bytes: string }[]>();
    for (const id of ["42", "43"]) {
      const clients = await clientsIn(server, id);
      files.set(id, [...await sendRound(clients, id, 0), ...await sendRound(clients, id, 1)]);
      await close(clients);
    }
    assertEquals(await adminCall(server.url, ADMIN, "DELETE", "/api/rooms/ticket/42"), 204);
    for (const file of files.get("42")!) assertEquals(await status(file.url), 404, file.url);
    for (const file of files.get("43")!) await serves(file);
    assertEquals(await marks(media), []);
    assertEquals(await entries(`${media}/native/ticket_42`), null);
    assertEquals(await entries(`${media}/files/ticket_42`), null);
    // The shared folder keeps the other room's two files alone.
    assertEquals((await entries(`${media}/uploads/chat`))?.length, 2);
    const left = await listFiles(media);
    assertEquals(left.length, 6);
    assert(left.every((path) => !path.includes("ticket_42")), left.join(" "));
  } finally {
    await server.close();
  }
});
