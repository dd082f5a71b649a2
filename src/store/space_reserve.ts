/**
 * A file of zeros kept beside the KV file and deleted as the volume fills up, so that Deno KV's
 * own writes still find room. Deno KV deletes expired keys in the background and, when that
 * write fails, ends the whole process ("KV collect expired failed: database or disk is full"):
 * on a full disk a server would die within a minute of it, and again at each restart. While the
 * reserve is released the server refuses what would eat the room it freed (sends, files); once
 * the volume has room again the reserve is written anew.
 */

import { statfs } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

const MIB = 1024 * 1024;
/** How old a write of the reserve must be to count as one a crash cut short. */
const WRITE_TAKEOVER_MS = 60_000;

/** The reserve's file for the KV file at `kvPath`: hidden, beside it. */
export function reservePath(kvPath: string): string {
  return join(dirname(kvPath), `.${basename(kvPath)}-reserve`);
}

/** Bytes the volume holding `path` has free for this process; undefined when it cannot be told. */
export async function freeBytes(path: string): Promise<number | undefined> {
  try {
    const s = await statfs(path);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return undefined;
  }
}

/** How a {@link SpaceReserve} is sized and paced, and where it logs. */
export interface SpaceReserveOptions {
  /** Size of the reserve file. */
  bytes: number;
  /** How often free space is read. */
  pollMs?: number;
  /** Where the reserve's releases and returns are told. */
  log?: (line: string) => void;
  /** Reads the free bytes of a directory's volume (tests stand in for a volume filling up). */
  free?: (dir: string) => Promise<number | undefined>;
}

/** The reserve beside one KV file; see the module comment. */
export class SpaceReserve {
  readonly path: string;
  /** The KV file's directory, whose volume is watched. */
  #dir: string;
  #bytes: number;
  #low: number;
  #comfort: number;
  #pollMs: number;
  #log: (line: string) => void;
  #free: (dir: string) => Promise<number | undefined>;
  /** Present while the reserve is released, whoever released it. */
  #releasedPath: string;
  /** Where one server at a time writes the reserve before it is renamed into place. */
  #writingPath: string;
  #short = false;
  #failed = false;
  #toldUnwritable = false;
  #checking?: Promise<void>;
  #timer?: ReturnType<typeof setInterval>;

  /** A reserve for the KV file at `kvPath`. */
  constructor(kvPath: string, options: SpaceReserveOptions) {
    this.path = reservePath(kvPath);
    this.#dir = dirname(this.path);
    this.#releasedPath = `${this.path}.released`;
    this.#writingPath = `${this.path}.writing`;
    this.#bytes = options.bytes;
    // Free bytes below which the reserve is released.
    this.#low = Math.ceil(options.bytes / 2);
    // Well above what releasing the reserve frees, or it would be written again at once.
    this.#comfort = this.#bytes + this.#low + 2 * MIB;
    this.#pollMs = options.pollMs ?? 1000;
    this.#log = options.log ?? ((line) => console.error(line));
    this.#free = options.free ?? freeBytes;
  }

  /** True while the volume is short of space: sends and files are to be refused. */
  get short(): boolean {
    return this.#short;
  }

  /** Reads what is there, writes or releases the reserve as the free space says, then watches. */
  async start(): Promise<void> {
    // Run without --allow-sys (statfs), it could never tell the volume filling: said once.
    const dir = this.#dir;
    if (await this.#free(dir) === undefined) {
      this.#log(
        `No space reserve: the free space of ${dir}'s volume cannot be read (statfs needs ` +
          "--allow-sys), so a full volume can end the server (see the README)",
      );
      return;
    }
    await this.check();
    this.#timer = setInterval(() => void this.check(), this.#pollMs);
    // Nothing to keep a process alive for: one whose start failed after this must still end.
    Deno.unrefTimer(this.#timer);
  }

  /** A KV write failed for want of space: releases the reserve now, not at the next reading. */
  storageFailed(): void {
    this.#failed = true;
    void this.check();
  }

  /** Reads the free space and acts on it, one reading at a time. */
  check(): Promise<void> {
    return this.#checking ??= this.#check().finally(() => this.#checking = undefined);
  }

