/** Message history and read cursors on Deno KV. */

import { objectId } from "../core/ids.ts";
import { isoMillis } from "../core/time.ts";
import type {
  AppendResult,
  Attachment,
  HistoryQuery,
  Message,
  MessageDraft,
  MessageStore,
  PendingFiles,
  ReadCursorStore,
  UserId,
} from "../core/types.ts";
import { ChatError, roomDeleted } from "../core/errors.ts";
import { failureLog } from "../core/failure_log.ts";
import { commitRetryingLocks, commitUntilChecked, FreshReads, getManyChunked } from "./kv_reads.ts";
import { type Poll, pollEvery } from "../broker/poll.ts";
import process from "node:process";

/** How long a client id protects against a duplicate send. */
export const IDEMPOTENCY_WINDOW_MS = 24 * 60 * 60 * 1000;

/** KV key layout, shared with the cross-instance watcher. */
export const KV_KEYS = {
  /** The newest seq of a room; every commit changes it, so watching it sees every message. */
  head: (room: string): Deno.KvKey => ["head", room],
  /** One message. */
  message: (room: string, seq: number): Deno.KvKey => ["msg", room, seq],
  /** Prefix of a room's messages. */
  messages: (room: string): Deno.KvKey => ["msg", room],
  /** Idempotency record: sender (see `senderKey`) + client id → seq. */
  idempotency: (room: string, sender: string | boolean, clientId: string): Deno.KvKey => [
    "idem",
    room,
    sender,
    clientId,
  ],
  /** Prefix of a room's idempotency records. */
  roomIdempotency: (room: string): Deno.KvKey => ["idem", room],
  /** A user's read cursor. */
  read: (room: string, user: string): Deno.KvKey => ["read", room, user],
  /** Prefix of a room's read cursors. */
  reads: (room: string): Deno.KvKey => ["read", room],
  /**
   * Beside each read cursor: deleting a user finds their cursors here, in rooms they were never
   * a participant of too, without listing every room's.
   */
  readRoom: (user: string, room: string): Deno.KvKey => ["read_room", user, room],
  /** Prefix of the rooms a user has a read cursor in. */
  readRooms: (user: string): Deno.KvKey => ["read_room", user],
  /**
   * For a while after a user's deletion (with `room`: their removal from it), a read mark a
   * server not yet told of it takes would store a cursor the cleanup no longer finds: refused.
   */
  readForgotten: (user: string, room?: string): Deno.KvKey =>
    room === undefined ? ["read_forgotten", user] : ["read_forgotten", user, room],
  /**
   * Present once every read cursor has its `readRoom` entry: versions before that list stored
   * cursors without one, which `indexReadCursors` adds at a start; set only while no server of
   * such a version runs, and deleted when one runs again (a rollback).
   */
  readRoomsListed: ["read_rooms_listed"] as Deno.KvKey,
  /** The last cursor key `indexReadCursors` is done with, so that a start after a crash resumes. */
  readRoomsListing: ["read_rooms_listing"] as Deno.KvKey,
  /** The attachments of a message, so that retention, which drops it unread, deletes its files. */
  files: (room: string, seq: number): Deno.KvKey => ["files", room, seq],
  /** Prefix of a room's attachment records. */
  roomFiles: (room: string): Deno.KvKey => ["files", room],
  /**
   * The files of a message deleted from KV, until they are deleted from the volume: written in
   * the commit that deletes the message's record, so that a crash before the files go does not
   * lose the last word of them.
   */
  filesDue: (room: string, seq: number): Deno.KvKey => ["files_due", room, seq],
  /** Prefix of the files due for deletion. */
  allFilesDue: ["files_due"] as Deno.KvKey,
  /** The files a send stored before its commit, which deletes this (see `PendingFiles`). */
  pendingFiles: (id: string): Deno.KvKey => ["files_pending", id],
  /** Prefix of the sends' pending files. */
  allPendingFiles: ["files_pending"] as Deno.KvKey,
  /** A swept send's files until they are deleted (no room name lacks a `:`, unlike this). */
  pendingDue: (id: string): Deno.KvKey => ["files_due", "pending", id],
  /** A purge under way: the head it deletes up to, kept until it is done so that it can resume. */
  purging: (room: string): Deno.KvKey => ["purging", room],
  /** Prefix of the purges under way. */
  purges: ["purging"] as Deno.KvKey,
  /**
   * How many times the room was deleted (a `Deno.KvU64`, absent for none): a send admitted
   * under an older value is refused at its commit, as the room it was admitted to is gone.
   */
  generation: (room: string): Deno.KvKey => ["gen", room],
  /** When the room's deletion began (ms since the epoch), for a minute (see `markDeleting`). */
  deleting: (room: string): Deno.KvKey => ["deleting", room],
  /**
   * Present once every message of the room with attachments has its record: messages stored
   * before records existed get theirs when a history limit first applies to the room.
   */
  filesRecorded: (room: string): Deno.KvKey => ["files_recorded", room],
};

/** How long a room's deletion mark counts: far longer than a deletion's notice takes to come. */
const DELETING_MARK_MS = 60_000;

/**
 * Written with each message and file record on Deno's own (SQLite) KV, where they are kept until
 * retention or a deletion takes them: it indexes every key by its expiry, and keys without one sit
 * in that index in key order, so each room a commit writes to cost a page of it too; with an
 * expiry (a thousand years away, never reached), a commit's new keys sit together at the index's
 * end. Measured on the store alone (100 rooms): ~20% less of KV's thread per message.
 */
const KEPT = { expireIn: 1000 * 365 * 24 * 60 * 60 * 1000 };

// Deno KV refuses an atomic operation with over 100 checks, 1000 mutations, 800 KiB in all or
// 80 KiB of the keys it writes values to, and values over 64 KiB. A message costs up to 4
// mutations (message, idempotency key, retention, attachment record), a room 1 (its head) and a
// check; batches count them, and the bytes of all their keys (deletes' and checks' too, which
// only the 800 KiB counts: an over-estimate that keeps the count simple).
const MAX_BATCH_MUTATIONS = 990;
const MAX_BATCH_KEY_BYTES = 76 * 1024;
/** Files to delete, and the KV record that says so. */
interface DueFiles {
  key: Deno.KvKey;
  files: Attachment[];
}

/**
 * How old a send's pending files must be before a sweep takes them for a crash's (a send's files
 * and its commit normally take well under a second), and how often the sweep comes, ms.
 */
const PENDING_FILES_MAX_AGE_MS = 10 * 60_000;
/** How long after retention drops messages their files are deleted, ms. */
const DEFAULT_FILE_SWEEP_MS = 1000;
const MAX_BATCH_ROOMS = 90;
/** KV's bound on an atomic operation's checks. */
const MAX_CHECKS = 100;
/**
 * How long client ids are read rather than checked after one checked as new was found stored:
 * each such id costs its whole commit, and clients resending after a reconnect come in bursts.
 */
const IDEM_CHECKS_OFF_MS = 1000;
const MAX_BATCH_BYTES = 512 * 1024;
/** Queued appends looked at when picking a commit's, so that a long queue costs no more. */
const MAX_BATCH_SCAN = 4 * MAX_BATCH_MUTATIONS;
/** Rooms one commit of `forgetReader` takes: three mutations each, well inside KV's bounds. */
const FORGET_BATCH = 100;
/**
 * How long `forgetReader` refuses the user's read marks: past the 10 minutes the room events log
 * keeps a revocation, after which a server that has not heard of it never will through the log.
 */
const READ_FORGOTTEN_MS = 15 * 60_000;
/** Cursors one commit of `indexReadCursors` takes: four checks each, and the mark's, within 100. */
const INDEX_BATCH = 24;
/** Cursors `indexReadCursors` passes without a commit before it stores how far it came. */
const INDEX_PROGRESS_EVERY = 1000;
/**
 * How often `indexReadCursors` walks again while a server of an older version stores cursors
 * without their `readRoom` entry: within `READ_FORGOTTEN_MS`, so that such a cursor of a user
 * deleted meanwhile is found while the deletion still refuses it (and is deleted, not listed).
 */
const DEFAULT_INDEX_AGAIN_MS = 10 * 60_000;
/** The most entries Deno KV reads in one batch of a list, and so at one moment. */
const MAX_LIST_BATCH = 500;
/** Records or deletions per commit while a room is checked (a record costs 2 of KV's 100 checks). */
const RETENTION_BATCH = 40;
/**
 * Rooms remembered as checked; past it the least recently written tenth is forgotten (and checked
 * again at its next write). Large, as rooms written in rotation past it would be checked anew at
 * every write; a remembered room costs tens of bytes.
 */
const MAX_CHECKED_ROOMS = 100_000;
/**
 * How long a room's generation read for one send serves the next ones, ms: for that long after
 * a deletion elsewhere, a send here may be refused as if under way when it happened.
 */
const GENERATION_REUSE_MS = 250;
/** How long after a purge failed it is tried again, ms. */
const DEFAULT_PURGE_RETRY_MS = 30_000;
/** Rooms checked at once, so that one long history does not hold up the others. */
const CHECK_CONCURRENCY = 4;

/**
 * Shortest time between the starts of two commits while the process is busy, unless the queue
 * already fills a commit. Every commit ends in an fsync, which costs about as much CPU as the
 * rest of it; without a pause, a steady stream of sends commits a few messages at a time. A
 * send after a quiet moment still commits at once.
 */
export const DEFAULT_COMMIT_INTERVAL_MS = 2;

/**
 * Process CPU, as a share of one core, above which commits pause for the interval. Below it the
 * next commit starts as soon as the last one ends: a pause costs every message in the batch at
 * least 2 ms (Deno's timers fire a millisecond late or more), and with CPU to spare that buys
 * nothing. Measured with the benchmark's server pinned to one core: always pausing, 100 rooms
 * of one sender reached 5,000 msg/s within p99 25 ms (p50 3.6 ms at 1,000 msg/s); never
 * pausing, 6,000 (p50 1.6 ms) at 10 points more CPU, but 100 rooms of 10 fell from 6,000 msg/s
 * within p99 100 ms to 4,000.
 */
