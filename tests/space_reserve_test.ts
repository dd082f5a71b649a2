/**
 * A full DATA_DIR and Deno KV's expiry sweep, as a real process on a small tmpfs. Deno KV deletes
 * expired keys in the background and exits the whole process when that write fails ("KV collect
 * expired failed: database or disk is full"): the server keeps a reserve file beside the KV
 * file and deletes it as the volume fills, so that the sweep has room, refusing sends meanwhile.
 *
 * Mounting a tmpfs needs root (and the right to mount): elsewhere the test is skipped, and its
 * name says so.
 */

import { assert, assertEquals, delay, eventually } from "./assert.ts";
import { health, TEST_SECRET, TestClient } from "./helpers.ts";
import { mayMount, smallDisk, spawnServer } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

type Frame = Record<string, unknown>;

const skip = !(await mayMount());

/** A test's name, which says so when it is skipped. */
const named = (name: string) => skip ? `${name} (SKIPPED: mounting a tmpfs needs root)` : name;

Deno.test({
  name: named(
    "disk: a server whose DATA_DIR fills up while a KV key is due to expire stays up (Deno KV's expiry sweep would exit the process), refuses sends with 503 on /healthz, serves history, and takes sends again once space returns",
  ),
  ignore: skip,
  async fn() {
    const disk = await smallDisk();
    const kvPath = `${disk.dir}/chat.kv`;
    // Deno KV's sweep runs first at the earliest expiry it finds when it opens the file.
    const kv = await Deno.openKv(kvPath);
    await kv.set(["test", "expiring"], 1, { expireIn: 4_000 });
    kv.close();
    const server = spawnServer({ DATA_DIR: disk.dir });
    try {
      const url = await server.url();
      const token = await signDevToken(TEST_SECRET, {
        sub: "1",
        username: "one",
        rooms: ["ticket:*"],
      });
      const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
      assertEquals((await ws.next()).type, "welcome");
      ws.send({ type: "join", room: "ticket:1", ref: 0 });
      assertEquals((await ws.next((f) => f.ref === 0)).type, "joined");
      ws.send({ type: "send", room: "ticket:1", body: "kept", ref: 1 });
      assertEquals((await ws.next((f) => f.ref === 1)).seq, 1);

      await disk.fill();
      await eventually(
        async () => (await health(url)).status === 503,
        5_000,
        "/healthz to say 503 on the full disk",
      );
      // Past the key's expiry and the sweep it starts.
      await delay(6_000);
      assertEquals(
        await Promise.race([server.status.then(() => "exited"), delay(0).then(() => "running")]),
        "running",
        server.log(),
      );
      const full = await health(url);
      assertEquals(full.status, 503);
      assert(
        /KV file's volume is nearly full/.test(String(full.body.message)),
        JSON.stringify(full.body),
      );
      ws.send({ type: "send", room: "ticket:1", body: "refused", ref: 2 });
      const refused = await ws.next((f) => f.ref === 2);
      assertEquals([refused.type, refused.code], ["error", "internal"], JSON.stringify(refused));
      ws.send({ type: "history", room: "ticket:1", ref: 3 });
      const history = await ws.next((f) => f.ref === 3);
      assertEquals((history.messages as Frame[]).map((m) => m.body), ["kept"]);
      assert(/released the [\d.]+ MiB space reserve/.test(server.log()), server.log());

      await disk.free();
      await eventually(
        async () => (await health(url)).status === 200,
        10_000,
        "/healthz to say 200 once space returned",
      );
      assert(/space reserve .* written again/.test(server.log()), server.log());
      ws.send({ type: "send", room: "ticket:1", body: "after", ref: 4 });
      assertEquals((await ws.next((f) => f.ref === 4)).seq, 2);
      await ws.close();
      assertEquals((await server.kill("SIGTERM")).code, 0, server.log());
    } finally {
      await server.kill("SIGKILL");
      await disk.unmount();
    }
  },
});

Deno.test("disk: a SPACE_RESERVE_MB above 1024 stops the start naming the setting and the bound, not cut to 1024 without a word", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-reserve-" });
  // KV in memory: a start that took the setting writes no reserve (else a GiB of zeros).
  const server = spawnServer({ DATA_DIR: dataDir, KV_PATH: ":memory:", SPACE_RESERVE_MB: "4096" });
  try {
    const exited = await Promise.race([server.status, server.url().then(() => undefined)]);
    assertEquals(exited?.code, 1, server.log());
    assert(
      server.log().includes(
        'SPACE_RESERVE_MB: expected at most 1024 (MiB; 0 keeps no reserve), got "4096"',
      ),
      server.log(),
    );
  } finally {
    await server.kill("SIGTERM");
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
