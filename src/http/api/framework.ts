/**
 * The small framework the admin API is written in: one route table registers the Hono handlers
 * and generates the OpenAPI document, requests and responses are checked against the same zod
 * schemas, bodies are read with a size cap, and every error is JSON `{status, message}`.
 */

import type { Context } from "hono";
import { z } from "zod";
import { isAdminRole } from "../../auth/principal.ts";
import type { Authenticator } from "../../auth/authenticator.ts";
import { KeySetUnavailable } from "../../auth/verifier.ts";
import type { Config } from "../../config.ts";
import type { ChatService } from "../../core/chat_service.ts";
import type { Directory } from "../../core/directory.ts";
import { directoryUnavailable, failureLog } from "../../core/failure_log.ts";
import type { RateLimiter } from "../../core/rate_limiter.ts";
import { timerDelay } from "../../core/time.ts";
import type { Principal, RoomEvent } from "../../core/types.ts";
import { ApiErrorBody } from "./schemas.ts";
import { MultipartNames } from "./multipart_names.ts";

/** What the API's handlers use. */
export interface ApiDeps {
  /** Users, rooms and participants. */
  directory: Directory;
  /** History and sending. */
  chat: ChatService;
  /** Room events (closing and revoking) to every isolate. */
  events: { publish(event: RoomEvent): void };
  /** Token verification, for admin JWTs. */
  auth: Authenticator;
  /** Settings: ADMIN_TOKEN, MAX_FILE_BYTES, PUBLIC_URL. */
  config: Config;
  /** Counts requests by status, for /metrics. */
  counters?: ApiCounters;
  /** The sockets' send limits, applied to ordinary users' uploads too. */
  limiter?: RateLimiter;
  /** True once the server is shutting down: a body cut off then is the server's doing. */
  stopping?: () => boolean;
}

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** Requests served, by method and status. */
export class ApiCounters {
  /** `METHOD status` → count. */
  readonly requests = new Map<string, number>();
  /** Bytes of uploads being read or handled now (bounded by UPLOAD_MEMORY_BYTES). */
  uploadBytes = 0;

