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

/** Base of absolute URLs for a request: PUBLIC_URL, else the request's own origin. */
export function baseUrlOf(config: Config, req: Request): string {
  if (config.publicUrl) return config.publicUrl;
  // The origin is a slice of the request's whole URL (token included), which a session would
  // keep alive for as long as it lasts; sessions share one copy per origin instead.
  const origin = new URL(req.url).origin;
  const known = origins.get(origin);
  if (known !== undefined) return known;
  if (origins.size >= 1000) origins.clear();
  const flat = [...origin].join("");
  origins.set(flat, flat);
  return flat;
}

/** Largest inbound frame: the biggest attachment in base64 plus room for the JSON around it. */
export function maxFrameSize(config: Config): number {
  return Math.ceil(config.maxFileBytes / 3) * 4 + 64 * 1024;
}

const optionSets = new WeakMap<DialectContext, Map<string, SocketOptions>>();

/** Socket options for a dialect's connections, one shared object per protocol and subprotocol. */
export function socketOptions(
  ctx: DialectContext,
  protocol: string,
  subprotocol?: string,
): SocketOptions {
  let sets = optionSets.get(ctx);
  if (!sets) optionSets.set(ctx, sets = new Map());
  // A subprotocol may be a client's token (Sec-WebSocket-Protocol auth): those are not kept.
  const key = subprotocol === undefined ? protocol : undefined;
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
  if (key !== undefined) sets.set(key, options);
  return options;
}
