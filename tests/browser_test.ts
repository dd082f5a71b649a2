/**
 * The chat page in a real browser: Debian's Chromium driven by playwright-core, two pages as two
 * users on one server (dev sign-in, no JWT key). They see each other's presence and typing,
 * exchange messages and files, see read receipts, and survive a server restart on the same port
 * and data directory without losing or doubling a message.
 *
 * Without /usr/bin/chromium the test is skipped (its name says so) unless CI=true, where it must
 * run. `UPDATE_SCREENSHOT=1` also writes docs/screenshot.png.
 */

import { Buffer } from "node:buffer";
import { type BrowserContext, chromium, type Page, type WebSocketRoute } from "playwright-core";
import { type RunningServer, startServer } from "../main.ts";
import { loadConfig } from "../src/config.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { ChatClient } from "../client/mod.ts";
import type * as ClientModule from "../client/mod.ts";
import type { PageDocument, PageImage, PageProgress } from "../web/dom.ts";
import { assert, assertEquals, eventually, within } from "./assert.ts";
import { freePort, reverseProxy, startTestServer, TestClient } from "./helpers.ts";

// The functions handed to page.evaluate run in the page, where `document` exists.
declare const document: PageDocument;

const CHROMIUM = "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
];
const ROOM = "room:general";

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

const inCi = Deno.env.get("CI") === "true";
const haveChromium = exists(CHROMIUM);
const skip = !haveChromium && !inCi;

/** A browser test's name, which says so when the test is skipped for want of Chromium. */
const named = (name: string) =>
  skip
    ? `${name} (SKIPPED: no Chromium at ${CHROMIUM}; \`apt-get install chromium\` or set CI=true)`
    : name;

/** Under CI=true the browser tests must run: a missing Chromium fails them. */
function requireChromium(): void {
  if (!haveChromium) {
    throw new Error(`CI=true but there is no Chromium at ${CHROMIUM}: .ci/chromium.sh installs it`);
  }
}

/** No JWT key: the server creates a development secret in the data dir and offers dev sign-in. */
function serve(dataDir: string, port: number): Promise<RunningServer> {
  return startServer(
    loadConfig({ PORT: String(port), HOST: "127.0.0.1", DATA_DIR: dataDir }),
    { log: () => {} },
  );
}

/**
 * Runs `fn` with a server on a fresh DATA_DIR at a free port (its page at `url`); `open` starts
 * Chromium on a fresh profile (at `viewport` if given) and gives its first page. Both
 * directories are named after `tag`; the browser and server are closed and both removed after.
 */
async function withChatServer(
  tag: string,
  fn: (s: {
    url: string;
    port: number;
    open: (viewport?: { width: number; height: number }) => Promise<Page>;
  }) => Promise<void>,
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: `chat-browser-${tag}-` });
  const profile = await Deno.makeTempDir({ prefix: `chat-chromium-${tag}-` });
  const port = freePort();
  const server = await serve(dataDir, port);
  const contexts: BrowserContext[] = [];
  const open = async (viewport?: { width: number; height: number }) => {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      ...(viewport ? { viewport } : {}),
    });
    contexts.push(context);
    context.setDefaultTimeout(10_000);
    return context.pages()[0] ?? await context.newPage();
  };
  try {
    await fn({ url: `http://127.0.0.1:${port}/`, port, open });
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}

async function signIn(page: Page, url: string, name: string, rooms: string): Promise<void> {
  await page.goto(url);
  await page.fill("#signin-name", name);
  await page.fill("#signin-rooms", rooms);
  await page.click("#signin-submit");
  await page.waitForSelector('#status[data-state="open"]');
  await page.waitForSelector(`#rooms li.current[data-room="${ROOM}"]`);
}

