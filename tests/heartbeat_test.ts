/** Deno's WebSocket heartbeat must not close a client that answers its pings (deno_heartbeat.ts). */

import { assert, assertEquals } from "./assert.ts";
import { rawUpgrade, serverFrames, startTestServer, TestClient } from "./helpers.ts";
import { heartbeatFixApplies } from "../src/transport/deno_heartbeat.ts";

const MiB = 1024 * 1024;

/**
 * A raw WebSocket client that reads only when told to, counts the data it reads, answers pings
 * (all of them, or all but the first) and reports a close frame.
 */
class RawClient {
  readonly events: string[] = [];
  dataBytes = 0;
  /** Data bytes read before the first ping. */
  bytesBeforePing = -1;
  closeCode?: number;
  #conn: Deno.TcpConn;
  /** What came with the handshake. */
  #rest: Uint8Array;
  #started = performance.now();

  private constructor(conn: Deno.TcpConn, leftover: Uint8Array) {
    this.#conn = conn;
    this.#rest = leftover;
  }

  static async open(port: number, path: string): Promise<RawClient> {
    const { conn, rest } = await rawUpgrade(port, path);
    return new RawClient(conn, rest);
  }

  /** Sends a masked control or text frame with a short payload. */
  async send(opcode: number, payload = new Uint8Array()): Promise<void> {
    const frame = new Uint8Array(6 + payload.length);
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | payload.length; // masked, with the all-zero mask key
    frame.set(payload, 6);
    await this.#conn.write(frame);
  }

  /** Reads and answers until the socket closes. */
  async run(answerFirstPing: boolean): Promise<void> {
    let pings = 0;
    const frames = serverFrames(this.#conn, this.#rest, MiB);
    for (;;) {
      // A read that fails (the socket closed under it) ends it as the server's close would.
      const next = await frames.next().catch(() => undefined);
      if (!next || next.done) return;
      const frame = next.value;
      const at = Math.round(performance.now() - this.#started);
      if (frame.opcode === 0x9) {
        pings++;
        if (this.bytesBeforePing < 0) this.bytesBeforePing = this.dataBytes;
        const answer = pings > 1 || answerFirstPing;
        this.events.push(`ping ${pings} at ${at} ms${answer ? "" : " (not answered)"}`);
        if (answer) await this.send(0xA);
      } else if (frame.opcode === 0x8) {
        this.closeCode = frame.payload.length >= 2
          ? (frame.payload[0] << 8) | frame.payload[1]
          : 1005;
        this.events.push(`close ${this.closeCode} at ${at} ms`);
        this.#conn.close();
        return;
      } else {
        this.dataBytes += frame.payload.length;
      }
    }
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
  }
}

Deno.test("heartbeat: the fix applies to this Deno (if not, check deno_heartbeat.ts against it)", () => {
  assert(heartbeatFixApplies);
});

Deno.test("heartbeat: a client that answers every ping stays open though a frame of it came while the server's ping waited behind queued output", async () => {
  // Pings after 2 s of silence, closes 2 s after a ping that got no answer.
  const server = await startTestServer({
    HEARTBEAT_SECONDS: "4",
    SLOW_CONSUMER_BYTES: String(512 * MiB),
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_USER_PER_SECOND: "100000",
  });
  const token = await server.token({ sub: 1, rooms: ["ticket:30"] });
  const raw = await RawClient.open(server.port, `/ws/ticket/30/?token=${token}`);
  const opened = performance.now();
  const until = (ms: number) =>
    new Promise((r) => setTimeout(r, Math.max(0, opened + ms - performance.now())));
  const writer = await TestClient.open(
    `${server.wsUrl}/ws/ticket/30/?token=${await server.token({ sub: 2, rooms: ["ticket:30"] })}`,
  );
  try {
    // 16 MB for the raw client, which does not read yet: far more than the kernel buffers hold,
    // so the server's first ping (2 s after the join) waits behind it.
    const body = "y".repeat(19_000);
    for (let sent = 0; sent < 840; sent += 40) {
      for (let i = 0; i < 40; i++) writer.send({ body });
      for (let i = 0; i < 40; i++) await writer.next();
    }
    // While that ping waits: a frame from the client (Deno takes any frame for activity). Deno
    // arms a second ping timer for it, which fires (its ping waiting too) before the client
    // reads again; once the client reads, that second ping's close timer overwrites the first
    // ping's, which then fires though both pings are answered.
    await until(2500);
    await raw.send(0xA);
    // Past the second timer's firing (2 s after this frame), however long the flood took.
    await until(Math.max(5500, performance.now() - opened + 2500));
    const running = raw.run(true);
    // Without the fix the close came 2 s after the client read the pings.
    await Promise.race([running, until(11_000)]);
    assert(
      raw.bytesBeforePing > 8 * MiB,
      `the ping did not wait behind the output (${raw.bytesBeforePing} bytes before it)`,
    );
    assertEquals(raw.closeCode, undefined, raw.events.join(", "));
    assert(raw.events.length >= 3, `pings go on: ${raw.events.join(", ")}`);
    assertEquals(server.app.context.metrics.pingTimeouts, 0);
    assertEquals(server.app.context.hub.members("ticket:30").size, 2);
  } finally {
    raw.close();
    await writer.close();
    await server.close();
  }
});

Deno.test("heartbeat: a client that stops answering is still closed", async () => {
  const server = await startTestServer({ HEARTBEAT_SECONDS: "2" });
  const token = await server.token({ sub: 1, rooms: ["ticket:31"] });
  const raw = await RawClient.open(server.port, `/ws/ticket/31/?token=${token}`);
  try {
    // Answers nothing after a first ping it leaves unanswered: closed a period after that ping.
    await raw.run(false);
    assertEquals(raw.closeCode, 1001, raw.events.join(", "));
    assertEquals(server.app.context.metrics.pingTimeouts, 1);
  } finally {
    raw.close();
    await server.close();
  }
});

Deno.test("heartbeat: a client whose frames keep coming is never pinged, and once they stop the ping comes half a period later, at most a 32nd of it early", async () => {
  const server = await startTestServer({ HEARTBEAT_SECONDS: "2" });
  const token = await server.token({ sub: 1, rooms: ["ticket:32"] });
  const raw = await RawClient.open(server.port, `/ws/ticket/32/?token=${token}`);
  try {
    const reading = raw.run(false);
    // Unsolicited pongs (activity Deno's heartbeat counts) every 20 ms for 2.5 s: more than the
    // 1 s after which an idle socket is pinged.
    const until = performance.now() + 2500;
    let last = performance.now();
    while (performance.now() < until) {
      await raw.send(0xA);
      last = performance.now();
      await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(raw.events, []);
    while (raw.events.length === 0) await new Promise((r) => setTimeout(r, 5));
    const after = performance.now() - last;
    assert(after >= 1000 - 1000 / 32 - 5, `pinged ${after.toFixed(0)} ms after the last frame`);
    await reading;
    assertEquals(raw.closeCode, 1001, raw.events.join(", "));
  } finally {
    raw.close();
    await server.close();
  }
});
