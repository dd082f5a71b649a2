/**
 * Behind a reverse proxy: the URLs every protocol hands out (TRUST_PROXY: from what the proxy
 * says it was asked for; PUBLIC_URL with a path: its relative ones too) lead to the file through
 * the proxy, the server's public page (by PUBLIC_URL) may open sockets once ALLOWED_ORIGINS is
 * set, and no page signs in by cookie or opens them by naming its host in a forwarded header.
 */

import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import { assert, assertEquals, eventually } from "./assert.ts";
import {
  originHandshake,
  reverseProxy,
  startTestServer,
  TEST_SECRET,
  TestClient,
} from "./helpers.ts";
import { withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

type Payload = Record<string, unknown>;

const ADMIN_TOKEN = "admin-token-for-the-proxy-tests";
const PUBLIC = "https://chat.example.com";

/** A Socket.IO client through `base` (path under it), authenticated and in ticket 1. */
async function socketIoInTicket(base: string, token: string, path = "/socket.io/") {
  const socket = connect(base, { path, auth: { token }, reconnection: false });
  await new Promise((resolve, reject) => {
    socket.once("authenticated", resolve);
    socket.once("connect_error", reject);
  });
  const joined = new Promise((resolve) => socket.once("joined_ticket", resolve));
  socket.emit("join_ticket", { ticketId: "1" });
  await joined;
  return socket;
}

/** Sends two text files over Socket.IO and answers their attachments as the ack gives them. */
async function sendTwoFiles(socket: ClientSocket): Promise<Payload[]> {
  const ack = await socket.timeout(5000).emitWithAck("send_message", {
    ticketId: "1",
    message: "two files",
    attachments: [
      { name: "one.txt", type: "text/plain", data: btoa("one") },
      { name: "two.txt", type: "text/plain", data: btoa("two") },
    ],
  });
  return ack.attachments as Payload[];
}

/** What the file at `url` answers when fetched through the proxy on `port`, by its path. */
async function throughProxy(port: number, url: string): Promise<[number, string]> {
  const res = await fetch(`http://127.0.0.1:${port}${new URL(url, PUBLIC).pathname}`);
  return [res.status, await res.text()];
}

// nginx's default `Host $proxy_host` (the upstream's address reaches the server), telling the
// scheme and host either way a proxy does.
const FORWARDING = {
  "X-Forwarded-Proto and X-Forwarded-Host": {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "chat.example.com",
  },
  "Forwarded": { Forwarded: 'for=203.0.113.7;proto=https;host="chat.example.com"' },
};

for (const [how, headers] of Object.entries(FORWARDING)) {
  Deno.test(`TRUST_PROXY behind a TLS proxy that rewrites Host (${how}): every URL handed out names the public https origin and answers through the proxy`, async () => {
    const server = await startTestServer({ TRUST_PROXY: "1", ADMIN_TOKEN });
    const port = Number(new URL(server.url).port);
    const proxy = reverseProxy(port, { host: `127.0.0.1:${port}`, headers });
    const sockets: TestClient[] = [];
    let sio: ClientSocket | undefined;
    try {
      const token = await server.token({
        sub: "1",
        username: "one",
        rooms: ["ticket:*", "chat:*"],
      });
      const via = `ws://127.0.0.1:${proxy.port}`;
      const ticket = await TestClient.open(`${via}/ws/ticket/1/?token=${token}`);
      const native = await TestClient.open(`${via}/ws?token=${token}`);
      const conversation = await TestClient.open(`${via}/ws/chat/1/?token=${token}`);
      sockets.push(ticket, native, conversation);
      native.send({ type: "join", room: "ticket:1" });
      await native.next((f) => f.type === "joined");
      await conversation.next((f) => f.type === "connection_established");

      sio = await socketIoInTicket(`http://127.0.0.1:${proxy.port}`, token);
      const [one, two] = await sendTwoFiles(sio);
      const fromTicket = await ticket.next((f) => typeof f.file === "string");
      const fromNative = await native.next<{ type: string; attachments: Payload[] }>((f) =>
        f.type === "message"
      );
      conversation.send({ type: "file_message", filename: "three.txt", file: btoa("three") });
      const { file_attachment: three } = await conversation.next<{ file_attachment: Payload }>(
        (f) => !!f.file_attachment,
      );
      const rest = await fetch(`http://127.0.0.1:${proxy.port}/api/rooms/ticket/1/messages`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const history = (await rest.json()).messages[0].attachments as Payload[];

      const urls: [string, string, string][] = [
        ["Socket.IO url", one.url as string, "one"],
        ["ticket socket file", fromTicket.file as string, "one"],
        // The ticket socket has one file field: the second goes as a link in the body.
        ["ticket socket body link", (fromTicket.body as string).split("\n")[1], "two"],
        ["native url", fromNative.attachments[1].url as string, "two"],
        ["REST url", history[0].url as string, "one"],
        ["conversation file_url", three.file_url as string, "three"],
      ];
      assertEquals(two.url, fromNative.attachments[1].url);
      for (const [what, url, content] of urls) {
        assertEquals([what, new URL(url).origin], [what, PUBLIC]);
        assertEquals([what, ...await throughProxy(proxy.port, url)], [what, 200, content]);
      }
    } finally {
      sio?.disconnect();
      for (const s of sockets) await s.close();
      await proxy.close();
      await server.close();
    }
  });
}

Deno.test("TRUST_PROXY: a client's forwarded host changes its own URLs only, and one that is not a plain host[:port] is passed over for Host", async () => {
  const server = await startTestServer({ TRUST_PROXY: "1" });
  const port = Number(new URL(server.url).port);
  // Caddy, or nginx with `Host $host`: the public name in Host, the scheme in X-Forwarded-Proto.
  const proxy = reverseProxy(port, {
    host: "chat.example.com",
    headers: { "X-Forwarded-Proto": "https" },
  });
  const sockets: TestClient[] = [];
  const sio: ClientSocket[] = [];
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
    const path = `/ws/ticket/1/?token=${token}`;
    const proxied = await TestClient.open(`ws://127.0.0.1:${proxy.port}${path}`);
    const direct = await TestClient.open(`${server.wsUrl}${path}`);
    sockets.push(proxied, direct);
    const bad = ["evil.example/steal", "evil.example@x", "evil.example:99999", "a b", "[::1"];
    for (const host of bad) {
      sockets.push(
        await TestClient.open(`${server.wsUrl}${path}`, {
          headers: { "X-Forwarded-Host": host, "X-Forwarded-Proto": "https" },
        }),
      );
    }
    // Socket.IO shares one bridge per ticket and base URL: each gets its own URLs there too.
    sio.push(await socketIoInTicket(`http://127.0.0.1:${proxy.port}`, token));
    sio.push(await socketIoInTicket(server.url, token));
    const arrivals = sio.map((s) => new Promise<Payload>((r) => s.once("new_message", r)));
    direct.send({ body: "hi", file: btoa("hello"), filename: "a.txt" });
    const files = [];
    for (const s of sockets) files.push((await s.next((f) => typeof f.file === "string")).file);
    const key = new URL(files[0] as string).pathname;
    const https = `https://127.0.0.1:${port}${key}`;
    assertEquals(files, [`${PUBLIC}${key}`, `${server.url}${key}`, ...bad.map(() => https)]);
    const sioUrls = [];
    for (const a of arrivals) sioUrls.push(((await a).data as Payload).attachments);
    const sioKey = new URL(((sioUrls[0] as Payload[])[0].url) as string).pathname;
    assertEquals(sioUrls.map((list) => (list as Payload[])[0].url), [
      `${PUBLIC}${sioKey}`,
      `${server.url}${sioKey}`,
    ]);
    assertEquals(await throughProxy(proxy.port, files[0] as string), [200, "hello"]);
  } finally {
    for (const s of sio) s.disconnect();
    for (const s of sockets) await s.close();
    await proxy.close();
    await server.close();
  }
});

/** The events a Socket.IO long-polling session opened and CONNECTed with `headers` gets first. */
async function pollingSignIn(base: string, headers: Record<string, string>): Promise<string> {
  const url = `${base}/socket.io/?EIO=4&transport=polling`;
  const open = await fetch(url, { headers });
  const text = await open.text();
  assertEquals(open.status, 200, text);
  const sid = JSON.parse(text.slice(1)).sid as string;
  const post = await fetch(`${url}&sid=${sid}`, { method: "POST", headers, body: "40" });
  await post.body?.cancel();
  // The sign-in by cookie may come a poll after the CONNECT's answer: polled until it comes, or
  // until a poll has waited a second for more (a session not signed in gets nothing more).
  let events = "";
  while (!events.includes('"authenticated"')) {
    try {
      const poll = await fetch(`${url}&sid=${sid}`, { headers, signal: AbortSignal.timeout(1000) });
      events += await poll.text();
    } catch {
      break;
    }
  }
  return events;
}

// What a page on another site adds to a credentialed fetch to name its own host as the server's.
const SPOOFED = {
  Forwarded: { Forwarded: "proto=https;host=evil.example" },
  "X-Forwarded-Host": { "X-Forwarded-Host": "evil.example" },
};

// Proxies that pass on the headers they do not set themselves, as nginx does.
const PROXIES = {
  "nginx's default Host $proxy_host, with PUBLIC_URL": {
    env: { PUBLIC_URL: PUBLIC } as Record<string, string>,
    host: undefined as string | undefined,
    headers: { "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.com" },
  },
  "nginx's Host $host and X-Forwarded-Proto": {
    env: {},
    host: "chat.example.com",
    headers: { "X-Forwarded-Proto": "https" },
  },
};

for (const [name, spoofed] of Object.entries(SPOOFED)) {
  for (const [setup, via] of Object.entries(PROXIES)) {
    Deno.test(`TRUST_PROXY without ALLOWED_ORIGINS behind ${setup}: another site's page that names its host in ${name} does not sign in by the user's cookie`, async () => {
      const server = await startTestServer({ TRUST_PROXY: "1", ...via.env });
      const port = Number(new URL(server.url).port);
      const proxy = reverseProxy(port, {
        host: via.host ?? `127.0.0.1:${port}`,
        headers: via.headers,
      });
      const evil = "https://evil.example";
      let native: TestClient | undefined;
      try {
        const token = await server.token({ sub: "1", username: "victim", rooms: ["ticket:*"] });
        const base = `http://127.0.0.1:${proxy.port}`;
        // A page's credentialed fetch carries the header (were the preflight to grant it, see
        // below); the cookie must still count for no route.
        const headers = { origin: evil, cookie: `access_token=${token}`, ...spoofed };
        const events = await pollingSignIn(base, headers);
        assert(!events.includes('"authenticated"'), `signed in as the victim: ${events}`);
        native = TestClient.connect(`ws://127.0.0.1:${proxy.port}/ws`, { headers });
        assertEquals((await native.closed).code, 4001);
        // The public page, by PUBLIC_URL or by the Host the proxy keeps, signs in by its cookie.
        const own = await pollingSignIn(base, { origin: PUBLIC, cookie: `access_token=${token}` });
        assert(own.includes('"authenticated"'), own);
      } finally {
        await native?.close();
        await proxy.close();
        await server.close();
      }
    });
  }
}

Deno.test("Socket.IO's preflight grants another site's page the headers Socket.IO clients send (Content-Type, Authorization) and no other, Forwarded and X-Forwarded-* least of all", async () => {
  const server = await startTestServer({ TRUST_PROXY: "1" });
  try {
    const granted = async (requested: string) => {
      const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
        method: "OPTIONS",
        headers: {
          origin: "https://evil.example",
          "access-control-request-method": "POST",
          "access-control-request-headers": requested,
        },
      });
      await res.body?.cancel();
      assertEquals(res.status, 204);
      assertEquals(res.headers.get("access-control-allow-credentials"), "true");
      return res.headers.get("access-control-allow-headers");
    };
    assertEquals(await granted("content-type"), "content-type");
    // socket.io-client's extraHeaders, for a token the page holds itself.
    assertEquals(await granted("authorization,content-type"), "authorization,content-type");
    for (const name of ["forwarded", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"]) {
      assertEquals([name, await granted(`content-type, ${name}`)], [name, "content-type"]);
    }
    // Other extraHeaders are granted, as Node's cors grants them.
    assertEquals(await granted("content-type, x-custom"), "content-type,x-custom");
  } finally {
    await server.close();
  }
});

