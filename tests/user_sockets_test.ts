/** One user's sockets are bounded in number and in how fast they open, on every route. */

import { io as connect } from "socket.io-client";
import type { Directory } from "../src/core/directory.ts";
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

/** Holds the directory's `getUser` for user 7 (the token's profile lookup) while `hold` is set. */
let hold: Promise<void> | undefined;
const slowDirectory = (inner: Directory): Directory =>
  new Proxy(inner, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (prop === "getUser") {
        return async (id: string) => {
          if (id === "7" && hold) await hold;
          return await (value as Directory["getUser"]).call(target, id);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });

/** A Socket.IO client of `token`, and whether it was signed in, or the refusal's text. */
async function signIn(server: TestServer, token: string) {
  const client = connect(server.url, {
    forceNew: true,
    reconnection: false,
    transports: ["websocket"],
    auth: { token },
  });
  const outcome = await Promise.race([
    nextEvent(client, "authenticated").then(() => "authenticated"),
    nextEvent<[{ message: string }]>(client, "authentication_error").then(([e]) => e.message),
  ]);
  return { client, outcome };
}

Deno.test("user sockets: Socket.IO counts a socket once signed in; past the bound it stays connected, unsigned, and told why", async () => {
  const server = await startTestServer({ SOCKETS_PER_USER: "2" });
  const clients: ReturnType<typeof connect>[] = [];
  try {
    const token = await server.token({ sub: "7", rooms: ["ticket:*"] });
    for (let i = 0; i < 2; i++) {
      const { client, outcome } = await signIn(server, token);
      clients.push(client);
      assertEquals(outcome, "authenticated");
    }
    const refused = await signIn(server, token);
    clients.push(refused.client);
    assertEquals(refused.outcome, "Too many connections for this user");
    // Not stopped as after a refused handshake: it may sign in once a socket is given back.
    assertEquals(refused.client.connected, true);
    // A native socket of the same user is refused too: the bound covers every route.
    const native = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    assertEquals((await native.closed).code, 4029);
    clients[0].disconnect();
    await new Promise((r) => setTimeout(r, 100));
    refused.client.emit("authenticate", { token });
    await nextEvent(refused.client, "authenticated");
  } finally {
    for (const client of clients) client.disconnect();
    await server.close();
  }
});

Deno.test("user sockets: a Socket.IO socket gone while its token was checked (handshake or authenticate) keeps no count", async () => {
  const server = await startTestServer({ SOCKETS_PER_USER: "1" }, { directory: slowDirectory });
  try {
    const token = await server.token({ sub: "7", rooms: ["ticket:*"] });
    // The handshake's CONNECT carries the token; the socket goes while it is checked.
    let release!: () => void;
    hold = new Promise((r) => release = r);
    const raw = new WebSocket(`${server.wsUrl}/socket.io/?EIO=4&transport=websocket`);
    await new Promise((r) => raw.onmessage = r);
    raw.send(`40${JSON.stringify({ token })}`);
    await new Promise((r) => setTimeout(r, 100));
    raw.close();
    await new Promise((r) => setTimeout(r, 100));
    release();
    // The same with `authenticate`.
    const first = connect(server.url, {
      forceNew: true,
      reconnection: false,
      transports: ["websocket"],
    });
    await nextEvent(first, "connect");
    hold = new Promise((r) => release = r);
    first.emit("authenticate", { token });
    await new Promise((r) => setTimeout(r, 100));
    first.disconnect();
    await new Promise((r) => setTimeout(r, 100));
    release();
    hold = undefined;
    await new Promise((r) => setTimeout(r, 200));
    // Neither holds the user's one socket.
    const { client, outcome } = await signIn(server, token);
    client.disconnect();
    assertEquals(outcome, "authenticated");
  } finally {
    hold = undefined;
    await server.close();
  }
});