  /** Counts one response. */
  count(method: string, status: number): void {
    // The label comes from the request: an unknown method must not add a series per spelling.
    const key = `${KNOWN_METHODS.has(method) ? method : "OTHER"} ${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  /** The counters in Prometheus text format. */
  render(): string {
    const lines = [
      "# HELP chat_api_requests_total Admin API requests by method and status.",
      "# TYPE chat_api_requests_total counter",
    ];
    for (const [key, n] of this.requests) {
      const [method, status] = key.split(" ");
      lines.push(`chat_api_requests_total{method="${method}",status="${status}"} ${n}`);
    }
    lines.push(
      "# HELP chat_api_upload_bytes Bytes of uploads being read or handled (UPLOAD_MEMORY_BYTES bounds them).",
      "# TYPE chat_api_upload_bytes gauge",
      `chat_api_upload_bytes ${this.uploadBytes}`,
    );
    return lines.join("\n") + "\n";
  }
}

/** One field-level problem with a request. */
export interface Issue {
  /** Dotted path of the field (`participants.0.user_id`), empty for the whole value. */
  path: string;
  /** What is wrong. */
  message: string;
}

/** An error answered as JSON `{status, message, code?, issues?}`. */
export class ApiError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** Field-level details of a validation error. */
  readonly issues?: Issue[];
  /** The chat error code (docs/protocol.md), when the refusal is one the sockets share. */
  readonly code?: string;

  /** True when the response should say `Retry-After` (a refusal that passes by itself). */
  readonly retry: boolean;

  /** Creates an error with a status and a client-facing message. */
  constructor(status: number, message: string, issues?: Issue[], code?: string, retry = false) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.issues = issues;
    this.code = code;
    this.retry = retry;
  }
}

/** What a handler answers: a documented status and a body its schema accepts. */
export interface ApiReply {
  /** HTTP status; must be one of the route's documented responses. */
  status: number;
  /** JSON body, checked against the status's schema; none for 204. */
  body?: unknown;
}

/** Who called: the static ADMIN_TOKEN, or a user whose token carries an admin role. */
export type Caller = { kind: "admin_token" } | { kind: "user"; user: Principal };

/** A documented response. */
export interface ResponseSpec {
  /** What it means. */
  description: string;
  /** Body schema (registered in `responseSchemas`); none for an empty body. */
  schema?: z.ZodType;
}

/** HTTP methods the API uses. */
export type Method = "get" | "put" | "post" | "delete";

/** How a route's body arrives. */
export type BodySpec<B extends z.ZodType> =
  | { type: "json"; schema: B }
  | {
    type: "multipart";
    schema: B;
    /** Fields that may repeat and are always passed as arrays (`file`). */
    arrays: string[];
  };

/** What a handler receives, already validated. */
export interface RouteInput<P, Q, B> {
  /** Path parameters. */
  params: P;
  /** Query parameters. */
  query: Q;
  /** The request body. */
  body: B;
  /** The raw request. */
  req: Request;
  /** The authenticated caller (absent on public routes). */
  caller?: Caller;
}

type Empty = z.ZodObject<Record<never, never>>;

/** A route as written: documentation, schemas and handler together. */
export interface RouteSpec<
  P extends z.ZodType = Empty,
  Q extends z.ZodType = Empty,
  B extends z.ZodType = z.ZodUndefined,
> {
  /** HTTP method. */
  method: Method;
  /** Full path in OpenAPI form (`/api/users/{id}`). */
  path: string;
  /** Unique operation name. */
  operationId: string;
  /** One line. */
  summary: string;
  /** Longer explanation. */
  description?: string;
  /** Grouping in the document. */
  tag: string;
  /** True for a route that needs no credentials. */
  public?: boolean;
  /**
   * True for a route any authenticated user may call (not only admins); the handler decides
   * what such a caller may do (e.g. post as themselves in rooms they may enter).
   */
  members?: boolean;
  /** Path parameters (an object schema whose keys match the `{names}` in `path`). */
  params?: P;
  /** Query parameters (an object schema). */
  query?: Q;
  /** Request body. */
  body?: BodySpec<B>;
  /** Responses by status, apart from the generic 400/401/403/500 added for every route. */
  responses: Record<number, ResponseSpec>;
  /**
   * Refuses a request before its body is read (throws an {@link ApiError}): a refusal after
   * reading megabytes of upload would have cost the memory anyway.
   */
  admit?(input: { params: z.output<P>; caller?: Caller }, deps: ApiDeps): Promise<void>;
  /** Handles a validated request. */
  handle(
    input: RouteInput<z.output<P>, z.output<Q>, z.output<B>>,
    deps: ApiDeps,
  ): Promise<ApiReply>;
}

/** A route with its types erased, as the table and the document generator hold it. */
export interface ApiRoute {
  /** HTTP method. */
  method: Method;
  /** Full OpenAPI path. */
  path: string;
  /** Unique operation name. */
  operationId: string;
  /** One line. */
  summary: string;
  /** Longer explanation. */
  description?: string;
  /** Grouping. */
  tag: string;
  /** True when no credentials are needed. */
  public: boolean;
  /** True when any authenticated user may call it. */
  members: boolean;
  /** Path parameter schema. */
  params?: z.ZodType;
  /** Query schema. */
  query?: z.ZodType;
  /** Body. */
  body?: BodySpec<z.ZodType>;
  /** Every documented response, generic ones included. */
  responses: Record<number, ResponseSpec>;
  /** Runs the route for a Hono request. */
  run(c: Context, deps: ApiDeps): Promise<Response>;
}

/** Largest JSON body: a room's participant list of 10 000 entries fits several times over. */
export const MAX_JSON_BYTES = 4 * 1024 * 1024;

/**
 * Room for a multipart body's boundaries, headers and text fields beside the files: an upload
 * is at most MAX_FILE_BYTES of files plus this, so memory per request stays bounded.
 */
export const MULTIPART_OVERHEAD_BYTES = 256 * 1024;

/** Declares a route; its handler's input types follow from the schemas. */
export function defineRoute<
  P extends z.ZodType = Empty,
  Q extends z.ZodType = Empty,
  B extends z.ZodType = z.ZodUndefined,
>(spec: RouteSpec<P, Q, B>): ApiRoute {
  const error = (description: string) => ({ description, schema: ApiErrorBody });
  const responses: Record<number, ResponseSpec> = { ...spec.responses };
  if (spec.params || spec.query || spec.body) {
    responses[400] ??= error("The request is malformed; `issues` says where.");
  }
  if (!spec.public) {
    responses[401] ??= error("No credentials, or neither ADMIN_TOKEN nor a valid token.");
    responses[403] ??= error(
      spec.members
        ? "The caller may not do this in this room."
        : "The token is valid but carries no admin role.",
    );
  }
  if (spec.body?.type === "json") {
    responses[413] ??= error(`The body is over ${MAX_JSON_BYTES} bytes.`);
    responses[415] ??= error("The body is not application/json.");
  }
  if (spec.body?.type === "multipart") {
    responses[415] ??= error("The body is not multipart/form-data.");
    responses[408] ??= error(
      "Nothing of the body arrived for UPLOAD_IDLE_SECONDS, or all of it not within " +
        "UPLOAD_TIMEOUT_SECONDS.",
    );
    responses[429] ??= error("The user already has UPLOADS_PER_USER uploads under way.");
    responses[503] ??= error(
      "Uploads being read on this server already hold UPLOAD_MEMORY_BYTES, or the body was cut " +
        "off (the server stopping); `Retry-After` says when to try again.",
    );
  }
  responses[500] ??= error("Something failed on the server; it is logged.");
  responses[503] ??= error(
    spec.public
      ? "The directory does not answer, or the server is shutting down; `Retry-After` says " +
        "when to try again."
      : "The directory, or the key set that checks tokens (JWT_JWKS_URL), does not answer, or " +
        "the server is shutting down (a message it refused was not stored); `Retry-After` " +
        "says when to try again.",
  );

  const run = async (c: Context, deps: ApiDeps): Promise<Response> => {
    const req = c.req.raw;
    let response: Response;
    try {
      const caller = spec.public ? undefined : await authenticate(req, deps, spec.members ?? false);
      const params = validate(spec.params, c.req.param(), "path parameters");
      const query = validate(spec.query, queryObject(req), "query");
      let body: unknown = undefined;
      let release = () => {};
      try {
        const cap = deps.config.maxFileBytes + MULTIPART_OVERHEAD_BYTES;
        if (spec.body?.type === "multipart") {
          requireMultipart(req);
          // Before `admit`: a client told to come back later has not spent its send allowance.
          // Held until the handler is done with the files (written, or refused).
          release = holdUpload(req, cap, deps, caller);
        }
        await spec.admit?.({ params: params as z.output<P>, caller }, deps);
        if (spec.body?.type === "json") {
          body = validate(spec.body.schema, await readJson(req, deps.stopping), "body");
        } else if (spec.body?.type === "multipart") {
          const form = await readMultipart(req, cap, deps.config, deps.stopping);
          body = validate(spec.body.schema, formObject(form, spec.body.arrays), "form");
        }
        const reply = await spec.handle(
          {
            params: params as z.output<P>,
            query: query as z.output<Q>,
            body: body as z.output<B>,
            req,
            caller,
          },
          deps,
        );
        response = render(spec, responses, reply);
      } finally {
        release();
      }
    } catch (err) {
      response = errorResponse(err, `${spec.method.toUpperCase()} ${spec.path}`);
    }
    deps.counters?.count(spec.method.toUpperCase(), response.status);
    return response;
  };

  return {
    method: spec.method,
    path: spec.path,
    operationId: spec.operationId,
    summary: spec.summary,
    description: spec.description,
    tag: spec.tag,
    public: spec.public ?? false,
    members: spec.members ?? false,
    params: spec.params,
    query: spec.query,
    body: spec.body as BodySpec<z.ZodType> | undefined,
    responses,
    run,
  };
}

/** A JSON error response. */
export function errorJson(
  status: number,
  message: string,
  issues?: Issue[],
  code?: string,
): Response {
  const headers: Record<string, string> = { "content-type": "application/json; charset=utf-8" };
  if (status === 401) headers["www-authenticate"] = 'Bearer realm="chat-admin"';
  const body = { status, message, ...(code ? { code } : {}), ...(issues ? { issues } : {}) };
  return new Response(JSON.stringify(body), { status, headers });
}

function errorResponse(err: unknown, where: string): Response {
  if (err instanceof ApiError) {
    const response = errorJson(err.status, err.message, err.issues, err.code);
    if (err.status === 503 || err.retry) response.headers.set("retry-after", "1");
    return response;
  }
  if (err instanceof KeySetUnavailable) {
    // A token that could not be checked is not a bad one (401 would say so); the verifier has
    // logged the outage once, not once per request.
    const newKey = err.reason === "new_key";
    const response = errorJson(
      503,
      newKey
        ? "Tokens cannot be checked now: the token's key is not in the key set (JWT_JWKS_URL) " +
          "fetched a moment ago, which is fetched again at the next try; try again shortly"
        : "Tokens cannot be checked now: the key set (JWT_JWKS_URL) does not answer; try again " +
          "shortly",
    );
    response.headers.set("retry-after", newKey ? "1" : "5");
    return response;
  }
  // Once per outage of a store, a few times a minute per message otherwise: a directory that
  // does not answer fails every request.
  failureLog.failed(`api: ${where} failed`, err);
  if (conflicted(err)) {
    // The directory ran the write again already (KyselyDirectory); nothing of it stayed, and a
    // client that sends it again shortly will most likely get through.
    const response = errorJson(
      503,
      "The directory was busy with a conflicting change; try again shortly",
    );
    response.headers.set("retry-after", "1");
    return response;
  }
  if (directoryUnavailable(err)) {
    // The store is down or overloaded, not the request wrong: a client should come back later.
    const response = errorJson(503, "The directory does not answer; try again shortly");
    response.headers.set("retry-after", "5");
    return response;
  }
  return errorJson(500, "Internal server error");
}

/**
 * True for a directory write that Postgres kept aborting as a deadlock's victim (40P01) or for a
 * serialization failure (40001), even when tried again.
 */
function conflicted(err: unknown): boolean {
  const { code } = (err ?? {}) as { code?: unknown };
  return code === "40P01" || code === "40001";
}

function render(
  spec: { method: Method; path: string },
  responses: Record<number, ResponseSpec>,
  reply: ApiReply,
): Response {
  const documented = responses[reply.status];
  if (!documented) {
    throw new Error(`${spec.method} ${spec.path} answered undocumented status ${reply.status}`);
  }
  if (!documented.schema) return new Response(null, { status: reply.status });
  // Parsing also drops any field the schema does not list, so nothing leaks by accident.
  const checked = documented.schema.safeParse(reply.body);
  if (!checked.success) {
    throw new Error(
      `${spec.method} ${spec.path} produced a ${reply.status} body its schema refuses: ` +
        z.prettifyError(checked.error),
    );
  }
  return new Response(JSON.stringify(checked.data), {
    status: reply.status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

/** Parses with `schema`, or throws a 400 naming every bad field. */
function validate(schema: z.ZodType | undefined, value: unknown, what: string): unknown {
  if (!schema) return undefined;
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((i) => ({
    path: i.path.map(String).join("."),
    message: i.message,
  }));
  const first = issues[0];
  throw new ApiError(
    400,
    `Invalid ${what}: ${first.path ? `"${first.path}" ` : ""}${first.message.toLowerCase()}` +
      (issues.length > 1 ? ` (and ${issues.length - 1} more)` : ""),
    issues,
  );
}

/** The query string as an object; a parameter given twice is refused (none takes a list). */
function queryObject(req: Request): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of new URL(req.url).searchParams) {
    if (Object.hasOwn(out, key)) {
      const message = "given more than once";
      throw new ApiError(400, `Invalid query: "${key}" ${message}`, [{ path: key, message }]);
    }
    out[key] = value;
  }
  return out;
}

/**
 * Who is calling: ADMIN_TOKEN, or a JWT with an admin role (any valid JWT with `members`);
 * throws 401 or 403 otherwise.
 */
async function authenticate(req: Request, deps: ApiDeps, members: boolean): Promise<Caller> {
  const header = req.headers.get("authorization");
  const token = header?.match(/^Bearer\s+(\S+)\s*$/i)?.[1];
  if (!token) throw new ApiError(401, "Authorization: Bearer <token> is required");
  const adminToken = deps.config.adminToken;
  if (adminToken !== undefined && await sameSecret(token, adminToken)) {
    return { kind: "admin_token" };
  }
  const user = await deps.auth.authenticate(token);
  if (!user) throw new ApiError(401, "The token is not ADMIN_TOKEN and not a valid token");
  if (!members && !isAdminRole(user.role)) {
    throw new ApiError(403, `User "${user.id}" has role "${user.role ?? "none"}", not admin`);
  }
  return { kind: "user", user };
}

/** Compares two secrets in time that does not depend on where they differ. */
async function sameSecret(a: string, b: string): Promise<boolean> {
  const digest = async (s: string) =>
    new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  const [x, y] = await Promise.all([digest(a), digest(b)]);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

/**
 * Reads a request body, refusing with 413 as soon as it passes `cap` bytes: a declared
 * Content-Length over the cap is refused before reading, and a chunked body is cut off. A body
 * that stops before its end is refused with 400, or, cut off by the server stopping (`stopping`
 * says so), with a retryable 503.
 */
export async function readCapped(
  req: Request,
  cap: number,
  what: string,
  stopping?: () => boolean,
): Promise<Uint8Array<ArrayBuffer>> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > cap) {
    throw new ApiError(413, `${what} is too large: ${declared} bytes, the limit is ${cap} bytes`);
  }
  if (!req.body) return new Uint8Array();
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  while (true) {
    let read: ReadableStreamReadResult<Uint8Array>;
    try {
      read = await reader.read();
    } catch (err) {
      // The connection went (the client's, or the server's shutdown): no failure of the server,
      // so neither a 500 nor a stack trace in the log.
      if (stopping?.()) {
        throw new ApiError(
          503,
          `${what} was cut off before its end by the server restarting: send it again`,
          undefined,
          undefined,
          true,
        );
      }
      throw new ApiError(400, `${what} ended before its end: ${(err as Error).message}`);
    }
    const { done, value } = read;
    if (done) break;
    total += value.length;
    if (total > cap) {
      await reader.cancel().catch(() => {});
      throw new ApiError(413, `${what} is too large: over ${cap} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

async function readJson(req: Request, stopping?: () => boolean): Promise<unknown> {
  const type = req.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type)) {
    throw new ApiError(415, `Expected Content-Type application/json, got "${type}"`);
  }
  const bytes = await readCapped(req, MAX_JSON_BYTES, "Body", stopping);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "Body is not valid UTF-8");
  }
  if (text.trim() === "") throw new ApiError(400, "A JSON body is required");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, `Body is not valid JSON: ${(err as Error).message}`);
  }
}

