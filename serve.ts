/** Entry point for `deno serve --parallel`: every isolate runs this module and serves its export. */

import { buildApp } from "./main.ts";
import { loadConfig } from "./src/config.ts";

let app;
try {
  app = await buildApp(loadConfig(Deno.env.toObject()), { socketIoRelay: true });
} catch (err) {
  console.error((err as Error).message);
  Deno.exit(1);
}
const ready = app;

// Each isolate closes its own sockets (1001), Socket.IO sessions and channels, and flushes its
// pending commits; with nothing left open, `deno serve` exits.
let closing = false;
const stop = () => {
  if (closing) return;
  closing = true;
  ready.close().catch((err) => console.error("Shutdown failed:", err));
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);

export default {
  fetch: (req: Request, info: Deno.ServeHandlerInfo) => ready.fetch(req, info),
} satisfies Deno.ServeDefaultExport;