/** Each socket route's handshake status for a page of `origin`. */
async function routeStatuses(
  base: string,
  token: string,
  origin: string,
  extra: Record<string, string> = {},
) {
  return {
    native: await originHandshake(`${base}/ws?token=${token}`, origin, true, extra),
    ticket: await originHandshake(`${base}/ws/ticket/1/?token=${token}`, origin, true, extra),
    polling: await originHandshake(
      `${base}/socket.io/?EIO=4&transport=polling`,
      origin,
      false,
      extra,
    ),
    websocket: await originHandshake(
      `${base}/socket.io/?EIO=4&transport=websocket`,
      origin,
      true,
      extra,
    ),
  };
}

Deno.test("ALLOWED_ORIGINS behind nginx's default Host rewrite: with PUBLIC_URL the server's public page opens sockets on every route and signs in by cookie; forwarded headers let no page in, TRUST_PROXY or not", async () => {
  const env = { ALLOWED_ORIGINS: "https://app.example.com", TRUST_PROXY: "1" };
  const server = await startTestServer({ ...env, PUBLIC_URL: PUBLIC });
  const noPublicUrl = await startTestServer(env);
  const forwarded = { "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.com" };
  const proxies = [server, noPublicUrl].map((s) => {
    const port = Number(new URL(s.url).port);
    return reverseProxy(port, { host: `127.0.0.1:${port}`, headers: forwarded });
  });
  const spoofed = {
    "X-Forwarded-Host": "evil.example",
    Forwarded: "proto=https;host=evil.example",
  };
  let cookieClient: TestClient | undefined;
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["ticket:*"] });
    const [base, noPublicBase] = proxies.map((p) => `http://127.0.0.1:${p.port}`);
    const all = (ok: number, polling = ok) => ({ native: ok, ticket: ok, polling, websocket: ok });
    assertEquals(await routeStatuses(base, token, PUBLIC), all(101, 200));
    assertEquals(await routeStatuses(base, token, "https://evil.example"), all(403));
    assertEquals(await routeStatuses(base, token, "https://evil.example", spoofed), all(403));
    // The chat page signs in by its access_token cookie, which counts from its own origin only.
    cookieClient = await TestClient.open(`ws://127.0.0.1:${proxies[0].port}/ws`, {
      headers: { origin: PUBLIC, cookie: `access_token=${token}` },
    });
    assertEquals((await cookieClient.next()).type, "welcome");
    // Without PUBLIC_URL the proxy's word names no page: not the public one behind the Host
    // rewrite, not one that names its own host (straight to the server, or through the proxy).
    const warnings: string[] = [];
    const warn = console.warn;
    console.warn = (text: string) => warnings.push(text);
    try {
      assertEquals(await routeStatuses(noPublicBase, token, PUBLIC), all(403));
      for (const to of [noPublicUrl.url, noPublicBase]) {
        assertEquals(
          [to, await routeStatuses(to, token, "https://evil.example", spoofed)],
          [to, all(403)],
        );
      }
    } finally {
      console.warn = warn;
    }
    // The operator hears once that a page was refused behind a proxy without PUBLIC_URL.
    assertEquals(warnings.length, 1);
    assert(warnings[0].includes("set PUBLIC_URL"), warnings[0]);
  } finally {
    await cookieClient?.close();
    for (const p of proxies) await p.close();
    await server.close();
    await noPublicUrl.close();
  }
});