/** Uploads being read or handled on this isolate: their bytes, against the bound, and by user. */
interface UploadBudget {
  used: number;
  limit: number;
  byUser: Map<string, number>;
}

const uploads = new WeakMap<ApiDeps, UploadBudget>();

function uploadsOf(deps: ApiDeps): UploadBudget {
  let budget = uploads.get(deps);
  if (!budget) {
    budget = { used: 0, limit: uploadMemoryBytes(deps.config), byUser: new Map() };
    uploads.set(deps, budget);
  }
  return budget;
}

/**
 * The bytes of upload bodies one isolate reads and handles at once: UPLOAD_MEMORY_BYTES, by
 * default four of the largest, never under one.
 */
export function uploadMemoryBytes(config: Config): number {
  const largest = config.maxFileBytes + MULTIPART_OVERHEAD_BYTES;
  return Math.max(config.uploadMemoryBytes ?? 4 * largest, largest);
}

/**
 * Counts an upload's bytes (as declared, or the most it may be) against the isolate's bound, or
 * refuses it with 503: each upload is held in memory several times over while it is parsed and
 * written, and uploads at once were unbounded. An ordinary user past UPLOADS_PER_USER uploads
 * under way is refused with 429, so that one client cannot hold the whole bound with slow
 * uploads. Returns what gives both back.
 */
