/** The conversation chat (shared/specs/conversation-chat-files.md), the document's client flow. */

import { assert, assertEquals, assertMatch, eventually, within } from "./assert.ts";
import {
  longCjkHistory,
  startTestServer,
  storeMessages,
  TestClient,
  type TestServer,
  throttledLink,
} from "./helpers.ts";

const talker = {
  sub: "5",
  email: "talker@example.com",
  user_type: "talker",
  full_name: "John Talker",
};
const listener = {
  sub: "6",
  email: "listener@example.com",
  user_type: "listener",
  name: "Ann Listener",
};

async function join(
  server: TestServer,
  conversationId: number | string,
  claims: object,
  path = "chat",
) {
  const token = await server.token({ rooms: [`chat:${conversationId}`], ...claims });
  const ws = await TestClient.open(`${server.wsUrl}/ws/${path}/${conversationId}/?token=${token}`);
  assertEquals(await ws.next(), {
    type: "connection_established",
    message: `Connected to conversation ${conversationId}`,
  });
  return ws;
}

Deno.test("conversation chat: text and file messages reach every participant in the documented shape", async () => {
  const server = await startTestServer();
  try {
    const a = await join(server, 1, talker);
    const b = await join(server, 1, listener);
    a.send({ type: "chat_message", message: "Hello, how are you?" });
    for (const ws of [a, b]) {
      const m = await ws.next();
      assertEquals(m, {
        id: 1,
        conversation: 1,
        sender: {
          id: 5,
          email: "talker@example.com",
          user_type: "talker",
          full_name: "John Talker",
        },
        content: "Hello, how are you?",
        message_type: "text",
        is_read: false,
        created_at: m.created_at,
        file_attachment: null,
      });
      assertMatch(m.created_at as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    }
    const pdf = new Uint8Array(102400);
    pdf.set(new TextEncoder().encode("%PDF-1.4\n"));
    b.send({
      type: "file_message",
      filename: "document.pdf",
      file: pdf.toBase64(),
      message: "Here's the document I mentioned",
    });
    const [fa, fb] = [await a.next(), await b.next()];
    assertEquals(fa, fb);
    assertEquals(fa.message_type, "file");
    assertEquals(fa.content, "Here's the document I mentioned");
    assertEquals((fa.sender as Record<string, unknown>).full_name, "Ann Listener");
    const att = fa.file_attachment as Record<string, unknown>;
    const today = new Date().toISOString().slice(0, 10).replaceAll("-", "/");
    assertEquals(att.id, 2);
    // The client's name in the dated folder's subfolder of its own, which nobody can guess.
    assertMatch(
      att.file as string,
      new RegExp(`^/media/chat_files/${today}/[0-9a-f]{32}/document\\.pdf$`),
    );
    assertEquals(att.file_url, `${server.url}${att.file}`);
    assertEquals(att.filename, "document.pdf");
    assertEquals(att.file_size, 102400);
    assertEquals(att.file_size_display, "100.0 KB");
    assertEquals(att.file_type, "application/pdf");
    assertMatch(att.uploaded_at as string, /Z$/);
    const res = await fetch(att.file_url as string);
    assertEquals(new Uint8Array(await res.arrayBuffer()), pdf);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a file the media volume cannot take is refused in words, nothing is stored, and the socket carries on", async () => {
  const media = await Deno.makeTempDir({ prefix: "chat-media-" });
  const server = await startTestServer({ MEDIA_DIR: media });
  try {
    const a = await join(server, 3, talker);
    const file = { type: "file_message", filename: "a.txt", file: btoa("hello") };
    // The volume goes away: a file where the directory was.
    await Deno.rename(media, `${media}-away`);
    await Deno.writeTextFile(media, "not a directory");
    a.send(file);
    assertEquals(await a.next(), {
      type: "error",
      message: "The file could not be stored: the server's storage is unavailable; try again later",
    });
    await Deno.remove(media);
    await Deno.rename(`${media}-away`, media);
    a.send(file);
    const stored = await a.next();
    assertEquals([stored.id, (stored.file_attachment as Record<string, unknown>).filename], [
      1,
      "a.txt",
    ]);
    await a.close();
  } finally {
    await server.close();
    await Deno.remove(media, { recursive: true }).catch(() => {});
    await Deno.remove(`${media}-away`, { recursive: true }).catch(() => {});
  }
});

Deno.test("conversation chat: typing goes to the others only and expires when not renewed", async () => {
  const server = await startTestServer({ TYPING_TIMEOUT_SECONDS: "3" });
  try {
    const a = await join(server, 2, talker);
    const b = await join(server, 2, listener);
    a.send({ type: "typing", is_typing: true });
    assertEquals(await b.next(), {
      type: "typing",
      user_id: 5,
      user_email: "talker@example.com",
      is_typing: true,
    });
    const started = Date.now();
    assertEquals(await b.next(undefined, 6000), {
      type: "typing",
      user_id: 5,
      user_email: "talker@example.com",
      is_typing: false,
    });
    assert(Date.now() - started >= 2700, "expired too early");
    a.send({ type: "typing", is_typing: true });
    await b.next((f) => f.is_typing === true);
    a.send({ type: "typing", is_typing: false });
    await b.next((f) => f.is_typing === false);
    // Falsy as Python reads it: a client that sends 0 or null has stopped typing.
    for (const flag of [0, null, ""]) {
      a.send({ type: "typing", is_typing: true });
      await b.next((f) => f.is_typing === true);
      a.send({ type: "typing", is_typing: flag });
      assertEquals((await b.next()).is_typing, false);
    }
    // Absent, as the consumer we replace reads it, is a start.
    a.send({ type: "typing" });
    assertEquals((await b.next()).is_typing, true);
    a.send({ type: "typing", is_typing: false });
    assertEquals((await b.next()).is_typing, false);
    await a.nothing((f) => f.type === "typing");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a held key (typing ~30/s, past the rate limit) costs no errors, its stop still goes, and the message sent right after is taken", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await join(server, 2, talker);
    const b = await join(server, 2, listener);
    // Two seconds of a held key, then Enter: the stop the client sends, and the message.
    for (let i = 0; i < 60; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 33));
      a.send({ type: "typing", is_typing: true });
    }
    a.send({ type: "typing", is_typing: false });
    a.send({ type: "chat_message", message: "after typing" });
    assertEquals((await b.next((f) => f.content !== undefined)).content, "after typing");
    const told = b.frames.filter((f) => (f as Record<string, unknown>).type === "typing")
      .map((f) => (f as Record<string, unknown>).is_typing);
    // A start about once a second (the others' indicator needs no more), then the stop.
    assert(told.length >= 2 && told.length <= 5, `typing frames passed on: ${told}`);
    assertEquals(told.at(-1), false);
    await a.nothing((f) => f.type === "error");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: typing takes none of the messages' tokens: messages written offline with a pause to think in each, sent behind their typing starts and stops, are all taken", async () => {
  const server = await startTestServer();
  try {
    const a = await join(server, 2, talker);
    // What a client back online sends at once: a start and a stop around each of 10 pauses in
    // each of 5 messages, 100 typing frames in all, past the burst (40), then the messages.
    for (let i = 0; i < 5; i++) {
      for (let p = 0; p < 10; p++) {
        a.send({ type: "typing", is_typing: true });
        a.send({ type: "typing", is_typing: false });
      }
      a.send({ type: "chat_message", message: `m${i}` });
    }
    const got = [];
    for (let i = 0; i < 5; i++) got.push((await a.next((f) => f.content !== undefined)).content);
    assertEquals(got, ["m0", "m1", "m2", "m3", "m4"]);
    await a.nothing((f) => f.type === "error");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a fast typist (a start on keydown, a stop on keyup) whose typing runs past the rate now and then is never closed for flooding", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await join(server, 2, talker);
    // 10 keys a second: a stop each (a start a second is taken, the others are repeats), twice
    // the rate of 5: half are refused, never all.
    const started = performance.now();
    while (performance.now() - started < 6000) {
      a.send({ type: "typing", is_typing: true });
      await new Promise((r) => setTimeout(r, 40));
      a.send({ type: "typing", is_typing: false });
      await new Promise((r) => setTimeout(r, 60));
    }
    a.send({ type: "chat_message", message: "a long paragraph" });
    assertEquals((await a.next((f) => f.content !== undefined)).content, "a long paragraph");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: typing stops without a start taken (a client that says it stopped on every blur or send) take none of the messages' tokens either", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await join(server, 2, talker);
    // Typing's own burst (10) taken, then 8 refused: strikes, but short of the close (past 10).
    for (let i = 0; i < 18; i++) a.send({ type: "typing", is_typing: false });
    // The messages' burst, whole.
    for (let i = 0; i < 10; i++) a.send({ type: "chat_message", message: `m${i}` });
    const got = [];
    for (let i = 0; i < 10; i++) got.push((await a.next((f) => f.content !== undefined)).content);
    assertEquals(got, Array.from({ length: 10 }, (_, i) => `m${i}`));
    await a.nothing((f) => f.type === "error");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a flood of typing alone, past typing's own limit, is closed with 4029", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const a = await join(server, 2, talker);
    for (let i = 0; i < 60; i++) a.send({ type: "typing", is_typing: false });
    assertEquals((await within(a.closed, "the close")).code, 4029);
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a typing stop after a start that was taken still goes when the socket's messages have used up its rate, so the others do not see the user typing until the timeout", async () => {
  const server = await startTestServer({
    RATE_LIMIT_PER_SECOND: "5",
    TYPING_TIMEOUT_SECONDS: "30",
  });
  try {
    const a = await join(server, 2, talker);
    const b = await join(server, 2, listener);
    a.send({ type: "typing", is_typing: true });
    assertEquals((await b.next((f) => f.type === "typing")).is_typing, true);
    // Enter pressed a dozen times at once: the burst (10) is used up, a few are refused.
    for (let i = 0; i < 12; i++) a.send({ type: "chat_message", message: `m${i}` });
    a.send({ type: "typing", is_typing: false });
    await a.next((f) => f.type === "error");
    const stop = await b.next((f) => f.type === "typing", 2000);
    assertEquals([stop.user_id, stop.is_typing], [5, false]);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: get_history answers at most 200 messages, the newest, whatever limit is asked (README: at most 200)", async () => {
  const server = await startTestServer();
  try {
    await storeMessages(server, "chat:4", 201);
    const a = await join(server, 4, talker);
    for (const limit of [200, 201, 1000]) {
      a.send({ type: "get_history", limit });
      const page = await a.next((f) => f.type === "history");
      const messages = page.messages as Record<string, unknown>[];
      assertEquals(
        [messages.length, messages[0].content, messages.at(-1)!.content, page.has_more],
        [200, "m2", "m201", true],
        `limit ${limit}`,
      );
    }
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: get_history right behind the socket's own messages includes them", async () => {
  // Commits start 300 ms apart, so the messages are still committing when the history is asked.
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const a = await join(server, 7, talker);
    for (const message of ["one", "two", "three"]) a.send({ type: "chat_message", message });
    a.send({ type: "get_history" });
    const history = await a.next((f) => f.type === "history");
    const messages = history.messages as Record<string, unknown>[];
    assertEquals(messages.map((m) => m.content), ["one", "two", "three"]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a fractional get_history limit is floored, not an internal error", async () => {
  const server = await startTestServer();
  try {
    for (let i = 1; i <= 5; i++) {
      await server.app.context.chat.send(null, "chat:8", { body: `m${i}` });
    }
    const a = await join(server, 8, talker);
    a.send({ type: "get_history", limit: 2.5 });
    const history = await a.next();
    assertEquals(history.type, "history");
    assertEquals((history.messages as Record<string, unknown>[]).map((m) => m.content), [
      "m4",
      "m5",
    ]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: get_history reads a before of digits as limit is read, and refuses one it cannot read rather than answer the newest page again", async () => {
  const server = await startTestServer();
  try {
    for (let i = 1; i <= 5; i++) {
      await server.app.context.chat.send(null, "chat:9", { body: `m${i}` });
    }
    const a = await join(server, 9, talker);
    const page = async (frame: Record<string, unknown>) => {
      a.send({ type: "get_history", ...frame });
      const answer = await a.next((f) => f.type === "history" || f.type === "error");
      return answer.type === "error"
        ? answer.message
        : [(answer.messages as Record<string, unknown>[]).map((m) => m.id), answer.has_more];
    };
    // An id that went through a data- attribute or a URL is text.
    assertEquals(await page({ before: "4", limit: "2" }), [[2, 3], true]);
    assertEquals(await page({ before: 2, limit: 2 }), [[1], false]);
    assertEquals(await page({ before: null, limit: 2 }), [[4, 5], true]);
    for (const before of ["x", "4.5", -1, true, {}]) {
      assertEquals(await page({ before }), 'Field "before" must be a message id');
    }
    // Still open.
    assertEquals(await page({ limit: 1 }), [[5], true]);
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: get_history of long CJK messages answers the newest that fit in about 1 MiB with has_more, so a steady reader on a modest link is not closed as slow while the conversation is live; paging by the oldest id reads every message once", async () => {
  const server = await startTestServer();
  const link = throttledLink(server.port, 2_000_000);
  try {
    await longCjkHistory(server, "chat:9", 200);
    const token = await server.token({ rooms: ["chat:9"], ...listener });
    const reader = await TestClient.open(`ws://127.0.0.1:${link.port}/ws/chat/9/?token=${token}`);
    assertEquals((await reader.next()).type, "connection_established");
    const writer = await join(server, 9, talker);
    const bytes = (frame: unknown) => new TextEncoder().encode(JSON.stringify(frame)).length;
    type Page = { messages: { id: number; content: string }[]; has_more: boolean };

    // 200 of them were one 12 MB frame, three times SLOW_CONSUMER_BYTES: read at 2 MB/s, it was
    // still mostly unsent when the live messages made the server look.
    reader.send({ type: "get_history", limit: 200 });
    // Read before the live messages come (checked below: the newest it holds is the 200th).
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 1; i <= 40; i++) {
      writer.send({ type: "chat_message", message: `live ${i} ${"x".repeat(4000)}` });
      await new Promise((r) => setTimeout(r, 100));
    }
    const page = await reader.next<Page>((f) => "messages" in f, 20_000);
    const live = reader.next((f) => String(f.content).startsWith("live 40 "), 20_000);
    assertEquals(await Promise.race([live.then(() => "open", String), reader.closed]), "open");
    const ids = page.messages.map((m) => m.id);
    assert(ids.length > 1 && ids.length < 200, `${ids.length} messages`);
    assert(bytes(page) <= 1024 * 1024 + 1024, `a page of ${bytes(page)} bytes`);
    assertEquals(page.has_more, true);
    assertEquals(ids, Array.from({ length: ids.length }, (_, i) => 201 - ids.length + i));

    let back: number[] = [];
    for (let before: number | undefined, more = true; more;) {
      writer.send({ type: "get_history", before, limit: 200 });
      const p = await writer.next<Page>((f) => (f as Record<string, unknown>).type === "history");
      assert(bytes(p) <= 1024 * 1024 + 1024, `a page of ${bytes(p)} bytes`);
      back = p.messages.map((m) => m.id).concat(back);
      [before, more] = [p.messages[0]?.id, p.has_more];
    }
    assertEquals(back, Array.from({ length: 240 }, (_, i) => i + 1));
    await reader.close();
    await writer.close();
  } finally {
    await link.close();
    await server.close();
  }
});

Deno.test("conversation chat: a get_history page whose messages come to 1 MiB is cut so that the whole frame, wrapper and commas too, is no larger than 1 MiB, python websockets' default max_size (a larger one it closes with 1009)", async () => {
  const server = await startTestServer();
  try {
    const MIB = 1024 * 1024;
    const utf8 = (s: string) => new TextEncoder().encode(s).length;
    await storeMessages(server, "chat:77", 1, () => "probe");
    const probe = await join(server, 77, talker);
    probe.send({ type: "get_history", limit: 1 });
    const one = await probe.next<{ type: string; messages: unknown[] }>((f) =>
      f.type === "history"
    );
    await probe.close();
    // A message's rendering besides its body, for a one-digit id; ids go 1, 2, 3, ...
    const overhead = utf8(JSON.stringify(one.messages[0])) - "probe".length;
    // Bodies whose renderings, the probe's with them, come to exactly 1 MiB.
    const bodies: string[] = [];
    for (let total = overhead + "probe".length, id = 2; total < MIB; id++) {
      const itemOverhead = overhead + String(id).length - 1;
      const body = Math.min(19_000, MIB - total - itemOverhead);
      bodies.push("y".repeat(body));
      total += itemOverhead + body;
    }
    await storeMessages(server, "chat:77", bodies.length, (i) => bodies[i - 1]);
    const client = await join(server, 77, talker);
    const raw = new Promise<string>((resolve) =>
      client.socket.addEventListener("message", (e) => {
        if (typeof e.data === "string" && e.data.startsWith('{"type":"history"')) resolve(e.data);
      })
    );
    client.send({ type: "get_history", limit: 200 });
    const frame = await within(raw, "the history frame", 10_000);
    await client.close();
    const page = JSON.parse(frame) as { messages: { id: number }[]; has_more: boolean };
    assert(utf8(frame) <= MIB, `a frame of ${utf8(frame)} bytes`);
    // The newest that fit: only the oldest is left out, and said to be.
    assertEquals(page.messages.map((m) => m.id), bodies.map((_, i) => i + 2));
    assertEquals(page.has_more, true);
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: mark_read sends a receipt and is persisted across a reconnect", async () => {
  const server = await startTestServer();
  try {
    const a = await join(server, 3, talker);
    let b = await join(server, 3, listener);
    a.send({ type: "chat_message", message: "one" });
    a.send({ type: "chat_message", message: "two" });
    await b.next();
    await b.next();
    b.send({ type: "mark_read" });
    assertEquals(await a.next((f) => f.type === "read_receipt"), {
      type: "read_receipt",
      user_id: 6,
    });
    await b.nothing((f) => f.type === "read_receipt");
    a.send({ type: "chat_message", message: "three" });
    await b.next();
    await b.close();

    b = await join(server, 3, listener);
    b.send({ type: "get_history" });
    const history = await b.next((f) => f.type === "history");
    const messages = history.messages as Record<string, unknown>[];
    assertEquals(messages.map((m) => [m.content, m.is_read]), [["one", true], ["two", true], [
      "three",
      false,
    ]]);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: frames sent right before the client closes are all handled, behind ones that wait", async () => {
  // Commits 300 ms apart: the typing and mark_read frames wait for the first reply's commit, and
  // the close arrives while they do.
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "300",
  });
  try {
    const a = await join(server, 4, talker);
    const b = await join(server, 4, listener);
    a.send({ type: "chat_message", message: "one" });
    await b.next((f) => f.content === "one");
    b.send({ type: "chat_message", message: "reply 1" });
    b.send({ type: "typing", is_typing: true });
    b.send({ type: "mark_read" });
    b.send({ type: "chat_message", message: "reply 2" });
    b.socket.close(1000);
    await b.closed;
    await a.next((f) => f.content === "reply 2");
    await eventually(
      async () => {
        a.send({ type: "get_history" });
        const history = await a.next((f) => f.type === "history");
        const messages = history.messages as Record<string, unknown>[];
        return JSON.stringify(messages.map((m) => [m.content, m.is_read])) ===
          JSON.stringify([["one", true], ["reply 1", false], ["reply 2", false]]);
      },
      5000,
      "both replies stored and 'one' read",
    );
    // The typing frame after the close started nothing: no indicator reached the talker.
    await a.nothing((f) => f.type === "typing");
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a message with several files (from another protocol) has the first as its attachment and the others as links after its content", async () => {
  const server = await startTestServer();
  try {
    const a = await join(server, 8, talker);
    const native = await TestClient.open(
      `${server.wsUrl}/ws?token=${await server.token({ sub: "7", rooms: ["chat:8"] })}`,
    );
    await native.next((f) => f.type === "welcome");
    native.send({ type: "join", room: "chat:8" });
    await native.next((f) => f.type === "joined");
    const file = (n: number) => ({ name: `f${n}.txt`, data: new Uint8Array([n, n]).toBase64() });
    native.send({ type: "send", room: "chat:8", body: "three files", files: [1, 2, 3].map(file) });
    const m = await a.next((f) => f.message_type === "file");
    const lines = (m.content as string).split("\n");
    assertEquals(lines.length, 3);
    assertEquals(lines[0], "three files");
    const first = (m.file_attachment as Record<string, unknown>).file_url as string;
    for (const [i, url] of [first, lines[1], lines[2]].entries()) {
      const res = await fetch(url);
      assertEquals([...new Uint8Array(await res.arrayBuffer())], [i + 1, i + 1]);
    }
    await native.close();
    await a.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a deleted file's URL never serves another file, though conversations share a folder", async () => {
  // One message kept per conversation: the next message drops the file's, and the file.
  const server = await startTestServer({ HISTORY_LIMIT: "1" });
  try {
    const file = (text: string) => ({
      type: "file_message",
      filename: "contract.pdf",
      file: new TextEncoder().encode(text).toBase64(),
    });
    const a = await join(server, 21, talker);
    a.send(file("alice's contract"));
    const first = (await a.next()).file_attachment as Record<string, unknown>;
    a.send({ type: "chat_message", message: "pushes it out" });
    await a.next();
    await eventually(
      async () =>
        (await fetch(first.file_url as string).then(async (r) => {
          await r.body?.cancel();
          return r.status;
        })) === 404,
      5000,
      "the dropped file to go",
    );
    const b = await join(server, 22, listener);
    b.send(file("mallory's contract"));
    const second = (await b.next()).file_attachment as Record<string, unknown>;
    assert(second.file_url !== first.file_url, `${second.file_url} was given again`);
    assertEquals(second.filename, "contract.pdf");
    assertEquals(await (await fetch(second.file_url as string)).text(), "mallory's contract");
    const old = await fetch(first.file_url as string);
    assertEquals([old.status, await old.text()], [404, "Not found"]);
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a common file name, taken in the shared dated folder by every number, is stored under that name in a folder of its own that nobody can guess", async () => {
  const server = await startTestServer();
  try {
    // What a user uploading "image.png" over and over in their own conversation leaves behind.
    const today = new Date().toISOString().slice(0, 10).replaceAll("-", "/");
    const folder = `${server.dataDir}/media/chat_files/${today}`;
    await Deno.mkdir(folder, { recursive: true });
    for (let n = 0; n < 100; n++) {
      await Deno.writeTextFile(`${folder}/${n === 0 ? "image.png" : `image_${n}.png`}`, "taken");
    }
    const ws = await join(server, 23, talker);
    ws.send({
      type: "file_message",
      filename: "image.png",
      file: new TextEncoder().encode("mine").toBase64(),
    });
    const att = (await ws.next()).file_attachment as Record<string, unknown>;
    assertMatch(
      att.file as string,
      new RegExp(`^/media/chat_files/${today}/[0-9a-f]{32}/image\\.png$`),
    );
    assertEquals(att.filename, "image.png");
    assertEquals(await (await fetch(att.file_url as string)).text(), "mine");
    // The name guessed in the shared folder is somebody else's file, not this one.
    assertEquals(
      await (await fetch(`${server.url}/media/chat_files/${today}/image.png`)).text(),
      "taken",
    );
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: errors keep the socket open; bad token 4001, not a participant 4404; a frame over the cap is told why, then closed 1009", async () => {
  const server = await startTestServer({ MAX_FILE_BYTES: "1000" });
  try {
    const a = await join(server, 4, talker);
    const cases: [unknown, string | RegExp][] = [
      ["not json", "Invalid JSON"],
      [{ type: "file_message", filename: "a.txt" }, "File data and filename are required"],
      [{ type: "file_message", file: "QUJD" }, "File data and filename are required"],
      // A name with nothing left once made safe is no name either, in the document's words.
      [
        { type: "file_message", file: "QUJD", filename: "/" },
        "File data and filename are required",
      ],
      [{ type: "file_message", file: "QUJD", filename: "x".repeat(256) }, /Filename is too long/],
      [
        { type: "file_message", file: new Uint8Array(1001).toBase64(), filename: "big.bin" },
        /too large/,
      ],
      [{ type: "dance" }, "Unknown message type: dance"],
      [{ message: "no type" }, "Message type is required"],
      [{ type: "chat_message", message: "" }, "Message content is required"],
    ];
    for (const [frame, expected] of cases) {
      a.send(frame);
      const reply = await a.next();
      assertEquals(reply.type, "error");
      if (typeof expected === "string") assertEquals(reply.message, expected);
      else assertMatch(reply.message as string, expected);
    }
    a.send({ type: "chat_message", message: "still open" });
    assertEquals((await a.next()).content, "still open");
    await a.close();

    // Past the frame cap (a file's base64, line breaks allowed, plus 64 KiB) the socket closes, but says why first.
    const big = await join(server, 4, talker);
    const frame = JSON.stringify({
      type: "file_message",
      file: new Uint8Array(100_000).toBase64(),
      filename: "huge.bin",
    });
    big.send(frame);
    assertEquals(await big.closed, { code: 1009, reason: "Message too big" });
    assertEquals(big.frames, [{
      type: "error",
      message: `Message is too large: ${frame.length} characters, the limit is 66944`,
    }]);

    const bad = TestClient.connect(`${server.wsUrl}/ws/chat/4/?token=nope`);
    assertEquals((await bad.closed).code, 4001);
    const outsider = await server.token({ sub: "9", rooms: ["chat:5"] });
    const denied = TestClient.connect(`${server.wsUrl}/ws/chat/4/?token=${outsider}`);
    assertEquals((await denied.closed).code, 4404);
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: the unambiguous /ws/conversations/ path speaks the same protocol", async () => {
  const server = await startTestServer();
  try {
    const a = await join(server, 8, talker, "conversations");
    const b = await join(server, 8, listener, "chat");
    a.send({ type: "chat_message", message: "same room" });
    assertEquals((await b.next()).content, "same room");
    await a.close();
    await b.close();
  } finally {
    await server.close();
  }
});

Deno.test("conversation chat: a typing tab that closes stops its typing at once, not at the timeout", async () => {
  const server = await startTestServer({ TYPING_TIMEOUT_SECONDS: "30" });
  try {
    const open = async (sub: string) => {
      const token = await server.token({ sub, rooms: ["chat:2"] });
      const ws = await TestClient.open(`${server.wsUrl}/ws/chat/2/?token=${token}`);
      assertEquals((await ws.next()).type, "connection_established");
      return ws;
    };
    const a = await open("5");
    const b = await open("6");
    a.send({ type: "typing", is_typing: true });
    assertEquals((await b.next()).is_typing, true);
    await a.close();
    assertEquals((await b.next((f) => f.type === "typing", 3000)).is_typing, false);
    await b.close();
  } finally {
    await server.close();
  }
});
