import { assertEquals } from "../../tests/assert.ts";
import { mergeMetrics } from "./metrics_exchange.ts";

Deno.test("mergeMetrics() keeps each family's HELP and TYPE once and labels every series with its isolate", () => {
  const text = (n: number) =>
    [
      "# HELP chat_connections Open sockets by protocol.",
      "# TYPE chat_connections gauge",
      `chat_connections{protocol="native"} ${n}`,
      "# HELP chat_rooms Rooms.",
      "# TYPE chat_rooms gauge",
      `chat_rooms ${n * 10}`,
      "",
    ].join("\n");
  assertEquals(
    mergeMetrics(new Map([["a1", text(1)], ["b2", text(2)]])),
    [
      "# HELP chat_connections Open sockets by protocol.",
      "# TYPE chat_connections gauge",
      'chat_connections{isolate="a1",protocol="native"} 1',
      'chat_connections{isolate="b2",protocol="native"} 2',
      "# HELP chat_rooms Rooms.",
      "# TYPE chat_rooms gauge",
      'chat_rooms{isolate="a1"} 10',
      'chat_rooms{isolate="b2"} 20',
      "",
    ].join("\n"),
  );
});