export const DEFAULT_PAUSE_ABOVE_CPU = 0.85;
/** How often the process CPU is sampled for that decision, ms. */
const CPU_SAMPLE_MS = 100;

/** What a commit gives each append: its result, or why that one append alone is refused. */
type Outcome = AppendResult | { error: unknown };

/** A room's head entry as last read or written, with the generation read together with it. */
interface HeldHead {
  entry: Deno.KvEntryMaybe<number>;
  generation: number;
  /** The head message's creation time (ms; 0 when unknown), which the next one must pass. */
  lastAt: number;
}

/** A stored message's creation time in ms (0 for none). */
const timeOf = (message: Message | null): number =>
  message ? Date.parse(message.createdAt) || 0 : 0;

/** The number a generation entry holds (0 when absent). */
const generationOf = (entry: Deno.KvEntryMaybe<unknown>): number =>
  entry.value instanceof Deno.KvU64 ? Number(entry.value.value) : 0;

interface PendingAppend {
  room: string;
  draft: MessageDraft;
  size: number;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

/** Resolves or rejects one append with its outcome. */
function settle(p: PendingAppend, outcome: Outcome): void {
  if ("error" in outcome) p.reject(outcome.error);
  else p.resolve(outcome);
}

/**
 * The sender part of a client id's key: a user's id as text, and for system messages a boolean,
 * which no user id can equal (they shared "system" with the user of that id, who could take a
 * notice's client id first). A user's part is unchanged, so ids stored before still count.
 */
const senderKey = (draft: MessageDraft): string | boolean =>
  draft.sender === null ? true : String(draft.sender.id);

/**
 * The key a system message's client id had before it took `senderKey`'s boolean (releases
 * before c8d6588), and still the key of the user whose id is "system": it counts for a notice
 * only when the message it names is a system message of that client id (see `#commit`).
 */
const oldNoticeKey = (room: string, draft: MessageDraft): Deno.KvKey | null =>
  draft.sender === null && draft.clientId
    ? KV_KEYS.idempotency(room, "system", draft.clientId)
    : null;

/**
 * Upper bound of the bytes KV encodes a key's string part in: its UTF-8, a NUL escaped as two
 * bytes, a lone surrogate replaced by U+FFFD (three bytes; a pair, four, counts six).
 */
function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0) bytes += 1;
    else if (c >= 0x80) bytes += c < 0x800 ? 1 : 2;
  }
  return bytes;
}

/** Upper bound of the bytes of a key part that is text or a boolean (its tag counted apart). */
const keyPartLength = (part: string | boolean): number =>
  typeof part === "string" ? utf8Length(part) : 1;

/**
 * Upper bound of the key bytes a message adds to a commit: `roomKeys` keys made of its room's
 * name (`roomBytes` bytes) and a number (message, retention delete, attachment record), and its
 * idempotency key; a room's first message also brings the head's check and write.
 */
function keyBytes(
  roomBytes: number,
  draft: MessageDraft,
  roomKeys: number,
  fresh: boolean,
): number {
  // A string part costs its bytes and 2 (type and end), a number 9, each key's tag up to 16.
  const roomKey = roomBytes + 2 + 9 + 16;
  return (roomKeys + (fresh ? 2 : 0)) * roomKey +
    (draft.clientId
      ? roomKey + keyPartLength(senderKey(draft)) + utf8Length(draft.clientId) + 4
      : 0);
}

/** The JSON length of senders seen, by object: a connection's sends share one (profileOf). */
const senderLengths = new WeakMap<object, number>();

/** The JSON length of a draft's sender (`null` for none). */
function senderLength(sender: MessageDraft["sender"]): number {
  if (sender === null) return 4;
  let length = senderLengths.get(sender);
  if (length === undefined) senderLengths.set(sender, length = JSON.stringify(sender).length);
  return length;
}

/** The JSON length of a draft's attachments (most messages have none). */
const attachmentsLength = (draft: MessageDraft): number =>
  draft.attachments.length === 0 ? 2 : JSON.stringify(draft.attachments).length;

/**
 * Rough size of a message's stored value, to keep a batch under KV's commit limit, given the
 * JSON length of its attachments.
 */
function estimateSize(draft: MessageDraft, attachments: number): number {
  return draft.body.length * 2 + senderLength(draft.sender) + attachments + 256;
}

/**
 * Concurrent appends, to any rooms, share KV commits: local KV manages a few thousand commits a
 * second but tens of thousands of messages when they share one. Each message still gets its own
 * seq and resolves only once its commit is durable. Every commit checks the head key of each
 * room it writes, so several isolates or instances appending to one room never assign the same
 * seq; since every idempotency key is written together with its room's head, that one check
 * also keeps two writers from storing the same client id twice.
 */
export class KvMessageStore implements MessageStore, ReadCursorStore, PendingFiles {
  #kv: Deno.Kv;
  #pending: PendingAppend[] = [];
  /** The last head entry this store read or wrote, per room, with the room's generation then. */
  #heads = new Map<string, HeldHead>();
  /** Generations read for sends, per room, with when the read started (performance.now()). */
  #generations = new Map<string, { value: number; at: number }>();
  #generationReads = new FreshReads<number>();
  #draining = false;
  /** Set by {@link refuseAppends}: what an append not yet in a commit is refused with. */
  #refusal?: () => Error;
  /** Ends the pause before the next commit at once (see `#drain`). */
  #wake?: () => void;
  #commitIntervalMs: number;
  #lastCommitStart = -Infinity;
  #pauseAboveCpu: number;
  /** The CPU time the process has used, ms; the whole process's, so any test may replace it. */
  #cpuTimeMs: () => number;
  /** The last CPU sample: when (ms), the process CPU time then (ms), and whether it was busy. */
  #cpu = { at: -Infinity, used: 0, busy: false };
  /** Called after every commit with its duration in ms, for metrics. */
  onCommit?: (ms: number, messages: number) => void;
  /**
   * Whether a server of a version that stores read cursors without their `readRoom` entry runs
   * on this KV now (none by default): `indexReadCursors` then walks again later instead of
   * marking its work done.
   */
  olderWriters: () => boolean = () => false;

  #historyLimit: number;
  #discard?: (attachments: Attachment[]) => Promise<void>;
  #pendingSweep?: Poll;
  /** File deletions under way in the background (see `#inBackground`). */
  #background = new Set<Promise<void>>();
  /** Whether commits keep a record of attachments for retention to delete their files by. */
  readonly #recordsFiles: boolean;
  /** The options messages and file records are written with (see {@link KEPT}). */
  readonly #kept: { expireIn?: number };
  #fileSweepMs: number;
  /** Rooms whose commits dropped messages since the last file sweep. */
  #dropped = new Set<string>();
  #fileSweep?: ReturnType<typeof setTimeout>;
  #sweeping?: Promise<void>;
  /** Rooms checked against the limit since the start, or waiting for it; least recently written first. */
  #checked = new Set<string>();
  /** Rooms whose check is done: only their commits drop the messages they push out. */
  #retained = new Set<string>();
  /**
   * Checked rooms that kept messages below a hole in their seqs (a restored backup's jump): a
   * commit's push-out falls in the hole, so their next commit queues the check again.
   */
  #holed = new Set<string>();
  /**
   * What the last check of a room in (or queued from) `#holed` kept below the hole: its oldest
   * seq there and how many, so that the next check reads only the ones it drops, and a file
   * sweep stops below them.
   */
  #keptBelow = new Map<string, { oldest: number; count: number }>();
  /** Rooms waiting for their check, in order. */
  #checkQueue: string[] = [];
  #checkers = new Set<Promise<void>>();
  #activeCheckers = 0;
  /** The commit under way, if any. */
  #committing?: Promise<unknown>;
  #purgeRetryMs: number;
  #purgeRetry?: ReturnType<typeof setTimeout>;
  #resuming?: Promise<void>;
  #resumeAgain = false;
  #indexing?: Promise<void>;
  #indexRetry?: ReturnType<typeof setTimeout>;
  /** Set by a call of `indexReadCursors` while a walk runs: that one may have missed a cursor. */
  #indexAgain = false;
  #indexAgainMs: number;
  /** Rooms whose purge failed before its mark was stored. */
  #unmarked = new Set<string>();
  #closed = false;
  /** Until when (performance.now()) new client ids are read, not checked by the commit. */
  #idemChecksOffUntil = -Infinity;

  /**
   * Wraps an open KV handle (the caller owns and closes it). With `historyLimit` > 0 a room
   * keeps only its newest that many messages: each commit deletes the ones it pushes out, and
   * `discard`, when given, deletes their files shortly after. A room stored under another limit
   * (a lowered one, or none) is brought in line after its first commit since the start.
   * `commitIntervalMs` is the shortest time between two commits' starts while the process
   * uses more than `pauseAboveCpu` of a core (0: always), as `cpuTimeMs` counts it (the process's
   * CPU time by default).
   */
  constructor(kv: Deno.Kv, options: {
    historyLimit?: number;
    commitIntervalMs?: number;
    pauseAboveCpu?: number;
    cpuTimeMs?: () => number;
    discard?: (attachments: Attachment[]) => Promise<void>;
    fileSweepMs?: number;
    purgeRetryMs?: number;
    /** How often read cursors are walked again while {@link olderWriters} says yes. */
    indexAgainMs?: number;
    /**
     * False for a KV that is not Deno's SQLite file (KV Connect, Deploy): messages are then
     * written without the far expiry that only that layout gains from. Default true.
     */
    sqliteKv?: boolean;
  } = {}) {
    this.#kv = kv;
    this.#historyLimit = options.historyLimit ?? 0;
    this.#kept = options.sqliteKv === false ? {} : KEPT;
    this.#commitIntervalMs = options.commitIntervalMs ?? DEFAULT_COMMIT_INTERVAL_MS;
    this.#pauseAboveCpu = options.pauseAboveCpu ?? DEFAULT_PAUSE_ABOVE_CPU;
    this.#cpuTimeMs = options.cpuTimeMs ?? processCpuTimeMs;
    this.#discard = options.discard;
    // Records are kept with no limit too: instances with different limits may share the KV, and
    // a limit set later must find them.
    this.#recordsFiles = this.#discard !== undefined;
    this.#fileSweepMs = options.fileSweepMs ?? DEFAULT_FILE_SWEEP_MS;
    this.#purgeRetryMs = options.purgeRetryMs ?? DEFAULT_PURGE_RETRY_MS;
    this.#indexAgainMs = options.indexAgainMs ?? DEFAULT_INDEX_AGAIN_MS;
  }

