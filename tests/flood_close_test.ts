/**
 * Flooding clients (bots stuck in a loop) get their replies, `rate_limited` errors and a 4029
 * close, not a dropped connection: a client that sees 1006 reconnects at once and floods again.
 */

import { assert, assertEquals } from "./assert.ts";
import { rawUpgrade, sendRawText, serverFrames, startTestServer, TEST_SECRET } from "./helpers.ts";
import { withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { lingeringCloseApplies } from "../src/transport/close_when_quiet.ts";

Deno.test("flood: the close that reads on until the peer answers applies to this Deno", () => {
  // Else closes wait for a quiet peer, and a flood that never pauses is dropped (see the README).
  assert(lingeringCloseApplies);
});

/** A native client that joins `room` and then floods it until the server closes it. */
async function bot(wsUrl: string, token: string, room: string) {
  const ws = new WebSocket(`${wsUrl}/ws?token=${token}`);
  const errors: string[] = [];
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason })
  );
  await new Promise<void>((resolve, reject) => {
    ws.onerror = () => reject(new Error("the bot's socket failed before it joined"));
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "welcome") ws.send(JSON.stringify({ type: "join", room, ref: 0 }));
      if (frame.type === "joined") resolve();
      if (frame.type === "error") errors.push(frame.code);
    };
  });
  ws.onerror = null;
  return { ws, errors, closed };
}

Deno.test("flood: bots flooding a room they share all get rate_limited and a 4029 close, not a dropped connection", async () => {
  // Its own process, as production runs it: the drop showed only with the server's loop to itself.
  await withDataDir(async ({ env, spawn }) => {
    const proc = spawn(env);
    const wsUrl = (await proc.url()).replace(/^http/, "ws");
    const room = "room:bots";
    const bots = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const token = await signDevToken(TEST_SECRET, { sub: `bot${i}`, username: `bot${i}` }, "1h");
      return await bot(wsUrl, token, room);
    }));
    // Each sends ten messages every 5 ms until its socket is closed under it, so every
    // socket also has the others' messages to take while it is being closed.
    const deadline = Date.now() + 8_000;
    await Promise.all(bots.map(async ({ ws }, b) => {
      for (let n = 0; ws.readyState === WebSocket.OPEN && Date.now() < deadline;) {
        for (let k = 0; k < 10; k++, n++) {
          ws.send(
            JSON.stringify({ type: "send", room, body: `loop ${n}`, client_id: `${b}-${n}` }),
          );
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    }));
    const closes = await Promise.all(bots.map((b) => b.closed));
    assertEquals(closes.map((c) => c.code), bots.map(() => 4029));
    assertEquals(
      bots.map((b) => b.errors.includes("rate_limited")),
      bots.map(() => true),
      "every bot is told why before the close",
    );
  }, { prefix: "flood-close-" });
});

/** The text frames and the close code among the frames a server sent. */
function parseFrames(
  frames: { opcode: number; payload: Uint8Array }[],
): { texts: string[]; closeCode?: number } {
  const texts: string[] = [];
  let closeCode: number | undefined;
  for (const { opcode, payload } of frames) {
    if (opcode === 1) texts.push(new TextDecoder().decode(payload));
    if (opcode === 8 && payload.length >= 2) closeCode = (payload[0] << 8) | payload[1];
  }
  return { texts, closeCode };
}

Deno.test("flood: a flooder that never stops nor answers the close gets rate_limited and 4029, then is cut off", async () => {
  const server = await startTestServer({ RATE_LIMIT_PER_SECOND: "5" });
  try {
    const token = await server.token({ sub: "1", username: "one" });
    const { conn, rest } = await rawUpgrade(server.port, `/ws?token=${token}`);
    const received: { opcode: number; payload: Uint8Array }[] = [];
    const reading = (async () => {
      try {
        for await (const frame of serverFrames(conn, rest)) received.push(frame);
      } catch {
        // Reset: what came before it is what counts.
      }
    })();
    // Sends on whatever comes back, until the server ends the connection (or 15 s pass).
    const deadline = Date.now() + 15_000;
    let ended = false;
    while (Date.now() < deadline) {
      try {
        for (let i = 0; i < 20; i++) await sendRawText(conn, '{"type":"ping"}');
      } catch {
        ended = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    assert(ended, "the server kept the connection of a peer that never answered its close");
    conn.close();
    await reading;
    const { texts, closeCode } = parseFrames(received);
    assert(
      texts.some((t) => JSON.parse(t).code === "rate_limited"),
      "no rate_limited error came before the close",
    );
    assertEquals(closeCode, 4029);
  } finally {
    await server.close();
  }
});
