/** Composition root: read the config, open the stores, wire the dialects, serve. */

import { dirname, resolve } from "node:path";
import { DirectoryAccessPolicy, directoryProfileEnricher } from "./src/auth/directory_access.ts";
import { Authenticator } from "./src/auth/authenticator.ts";
import {
  createVerifier,
  devSecretPath,
  ensureDevSecret,
  keySetCachePath,
  type KeySetState,
  KeySetUnavailable,
} from "./src/auth/verifier.ts";
import { BroadcastChannelBroker } from "./src/broker/broadcast_channel_broker.ts";
import { InstanceRegistry, SharedOnlyBroker } from "./src/broker/instance_registry.ts";
import { KvRoomEvents } from "./src/broker/kv_room_events.ts";
import { isSignal, KvRoomSignals, type PresenceWatch } from "./src/broker/kv_room_signals.ts";
import { KvHeadWatcher, LOCAL_HEAD_POLL_MS } from "./src/broker/kv_head_watcher.ts";
import { type Poll, pollEvery } from "./src/broker/poll.ts";
import { type Config, isLocalPath, jwtKeySources, loadConfig, urlHost } from "./src/config.ts";
import { ChatService } from "./src/core/chat_service.ts";
import { ServerStopping, StorageShort } from "./src/core/errors.ts";
import { answeringDirectory, failureLog } from "./src/core/failure_log.ts";
import { Metrics } from "./src/core/metrics.ts";
import { RateLimiter } from "./src/core/rate_limiter.ts";
import { pollUntil } from "./src/core/time.ts";
import { UserSockets } from "./src/core/user_sockets.ts";
import { nativeRoute } from "./src/dialects/native/native.ts";
import {
  type AccessPolicy,
  type Broker,
  isEviction,
  type Message,
  type PendingFiles,
  type PresenceStore,
  type RoomEvent,
} from "./src/core/types.ts";
import type { Directory } from "./src/core/directory.ts";
import {
  type DialectContext,
  socketMaxFileBytes,
  socketOriginAllowed,
  type WsRoute,
} from "./src/dialects/context.ts";
import { ticketSocketRoute } from "./src/dialects/ticket_socket/ticket_socket.ts";
import { conversationChatRoute } from "./src/dialects/conversation_chat/conversation_chat.ts";
import { chatRoomsRoute } from "./src/dialects/chat_rooms/chat_rooms.ts";
import { serviceChatRoutes } from "./src/dialects/service_chats/service_chats.ts";
import {
  createSocketIoTicketChat,
  socketIoBusy,
  socketIoTakeNoMore,
} from "./src/dialects/socketio_ticket/socketio_ticket.ts";
// Pages written for the Node server load the client from it: `<script src="/socket.io/socket.io.js">`.
import socketIoClientBundle from "socket.io-client/dist/socket.io.js" with { type: "text" };
import type { SocketIOServer } from "./src/engine_io/mod.ts";
import { createHttpApp, type HttpDeps, matchWsRoute, ownMetrics } from "./src/http/app.ts";
import { MetricsExchange } from "./src/http/metrics_exchange.ts";
import { PROC_REFUSED_NOTE, procRefused, renderFamily } from "./src/http/process_metrics.ts";
import { mountWeb } from "./src/http/web_routes.ts";
import { ApiCounters, createApi } from "./src/http/api/mod.ts";
import { openDirectory, parseDatabaseUrl, redactDatabaseUrl } from "./src/directory/open.ts";
import {
  commitRetryingLocks,
  isStorageError,
  openKvWaitingOutLocks,
} from "./src/store/kv_reads.ts";
import { Hub } from "./src/hub/hub.ts";
import { MediaAttachmentStore } from "./src/media/attachments.ts";
import { LocalMediaStore } from "./src/media/local_media_store.ts";
import { KvMessageStore } from "./src/store/kv_message_store.ts";
import { KvPresenceStore } from "./src/store/kv_presence_store.ts";
import { KvPresenceSweeper } from "./src/store/kv_presence_sweeper.ts";
import { SpaceReserve } from "./src/store/space_reserve.ts";
import { closesAnswered } from "./src/transport/close_when_quiet.ts";
import { FrameBudget } from "./src/transport/frame_budget.ts";
import type { Connection } from "./src/transport/websocket.ts";
import { CLOSE } from "./src/transport/websocket.ts";

