/** When commits pause to share an fsync: the COMMIT_* settings, end to end on the ticket socket. */

import { assert, assertEquals } from "./assert.ts";
import { startTestServer, TestClient } from "./helpers.ts";

/** Sends two messages, the second once the first is echoed; resolves to the time from the first send to the second echo, ms. */
async function secondEchoAfter(env: Record<string, string>): Promise<number> {
  const server = await startTestServer(env);
  try {
    const token = await server.token({ sub: "1", username: "user1", rooms: ["ticket:1"] });
    const client = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
    const sent = performance.now();
    client.send({ body: "first" });
    assertEquals((await client.next()).body, "first");
    client.send({ body: "second" });
    const echo = await client.next();
    const waited = performance.now() - sent;
    assertEquals([echo.body, echo.pk], ["second", 2]);
    await client.close();
    return waited;
  } finally {
    await server.close();
  }
}

Deno.test("commit tuning: COMMIT_PAUSE_CPU_PERCENT=0 starts commits COMMIT_INTERVAL_MS apart even on an idle server; above the CPU share only", async () => {
  // The server runs in this process, on this clock: the first commit starts after the first
  // send, and the second at least the interval after the first (a timer may round a fraction
  // of a millisecond down, hence 395).
  const paused = await secondEchoAfter({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "400",
  });
  assert(
    paused >= 395,
    `expected the second commit to wait for the interval, both took ${paused} ms`,
  );
  // The same interval with a share of the CPU an idle server never reaches: no pause.
  const idle = await secondEchoAfter({
    COMMIT_PAUSE_CPU_PERCENT: "100000",
    COMMIT_INTERVAL_MS: "400",
  });
  assert(idle < 395, `expected no pause on an idle server, both took ${idle} ms`);
});
