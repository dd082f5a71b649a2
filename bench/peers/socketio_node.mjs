/**
 * Socket.IO 4.8 peer on Node: `ws` engine, websocket transport only, compression off,
 * `io.to(room).emit`. A client joins the room named in its handshake query (`?room=&user=`) before
 * the connect ack; it emits `message` with `{body, file?, filename?}` and everyone in the room,
 * the sender included, receives `message` with `{pk, body, sender, file, created_at}`.
 * Attachments are decoded and written to disk, and their URL is broadcast, like ours.
 * Env: `PORT`, `HOST` (127.0.0.1), `DATA_DIR` (where files go).
 */

import { Buffer } from "node:buffer";
import { mkdtempSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { createRequire } from "node:module";

// npm packages load through require so that `deno check .` never resolves them.
const { Server } = createRequire(import.meta.url)("socket.io");

const port = Number(process.env.PORT ?? "8002");
const host = process.env.HOST ?? "127.0.0.1";
const dataDir = process.env.DATA_DIR ?? mkdtempSync(join(tmpdir(), "socketio-"));
const seqs = new Map();
let files = 0;

const http = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", connections: io.engine.clientsCount }));
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(http, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 64 * 1024 * 1024,
});

io.use((socket, next) => {
  const room = String(socket.handshake.query.room ?? "lobby");
  socket.data.room = room;
  socket.data.user = String(socket.handshake.query.user ?? "0");
  socket.join(room);
  next();
});

io.on("connection", (socket) => {
  const { room, user } = socket.data;
  socket.on("message", async (frame) => {
    if (typeof frame !== "object" || frame === null) return;
    const body = typeof frame.body === "string" ? frame.body : "";
    let file = null;
    if (typeof frame.file === "string" && frame.file !== "") {
      const bytes = Buffer.from(frame.file, "base64");
      const name = `${++files}_${String(frame.filename ?? "file").replace(/[^\w.-]/g, "_")}`;
      await writeFile(join(dataDir, name), bytes);
      file = `http://${host}:${port}/media/${name}`;
    }
    const pk = (seqs.get(room) ?? 0) + 1;
    seqs.set(room, pk);
    io.to(room).emit("message", {
      pk,
      body,
      sender: { id: user, username: `user${user}` },
      file,
      created_at: new Date().toISOString(),
    });
  });
  socket.on("disconnect", () => {
    if (io.sockets.adapter.rooms.get(room) === undefined) seqs.delete(room);
  });
});

http.listen(port, host, () => console.log(`socket.io peer on http://${host}:${port}`));
process.on("SIGTERM", () => {
  io.close();
  process.exit(0);
});