/** A wired server without a listener: a fetch handler and a way to shut it down. */
export interface App {
  /** Handles one HTTP request or WebSocket upgrade. */
  fetch(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response>;
  /**
   * Refuses new sockets and waits, up to 2 s, until the frames being handled are answered, then
   * takes no more frames, gives the sends taken 1 s more, and refuses those still waiting for a
   * commit, and gives their replies (long-polling clients' next GETs among them) up to half a
   * second: the first step of {@link close}, and to run before a listener's own shutdown closes
   * the sockets or refuses those GETs.
   */
  drain(): Promise<void>;
  /**
   * Drains, closes the sockets with 1001 (Socket.IO's without a code) and waits, up to half a
   * second, for their peers to answer: to run before a listener's own shutdown, which drops every
   * upgraded socket at once.
   */
  closeSockets(): Promise<void>;
  /** Drains, closes sockets with 1001, flushes pending commits and closes the stores. */
  close(): Promise<void>;
  /** The shared services, for tests and tools. */
  context: DialectContext;
  /** The secret tokens are signed with in development, when no key is configured. */
  devSecret?: string;
  /** The Socket.IO server of the ticket chat. */
  io: SocketIOServer;
}

/** Optional replacements for tests: another broker (e.g. no BroadcastChannel) or KV handle. */
export interface AppOverrides {
  /** Broker to use instead of the per-room BroadcastChannel. */
  broker?: Broker;
  /** Log function for start-up notes. */
  log?: (line: string) => void;
  /** Relay Socket.IO polling between isolates (`deno serve --parallel`). */
  socketIoRelay?: boolean;
  /** Wraps the KV handle (tests hold a commit's answer back to race a stop). */
  kv?: (kv: Deno.Kv) => Deno.Kv;
  /** Wraps the presence store (tests slow it down to hold a race open). */
  presence?: (store: PresenceStore) => PresenceStore;
  /** Wraps the access policy (tests hold a check open to race it). */
  access?: (policy: AccessPolicy) => AccessPolicy;
  /** Wraps the directory (tests make its reads fail at a chosen moment). */
  directory?: (directory: Directory) => Directory;
  /** Wraps the record of sends' files (tests hold a send where a crash would cut it). */
  pending?: (pending: PendingFiles) => PendingFiles;
  /** How often the media directory is swept for files a crash left (tests shorten it). */
  mediaSweepMs?: number;
  /** How long the hub lets the broker bring a commit the head watch saw (tests hold it back). */
  catchUpDelayMs?: number;
}

/** How long a shutdown waits for frames being handled to be answered, still taking new ones. */
const SHUTDOWN_DRAIN_MS = 2000;
/** How long after that the sends taken already may still commit before the rest are refused. */
const SHUTDOWN_QUEUE_MS = 1000;
/** How long the sockets then stay open for the refusals and the last commit's replies. */
const SHUTDOWN_REPLY_MS = 500;
/** How long the sockets closed with 1001 then wait for their peers to answer the close. */
const SHUTDOWN_CLOSE_MS = 500;
/**
 * By when, from the start of a shutdown, the work still under way (sends writing their files,
 * presence updates) must end before the stores close, leaving the rest of the 5 s to them.
 */
const SHUTDOWN_WORK_MS = 4000;
/**
 * How long, past that, a presence commit under way may take to end, so that its users' leaves
 * are written with the rest; within the second left before {@link SHUTDOWN_FALLBACK_MS}.
 */
const SHUTDOWN_PRESENCE_MS = 500;
/** How long HTTP exchanges still under way once the stores are closed may go on. */
export const SHUTDOWN_HTTP_GRACE_MS = 500;
/** By when, from the signal, a stop that has not ended exits with 1 (a failed stop). */
export const SHUTDOWN_FALLBACK_MS = 5000;

/** The KV key of the lease that lets one server sweep MEDIA_DIR's half-written files. */
const MEDIA_SWEEP_KEY = ["media_sweep"];
/** How often each server tries to sweep MEDIA_DIR (one sweep's lease holds off the others for half). */
const MEDIA_SWEEP_MS = 10 * 60_000;

/**
 * The Retry-After of a socket refused for now (a shutdown, a directory or key set that does not
 * answer; jose waits 5 s for the key set).
 */
const RETRY_AFTER_SECONDS = 5;

/** A 503 for a handshake the server cannot take now, saying when to try again. */
const unavailable = (text: string) =>
  new Response(text, { status: 503, headers: { "retry-after": String(RETRY_AFTER_SECONDS) } });

/** How long a health probe's answer stands: the probe writes, and `/healthz` is public. */
const HEALTH_PROBE_MS = 1000;
/** How long one store may take to answer the health check before it counts as failed. */
const HEALTH_STEP_MS = 3000;

/** How often servers sharing a local KV file read the registry (a watch sees no other process). */
const REGISTRY_POLL_MS = 1000;

/** An error message without the paths it names (`: mkdir '/data/media'`), for public answers. */
const withoutPaths = (text: string) => text.replace(/:\s*\w*\s*['"]?\/.*$/s, "");

const message = (err: unknown) => err instanceof Error ? err.message : String(err);

/**
 * What follows SQLite's words when a store's `file` could not be opened for want of space or
 * write access: "disk I/O error" reads like failing hardware, but a database in WAL mode cannot
 * even be opened without creating its `-shm` file beside it. "Unable to open" is also what a
 * missing directory gets, which needs no such hint.
 */
async function storageHint(
  err: unknown,
  file: string | undefined,
  dataDir: string,
): Promise<string> {
  if (file === undefined) return "";
  const dir = dirname(resolve(file));
  const cannotOpen = /unable to open database file/i.test(message(err)) &&
    await Deno.stat(dir).then((s) => s.isDirectory, () => false);
  if (!isStorageError(err) && !cannotOpen) return "";
  const where = dir === resolve(dataDir) ? `DATA_DIR (${dataDir})` : `its directory (${dir})`;
  return `; ${where} may be full or not writable (SQLite creates files beside the database ` +
    "even to open it)";
}

/**
 * The isolate's open connections; once told to take no more frames (a shutdown's drain), so is
 * every connection that opens after (its upgrade was under way when the drain began).
 */
class ConnectionRegistry extends Set<Connection> {
  #takingNoMore = false;

  /** Adds a connection, which takes no more frames if the registry said so already. */
  override add(conn: Connection): this {
    if (this.#takingNoMore) conn.takeNoMore();
    return super.add(conn);
  }

  /** Tells every connection, open now or later, to drop the frames that arrive from now on. */
  takeNoMore(): void {
    this.#takingNoMore = true;
    for (const conn of this) conn.takeNoMore();
  }
}

/** Opens the stores and wires every seam for one isolate. */
export async function buildApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const log = overrides.log ?? ((line: string) => console.log(line));
  // Owner only when it is new: it holds every message, the directory and the dev secret.
  await Deno.mkdir(config.dataDir, { recursive: true, mode: 0o700 }).catch((err) => {
    throw new Error(`DATA_DIR (${config.dataDir}) is not a usable directory: ${message(err)}`);
  });
  // An operator's own directory is not changed behind their back, but they are told.
  const dataMode = ((await Deno.stat(config.dataDir)).mode ?? 0) & 0o777;
  if ((dataMode & 0o077) !== 0) {
    log(
      `DATA_DIR (${config.dataDir}) can be read by other users (mode ${dataMode.toString(8)}): ` +
        "it holds every message; chmod 700 it unless that is meant",
    );
  }
  const media = new LocalMediaStore(config.mediaDir);
  // Started on one, the server would refuse every file for as long as it runs; a full volume, or
  // one not mounted yet, is left to the health check, as it may take files later.
  await media.checkUsable().catch((err) => {
    throw new Error(`MEDIA_DIR (${config.mediaDir}) is not a usable directory: ${message(err)}`);
  });
  // The stores' files that this start creates are made owner-only (see `ownerOnly`); a
  // DATABASE_URL that names no database is reported when the directory opens, below.
  const sqliteTarget = (() => {
    try {
      return parseDatabaseUrl(config.databaseUrl, config.dataDir);
    } catch {
      return undefined;
    }
  })();
  const sqlitePath = sqliteTarget?.dialect === "sqlite" && isLocalPath(sqliteTarget.path)
    ? sqliteTarget.path
    : undefined;
  const kvPath = isLocalPath(config.kvPath) ? config.kvPath : undefined;
  const [newSqlite, newKv] = await Promise.all([missing(sqlitePath), missing(kvPath)]);
  let devSecret: string | undefined;
  let secret = config.jwtSecret;
  if (!secret && !config.jwtPublicKey && !config.jwtJwksUrl) {
    const dev = await ensureDevSecret(config.dataDir);
    secret = devSecret = dev.secret;
    if (dev.replaced) {
      log(
        `No JWT key configured: ${devSecretPath(config.dataDir)} was empty, left by a start ` +
          "that failed before writing it: wrote a new development secret there",
      );
    } else if (dev.created) {
      log(`No JWT key configured: created a development secret in ${config.dataDir}`);
    }
  }
  // The verifier takes the first of these that is set: a secret kept through a move to a public
  // key would otherwise look in use, and tokens signed with it be refused without a word.
  const keySources = jwtKeySources(config);
  if (keySources.length > 1) {
    const [used, ...ignored] = keySources;
    log(
      `${ignored.join(" and ")} ${ignored.length > 1 ? "are" : "is"} ignored: ${used} is set, ` +
        "and tokens are checked with it only",
    );
  }
  // Kept for the upload route, which reads HTTP bodies of any size; a socket frame past what
  // Deno reads of one message would only be dropped with the connection.
  if (config.maxFileBytes > socketMaxFileBytes(config)) {
    log(
      `MAX_FILE_BYTES (${config.maxFileBytes}) is more than one WebSocket message carries (Deno ` +
        `reads 64 MiB): sockets take files up to ${socketMaxFileBytes(config)} bytes, larger ` +
        "ones only the upload route (POST /api/rooms/{kind}/{id}/attachments)",
    );
  }
  const verifier = await createVerifier({
    secret,
    publicKey: config.jwtPublicKey,
    jwksUrl: config.jwtJwksUrl,
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    keySetCachePath: keySetCachePath(config.dataDir),
  });

  // What the failure log prints may quote a driver's error, and with it the URL's password.
  const { databaseUrl } = config;
  if (databaseUrl) failureLog.redactWith((text) => redactDatabaseUrl(text, databaseUrl));
  const opened = await openDirectory(config.databaseUrl, config.dataDir, {
    poolMax: config.databasePoolMax,
    timeoutMs: config.databaseTimeoutMs,
  }).catch(async (err) => {
    // Its own checks of the URL already name it.
    if (message(err).startsWith("DATABASE_URL")) throw err;
    const which = config.databaseUrl ? "DATABASE_URL" : "The directory's SQLite file in DATA_DIR";
    const hint = await storageHint(err, sqlitePath, config.dataDir);
    // The driver's own words may quote the URL, password included.
    const why = redactDatabaseUrl(message(err), config.databaseUrl);
    throw new Error(`${which}: the directory could not be opened: ${why}${hint}`);
  });
  // Its answers end a directory outage in the log (see failure_log.ts).
  const directory = answeringDirectory((overrides.directory ?? ((d) => d))(opened));
  // Servers sharing the file (instances, a restart beside the old process) start side by side.
  const opening = openKvWaitingOutLocks(config.kvPath, {
    waitMs: config.kvOpenWaitMs,
    onWait: () =>
      log(
        `KV_PATH (${config.kvPath}) is locked by another process (a server creating or writing ` +
          `it): waiting up to ${config.kvOpenWaitMs / 1000} s`,
      ),
  }).catch(async (err) => {
    await directory.close();
    const hint = await storageHint(err, kvPath, config.dataDir);
    throw new Error(`KV_PATH (${config.kvPath}) could not be opened: ${message(err)}${hint}`);
  });
  const kv = (overrides.kv ?? ((k) => k))(await opening);
  await Promise.all([newSqlite && ownerOnly(sqlitePath!), newKv && ownerOnly(kvPath!)]);
  // Deno KV deletes expired keys in the background and ends the process when a full volume
  // refuses that write: a file beside a local KV file is deleted as the volume fills up, to
  // leave it room, and sends are refused meanwhile (see space_reserve.ts).
  const reserve = kvPath && config.spaceReserveMb > 0
    ? new SpaceReserve(kvPath, { bytes: config.spaceReserveMb * 1024 * 1024 })
    : undefined;
  await reserve?.start();
  // A write refused for want of space releases it at once, not at the next reading.
  const unwatchRefusals = failureLog.watchRefusals((store, err) => {
    if (store === "kv" && isStorageError(err)) reserve?.storageFailed();
  });
  const metrics = new Metrics();
  const attachments = new MediaAttachmentStore(media, config.maxFileBytes);
  const store = new KvMessageStore(kv, {
    historyLimit: config.historyLimit,
    pauseAboveCpu: config.commitPauseAboveCpu,
    commitIntervalMs: config.commitIntervalMs,
    // Retention drops messages; their files go too.
    discard: (dropped) => attachments.discard(dropped),
    sqliteKv: config.kvPath === ":memory:" || isLocalPath(config.kvPath),
  });
  // Deletions of rooms a crash or a failure cut short are finished in the background, and the
  // files of deleted messages a crash left on the volume go.
  void store.resumePurges();
  store.finishFileDeletions().catch((err) =>
    console.error("history: deleting the files a crash left failed:", err)
  );
  // And the files of sends a crash cut short before their commit, once they are old enough.
  store.keepSweepingPendingFiles();
  // So are files a crash left half written (or linked and not yet named in KV): an hour old, no
  // write of any instance is under way. Again and again, as a crash's files are younger than
  // that at the next start. One server walks the tree (a lease in KV for half the interval):
  // the isolates of a process and the instances sharing the volume would otherwise all walk it
  // at once. The lease is judged by the time it holds, as KV may delete an expired key a minute
  // late, and a killed server never gives its lease back.
  const mediaSweepMs = overrides.mediaSweepMs ?? MEDIA_SWEEP_MS;
  const sweepMedia = async (poll: Poll) => {
    // Deletions of rooms that another server's crash cut short, which only a start or that
    // server's own retry would otherwise finish: the room's old messages would still be read.
    // Every server, not only the lease's holder (which may be the server that crashed).
    void store.resumePurges();
    try {
      const held = await kv.get<number>(MEDIA_SWEEP_KEY);
      if (typeof held.value === "number" && Date.now() - held.value < mediaSweepMs / 2) return;
      // Isolates starting together write at once: the lease waits out SQLite's write lock.
      const lease = await commitRetryingLocks(
        kv.atomic().check(held).set(MEDIA_SWEEP_KEY, Date.now(), { expireIn: mediaSweepMs }),
      );
      if (!lease.ok) return;
      const n = await media.sweepTemporary(60 * 60_000);
      if (n > 0) console.warn(`media: removed ${n} files a crash left half written`);
    } catch (err) {
      if (!poll.stopped) console.error("media: sweeping half-written files failed:", err);
    }
  };
  const mediaSweep = pollEvery(mediaSweepMs, sweepMedia, { atOnce: true });
  // What the failure log owes once failures stop: an outage's end, a minute's count.
  const failureTicks = pollEvery(1000, () => Promise.resolve(failureLog.tick()));
  // Alone on the store, a server skips the channel posts and the head watches (nobody else
  // commits or listens); both start as soon as another instance or isolate registers. The
  // channel reaches only this process's isolates, and so, on a local file, does the watch.
  // The registry entry is also the lease of this server's presence entries: it lapses, and
  // they with it, a presence TTL after the server stops renewing it. A volume that refuses the
  // first registration (a full disk) does not stop the start: history is still read, the
  // registration is tried again, and /healthz says 503 until it is written.
  // Deno wakes a watch on a local KV file only for commits of its own process: servers of other
  // processes sharing the file are found, and their commits seen, by reading the keys instead.
  const localKv = isLocalPath(config.kvPath);
  const registry = await InstanceRegistry.start(kv, {
    staleMs: config.presenceTtlSeconds * 1000,
    heartbeatMs: config.presenceTtlSeconds * 1000 / 3,
    pollMs: localKv ? REGISTRY_POLL_MS : undefined,
  });
  // Read cursors an older version stored without the list of a user's rooms join it, so that
  // deleting the user deletes them too; once per KV, in the background, but again while servers
  // of such a version run beside this one (a rolling upgrade, a rollback) and when they are gone.
  store.olderWriters = () => registry.older > 0;
  let olderWriters = store.olderWriters();
  registry.onChange(() => {
    if (store.olderWriters() === olderWriters) return;
    olderWriters = !olderWriters;
    void store.indexReadCursors();
  });
  void store.indexReadCursors();
  store.onCommit = (ms) => {
    metrics.commitSeconds += ms / 1000;
    metrics.commits++;
    failureLog.answered("kv");
    // KV takes writes again after refusing this server's registration: the others must learn
    // of it (and watch this commit's room) now, not at the next retry.
    if (!registry.registered) registry.register().catch(() => {});
  };
  const broker = new SharedOnlyBroker(
    overrides.broker ?? new BroadcastChannelBroker(config.kvPath),
    () => registry.nearby > 0,
  );
  const watching = () => localKv ? registry.nearby > 0 : !registry.alone;
  // Typing, read cursors and presence changes reach the other servers through their rooms'
  // signals keys, which the head watch follows too: those of other processes only so, this
  // process's isolates by the channel as well, which is faster but drops posts under load
  // (members would keep seeing users who left). The hub keeps the first copy of each, in order.
  const signals = new KvRoomSignals(kv, registry.id, (event) => hub.receive(event), {
    typingTimeoutMs: config.typingTimeoutSeconds * 1000,
    // A leave from there may be older than a join here: passed on only if the store agrees.
    holds: (event) => chat.presenceHolds(event),
    heard: (event): boolean => hub.heard(event),
    // Checked again if a change of the user was passed on here meanwhile (see watchPresence).
    watch: (event): PresenceWatch => hub.watchPresence(event.room, event.user.id),
  });
  const hub = new Hub(store, broker, {
    heads: (h) => {
      const watcher = new KvHeadWatcher(kv, (room, head) => h.headAdvanced(room, head), {
        active: watching(),
        pollMs: localKv ? LOCAL_HEAD_POLL_MS : undefined,
        signals,
      });
      watcher.setPolling(registry.elsewhere > 0);
      registry.onChange(() => {
        watcher.setActive(watching());
        watcher.setPolling(registry.elsewhere > 0);
      });
      return watcher;
    },
    catchUpDelayMs: overrides.catchUpDelayMs,
    access: (user, room) => chat.canAccess(user, room, { fresh: true }),
    heldHere: (room, userId) => chat.holdsHere(room, userId),
  });
  // Revocations and deletions must close sockets in every process and every isolate. The
  // channel drops messages when an isolate falls behind (Deno's buffer holds 256 for the whole
  // process), so the other isolates of this process read the log too: it names each isolate as
  // its own origin, and the hub keeps the first copy of each event (by its origin and serial).
  const roomEvents = new KvRoomEvents(kv, registry.id, (event) => hub.receive(event));
  await roomEvents.start();
  roomEvents.setPolling(localKv && registry.elsewhere > 0);
  registry.onChange(() => roomEvents.setPolling(localKv && registry.elsewhere > 0));
  let eventCount = 0;
  const events = {
    committed(message: Message): void {
      hub.committed(message);
    },
    publish(unnamed: RoomEvent, options?: { elsewhereOnly?: boolean }): void {
      // Numbered, so that an isolate that hears it by both routes hands it on once, in order.
      const event = { ...unnamed, origin: registry.id, serial: eventCount++ };
      try {
        hub.publish(event, options);
      } finally {
        // The other processes are told of an eviction even when this one's channel refused it
        // (the hub throws so that the caller knows): a retry of the request may find nothing
        // left to publish.
        // Through the failure log, as the signals below: on a full disk each one fails.
        if (isEviction(event)) {
          roomEvents.publish(event).catch((err) =>
            failureLog.failed(
              "room events: telling the other processes failed",
              err,
              `room ${event.room}`,
            )
          );
        }
      }
      // Read cursors, the most frequent and the least harm when one is lost (the next read
      // carries the cursor, and a join reads them all), skip the log between isolates. A server
      // whose entry lapsed may only have stalled: it comes back with its clients, and is counted
      // again only at this one's next read of the registry; what it missed meanwhile would
      // never reach them (a join never shown).
      if (
        isSignal(event) &&
        (registry.elsewhere > 0 || registry.lapsed > 0 ||
          (!registry.alone && event.type !== "read"))
      ) {
        // Every typing start and stop is a KV write: on a full disk each would log a stack.
        signals.publish(event).catch((err) =>
          failureLog.failed(
            "room signals: telling the other processes failed",
            err,
            `room ${event.room}`,
          )
        );
      }
    },
  };
  const presence = new KvPresenceStore(kv, registry);
  const chat = new ChatService({
    store,
    fanout: events,
    attachments,
    access: (overrides.access ?? ((a) => a))(new DirectoryAccessPolicy(directory)),
    metrics,
    presence: (overrides.presence ?? ((p) => p))(presence),
    pending: (overrides.pending ?? ((p) => p))(store),
    typingTimeoutMs: config.typingTimeoutSeconds * 1000,
    presenceSweepMs: config.presenceTtlSeconds * 1000 / 3,
    // What they would store would eat the room left for KV's own writes.
    refusal: () => reserve?.short ? new StorageShort() : undefined,
  });
  registry.onLapse(({ onlySwept }) => {
    chat.restorePresence({ onlySwept }).catch((err) =>
      failureLog.failed("restoring presence failed", err)
    );
  });
  // Room sweeps visit the rooms this server has members in; a crashed server's entries in the
  // others would stay in KV for good. Once a server dies, one server pages through every room.
  const presenceSweeper = new KvPresenceSweeper(
    kv,
    presence,
    registry,
    (room, user) => events.publish({ type: "presence", room, user, action: "leave" }),
  );
  const sweepPresence = async (poll: Poll) => {
    try {
      await presenceSweeper.round(poll);
    } catch (err) {
      // Through the failure log: on a full disk every round fails as long as it lasts.
      if (!poll.stopped) failureLog.failed("presence: sweeping every room failed", err);
    }
  };
  // At once as well, for the servers that died before this start, as the media sweep does.
  const presenceSweep = pollEvery(config.presenceTtlSeconds * 1000 / 3, sweepPresence, {
    atOnce: true,
  });
  const connections = new ConnectionRegistry();
  const frames = new FrameBudget(config.frameMemoryBudgetBytes);
  const context: DialectContext = {
    config,
    chat,
    hub,
    auth: new Authenticator(verifier, directoryProfileEnricher(directory)),
    metrics,
    connections,
    limiter: new RateLimiter({
      perConnection: config.rateLimitPerSecond,
      perUser: config.rateLimitUserPerSecond,
    }),
    sockets: new UserSockets(config.socketsPerUser, config.rateLimitUserPerSecond),
    frames,
  };
  // `/ws/chat/` is claimed by two documents; CHAT_PATH_PROTOCOL picks which one it speaks.
  const roomsOnChatPath = config.chatPathProtocol === "rooms";
  const routes: WsRoute[] = [
    nativeRoute(context),
    ticketSocketRoute(context),
    conversationChatRoute(
      context,
      roomsOnChatPath ? "/ws/conversations/:id{/}?" : "/ws/chat/:id{/}?",
    ),
    chatRoomsRoute(context, roomsOnChatPath ? "/ws/chat/:id{/}?" : "/ws/rooms/:id{/}?"),
    // Each protocol also keeps an unambiguous path whatever the setting.
    roomsOnChatPath
      ? chatRoomsRoute(context, "/ws/rooms/:id{/}?")
      : conversationChatRoute(context, "/ws/conversations/:id{/}?"),
    ...serviceChatRoutes(context),
  ];
  const io = createSocketIoTicketChat(context, {
    relay: overrides.socketIoRelay ?? false,
    pingInterval: config.socketIoPingIntervalMs,
    pingTimeout: config.socketIoPingTimeoutMs,
    clientBundle: socketIoClientBundle,
  });
  const apiCounters = new ApiCounters();
  const isolateId = registry.id.slice(0, 8);
  /** Set once a shutdown has begun (see `drain` below). */
  let draining: Promise<void> | undefined;
  // Writes, not reads: a full disk or a read-only volume still answers reads while every send
  // fails, and a check that only read would call such a server healthy. Anyone may ask, so one
  // probe runs at a time and its answer stands for a second; the answer names no path.
  let probe: { at: number; done: Promise<void>; settled: boolean } | undefined;
  let probeFailed = false;
  const probeStores = () => {
    if (probe && (!probe.settled || performance.now() - probe.at < HEALTH_PROBE_MS)) {
      return probe.done;
    }
    const done = (async () => {
      const step = async (what: string, run: () => Promise<unknown>, detail = true) => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        try {
          // A store that hangs (a stalled database) must make the check fail, not hang with it.
          await Promise.race([
            run(),
            new Promise((_, reject) => {
              timer = setTimeout(
                () => reject(new Error(`no answer within ${HEALTH_STEP_MS} ms`)),
                HEALTH_STEP_MS,
              );
            }),
          ]);
        } catch (err) {
          if (!probeFailed) console.error(`healthz: ${what}:`, err);
          probeFailed = true;
          throw new Error(detail ? `${what}: ${withoutPaths(message(err))}` : what);
        } finally {
          clearTimeout(timer);
        }
      };
      await step(
        "KV does not accept writes",
        () => kv.set(["health", isolateId], Date.now(), { expireIn: 60_000 }),
      );
      failureLog.answered("kv");
      // Its first registration refused (a full disk at the start): the others do not know of
      // this server yet, so its messages would not reach their sockets at once. Tries again now.
      await step("This server is not registered with the others", () => registry.register());
      await step("Media directory does not accept files", () => media.probe());
      failureLog.answered("media");
      // Its errors name the database's host and port: logged, not told to anyone who asks.
      await step("Directory does not answer", () => directory.ping(), false);
      probeFailed = false;
    })();
    const current: typeof probe & object = { at: performance.now(), done, settled: false };
    probe = current;
    done.catch(() => {}).finally(() => {
      current.settled = true;
      current.at = performance.now();
    });
    return done;
  };
  const httpDeps: HttpDeps = {
    metrics,
    hub,
    media,
    isolateId,
    peers: () => registry.others,
    healthCheck: async () => {
      if (draining) throw new Error("Shutting down");
      if (reserve?.short) {
        throw new Error(
          "The KV file's volume is nearly full: sends and files are refused until space is freed",
        );
      }
      await probeStores();
    },
    api: createApi({
      directory,
      chat,
      events,
      auth: context.auth,
      config,
      counters: apiCounters,
      limiter: context.limiter,
      stopping: () => draining !== undefined,
    }),
    frames,
    extraMetrics: () => apiCounters.render() + keySetMetrics(verifier.keySet),
    // Under `deno serve --parallel` a scrape reaches one isolate: it answers for all of them.
    gatherMetrics: async () => {
      const others = registry.alone ? 0 : (await registry.live()).here.size - 1;
      return await exchange.gather(others);
    },
  };
  const exchange = new MetricsExchange(config.kvPath, isolateId, () => ownMetrics(httpDeps));
  const http = createHttpApp(httpDeps);
  // The chat page at `/`; the dev sign-in only while tokens are signed with the dev secret.
  mountWeb(http, {
    devSecret,
    devSignIn: config.devSignIn,
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
  });

  const originAllowed = (req: Request) => {
    const origin = req.headers.get("origin");
    return !origin || socketOriginAllowed(config, origin, req);
  };

  let closed = false;
  /**
   * When the drain began (`performance.now()`, as timers count: a step of the wall clock must
   * not stretch or cut the shutdown), which its deadlines count from.
   */
  let stopStarted = 0;
  // A frame being handled (a file being stored, a send waiting for its commit) gets its reply
  // before the close, for a while: the older protocols have no resend to recover it, and those
  // with no client id (ticket sockets, Socket.IO, conversations, service chats) store twice a
  // message they were never answered for and the user types again. So no message is stored
  // once the sockets close: what is still queued then is refused (and told so), never committed.
  const drain = () =>
    draining ??= (async () => {
      const started = stopStarted = performance.now();
      // A socket the client closed counts while the frames it sent before are handled.
      const busy = () => [...connections].some((c) => !c.stopped && c.busy) || socketIoBusy(io);
      const settle = (until: number, waiting = busy) =>
        pollUntil(() => !waiting(), { timeoutMs: until - performance.now() });
      // A long-polling client gets what it was told only with its next GET: the close that
      // follows the drain drops what it has not fetched, and the listener's shutdown refuses
      // that GET. So the replies wait for those GETs too (answered until the drain returns).
      const replying = () => busy() || io.engine.unfetchedSessions > 0;
      await settle(started + SHUTDOWN_DRAIN_MS);
      // Frames that come later are dropped, not stored unanswered: the sockets close next.
      connections.takeNoMore();
      // And the events each Socket.IO socket took and holds in line start now, to be answered.
      socketIoTakeNoMore(io);
      // Those taken before get a while more: a server behind its commits (each socket's sends
      // queued behind a slow one) still answers most of them.
      await settle(started + SHUTDOWN_DRAIN_MS + SHUTDOWN_QUEUE_MS);
      // The rest are refused, in the protocol's retryable error, rather than committed once
      // their sockets are gone; only the commit under way is waited for, and then the replies.
      chat.refuseSends(() => new ServerStopping());
      await store.flush();
      // A committed send's echo is the room's delivery, which may still be queued.
      await hub.idle();
      const replied = performance.now() + SHUTDOWN_REPLY_MS;
      await settle(replied, replying);
      await hub.idle();
      // What the last deliveries said to polling clients, within the same wait.
      await settle(replied, replying);
    })();
  let ioClosed: Promise<void> | undefined;
  let socketsClosed: Promise<void> | undefined;
  // A closed socket reads on until its peer answers the close: Deno's server shutdown, or the
  // exit, would end it before with the frames the peer sent meanwhile unread, which resets the
  // connection, and the peer's answer fails (code 0 in Deno's client, 1006 in browsers). A peer
  // that does not answer in time is left to them.
  const closeSockets = () =>
    socketsClosed ??= (async () => {
      await drain();
      for (const conn of [...connections]) conn.close(CLOSE.goingAway, "Server shutting down");
      ioClosed = io.close();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        closesAnswered(),
        new Promise((r) => timer = setTimeout(r, SHUTDOWN_CLOSE_MS)),
      ]);
      clearTimeout(timer);
    })();
  // A server of another process sharing the file learns of this one at its next read of the
  // registry. Until then it thinks itself alone and tells nobody of its rooms' presence changes
  // (nor typing), and what a user who joined here meanwhile missed is never sent again: a join
  // never shown, a leave shown for good (a rolling restart's old server stopping at once). So
  // this one takes no client before they all have read the registry again. Unregistered (a full
  // disk refused its entry), it has nothing to wait for: they cannot see it until it registers.
  if (localKv && registry.registered && registry.elsewhere > 0) {
    log(
      `Another server's process shares KV_PATH: taking clients in ${2 * REGISTRY_POLL_MS} ms, ` +
        "once it has seen this one",
    );
    await new Promise((r) => setTimeout(r, 2 * REGISTRY_POLL_MS));
  }
  return {
    context,
    devSecret,
    io,
    fetch(req, info) {
      const url = new URL(req.url);
      if (url.pathname.startsWith("/socket.io/")) {
        // Sessions already open keep polling through the drain; a new one is told to go elsewhere.
        if (draining && !url.searchParams.has("sid") && !url.pathname.endsWith(".js")) {
          return Promise.resolve(unavailable("Server shutting down"));
        }
        return io.handleRequest(req, info);
      }
      const matched = matchWsRoute(routes, req.url);
      if (matched && draining) return Promise.resolve(unavailable("Server shutting down"));
      if (matched) {
        if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
          return Promise.resolve(
            // RFC 9110 asks a 426 to name the protocol to switch to.
            new Response("This endpoint speaks WebSocket", {
              status: 426,
              headers: { upgrade: "websocket", connection: "Upgrade" },
            }),
          );
        }
        if (!originAllowed(req)) {
          return Promise.resolve(new Response("Origin not allowed", { status: 403 }));
        }
        // The checks before the upgrade read the directory: one that does not answer is a
        // passing failure (503), logged with the path, which an unlabelled pool error was not.
        return matched.route.handle(req, matched.params).catch((err) => {
          // Tokens cannot be checked (the JWKS does not answer): 4001 would tell the client its
          // token is bad, and clients stop for good on it. The verifier logs the outage once.
          if (err instanceof KeySetUnavailable) {
            return unavailable("Service unavailable: tokens cannot be checked now; try again");
          }
          // Through the failure log: a directory that does not answer refuses every client that
          // reconnects, which is one outage, not a line each.
          // The path (the client's to choose) goes with the line, not in its site, which counts
          // a bug's repeats: one site for them all, however many rooms clients name.
          const path = JSON.stringify(new URL(req.url).pathname.slice(0, 200));
          failureLog.failed("ws: the socket could not be opened", err, `path ${path}`);
          return unavailable("Service unavailable: try again");
        });
      }
      return Promise.resolve(http.fetch(req, info));
    },
    drain,
    closeSockets,
    async close() {
      if (closed) return;
      closed = true;
      try {
        await closeSockets();
        await ioClosed;
        // Sends still writing their files (refused at their append now, their files then
        // discarded) and the presence exits of the sockets just closed end before the stores
        // close, within the budget: what is cut off leaves its files to the media sweep, and its
        // presence entries to the presence sweep (of the servers left, or of the next start).
        if (!await chat.settle(stopStarted + SHUTDOWN_WORK_MS)) {
          console.error(
            "Shutting down: presence updates and sends still under way are cut off; the media " +
              "sweep removes what such sends leave, the presence sweep the entries left",
          );
        }
        // A presence commit landing after the flush below would take its users' entries out,
        // and their leaves would be written nowhere: the other servers' sweep, which tells of
        // the entries it finds, would never find them. So none starts now (the exits queued keep
        // their entries, for that sweep), and the one under way ends before, for a while.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          presence.stop(),
          new Promise((r) => timer = setTimeout(r, SHUTDOWN_PRESENCE_MS)),
        ]);
        clearTimeout(timer);
        // Its users' exits publish their leaves a few promise turns after it.
        await new Promise((r) => setTimeout(r, 0));
        await store.flush();
        await hub.idle();
        // The leaves of this server's users, among others, go to other instances through KV.
        await Promise.all([signals.flush(), roomEvents.flush()]);
      } finally {
        // Whatever failed above, the watches, timers and handles must go, or the process stays.
        chat.close();
        mediaSweep.stop();
        presenceSweep.stop();
        failureTicks.stop();
        unwatchRefusals();
        await reserve?.stop();
        roomEvents.close();
        signals.close();
        hub.close();
        broker.close();
        exchange.close();
        try {
          await store.close();
          await registry.close();
          kv.close();
          await directory.close();
        } finally {
          // What the log still owed, though a store's close failed (as in an outage it may).
          failureLog.flush();
        }
      }
    },
  };
}

