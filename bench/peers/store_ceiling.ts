/**
 * The ceiling of this server's message store alone: `KvMessageStore.append` into a fresh Deno KV
 * file, no sockets, no JSON, no auth. `ROOMS` rooms each keep `DEPTH` appends outstanding (a
 * closed loop, so the store's batching is as full as it gets) for `SECONDS`; prints one JSON line
 * with messages per second, commits and the append latency percentiles.
 *
 * Env: `SERVER_DIR` (the server whose store is measured), `ROOMS` (100), `DEPTH` (4),
 * `SECONDS` (5), `DATA_DIR` (where the KV file goes), `CLIENT_IDS` (1: every append carries a
 * fresh client id, as the native protocol's sends do).
 */

const serverDir = Deno.env.get("SERVER_DIR") ?? new URL("../..", import.meta.url).pathname;
const rooms = Number(Deno.env.get("ROOMS") ?? 100);
const depth = Number(Deno.env.get("DEPTH") ?? 4);
const seconds = Number(Deno.env.get("SECONDS") ?? 5);
const clientIds = Deno.env.get("CLIENT_IDS") === "1";
const dataDir = Deno.env.get("DATA_DIR") ?? await Deno.makeTempDir({ prefix: "store-ceiling-" });

const { KvMessageStore } = await import(`${serverDir}/src/store/kv_message_store.ts`);
const kv = await Deno.openKv(`${dataDir}/chat.kv`);
const store = new KvMessageStore(kv);
let commits = 0;
store.onCommit = () => commits++;

const sender = { id: 1, username: "user1", name: null, email: null, profileImage: null };
const latencies: number[] = [];
let measuring = false;
let sent = 0;
let ids = 0;
const warmupMs = 1000;
const started = performance.now();
const stopAt = started + warmupMs + seconds * 1000;

async function loop(room: string): Promise<void> {
  while (performance.now() < stopAt) {
    const t0 = performance.now();
    await store.append(room, {
      sender,
      body: `${Math.round(t0 * 1000)}|store ceiling message of a typical length`,
      attachments: [],
      ...(clientIds ? { clientId: `c${++ids}` } : {}),
    });
    if (measuring) {
      latencies.push(performance.now() - t0);
      sent++;
    }
  }
}

setTimeout(() => {
  measuring = true;
  commits = 0;
}, warmupMs);
const loops: Promise<void>[] = [];
for (let r = 0; r < rooms; r++) {
  for (let d = 0; d < depth; d++) loops.push(loop(`ticket:${r + 1}`));
}
await Promise.all(loops);
await store.flush();
kv.close();
latencies.sort((a, b) => a - b);
const q = (p: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
console.log(JSON.stringify({
  rooms,
  depth,
  seconds,
  clientIds,
  messagesPerSec: sent / seconds,
  commitsPerSec: commits / seconds,
  p50Ms: q(0.5),
  p99Ms: q(0.99),
}));
if (!Deno.env.get("DATA_DIR")) await Deno.remove(dataDir, { recursive: true });
