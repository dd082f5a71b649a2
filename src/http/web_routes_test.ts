import { assertEquals } from "../../tests/assert.ts";
import { isLocalRequest } from "./web_routes.ts";

const loopback: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 50_000 };

Deno.test("isLocalRequest: an HTTP/2 request, which has no Host header, is judged by its URL's host", () => {
  // Deno gives an HTTP/2 request its authority as the URL and no `host` header.
  const h2 = (url: string) => new Request(url, { method: "POST" });
  assertEquals(isLocalRequest(h2("http://localhost:8000/dev/token"), loopback), true);
  assertEquals(isLocalRequest(h2("http://[::1]:8000/dev/token"), loopback), true);
  assertEquals(isLocalRequest(h2("http://attacker.example:8000/dev/token"), loopback), false);
  const viaHost = new Request("http://localhost:8000/dev/token", {
    method: "POST",
    headers: { host: "attacker.example" },
  });
  assertEquals(isLocalRequest(viaHost, loopback), false);
  const remote: Deno.NetAddr = { transport: "tcp", hostname: "192.0.2.7", port: 50_000 };
  assertEquals(isLocalRequest(h2("http://localhost:8000/dev/token"), remote), false);
});
