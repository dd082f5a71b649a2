/**
 * ALLOWED_ORIGINS and the sockets: once it is set, a socket may be opened from the pages whose
 * `access_token` cookie signs in (those origins, PUBLIC_URL's and the server's own host, whose
 * chat page at `/` opens them), on every route, Socket.IO's included; other pages get 403.
 */

import { assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { originHandshake, startTestServer } from "./helpers.ts";

Deno.test("ALLOWED_ORIGINS: the server's own page and PUBLIC_URL's origin open sockets on every route, Socket.IO too; other pages get 403", async () => {
  const server = await startTestServer({
    ALLOWED_ORIGINS: "https://app.example.com",
    PUBLIC_URL: "https://chat.example.com",
  });
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
    const own = server.url;
    const pages = [
      "https://app.example.com",
      "https://chat.example.com",
      own,
      "https://evil.example",
    ];
    const statuses = async (path: string, upgrade = true) => {
      const out: Record<string, number> = {};
      for (const origin of pages) {
        out[origin] = await originHandshake(server.url + path, origin, upgrade);
      }
      return out;
    };
    const expected = (ok: number) => ({
      "https://app.example.com": ok,
      "https://chat.example.com": ok,
      [own]: ok,
      "https://evil.example": 403,
    });
    assertEquals(await statuses(`/ws?token=${token}`), expected(101));
    assertEquals(await statuses(`/ws/ticket/1/?token=${token}`), expected(101));
    // Socket.IO: the long-polling handshake a browser starts with, and the WebSocket transport.
    assertEquals(await statuses("/socket.io/?EIO=4&transport=polling", false), expected(200));
    assertEquals(await statuses("/socket.io/?EIO=4&transport=websocket"), expected(101));
  } finally {
    await server.close();
  }
});

Deno.test("ALLOWED_ORIGINS: an origin with a * in its host, which no page's Origin matches, stops the start naming the setting", async () => {
  const env = { ALLOWED_ORIGINS: "https://app.example.com, https://*.example.com" };
  const err = await assertRejects(() => startTestServer(env));
  assertMatch(err.message, /ALLOWED_ORIGINS: "https:\/\/\*\.example\.com": a \* matches no origin/);
  assertMatch(err.message, /list each origin/);
});