/** A typed client signed in as `name` through the dev sign-in, joined to `room`. */
async function typedIn(url: string, port: number, name: string, room: string): Promise<ChatClient> {
  const minted = await fetch(`${url}dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const { token } = await minted.json();
  const chat = new ChatClient({ url: `ws://127.0.0.1:${port}/ws`, token });
  await chat.connect();
  await chat.join(room);
  return chat;
}

/** Bodies of the delivered (not pending) messages of a room, in page order. */
function bodies(page: Page, room = ROOM): Promise<string[]> {
  return page.$$eval(
    `ol.message-list[data-room="${room}"] li.msg:not(.pending)`,
    (items) => items.map((li) => li.querySelector(".body")?.textContent ?? ""),
  );
}

async function waitForBodies(page: Page, expected: string[]): Promise<void> {
  try {
    await page.waitForFunction(
      ({ room, want }) => {
        const items = document.querySelectorAll(
          `ol.message-list[data-room="${room}"] li.msg:not(.pending)`,
        );
        const got = [...items].map((li) => li.querySelector(".body")?.textContent ?? "");
        return JSON.stringify(got) === JSON.stringify(want);
      },
      { room: ROOM, want: expected },
    );
  } catch {
    assertEquals(await bodies(page), expected);
  }
}

/** A PNG drawn by the browser itself, so the test needs no image file. */
async function drawPng(page: Page): Promise<Uint8Array> {
  const dataUrl = await page.evaluate(() => {
    const canvas = document.createElement("canvas");
    canvas.width = 240;
    canvas.height = 120;
    const ctx = canvas.getContext("2d")!;
    const gradient = ctx.createLinearGradient(0, 0, 240, 120);
    gradient.addColorStop(0, "#2563eb");
    gradient.addColorStop(1, "#14b8a6");
    ctx.fillStyle = gradient;
    ctx.fillRect(0, 0, 240, 120);
    ctx.fillStyle = "#fff";
    for (const [i, h] of [40, 70, 55, 90, 65].entries()) ctx.fillRect(30 + i * 40, 110 - h, 24, h);
    return canvas.toDataURL("image/png");
  });
  return Uint8Array.from(atob(dataUrl.split(",")[1]), (c) => c.charCodeAt(0));
}

/** Records whether the upload bar was shown and how far it got, whatever the path taken. */
async function watchProgress(page: Page): Promise<void> {
  await page.evaluate(() => {
    const box = document.getElementById("upload")!;
    const bar = document.getElementById("upload-progress") as PageProgress;
    const seen = { shown: false, max: 0 };
    (globalThis as unknown as { uploadSeen: typeof seen }).uploadSeen = seen;
    const note = () => {
      if (!box.hidden) seen.shown = true;
      seen.max = Math.max(seen.max, bar.value);
    };
    const poll = setInterval(note, 5);
    setTimeout(() => clearInterval(poll), 20_000);
  });
}

Deno.test({
  name: named(
    "browser: two users chat, share files, see typing, presence and receipts, survive a restart",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    requireChromium();
    const dataDir = await Deno.makeTempDir({ prefix: "chat-browser-" });
    const profile = await Deno.makeTempDir({ prefix: "chat-chromium-" });
    const port = freePort();
    const url = `http://127.0.0.1:${port}/`;
    let server: RunningServer | null = await serve(dataDir, port);
    let context: BrowserContext | null = null;
    const pageErrors: string[] = [];
    try {
      context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: FLAGS,
        viewport: { width: 760, height: 620 },
      });
      context.setDefaultTimeout(10_000);
      const ann = context.pages()[0] ?? await context.newPage();
      const ben = await context.newPage();
      for (const page of [ann, ben]) page.on("pageerror", (err) => pageErrors.push(err.message));
      const uploads: { status: number; url: string }[] = [];
      ann.on("response", (res) => {
        if (res.url().includes("/attachments")) {
          uploads.push({ status: res.status(), url: res.url() });
        }
      });

      await t.step("two users sign in and see each other present", async () => {
        await signIn(ann, url, "Ann", "general, room:random");
        await signIn(ben, url, "Ben", "general");
        await ann.waitForSelector('#people li[data-user-id="dev-ben"]');
        await ben.waitForSelector('#people li[data-user-id="dev-ann"]');
        assertEquals(await ben.textContent('#people li[data-user-id="dev-ben"]'), "Ben (you)");
        assertEquals(await ann.textContent("#room-count"), "2 here");
      });

      await t.step(
        "typing shows on the other page, then the message reaches both once",
        async () => {
          await ben.click("#text");
          await ben.keyboard.type("Hi Ann, are you", { delay: 15 });
          await ann.waitForFunction(
            () => document.getElementById("typing")!.textContent === "Ben is typing…",
          );
          await ben.keyboard.type(" there?");
          await ben.keyboard.press("Enter");
          await ann.waitForFunction(() => document.getElementById("typing")!.textContent === "");
          await ann.fill("#text", "Yes! Sending you the chart.");
          await ann.press("#text", "Enter");
          for (const page of [ann, ben]) {
            await waitForBodies(page, ["Hi Ann, are you there?", "Yes! Sending you the chart."]);
          }
          assert(await ann.isVisible("li.msg.mine >> text=Yes! Sending you the chart."));
        },
      );

      await t.step("read receipts: each sees the other has read", async () => {
        await ben.waitForSelector("li.msg .receipts:text('Seen by Ann')");
        await ann.waitForSelector("li.msg .receipts:text('Seen by Ben')");
      });

      await t.step(
        "a small image and a text file go inline; the image shows, the file links",
        async () => {
          const png = await drawPng(ann);
          await ann.setInputFiles("#file", {
            name: "chart.png",
            mimeType: "image/png",
            buffer: Buffer.from(png),
          });
          await ann.setInputFiles("#file", {
            name: "notes.txt",
            mimeType: "text/plain",
            buffer: Buffer.from("Agenda:\n1. Ship the page\n"),
          });
          for (const page of [ann, ben]) {
            await page.waitForFunction(() => {
              const img = document.querySelector('li.msg img[alt="chart.png"]') as PageImage | null;
              return !!img && img.complete && img.naturalWidth === 240;
            });
            const link = await page.waitForSelector("li.msg a.file:has-text('notes.txt')");
            const href = (await link.getAttribute("href"))!;
            assertEquals(await (await fetch(href)).text(), "Agenda:\n1. Ship the page\n");
          }
        },
      );

      await t.step("a larger file shows upload progress and arrives", async () => {
        await watchProgress(ann);
        const big = new Uint8Array(1536 * 1024).map((_, i) => (i * 7) & 0xff);
        await ann.setInputFiles("#file", {
          name: "dataset.bin",
          mimeType: "application/octet-stream",
          buffer: Buffer.from(big),
        });
        const link = await ben.waitForSelector("li.msg a.file:has-text('dataset.bin')");
        assertEquals(await link.$eval(".file-size", (e) => e.textContent), "1.5 MB");
        const bytes = new Uint8Array(
          await (await fetch((await link.getAttribute("href"))!))
            .arrayBuffer(),
        );
        assertEquals(bytes.length, big.length);
        assert(bytes.every((b, i) => b === big[i]), "the file came back changed");
        await ann.waitForSelector("#upload", { state: "hidden" });
        const seen = await ann.evaluate(() =>
          (globalThis as unknown as { uploadSeen: { shown: boolean; max: number } }).uploadSeen
        );
        assert(seen.shown, "the upload bar was never shown");
        assertEquals(seen.max, 1);
        // Large files go over the HTTP upload route as the signed-in user, with progress.
        const ok = uploads.filter((u) => u.status >= 200 && u.status < 300);
        assertEquals(
          ok.length,
          1,
          `upload route answered ${uploads.map((u) => u.status).join(", ")}`,
        );
      });

      const before = [
        "Hi Ann, are you there?",
        "Yes! Sending you the chart.",
        "",
        "",
        "",
      ];

      await t.step("a server restart: reconnecting shows, then every message once", async () => {
        await server!.close();
        server = null;
        for (const page of [ann, ben]) {
          await page.waitForSelector('#status[data-state="reconnecting"]');
          await page.waitForSelector("#banner", { state: "visible" });
        }
        // Written while the server is down: queued, shown as sending, sent once when it is back.
        await ann.fill("#text", "Sent while the server was down");
        await ann.press("#text", "Enter");
        await ann.waitForSelector("li.msg.pending >> text=Sent while the server was down");
        await new Promise((r) => setTimeout(r, 300));
        server = await serve(dataDir, port);
        for (const page of [ann, ben]) {
          await page.waitForSelector('#status[data-state="open"]');
          await page.waitForSelector("#banner", { state: "hidden" });
        }
        await ben.fill("#text", "Back again");
        await ben.press("#text", "Enter");
        const expected = [...before, "Sent while the server was down", "Back again"];
        for (const page of [ann, ben]) await waitForBodies(page, expected);
        assertEquals(await ann.$$("li.msg.pending"), []);
        // Presence is back too.
        await ann.waitForSelector('#people li[data-user-id="dev-ben"]');
      });

      await t.step("the served client uploads over XHR with progress events", async () => {
        // An admin token until the upload route takes user tokens; the path is the same.
        const token = await signDevToken(server!.app.devSecret!, {
          sub: "dev-uploader",
          username: "uploader",
          role: "admin",
        });
        const size = 1536 * 1024;
        const result = await ann.evaluate(async ({ token, size }) => {
          const path = "/client.js";
          const { ChatClient } = (await import(path)) as typeof ClientModule;
          const chat = new ChatClient({ url: location.origin.replace(/^http/, "ws"), token });
          await chat.connect();
          await chat.join("room:uploads");
          const progress: ClientModule.UploadProgress[] = [];
          const ack = await chat.sendFile(
            "room:uploads",
            new File([new Uint8Array(size)], "upload.bin"),
            { onProgress: (p) => progress.push(p) },
          );
          chat.close();
          return { seq: ack.seq, progress };
        }, { token, size });
        assertEquals(result.seq, 1);
        assert(result.progress.every((p) => p.via === "upload" && p.total === size));
        assertEquals(result.progress[0].loaded, 0);
        assertEquals(result.progress.at(-1)!.loaded, size);
        assert(uploads.some((u) => u.status === 201), JSON.stringify(uploads));
      });

      await t.step("a reload shows the history once, from the server", async () => {
        await ben.reload();
        await ben.waitForSelector('#status[data-state="open"]');
        await waitForBodies(ben, [...before, "Sent while the server was down", "Back again"]);
        await ben.waitForSelector('li.msg img[alt="chart.png"]');
        // The receipts too: Ann read before the reload and has not read since.
        await ben.waitForSelector("li.msg .receipts:text('Seen by Ann')", { timeout: 3000 });
      });

      if (Deno.env.get("UPDATE_SCREENSHOT")) {
        await t.step("screenshot for the README", async () => {
          await ben.fill("#text", "Looks great, thanks!");
          await ben.press("#text", "Enter");
          await ben.waitForSelector(
            "li.msg.mine:has-text('Looks great') .receipts:text('Seen by Ann')",
          );
          await ann.click("#text");
          await ann.keyboard.type("Next: the", { delay: 15 });
          await ben.waitForFunction(
            () => document.getElementById("typing")!.textContent === "Ann is typing…",
          );
          const shots = [
            await ann.screenshot({ type: "png" }),
            await ben.screenshot({ type: "png" }),
          ];
          const sheet = await context!.newPage();
          await sheet.setViewportSize({ width: 1536, height: 620 });
          await sheet.setContent(
            `<body style="margin:0;display:flex;gap:16px;background:#cbd2dc">${
              shots.map((s) =>
                `<img style="display:block" src="data:image/png;base64,${
                  Buffer.from(s).toString("base64")
                }">`
              ).join("")
            }</body>`,
          );
          await sheet.screenshot({
            path: new URL("../docs/screenshot.png", import.meta.url).pathname,
            type: "png",
          });
          await sheet.close();
        });
      }
      assertEquals(pageErrors, []);
    } finally {
      await context?.close().catch(() => {});
      await server?.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    }
  },
});

/** The part of socket.io-client's browser global the next test uses. */
declare const io: (url: string) => {
  emit(event: string, payload: unknown): void;
  on(event: string, listener: (payload: Record<string, unknown>) => void): void;
  disconnect(): void;
};
declare const location: { origin: string };

Deno.test({
  name: named(
    "browser: a page written for the Node Socket.IO server loads /socket.io/socket.io.js and chats",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("sio", async ({ url, open }) => {
      const signIn = await fetch(`${url}dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "Sam", rooms: ["ticket:*"] }),
      });
      const { token } = await signIn.json();
      const page = await open();
      await page.goto(`${url}healthz`);
      // The way such pages load the client: a script tag pointing at the chat server.
      await page.addScriptTag({ url: `${url}socket.io/socket.io.js` });
      const seen = await page.evaluate(
        (token: string) =>
          new Promise<unknown[]>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error("no new_message")), 8000);
            const socket = io(location.origin);
            const events: unknown[] = [];
            socket.on("connect", () => socket.emit("authenticate", { token }));
            socket.on("authenticated", (data) => {
              events.push(["authenticated", (data.user as { name: string }).name]);
              socket.emit("join_ticket", { ticketId: "12" });
            });
            socket.on("joined_ticket", (data) => {
              events.push(["joined_ticket", data.ticketId]);
              socket.emit("send_message", { ticketId: "12", message: "from a script tag" });
            });
            socket.on("new_message", (data) => {
              const message = data.data as { message: string; ticketId: string };
              events.push(["new_message", message.ticketId, message.message]);
              clearTimeout(timer);
              socket.disconnect();
              resolve(events);
            });
          }),
        token,
      );
      assertEquals(seen, [
        ["authenticated", "Sam"],
        ["joined_ticket", "12"],
        ["new_message", "12", "from a script tag"],
      ]);
    });
  },
});

