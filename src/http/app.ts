/** The HTTP side: health, metrics, media, the admin API, and the WebSocket route table. */

import { Hono } from "hono";
import type { Metrics } from "../core/metrics.ts";
import type { Hub } from "../hub/hub.ts";
import type { FrameBudget } from "../transport/frame_budget.ts";
import type { LocalMediaStore } from "../media/local_media_store.ts";
import type { WsRoute } from "../dialects/context.ts";
import { mountMedia } from "./media_routes.ts";
import { renderFamily, renderIsolateMemory, renderProcessMetrics } from "./process_metrics.ts";

/** What the HTTP layer needs. */
export interface HttpDeps {
  /** Counters. */
  metrics: Metrics;
  /** Local delivery stats. */
  hub: Hub;
  /** Attachment files. */
  media: LocalMediaStore;
  /** Checks that every store answers; throws when one does not. */
  healthCheck(): Promise<void>;
  /** Identifies this isolate in health output. */
  isolateId: string;
  /** Other live servers (instances or isolates) sharing the store, for health output. */
  peers?: () => number;
  /** The admin REST API, its routes under `/api` (see src/http/api/). */
  api?: Hono;
  /** The bound on sockets' large frames, whose state /metrics shows. */
  frames?: FrameBudget;
  /** More Prometheus text appended to /metrics (the API's request counters). */
  extraMetrics?: () => string;
  /**
   * The whole /metrics text, when more than this isolate's counters may belong in it (the
   * other isolates of a `deno serve --parallel` process); otherwise this isolate's.
   */
  gatherMetrics?: () => Promise<string>;
}

/** This isolate's /metrics text. */
export function ownMetrics(deps: HttpDeps): string {
  return renderMetrics(deps.metrics, deps.hub, deps.frames) + renderIsolateMemory() +
    (deps.extraMetrics?.() ?? "");
}

/** Renders the counters in Prometheus text format. */
export function renderMetrics(metrics: Metrics, hub: Hub, frames?: FrameBudget): string {
  let text = "";
  const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
    text += renderFamily(name, type, help, samples);
  };
  metric(
    "chat_connections",
    "gauge",
    "Open sockets by protocol.",
    [...metrics.connections].map(([p, n]) => [`{protocol="${p}"}`, n]),
  );
  metric("chat_rooms", "gauge", "Rooms with members on this isolate.", [[
    "",
    [...hub.rooms()].length,
  ]]);
  metric("chat_messages_in_total", "counter", "Messages stored from clients.", [[
    "",
    metrics.messagesIn,
  ]]);
  // Socket.IO's under the protocol label its connections have; the WebSocket protocols' together
  // unlabelled as before (the hub counts its direct frames without telling whose they are).
  metric("chat_frames_out_total", "counter", "Frames written to sockets.", [
    ["", metrics.framesOut + hub.stats.directFrames],
    ['{protocol="socket.io"}', metrics.socketIoFramesOut],
  ]);
  metric("chat_bytes_in_total", "counter", "Bytes received in client frames.", [
    ["", metrics.bytesIn],
    ['{protocol="socket.io"}', metrics.socketIoBytesIn],
  ]);
  metric("chat_attachment_bytes_total", "counter", "Attachment bytes stored.", [[
    "",
    metrics.attachmentBytes,
  ]]);
  metric(
    "chat_errors_total",
    "counter",
    "Errors sent to clients by code.",
    [...metrics.errors].map(([c, n]) => [`{code="${c}"}`, n]),
  );
  // One summary family (its _sum and _count), as Prometheus reads a duration.
  metric("chat_commit_seconds", "summary", "Time spent in history commits.", [
    ["_sum", metrics.commitSeconds],
    ["_count", metrics.commits],
  ]);
  metric("chat_gap_fills_total", "counter", "Messages read back to fill a delivery gap.", [[
    "",
    hub.stats.gapFills,
  ]]);
  metric(
    "chat_delivery_gaps_total",
    "counter",
    "Runs of messages found deleted before the hub delivered them (native sockets get a resync).",
    [["", hub.stats.gapsReported]],
  );
  metric(
    "chat_publish_failures_total",
    "counter",
    "Events the broker could not carry to the other isolates (messages still reach them through their head watches).",
    [["", hub.stats.publishFailures]],
  );
  metric(
    "chat_ping_timeouts_total",
    "counter",
    "Sockets closed because the heartbeat ping went unanswered (HEARTBEAT_SECONDS).",
    [["", metrics.pingTimeouts]],
  );
  metric("chat_duplicates_dropped_total", "counter", "Repeated deliveries dropped.", [[
    "",
    hub.stats.duplicatesDropped,
  ]]);
  metric(
    "chat_event_repeats_dropped_total",
    "counter",
    "Typing, read, presence and eviction events heard by both routes between isolates (channel and KV log), or after a later one of the same user, dropped.",
    [["", hub.stats.repeatsDropped]],
  );
  if (frames) {
    metric(
      "chat_frame_buffer_bytes",
      "gauge",
      "Bytes the runtime keeps for sockets' largest frames (64 KiB or more): open, and reclaimed but not yet closed.",
      [['{state="open"}', frames.heldBytes], ['{state="closing"}', frames.closingBytes]],
    );
    metric(
      "chat_sockets_reclaimed_total",
      "counter",
      "Quiet sockets closed to keep frame buffers under FRAME_MEMORY_BUDGET_BYTES.",
      [["", frames.reclaimed]],
    );
  }
  return text;
}

