/** A Postgres directory that stops answering (a paused server, a partition) fails fast, then recovers. */

import { assert, assertEquals, eventually } from "./assert.ts";
import { BACKENDS } from "./api_helpers.ts";
import { startTestServer, TestClient } from "./helpers.ts";

const postgres = BACKENDS.find((b) => b.name === "postgres")!;

/** A TCP proxy to `port` whose traffic can be held (both ways) and let go again. */
function stallableProxy(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  let release: (() => void) | undefined;
  let held: Promise<void> | undefined;
  const pump = async (from: Deno.Conn, to: Deno.Conn) => {
    const buffer = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        while (held) await held;
        for (let done = 0; done < n;) done += await to.write(buffer.subarray(done, n));
      }
    } catch {
      // One side closed.
    }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch {
        // Already closed.
      }
    }
  };
  (async () => {
    for await (const client of listener) {
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port });
      conns.push(client, upstream);
      pump(client, upstream);
      pump(upstream, client);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    hold() {
      held = new Promise((resolve) => release = resolve);
    },
    release() {
      const done = release;
      held = undefined;
      done?.();
    },
    close() {
      this.release();
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
    },
  };
}

Deno.test({
  name:
    "postgres outage: a directory that stops answering fails health checks and sends in time, says no more than that, and recovers",
  ignore: postgres.ignore,
  async fn() {
    const database = await postgres.create();
    const url = new URL(database.url!);
    const proxy = stallableProxy(Number(url.port));
    url.port = String(proxy.port);
    const server = await startTestServer({
      DATABASE_URL: url.toString(),
      DATABASE_TIMEOUT_MS: "1000",
      ADMIN_TOKEN: "admin-token-for-the-outage-test",
    });
    try {
      const token = await server.token({ sub: "1", rooms: ["ticket:*"] });
      const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
      ws.send({ body: "before" });
      assertEquals((await ws.next()).body, "before");
      assertEquals((await fetch(`${server.url}/healthz`).then((r) => r.json())).status, "ok");
      proxy.hold();
      // Past the health check's own reuse of its last answer (1 s), it fails within its bound.
      await new Promise((r) => setTimeout(r, 1100));
      const started = performance.now();
      const health = await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(8000) });
      assertEquals(health.status, 503);
      const body = await health.json();
      assert(performance.now() - started < 5000, "the health check waited for the directory");
      // Whatever the error was, the database's address is not told to anyone who asks.
      assert(!JSON.stringify(body).includes(String(proxy.port)), JSON.stringify(body));
      // The admin API says the directory is away (503, come back later), not that it broke.
      const api = await fetch(`${server.url}/api/rooms/ticket/1`, {
        headers: { authorization: "Bearer admin-token-for-the-outage-test" },
        signal: AbortSignal.timeout(8000),
      });
      assertEquals([api.status, api.headers.get("retry-after")], [503, "5"]);
      assertEquals((await api.json()).message, "The directory does not answer; try again shortly");
      // A newcomer, whose access the directory must decide, is answered (refused), not left
      // hanging: the handshake fails, or the socket closes or says something.
      const other = await server.token({ sub: "2", rooms: ["ticket:*"] });
      const attempt = (async () => {
        try {
          const late = await TestClient.open(`${server.wsUrl}/ws/ticket/2/?token=${other}`);
          late.send({ body: "during" });
          await Promise.race([late.next(() => true, 60_000).catch(() => {}), late.closed]);
          await late.close();
        } catch {
          // Refused at the handshake.
        }
        return "answered";
      })();
      const outcome = await Promise.race([
        attempt,
        new Promise((r) => setTimeout(() => r("hung"), 8000)),
      ]);
      assertEquals(outcome, "answered");
      proxy.release();
      const status = async () => {
        const res = await fetch(`${server.url}/healthz`);
        await res.body?.cancel();
        return res.status;
      };
      await eventually(async () => await status() === 200, 10_000, "healthz to recover");
      ws.send({ body: "after" });
      assertEquals((await ws.next((f) => f.body === "after", 10_000)).body, "after");
      await ws.close();
    } finally {
      // Let go first: a server waiting on the directory cannot close.
      proxy.release();
      await server.close();
      proxy.close();
      await database.drop();
    }
  },
});
