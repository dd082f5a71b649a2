import { assertEquals, eventually } from "../../tests/assert.ts";
import { KvHeadWatcher } from "./kv_head_watcher.ts";

Deno.test("KvHeadWatcher starts a watch again when KV ends it, as when it fails", async () => {
  // The first watch ends at once (as a remote KV's may when its connection drops); the second
  // reports a head.
  const watches: string[] = [];
  const kv = {
    watch(keys: Deno.KvKey[]) {
      const n = watches.push(keys.map(String).join());
      return new ReadableStream<Deno.KvEntryMaybe<unknown>[]>({
        start(controller) {
          if (n === 1) return controller.close();
          if (n === 2) return controller.error(new Error("connection reset"));
          controller.enqueue([{ key: keys[0], value: 7, versionstamp: "1" }]);
        },
      });
    },
  } as unknown as Deno.Kv;
  const heads: [string, number][] = [];
  const logged = console.error;
  console.error = () => {};
  const watcher = new KvHeadWatcher(kv, (room, head) => heads.push([room, head]));
  try {
    watcher.add("ticket:1");
    await eventually(() => heads.length > 0, 5000, "a head after the watch ended and failed");
    assertEquals(heads, [["ticket:1", 7]]);
    assertEquals(watches.length, 3);
  } finally {
    watcher.close();
    console.error = logged;
  }
});
