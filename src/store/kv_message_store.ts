/** Message history and read cursors on Deno KV. */

import { objectId } from "../core/ids.ts";
import type {
  AppendResult,
  HistoryQuery,
  Message,
  MessageDraft,
  MessageStore,
  ReadCursorStore,
  UserId,
} from "../core/types.ts";

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
  /** Idempotency record: sender + client id → seq. */
  idempotency: (room: string, sender: string, clientId: string): Deno.KvKey => [
    "idem",
    room,
    sender,
    clientId,
  ],
  /** A user's read cursor. */
  read: (room: string, user: string): Deno.KvKey => ["read", room, user],
  /** Prefix of a room's read cursors. */
  reads: (room: string): Deno.KvKey => ["read", room],
};

// Deno KV refuses an atomic operation over 800 KiB or 1000 mutations, and values over 64 KiB.
const MAX_BATCH_MESSAGES = 64;
const MAX_BATCH_BYTES = 512 * 1024;

interface PendingAppend {
  draft: MessageDraft;
  size: number;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

const senderKey = (draft: MessageDraft) =>
  draft.sender === null ? "system" : String(draft.sender.id);

/** Rough size of a message's stored value, to keep a batch under KV's commit limit. */
function estimateSize(draft: MessageDraft): number {
  return draft.body.length * 2 + JSON.stringify(draft.sender).length +
    JSON.stringify(draft.attachments).length + 256;
}

/** True for SQLite's "database is locked": another isolate of this process holds the write lock. */
function isLocked(err: unknown): boolean {
  return err instanceof Error && /database is locked|SQLITE_BUSY/i.test(err.message);
}

/** Commits, waiting out the moments another isolate of the process holds the SQLite write lock. */
async function commitRetryingLocks(
  op: Deno.AtomicOperation,
): Promise<Deno.KvCommitResult | Deno.KvCommitError> {
  for (let attempt = 0;; attempt++) {
    try {
      return await op.commit();
    } catch (err) {
      if (!isLocked(err) || attempt >= 100) throw err;
      await new Promise((r) => setTimeout(r, 1 + Math.random() * Math.min(20, attempt * 2)));
    }
  }
}

/**
 * Appends group the concurrent sends of a room into shared commits: each message still gets its
 * own seq and resolves only once its commit is durable. The head key is checked in every commit,
 * so several isolates or instances appending to one room never assign the same seq.
 */
export class KvMessageStore implements MessageStore, ReadCursorStore {
  #kv: Deno.Kv;
  #queues = new Map<string, PendingAppend[]>();
  /** Called after every commit with its duration in ms, for metrics. */
  onCommit?: (ms: number, messages: number) => void;

  #historyLimit: number;

  /**
   * Wraps an open KV handle (the caller owns and closes it). With `historyLimit` > 0 a room
   * keeps only its newest that many messages: each commit deletes the ones it pushes out.
   */
  constructor(kv: Deno.Kv, options: { historyLimit?: number } = {}) {
    this.#kv = kv;
    this.#historyLimit = options.historyLimit ?? 0;
  }

  /** The KV handle, for watchers that follow the same keys. */
  get kv(): Deno.Kv {
    return this.#kv;
  }

