/**
 * MAX_FILE_BYTES past what one WebSocket message carries: Deno reads at most 64 MiB of one and
 * drops the connection, with no error, on a larger one. The sockets advertise and take what fits
 * in that; the upload route keeps the whole limit.
 */

import { DENO_MAX_MESSAGE_BYTES, socketMaxFileBytes } from "../src/dialects/context.ts";
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
      DENO_MAX_MESSAGE_BYTES,
    ]);
    const largest = socketMaxFileBytes(server.app.context.config);
    assertEquals(largest, 47_768_370);
    assert(
      logged.some((l) => l.includes("sockets take files up to 47768370 bytes")),
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