/** True when `path` names no file yet (a store about to create it); false for none given. */
async function missing(path: string | undefined): Promise<boolean> {
  if (path === undefined || path === ":memory:") return false;
  try {
    await Deno.lstat(path);
    return false;
  } catch (err) {
    return err instanceof Deno.errors.NotFound;
  }
}

/**
 * Makes a SQLite file this start created owner-only, with its `-wal` and `-shm` beside it
 * (SQLite gives those the database file's mode): SQLite creates them readable by everyone, and
 * KV_PATH or DATABASE_URL may put them outside DATA_DIR's owner-only directory. Where modes
 * mean nothing (Windows) it does nothing.
 */
async function ownerOnly(path: string): Promise<void> {
  await Promise.all(
    [path, `${path}-wal`, `${path}-shm`].map((file) => Deno.chmod(file, 0o600).catch(() => {})),
  );
}

/** The JWKS's state in Prometheus text, when the keys come from `JWT_JWKS_URL`. */
function keySetMetrics(keySet: KeySetState | undefined): string {
  if (!keySet) return "";
  return renderFamily(
    "chat_auth_keyset_up",
    "gauge",
    "1 while the key set at JWT_JWKS_URL answers, 0 from a failed fetch until one succeeds.",
    [["", keySet.up ? 1 : 0]],
  ) + renderFamily(
    "chat_auth_keyset_refusals_total",
    "counter",
    "Tokens that could not be checked because the key set at JWT_JWKS_URL could not be fetched (refused with 503, or Socket.IO's authentication_error).",
    [["", keySet.refusals]],
  );
}

