/**
 * JWT_JWKS_URL that does not answer: a token that could not be checked is the server's passing
 * trouble (503, Socket.IO's `authentication_error` saying so), never the client's bad token
 * (4001, which the typed client takes as final), and the outage is logged once.
 */

import * as jose from "jose";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import { assert, assertEquals, assertMatch, delay, nextEvent } from "./assert.ts";
import { freePort, startTestServer, TestClient } from "./helpers.ts";
import { withDataDir } from "./server_process.ts";

/** The status and Retry-After of a WebSocket handshake to `url`, its body discarded. */
async function handshake(url: string): Promise<[number, string | null]> {
  const res = await fetch(url, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
    },
  });
  await res.body?.cancel();
  return [res.status, res.headers.get("retry-after")];
}

/** A key of the provider's, `kid`, as its JWK set lists it, and a token it signed for user 1. */
async function keyPair(kid: string): Promise<{ jwk: Record<string, unknown>; token: string }> {
  const { privateKey, publicKey } = await jose.generateKeyPair("RS256");
  const jwk = { ...await jose.exportJWK(publicKey), kid, alg: "RS256", use: "sig" };
  const token = await new jose.SignJWT({ sub: "1", username: "one" })
    .setProtectedHeader({ alg: "RS256", kid }).setExpirationTime("1h").sign(privateKey);
  return { jwk, token };
}

/** What the native socket of `wsUrl` says first for `token`: its welcome, or its close. */
async function firstWord(wsUrl: string, token: string): Promise<string> {
  const ws = TestClient.connect(`${wsUrl}/ws?token=${token}`);
  const first = await Promise.race([
    ws.next().then((f) => String(f.type)),
    ws.closed.then((c) => `closed ${c.code}`),
  ]);
  await ws.close();
  return first;
}

Deno.test("JWKS outage: sockets get 503, Socket.IO is told tokens cannot be checked, the API 503, logged once; then tokens work again", async () => {
  const logged: string[] = [];
  const originals = { error: console.error, log: console.log, warn: console.warn };
  for (const level of ["error", "log", "warn"] as const) {
    console[level] = (...args: unknown[]) => logged.push(args.map(String).join(" "));
  }
  // The identity provider's port, down until the test starts it.
  const port = freePort();
  const { privateKey, publicKey } = await jose.generateKeyPair("RS256");
  const jwk = { ...await jose.exportJWK(publicKey), kid: "k1", alg: "RS256", use: "sig" };
  const sign = (key: CryptoKey, claims: Record<string, unknown>) =>
    new jose.SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: "k1" })
      .setExpirationTime("1h").sign(key);
  const token = await sign(privateKey, { sub: "1", username: "one", role: "admin" });
  let provider: Deno.HttpServer | undefined;
  const clients: ClientSocket[] = [];
  const server = await startTestServer({
    JWT_JWKS_URL: `http://127.0.0.1:${port}/jwks.json`,
    SOCKETIO_PING_INTERVAL_MS: "500",
    SOCKETIO_PING_TIMEOUT_MS: "500",
  });
  try {
    const outage = () =>
      logged.filter((l) => /JWT_JWKS_URL .* could not be fetched/.test(l)).length;
    const api = async () => {
      const res = await fetch(`${server.url}/api/users/1`, {
        headers: { authorization: `Bearer ${token}` },
      });
      return { status: res.status, retry: res.headers.get("retry-after"), body: await res.json() };
    };

    // Native protocol and a single-room protocol: the upgrade is refused as a passing failure.
    assertEquals(await handshake(`${server.url}/ws?token=${token}`), [503, "5"]);
    assertEquals(await handshake(`${server.url}/ws/ticket/1/?token=${token}`), [503, "5"]);
    const ws = TestClient.connect(`${server.wsUrl}/ws?token=${token}`);
    assert((await ws.closed).code !== 4001, "a JWKS outage closed the socket as unauthorized");
    // The admin API: 503 with Retry-After, not 401.
    const down = await api();
    assertEquals([down.status, down.retry], [503, "5"]);
    assertMatch(down.body.message, /cannot be checked/);
    // Socket.IO: connected unsigned, told why in words that do not call the token invalid,
    // by the handshake's token and by `authenticate` alike.
    const socket = connect(server.url, {
      forceNew: true,
      reconnection: false,
      transports: ["websocket"],
      auth: { token },
    });
    clients.push(socket);
    const [first] = await nextEvent<[{ message: string }]>(socket, "authentication_error");
    assertEquals(first.message, "Tokens cannot be checked now: try again shortly");
    socket.emit("authenticate", { token });
    const [again] = await nextEvent<[{ message: string }]>(socket, "authentication_error");
    assertEquals(again.message, "Tokens cannot be checked now: try again shortly");
    // One line in the log for the whole outage, naming the URL; the metrics show it too.
    assertEquals(outage(), 1, logged.join("\n"));
    assert(logged.some((l) => l.includes(`127.0.0.1:${port}/jwks.json`)), logged.join("\n"));
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assertMatch(metrics, /^chat_auth_keyset_up 0$/m);
    assertMatch(metrics, /^chat_auth_keyset_refusals_total 6$/m);

    // The identity provider comes back: the same token works everywhere, with no restart.
    provider = Deno.serve(
      { hostname: "127.0.0.1", port, onListen: () => {} },
      () => Response.json({ keys: [jwk] }),
    );
    const native = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    assertEquals((await native.next()).type, "welcome");
    await native.close();
    assertEquals((await api()).status, 404);
    socket.emit("authenticate", { token });
    await nextEvent(socket, "authenticated");
    assert(logged.some((l) => /JWT_JWKS_URL .* answers again/.test(l)), logged.join("\n"));
    assertMatch(await (await fetch(`${server.url}/metrics`)).text(), /^chat_auth_keyset_up 1$/m);
    // And a token the key set does not vouch for is still refused as invalid.
    const other = await sign((await jose.generateKeyPair("RS256")).privateKey, { sub: "2" });
    const refused = TestClient.connect(`${server.wsUrl}/ws?token=${other}`);
    assertEquals((await refused.closed).code, 4001);
    assertEquals(outage(), 1, logged.join("\n"));
  } finally {
    for (const c of clients) c.disconnect();
    await server.close();
    await provider?.shutdown();
    Object.assign(console, originals);
  }
});

