/**
 * Long-polling clients 80 ms away (40 ms each way) in a namespace that gets 300 small events a
 * second (a busy room), and a stop with a backlog queued. socket.io-client (a browser that cannot
 * upgrade) takes everything queued with each GET; python-engineio, which refuses an answer of more
 * than 16 packets, falls behind but is not ended by ping timeout for it.
 */

import { io as connect } from "socket.io-client";
import { assert, assertEquals, delay } from "./assert.ts";
import { eventually, startTestServer, tcpProxy, type TestServer } from "./helpers.ts";

/** A TCP proxy that delays every chunk by `ms` in each direction, keeping order. */
function latencyLink(port: number, ms: number) {
  return tcpProxy(port, async (from, to) => {
    const queue: { at: number; data: Uint8Array }[] = [];
    let wake = null as (() => void) | null;
    let done = false;
    const writer = (async () => {
      for (;;) {
        const item = queue.shift();
        if (!item) {
          if (done) break;
          await new Promise<void>((r) => wake = r);
          continue;
        }
        const wait = item.at - performance.now();
        if (wait > 0) await delay(wait);
        try {
          for (let off = 0; off < item.data.length;) off += await to.write(item.data.subarray(off));
        } catch {
          break;
        }
      }
    })();
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        queue.push({ at: performance.now() + ms, data: buf.slice(0, n) });
        wake?.();
        wake = null;
      }
    } catch {
      // Closed under the read.
    }
    done = true;
    wake?.();
    await writer;
    await to.closeWrite().catch(() => {});
  });
}

/**
 * Emits "tick" 0..total-1 to everyone at 300 a second by the clock, so late timers on a loaded
 * machine send more at once rather than fewer in all; stops early when `stop` says so.
 */
async function tickAt300(
  server: TestServer,
  total: number,
  stop: () => boolean,
  sent: (i: number) => void = () => {},
): Promise<void> {
  const start = performance.now();
  for (let i = 0; i < total && !stop();) {
    const due = Math.min(total, Math.floor(0.3 * (performance.now() - start)) + 1);
    for (; i < due; i++) {
      sent(i);
      server.app.io.emit("tick", i);
    }
    await delay(10);
  }
}

Deno.test("polling: socket.io-client 80 ms away keeps up with 300 events a second, and is not ended", async () => {
  // Pings with room to spare on a loaded machine: a client held to 16 packets a round trip
  // (200 a second at most) is 2 s behind by the burst's end, past the lag bound below.
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "3000",
    SOCKETIO_PING_TIMEOUT_MS: "3000",
  });
  const link = latencyLink(server.port, 40);
  const socket = connect(`http://127.0.0.1:${link.port}`, {
    forceNew: true,
    transports: ["polling"],
    reconnection: false,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("connect_error", reject);
    });
    const sentAt: number[] = [];
    const lags: number[] = [];
    let received = 0;
    let disconnected: string | undefined;
    socket.on("tick", (i: number) => {
      assertEquals(i, received);
      received++;
      lags.push(performance.now() - sentAt[i]);
    });
    socket.on("disconnect", (reason: string) => disconnected ??= reason);
    // 300 a second for 4 s.
    const total = 1200;
    await tickAt300(server, total, () => disconnected !== undefined, (i) => {
      sentAt[i] = performance.now();
    });
    const until = performance.now() + 3000;
    while (received < total && !disconnected && performance.now() < until) await delay(50);
    const worst = Math.max(...lags);
    console.log(
      `received ${received} of ${total}, worst lag ${Math.round(worst)} ms, ` +
        `disconnect: ${disconnected ?? "none"}`,
    );
    assertEquals(disconnected, undefined, "the server ended the session");
    assertEquals(received, total);
    assert(worst < 1500, `an event reached the client ${Math.round(worst)} ms after it was sent`);
  } finally {
    socket.disconnect();
    await link.close().catch(() => {});
    await server.close();
  }
});

Deno.test("polling: a server stopping lets socket.io-client 80 ms away fetch the 200 events it was sent just before", async () => {
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "20000",
    SOCKETIO_PING_TIMEOUT_MS: "20000",
  });
  const link = latencyLink(server.port, 40);
  const socket = connect(`http://127.0.0.1:${link.port}`, {
    forceNew: true,
    transports: ["polling"],
    reconnection: false,
  });
  let closed = false;
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("connect_error", reject);
    });
    let received = 0;
    socket.on("tick", () => received++);
    const total = 200;
    for (let i = 0; i < total; i++) server.app.io.emit("tick", i);
    const started = performance.now();
    await server.close();
    closed = true;
    // Answers already on their way through the link; the assertion below names a shortfall.
    await eventually(() => received === total, 5000, `${total} events (${received} so far)`)
      .catch(() => {});
    console.log(
      `received ${received} of ${total}; the stop took ${
        Math.round(performance.now() - started)
      } ms`,
    );
    assertEquals(received, total);
  } finally {
    socket.disconnect();
    await link.close().catch(() => {});
    if (!closed) await server.close();
  }
});

Deno.test("polling: a client that says it is python-engineio, 80 ms away in a room of 300 events a second, gets at most 16 a round trip and falls behind, but its pings go first and it is not ended", async () => {
  const server = await startTestServer({
    SOCKETIO_PING_INTERVAL_MS: "1000",
    SOCKETIO_PING_TIMEOUT_MS: "1000",
  });
  const link = latencyLink(server.port, 40);
  // socket.io-client reads answers of any size: it stands in for python-engineio's read loop,
  // one GET after another, by its User-Agent.
  const socket = connect(`http://127.0.0.1:${link.port}`, {
    forceNew: true,
    transports: ["polling"],
    reconnection: false,
    extraHeaders: { "user-agent": "python-requests/2.28.1" },
  });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => resolve());
      socket.once("connect_error", reject);
    });
    let received = 0;
    let disconnected: string | undefined;
    socket.on("tick", (i: number) => {
      assertEquals(i, received);
      received++;
    });
    socket.on("disconnect", (reason: string) => disconnected ??= reason);
    // 300 a second for 4 s; the pings come every second.
    const total = 1200;
    await tickAt300(server, total, () => disconnected !== undefined);
    const behind = total - received;
    const until = performance.now() + 10_000;
    while (received < total && !disconnected && performance.now() < until) await delay(50);
    console.log(`${behind} behind when the burst ended; received ${received} of ${total}`);
    assert(behind > 100, `only ${behind} behind: answers of more than 16 packets?`);
    assertEquals(disconnected, undefined, "the server ended the session");
    assertEquals(received, total);
  } finally {
    socket.disconnect();
    await link.close().catch(() => {});
    await server.close();
  }
});