/** A listening server. */
export interface RunningServer {
  /** The wired app. */
  app: App;
  /** Port actually bound. */
  port: number;
  /** `http://127.0.0.1:<port>` (or the configured host, an IPv6 one in brackets). */
  url: string;
  /** Whether it listens on every interface (HOST `0.0.0.0` or `::`), `url` naming the loopback. */
  everywhere: boolean;
  /** Stops accepting, closes sockets, flushes and closes stores. */
  close(): Promise<void>;
}

/** Builds the app and serves it with `Deno.serve`. */
export async function startServer(
  config: Config,
  overrides: AppOverrides = {},
): Promise<RunningServer> {
  const app = await buildApp(config, overrides);
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve(
      { port: config.port, hostname: config.host, onListen: () => {} },
      app.fetch,
    );
  } catch (err) {
    await app.close();
    throw new Error(
      `Cannot listen on HOST=${config.host} PORT=${config.port}: ${(err as Error).message}`,
    );
  }
  const addr = server.addr as Deno.NetAddr;
  // An IPv6 HOST may come bracketed as in a URL, which Deno listens on too.
  const bare = config.host.replace(/^\[(.*)\]$/, "$1");
  const everywhere = bare === "0.0.0.0" || bare === "::";
  // Listening on every interface, this machine reaches it on its loopback; an IPv6 address is
  // bracketed in a URL (`http://::1:8000` is none).
  const host = everywhere ? "127.0.0.1" : urlHost(bare);
  return {
    app,
    port: addr.port,
    url: `http://${host}:${addr.port}`,
    everywhere,
    async close() {
      // Deno's shutdown drops upgraded sockets at once (1001, their peers' last frames unread):
      // the frames they are still answering get their replies first, and their own close its
      // peer's answer.
      await app.closeSockets();
      const finished = server.shutdown();
      await app.close();
      // An exchange still under way (a download a slow player reads as it plays, a body still
      // arriving) would hold the stop for as long as its peer, and the supervisor would record a
      // failed one: once the stores are closed it gets a moment, then is cut off.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cutOff = await Promise.race([
        finished.then(() => false),
        new Promise<boolean>((r) => timer = setTimeout(() => r(true), SHUTDOWN_HTTP_GRACE_MS)),
      ]);
      clearTimeout(timer);
      if (cutOff) {
        console.log(
          `Shutting down: HTTP exchanges still under way after ${SHUTDOWN_HTTP_GRACE_MS} ms are cut off`,
        );
      }
    },
  };
}

if (import.meta.main) {
  let config: Config;
  try {
    config = loadConfig(Deno.env.toObject());
  } catch (err) {
    console.error((err as Error).message);
    Deno.exit(1);
  }
  let server: RunningServer;
  try {
    server = await startServer(config);
  } catch (err) {
    // A setting the server could not use (DATABASE_URL, JWT_PUBLIC_KEY, HOST, ...): its message
    // names it; a stack trace would only bury it. Nothing it quotes may show the database's
    // password.
    const why = redactDatabaseUrl((err as Error).message, config.databaseUrl);
    console.error(`Could not start: ${why}`);
    Deno.exit(1);
  }
  const where = server.everywhere ? `HOST=${config.host}: every interface; ` : "";
  console.log(`Chat server listening on ${server.url} (${where}data in ${config.dataDir})`);
  if (procRefused()) console.log(PROC_REFUSED_NOTE);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.log("Shutting down: closing sockets and flushing history");
    const timer = setTimeout(() => Deno.exit(1), SHUTDOWN_FALLBACK_MS);
    await server.close();
    clearTimeout(timer);
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
