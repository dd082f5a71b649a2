/**
 * `deno task start:parallel`: runs serve.ts under `deno serve --parallel` on PORT and HOST (8000 and
 * 0.0.0.0 by default, as `deno task start`), forwarding SIGINT/SIGTERM so shutdown stays graceful.
 */

import { PROCESS_ID_ENV } from "../src/broker/instance_registry.ts";
import { loadListenAddress, urlHost } from "../src/config.ts";
import { PROC_REFUSED_NOTE } from "../src/http/process_metrics.ts";

let address;
try {
  address = loadListenAddress(Deno.env.toObject());
} catch (err) {
  // As main.ts: a bad PORT is named as a setting, not as `deno serve`'s `--port`.
  console.error((err as Error).message);
  Deno.exit(1);
}
const port = String(address.port);
// main.ts takes an IPv6 HOST with brackets or without (`::`: every interface); `deno serve`'s
// `--host` only with them.
const host = urlHost(address.host);
const child = new Deno.Command(Deno.execPath(), {
  args: [
    "serve",
    "--parallel",
    // As `deno task start`; see the README's Tuning section.
    "--v8-flags=--max-semi-space-size=2",
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-sys",
    "--port",
    port,
    "--host",
    host,
    new URL("../serve.ts", import.meta.url).pathname,
  ],
  // Its isolates cannot read /proc/self under these permissions: without an id to share, each
  // would take itself for a process of its own (see PROCESS in the registry).
  env: { [PROCESS_ID_ENV]: crypto.randomUUID() },
  stdin: "inherit",
  stdout: "inherit",
  stderr: "inherit",
}).spawn();
// Said once here rather than by every isolate: none of them is granted --allow-all.
if (Deno.build.os === "linux") console.log(PROC_REFUSED_NOTE);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => child.kill(signal));
}
Deno.exit((await child.status).code);