Deno.test({
  name: named(
    "browser: an application's page on its own origin imports ChatClient from the server's /client.js and connects",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("import", async ({ url, open }) => {
      const signIn = await fetch(`${url}dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "Ann" }),
      });
      const { token } = await signIn.json();
      // The application's own page, on another origin (another port): module scripts are
      // fetched in CORS mode there.
      const wsUrl = `${url.replace(/^http/, "ws")}ws`;
      const appServer = Deno.serve(
        { port: 0, hostname: "127.0.0.1", onListen() {} },
        () =>
          new Response(
            `<!doctype html><script type="module">
              import { ChatClient } from "${url}client.js";
              const chat = new ChatClient({ url: "${wsUrl}", token: "${token}" });
              chat.connect().then((u) => { document.title = "ok " + u.username; },
                (e) => { document.title = "error " + e.message; });
            </script>`,
            { headers: { "content-type": "text/html" } },
          ),
      );
      try {
        const page = await open();
        await page.goto(`http://127.0.0.1:${appServer.addr.port}/`);
        await page.waitForFunction(() => document.title !== "");
        assertEquals(await page.title(), "ok ann");
      } finally {
        await appServer.shutdown();
      }
    });
  },
});

Deno.test({
  name: named(
    "browser: a room with history opens with one read cursor, not one per message; a long name stays on screen; signing out clears the draft",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("reads", async ({ url, port, open }) => {
      // 30 messages in the room before the page opens it (under the send limit's burst).
      const minted = await fetch(`${url}dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "Writer", rooms: [ROOM, "room:other"] }),
      });
      const { token } = await minted.json();
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token}`);
      const acks = new Promise<void>((resolve) => {
        let n = 0;
        ws.onmessage = (e) => {
          const frame = JSON.parse(e.data);
          if (frame.type === "welcome") {
            ws.send(JSON.stringify({ type: "join", rooms: [ROOM, "room:other"] }));
          }
          if (frame.type === "joined" && frame.room === ROOM) {
            for (let i = 1; i <= 30; i++) {
              ws.send(JSON.stringify({ type: "send", room: ROOM, body: `m${i}` }));
            }
          }
          if (frame.type === "joined" && frame.room === "room:other") {
            for (let i = 1; i <= 3; i++) {
              ws.send(JSON.stringify({ type: "send", room: "room:other", body: `o${i}` }));
            }
          }
          if (frame.type === "error") console.error("writer:", frame);
          if (frame.type === "ack" && ++n === 33) resolve();
        };
      });
      await within(acks, "the writer's acks");
      ws.close();

      const page = await open({ width: 900, height: 700 });
      let reads = 0;
      page.on("websocket", (socket) => {
        socket.on("framesent", ({ payload }) => {
          if (String(payload).includes('"type":"read"')) reads++;
        });
      });
      await signIn(page, url, "W".repeat(64), `${ROOM}, room:other`);
      await page.waitForSelector(`ol.message-list[data-room="${ROOM}"] li.msg:nth-child(30)`);
      await page.waitForSelector(`ol.message-list[data-room="room:other"] li.msg:nth-child(3)`, {
        state: "attached",
      });
      await new Promise((r) => setTimeout(r, 1000));
      assert(reads >= 1 && reads <= 2, `${reads} read frames for opening a room`);
      // The other room's history is not news: no unread badge, none in the title.
      assertEquals(await page.textContent('#rooms li[data-room="room:other"] .unread'), "");
      assert(!(await page.title()).startsWith("("), await page.title());
      // The 64-character name neither widens the page nor pushes the status off it.
      const layout = await page.evaluate(
        // A string: web/dom.ts types only what the page's own code uses.
        `({ width: Math.max(document.documentElement.scrollWidth,
              document.querySelector(".topbar").scrollWidth),
            status: document.getElementById("signout").getBoundingClientRect().right })`,
      ) as { width: number; status: number };
      assert(layout.width <= 900 && layout.status <= 900, JSON.stringify(layout));

      // On a phone's width the rooms are still there to switch between and to join.
      await page.setViewportSize({ width: 400, height: 700 });
      await page.click('#rooms li[data-room="room:other"]', { timeout: 3000 });
      await page.waitForSelector('#rooms li.current[data-room="room:other"]');
      assert(await page.isVisible("#add-room-input"), "no way to join a room at 400 px");
      await page.setViewportSize({ width: 900, height: 700 });

      // A file picked while another is going goes after it, not past it.
      await page.setInputFiles("#file", {
        name: "big.bin",
        mimeType: "application/octet-stream",
        buffer: Buffer.from(new Uint8Array(3 * 1024 * 1024)),
      });
      await page.setInputFiles("#file", {
        name: "small.txt",
        mimeType: "text/plain",
        buffer: Buffer.from("small"),
      });
      const files = 'ol.message-list[data-room="room:other"] li.msg:not(.pending) a.file';
      await page.waitForFunction((s) => document.querySelectorAll(s).length === 2, files);
      assertEquals(
        await page.$$eval(
          files,
          (links) => links.map((a) => a.querySelector(".file-name")?.textContent),
        ),
        ["big.bin", "small.txt"],
      );
      // Named like an image but not one: shown as the file's link, not a broken picture.
      await page.setInputFiles("#file", {
        name: "fake.png",
        mimeType: "image/png",
        buffer: Buffer.from("not an image"),
      });
      await page.waitForSelector(
        'ol.message-list[data-room="room:other"] a.file .file-name:text("fake.png")',
      );

      // Too large for the server (its welcome says how large): refused at once, nothing sent.
      let uploadRequests = 0;
      page.on("request", (r) => {
        if (r.url().includes("/attachments")) uploadRequests++;
      });
      await page.setInputFiles("#file", {
        name: "huge.bin",
        mimeType: "application/octet-stream",
        buffer: Buffer.from(new Uint8Array(10 * 1024 * 1024 + 1)),
      });
      await page.waitForSelector('#send-error:text("huge.bin")', { timeout: 3000 });
      assert(
        (await page.textContent("#send-error"))!.includes("too large"),
        (await page.textContent("#send-error"))!,
      );
      // A message over the length limit is refused, and the draft stays whole to be cut.
      const long = "y".repeat(20_001);
      await page.fill("#text", long);
      await page.press("#text", "Enter");
      await page.waitForSelector('#send-error:text("20001 characters")', { timeout: 3000 });
      assertEquals((await page.inputValue("#text")).length, 20_001);
      await page.fill("#text", "");
      assertEquals(uploadRequests, 0);

      // Files still queued at sign-out are not sent as the next user.
      await page.click(`#rooms li[data-room="${ROOM}"]`);
      await page.route("**/attachments", async (route) => {
        await new Promise((r) => setTimeout(r, 1500));
        await route.continue();
      });
      await page.setInputFiles("#file", {
        name: "slow.bin",
        mimeType: "application/octet-stream",
        buffer: Buffer.from(new Uint8Array(1024 * 1024)),
      });
      await page.setInputFiles("#file", {
        name: "secret.txt",
        mimeType: "text/plain",
        buffer: Buffer.from("secret"),
      });
      await page.fill("#text", "a draft");
      await page.click("#signout");
      // The same page, not reloaded: what the last user left behind is still in memory.
      await page.fill("#signin-name", "Dan");
      await page.fill("#signin-rooms", ROOM);
      await page.click("#signin-submit");
      await page.waitForSelector('#status[data-state="open"]');
      assertEquals(await page.inputValue("#text"), "");
      assert(await page.isHidden("#upload"), "the last user's upload bar shows");
      await new Promise((r) => setTimeout(r, 2500));
      const sent = await page.$$eval(
        `ol.message-list[data-room="${ROOM}"] li.msg:not(.pending) .file-name`,
        (names) => names.map((n) => n.textContent),
      );
      assert(!sent.includes("secret.txt"), `sent after sign-out: ${JSON.stringify(sent)}`);
    });
  },
});

