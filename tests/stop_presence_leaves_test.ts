/**
 * A server that stops beside another on one KV file writes its users' leaves to the rooms'
 * signals logs, for the other server's members; what its stop's budget cuts off is left to the
 * other server's presence sweep, which tells of the entries it finds. A presence commit whose
 * answer came after the stop's last flush of the signals took its users' entries out and wrote
 * no leave: nobody ever told of them.
 */

import { assertEquals, eventually } from "./assert.ts";
import { peersFound, startTestServer, TEST_SECRET, TestClient } from "./helpers.ts";
import { signDevToken } from "../src/auth/verifier.ts";
import { MemoryBroker, MemoryBus } from "../src/broker/memory_broker.ts";

type Frame = Record<string, unknown>;

const LEAVERS = 5;

/**
 * `kv` whose first commit taking presence entries out once `armed()` holds has its answer held
 * (the entries are gone from KV by then) until `release` is called or the handle is closed.
 */
function holdingPresenceCommit(kv: Deno.Kv, armed: () => boolean) {
  let release = () => {};
  const released = new Promise<void>((r) => release = r);
  let held = false;
  const handle = new Proxy(kv, {
    get(target, key) {
      if (key === "close") {
        return () => {
          release();
          target.close();
        };
      }
      const value = Reflect.get(target, key, target);
      if (key !== "atomic") return typeof value === "function" ? value.bind(target) : value;
      return () => {
        const op = target.atomic();
        let presence = false;
        const wrapped: Deno.AtomicOperation = new Proxy(op, {
          get(opTarget, opKey) {
            if (opKey === "delete") {
              return (k: Deno.KvKey) => {
                if (k[0] === "presence") presence = true;
                opTarget.delete(k);
                return wrapped;
              };
            }
            if (opKey === "commit") {
              return async () => {
                const res = await opTarget.commit();
                if (presence && !held && armed()) {
                  held = true;
                  await released;
                }
                return res;
              };
            }
            const v = Reflect.get(opTarget, opKey, opTarget);
            return typeof v === "function" ? v.bind(opTarget) : v;
          },
        });
        return wrapped;
      };
    },
  });
  return { kv: handle, release: () => release() };
}

Deno.test("stop: users whose presence commit answers once the stop's budget is spent are still shown leaving on the other server", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-stop-leaves-" });
  // A 3 s presence TTL: the other server's sweeps come every second.
  const shared = { DATA_DIR: dataDir, PRESENCE_TTL_SECONDS: "3" };
  let stopping = false;
  let hold: ReturnType<typeof holdingPresenceCommit> | undefined;
  const a = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/a.sqlite3` }, {
    // Separate channels: what B hears of A comes through KV, as from another process.
    broker: new MemoryBroker(new MemoryBus()),
    kv: (kv) => (hold = holdingPresenceCommit(kv, () => stopping)).kv,
  });
  const b = await startTestServer({ ...shared, DATABASE_URL: `${dataDir}/b.sqlite3` }, {
    broker: new MemoryBroker(new MemoryBus()),
  });
  let aClosed = false;
  const clients: TestClient[] = [];
  const client = async (port: number, sub: string) => {
    const token = await signDevToken(TEST_SECRET, { sub, rooms: ["ticket:*"] });
    const ws = await TestClient.open(`ws://127.0.0.1:${port}/ws?token=${token}`);
    clients.push(ws);
    await ws.next((f) => f.type === "welcome");
    ws.send({ type: "join", room: "ticket:1" });
    await ws.next((f) => f.type === "joined");
    return ws;
  };
  // The stop's cut-off line: the commit's answer comes a moment after it, as a slow one's would.
  const error = console.error;
  const lines: string[] = [];
  console.error = (...args: unknown[]) => {
    lines.push(args.map(String).join(" "));
    if (/cut off/.test(lines.at(-1)!)) setTimeout(() => hold?.release(), 200);
  };
  try {
    await peersFound([a, b]);
    const observer = await client(b.port, "watcher");
    for (let i = 0; i < LEAVERS; i++) await client(a.port, `leaver${i}`);
    const seen = (action: string) =>
      new Set(
        observer.frames.filter((f) =>
          (f as Frame).type === "presence" && (f as Frame).action === action
        )
          .map((f) => String(((f as Frame).user as Frame).id)),
      );
    await eventually(() => seen("join").size === LEAVERS, 5000, "the leavers' joins on B");
    stopping = true;
    await a.close().finally(() => aClosed = true);
    // The first exit's commit is held; the others, queued behind it, keep their entries for B's
    // sweep, once B reads that A is gone.
    await eventually(() => seen("leave").size === LEAVERS, 10_000).catch(() => {});
    assertEquals(
      { left: [...seen("leave")].sort(), cutOff: lines.some((l) => /cut off/.test(l)) },
      { left: Array.from({ length: LEAVERS }, (_, i) => `leaver${i}`).sort(), cutOff: true },
    );
  } finally {
    console.error = error;
    for (const ws of clients) await ws.close().catch(() => {});
    if (!aClosed) await a.close();
    await b.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