  /** Queues the draft for the room's next commit and resolves once it is durable. */
  append(room: string, draft: MessageDraft): Promise<AppendResult> {
    return new Promise((resolve, reject) => {
      let queue = this.#queues.get(room);
      const entry = { draft, size: estimateSize(draft), resolve, reject };
      if (queue) {
        queue.push(entry);
        return;
      }
      queue = [entry];
      this.#queues.set(room, queue);
      // Let the sends of this tick join the first batch.
      queueMicrotask(() => this.#drain(room));
    });
  }

  /** Waits until every queued append has been committed or refused. */
  async flush(): Promise<void> {
    while (this.#queues.size > 0) await new Promise((r) => setTimeout(r, 5));
  }

  async #drain(room: string): Promise<void> {
    const queue = this.#queues.get(room)!;
    while (queue.length > 0) {
      let bytes = 0;
      let count = 0;
      while (
        count < queue.length && count < MAX_BATCH_MESSAGES &&
        (count === 0 || bytes + queue[count].size <= MAX_BATCH_BYTES)
      ) {
        bytes += queue[count].size;
        count++;
      }
      const batch = queue.splice(0, count);
      try {
        const results = await this.#commit(room, batch.map((p) => p.draft));
        batch.forEach((p, i) => p.resolve(results[i]));
      } catch (err) {
        if (batch.length === 1) {
          batch[0].reject(err);
          continue;
        }
        // One bad value must not fail its neighbours: commit them one by one.
        for (const p of batch) {
          try {
            p.resolve((await this.#commit(room, [p.draft]))[0]);
          } catch (e) {
            p.reject(e);
          }
        }
      }
    }
    this.#queues.delete(room);
  }

  async #commit(room: string, drafts: MessageDraft[]): Promise<AppendResult[]> {
    const started = performance.now();
    for (let attempt = 0;; attempt++) {
      const headEntry = await this.#kv.get<number>(KV_KEYS.head(room));
      const head = headEntry.value ?? 0;

      // Client ids already stored (or repeated inside this batch) resolve to the first message.
      const idemKeys = drafts.map((d) =>
        d.clientId ? KV_KEYS.idempotency(room, senderKey(d), d.clientId) : null
      );
      const idemEntries = await this.#getMany<number>(idemKeys.filter((k) => k !== null));
      const known = new Map<string, number>();
      for (const entry of idemEntries) {
        if (entry.value !== null) known.set(JSON.stringify(entry.key), entry.value);
      }

      const op = this.#kv.atomic().check(headEntry);
      const now = Date.now();
      const createdAt = new Date(now).toISOString();
      const results: (AppendResult | { pendingSeq: number })[] = [];
      const inBatch = new Map<string, Message>();
      let seq = head;
      for (let i = 0; i < drafts.length; i++) {
        const draft = drafts[i];
        const idemKey = idemKeys[i];
        const idemText = idemKey ? JSON.stringify(idemKey) : "";
        if (idemKey && known.has(idemText)) {
          results.push({ pendingSeq: known.get(idemText)! });
          continue;
        }
        if (idemKey && inBatch.has(idemText)) {
          results.push({ message: inBatch.get(idemText)!, duplicate: true });
          continue;
        }
        seq++;
        const message: Message = {
          room,
          seq,
          id: objectId(now),
          sender: draft.sender,
          body: draft.body,
          attachments: draft.attachments,
          createdAt,
          ...(draft.clientId ? { clientId: draft.clientId } : {}),
        };
        op.set(KV_KEYS.message(room, seq), message);
        if (this.#historyLimit > 0 && seq > this.#historyLimit) {
          op.delete(KV_KEYS.message(room, seq - this.#historyLimit));
        }
        if (idemKey) {
          op.check({ key: idemKey, versionstamp: null });
          op.set(idemKey, seq, { expireIn: IDEMPOTENCY_WINDOW_MS });
          inBatch.set(idemText, message);
        }
        results.push({ message, duplicate: false });
      }
      if (seq > head) op.set(KV_KEYS.head(room), seq);
      const res = seq > head ? await commitRetryingLocks(op) : { ok: true };
      if (!res.ok) {
        // Another isolate or instance committed first: read the new head and try again.
        if (attempt > 200) throw new Error(`Could not append to ${room}: too much contention`);
        await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 2)));
        continue;
      }
      const final: AppendResult[] = [];
      for (const r of results) {
        if ("pendingSeq" in r) {
          const original = await this.get(room, r.pendingSeq);
          if (!original) throw new Error(`Message ${room}#${r.pendingSeq} vanished`);
          final.push({ message: original, duplicate: true });
        } else final.push(r);
      }
      if (seq > head) this.onCommit?.(performance.now() - started, seq - head);
      return final;
    }
  }

  async #getMany<T>(keys: Deno.KvKey[]): Promise<Deno.KvEntryMaybe<T>[]> {
    const out: Deno.KvEntryMaybe<T>[] = [];
    // kv.getMany takes at most 10 keys.
    for (let i = 0; i < keys.length; i += 10) {
      out.push(...await this.#kv.getMany<T[]>(keys.slice(i, i + 10)));
    }
    return out;
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

  /** Raises the user's read cursor; KV's `max` keeps it monotonic without a read. */
  async markRead(room: string, user: UserId, seq: number): Promise<number> {
    const key = KV_KEYS.read(room, String(user));
    await this.#kv.atomic().max(key, BigInt(Math.max(0, seq))).commit();
    return await this.cursor(room, user);
  }

  /** The user's read cursor, 0 when unset. */
  async cursor(room: string, user: UserId): Promise<number> {
    const entry = await this.#kv.get<Deno.KvU64>(KV_KEYS.read(room, String(user)));
    return entry.value ? Number(entry.value.value) : 0;
  }

  /** Every user's read cursor in the room. */
  async cursors(room: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for await (const e of this.#kv.list<Deno.KvU64>({ prefix: KV_KEYS.reads(room) })) {
      out.set(String(e.key[2]), Number(e.value.value));
    }
    return out;
  }
}
