/**
 * Deno KV helpers the stores and brokers share: chunked `getMany`, coalesced fresh reads, and
 * telling (and waiting out) an open or a commit refused for SQLite's write lock, and telling a
 * volume that takes no write.
 */

/** True for SQLite's "database is locked": another isolate of this process holds the write lock. */
export function isLocked(err: unknown): boolean {
  return err instanceof Error && /database is locked|SQLITE_BUSY/i.test(err.message);
}

/**
 * True for SQLite's answers when the volume takes no write: a full disk ("database or disk is
 * full", or "disk I/O error" when a file beside the database cannot grow), a read-only one.
 */
export function isStorageError(err: unknown): boolean {
  return err instanceof Error &&
    /database or disk is full|disk I\/O error|readonly database|read-only file system|no space left|SQLITE_(FULL|IOERR|READONLY)/i
      .test(err.message);
}

/** Commits, waiting out the moments another isolate of the process holds the SQLite write lock. */
export async function commitRetryingLocks(
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
 * Opens a KV file, waiting out another process's lock on it for up to `waitMs` (`onWait` is told
 * once): Deno's open makes the file WAL outside its own retries, so it gives up after SQLite's
 * 5 s busy timeout, or at once in the moment another process makes a new file WAL, where servers
 * starting side by side on one file meet.
 */
export async function openKvWaitingOutLocks(
  path: string,
  { waitMs, onWait }: { waitMs: number; onWait: () => void },
): Promise<Deno.Kv> {
  const deadline = performance.now() + waitMs;
  for (let attempt = 0;; attempt++) {
    try {
      return await Deno.openKv(path);
    } catch (err) {
      if (!isLocked(err) || performance.now() >= deadline) throw err;
      if (attempt === 0) onWait();
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 200));
    }
  }
}

/**
 * Builds and commits an atomic operation until its checks hold, sitting out writers that got
 * there first with short random waits (and SQLite's write lock with {@link commitRetryingLocks});
 * past `maxAttempts` conflicts it fails with `contention`'s message.
 */
export async function commitUntilChecked(
  // Wrapped: Deno refuses to resolve a promise with an operation (it takes it for a missed commit).
  build: () => Promise<{ op: Deno.AtomicOperation }>,
  contention: () => string,
  maxAttempts = 100,
): Promise<Deno.KvCommitResult> {
  for (let attempt = 1;; attempt++) {
    const res = await commitRetryingLocks((await build()).op);
    if (res.ok) return res;
    if (attempt >= maxAttempts) throw new Error(contention());
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, attempt * 2)));
  }
}

/** Reads any number of keys: `kv.getMany` takes at most 10, so the chunks are read side by side. */
export async function getManyChunked<T>(
  kv: Deno.Kv,
  keys: readonly Deno.KvKey[],
): Promise<Deno.KvEntryMaybe<T>[]> {
  const chunks: Deno.KvKey[][] = [];
  for (let i = 0; i < keys.length; i += 10) chunks.push(keys.slice(i, i + 10));
  return (await Promise.all(chunks.map((c) => kv.getMany<T[]>(c)))).flat();
}

interface Slot<T> {
  running?: Promise<T>;
  queued?: Promise<T>;
}

/**
 * Shares reads of one key among the callers that wait for it, without ever handing a caller a
 * read that started before it asked: a caller joins the read queued behind the running one,
 * which starts when that one ends. A burst of callers thus costs at most two reads, and each
 * sees every write that finished before it called. A read that never settled would hold up
 * the callers queued behind it; Deno KV's reads settle or fail.
 */
export class FreshReads<T> {
  #slots = new Map<string, Slot<T>>();

  /** Runs `read` for `key`, or joins a queued run of it that has not started yet. */
  read(key: string, read: () => Promise<T>): Promise<T> {
    let slot = this.#slots.get(key);
    if (!slot) this.#slots.set(key, slot = {});
    if (slot.queued) return slot.queued;
    const s = slot;
    const after = s.running?.then(() => {}, () => {}) ?? Promise.resolve();
    const run: Promise<T> = after.then(() => {
      s.queued = undefined;
      s.running = run;
      return read();
    }).finally(() => {
      if (s.running === run) s.running = undefined;
      if (!s.running && !s.queued && this.#slots.get(key) === s) this.#slots.delete(key);
    });
    s.queued = run;
    return run;
  }
}