function holdUpload(req: Request, cap: number, deps: ApiDeps, caller?: Caller): () => void {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  // Over the cap: refused with 413 before a byte is read.
  if (declared > cap) return () => {};
  const budget = uploadsOf(deps);
  const user = caller?.kind === "user" && !isAdminRole(caller.user.role)
    ? String(caller.user.id)
    : undefined;
  const perUser = deps.config.uploadsPerUser;
  if (user !== undefined && (budget.byUser.get(user) ?? 0) >= perUser) {
    throw new ApiError(
      429,
      `Too many uploads at once: at most ${perUser} per user; try again when one is done`,
      undefined,
      "rate_limited",
      true,
    );
  }
  const bytes = Number.isFinite(declared) && declared >= 0 ? declared : cap;
  if (budget.used > 0 && budget.used + bytes > budget.limit) {
    throw new ApiError(503, "Too many uploads are being read at once: try again shortly");
  }
  budget.used += bytes;
  if (user !== undefined) budget.byUser.set(user, (budget.byUser.get(user) ?? 0) + 1);
  if (deps.counters) deps.counters.uploadBytes = budget.used;
  return () => {
    budget.used -= bytes;
    if (user !== undefined) {
      const left = (budget.byUser.get(user) ?? 1) - 1;
      if (left > 0) budget.byUser.set(user, left);
      else budget.byUser.delete(user);
    }
    if (deps.counters) deps.counters.uploadBytes = budget.used;
  };
}