Deno.test({
  name: named(
    "browser: a room read on another of the user's devices loses its unread badge and title count",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("devices", async ({ url, port, open }) => {
      const client = (name: string) => typedIn(url, port, name, "room:random");
      const ben = await client("Ben");
      let phone: ChatClient | undefined;
      try {
        // Ann's laptop: the page, on room:general, with room:random in its list.
        const laptop = await open();
        const errors: string[] = [];
        laptop.on("pageerror", (err) => errors.push(err.message));
        let joinedRandom = false;
        laptop.on("websocket", (socket) => {
          socket.on("framereceived", ({ payload }) => {
            const frame = typeof payload === "string" ? JSON.parse(payload) : {};
            if (frame.type === "joined" && frame.room === "room:random") joinedRandom = true;
          });
        });
        await signIn(laptop, url, "Ann", "general, room:random");
        // What comes after its join's reply is news; what came before, history.
        await eventually(() => joinedRandom, 5000, "the page's joined for room:random");
        await ben.send("room:random", { body: "one" });
        await ben.send("room:random", { body: "two" });
        const badge = '#rooms li[data-room="room:random"] .unread';
        await laptop.waitForSelector(`${badge}:text("2")`);
        assertEquals(await laptop.title(), "(2) Chat");
        // Ann reads the room on her phone.
        phone = await client("Ann");
        await phone.read("room:random");
        await laptop.waitForSelector(badge, { state: "hidden" });
        assertEquals(await laptop.title(), "Chat");
        assertEquals(errors, []);
      } finally {
        ben.close();
        phone?.close();
      }
    });
  },
});

