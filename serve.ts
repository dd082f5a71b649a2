/** Entry point for `deno serve --parallel`: every isolate runs this module and serves its export. */

import { buildApp, SHUTDOWN_FALLBACK_MS, SHUTDOWN_HTTP_GRACE_MS } from "./main.ts";
import { PROCESS_NAME } from "./src/broker/instance_registry.ts";
import { loadConfig } from "./src/config.ts";
import { redactDatabaseUrl } from "./src/directory/open.ts";

let app;
try {
  const config = loadConfig(Deno.env.toObject());
  // Each isolate would open a store of its own: a room's history and seqs would depend on the
  // isolate a client lands on. How many isolates `deno serve` runs is not told to them, so it is
  // refused even for one.
  if (config.kvPath === ":memory:") {
    throw new Error(
      "KV_PATH=:memory: cannot be used under deno serve (deno task start:parallel): every " +
        "isolate would open its own in-memory store, and a room's history and seq numbers would " +
        "split between them; use a file path (the default, DATA_DIR/chat.kv), or :memory: with " +
        "deno task start",
    );
  }
  app = await buildApp(config, { socketIoRelay: true });
} catch (err) {
  // As main.ts: nothing the message quotes may show the database's password.
  console.error(redactDatabaseUrl((err as Error).message, Deno.env.get("DATABASE_URL")));
  Deno.exit(1);
}
const ready = app;

/** What an isolate tells the others of this process about its stop. */
interface StopNote {
  id: string;
  state: "here" | "stopping" | "closed";
}

// `Deno.exit` in any isolate ends them all, so no isolate may end the process while another is
// still flushing its stores: each learns of the others (all of this process, not of another
// instance, which a Deploy channel would reach), and tells them when it has closed. A note may
// be lost (the process's channels share one queue, which drops for a receiver that lags), so
// one closed keeps saying so until it knows every other has. Named after PROCESS_NAME, which all
// isolates share even where each takes a PROCESS of its own.
const me: string = crypto.randomUUID();
const isolates = new Set<string>([me]);
const closed = new Set<string>();
const channel = new BroadcastChannel(`serve-stop:${PROCESS_NAME}`);
const say = (state: StopNote["state"]) => channel.postMessage({ id: me, state } as StopNote);
let stopping = false;
let repeating: ReturnType<typeof setInterval> | undefined;
channel.onmessage = (event: MessageEvent<StopNote>) => {
  const { id, state } = event.data;
  // A newcomer learns of those already here from their answer.
  if (!isolates.has(id) && state === "here" && !stopping) say("here");
  isolates.add(id);
  if (state === "closed") closed.add(id);
  endWhenAllClosed();
};
say("here");

/**
 * Once every isolate has closed its app: the process ends on its own when nothing is left open,
 * but an HTTP exchange still under way (a download a slow player reads as it plays) would hold
 * it for as long as its peer, and the supervisor would record a failed stop. As `main.ts` does,
 * it gets a moment, then is cut off with exit 0.
 */
function endWhenAllClosed(): void {
  if (!closed.has(me) || [...isolates].some((id) => !closed.has(id))) return;
  if (repeating === undefined) return;
  clearInterval(repeating);
  repeating = undefined;
  // Once more, for one that lost the last note; then the channel lets the isolate end.
  say("closed");
  channel.close();
  const cutOff = setTimeout(() => {
    console.log(
      `Shutting down: HTTP exchanges still under way after ${SHUTDOWN_HTTP_GRACE_MS} ms are cut off`,
    );
    Deno.exit(0);
  }, SHUTDOWN_HTTP_GRACE_MS);
  // Only an exchange still under way keeps the isolate, and so the timer, alive.
  Deno.unrefTimer(cutOff);
}

// Deno closes the listener at the signal; each isolate closes its own sockets (1001), Socket.IO
// sessions and channels, and flushes its pending commits.
const stop = async () => {
  if (stopping) return;
  stopping = true;
  say("stopping");
  // As `main.ts`: a stop that does not end in time is a failed one. Unref'd, as a stop that ends
  // lets the isolates end.
  const fallback = setTimeout(() => {
    console.error("Shutting down: the isolates did not all close in time");
    Deno.exit(1);
  }, SHUTDOWN_FALLBACK_MS);
  Deno.unrefTimer(fallback);
  await ready.close().catch((err) => console.error("Shutdown failed:", err));
  closed.add(me);
  say("closed");
  repeating = setInterval(() => say("closed"), 100);
  endWhenAllClosed();
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);

export default {
  fetch: (req: Request, info: Deno.ServeHandlerInfo) => ready.fetch(req, info),
} satisfies Deno.ServeDefaultExport;
