/**
 * The TypeScript client (client/mod.ts) behind a reverse proxy (tests/helpers.ts `pathProxy`, what
 * nginx does) that caps request bodies below MAX_FILE_BYTES, as nginx's default
 * `client_max_body_size 1m` does.
 */

import { ChatClient, type ChatError, type UploadProgress } from "../client/mod.ts";
import { assertEquals, assertRejects } from "./assert.ts";
import { pathProxy, startTestServer } from "./helpers.ts";

const MiB = 1024 * 1024;

Deno.test("client: behind a proxy's 1 MiB body cap a larger file goes inline; the server's own 413, or a file no frame carries, still fails", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "52000000" });
  const proxy = pathProxy(server.port, { maxBodyBytes: MiB });
  // The server's own refusal, in its own words, where the client uploads.
  const own = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    await req.body?.cancel();
    const message = 'File "own.bin" is too large';
    return Response.json({ status: 413, message, code: "file_too_large" }, { status: 413 });
  });
  const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
  const chat = new ChatClient({ url: `ws://127.0.0.1:${proxy.port}/ws`, token });
  const strict = new ChatClient({
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    httpUrl: `http://127.0.0.1:${own.addr.port}`,
    token,
  });
  try {
    await chat.connect();
    await chat.join("ticket:1");
    const via = new Set<UploadProgress["via"]>();
    const ack = await chat.sendFile("ticket:1", { name: "photo.jpg", data: new Uint8Array(2e6) }, {
      onProgress: (p) => via.add(p.via),
    });
    assertEquals([ack.seq, [...via]], [1, ["upload", "inline"]]);
    const stored = (await chat.history("ticket:1")).messages;
    assertEquals(stored.map((m) => m.attachments[0].size), [2e6]);

    // 51 MB is under MAX_FILE_BYTES but its base64 is over what one frame carries (64 MiB less
    // 128 KiB): the proxy's refusal is the answer, before the file is encoded.
    const huge = { name: "huge.bin", data: new Uint8Array(51_000_000) };
    const refused = (await assertRejects(() => chat.sendFile("ticket:1", huge))) as ChatError;
    assertEquals([refused.code, refused.status, refused.message], [
      "http",
      413,
      "Upload failed with HTTP 413",
    ]);

    await strict.connect();
    await strict.join("ticket:1");
    const own413 = (await assertRejects(() =>
      strict.sendFile("ticket:1", { name: "own.bin", data: new Uint8Array(300_000) })
    )) as ChatError;
    assertEquals([own413.code, own413.status], ["file_too_large", 413]);
    assertEquals((await chat.history("ticket:1")).messages.length, 1);
  } finally {
    chat.close();
    strict.close();
    await own.shutdown();
    await proxy.close();
    await server.close();
  }
});