Deno.test({
  name: named(
    "browser: a page back online after the room was read on another device counts only what came since",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("devices-away", async ({ url, port, open }) => {
      const ben = await typedIn(url, port, "Ben", "room:random");
      let phone: ChatClient | undefined;
      try {
        // Ann's laptop: the page, on room:general, with room:random in its list; its sockets
        // pass through a switch that takes it offline (its lid closed).
        const laptop = await open();
        const errors: string[] = [];
        laptop.on("pageerror", (err) => errors.push(err.message));
        let online = true;
        const live: { page: WebSocketRoute; server: WebSocketRoute }[] = [];
        await laptop.routeWebSocket(/\/ws(\?.*)?$/, (ws) => {
          if (!online) return void ws.close({ code: 1011, reason: "offline" });
          live.push({ page: ws, server: ws.connectToServer() });
        });
        await signIn(laptop, url, "Ann", "general, room:random");
        await eventually(
          () => ben.presence("room:random").some((u) => u.id === "dev-ann"),
          5000,
          "the page in room:random",
        );
        online = false;
        for (const { page, server } of live.splice(0)) {
          await server.close().catch(() => {});
          await page.close({ code: 1011, reason: "offline" }).catch(() => {});
        }
        await laptop.waitForSelector('#status:not([data-state="open"])');
        await ben.send("room:random", { body: "one" });
        await ben.send("room:random", { body: "two" });
        // Ann reads them on her phone while the laptop is away.
        phone = await typedIn(url, port, "Ann", "room:random");
        assertEquals(await phone.read("room:random"), 2);
        online = true;
        await laptop.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
        // Its rejoin replays the two; a third, which nobody read, follows them: the count is
        // that one alone, not the replay's too.
        await ben.send("room:random", { body: "three" });
        const badge = '#rooms li[data-room="room:random"] .unread';
        await laptop.waitForSelector(`${badge}:text("1")`);
        assertEquals(await laptop.title(), "(1) Chat");
        assertEquals(errors, []);
      } finally {
        ben.close();
        phone?.close();
      }
    });
  },
});

