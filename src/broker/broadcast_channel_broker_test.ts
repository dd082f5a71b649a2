/** The BroadcastChannel broker keeps working when rooms' channels come and go. */

import { assertEquals } from "../../tests/assert.ts";
import type { RoomEvent } from "../core/types.ts";
import { BroadcastChannelBroker } from "./broadcast_channel_broker.ts";

const typing = (room: string): RoomEvent => ({
  type: "typing",
  room,
  user: { id: 1, username: "one" },
  isTyping: true,
});

Deno.test("broadcast broker: the last room channel closing and another opening at once breaks nothing", async () => {
  const broker = new BroadcastChannelBroker("broker-test");
  // Another isolate's view of room:b, as a raw channel.
  const heard: unknown[] = [];
  const unsubscribe = broker.subscribe("room:a", () => {});
  // The last member of room:a leaves, and its presence event opens room:b's channel at once.
  unsubscribe();
  broker.publish(typing("room:b"));
  const other = new BroadcastChannel("chat:broker-test:room:b");
  other.onmessage = (e) => heard.push(e.data);
  await new Promise((r) => setTimeout(r, 50));
  broker.publish(typing("room:b"));
  broker.publish(typing("room:b"));
  await new Promise((r) => setTimeout(r, 50));
  assertEquals(heard.length, 2);
  other.close();
  broker.close();
});

Deno.test("broadcast broker: a room channel opened only to publish (no member here) is closed once idle", async () => {
  let closed = 0;
  const Original = globalThis.BroadcastChannel;
  // Channels that count their closes.
  globalThis.BroadcastChannel = class extends Original {
    override close() {
      closed++;
      super.close();
    }
  };
  const broker = new BroadcastChannelBroker("idle-test", { idleCloseMs: 10 });
  try {
    broker.publish(typing("room:quiet"));
    await new Promise((r) => setTimeout(r, 100));
    assertEquals(closed, 1);
  } finally {
    broker.close();
    globalThis.BroadcastChannel = Original;
  }
});
