/**
 * A second server started beside a running one on one KV file (a scale-out, a rolling restart):
 * the running one learns of it only at its next read of the registry, and tells nobody else of
 * its presence changes while it thinks itself alone. The newcomer's users must still hear of
 * every change made after they joined.
 */

import { assertEquals } from "./assert.ts";
import { joinRoom, type TestClient } from "./helpers.ts";
import { type spawnServer, withDataDir } from "./server_process.ts";

type Frame = Record<string, unknown>;
const ROUNDS = 3;

/** Runs `round` `ROUNDS` times, each on a fresh DATA_DIR with server A listening, B not started. */
async function rounds(
  round: (pair: {
    urlA: string;
    startB: () => Promise<string>;
    a: ReturnType<typeof spawnServer>;
    clients: TestClient[];
  }) => Promise<string>,
): Promise<string[]> {
  const outcomes: string[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    await withDataDir(async ({ env, clients, spawn }) => {
      const a = spawn(env);
      const urlA = await a.url();
      const startB = () => spawn(env).url();
      outcomes.push(await round({ urlA, startB, a, clients }));
    }, { prefix: "scale-out-" });
  }
  return outcomes;
}

Deno.test("scale-out: a user who joins through the running server right after a second one listens is announced to the second one's users", async () => {
  const outcomes = await rounds(async ({ urlA, startB, clients }) => {
    const urlB = await startB();
    const bob = (await joinRoom(urlB, "r", "bob")).client;
    clients.push(bob);
    clients.push((await joinRoom(urlA, "r", "alice")).client);
    return await bob.next((f: Frame) => f.type === "user_join" && f.username === "alice", 5000)
      .then(() => "told", () => "never told");
  });
  assertEquals(outcomes, Array(ROUNDS).fill("told"));
});

Deno.test("scale-out: a rolling restart that stops the old server as soon as the new one listens leaves no ghost of the old server's users on the new one", async () => {
  const outcomes = await rounds(async ({ urlA, startB, a, clients }) => {
    // Carol's tab stays on the old server and does not come back.
    clients.push((await joinRoom(urlA, "r", "carol")).client);
    const urlB = await startB();
    const dave = await joinRoom(urlB, "r", "dave");
    clients.push(dave.client);
    assertEquals(dave.users, ["carol", "dave"]);
    assertEquals((await a.kill("SIGTERM")).code, 0);
    return await dave.client.next(
      (f: Frame) => f.type === "user_leave" && f.username === "carol",
      8000,
    ).then(() => "told she left", () => "carol shown for good");
  });
  assertEquals(outcomes, Array(ROUNDS).fill("told she left"));
});