/** Builds the Hono app for everything that is not a socket. */
export function createHttpApp(deps: HttpDeps): Hono {
  const app = new Hono();
  // Hono answers HEAD with the GET's headers and no body, which Deno sends as Content-Length 0:
  // the GET's length is what HEAD is asked for. Media responses state theirs already.
  app.use("*", async (c, next) => {
    await next();
    if (c.req.raw.method !== "HEAD" || c.res.headers.has("content-length") || !c.res.body) return;
    const body = await c.res.arrayBuffer();
    const res = new Response(body, c.res);
    res.headers.set("content-length", String(body.byteLength));
    c.res = undefined;
    c.res = res;
  });
  app.get("/healthz", async (c) => {
    try {
      await deps.healthCheck();
      return c.json({
        status: "ok",
        isolate: deps.isolateId,
        connections: deps.metrics.openConnections,
        ...(deps.peers ? { peers: deps.peers() } : {}),
      });
    } catch (err) {
      return c.json({ status: "error", message: (err as Error).message }, 503);
    }
  });
  app.get(
    "/metrics",
    async (c) =>
      c.body((await (deps.gatherMetrics?.() ?? ownMetrics(deps))) + renderProcessMetrics(), 200, {
        "content-type": "text/plain; version=0.0.4; charset=utf-8",
      }),
  );
  if (deps.api) {
    // The chat-rooms document links its API's description at `/swagger/` (a Django backend's
    // drf-yasg page): it finds ours there. Relative, so that behind a proxy serving the server
    // under PUBLIC_URL's path the browser stays under it.
    app.get("/swagger/", (c) => c.redirect("../api/openapi.json", 302));
    app.get("/swagger", (c) => c.redirect("api/openapi.json", 302));
    app.route("/", deps.api);
  }
  mountMedia(app, deps.media);
  return app;
}

/** Finds the WebSocket route for a request path. */
export function matchWsRoute(
  routes: WsRoute[],
  url: string,
): { route: WsRoute; params: Record<string, string | undefined> } | null {
  for (const route of routes) {
    const match = route.pattern.exec(url);
    if (match) return { route, params: decodeGroups(match.pathname.groups) };
  }
  return null;
}

/**
 * Path parameters percent-decoded, as Django Channels, FastAPI and our REST API route on the
 * decoded path (`/ws/ticket/a%40b/` is ticket `a@b`); a bad escape stays as it came, which no id
 * rule accepts.
 */
function decodeGroups(
  groups: Record<string, string | undefined>,
): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(groups)) {
    try {
      out[name] = value === undefined ? value : decodeURIComponent(value);
    } catch {
      out[name] = value;
    }
  }
  return out;
}
