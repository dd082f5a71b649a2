/**
 * The TypeScript client (client/mod.ts) behind a reverse proxy (tests/helpers.ts `reverseProxy`, what
 * nginx does): one that caps request bodies below MAX_FILE_BYTES, as nginx's default
 * `client_max_body_size 1m` does, and one that mounts the server under a path prefix.
 */

import { ChatClient, type ChatError, type UploadProgress } from "../client/mod.ts";
import { assertEquals, assertRejects } from "./assert.ts";
import { reverseProxy, startTestServer } from "./helpers.ts";

const MiB = 1024 * 1024;

Deno.test("client: behind a proxy's 1 MiB body cap a larger file goes inline; the server's own 413, or a file no frame carries, still fails", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "52000000" });
  const proxy = reverseProxy(server.port, { maxBodyBytes: MiB });
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

Deno.test("client: under a proxy's path prefix (wss://host/chat/ws) uploads go to /chat/api/..., over the upload route", async () => {
  const server = await startTestServer();
  const proxy = reverseProxy(server.port, { prefix: "/chat" });
  const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
  const chat = new ChatClient({ url: `ws://127.0.0.1:${proxy.port}/chat/ws`, token });
  try {
    await chat.connect();
    await chat.join("ticket:1");
    const via = new Set<UploadProgress["via"]>();
    const onProgress = (p: UploadProgress) => via.add(p.via);
    const file = { name: "big.bin", data: new Uint8Array(300_000) };
    const ack = await chat.sendFile("ticket:1", file, { onProgress });
    // Not stored by an inline send after the proxy's 404 at /api/... (the host's root).
    assertEquals([ack.seq, [...via]], [1, ["upload"]]);
    assertEquals(chat.httpUrl, `http://127.0.0.1:${proxy.port}/chat`);
    assertEquals((await chat.history("ticket:1")).messages.map((m) => m.seq), [1]);
  } finally {
    chat.close();
    await proxy.close();
    await server.close();
  }
});

Deno.test("client: httpUrl is the option's, else the socket url without its trailing /ws and query", () => {
  const httpUrl = (url: string, option?: string) =>
    new ChatClient({ url, token: "t", httpUrl: option }).httpUrl;
  assertEquals(httpUrl("ws://host:8000/ws"), "http://host:8000");
  assertEquals(httpUrl("wss://host/ws/?v=1"), "https://host");
  assertEquals(httpUrl("wss://host/chat/ws?v=1"), "https://host/chat");
  assertEquals(httpUrl("wss://host/a/b/ws/"), "https://host/a/b");
  assertEquals(httpUrl("https://host"), "https://host");
  assertEquals(httpUrl("wss://host/chat/ws", "https://api.host/chat/"), "https://api.host/chat");
});
