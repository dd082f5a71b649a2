/**
 * /metrics' traffic counters against a real server: `chat_frames_out_total` and
 * `chat_bytes_in_total` count Socket.IO's packets (WebSocket and long-polling) under
 * `protocol="socket.io"`, and bytes are UTF-8 bytes, not characters; `chat_attachment_bytes_total`
 * counts the bytes of files stored.
 */

import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import { assert, assertEquals, delay } from "./assert.ts";
import { startTestServer, TestClient, type TestServer } from "./helpers.ts";

const FRAMES = "chat_frames_out_total";
const BYTES = "chat_bytes_in_total";
const SOCKET_IO = '{protocol="socket.io"}';

/** Text most of whose characters take 3 or 4 bytes in UTF-8. */
const WIDE = "中文😀 ".repeat(300);

const utf8 = (text: string) => new TextEncoder().encode(text).byteLength;

/**
 * /metrics' samples by name and labels. The text must stay valid exposition: each sample once,
 * and right after its own family's HELP and TYPE (a family's samples may not be split apart).
 */
async function samples(server: TestServer): Promise<Map<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const values = new Map<string, number>();
  let family = "";
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) /.exec(line);
    if (type) family = type[1];
    if (line === "" || line.startsWith("#")) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert(sample, `not a sample: ${line}`);
    const [, name, labels = "", value] = sample;
    assert(name.startsWith(family), `${line} is not in its family, after ${family}'s TYPE`);
    assert(!values.has(name + labels), `${line} twice`);
    values.set(name + labels, Number(value));
  }
  return values;
}

const CODES = { open: 0, close: 1, ping: 2, pong: 3, message: 4, upgrade: 5, noop: 6 };

/** What one client's Engine.IO connection received (packets) and sent (UTF-8 bytes). */
function tally(socket: ClientSocket): { received: number; sentBytes: number } {
  const counts = { received: 0, sentBytes: 0 };
  const engine = socket.io.engine;
  engine.on("packet", () => counts.received++);
  engine.on("packetCreate", (packet) => {
    const data = typeof packet.data === "string" ? packet.data : "";
    counts.sentBytes += utf8(CODES[packet.type as keyof typeof CODES] + data);
  });
  return counts;
}

/** Resolves with the first argument of the next `event` that `accept` takes. */
function next(
  socket: ClientSocket,
  event: string,
  accept: (arg: Record<string, unknown>) => boolean = () => true,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), 5000);
    const listener = (arg: Record<string, unknown>) => {
      if (!accept(arg)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(arg);
    };
    socket.on(event, listener);
  });
}

Deno.test("metrics: Socket.IO packets written and bytes read, over WebSocket and long-polling, count under protocol=socket.io", async () => {
  const server = await startTestServer();
  const clients: ClientSocket[] = [];
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:7"] });
    for (const transports of [["websocket"], ["polling"]]) {
      const socket = connect(server.url, {
        forceNew: true,
        reconnection: false,
        transports,
        auth: { token },
      });
      clients.push(socket);
      await next(socket, "authenticated");
      socket.emit("join_ticket", { ticketId: "7" });
      await next(socket, "joined_ticket");
    }
    // Whatever the handshakes left in flight has arrived (pings come only every 25 s).
    await delay(300);
    const tallies = clients.map(tally);
    const before = await samples(server);
    for (let i = 0; i < 10; i++) {
      // One at a time, so that each of the polling client's POSTs carries one packet.
      const message = `${WIDE}${i}`;
      const arrivals = clients.map((c) =>
        next(c, "new_message", (e) => (e.data as { message?: string }).message === message)
      );
      clients[i % 2].emit("send_message", { ticketId: "7", message });
      await Promise.all(arrivals);
    }
    await delay(300);
    const after = await samples(server);
    const delta = (key: string) => after.get(key)! - before.get(key)!;
    const received = tallies[0].received + tallies[1].received;
    const sentBytes = tallies[0].sentBytes + tallies[1].sentBytes;
    assertEquals(delta("chat_messages_in_total"), 10);
    // Each message reached both clients, over each transport.
    assert(tallies[0].received >= 10 && tallies[1].received >= 10, JSON.stringify(tallies));
    assert(sentBytes > 10 * utf8(WIDE), JSON.stringify(tallies));
    assertEquals(
      { frames: delta(FRAMES + SOCKET_IO), bytes: delta(BYTES + SOCKET_IO) },
      { frames: received, bytes: sentBytes },
    );
    // The WebSocket protocols' own series did not count it a second time.
    assertEquals({ frames: delta(FRAMES), bytes: delta(BYTES) }, { frames: 0, bytes: 0 });
  } finally {
    for (const c of clients) c.disconnect();
    await server.close();
  }
});

Deno.test("metrics: chat_bytes_in_total counts a text frame's UTF-8 bytes, not its characters", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:8"] });
    const client = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${token}`);
    await delay(200);
    const before = await samples(server);
    const frame = JSON.stringify({ body: WIDE });
    client.send(frame);
    await client.next((f) => f.body === WIDE);
    const after = await samples(server);
    await client.close();
    assert(utf8(frame) > frame.length * 2);
    assertEquals(after.get(BYTES)! - before.get(BYTES)!, utf8(frame));
  } finally {
    await server.close();
  }
});

Deno.test("metrics: chat_attachment_bytes_total counts the bytes of the files stored, not a repeated client_id's discarded copy", async () => {
  const server = await startTestServer();
  try {
    const attachmentBytes = async () => (await samples(server)).get("chat_attachment_bytes_total");
    assertEquals(await attachmentBytes(), 0);
    const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await ws.next((f) => f.type === "welcome");
    ws.send({ type: "join", room: "ticket:1", ref: "j" });
    await ws.next((f) => f.ref === "j");
    const files = [
      { name: "a.bin", data: new Uint8Array(1000).toBase64() },
      { name: "b.bin", data: new Uint8Array(234).toBase64() },
    ];
    ws.send({ type: "send", room: "ticket:1", files, client_id: "c1", ref: "s" });
    await ws.next((f) => f.ref === "s");
    assertEquals(await attachmentBytes(), 1234);
    ws.send({ type: "send", room: "ticket:1", files, client_id: "c1", ref: "again" });
    assertEquals((await ws.next((f) => f.ref === "again")).type, "ack");
    assertEquals(await attachmentBytes(), 1234);
    await ws.close();
  } finally {
    await server.close();
  }
});
