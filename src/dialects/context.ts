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

/** Base of absolute URLs for a request: PUBLIC_URL, else the request's own origin. */
export function baseUrlOf(config: Config, req: Request): string {
  return config.publicUrl ?? new URL(req.url).origin;
}

/** Largest inbound frame: the biggest attachment in base64 plus room for the JSON around it. */
export function maxFrameSize(config: Config): number {
  return Math.ceil(config.maxFileBytes / 3) * 4 + 64 * 1024;
}

/** Socket options for a dialect's connections. */
export function socketOptions(
  ctx: DialectContext,
  protocol: string,
  subprotocol?: string,
): SocketOptions {
  return {
    protocol,
    maxFrameSize: maxFrameSize(ctx.config),
    maxBufferedBytes: ctx.config.slowConsumerBytes,
    idleTimeout: ctx.config.heartbeatSeconds,
    subprotocol,
    metrics: ctx.metrics,
    registry: ctx.connections,
  };
}