Deno.test({
  name: named("browser: a link whose room is cut short mid-character opens the first room"),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("hash", async ({ url, open }) => {
      const page = await open();
      const errors: string[] = [];
      page.on("pageerror", (err) => errors.push(err.message));
      // Half of a three-byte character: decodeURIComponent throws on it.
      await signIn(page, `${url}#room:general%E0%A4`, "Hal", "general");
      assertEquals(await page.textContent("#room-title"), ROOM);
      assertEquals(errors, []);
    });
  },
});

Deno.test({
  name: named(
    "browser: the page under a proxy's path prefix (/chat/) with nginx's 1 MiB body cap loads, signs in, chats and sends files both ways",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    await withChatServer("prefix", async ({ port, open }) => {
      const proxy = reverseProxy(port, { prefix: "/chat", maxBodyBytes: 1024 * 1024 });
      try {
        const page = await open();
        const errors: string[] = [];
        page.on("pageerror", (err) => errors.push(err.message));
        const responses: string[] = [];
        page.on("response", (res) => responses.push(`${res.status()} ${res.url()}`));
        const sockets: string[] = [];
        page.on("websocket", (socket) => sockets.push(socket.url()));

        await signIn(page, `${proxy.url}/`, "Pia", "general");
        await page.fill("#text", "From under /chat/");
        await page.press("#text", "Enter");
        await waitForBodies(page, ["From under /chat/"]);
        // Past the inline threshold: the upload route, under the prefix. Past the proxy's cap: its
        // 413, then inline over the socket, which the cap does not apply to.
        for (const [name, size] of [["medium.bin", 300 * 1024], ["large.bin", 2 * 1024 * 1024]]) {
          await page.setInputFiles("#file", {
            name: name as string,
            mimeType: "application/octet-stream",
            buffer: Buffer.from(new Uint8Array(size as number)),
          });
        }
        await page.waitForSelector("li.msg:not(.pending) a.file:has-text('large.bin')");
        await page.waitForSelector("li.msg:not(.pending) a.file:has-text('medium.bin')");
        assertEquals(await page.textContent("#send-error"), "");
        assertEquals(sockets, [`ws://127.0.0.1:${proxy.port}/chat/ws`]);
        const attachments = `${proxy.url}/api/rooms/room/general/attachments`;
        assertEquals(responses.filter((r) => r.endsWith("/attachments")), [
          `201 ${attachments}`,
          `413 ${attachments}`,
        ]);
        const failed = responses.filter((r) => !r.endsWith("/attachments") && !r.startsWith("2"));
        assertEquals(failed, []);
        assertEquals(errors, []);
      } finally {
        await proxy.close();
      }
    });
  },
});

