/**
 * MAX_FILE_BYTES past what one WebSocket message carries: Deno reads at most 64 MiB of one and
 * drops the connection, with no error, on a larger one. The sockets advertise and take what fits
 * in that; the upload route keeps the whole limit.
 */

import { MAX_FRAME_CHARS, socketMaxFileBytes } from "../src/dialects/context.ts";
import { assert, assertEquals } from "./assert.ts";
import { startTestServer, TestClient } from "./helpers.ts";

const MiB = 1024 * 1024;

Deno.test("MAX_FILE_BYTES of 80 MiB: the welcome's frame limit is what Deno reads, the largest file that fits is stored, larger ones take the upload route, and the start says so", async () => {
  const logged: string[] = [];
  const server = await startTestServer({ MAX_FILE_BYTES: String(80 * MiB) }, {
    log: (line) => logged.push(line),
  });
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
    const native = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    const limits = (await native.next()).limits as Record<string, number>;
    // The file limit stays the upload route's (the typed client uploads larger files there); a
    // frame is refused by the client past what the server can read.
    assertEquals([limits.max_file_bytes, limits.max_frame_chars], [
      80 * MiB,
      MAX_FRAME_CHARS,
    ]);
    const largest = socketMaxFileBytes(server.app.context.config);
    assertEquals(largest, 47_674_980);
    assert(
      logged.some((l) => l.includes("sockets take files up to 47674980 bytes")),
      logged.join("\n"),
    );

    // The largest file the sockets take, its base64 wrapped as MIME encoders write it, is within
    // the advertised frame limit and is stored.
    native.send({ type: "join", room: "ticket:1", ref: "join" });
    assertEquals((await native.next((f) => f.ref === "join")).type, "joined");
    const data = new Uint8Array(largest).fill(7).toBase64().replace(/.{76}/g, "$&\r\n");
    const frame = JSON.stringify({
      type: "send",
      room: "ticket:1",
      files: [{ name: "largest.bin", data }],
      ref: "largest",
    });
    assert(frame.length <= limits.max_frame_chars, `${frame.length} > ${limits.max_frame_chars}`);
    native.send(frame);
    assertEquals((await native.next((f) => f.ref === "largest", 60_000)).type, "ack");
    await native.close();

    // A file past it, within MAX_FILE_BYTES, goes through the upload route.
    const form = new FormData();
    form.append("file", new Blob([new Uint8Array(50 * MiB).fill(8)]), "larger.bin");
    const upload = await fetch(`${server.url}/api/rooms/ticket/1/attachments`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
      body: form,
    });
    const stored = await upload.json();
    assertEquals(upload.status, 201, JSON.stringify(stored));
    assertEquals(stored.attachments[0].size, 50 * MiB);
  } finally {
    await server.close();
  }
});

Deno.test("MAX_FILE_BYTES of 80 MiB: a send within max_frame_chars whose text is CJK (3 bytes a character in UTF-8) is answered, not dropped by Deno", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: String(80 * MiB) });
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["room:*"] });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    const limit = ((await ws.next()).limits as Record<string, number>).max_frame_chars;
    ws.send({ type: "join", room: "room:x", ref: "join" });
    assertEquals((await ws.next((f) => f.ref === "join")).type, "joined");
    // The longest body (20,000 characters, 60,000 bytes) and two files filling the frame to just
    // under the limit: counted in characters it is within it, and so it must be in bytes.
    const skeleton = (a: string, b: string) =>
      JSON.stringify({
        type: "send",
        room: "room:x",
        body: "中".repeat(20_000),
        ref: "cjk",
        files: [{ name: "a.bin", data: a }, { name: "b.bin", data: b }],
      });
    const half = Math.floor((limit - 1000 - skeleton("", "").length) / 8) * 4;
    const frame = skeleton("A".repeat(half), "A".repeat(half));
    assert(frame.length <= limit, `${frame.length} > ${limit}`);
    assert(new TextEncoder().encode(frame).length > limit, "the frame's UTF-8 is no longer");
    ws.send(frame);
    const outcome = await Promise.race([
      ws.next((f) => f.ref === "cjk", 60_000).then((f) => `answered ${f.type}`),
      ws.closed.then((c) => `closed ${c.code}`),
    ]);
    assertEquals(outcome, "answered ack");
    await ws.close();
  } finally {
    await server.close();
  }
});