/** Refuses with 415 a body that is not multipart/form-data; returns its content type. */
function requireMultipart(req: Request): string {
  const type = req.headers.get("content-type") ?? "";
  if (!/^multipart\/form-data\s*;/i.test(type)) {
    throw new ApiError(415, `Expected Content-Type multipart/form-data, got "${type}"`);
  }
  return type;
}

/**
 * Bytes an upload must bring within each two UPLOAD_IDLE_SECONDS: any real connection does (it
 * is 0.4 KB/s at the default 20 s), and one that drips a byte at a time is ended instead of
 * holding its share of UPLOAD_MEMORY_BYTES until UPLOAD_TIMEOUT_SECONDS.
 */
const UPLOAD_PROGRESS_BYTES = 16 * 1024;

/**
 * Reads a multipart body of at most `cap` bytes; a single file over `maxFileBytes` is refused
 * with 413 naming it. The bounded buffer is parsed by the platform's FormData parser.
 */
async function readMultipart(
  req: Request,
  cap: number,
  config: Config,
  stopping?: () => boolean,
): Promise<FormData> {
  const type = requireMultipart(req);
  const maxFileBytes = config.maxFileBytes;
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > cap) {
    throw new ApiError(413, `Upload is too large: ${declared} bytes, the limit is ${cap} bytes`);
  }
  // Streamed into the parser through a counter, not gathered into one more copy first. An upload
  // that stops arriving is ended: it holds its share of UPLOAD_MEMORY_BYTES while it waits.
  const idleMs = config.uploadIdleSeconds * 1000;
  let total = 0;
  let sinceProgress = 0;
  let silent = false;
  let stalled = false;
  // Nothing at all for a period (reset by every chunk), told apart from a drip (reset by 16 KiB).
  let quiet: ReturnType<typeof setTimeout> | undefined;
  const onQuiet = () => {
    silent = true;
    onIdle();
  };
  let overdue = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let deadline: ReturnType<typeof setTimeout> | undefined;
  let onIdle = () => {};
  // A read of the body that fails (the server stopping, the connection gone) is not the client's
  // malformed form: told apart from the parser's errors, it is answered as a retryable 503.
  let cutOff = false;
  // The platform's parser takes a body that stops after a complete part as the whole form: a
  // truncated upload would be stored without its later files and fields (a client_id among
  // them). The scan of the parts' headers also says whether the closing delimiter came.
  const boundary = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(type);
  const boundaryText = boundary?.[1] ?? boundary?.[2] ?? "";
  // RFC 2046's bound: a longer one only makes every byte of the body cost more to scan.
  if (boundaryText.length > 70 || /[\r\n]/.test(boundaryText)) {
    throw new ApiError(
      400,
      "Body is not valid multipart/form-data: its boundary must be 1 to 70 characters",
    );
  }
  const names = new MultipartNames(boundaryText);
  const reader = req.body?.getReader();
  const source = reader && new ReadableStream<Uint8Array>({
    async pull(controller) {
      let read: ReadableStreamReadResult<Uint8Array>;
      try {
        read = await reader.read();
      } catch (err) {
        cutOff = true;
        return controller.error(err);
      }
      if (read.done) controller.close();
      else controller.enqueue(read.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
  const counted = source?.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      start(controller) {
        onIdle = () => {
          stalled = true;
          controller.error(new RangeError("stalled"));
        };
        timer = setTimeout(onIdle, timerDelay(2 * idleMs));
        quiet = setTimeout(onQuiet, timerDelay(idleMs));
        // The whole body has an end too, however it flows.
        deadline = setTimeout(() => {
          overdue = true;
          controller.error(new RangeError("overdue"));
        }, timerDelay(config.uploadTimeoutSeconds * 1000));
      },
      transform(chunk, controller) {
        clearTimeout(quiet);
        quiet = setTimeout(onQuiet, timerDelay(idleMs));
        total += chunk.length;
        // Erroring here cancels the request body: nothing more is read.
        if (total > cap) return controller.error(new RangeError("over the cap"));
        controller.enqueue(chunk);
        names.push(chunk);
        // A byte now and then is not progress: a body that drips holds its share of
        // UPLOAD_MEMORY_BYTES (its declared length) as long as a flowing one.
        sinceProgress += chunk.length;
        if (sinceProgress >= UPLOAD_PROGRESS_BYTES) {
          sinceProgress = 0;
          clearTimeout(timer);
          timer = setTimeout(onIdle, timerDelay(2 * idleMs));
        }
      },
      flush() {
        clearTimeout(timer);
        clearTimeout(quiet);
        clearTimeout(deadline);
      },
    }),
  );
  let form: FormData;
  try {
    form = await new Response(counted ?? null, { headers: { "content-type": type } }).formData();
  } catch (err) {
    if (total > cap) throw new ApiError(413, `Upload is too large: over ${cap} bytes`);
    if (stalled) {
      throw new ApiError(
        408,
        silent
          ? `Upload stalled: nothing arrived for ${config.uploadIdleSeconds} s`
          : `Upload stalled: less than 16 KiB arrived in ${2 * config.uploadIdleSeconds} s`,
      );
    }
    if (overdue) {
      throw new ApiError(
        408,
        `Upload too slow: not all of it arrived within ${config.uploadTimeoutSeconds} s`,
      );
    }
    if (cutOff && stopping?.()) {
      throw new ApiError(
        503,
        "The upload was cut off before its end by the server restarting: send it again",
        undefined,
        undefined,
        true,
      );
    }
    if (cutOff) {
      throw new ApiError(400, `The upload's body ended before its end: ${(err as Error).message}`);
    }
    throw new ApiError(400, `Body is not valid multipart/form-data: ${(err as Error).message}`);
  } finally {
    clearTimeout(timer);
    clearTimeout(quiet);
    clearTimeout(deadline);
  }
  if (!names.ended) {
    throw new ApiError(
      400,
      "Body is not valid multipart/form-data: it ends before its closing boundary (cut off?)",
    );
  }
  form = renamed(form, names);
  for (const value of form.values()) {
    if (typeof value !== "string" && value.size > maxFileBytes) {
      throw new ApiError(
        413,
        `File "${value.name}" is too large: ${value.size} bytes, the limit is ${maxFileBytes} bytes`,
        undefined,
        "file_too_large",
      );
    }
  }
  return form;
}

/**
 * The form with the names its parts' headers give (see {@link MultipartNames}), where they were
 * all read and there is one for every entry; else as the platform's parser named them.
 */
function renamed(form: FormData, names: MultipartNames): FormData {
  const entries = [...form.entries()];
  const parts = names.parts;
  if (!names.complete || parts.length !== entries.length) return form;
  const same = entries.every(([name, value], i) =>
    parts[i].name === name && (typeof value === "string" || parts[i].filename === value.name)
  );
  if (same) return form;
  const out = new FormData();
  for (const [i, [name, value]] of entries.entries()) {
    const part = parts[i];
    if (typeof value === "string") out.append(part.name ?? name, value);
    else {
      const file = part.filename === undefined || part.filename === value.name
        ? value
        : new File([value], part.filename, { type: value.type, lastModified: value.lastModified });
      out.append(part.name ?? name, file);
    }
  }
  return out;
}

/** Form fields as an object: `arrays` fields always as arrays, others as a single value. */
function formObject(form: FormData, arrays: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of new Set(form.keys())) {
    const values = form.getAll(key);
    out[key] = arrays.includes(key) || values.length > 1 ? values : values[0];
  }
  return out;
}
