/**
 * A shutdown's 1001 reaches a client that keeps sending until it reads it as a clean close, not
 * a connection the exit reset (code 0 in Deno's client, 1006 in browsers).
 */

import { assert, assertEquals, delay } from "./assert.ts";
import {
  rawUpgrade,
  sendRawFrame,
  sendRawText,
  serverFrames,
  silentPeer,
  TEST_SECRET,
} from "./helpers.ts";
import { withDataDir } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

/** A native client that pings every few ms, as a busy client sends, until its socket is closed. */
async function chatty(wsUrl: string, sub: string) {
  const token = await signDevToken(TEST_SECRET, { sub, username: sub }, "1h");
  const ws = new WebSocket(`${wsUrl}/ws?token=${token}`);
  const closed = new Promise<number>((resolve) => ws.onclose = (e) => resolve(e.code));
  await new Promise<void>((resolve, reject) => {
    ws.onerror = () => reject(new Error("the socket failed before its welcome"));
    ws.onmessage = (e) => {
      if (JSON.parse(e.data).type === "welcome") resolve();
    };
  });
  ws.onerror = null;
  const sending = (async () => {
    for (let n = 0; ws.readyState === WebSocket.OPEN; n++) {
      ws.send(JSON.stringify({ type: "ping", ref: n }));
      await delay(2);
    }
  })();
  return { closed: closed.finally(() => sending) };
}

/**
 * A native client `latencyMs` away: it keeps pinging every 5 ms, sees the server's frames that
 * much after they came, and then answers the close. What it saw: the close code, and how the
 * connection ended once it answered ("eof", or the error that reset it).
 */
async function distant(port: number, sub: string, latencyMs: number) {
  const token = await signDevToken(TEST_SECRET, { sub, username: sub }, "1h");
  const { conn, rest } = await rawUpgrade(port, `/ws?token=${token}`);
  let closeCode: number | undefined;
  const sending = (async () => {
    for (let n = 0; closeCode === undefined; n++) {
      await sendRawText(conn, `{"type":"ping","ref":${n}}`);
      await delay(5);
    }
  })().catch(() => {});
  const outcome = (async () => {
    try {
      for await (const frame of serverFrames(conn, rest)) {
        if (frame.opcode !== 8) continue;
        // Seen only now, from so far away: the pings sent meanwhile are on their way.
        await delay(latencyMs);
        closeCode = (frame.payload[0] << 8) | frame.payload[1];
        await sending;
        await sendRawFrame(conn, 8, frame.payload.slice(0, 2));
        break;
      }
      if (closeCode === undefined) return { code: closeCode, end: "eof before the close" };
      const buf = new Uint8Array(64 * 1024);
      while (await conn.read(buf) !== null);
      return { code: closeCode, end: "eof" };
    } catch (err) {
      return { code: closeCode, end: String(err) };
    } finally {
      conn.close();
    }
  })();
  return { outcome };
}

Deno.test("shutdown: clients still sending as a SIGTERM closes them with 1001 get a clean close, one 100 ms away too", async () => {
  // Deno's server shutdown, which came right after the close frames, ended the sockets still
  // waiting for their peers' answers at once, with the frames the clients had sent before they
  // read the close unread: that reset the connections, and the clients' answers to the close
  // failed (Broken pipe; Deno's client: code 0).
  await withDataDir(async ({ env, spawn }) => {
    const proc = spawn(env);
    const url = await proc.url();
    const wsUrl = url.replace(/^http/, "ws");
    const port = Number(new URL(url).port);
    const near = await Promise.all(Array.from({ length: 5 }, (_, i) => chatty(wsUrl, `near${i}`)));
    const far = await distant(port, "far", 100);
    await delay(200);
    assertEquals((await proc.kill("SIGTERM")).code, 0);
    assertEquals(await far.outcome, { code: 1001, end: "eof" });
    assertEquals(await Promise.all(near.map((c) => c.closed)), near.map(() => 1001));
  }, { prefix: "shutdown-close-", stop: "SIGKILL" });
});

Deno.test("shutdown: a peer that never answers the close holds a SIGTERM's stop half a second at most", async () => {
  await withDataDir(async ({ env, spawn }) => {
    const proc = spawn(env);
    let conn: Deno.TcpConn | undefined;
    try {
      const url = await proc.url();
      const token = await signDevToken(TEST_SECRET, { sub: "mute", username: "mute" }, "1h");
      conn = await silentPeer(Number(new URL(url).port), `/ws?token=${token}`);
      const started = performance.now();
      assertEquals((await proc.kill("SIGTERM")).code, 0);
      const took = performance.now() - started;
      assert(took < 2000, `the stop took ${Math.round(took)} ms`);
    } finally {
      conn?.close();
    }
  }, { prefix: "shutdown-silent-", stop: "SIGKILL" });
});
