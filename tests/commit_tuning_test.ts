/** When commits pause to share an fsync: the COMMIT_* settings, end to end on the ticket socket. */

import { assert, assertEquals } from "./assert.ts";
import { startTestServer, TestClient } from "./helpers.ts";

/** Sends two messages, the second once the first is echoed; resolves to the second's wait, ms. */
async function secondEchoAfter(env: Record<string, string>): Promise<number> {
  const server = await startTestServer(env);
  try {
    const token = await server.token({ sub: "1", username: "user1", rooms: ["ticket:1"] });
    const client = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
    client.send({ body: "first" });
    assertEquals((await client.next()).body, "first");
    const sent = performance.now();
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

Deno.test("commit tuning: COMMIT_PAUSE_CPU_PERCENT=0 starts commits COMMIT_INTERVAL_MS apart even when idle; by default an idle server commits at once", async () => {
  // The second send arrives a few ms after the first commit started, so with the pause always
  // taken it waits out the rest of the interval before its own commit.
  const paused = await secondEchoAfter({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "400",
  });
  assert(paused >= 300, `expected the second send to wait for the interval, it took ${paused} ms`);
  const idle = await secondEchoAfter({});
  assert(idle < 300, `expected no pause on an idle server, the second send took ${idle} ms`);
});
