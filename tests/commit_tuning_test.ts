/** How sends share commits, end to end on the ticket socket: the COMMIT_* settings, and a commit taking whole rooms. */

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

Deno.test("commit tuning: sends queued in 100 rooms share commits room by room; each room's echoes keep their order", async () => {
  // Commits 600 ms apart, except when the queue holds more rooms than one commit may check (90).
  const server = await startTestServer({
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "600",
  });
  try {
    const clients = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const token = await server.token({
          sub: `${i + 1}`,
          username: `u${i}`,
          rooms: ["ticket:*"],
        });
        return await TestClient.open(`${server.wsUrl}/ws/ticket/${i + 1}/?token=${token}`);
      }),
    );
    const before = server.app.context.metrics.commits;
    for (let round = 0; round < 5; round++) {
      for (const [i, client] of clients.entries()) client.send({ body: `${i}.${round}` });
      // A pause between rounds, so that they reach the queue one after another.
      await new Promise((r) => setTimeout(r, 40));
    }
    for (const [i, client] of clients.entries()) {
      for (let round = 0; round < 5; round++) {
        const echo = await client.next();
        assertEquals([echo.pk, echo.body], [round + 1, `${i}.${round}`]);
      }
    }
    // The first sends commit at once; the rest wait out the interval (the drain looks again only
    // when it ends, and does not wait when more than 90 rooms queue). So round 0 takes at most
    // two commits, and the rest, queued in the next 600 ms, two more: 90 rooms with every send
    // queued for them, then the others. Taking only the queue's head instead, rooms in turn,
    // holds at most 90 sends a commit: four or more for those.
    const commits = server.app.context.metrics.commits - before;
    assert(commits <= 5, `expected 500 sends in at most 5 commits, got ${commits}`);
    await Promise.all(clients.map((c) => c.close()));
  } finally {
    await server.close();
  }
});
