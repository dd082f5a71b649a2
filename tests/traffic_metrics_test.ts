/**
 * /metrics' traffic counters against a real server: bytes are UTF-8 bytes, not characters.
 */

import { assert, assertEquals, delay } from "./assert.ts";
import { startTestServer, TestClient, type TestServer } from "./helpers.ts";

const BYTES = "chat_bytes_in_total";

/** Text most of whose characters take 3 or 4 bytes in UTF-8. */
const WIDE = "中文😀 ".repeat(300);

const utf8 = (text: string) => new TextEncoder().encode(text).byteLength;

/**
 * /metrics' samples by name and labels. The text must stay valid exposition: each sample once,
 * and right after its own family's HELP and TYPE (a family's samples may not be split apart).
 */
async function samples(server: TestServer): Promise<Map<string, number>> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const values = new Map<string, number>();
  let family = "";
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) /.exec(line);
    if (type) family = type[1];
    if (line === "" || line.startsWith("#")) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert(sample, `not a sample: ${line}`);
    const [, name, labels = "", value] = sample;
    assert(name.startsWith(family), `${line} is not in its family, after ${family}'s TYPE`);
    assert(!values.has(name + labels), `${line} twice`);
    values.set(name + labels, Number(value));
  }
  return values;
}

Deno.test("metrics: chat_bytes_in_total counts a text frame's UTF-8 bytes, not its characters", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:8"] });
    const client = await TestClient.open(`${server.wsUrl}/ws/ticket/8/?token=${token}`);
    await delay(200);
    const before = await samples(server);
    const frame = JSON.stringify({ body: WIDE });
    client.send(frame);
    await client.next((f) => f.body === WIDE);
    const after = await samples(server);
    await client.close();
    assert(utf8(frame) > frame.length * 2);
    assertEquals(after.get(BYTES)! - before.get(BYTES)!, utf8(frame));
  } finally {
    await server.close();
  }
});
