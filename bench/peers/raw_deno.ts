/**
 * The local limit: a minimal `Deno.serve` + `Deno.upgradeWebSocket` room broadcast. One `Set` per
 * room, `JSON.stringify` once per message, the same 30 s idle timeout as the chat server, no auth,
 * no history. Attachments are decoded and written to disk, and their URL is broadcast, like ours.
 *
 * `/ws/<room>?user=<n>`: frames `{"body", "file"?, "filename"?}`; everyone in the room, the sender
 * included, receives `{"pk", "body", "sender", "file", "created_at"}`.
 * Env: `PORT`, `HOST` (127.0.0.1), `DATA_DIR` (where files go), `PERSIST=kv` (the benchmark's
 * raw Deno + KV peer: each message is committed to Deno KV, with the room's head, before it is
 * broadcast; commits are not batched, and each room's broadcasts keep commit order).
 */

interface Room {
  members: Set<WebSocket>;
  seq: number;
  /** The last broadcast queued behind its commit (PERSIST=kv). */
  chain: Promise<unknown>;
}

const rooms = new Map<string, Room>();
const port = Number(Deno.env.get("PORT") ?? "8001");
const hostname = Deno.env.get("HOST") ?? "127.0.0.1";
const dataDir = Deno.env.get("DATA_DIR") ?? Deno.makeTempDirSync({ prefix: "raw-deno-" });
let connections = 0;
let files = 0;
const kv = Deno.env.get("PERSIST") === "kv" ? await Deno.openKv(`${dataDir}/raw.kv`) : null;

function broadcast(roomName: string, body: string, user: string, file: string | null): void {
  const room = rooms.get(roomName);
  if (!room) return;
  const message = {
    pk: ++room.seq,
    body,
    sender: { id: user, username: `user${user}` },
    file,
    created_at: new Date().toISOString(),
  };
  const text = JSON.stringify(message);
  const send = () => {
    for (const socket of room.members) {
      if (socket.readyState === WebSocket.OPEN) socket.send(text);
    }
  };
  if (!kv) return send();
  // Committed at once (KV applies commits in order), broadcast in seq order once durable.
  const commit = kv.atomic().set(["msg", roomName, message.pk], message)
    .set(["head", roomName], message.pk).commit();
  room.chain = room.chain.then(() => commit).then(send, (err) => console.error(err));
}

async function onMessage(roomName: string, user: string, base: string, data: unknown) {
  if (typeof data !== "string") return;
  let frame: { body?: unknown; file?: unknown; filename?: unknown };
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  const body = typeof frame.body === "string" ? frame.body : "";
  let url: string | null = null;
  if (typeof frame.file === "string" && frame.file !== "") {
    const bytes = Uint8Array.fromBase64(frame.file);
    const name = `${++files}_${String(frame.filename ?? "file").replace(/[^\w.-]/g, "_")}`;
    await Deno.writeFile(`${dataDir}/${name}`, bytes);
    url = `${base}/media/${name}`;
  }
  broadcast(roomName, body, user, url);
}

Deno.serve({ port, hostname, onListen: () => {} }, (req) => {
  const url = new URL(req.url);
  if (url.pathname === "/healthz") return Response.json({ status: "ok", connections });
  const match = /^\/ws\/([^/]+)\/?$/.exec(url.pathname);
  if (!match || req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return new Response("not found", { status: 404 });
  }
  const roomName = match[1];
  const user = url.searchParams.get("user") ?? "0";
  const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 30 });
  let opened = false;
  socket.onopen = () => {
    opened = true;
    connections++;
    let room = rooms.get(roomName);
    if (!room) rooms.set(roomName, room = { members: new Set(), seq: 0, chain: Promise.resolve() });
    room.members.add(socket);
  };
  socket.onmessage = (e) => {
    onMessage(roomName, user, url.origin, e.data).catch((err) => console.error(err));
  };
  socket.onclose = () => {
    if (!opened) return;
    opened = false;
    connections--;
    const room = rooms.get(roomName);
    if (!room) return;
    room.members.delete(socket);
    if (room.members.size === 0) rooms.delete(roomName);
  };
  socket.onerror = () => {};
  return response;
});
console.log(`raw deno peer on http://${hostname}:${port}`);