  /** The KV handle, for watchers that follow the same keys. */
  get kv(): Deno.Kv {
    return this.#kv;
  }

  /** Queues the draft for the next shared commit and resolves once it is durable. */
  append(room: string, draft: MessageDraft): Promise<AppendResult> {
    return new Promise((resolve, reject) => {
      if (this.#refusal) return reject(this.#refusal());
      // With records kept, the attachments are written twice: in the message and the record.
      const attachments = attachmentsLength(draft);
      const size = estimateSize(draft, attachments) + (this.#recordsFiles ? attachments : 0);
      this.#pending.push({ room, draft, size, resolve, reject });
      if (this.#draining) return;
      this.#draining = true;
      // Let the sends of this tick join the first batch.
      queueMicrotask(() => this.#drain());
    });
  }

  /** Notes the room's deletion for a minute (see MessageStore.markDeleting in core/types.ts). */
  async markDeleting(room: string): Promise<string | null> {
    const key = KV_KEYS.deleting(room);
    for (;;) {
      const before = await this.#kv.get<number>(key);
      // Checked against what was read: of two marks at once, the second learns of the first.
      // Another process's write lock (an instance sharing the file) is waited out, as sends do.
      const done = await commitRetryingLocks(
        this.#kv.atomic().check(before).set(key, Date.now(), { expireIn: DELETING_MARK_MS }),
      );
      if (!done.ok) continue;
      const stood = typeof before.value === "number" &&
        Date.now() - before.value < DELETING_MARK_MS;
      return stood ? null : done.versionstamp;
    }
  }

  /** Takes a deletion note back (see MessageStore.unmarkDeleting in core/types.ts). */
  async unmarkDeleting(room: string, stamp?: string | null): Promise<void> {
    const key = KV_KEYS.deleting(room);
    if (stamp === undefined) {
      await commitRetryingLocks(this.#kv.atomic().delete(key));
      return;
    }
    if (stamp === null) return;
    await commitRetryingLocks(this.#kv.atomic().check({ key, versionstamp: stamp }).delete(key));
  }

  /** True within a minute of `markDeleting` (KV may keep an expired key a while: its time says). */
  async deleting(room: string): Promise<boolean> {
    const { value } = await this.#kv.get<number>(KV_KEYS.deleting(room));
    return typeof value === "number" && Date.now() - value < DELETING_MARK_MS;
  }

  /**
   * The room's generation (how many times it was deleted), for a send to carry in its draft:
   * read before the send's access check, so that a deletion after that check refuses the send.
   * A value read up to {@link GENERATION_REUSE_MS} before serves too (an older one can only
   * refuse more, never less), unless `fresh`; a read goes to KV only after the call (callers
   * at once share one).
   */
  generation(room: string, options?: { fresh?: boolean }): Promise<number> {
    const held = this.#generations.get(room);
    if (!options?.fresh && held && performance.now() - held.at < GENERATION_REUSE_MS) {
      return Promise.resolve(held.value);
    }
    return this.#generationReads.read(room, async () => {
      const at = performance.now();
      const value = generationOf(await this.#kv.get(KV_KEYS.generation(room)));
      this.#noteGeneration(room, value, at);
      return value;
    });
  }

  /** Remembers a generation read that started at `at`, unless a later read is held already. */
  #noteGeneration(room: string, value: number, at: number): void {
    const held = this.#generations.get(room);
    if (held && held.at >= at) return;
    if (!held && this.#generations.size >= 10_000) this.#generations.clear();
    this.#generations.set(room, { value, at });
  }

  /**
   * Refuses every append not yet in a commit with `error`, and every later one, for a shutdown
   * about to close the sockets: an append committed after its socket closed would be stored with
   * its sender never answered. The commit under way still ends ({@link flush} waits for it).
   */
  refuseAppends(error: () => Error): void {
    this.#refusal = error;
    const refused = this.#pending;
    this.#pending = [];
    for (const p of refused) p.reject(error());
    this.#wake?.();
  }

  /** Waits until every queued append has been committed or refused. */
  async flush(): Promise<void> {
    while (this.#draining) await new Promise((r) => setTimeout(r, 5));
  }

  /**
   * Positions in the queue of the next commit's appends, ascending: rooms in the order of their
   * oldest queued append, each with its queued appends in order for as long as they fit. Taking
   * only the queue's prefix capped a commit at one append per room once senders in more rooms
   * than a commit may check interleave, however far behind the commits had fallen.
   */
  #pick(): number[] {
    // A room with an append left out keeps its later ones out too: a room's order is its seqs.
    const held = new Set<string>();
    const taken: number[] = [];
    // Rooms' names in UTF-8 bytes, measured once per pick.
    const rooms = new Map<string, number>();
    let bytes = 0;
    let keys = 0;
    let mutations = 0;
    const perMessage = 1 + (this.#historyLimit > 0 ? 1 : 0);
    const scan = Math.min(this.#pending.length, MAX_BATCH_SCAN);
    for (let i = 0; i < scan && mutations < MAX_BATCH_MUTATIONS; i++) {
      const p = this.#pending[i];
      if (held.has(p.room)) continue;
      let roomBytes = rooms.get(p.room);
      const fresh = roomBytes === undefined;
      roomBytes ??= utf8Length(p.room);
      const roomKeys = perMessage + (p.draft.attachments.length > 0 ? 1 : 0);
      const cost = roomKeys + (p.draft.clientId ? 1 : 0) + (fresh ? 1 : 0) +
        (p.draft.pendingFiles ? 1 : 0);
      const keyCost = keyBytes(roomBytes, p.draft, roomKeys, fresh);
      // The first append always goes: one over a cap still commits, and alone, as it then holds
      // back every later one.
      if (
        taken.length > 0 &&
        (mutations + cost > MAX_BATCH_MUTATIONS || bytes + p.size > MAX_BATCH_BYTES ||
          keys + keyCost > MAX_BATCH_KEY_BYTES || (fresh && rooms.size >= MAX_BATCH_ROOMS))
      ) {
        held.add(p.room);
        continue;
      }
      rooms.set(p.room, roomBytes);
      bytes += p.size;
      keys += keyCost;
      mutations += cost;
      taken.push(i);
    }
    return taken;
  }

  /** Takes the appends at `positions` (ascending) out of the queue, keeping the rest in order. */
  #take(positions: number[]): PendingAppend[] {
    const pending = this.#pending;
    const last = positions[positions.length - 1];
    if (positions.length === last + 1) {
      this.#pending = pending.slice(last + 1);
      return pending.slice(0, last + 1);
    }
    const batch: PendingAppend[] = [];
    const rest: PendingAppend[] = [];
    let next = 0;
    for (let i = 0; i <= last; i++) {
      if (positions[next] === i) {
        batch.push(pending[i]);
        next++;
      } else rest.push(pending[i]);
    }
    this.#pending = rest.concat(pending.slice(last + 1));
    return batch;
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0) {
      // Sends that arrive during the pause join this commit instead of paying for one each;
      // a queue that already fills a commit has nothing to wait for.
      const pause = this.#lastCommitStart + this.#commitIntervalMs - performance.now();
      let positions = pause > 0 && this.#busy() ? this.#pick() : undefined;
      if (positions?.length === this.#pending.length) {
        await new Promise<void>((r) => {
          const timer = setTimeout(r, pause);
          this.#wake = () => {
            clearTimeout(timer);
            r();
          };
        });
        this.#wake = undefined;
        positions = undefined;
        // Refused meanwhile (a shutdown): nothing is left to commit.
        if (this.#pending.length === 0) continue;
      }
      this.#lastCommitStart = performance.now();
      const batch = this.#take(positions ?? this.#pick());
      try {
        const outcomes = await this.#tracked(batch);
        batch.forEach((p, i) => settle(p, outcomes[i]));
      } catch (err) {
        if (batch.length === 1) {
          batch[0].reject(err);
          continue;
        }
        // One bad value must not fail its neighbours: commit them one by one.
        for (const p of batch) {
          try {
            settle(p, (await this.#tracked([p]))[0]);
          } catch (e) {
            p.reject(e);
          }
        }
      }
    }
    this.#draining = false;
  }

  /** Whether the process used more CPU than `pauseAboveCpu` of a core in the last sample. */
  #busy(): boolean {
    if (this.#pauseAboveCpu <= 0) return true;
    const now = performance.now();
    if (now - this.#cpu.at >= CPU_SAMPLE_MS) {
      const used = this.#cpuTimeMs();
      this.#cpu = {
        at: now,
        used,
        busy: (used - this.#cpu.used) / (now - this.#cpu.at) > this.#pauseAboveCpu,
      };
    }
    return this.#cpu.busy;
  }

  /**
   * The client ids among `entries` that name a message of a deleted life of their room: one a
   * purge under way has yet to delete (at or below its mark). A send with such an id belongs to
   * the room's new life: it is stored, not answered with a message that is going.
   */
  async #staleIds(
    entries: Deno.KvEntryMaybe<number>[],
    generations: Map<string, number>,
  ): Promise<Map<string, Deno.KvEntryMaybe<number>>> {
    const stale = new Map<string, Deno.KvEntryMaybe<number>>();
    // A room never deleted has no mark: the common case reads nothing more.
    const found = entries.filter((e) =>
      e.value !== null && (generations.get(String(e.key[1])) ?? 0) > 0
    );
    if (found.length === 0) return stale;
    const rooms = [...new Set(found.map((e) => String(e.key[1])))];
    const marks = await getManyChunked<Deno.KvU64>(this.#kv, rooms.map(KV_KEYS.purging));
    const bounds = new Map(rooms.map((r, i) => [r, marks[i].value?.value]));
    for (const e of found) {
      const bound = bounds.get(String(e.key[1]));
      if (bound !== undefined && e.value! <= Number(bound)) stale.set(JSON.stringify(e.key), e);
    }
    return stale;
  }

  /**
   * Adds to `known`, under the key notices have now, the client ids found under their old key
   * (`oldNoticeKey`; `oldEntries`) that name a kept system message of that client id, not of a
   * deleted life of the room (`stale`): a notice sent before an upgrade and again after it is
   * answered with its first message. Reads nothing when no old key is found. One whose message
   * retention dropped is stored anew, as the user "system"'s message may have held that key.
   */
  async #oldNoticeIds(
    oldEntries: Deno.KvEntryMaybe<number>[],
    stale: Map<string, unknown>,
    known: Map<string, number>,
  ): Promise<void> {
    const found = oldEntries.filter((e) => e.value !== null && !stale.has(JSON.stringify(e.key)));
    if (found.length === 0) return;
    const messages = await getManyChunked<Message>(
      this.#kv,
      found.map((e) => KV_KEYS.message(String(e.key[1]), e.value!)),
    );
    for (const { value: m } of messages) {
      // The user "system"'s own message under the same key is not the notice's.
      if (!m || m.sender !== null || m.clientId === undefined) continue;
      const text = JSON.stringify(KV_KEYS.idempotency(m.room, true, m.clientId));
      if (!known.has(text)) known.set(text, m.seq);
    }
  }

  /** Commits a batch as the one in flight, which a room's check waits out. */
  #tracked(batch: PendingAppend[]): Promise<Outcome[]> {
    const commit = this.#commit(batch);
    this.#committing = commit;
    const done = () => {
      if (this.#committing === commit) this.#committing = undefined;
    };
    commit.then(done, done);
    return commit;
  }

  async #commit(batch: PendingAppend[]): Promise<Outcome[]> {
    const started = performance.now();
    const rooms = [...new Set(batch.map((p) => p.room))];
    const idemKeys = batch.map((p) =>
      p.draft.clientId ? KV_KEYS.idempotency(p.room, senderKey(p.draft), p.draft.clientId) : null
    );
    const idemTexts = idemKeys.map((k) => k ? JSON.stringify(k) : "");
    // Read as well for notices only, so a user's send reads nothing more.
    const oldKeys = batch.map((p) => oldNoticeKey(p.room, p.draft));
    /** The ids the first attempt checked, to tell whether its failure was one of them. */
    let checkedFirst: Set<string> | undefined;
    /** Per room, the head's seq and its message's time the last attempt held (see below). */
    let heldBefore = new Map<string, { seq: number; at: number }>();
    /** Per room, the newest generation a draft was admitted under. */
    const admitted = new Map<string, number>();
    for (const { room, draft } of batch) {
      if (draft.generation !== undefined && draft.generation > (admitted.get(room) ?? 0)) {
        admitted.set(room, draft.generation);
      }
    }
    for (let attempt = 0;; attempt++) {
      // Heads this store committed last are taken from memory; a stale one (another writer got
      // there first) fails its check, and the retry reads every head afresh. One held under an
      // older generation than a draft's is stale for sure (the room was deleted since): read now.
      const unknown = attempt === 0
        ? rooms.filter((r) =>
          !this.#heads.has(r) || (admitted.get(r) ?? 0) > this.#heads.get(r)!.generation
        )
        : rooms;
      // A head and its generation side by side, so that one getMany (a snapshot; chunks of 10
      // keep pairs whole) reads both: a purge changes the two in one commit.
      const readHeads = await getManyChunked<unknown>(
        this.#kv,
        unknown.flatMap((r) => [KV_KEYS.head(r), KV_KEYS.generation(r)]),
      );
      // Client ids are read after the heads the commit checks: another writer's id stored
      // between the two reads changed its head too, so the check fails and the retry sees it.
      // Read the other way round, a head read after that writer's commit would pass the check
      // with its id unseen, and the message would be stored twice.
      // New client ids are the rule: as many as the commit has checks to spare are checked to
      // be absent by the commit itself rather than read before it. A failed check looks like a
      // stale head, and the retry reads every one.
      const checked = new Set<string>();
      let spare = attempt === 0 && started >= this.#idemChecksOffUntil
        ? MAX_CHECKS - rooms.length
        : 0;
      for (const text of idemTexts) {
        if (spare === 0) break;
        if (text === "" || checked.has(text)) continue;
        checked.add(text);
        spare--;
      }
      // The head messages of rooms read afresh, in the same round trip: a message's time follows
      // the one before it (writers' clocks differ), which the head check keeps true at commit.
      // A head message whose time the last attempt held is not read again: a retry after
      // another writer's commit reads only the rooms that moved.
      const lastSeqs = unknown.map((_, i) => (readHeads[2 * i].value as number | null) ?? 0);
      const knownAt = unknown.map((r, i) =>
        lastSeqs[i] === 0
          ? 0
          : heldBefore.get(r)?.seq === lastSeqs[i]
          ? heldBefore.get(r)!.at
          : undefined
      );
      const lastKeys = unknown.flatMap((r, i) =>
        knownAt[i] === undefined ? [KV_KEYS.message(r, lastSeqs[i])] : []
      );
      const readIdem = idemKeys.filter((k, i): k is Deno.KvKey =>
        k !== null && !checked.has(idemTexts[i])
      );
      const read = await getManyChunked<unknown>(this.#kv, [
        ...lastKeys,
        ...readIdem,
        ...oldKeys.filter((k) => k !== null),
      ]);
      const lastMessages = read.slice(0, lastKeys.length) as Deno.KvEntryMaybe<Message>[];
      const idemEnd = lastKeys.length + readIdem.length;
      const idemEntries = read.slice(lastKeys.length, idemEnd) as Deno.KvEntryMaybe<number>[];
      const oldEntries = read.slice(idemEnd) as Deno.KvEntryMaybe<number>[];
      let nextLast = 0;
      const fresh = new Map(unknown.map((r, i): [string, HeldHead] => [r, {
        entry: readHeads[2 * i] as Deno.KvEntryMaybe<number>,
        generation: generationOf(readHeads[2 * i + 1]),
        lastAt: knownAt[i] ?? timeOf(lastMessages[nextLast++].value),
      }]));
      const held = rooms.map((r) => fresh.get(r) ?? this.#heads.get(r)!);
      heldBefore = new Map(
        rooms.map((r, i) => [r, { seq: held[i].entry.value ?? 0, at: held[i].lastAt }]),
      );
      const headEntries = held.map((h) => h.entry);
      const generations = new Map(rooms.map((r, i) => [r, held[i].generation]));
      for (const [room, h] of fresh) this.#noteGeneration(room, h.generation, started);
      // Client ids already stored (or repeated inside this batch) resolve to the first message.
      const known = new Map<string, number>();
      for (const entry of idemEntries) {
        if (entry.value !== null) known.set(JSON.stringify(entry.key), entry.value);
      }
      const stale = await this.#staleIds([...idemEntries, ...oldEntries], generations);
      for (const text of stale.keys()) known.delete(text);
      await this.#oldNoticeIds(oldEntries, stale, known);
      if (attempt === 0) checkedFirst = checked;
      else if (checkedFirst && [...checkedFirst].some((text) => known.has(text))) {
        this.#idemChecksOffUntil = performance.now() + IDEM_CHECKS_OFF_MS;
        checkedFirst = undefined;
      }
      const op = this.#kv.atomic();
      const heads = new Map<string, number>();
      const startHeads = new Map<string, number>();
      headEntries.forEach((entry, i) => {
        heads.set(rooms[i], entry.value ?? 0);
        startHeads.set(rooms[i], entry.value ?? 0);
        op.check(entry);
      });
      const now = Date.now();
      const lastAts = new Map(rooms.map((r, i) => [r, held[i].lastAt]));
      const results: (Outcome | { room: string; pendingSeq: number })[] = [];
      const dropping = new Set<string>();
      const inBatch = new Map<string, Message>();
      for (let i = 0; i < batch.length; i++) {
        const { room, draft } = batch[i];
        // Admitted before the room was deleted: what it was admitted to is gone. A generation
        // never goes down, so a refusal holds without the head check the commit would add.
        if (draft.generation !== undefined && draft.generation < generations.get(room)!) {
          results.push({ error: roomDeleted() });
          continue;
        }
        const idemKey = idemKeys[i];
        const idemText = idemTexts[i];
        if (idemKey && known.has(idemText)) {
          results.push({ room, pendingSeq: known.get(idemText)! });
          continue;
        }
        if (idemKey && inBatch.has(idemText)) {
          results.push({ message: inBatch.get(idemText)!, duplicate: true });
          continue;
        }
        const seq = heads.get(room)! + 1;
        heads.set(room, seq);
        // Each later than the one before: a time names one message, so history paged by it
        // (the Socket.IO chat's `before`) neither skips a message nor repeats one.
        const at = Math.max(now, lastAts.get(room)! + 1);
        lastAts.set(room, at);
        const message: Message = {
          room,
          seq,
          // From the time it is stamped with, not this clock's: behind another server's, the two
          // would differ, and the id would not lead to its message (ChatService.seqOfId).
          id: objectId(at),
          sender: draft.sender,
          body: draft.body,
          attachments: draft.attachments,
          createdAt: isoMillis(at),
          ...(draft.clientId ? { clientId: draft.clientId } : {}),
        };
        op.set(KV_KEYS.message(room, seq), message, this.#kept);
        // Its files are a message's from now on: no longer the sweep's to delete.
        if (draft.pendingFiles) op.delete(KV_KEYS.pendingFiles(draft.pendingFiles));
        if (message.attachments.length > 0) {
          if (this.#recordsFiles) op.set(KV_KEYS.files(room, seq), message.attachments, this.#kept);
          else op.delete(KV_KEYS.filesRecorded(room));
        }
        // Until the room is checked, what it pushes out is left to the check, which may also
        // have to write the records of older messages first (see #retain).
        if (this.#historyLimit > 0 && seq > this.#historyLimit && this.#retained.has(room)) {
          op.delete(KV_KEYS.message(room, seq - this.#historyLimit));
          dropping.add(room);
        }
        if (idemKey) {
          if (checked.has(idemText)) op.check({ key: idemKey, versionstamp: null });
          // Replaced as read: the purge deletes it only as it read it too.
          else if (stale.has(idemText)) op.check(stale.get(idemText)!);
          op.set(idemKey, seq, { expireIn: IDEMPOTENCY_WINDOW_MS });
          inBatch.set(idemText, message);
        }
        results.push({ message, duplicate: false });
      }
      let written = 0;
      for (const room of rooms) {
        const grown = heads.get(room)! - startHeads.get(room)!;
        if (grown > 0) op.set(KV_KEYS.head(room), heads.get(room)!);
        written += grown;
      }
      // A client id found stored is answered with its message only once the heads it was read
      // under are checked current: by the commit, or with nothing to write, by one of the checks
      // alone. Held in memory, a head may predate a deletion whose purge has yet to reach the
      // id (the purge rewrites the head as it raises the generation), and the message would be
      // answered as stored, then deleted.
      const duplicates = results.some((r) => "pendingSeq" in r);
      const committed = written > 0 || duplicates;
      const res = committed ? await commitRetryingLocks(op) : { ok: true };
      if (!res.ok) {
        for (const room of rooms) this.#heads.delete(room);
        // Another isolate or instance committed to one of these rooms first: read again.
        if (attempt > 200) {
          throw new Error(`Could not append to ${rooms.join(", ")}: too much contention`);
        }
        await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 2)));
        continue;
      }
      if (this.#heads.size > 10_000) this.#heads.clear();
      headEntries.forEach((entry, i) => {
        const room = rooms[i];
        const grown = heads.get(room)! !== startHeads.get(room)!;
        this.#heads.set(room, {
          entry: grown && "versionstamp" in res
            ? { key: entry.key, value: heads.get(room)!, versionstamp: res.versionstamp }
            : entry,
          generation: held[i].generation,
          lastAt: lastAts.get(room)!,
        });
        // The head checked stood until the commit, and a purge rewrites it as it raises the
        // generation: the generation held with it was the room's when this commit started, as
        // a read started then would have said. Sends to a busy room take it (see `generation`)
        // instead of reading it from KV every GENERATION_REUSE_MS.
        if (committed) this.#noteGeneration(room, held[i].generation, started);
      });
      // Nothing below may throw: the batch is committed, and a retry would store it twice.
      const final: Outcome[] = [];
      for (const r of results) {
        if (!("pendingSeq" in r)) {
          final.push(r);
          continue;
        }
        try {
          const original = await this.get(r.room, r.pendingSeq);
          final.push(
            original ? { message: original, duplicate: true } : {
              // Retention dropped it within the idempotency window.
              error: new ChatError(
                "not_found",
                "The message first sent with this client_id is no longer kept",
              ),
            },
          );
        } catch (error) {
          final.push({ error });
        }
      }
      if (written > 0) this.onCommit?.(performance.now() - started, written);
      if (this.#recordsFiles && dropping.size > 0) this.#sweepFilesSoon(dropping);
      if (written > 0) this.#checkSoon(rooms);
      return final;
    }
  }

  /** Queues the rooms not checked since the start (or since they were forgotten) for `#retain`. */
  #checkSoon(rooms: string[]): void {
    if (this.#historyLimit === 0) return;
    for (const room of rooms) {
      // Re-adding keeps the set in order of the last write.
      if (this.#checked.delete(room)) {
        this.#checked.add(room);
        if (this.#holed.delete(room)) this.#checkQueue.push(room);
        continue;
      }
      this.#checked.add(room);
      this.#checkQueue.push(room);
    }
    if (this.#checked.size > MAX_CHECKED_ROOMS) {
      let excess = this.#checked.size - MAX_CHECKED_ROOMS * 0.9;
      for (const room of this.#checked) {
        if (excess <= 0) break;
        // Not yet retained: queued or being checked, and kept so that it is not queued twice.
        if (!this.#retained.has(room)) continue;
        this.#checked.delete(room);
        this.#retained.delete(room);
        this.#holed.delete(room);
        this.#keptBelow.delete(room);
        excess--;
      }
    }
    while (this.#activeCheckers < CHECK_CONCURRENCY && this.#checkQueue.length > 0) {
      this.#activeCheckers++;
      const checker: Promise<void> = this.#runChecks().finally(() =>
        this.#checkers.delete(checker)
      );
      this.#checkers.add(checker);
    }
  }

  /** One checker of the pool: checks queued rooms until none is left. */
  async #runChecks(): Promise<void> {
    try {
      while (this.#checkQueue.length > 0 && !this.#closed) {
        const room = this.#checkQueue.shift()!;
        try {
          await this.#retain(room);
        } catch (err) {
          // Checked again after its next commit.
          this.#checked.delete(room);
          if (!this.#closed) {
            failureLog.failed("history: applying the limit failed", err, `room ${room}`);
          }
        }
      }
    } finally {
      // In the same turn as the empty queue was seen: a room queued next starts a checker.
      this.#activeCheckers--;
    }
  }

  /**
   * Brings a room's stored history in line with this store's limit: whatever is below it goes
   * (all of it when the limit was lowered, or was none; otherwise what the room's commits kept
   * while it was unchecked), its files with the next sweep. Messages with attachments stored
   * before records existed first get theirs, kept ones too: later commits drop them unread.
   */
  async #retain(room: string): Promise<void> {
    if (this.#recordsFiles) {
      const mark = KV_KEYS.filesRecorded(room);
      if ((await this.#kv.get(mark)).versionstamp === null) {
        if (!(await this.#recordFiles(room))) return;
        await commitRetryingLocks(this.#kv.atomic().set(mark, true));
      }
    }
    this.#retained.add(room);
    const last = this.#keptBelow.get(room);
    // A commit built before the room counted as checked dropped nothing of it; the head is read
    // after that commit, and every later one drops its own push-outs.
    await this.#committing?.catch(() => {});
    const prefix = KV_KEYS.messages(room);
    let head = await this.head(room);
    let cut = head - this.#historyLimit + 1;
    let kept = 0;
    // The limit counts messages: below seqs no message took (a restored backup raises the heads,
    // see scripts/backup.ts), older ones are kept as far as the newer ones fall short of it. The
    // head and the message at the cut are read at one moment: a commit deletes only below its
    // new head, so a cut message missing then is a hole, not one a commit pushed out meanwhile.
    for (let read = 0;; read++) {
      const [now, atCut] = await this.#kv.getMany([KV_KEYS.head(room), KV_KEYS.message(room, cut)]);
      if (((now.value as number | null) ?? 0) === head) {
        if (cut <= 1 || atCut.versionstamp !== null) break;
        let lowest = head + 1;
        const above = this.#kv.list<Message>({ prefix, start: [...prefix, cut] }, { limit: 1 });
        for await (const e of above) lowest = e.value.seq;
        // Read after the head: a push-out meanwhile makes it fewer, and more are kept below.
        const short = this.#historyLimit - (head - lowest + 1);
        if (short > 0) {
          // Below the hole messages go only oldest first (by any store's check) and none come:
          // while the last check's oldest is there, so is all it kept, and the ones to drop are
          // the oldest of those, read in one batch (one snapshot) with the one after them.
          const drop = last ? Math.max(last.count - short, 0) : Infinity;
          const next: number[] = [];
          if (drop < MAX_LIST_BATCH && last!.oldest < cut) {
            const from = { start: [...prefix, last!.oldest], end: [...prefix, cut] };
            for await (const e of this.#kv.list<Message>(from, { limit: drop + 1 })) {
              next.push(e.value.seq);
            }
          }
          if (next.length === drop + 1 && next[0] === last!.oldest) {
            cut = next[drop];
            kept = last!.count - drop;
          } else {
            const below = { prefix, end: [...prefix, cut] };
            for await (const e of this.#kv.list<Message>(below, { limit: short, reverse: true })) {
              cut = e.value.seq;
              kept++;
            }
          }
        }
        break;
      }
      if (read >= 5) {
        // Commits keep moving the head: checked again after the room's next commit.
        this.#checked.delete(room);
        return;
      }
      head = (now.value as number | null) ?? 0;
      cut = head - this.#historyLimit + 1;
    }
    const dropped = await this.#deleteListed({ prefix, end: [...prefix, cut] });
    if (dropped > 0 && this.#recordsFiles) this.#sweepFilesSoon([room]);
    // Left in place while a check runs, for the file sweep. One cut short leaves it behind what
    // KV holds: the next check finds its oldest gone and reads all again; a sweep stops short.
    if (kept > 0) this.#keptBelow.set(room, { oldest: cut, count: kept });
    else this.#keptBelow.delete(room);
    if (kept > 0 && !this.#closed) {
      this.#holed.add(room);
      // A commit since the head was read queued no check (the room was not yet in #holed).
      if ((await this.head(room)) !== head && this.#holed.delete(room)) {
        this.#checkQueue.push(room);
      }
    }
  }

  /**
   * Deletes the listed entries that pass `test`, a batch per commit, each on condition that it
   * is unchanged (and with it the key `companion` names for it); resolves to how many it found.
   */
  async #deleteListed(
    selector: Deno.KvListSelector,
    test: (value: unknown) => boolean = () => true,
    companion?: (key: Deno.KvKey) => Deno.KvKey,
  ): Promise<number> {
    let found = 0;
    let batch: Deno.KvEntry<unknown>[] = [];
    const deleteBatch = async () => {
      await this.#commitEach(batch, (op, e) => {
        op.check(e).delete(e.key);
        return companion ? op.delete(companion(e.key)) : op;
      });
      found += batch.length;
      batch = [];
    };
    for await (const e of this.#kv.list(selector)) {
      if (this.#closed) break;
      if (!test(e.value)) continue;
      batch.push(e);
      if (batch.length >= RETENTION_BATCH) await deleteBatch();
    }
    if (batch.length > 0 && !this.#closed) await deleteBatch();
    return found;
  }

  /**
   * Commits `add` for all entries in one operation; when a check fails (one of them changed
   * meanwhile), commits each alone, so that only the changed ones are left out.
   */
  async #commitEach<T>(
    entries: T[],
    add: (op: Deno.AtomicOperation, entry: T) => Deno.AtomicOperation,
  ): Promise<void> {
    const op = this.#kv.atomic();
    for (const e of entries) add(op, e);
    if (!(await commitRetryingLocks(op)).ok) {
      for (const e of entries) await commitRetryingLocks(add(this.#kv.atomic(), e));
    }
  }

  /**
   * Writes the missing attachment records of a room's messages; false when cut short by close.
   * A record is written only where none is and while its message is still stored: a record
   * claimed by a sweep (its message gone, its files deleted) must never come back, or the
   * files, whose names are reused, would be deleted twice.
   */
  async #recordFiles(room: string): Promise<boolean> {
    const recorded = new Set<number>();
    for await (const e of this.#kv.list({ prefix: KV_KEYS.roomFiles(room) })) {
      recorded.add(e.key[2] as number);
    }
    let missing: Deno.KvEntry<Message>[] = [];
    const record = (op: Deno.AtomicOperation, e: Deno.KvEntry<Message>) => {
      const key = KV_KEYS.files(room, e.value.seq);
      return op.check(e).check({ key, versionstamp: null }).set(key, e.value.attachments);
    };
    const write = async () => {
      // Another store may have recorded, or retention dropped, one of them meanwhile.
      await this.#commitEach(missing, record);
      missing = [];
    };
    for await (const e of this.#kv.list<Message>({ prefix: KV_KEYS.messages(room) })) {
      if (this.#closed) return false;
      if (e.value.attachments.length === 0 || recorded.has(e.value.seq)) continue;
      missing.push(e);
      if (missing.length >= RETENTION_BATCH) await write();
    }
    if (missing.length > 0) await write();
    return true;
  }

  /** Waits until every room committed to so far has been checked against the history limit. */
  async retained(): Promise<void> {
    while (this.#checkers.size > 0) await Promise.all(this.#checkers);
  }

  /** Schedules the deletion of the files of messages these rooms dropped. */
  #sweepFilesSoon(rooms: Iterable<string>): void {
    for (const room of rooms) this.#dropped.add(room);
    if (this.#fileSweep !== undefined || this.#closed) return;
    this.#fileSweep = setTimeout(() => {
      this.#fileSweep = undefined;
      this.#sweeping = this.sweepFiles().finally(() => this.#sweeping = undefined);
    }, this.#fileSweepMs);
    // Files a shutdown leaves behind go with the room's next drop: the sweep takes all below.
    Deno.unrefTimer(this.#fileSweep);
  }

  /**
   * Deletes the files of messages retention has dropped, in the rooms that dropped some since
   * the last sweep. Each record is claimed (deleted, on condition that it is still there and
   * its message is gone) before its files are: file names are reused once free, so a second
   * sweeper, or a record a crash left behind, must never delete a file twice.
   */
  async sweepFiles(): Promise<void> {
    const rooms = [...this.#dropped];
    this.#dropped.clear();
    for (const room of rooms) {
      try {
        let end = (await this.head(room)) - this.#historyLimit + 1;
        // The messages a check kept below a restored backup's jump are below that too: their
        // records are not tried (a refused commit each, at every sweep of the room).
        const below = this.#keptBelow.get(room);
        if (below) end = Math.min(end, below.oldest);
        await this.#claimRecords(room, { end: [...KV_KEYS.roomFiles(room), end] });
      } catch (err) {
        // Looked at again with the room's next drop.
        this.#dropped.add(room);
        if (!this.#closed) {
          failureLog.failed("history: deleting dropped files failed", err, `room ${room}`);
        }
      }
    }
  }

  /** Deletes the files of the room's records (below `end`, if given) whose messages are gone. */
  async #claimRecords(room: string, range: { end?: Deno.KvKey } = {}): Promise<void> {
    const prefix = KV_KEYS.roomFiles(room);
    const selector = range.end ? { prefix, end: range.end } : { prefix };
    const kv = this.#kv;
    await this.#discardInBatches((async function* () {
      for await (const e of kv.list<Attachment[]>(selector)) {
        const message = KV_KEYS.message(room, e.key[2] as number);
        const due = KV_KEYS.filesDue(room, e.key[2] as number);
        const claim = await commitRetryingLocks(
          kv.atomic().check(e).check({ key: message, versionstamp: null }).delete(e.key)
            .set(due, e.value),
        );
        if (claim.ok) yield { key: due, files: e.value };
      }
    })());
  }

  /** Deletes due files as they come, {@link RETENTION_BATCH} at a time (see `#discardDue`). */
  async #discardInBatches(due: AsyncIterable<DueFiles>): Promise<void> {
    let batch: DueFiles[] = [];
    for await (const d of due) {
      batch.push(d);
      if (batch.length < RETENTION_BATCH) continue;
      await this.#discardDue(batch);
      batch = [];
    }
    await this.#discardDue(batch);
  }

  /**
   * Deletes files whose messages are gone, then, in one commit, the records that said they were
   * due (at most {@link RETENTION_BATCH} of them).
   */
  async #discardDue(due: DueFiles[]): Promise<void> {
    if (!this.#discard || due.length === 0) return;
    for (const { files } of due) await this.#discard(files);
    const op = this.#kv.atomic();
    for (const { key } of due) op.delete(key);
    // One left behind only has the next start delete files already gone: a deleted name is
    // never given again (see LocalMediaStore.delete).
    await commitRetryingLocks(op).catch(() => {});
  }

  /** Names the files a send stored so far, until its commit deletes the entry. */
  async note(id: string, files: Attachment[]): Promise<void> {
    const named = await commitRetryingLocks(
      this.#kv.atomic().set(KV_KEYS.pendingFiles(id), { at: Date.now(), files }),
    );
    if (!named.ok) throw new Error("Could not name the files of a send");
  }

  /** Forgets a send's pending files (discarded, or held by the original of a duplicate). */
  async forget(id: string): Promise<void> {
    const forgotten = await commitRetryingLocks(
      this.#kv.atomic().delete(KV_KEYS.pendingFiles(id)),
    );
    if (!forgotten.ok) throw new Error("Could not forget the files of a send");
  }

  /**
   * Deletes the files of sends named more than `olderThanMs` ago whose commit never came (a
   * crash between storing the files and the commit). Each entry is claimed first, turned into
   * a due record in the same commit, so two servers sweeping at once delete its files once and
   * a crash during the deletion leaves it for the next start; the names deleted are never
   * given again, so a late commit of such a send finds its files gone, not replaced.
   */
  sweepPendingFiles(olderThanMs = PENDING_FILES_MAX_AGE_MS): Promise<void> {
    return this.#inBackground((async () => {
      if (!this.#discard) return;
      const entries = this.#kv.list<{ at: number; files: Attachment[] }>({
        prefix: KV_KEYS.allPendingFiles,
      });
      for await (const e of entries) {
        if (this.#closed) return;
        if (Date.now() - e.value.at < olderThanMs) continue;
        const due = KV_KEYS.pendingDue(e.key[1] as string);
        const claim = await commitRetryingLocks(
          this.#kv.atomic().check(e).delete(e.key).set(due, e.value.files),
        );
        if (claim.ok) await this.#discardDue([{ key: due, files: e.value.files }]);
      }
    })());
  }

  /** Sweeps the sends' pending files now and every 10 minutes, until the store closes. */
  keepSweepingPendingFiles(): void {
    const sweep = () =>
      this.sweepPendingFiles().catch((err) => {
        if (!this.#closed) {
          failureLog.failed("history: deleting the files of unsent messages failed", err);
        }
      });
    this.#pendingSweep?.stop();
    this.#pendingSweep = pollEvery(PENDING_FILES_MAX_AGE_MS, sweep, { atOnce: true });
  }

  /**
   * Deletes the files a crash left due (their messages deleted, the files not yet): a server
   * calls it when it starts. Another server deleting the same files meanwhile is harmless: a
   * deleted name is never given again, so a second deletion finds nothing.
   */
  finishFileDeletions(): Promise<void> {
    return this.#inBackground((async () => {
      if (!this.#discard) return;
      await this.#discardInBatches(this.#allDue());
    })());
  }

  /** Every record of files due, until the store closes. */
  async *#allDue(): AsyncGenerator<DueFiles> {
    for await (const e of this.#kv.list<Attachment[]>({ prefix: KV_KEYS.allFilesDue })) {
      if (this.#closed) return;
      yield { key: e.key, files: e.value };
    }
  }

  /** Work that `close` waits for, so that none of it writes to a closed KV. */
  #inBackground(work: Promise<void>): Promise<void> {
    this.#background.add(work);
    const done = () => this.#background.delete(work);
    work.then(done, done);
    return work;
  }

  /**
   * Deletes a room's history up to its head at the start: its messages, their files, read
   * cursors and idempotency records; resolves to the number of messages deleted. The head stays,
   * so a room re-created under the same id never hands out a seq (a ticket's `pk`) a second time.
   * A purge that fails, or that a crash cuts short, is finished by {@link resumePurges}: this
   * store tries again `purgeRetryMs` later, and a server calls it when it starts.
   */
  async purge(room: string, marked?: (generation: number) => void): Promise<number> {
    if (this.#closed) throw new Error("The message store is closed");
    let isMarked = false;
    try {
      // Bounded, so that a room written to meanwhile (re-created, or by token claims) keeps what
      // came after the deletion; the bound is stored first, so that a resumed purge keeps it.
      // The head is written again (same value, new versionstamp) with the generation raised, so
      // that every commit under way to the room checks it, fails, and reads the new generation.
      let head = 0;
      let generation = 0;
      await commitUntilChecked(async () => {
        const [entry, gen] = await this.#kv.getMany<[number, Deno.KvU64]>([
          KV_KEYS.head(room),
          KV_KEYS.generation(room),
        ]);
        head = entry.value ?? 0;
        generation = generationOf(gen) + 1;
        return {
          op: this.#kv.atomic().check(entry, gen).set(entry.key, head)
            .set(gen.key, new Deno.KvU64(BigInt(generation)))
            .max(KV_KEYS.purging(room), BigInt(head)),
        };
      }, () => `Could not mark ${room} deleted: too much contention`);
      this.#heads.delete(room);
      // Held as read now, so that a read of the old value still under way does not replace it.
      this.#generations.set(room, { value: generation, at: performance.now() });
      isMarked = true;
      try {
        marked?.(generation);
      } catch (err) {
        console.error(`store: the purge of ${room} could not tell it was marked:`, err);
      }
      return await this.#purgeTo(room, head);
    } catch (err) {
      // Without its mark stored, only this store remembers the room: it starts again from there.
      if (!isMarked) this.#unmarked.add(room);
      this.#retryPurgesLater();
      throw err;
    }
  }

