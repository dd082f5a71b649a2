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
  /** Free bytes below which the reserve is released (by default half the reserve). */
  lowBytes?: number;
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
  #bytes: number;
  #low: number;
  #comfort: number;
  #pollMs: number;
  #log: (line: string) => void;
  #free: (dir: string) => Promise<number | undefined>;
  /** Present while the reserve is released, whoever released it. */
  #releasedPath: string;
  /** The file is there whole, as far as this process knows. */
  #held = false;
  #short = false;
  #failed = false;
  #toldUnwritable = false;
  #checking?: Promise<void>;
  #timer?: ReturnType<typeof setInterval>;

  /** A reserve for the KV file at `kvPath`. */
  constructor(kvPath: string, options: SpaceReserveOptions) {
    this.path = reservePath(kvPath);
    this.#releasedPath = `${this.path}.released`;
    this.#bytes = options.bytes;
    this.#low = options.lowBytes ?? Math.ceil(options.bytes / 2);
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
    this.#held = await Deno.stat(this.path).then((s) => s.size >= this.#bytes, () => false);
    // Run without --allow-sys (statfs), it could never tell the volume filling: said once.
    const dir = dirname(this.path);
    if (await this.#free(dir) === undefined) {
      this.#log(
        `No space reserve: the free space of ${dir}'s volume cannot be read (statfs needs ` +
          "--allow-sys), so a full DATA_DIR can end the server (see the README)",
      );
      return;
    }
    await this.#removeLeftTemps(dir);
    await this.check();
    this.#timer = setInterval(() => void this.check(), this.#pollMs);
    // Nothing to keep a process alive for: one whose start failed after this must still end.
    Deno.unrefTimer(this.#timer);
  }

  /** A KV write failed for want of space: releases the reserve now, not at the next reading. */
  storageFailed(): void {
    if (this.#short) return;
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

  async #check(): Promise<void> {
    const dir = dirname(this.path);
    const free = await this.#free(dir);
    if (free === undefined) return;
    // A refusal with room to spare is some other trouble, which the reserve does not help.
    const failed = this.#failed && free < this.#comfort;
    this.#failed = false;
    // Released by another server sharing the file, or by this one before a restart: the room it
    // freed is still KV's, until there is room for the reserve again.
    const marked = await exists(this.#releasedPath);
    const released = marked && free < this.#comfort;
    // Written back whole by another server sharing the file (it had the room, and took the mark
    // away): the room it holds is KV's again, whatever is free beside it now.
    if (this.#short && !marked && !failed && free >= this.#low && await this.#whole()) {
      this.#short = false;
      this.#held = true;
      this.#log(
        `DATA_DIR has room again: another server wrote the space reserve (${this.path}) again, ` +
          "and sends and files are taken",
      );
      return;
    }
    if (!this.#short && (free < this.#low || failed || released)) {
      this.#short = true;
      // Released already (the mark stands): nothing more to free.
      const had = !released && await this.#release();
      this.#held = false;
      this.#log(
        `DATA_DIR is nearly full (${mib(free)} MiB free on the volume of ${dir}): ` +
          (had
            ? `released the ${mib(this.#bytes)} MiB space reserve, `
            : "no space reserve left, ") +
          "so that Deno KV can still delete expired keys (it ends the process when it cannot). " +
          "Sends and files are refused and /healthz says 503 until " +
          `${mib(this.#comfort)} MiB are free again: free space on that volume`,
      );
      return;
    }
    if ((this.#short || !this.#held || marked) && free >= this.#comfort) {
      if (!await this.#write()) return;
      await Deno.remove(this.#releasedPath).catch(() => {});
      if (this.#short) {
        this.#short = false;
        this.#log(
          `DATA_DIR has room again (${mib(free)} MiB free): the space reserve (${this.path}) is ` +
            "written again, and sends and files are taken",
        );
      }
    } else if (!this.#held && !this.#short && !this.#toldUnwritable) {
      this.#toldUnwritable = true;
      this.#log(
        `No space reserve: the volume of ${dir} has ${mib(free)} MiB free, less than the ` +
          `${mib(this.#comfort)} MiB it needs; written once it has`,
      );
    }
  }

  /**
   * Frees the reserve's room and leaves a mark that it was released, which every server sharing
   * the file reads (and this one after a restart): the file renamed to the mark, then emptied.
   */
  async #release(): Promise<boolean> {
    try {
      await Deno.rename(this.path, this.#releasedPath);
      await Deno.truncate(this.#releasedPath, 0);
      return true;
    } catch {
      // Gone already (another server released it): the mark is made if it is not there.
      await Deno.writeFile(this.#releasedPath, new Uint8Array()).catch(() => {});
      return false;
    }
  }

  /** Removes the temporary files of reserve writes a crash cut short (a minute old or more). */
  async #removeLeftTemps(dir: string): Promise<void> {
    const prefix = `${basename(this.path)}.`;
    const cutoff = Date.now() - 60_000;
    try {
      for await (const entry of Deno.readDir(dir)) {
        if (!entry.isFile || !entry.name.startsWith(prefix)) continue;
        if (entry.name === basename(this.#releasedPath)) continue;
        const path = join(dir, entry.name);
        const { mtime } = await Deno.stat(path).catch(() => ({ mtime: null }));
        if (mtime && mtime.getTime() < cutoff) await Deno.remove(path).catch(() => {});
      }
    } catch {
      // Nothing to read: nothing left.
    }
  }

  /** Whether the reserve's file is there at its full size. */
  async #whole(): Promise<boolean> {
    return await Deno.stat(this.path).then((s) => s.size >= this.#bytes, () => false);
  }

  /** Writes the reserve with real bytes (a sparse file would hold no blocks). */
  async #write(): Promise<boolean> {
    // Whole or not at all: servers sharing the file may write it at once.
    const temp = `${this.path}.${crypto.randomUUID()}`;
    try {
      const file = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
      try {
        const chunk = new Uint8Array(64 * 1024);
        let written = 0;
        while (written < this.#bytes) {
          written += await file.write(
            chunk.subarray(0, Math.min(chunk.length, this.#bytes - written)),
          );
        }
        await file.syncData();
      } finally {
        file.close();
      }
      await Deno.rename(temp, this.path);
      this.#held = true;
      return true;
    } catch (err) {
      // Half a reserve would only hold room the server needs now.
      await Deno.remove(temp).catch(() => {});
      if (!this.#toldUnwritable) {
        this.#toldUnwritable = true;
        this.#log(`No space reserve: ${this.path} could not be written: ${(err as Error).message}`);
      }
      return false;
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** Bytes in MiB, as the log says them. */
function mib(bytes: number): string {
  return (bytes / MIB).toFixed(bytes < 10 * MIB ? 1 : 0);
}