Deno.test({
  name: named(
    "browser: a user's .js or .css upload is no script or stylesheet the chat page can load, though its CSP trusts the server's own origin",
  ),
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    requireChromium();
    const server = await startTestServer();
    const profile = await Deno.makeTempDir({ prefix: "chat-chromium-upload-" });
    let context: BrowserContext | null = null;
    try {
      const token = await server.token({ sub: "7", rooms: ["ticket:1"] });
      const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
      ws.send({ body: "", file: btoa('document.title = "the upload ran";'), filename: "x.js" });
      const script = (await ws.next()).file as string;
      ws.send({ body: "", file: btoa("body { outline: 7px solid red }"), filename: "x.css" });
      const style = (await ws.next()).file as string;
      await ws.close();
      context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: FLAGS,
      });
      const page = context.pages()[0] ?? await context.newPage();
      await page.goto(`${server.url}/`);
      // What an HTML injection into the page could add: tags naming the uploads.
      // Run as the page's own code (a string: the test's types know no DOM).
      const outcome = await page.evaluate(`(async () => {
        const loaded = (tag, attrs) => new Promise((resolve) => {
          const el = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
          el.onload = () => resolve("loaded");
          el.onerror = () => resolve("refused");
          document.head.append(el);
        });
        return {
          script: await loaded("script", { src: ${JSON.stringify(script)} }),
          style: await loaded("link", { rel: "stylesheet", href: ${JSON.stringify(style)} }),
          title: document.title,
          outline: getComputedStyle(document.body).outlineStyle,
        };
      })()`);
      assertEquals(outcome, {
        script: "refused",
        style: "refused",
        title: "Chat",
        outline: "none",
      });
      // Still the file itself when fetched, as text.
      const fetched = await fetch(script);
      assertEquals(
        [fetched.headers.get("content-type"), await fetched.text()],
        ["text/plain; charset=utf-8", 'document.title = "the upload ran";'],
      );
    } finally {
      await context?.close().catch(() => {});
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      await server.close();
    }
  },
});