  /** Stops watching, once the reading under way ends; the file stays for the next start. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#checking;
  }

  /**
   * Acts on what the volume and the files say now, never on what this server did before: the
   * servers sharing the file (and an operator) change them too.
   */
  async #check(): Promise<void> {
    const dir = this.#dir;
    const free = await this.#free(dir);
    if (free === undefined) return;
    // A refusal with room to spare is some other trouble, which the reserve does not help.
    const failed = this.#failed && free < this.#comfort;
    this.#failed = false;
    const [size, markSize] = await Promise.all([
      Deno.stat(this.path).then((s) => s.size, () => 0),
      Deno.lstat(this.#releasedPath).then((s) => s.size, () => -1),
    ]);
    const marked = markSize >= 0;
    await this.#clearLeftovers(markSize);
    // Smaller than it should be: an older, smaller SPACE_RESERVE_MB's (released all the same).
    const whole = size >= this.#bytes;
    if (free < this.#low || failed) {
      const released = size > 0 && await this.#release();
      if (!released && !marked) {
        await Deno.writeFile(this.#releasedPath, new Uint8Array()).catch(() => {});
      }
      this.#refuse(free, released);
      return;
    }
    // Whole (another server wrote it back; with the mark: a crash came before the mark went), or
    // written now (once released, or deleted by an operator).
    const inPlace = whole || (free >= this.#comfort && await this.#write());
    if (marked) {
      if (inPlace) {
        await Deno.remove(this.#releasedPath).catch(() => {});
        this.#take(free);
      } else this.#refuse(free, false);
      return;
    }
    // Not in place: too small a volume for it (or one writing it now): nothing refused.
    this.#take(free);
    if (!inPlace && !this.#toldUnwritable && free < this.#comfort) {
      this.#toldUnwritable = true;
      this.#log(
        `No space reserve: the volume of ${dir} has ${mib(free)} MiB free, less than the ` +
          `${mib(this.#comfort)} MiB it needs; written once it has`,
      );
    }
  }

  /**
   * Frees what a crash left holding room, whatever the free space says: the bytes of a release
   * cut short before its truncation (in the mark), a write of the reserve a minute old.
   */
  async #clearLeftovers(markSize: number): Promise<void> {
    if (markSize > 0) await Deno.truncate(this.#releasedPath, 0).catch(() => {});
    const mtime = await Deno.stat(this.#writingPath).then((s) => s.mtime, () => null);
    if (mtime && Date.now() - mtime.getTime() > WRITE_TAKEOVER_MS) {
      await Deno.remove(this.#writingPath).catch(() => {});
    }
  }

  /** Refuses sends from now on, saying so once. */
  #refuse(free: number, released: boolean): void {
    if (this.#short) return;
    this.#short = true;
    this.#log(
      `The volume of ${this.#dir} (the KV file's) is nearly full (${mib(free)} MiB ` +
        "free): " +
        (released
          ? `released the ${mib(this.#bytes)} MiB space reserve`
          : "the space reserve is released") +
        ", so that Deno KV can still delete expired keys (it ends the process when it cannot). " +
        "Sends and files are refused and /healthz says 503 until " +
        `${mib(this.#comfort)} MiB are free again: free space on that volume`,
    );
  }

  /** Takes sends again, saying so once. */
  #take(free: number): void {
    if (!this.#short) return;
    this.#short = false;
    this.#log(
      `The volume of ${this.#dir} has room again (${mib(free)} MiB free): the space ` +
        "reserve is written again, and sends and files are taken",
    );
  }

  /**
   * Frees the reserve's room and leaves a mark that it was released, which every server sharing
   * the file reads (and this one after a restart): the file renamed to the mark, then emptied.
   */
  async #release(): Promise<boolean> {
    try {
      await Deno.rename(this.path, this.#releasedPath);
    } catch {
      // Gone already (another server released it).
      return false;
    }
    await Deno.truncate(this.#releasedPath, 0).catch(() => {});
    return true;
  }

  /**
   * Writes the reserve with real bytes (a sparse file would hold no blocks), one server at a
   * time: under a name only one can create, renamed into place whole. One a crash left is
   * taken over once a minute old.
   */
  async #write(): Promise<boolean> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(this.#writingPath, { write: true, createNew: true, mode: 0o600 });
    } catch (err) {
      // Another server writes it now (one a crash left goes at the next reading).
      if (!(err instanceof Deno.errors.AlreadyExists)) return this.#unwritable(err);
      return false;
    }
    try {
      try {
        const chunk = new Uint8Array(64 * 1024);
        for (let written = 0; written < this.#bytes;) {
          written += await file.write(
            chunk.subarray(0, Math.min(chunk.length, this.#bytes - written)),
          );
        }
        await file.syncData();
      } finally {
        file.close();
      }
      await Deno.rename(this.#writingPath, this.path);
      return true;
    } catch (err) {
      // Half a reserve would only hold room the server needs now.
      await Deno.remove(this.#writingPath).catch(() => {});
      return this.#unwritable(err);
    }
  }

  #unwritable(err: unknown): false {
    if (!this.#toldUnwritable) {
      this.#toldUnwritable = true;
      this.#log(`No space reserve: ${this.path} could not be written: ${(err as Error).message}`);
    }
    return false;
  }
}

/** Bytes in MiB, as the log says them. */
function mib(bytes: number): string {
  return (bytes / MIB).toFixed(bytes < 10 * MIB ? 1 : 0);
}
