/** One user's sockets are bounded in number and in how fast they open, on every route. */

import { io as connect } from "socket.io-client";
import { assertEquals, nextEvent } from "./assert.ts";
import { startTestServer, TestClient, type TestServer } from "./helpers.ts";

async function native(server: TestServer, token: string): Promise<TestClient> {
  return await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
}

Deno.test("user sockets: past SOCKETS_PER_USER a socket is closed with 4029, on the native and ticket routes alike; one closing makes room", async () => {
  const server = await startTestServer({ SOCKETS_PER_USER: "3" });
  try {
    const token = await server.token({ sub: "7", rooms: ["ticket:*"] });
    const held = [
      await native(server, token),
      await native(server, token),
      await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`),
    ];
    await held[0].next((f) => f.type === "welcome");
    for (
      const url of [
        `${server.wsUrl}/ws?token=${token}`,
        `${server.wsUrl}/ws/ticket/1/?token=${token}`,
      ]
    ) {
      const refused = await TestClient.open(url);
      assertEquals(await refused.closed, {
        code: 4029,
        reason: "Too many connections for this user",
      });
    }
    // Another user is counted apart.
    const other = await native(server, await server.token({ sub: "8" }));
    assertEquals((await other.next()).type, "welcome");
    await held[0].close();
    const next = await native(server, token);
    assertEquals((await next.next()).type, "welcome");
    for (const ws of [...held.slice(1), other, next]) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("user sockets: a user opening sockets faster than RATE_LIMIT_USER_PER_SECOND is told to slow down", async () => {
  const server = await startTestServer({ RATE_LIMIT_USER_PER_SECOND: "2" });
  try {
    const token = await server.token({ sub: "7", rooms: ["ticket:*"] });
    const opened: TestClient[] = [];
    // A burst of twice the rate goes through.
    for (let i = 0; i < 4; i++) {
      const ws = await native(server, token);
      assertEquals((await ws.next()).type, "welcome");
      opened.push(ws);
    }
    const refused = await native(server, token);
    assertEquals(await refused.closed, {
      code: 4029,
      reason: "Connecting too fast: try again shortly",
    });
    for (const ws of opened) await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("user sockets: Socket.IO counts a socket once signed in, refusing the handshake past the bound", async () => {
  const server = await startTestServer({ SOCKETS_PER_USER: "2" });
  const clients: ReturnType<typeof connect>[] = [];
  try {
    const token = await server.token({ sub: "7", rooms: ["ticket:*"] });
    const open = () => {
      const client = connect(server.url, {
        forceNew: true,
        reconnection: false,
        transports: ["websocket"],
        auth: { token },
      });
      clients.push(client);
      return client;
    };
    for (let i = 0; i < 2; i++) await nextEvent(open(), "connect");
    const [error] = await nextEvent<[Error]>(open(), "connect_error");
    assertEquals(error.message, "Too many connections for this user");
    // A native socket of the same user is refused too: the bound covers every route.
    const refused = await native(server, token);
    assertEquals((await refused.closed).code, 4029);
    clients[0].disconnect();
    await new Promise((r) => setTimeout(r, 100));
    await nextEvent(open(), "connect");
  } finally {
    for (const client of clients) client.disconnect();
    await server.close();
  }
});
