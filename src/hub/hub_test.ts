import { assertEquals } from "../../tests/assert.ts";
import { MemoryBroker, MemoryBus } from "../broker/memory_broker.ts";
import type { Broker, Principal, RoomEvent } from "../core/types.ts";
import { KvHeadWatcher } from "../broker/kv_head_watcher.ts";
import { KvMessageStore } from "../store/kv_message_store.ts";
import { Hub, type Member } from "./hub.ts";

const user: Principal = { id: 1, username: "u", grants: [] };

function recorder(): Member & { seqs: number[]; renders: number } {
  const m = {
    user,
    renderKey: "test",
    seqs: [] as number[],
    renders: 0,
    wants: () => true,
    render(event: RoomEvent) {
      m.renders++;
      return event.type === "message" ? String(event.message.seq) : undefined;
    },
    send(frame: string) {
      m.seqs.push(Number(frame));
    },
    evict() {},
  };
  return m;
}

/** A broker that loses every other message, like a BroadcastChannel whose receiver lagged. */
class LossyBroker implements Broker {
  #inner: Broker;
  #n = 0;
  constructor(inner: Broker) {
    this.#inner = inner;
  }
  publish(event: RoomEvent) {
    if (event.type === "message" && this.#n++ % 2 === 1) return;
    this.#inner.publish(event);
    if (event.type === "message") this.#inner.publish(event); // and repeats the rest
  }
  subscribe(room: string, handler: (e: RoomEvent) => void) {
    return this.#inner.subscribe(room, handler);
  }
  close() {
    this.#inner.close();
  }
}

const settle = () => new Promise((r) => setTimeout(r, 50));

Deno.test("Hub delivers every message once and in order even when the broker drops and repeats", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const bus = new MemoryBus();
  const sender = new Hub(store, new LossyBroker(new MemoryBroker(bus)));
  const receiver = new Hub(store, new MemoryBroker(bus), {
    heads: (hub) => new KvHeadWatcher(kv, (room, head) => hub.headAdvanced(room, head)),
  });
  const member = recorder();
  await receiver.join("r", member);
  for (let i = 0; i < 20; i++) {
    const { message } = await store.append("r", { sender: null, body: `m${i}`, attachments: [] });
    sender.committed(message);
  }
  await settle();
  await receiver.idle();
  // The last message was lost by the broker; only the head watch can reveal it.
  assertEquals(member.seqs, Array.from({ length: 20 }, (_, i) => i + 1));
  assertEquals(receiver.stats.gapFills > 0, true);
  assertEquals(receiver.stats.duplicatesDropped > 0, true);
  sender.close();
  receiver.close();
  kv.close();
});

Deno.test("Hub.join() with since replays what the member missed, then goes live without a gap", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const hub = new Hub(store, new MemoryBroker());
  const first = recorder();
  await hub.join("r", first);
  for (let i = 0; i < 5; i++) {
    hub.committed((await store.append("r", { sender: null, body: "x", attachments: [] })).message);
  }
  await hub.idle();
  const late = recorder();
  assertEquals(await hub.join("r", late, { since: 2 }), 5);
  hub.committed((await store.append("r", { sender: null, body: "x", attachments: [] })).message);
  await hub.idle();
  assertEquals(late.seqs, [3, 4, 5, 6]);
  assertEquals(first.seqs, [1, 2, 3, 4, 5, 6]);
  hub.close();
  kv.close();
});

Deno.test("Hub renders a frame once per render key, not once per member", async () => {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv);
  const hub = new Hub(store, new MemoryBroker());
  const members = Array.from({ length: 50 }, () => recorder());
  for (const m of members) await hub.join("r", m);
  hub.committed((await store.append("r", { sender: null, body: "x", attachments: [] })).message);
  await hub.idle();
  assertEquals(members.reduce((n, m) => n + m.renders, 0), 1);
  assertEquals(members.every((m) => m.seqs.length === 1), true);
  hub.leave("r", members[0]);
  assertEquals(hub.members("r").size, 49);
  hub.close();
  kv.close();
});

Deno.test("Hub with a head watch sees commits of another instance that shares no broker", async () => {
  const path = await Deno.makeTempFile({ suffix: ".kv" });
  const kvA = await Deno.openKv(path);
  const kvB = await Deno.openKv(path);
  const storeA = new KvMessageStore(kvA);
  const storeB = new KvMessageStore(kvB);
  const a = new Hub(storeA, new MemoryBroker(), {
    heads: (hub) => new KvHeadWatcher(kvA, (room, head) => hub.headAdvanced(room, head)),
  });
  const b = new Hub(storeB, new MemoryBroker(), {
    heads: (hub) => new KvHeadWatcher(kvB, (room, head) => hub.headAdvanced(room, head)),
  });
  const onA = recorder();
  const onB = recorder();
  await a.join("r", onA);
  await b.join("r", onB);
  for (let i = 0; i < 30; i++) {
    const hub = i % 2 ? a : b;
    const store = i % 2 ? storeA : storeB;
    hub.committed((await store.append("r", { sender: null, body: "x", attachments: [] })).message);
  }
  const want = Array.from({ length: 30 }, (_, i) => i + 1);
  const deadline = Date.now() + 3000;
  while ((onA.seqs.length < 30 || onB.seqs.length < 30) && Date.now() < deadline) await settle();
  assertEquals(onA.seqs, want);
  assertEquals(onB.seqs, want);
  a.close();
  b.close();
  await settle();
  kvA.close();
  kvB.close();
  await Deno.remove(path);
});