Deno.test("JWKS rotation: a token signed with a key the provider published just after the server's last fetch is answered 503 (try again), then welcomed; a key the provider never published is still 4001", async () => {
  const port = freePort();
  const [k1, k2, never] = [await keyPair("k1"), await keyPair("k2"), await keyPair("k9")];
  let keys = [k1.jwk];
  let fetches = 0;
  const provider = Deno.serve({ port, hostname: "127.0.0.1", onListen: () => {} }, () => {
    fetches++;
    return Response.json({ keys });
  });
  const server = await startTestServer({ JWT_JWKS_URL: `http://127.0.0.1:${port}/jwks.json` });
  const outcome = (token: string) => firstWord(server.wsUrl, token);
  try {
    assertEquals(await outcome(k1.token), "welcome");
    await delay(1100);
    // A token naming a key the set lacks fetches it again, and is refused: that key is not there.
    const before = fetches;
    assertEquals(await outcome(never.token), "closed 4001");
    assertEquals(fetches, before + 1);
    // The provider rotates right after that fetch: publishes k2 and signs with it at once.
    keys = [k2.jwk, k1.jwk];
    assertEquals(await handshake(`${server.url}/ws?token=${k2.token}`), [503, "5"]);
    // The API says why, in words that do not call the key set down.
    const api = await fetch(`${server.url}/api/users/1`, {
      headers: { authorization: `Bearer ${k2.token}` },
    });
    assertEquals([api.status, api.headers.get("retry-after"), (await api.json()).message], [
      503,
      "1",
      "Tokens cannot be checked now: the token's key is not in the key set (JWT_JWKS_URL) " +
      "fetched a moment ago, which is fetched again at the next try; try again shortly",
    ]);
    await delay(1100);
    assertEquals(await outcome(k2.token), "welcome");
    await delay(1100);
    assertEquals(await outcome(never.token), "closed 4001");
  } finally {
    await server.close();
    await provider.shutdown();
  }
});

Deno.test("JWKS after the server's wall clock steps back an hour: a token whose key the provider never published is still refused (4001) a second later, and one it rotated in is welcomed (jose's own cooldown counts by the wall clock)", async () => {
  const port = freePort();
  const [k1, k2, never] = [await keyPair("k1"), await keyPair("k2"), await keyPair("k9")];
  let keys = [k1.jwk];
  const provider = Deno.serve(
    { port, hostname: "127.0.0.1", onListen: () => {} },
    () => Response.json({ keys }),
  );
  try {
    await withDataDir(async ({ dataDir, env, spawn }) => {
      const clockFile = `${dataDir}/clock-offset`;
      await Deno.writeTextFile(clockFile, "0");
      const server = spawn(env, { clockFile });
      const wsUrl = (await server.url()).replace(/^http/, "ws");
      const outcome = (token: string) => firstWord(wsUrl, token);
      assertEquals(await outcome(k1.token), "welcome");
      // NTP steps the server's clock an hour back.
      await Deno.writeTextFile(clockFile, String(-3600_000));
      await delay(1200);
      assertEquals(await outcome(never.token), "closed 4001");
      keys = [k2.jwk, k1.jwk];
      await delay(1200);
      assertEquals(await outcome(k2.token), "welcome");
    }, {
      prefix: "jwks-clock-",
      extra: { JWT_SECRET: "", JWT_JWKS_URL: `http://127.0.0.1:${port}/jwks.json` },
      stop: "SIGKILL",
    });
  } finally {
    await provider.shutdown();
  }
});