  /** Finishes the purges left unfinished; a room whose purge fails is logged and tried later. */
  resumePurges(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    // A mark stored while a resume runs may sit behind its listing: that resume goes round again.
    this.#resumeAgain = this.#resuming !== undefined;
    this.#resuming ??= (async () => {
      let failed = false;
      const attempt = async (what: () => Promise<unknown>, room: string) => {
        try {
          await what();
        } catch (err) {
          failed = true;
          // Each room's is tried again later: a KV outage is logged once for all of them.
          if (!this.#closed) {
            failureLog.failed("history: deleting a room failed", err, `room ${room}`);
          }
        }
      };
      try {
        do {
          this.#resumeAgain = false;
          for (const room of [...this.#unmarked]) {
            this.#unmarked.delete(room);
            await attempt(() => this.purge(room), room);
          }
          for await (const e of this.#kv.list<Deno.KvU64>({ prefix: KV_KEYS.purges })) {
            if (this.#closed) return;
            const room = e.key[1] as string;
            await attempt(() => this.#purgeTo(room, Number(e.value.value)), room);
          }
        } while (this.#resumeAgain && !this.#closed);
      } catch (err) {
        failed = true;
        if (!this.#closed) console.error("history: listing the unfinished deletions failed:", err);
      } finally {
        this.#resuming = undefined;
      }
      if (failed) this.#retryPurgesLater();
    })();
    return this.#resuming;
  }

  #retryPurgesLater(): void {
    if (this.#closed || this.#purgeRetry !== undefined) return;
    this.#purgeRetry = setTimeout(() => {
      this.#purgeRetry = undefined;
      this.resumePurges();
    }, this.#purgeRetryMs);
    Deno.unrefTimer(this.#purgeRetry);
  }

  /**
   * The work of {@link purge}, up to seq `head`; the purge's mark goes when it is done. Read
   * cursors and client ids go only where they point at or below `head`: a purge resumed after
   * the room took new messages keeps theirs.
   */
  async #purgeTo(room: string, head: number): Promise<number> {
    const end = [...KV_KEYS.messages(room), head + 1];
    let deleted = 0;
    let batch: Deno.KvEntry<Message>[] = [];
    // A message goes together with its attachment record, on condition that neither changed:
    // whoever deletes the pair (this, or retention's sweep) is the one that deletes the files.
    const deletePairs = async (entries: Deno.KvEntry<Message>[]): Promise<boolean> => {
      const records = await getManyChunked<Attachment[]>(
        this.#kv,
        entries.map((e) => KV_KEYS.files(room, e.value.seq)),
      );
      const op = this.#kv.atomic();
      entries.forEach((e, i) => op.check(e).check(records[i]).delete(e.key).delete(records[i].key));
      const due: DueFiles[] = this.#discard
        ? entries.filter((e) => e.value.attachments.length > 0)
          .map((e) => ({ key: KV_KEYS.filesDue(room, e.value.seq), files: e.value.attachments }))
        : [];
      for (const d of due) op.set(d.key, d.files);
      if (!(await commitRetryingLocks(op)).ok) return false;
      deleted += entries.length;
      await this.#discardDue(due);
      return true;
    };
    const deleteBatch = async () => {
      if (!(await deletePairs(batch))) {
        // Retention dropped one meanwhile, or a check recorded its files: the rest one by one,
        // each read afresh.
        for (const e of batch) {
          for (let attempt = 0; attempt < 10; attempt++) {
            const now = await this.#kv.get<Message>(e.key);
            if (now.versionstamp === null || (await deletePairs([now]))) break;
          }
        }
      }
      batch = [];
    };
    for await (const e of this.#kv.list<Message>({ prefix: KV_KEYS.messages(room), end })) {
      if (this.#closed) break;
      batch.push(e);
      if (batch.length >= RETENTION_BATCH) await deleteBatch();
    }
    if (batch.length > 0 && !this.#closed) await deleteBatch();
    // Records of messages retention dropped before the sweep came by.
    if (!this.#closed) {
      await this.#claimRecords(room, { end: [...KV_KEYS.roomFiles(room), head + 1] });
    }
    const upToHead = (value: unknown) =>
      Number(value instanceof Deno.KvU64 ? value.value : value) <= head;
    await this.#deleteListed(
      { prefix: KV_KEYS.reads(room) },
      upToHead,
      (key) => KV_KEYS.readRoom(String(key[2]), room),
    );
    await this.#deleteListed({ prefix: KV_KEYS.roomIdempotency(room) }, upToHead);
    if (this.#closed) throw new Error("The message store closed during the purge");
    // A later purge of the room (re-created and deleted again) raised the mark: it stays for that.
    const mark = await this.#kv.get<Deno.KvU64>(KV_KEYS.purging(room));
    if (mark.value !== null && Number(mark.value.value) <= head) {
      await commitRetryingLocks(this.#kv.atomic().check(mark).delete(mark.key));
    }
    return deleted;
  }

  /** Stops deleting files of dropped messages and checking rooms (the work under way ends first). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#pendingSweep?.stop();
    await Promise.allSettled(this.#background);
    clearTimeout(this.#fileSweep);
    this.#fileSweep = undefined;
    clearTimeout(this.#purgeRetry);
    clearTimeout(this.#indexRetry);
    await this.#resuming;
    await this.#indexing;
    await this.#sweeping;
    await this.retained();
  }

  /** Reads a slice of history in ascending seq order. */
  async list(room: string, query: HistoryQuery): Promise<Message[]> {
    const limit = Math.max(0, Math.min(query.limit, 1000));
    if (limit === 0) return [];
    const prefix = KV_KEYS.messages(room);
    const out: Message[] = [];
    if (query.after !== undefined) {
      const start = [...prefix, query.after + 1];
      const selector = query.before !== undefined
        ? { start, end: [...prefix, query.before] }
        : { prefix, start };
      if (query.before !== undefined && query.before <= query.after + 1) return [];
      for await (const e of this.#kv.list<Message>(selector, { limit })) out.push(e.value);
      return out;
    }
    const selector = query.before !== undefined
      ? { prefix, end: [...prefix, query.before] }
      : { prefix };
    for await (const e of this.#kv.list<Message>(selector, { limit, reverse: true })) {
      out.push(e.value);
    }
    return out.reverse();
  }

  /** The seq of the room's newest message, 0 when it has none. */
  async head(room: string): Promise<number> {
    return (await this.#kv.get<number>(KV_KEYS.head(room))).value ?? 0;
  }

  /** Reads one message by seq. */
  async get(room: string, seq: number): Promise<Message | null> {
    return (await this.#kv.get<Message>(KV_KEYS.message(room, seq))).value;
  }

  /** The lowest seq still kept, head + 1 when the room is empty. */
  async tail(room: string): Promise<number> {
    for await (
      const e of this.#kv.list<Message>({ prefix: KV_KEYS.messages(room) }, { limit: 1 })
    ) {
      return e.value.seq;
    }
    return (await this.head(room)) + 1;
  }

  /**
   * Raises the user's read cursor (KV's `max` keeps it monotonic without a read), or resolves to
   * null and writes nothing while `forgetReader` refuses the user's marks in the room.
   */
  async markRead(room: string, user: UserId, seq: number): Promise<number | null> {
    const id = String(user);
    // Checks that the keys are absent need no read, so the mark costs no more round trips.
    const res = await commitRetryingLocks(
      this.#kv.atomic()
        .check({ key: KV_KEYS.readForgotten(id), versionstamp: null })
        .check({ key: KV_KEYS.readForgotten(id, room), versionstamp: null })
        .max(KV_KEYS.read(room, id), BigInt(Math.max(0, seq)))
        .set(KV_KEYS.readRoom(id, room), true),
    );
    if (!res.ok) return null;
    return await this.cursor(room, user);
  }

  /** The user's read cursor, 0 when unset. */
  async cursor(room: string, user: UserId): Promise<number> {
    const entry = await this.#kv.get<Deno.KvU64>(KV_KEYS.read(room, String(user)));
    return entry.value ? Number(entry.value.value) : 0;
  }

  /** Every user's read cursor in the room, or the first `limit` of them by user id. */
  async cursors(room: string, limit?: number): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const entries = this.#kv.list<Deno.KvU64>({ prefix: KV_KEYS.reads(room) }, { limit });
    for await (const e of entries) {
      out.set(String(e.key[2]), Number(e.value.value));
    }
    return out;
  }

  /**
   * Deletes the user's cursors in `rooms` and, when `everywhere` (by default when `rooms` is
   * omitted), in every room they have one; for a while refuses their marks there (everywhere:
   * in every room) so that a server not yet told why cannot store one again.
   */
  async forgetReader(
    user: UserId,
    rooms?: Iterable<string>,
    everywhere: boolean = rooms === undefined,
  ): Promise<void> {
    const id = String(user);
    const refuse = { expireIn: READ_FORGOTTEN_MS };
    // Before the list is read: a mark that commits after this is refused, one before is listed.
    if (everywhere) {
      await commitRetryingLocks(this.#kv.atomic().set(KV_KEYS.readForgotten(id), true, refuse));
    }
    const named = new Set(rooms);
    if (everywhere) {
      for await (const e of this.#kv.list({ prefix: KV_KEYS.readRooms(id) })) {
        named.add(String(e.key[2]));
      }
    }
    await this.#commitBatched([...named], (op, room) => {
      // In the commit that deletes the cursor: a mark either comes before it or is refused.
      if (!everywhere) op.set(KV_KEYS.readForgotten(id, room), true, refuse);
      op.delete(KV_KEYS.read(room, id)).delete(KV_KEYS.readRoom(id, room));
    });
  }

  /**
   * Accepts the user's read marks again at once in `rooms`, or in every room when it is omitted
   * (created again, added back), instead of when what `forgetReader` wrote expires. A user
   * added back to a room after their deletion is back: the deletion's refusal goes too.
   */
  async readmitReader(user: UserId, rooms?: Iterable<string>): Promise<void> {
    const id = String(user);
    const keys = [
      KV_KEYS.readForgotten(id),
      ...[...new Set(rooms ?? [])].map((room) => KV_KEYS.readForgotten(id, room)),
    ];
    await this.#commitBatched(keys, (op, key) => op.delete(key));
  }

  /**
   * Once per KV (a server calls it when it starts, and when {@link olderWriters} changes): gives
   * every read cursor that versions before the `readRoom` list stored its entry there, so that
   * deleting the user finds it, and deletes the ones whose user `forgetReader` deleted meanwhile.
   * While a server of such a version runs it walks again every `indexAgainMs`; a call while a walk
   * runs walks again after it. A failure is logged and tried again.
   */
  indexReadCursors(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#indexing) {
      // The walk under way may have passed a cursor the older server stores now.
      this.#indexAgain = true;
      return this.#indexing;
    }
    clearTimeout(this.#indexRetry);
    this.#indexing = (async () => {
      try {
        let done: boolean;
        do {
          this.#indexAgain = false;
          const { indexed, deleted, ...walk } = await this.#indexReadCursors();
          done = walk.done;
          if (indexed + deleted > 0) {
            console.log(
              `read cursors: listed ${indexed} stored by an older version in their users' rooms` +
                (deleted > 0 ? `, deleted ${deleted} of users deleted since` : ""),
            );
          }
        } while (this.#indexAgain && !this.#closed);
        if (!done && !this.#closed) {
          this.#indexRetry = setTimeout(() => this.indexReadCursors(), this.#indexAgainMs);
          Deno.unrefTimer(this.#indexRetry);
        }
      } catch (err) {
        if (this.#closed) return;
        console.error("read cursors: listing those an older version stored failed:", err);
        // Later, as a failed purge is: what failed it (a KV outage, a full disk) may pass.
        this.#indexRetry = setTimeout(() => this.indexReadCursors(), this.#purgeRetryMs);
        Deno.unrefTimer(this.#indexRetry);
      } finally {
        this.#indexing = undefined;
      }
    })();
    return this.#indexing;
  }

  /**
   * The work of {@link indexReadCursors}, from where the last run stopped. Servers starting
   * together each do it (every write is checked, so the same work twice is harmless); the first
   * to finish stores the mark, which stops the others. A walk while an older server runs (it may
   * store cursors behind the walk) starts from the first cursor, stores neither how far it came
   * nor the mark, and deletes a mark set before that server came (`done` false).
   */
  async #indexReadCursors(): Promise<{ indexed: number; deleted: number; done: boolean }> {
    const counts = { indexed: 0, deleted: 0, done: true };
    const [mark, progress] = await this.#kv.getMany<[true, Deno.KvKey]>([
      KV_KEYS.readRoomsListed,
      KV_KEYS.readRoomsListing,
    ]);
    const older = this.olderWriters();
    if (mark.versionstamp !== null) {
      if (!older) return counts;
      await commitRetryingLocks(this.#kv.atomic().check(mark).delete(mark.key));
    }
    // Checked at each commit too: an older server seen meanwhile (a call during the walk).
    const partial = () => older || this.#indexAgain;
    const prefix = ["read"];
    const cursors = this.#kv.list<Deno.KvU64>(
      progress.value && !older ? { prefix, start: progress.value } : { prefix },
    );
    let batch: Deno.KvKey[] = [];
    let unsaved = 0;
    // Resolves to true when another server finished the listing meanwhile: before it saw the
    // older server, when this walk has (a later walk deletes its mark).
    const take = async () => {
      unsaved += batch.length;
      const { listed, saved } = await this.#indexCursors(
        batch,
        unsaved >= INDEX_PROGRESS_EVERY,
        counts,
        !partial(),
      );
      if (saved) unsaved = 0;
      batch = [];
      if (listed) counts.done = !partial();
      return listed;
    };
    for await (const e of cursors) {
      if (this.#closed) throw new Error("The message store closed while it listed read cursors");
      batch.push(e.key);
      if (batch.length >= INDEX_BATCH && await take()) return counts;
    }
    if (batch.length > 0 && await take()) return counts;
    // Not `older` alone: it may have come while the walk ran, and the registry says so only now.
    counts.done = !partial() && !this.olderWriters();
    const op = this.#kv.atomic().delete(KV_KEYS.readRoomsListing);
    await commitRetryingLocks(counts.done ? op.set(KV_KEYS.readRoomsListed, true) : op);
    return counts;
  }

  /**
   * Lists the cursors at `keys` that have no `readRoom` entry, or deletes them where
   * `forgetReader` refuses their user's marks (deleted, or taken out of the room, since), and
   * stores how far the listing came (only when `resumable`) when anything is written or `save`;
   * `listed` when another server finished it meanwhile. Every write checks what it read, as marks
   * and deletions go on.
   */
  async #indexCursors(
    keys: Deno.KvKey[],
    save: boolean,
    counts: { indexed: number; deleted: number },
    resumable: boolean,
  ): Promise<{ listed: boolean; saved: boolean }> {
    for (let attempt = 1;; attempt++) {
      const read = await getManyChunked<unknown>(this.#kv, [
        KV_KEYS.readRoomsListed,
        ...keys.flatMap((key) => {
          const [room, user] = [String(key[1]), String(key[2])];
          return [
            key,
            KV_KEYS.readRoom(user, room),
            KV_KEYS.readForgotten(user),
            KV_KEYS.readForgotten(user, room),
          ];
        }),
      ]);
      if (read[0].versionstamp !== null) return { listed: true, saved: false };
      const op = this.#kv.atomic().check(read[0]);
      let indexed = 0;
      let deleted = 0;
      for (let i = 1; i < read.length; i += 4) {
        const [cursor, listed, gone, goneHere] = read.slice(i, i + 4);
        if (cursor.versionstamp === null || listed.versionstamp !== null) continue;
        op.check(cursor, listed, gone, goneHere);
        if (gone.versionstamp !== null || goneHere.versionstamp !== null) {
          op.delete(cursor.key);
          deleted++;
        } else {
          op.set(listed.key, true);
          indexed++;
        }
      }
      if (indexed + deleted === 0 && !save) return { listed: false, saved: false };
      if (resumable) op.set(KV_KEYS.readRoomsListing, keys[keys.length - 1]);
      if ((await commitRetryingLocks(op)).ok) {
        counts.indexed += indexed;
        counts.deleted += deleted;
        return { listed: false, saved: true };
      }
      if (attempt >= 100) throw new Error("Could not list read cursors: too much contention");
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, attempt * 2)));
    }
  }

  /** Commits `add` for the items, `FORGET_BATCH` of them an operation. */
  async #commitBatched<T>(
    items: T[],
    add: (op: Deno.AtomicOperation, item: T) => void,
  ): Promise<void> {
    for (let i = 0; i < items.length; i += FORGET_BATCH) {
      const op = this.#kv.atomic();
      for (const item of items.slice(i, i + FORGET_BATCH)) add(op, item);
      await commitRetryingLocks(op);
    }
  }
}

/** CPU time this process has used, ms, on every thread (KV's and the runtime's included). */
function processCpuTimeMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}
