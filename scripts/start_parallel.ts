/**
 * `deno task start:parallel`: runs serve.ts under `deno serve --parallel` on PORT and HOST (8000 and
 * 0.0.0.0 by default, as `deno task start`), forwarding SIGINT/SIGTERM so shutdown stays graceful.
 */

import { PROCESS_ID_ENV } from "../src/broker/instance_registry.ts";
import { PROC_REFUSED_NOTE } from "../src/http/process_metrics.ts";

const port = Deno.env.get("PORT")?.trim() || "8000";
const host = Deno.env.get("HOST")?.trim() || "0.0.0.0";
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