Deno.test("PUBLIC_URL with a path, behind a proxy serving the server there: the conversation chat's file and Socket.IO's path carry the path too, and PUBLIC_URL wins over TRUST_PROXY", async () => {
  const server = await startTestServer({
    PUBLIC_URL: `${PUBLIC}/chat/`,
    TRUST_PROXY: "1",
  });
  const proxy = reverseProxy(Number(new URL(server.url).port), {
    prefix: "/chat",
    host: "chat.example.com",
    headers: { "X-Forwarded-Proto": "https", "X-Forwarded-Host": "internal.example" },
  });
  let conversation: TestClient | undefined;
  let sio: ClientSocket | undefined;
  try {
    const token = await server.token({ sub: "1", username: "one", rooms: ["chat:*", "ticket:*"] });
    conversation = await TestClient.open(
      `ws://127.0.0.1:${proxy.port}/chat/ws/chat/1/?token=${token}`,
    );
    await conversation.next((f) => f.type === "connection_established");
    conversation.send({ type: "file_message", filename: "b.txt", file: btoa("bee") });
    const { file_attachment: a } = await conversation.next<{ file_attachment: Payload }>(
      (f) => !!f.file_attachment,
    );
    sio = await socketIoInTicket(`http://127.0.0.1:${proxy.port}`, token, "/chat/socket.io/");
    const [one] = await sendTwoFiles(sio);
    const [file, path] = [a.file as string, one.path as string];
    assertEquals([file.slice(0, 12), path.slice(0, 19)], ["/chat/media/", "/chat/uploads/chat/"]);
    assertEquals([a.file_url, one.url], [`${PUBLIC}${file}`, `${PUBLIC}${path}`]);
    assertEquals(await throughProxy(proxy.port, file), [200, "bee"]);
    assertEquals(await throughProxy(proxy.port, path), [200, "one"]);
  } finally {
    sio?.disconnect();
    await conversation?.close();
    await proxy.close();
    await server.close();
  }
});

Deno.test("a proxy that sends only X-Real-IP (a common nginx setup) is noticed: without PUBLIC_URL the server warns that its URLs name the Host it was given", async () => {
  await withDataDir(async ({ env, spawn }) => {
    const server = spawn(env);
    const url = await server.url();
    const token = await signDevToken(TEST_SECRET, {
      sub: "1",
      username: "one",
      rooms: ["ticket:*"],
    });
    const client = await TestClient.open(
      `${url.replace(/^http/, "ws")}/ws/ticket/1/?token=${token}`,
      {
        headers: { "x-real-ip": "203.0.113.9" },
      },
    );
    await client.close();
    await eventually(() => /PUBLIC_URL is not set/.test(server.log()), 10_000, "the warning");
  }, { prefix: "proxy-warning-", stop: "SIGKILL" });
});
