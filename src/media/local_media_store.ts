/** Attachment bytes in a local directory. */

import { basename, dirname, join, relative, resolve, sep } from "node:path";
import type { MediaStore, StoredFile } from "../core/types.ts";
import { numberedName } from "./filename.ts";

/** Resolves a media key under the root, or null when it would escape it. */
export function resolveKey(root: string, key: string): string | null {
  if (key.includes("\0")) return null;
  const path = resolve(root, key);
  const rel = relative(root, path);
  if (rel === "" || rel.startsWith("..") || rel.split(sep).includes("..")) return null;
  return path;
}

/** A file being written (`upload`) or a health probe (`health`): never served, swept if left. */
function temporaryName(kind: "upload" | "health"): string {
  return `.${kind}-${crypto.randomUUID()}`;
}

/**
 * Where a volume makes no hard links, the temporary file that names a file being put in place,
 * in its text, until its caller has recorded it (see {@link LocalMediaStore.put}).
 */
const CLAIM = ".claim";

/**
 * True for what link(2) says on a volume that makes no hard links: SMB and Azure Files, s3fs,
 * gcsfuse (ENOTSUP/EOPNOTSUPP, ENOSYS), FAT (EPERM). Deno gives the first a plain Error.
 */
function linksRefused(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof Deno.errors.NotSupported || code === "ENOTSUP" ||
    code === "EOPNOTSUPP" || code === "ENOSYS" || code === "EPERM";
}

/** The empty files of a name each put in place without a link (see {@link LocalMediaStore.put}). */
async function reserve(path: string): Promise<void> {
  using _ = await Deno.open(path, { write: true, createNew: true });
}

/**
 * True for what a write in the media root meets until an operator changes the setting or the
 * permissions: a file where a folder of its path should be, a loop of links, EACCES or EPERM, or
 * Deno's own permissions. A full disk, a read-only mount or I/O errors may pass by themselves.
 */
function neverUsable(err: unknown): boolean {
  return err instanceof Deno.errors.NotADirectory || err instanceof Deno.errors.PermissionDenied ||
    err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.FilesystemLoop;
}

/** True for a name {@link LocalMediaStore} gives its temporary files. */
export function isTemporaryName(name: string): boolean {
  return /^\.(upload|health)-/.test(name);
}

/** True for a name the store gives its own files (temporary ones, marks of deleted names). */
export function isHiddenName(name: string): boolean {
  return isTemporaryName(name) || name.startsWith(".gone-");
}

const encoder = new TextEncoder();

/**
 * The empty file that marks `name` as deleted, so that it is never given to another file: its
 * URL, which someone may still hold, must not find another room's upload. Named by a hash, as a
 * name of 255 bytes leaves no room for a prefix.
 */
async function goneName(name: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", encoder.encode(name));
  return `.gone-${new Uint8Array(digest).toHex()}`;
}

/** The name of a folder holding one file, 32 random hex digits (see `StoredNames`). */
const OWN_FOLDER = /^[0-9a-f]{32}$/;

/**
 * A name holding the 32 hex digits of a random UUID (see `StoredNames`): `3f…9c.png`,
 * `a_3f…9c.png`, either numbered past a collision (`_1`, `_<12 hex>`), before the extension if
 * any. The UUID's version and variant digits tell it from most names of 32 hex digits a client
 * chose (an MD5), stored before names were random, which keep their marks.
 */
const RANDOM_NAME = /(?:^|_)[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}(?:_[0-9a-f]+)?(?:\.[^.]*)?$/;

/** Numbers tried for a taken name before random tags. */
const NUMBERED_NAMES = 100;
/** Random tags tried after the numbers (one in 2^48 collides: any retry is rare). */
const RANDOM_NAMES = 10;

function randomTag(): string {
  return crypto.getRandomValues(new Uint8Array(6)).toHex();
}

/**
 * Creates `path` for writing in `folder`, making the folder first: again when it went between
 * the two, as a delete removes a folder its last file leaves empty (see
 * {@link LocalMediaStore.delete}); once this file is in it, it is not empty.
 */
