/** What every dialect gets from the composition root. */

import type { Authenticator } from "../auth/authenticator.ts";
import type { Config } from "../config.ts";
import type { ChatService } from "../core/chat_service.ts";
import type { Metrics } from "../core/metrics.ts";
import type { RateLimiter } from "../core/rate_limiter.ts";
import type { Hub } from "../hub/hub.ts";
import type { Connection, SocketOptions } from "../transport/websocket.ts";

/** Shared services, one set per isolate. */
export interface DialectContext {
  /** Settings. */
  config: Config;
  /** The core commands. */
  chat: ChatService;
  /** Local delivery. */
  hub: Hub;
  /** Token verification. */
  auth: Authenticator;
  /** Counters. */
  metrics: Metrics;
  /** Every open socket of this isolate. */
  connections: Set<Connection>;
  /** Inbound frame budgets per connection and per user. */
  limiter: RateLimiter;
}

/** A WebSocket route: a URL pattern and the handler that upgrades matching requests. */
export interface WsRoute {
  /** Matched against the request URL's path. */
  pattern: URLPattern;
  /** Upgrades (or refuses) the request. */
  handle(req: Request, params: Record<string, string | undefined>): Promise<Response>;
}

const origins = new Map<string, string>();
const MAX_KEPT_ORIGIN = 300;

/** Base of absolute URLs for a request: PUBLIC_URL, else the request's own origin. */
export function baseUrlOf(config: Config, req: Request): string {
  if (config.publicUrl) return config.publicUrl;
  // The origin is a slice of the request's whole URL (token included), which a session would
  // keep alive for as long as it lasts; sessions share one copy per origin instead.
  // Only origins a DNS name fits in are kept: the Host header is the client's to choose.
  const origin = new URL(req.url).origin;
  if (origin.length > MAX_KEPT_ORIGIN) return origin;
  const known = origins.get(origin);
  if (known !== undefined) return known;
  if (origins.size >= 1000) origins.clear();
  // A copy of its own, so the cached string does not keep its request's URL alive either.
  const flat = (" " + origin).slice(1);
  origins.set(flat, flat);
  return flat;
}

/** Largest inbound frame: the biggest attachment in base64 plus room for the JSON around it. */
export function maxFrameSize(config: Config): number {
  return Math.ceil(config.maxFileBytes / 3) * 4 + 64 * 1024;
}

const optionSets = new WeakMap<DialectContext, Map<string, SocketOptions>>();

/**
 * Socket options for a dialect's connections: one shared object per protocol and subprotocol,
 * except for a subprotocol that carries a token (`bearer.<token>`), which is never kept.
 */
export function socketOptions(
  ctx: DialectContext,
  protocol: string,
  subprotocol?: string,
): SocketOptions {
  let sets = optionSets.get(ctx);
  if (!sets) optionSets.set(ctx, sets = new Map());
  const key = subprotocol === undefined
    ? protocol
    : subprotocol.length <= 64 && !subprotocol.startsWith("bearer.")
    ? `${protocol}\n${subprotocol}`
    : undefined;
  const known = key === undefined ? undefined : sets.get(key);
  if (known) return known;
  const options: SocketOptions = {
    protocol,
    maxFrameSize: maxFrameSize(ctx.config),
    maxBufferedBytes: ctx.config.slowConsumerBytes,
    idleTimeout: ctx.config.heartbeatSeconds,
    subprotocol,
    metrics: ctx.metrics,
    registry: ctx.connections,
  };
  // Clients name their subprotocols: a few dozen sets at most are kept.
  if (key !== undefined && sets.size < 64) sets.set(key, options);
  return options;
}
