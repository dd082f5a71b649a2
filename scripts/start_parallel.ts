/**
 * `deno task start:parallel`: runs serve.ts under `deno serve --parallel` on PORT and HOST (8000 and
 * 0.0.0.0 by default, as `deno task start`), forwarding SIGINT/SIGTERM so shutdown stays graceful.
 */

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
  stdin: "inherit",
  stdout: "inherit",
  stderr: "inherit",
}).spawn();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => child.kill(signal));
}
Deno.exit((await child.status).code);