async function createIn(folder: string, path: string): Promise<Deno.FsFile> {
  for (let attempt = 1;; attempt++) {
    try {
      await Deno.mkdir(folder, { recursive: true });
      return await Deno.open(path, { write: true, createNew: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound) || attempt === 5) throw err;
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * Files are written to a temporary name and then hard-linked to their final name: the link
 * fails when the name exists, so two writers never overwrite each other and a reader never sees
 * half a file. A deleted file's name is never given again: it holds random digits, or a mark
 * keeps it (see {@link LocalMediaStore.delete}). On a volume that makes no hard links the name
 * is taken by creating it empty (which fails as well when it exists) and the file renamed over
 * it.
 */
export class LocalMediaStore implements MediaStore {
  /** Absolute root directory. */
  readonly root: string;
  /** The volume refused a hard link as something it does not do: names are taken without. */
  #noLinks = false;

  /** Uses `root` (created on first write). */
  constructor(root: string) {
    this.root = resolve(root);
  }

  /**
   * Writes the bytes as `dir/filename`, or `dir/filename_N` when that name is taken. The
   * temporary file is removed only after `linked`: until then a crash leaves it linked to the
   * file, which is how {@link sweepTemporary} finds a file nothing may have recorded.
   */
  async put(
    dir: string,
    filename: string,
    bytes: Uint8Array | Iterable<Uint8Array>,
    options: { linked?: (file: StoredFile) => Promise<void> } = {},
  ): Promise<StoredFile> {
    const folder = resolveKey(this.root, join(dir, filename));
    if (!folder) throw new RangeError(`Media path "${dir}/${filename}" leaves the media root`);
    const target = dirname(folder);
    // A folder of the file's own goes with a file that is not stored (bytes that were not
    // base64, a full volume): nothing else would ever remove it.
    const dropFolder = () =>
      OWN_FOLDER.test(basename(target)) ? Deno.remove(target).catch(() => {}) : undefined;
    const temp = join(target, temporaryName("upload"));
    let size = 0;
    try {
      // Written under a temporary name, then linked: a reader never sees half a file.
      using file = await createIn(target, temp);
      for (const chunk of bytes instanceof Uint8Array ? [bytes] : bytes) {
        for (let done = 0; done < chunk.length;) done += await file.write(chunk.subarray(done));
        size += chunk.length;
      }
    } catch (err) {
      await Deno.remove(temp).catch(() => {});
      await dropFolder();
      throw err;
    }
    let released = false;
    // Without links: the claim naming the file, and the empty file of its name until the bytes
    // are renamed over it.
    let claim: string | undefined;
    let placeholder: string | undefined;
    try {
      for (let n = 0; n < NUMBERED_NAMES + RANDOM_NAMES; n++) {
        // Past the first numbers, random ones: a folder several rooms share (conversations' dated
        // one) would otherwise let one user take every number of a common name ("image.png").
        const name = n === 0
          ? filename
          : numberedName(filename, n < NUMBERED_NAMES ? n : randomTag());
        const mark = join(target, await goneName(name));
        // A retired name is passed over before the link too: a crash right after linking would
        // otherwise leave these bytes served at the URL of a deleted file until the sweep.
        if (await exists(mark)) continue;
        const linking = !this.#noLinks;
        try {
          if (linking) await Deno.link(temp, join(target, name));
          else await reserve(join(target, name));
        } catch (err) {
          // Another put may have learnt it while this one's link was under way: the same name
          // again, without a link.
          if (linking && linksRefused(err)) {
            if (!this.#noLinks) {
              this.#noLinks = true;
              console.warn(
                `media: ${this.root} makes no hard links (${(err as Error).message}); files ` +
                  "are put in place by renaming them over an empty file of their name instead",
              );
            }
            n--;
            continue;
          }
          if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
          continue;
        }
        // Checked after the link as well: a delete marks the name before it frees it, so a name
        // freed before the link is marked by now.
        if (await exists(mark)) {
          await Deno.remove(join(target, name));
          continue;
        }
        if (this.#noLinks) {
          placeholder = join(target, name);
          // Named in a claim before the bytes take the name: a crash from here on leaves the
          // claim, which the sweep reads to find the file, as it finds a linked one by its twin.
          claim = join(target, `${temporaryName("upload")}${CLAIM}`);
          await Deno.writeTextFile(claim, name, { createNew: true });
          await Deno.rename(temp, placeholder);
          // From here on the file is the caller's to discard, as a linked one is.
          placeholder = undefined;
        }
        const key = relative(this.root, join(target, name)).split(sep).join("/");
        const stored = { key, name, size };
        await options.linked?.(stored);
        // Before the caller commits, or not at all: a temporary name left linked to a file that
        // a message names would have the sweep take the file for a crash's.
        await Deno.remove(claim ?? temp);
        released = true;
        return stored;
      }
      throw new Error(`No free name for "${filename}" in ${dir}`);
    } finally {
      if (!released) {
        await Deno.remove(temp).catch(() => {});
        // The claim first: one left naming a freed name, which another file may take next, would
        // have the sweep delete that file. A claim that stays keeps its empty file, for the sweep.
        const unclaimed = !claim || await Deno.remove(claim).then(() => true, () => false);
        // Never announced: the name is free again.
        if (placeholder && unclaimed) await Deno.remove(placeholder).catch(() => {});
        await dropFolder();
      }
    }
  }

  /**
   * Removes a stored file; its name stays taken by an empty mark unless `unannounced`, or unless
   * the name, or its folder of its own, holds random digits, as every name given today does.
   */
  async delete(key: string, options: { unannounced?: boolean } = {}): Promise<boolean> {
    const path = resolveKey(this.root, key);
    if (!path) return false;
    // A name, or a folder of its own, holding 32 random hex digits is never given again: its URLs
    // can find no other file, so no mark is kept. Names without them (stored before names were
    // random) keep theirs: a server of an earlier version on the volume would give them again.
    const folder = dirname(path);
    const ownFolder = OWN_FOLDER.test(basename(folder));
    if (options.unannounced || ownFolder || RANDOM_NAME.test(basename(path))) {
      try {
        await Deno.remove(path);
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) return false;
        throw err;
      }
      // Folders left empty go: the file's own, then the room's (or day's) that held it. One a
      // write is under way in is not empty (its temporary file), and `put` makes a folder again
      // that went between its making and that file's (see `createIn`).
      for (let dir = folder, up = ownFolder ? 2 : 1; up > 0 && dir !== this.root; up--) {
        if (!(await Deno.remove(dir).then(() => true, () => false))) break;
        dir = dirname(dir);
      }
      return true;
    }
    const mark = join(folder, await goneName(basename(path)));
    try {
      // One step frees the name and marks it; the bytes go after.
      await Deno.rename(path, mark);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return false;
      throw err;
    }
    await Deno.truncate(mark, 0);
    return true;
  }

  /**
   * Creates and removes a one-byte file at the root; throws what the write threw (a volume that
   * is read-only, full, or no longer a directory), for the health check.
   */
  async probe(): Promise<void> {
    await Deno.mkdir(this.root, { recursive: true });
    const path = join(this.root, temporaryName("health"));
    try {
      await Deno.writeFile(path, new Uint8Array(1), { createNew: true });
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  }

  /**
   * Makes the root and creates and removes an empty file in it, for the start; throws only what
   * no later moment can mend (a non-directory in its path, permission denied). A full or read-only
   * volume, or a link to one not mounted yet, passes: it may take files later, and the health
   * check says until then that it does not.
   */
  async checkUsable(): Promise<void> {
    try {
      await Deno.mkdir(this.root, { recursive: true });
    } catch (err) {
      // A link to nothing yet (a volume mounted later) is refused as existing too.
      if (err instanceof Deno.errors.AlreadyExists) {
        const found = await Deno.stat(this.root).catch((err) => {
          if (neverUsable(err)) throw err;
        });
        if (found && !found.isDirectory) throw new Error("it exists and is not a directory");
        return;
      }
      if (neverUsable(err)) throw err;
      return;
    }
    const path = join(this.root, temporaryName("health"));
    try {
      // Empty: a volume with no byte free still takes it, and one that takes nothing passes.
      await reserve(path);
    } catch (err) {
      if (neverUsable(err)) {
        // Its own name is a random one of no use to the operator.
        const why = (err as Error).message.replace(/: open '.*'$/s, "");
        throw new Error(`files cannot be created in it: ${why}`);
      }
      return;
    }
    await Deno.remove(path).catch(() => {});
  }

  /**
   * Removes the temporary files that a crash cut short (`.upload-*` writes, `.health-*` probes)
   * older than `olderThanMs`, walking the whole tree; returns how many went. Younger ones may be
   * another instance's writes under way on a shared volume.
   */
  async sweepTemporary(olderThanMs: number): Promise<number> {
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    const walk = async (dir: string): Promise<void> => {
      const folders: string[] = [];
      try {
        // Read as it comes (a folder of every ticket's files can be long), descended after.
        for await (const entry of Deno.readDir(dir)) {
          const path = join(dir, entry.name);
          if (entry.isDirectory) folders.push(path);
          else if (entry.isFile && isTemporaryName(entry.name)) {
            if (await this.#removeIfOlder(path, cutoff)) removed++;
          }
        }
      } catch {
        // Unreadable, or gone meanwhile: what it holds waits for the next start.
      }
      for (const folder of folders) await walk(folder);
    };
    await walk(this.root);
    return removed;
  }

  /**
   * Removes a temporary file older than `cutoff`, and the files linked to it: a crash between
   * a file's link and the end of `put`'s `linked` left them, and nothing may hold their names
   * (their deletion keeps the names from being given again, in case something did).
   */
  async #removeIfOlder(path: string, cutoff: number): Promise<boolean> {
    try {
      const { mtime, nlink, ino, dev } = await Deno.stat(path);
      if (!mtime || mtime.getTime() >= cutoff) return false;
      if (path.endsWith(CLAIM)) {
        // Put in place without a link: the claim names the file, in the same folder.
        const name = await Deno.readTextFile(path);
        if (name !== "" && !name.includes("/") && !name.includes(sep) && !isHiddenName(name)) {
          await this.delete(relative(this.root, join(dirname(path), name)).split(sep).join("/"));
        }
      } else if ((nlink ?? 1) > 1 && ino !== null) {
        const dir = dirname(path);
        for await (const entry of Deno.readDir(dir)) {
          const twin = join(dir, entry.name);
          if (!entry.isFile || twin === path || isHiddenName(entry.name)) continue;
          const other = await Deno.stat(twin).catch(() => undefined);
          if (other?.ino !== ino || other.dev !== dev) continue;
          await this.delete(relative(this.root, twin).split(sep).join("/"));
        }
      }
      await Deno.remove(path);
      // A folder of its own, now empty, goes too (one still written to is not empty).
      if (OWN_FOLDER.test(basename(dirname(path)))) {
        await Deno.remove(dirname(path)).catch(() => {});
      }
      return true;
    } catch {
      // Gone already, or renamed into place meanwhile.
      return false;
    }
  }

  /** Absolute path of a key, or null when it is outside the root. */
  pathOf(key: string): string | null {
    return resolveKey(this.root, key);
  }
}

/** The URL path a key is served at: `uploads/...` at the root (Socket.IO chat), the rest under /media/. */
export function mediaUrlPath(key: string): string {
  // Names stored before names were made well formed may hold a lone surrogate, which
  // encodeURIComponent throws on; the disk has it as U+FFFD, which this URL names.
  const parts = key.split("/").map((part) => encodeURIComponent(part.toWellFormed()));
  const encoded = parts.join("/");
  return key.startsWith("uploads/") ? `/${encoded}` : `/media/${encoded}`;
}
