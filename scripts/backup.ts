/**
 * Copies what a server keeps, while it runs, into a new directory that is itself a DATA_DIR:
 * `deno task backup /backups/chat-2026-11-25`. Reads the server's settings (DATA_DIR, KV_PATH,
 * DATABASE_URL, MEDIA_DIR); the KV file and the SQLite directory are copied as consistent
 * snapshots (SQLite's online backup), then the media files, the development secret and the JWKS
 * cache. Restoring is stopping the server, putting the directory in place (or pointing DATA_DIR at
 * it) and starting it. Exits 2 on a usage or setting error, 1 when the copy fails; the backup is
 * written under a hidden name (beside a new destination, inside an existing one) and moved to the
 * destination only once whole.
 */

import { parseArgs } from "node:util";
import { backup as sqliteBackup, DatabaseSync } from "node:sqlite";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { DEFAULT_KV_FILE, isLocalPath, loadConfig } from "../src/config.ts";
import { DEFAULT_SQLITE_FILE, parseDatabaseUrl } from "../src/directory/open.ts";
import { devSecretPath, keySetCachePath } from "../src/auth/verifier.ts";
import { isTemporaryName } from "../src/media/local_media_store.ts";

/** Prints `message` (a setting or an option it cannot take) and exits 2, without a stack trace. */
function refuse(message: string): never {
  console.error(message);
  Deno.exit(2);
}

const message = (err: unknown) => err instanceof Error ? err.message : String(err);

/** True for what a write says when the volume is full, SQLite's words or the OS's. */
function noSpace(err: unknown): boolean {
  return /database or disk is full|SQLITE_FULL|no space left|os error 28/i.test(message(err));
}

/** Whether `path` is `dir` or inside it, compared as written (both resolved). */
function inside(dir: string, path: string): boolean {
  const from = relative(dir, path);
  return from === "" || (from !== ".." && !from.startsWith(`..${sep}`) && !isAbsolute(from));
}

const { positionals, values } = (() => {
  try {
    return parseArgs({
      // `deno task backup -- /backups/x` hands the script the `--` too (see scripts/token.ts).
      args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
      options: { help: { type: "boolean", short: "h" } },
      allowPositionals: true,
    });
  } catch (err) {
    return refuse(`${message(err)} (deno task backup --help says how to use it)`);
  }
})();

if (values.help || positionals.length !== 1) {
  console.error(
    "Usage: deno task backup <dir>\n" +
      "  Copies the server's KV file, SQLite directory, media files and development secret into\n" +
      "  <dir> (new or empty), which is then a DATA_DIR to start a server on. The server may run.",
  );
  Deno.exit(values.help ? 0 : 2);
}

const config = (() => {
  try {
    return loadConfig(Deno.env.toObject());
  } catch (err) {
    // The message names the setting; the stack would only hide it. It lists one setting a line
    // under its heading, for the server's log; the task's refusal is one line, as its others are.
    const [heading, ...settings] = message(err).split("\n").map((line) => line.trim());
    return refuse(settings.length > 0 ? `${heading} ${settings.join("; ")}` : heading);
  }
})();

if (!isLocalPath(config.kvPath)) {
  // A KV Connect URL may carry a token in it; only what kind of location it is is said.
  refuse(
    config.kvPath === ":memory:"
      ? "KV_PATH is :memory:: the messages live in the server's memory, there is no file to copy"
      : "KV_PATH is a KV Connect URL: there is no local file to copy; back up the KV server " +
        "(denokv, Deno Deploy) by its own means",
  );
}
const kvSource = resolve(config.kvPath);
const directoryTarget = (() => {
  try {
    return parseDatabaseUrl(config.databaseUrl, config.dataDir);
  } catch (err) {
    return refuse(message(err));
  }
})();
const sqliteSource = directoryTarget.dialect === "sqlite" && isLocalPath(directoryTarget.path)
  ? resolve(directoryTarget.path)
  : undefined;

/** Refuses a store's file that is not there: the settings most likely name the wrong place. */
async function mustBeFile(path: string, what: string, setting: string): Promise<void> {
  const found = await Deno.stat(path).catch((err) => {
    if (err instanceof Deno.errors.NotFound) {
      refuse(`${what} (${path}) does not exist: do DATA_DIR and ${setting} name the server's?`);
    }
    refuse(`${what} (${path}) cannot be read: ${message(err)}`);
  });
  if (!found.isFile) refuse(`${what} (${path}) is not a file`);
}
await mustBeFile(kvSource, "The KV file", "KV_PATH");
if (sqliteSource) await mustBeFile(sqliteSource, "The directory's SQLite file", "DATABASE_URL");

// `deno task` runs the script in deno.json's folder; INIT_CWD is where the operator typed it.
const target = resolve(Deno.env.get("INIT_CWD") ?? Deno.cwd(), positionals[0]);

/** `path` with its links resolved as far as it exists, the rest as written. */
async function realPath(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound) || dirname(path) === path) throw err;
    return join(await realPath(dirname(path)), basename(path));
  }
}

/**
 * True for a directory (not a link to one) with nothing in it, or one this user may not read: a
 * new volume's lost+found is root's alone (0700), and the copy takes none of the names in it.
 */
async function emptyDir(path: string): Promise<boolean> {
  try {
    if (!(await Deno.lstat(path)).isDirectory) return false;
    for await (const _ of Deno.readDir(path)) return false;
    return true;
  } catch (err) {
    return err instanceof Deno.errors.PermissionDenied;
  }
}

// Everything under MEDIA_DIR is served to anyone, and the copy would walk into itself; reached
// through a link (or MEDIA_DIR one), it is inside all the same.
const mediaDir = resolve(config.mediaDir);
const realInside = async () => {
  try {
    return inside(await realPath(mediaDir), await realPath(target));
  } catch (err) {
    return refuse(`${target} cannot be read: ${message(err)}`);
  }
};
if (inside(mediaDir, target) || await realInside()) {
  refuse(`${target} is inside MEDIA_DIR (${config.mediaDir}), which is served over HTTP`);
}
const existing = await Deno.lstat(target).catch((err) => {
  if (err instanceof Deno.errors.NotFound) return undefined;
  refuse(`${target} cannot be read: ${message(err)}`);
});
if (existing) {
  if (!existing.isDirectory) refuse(`${target} exists and is not a directory`);
  for await (const entry of Deno.readDir(target)) {
    // mkfs.ext4 leaves one at the root of every new volume: a fresh backup disk's mount point is
    // empty all the same. It stays where it is, beside the copy, which no server minds.
    if (entry.name === "lost+found" && await emptyDir(join(target, entry.name))) continue;
    refuse(`${target} is not empty: a backup goes into a new or empty directory`);
  }
}

const parent = dirname(target);
if (!existing) {
  await Deno.mkdir(parent, { recursive: true }).catch((err) =>
    refuse(`${parent} cannot be created: ${message(err)}`)
  );
}
// A backup cut short (a kill, a full disk) leaves a hidden name, never one that looks whole.
// Beside a new destination, renamed to it at the end; inside an existing (empty) one, whose
// entries are moved out of it at the end: the destination may be a volume of its own (a mount
// point, which takes no rename) in a parent this user may not write.
const home = existing ? target : parent;
const partial = existing
  ? join(target, `.partial-${crypto.randomUUID().slice(0, 8)}`)
  : join(parent, `.${basename(target)}.partial-${crypto.randomUUID().slice(0, 8)}`);
await Deno.mkdir(partial, { mode: 0o700 }).catch((err) =>
  refuse(`${home} takes no new directory: ${message(err)}`)
);

/** SQLite copies this many pages per step: all of them, so that one read transaction sees it. */
const ALL_PAGES = 2 ** 31 - 1;

/**
 * Copies the SQLite database at `source` into `to` as one consistent snapshot, while servers keep
 * writing it: SQLite's online backup reads every page in one read transaction, which WAL lets
 * run beside their commits. (`VACUUM INTO` would do the same, but Deno's `node:sqlite` refuses
 * it, as an ATTACH, to any process without `--allow-all`.)
 */
async function snapshot(source: string, to: string): Promise<void> {
  // Created owner-only before SQLite opens it, which would make it readable by everyone.
  (await Deno.open(to, { write: true, createNew: true, mode: 0o600 })).close();
  // Read-only: the live file is never written, not even checkpointed.
  const db = new DatabaseSync(source, { readOnly: true });
  try {
    // A server's checkpoint or a process creating the file may hold a lock a moment.
    db.exec("pragma busy_timeout = 5000");
    await sqliteBackup(db, to, { rate: ALL_PAGES });
  } finally {
    db.close();
  }
  await Deno.chmod(to, 0o600);
}

/**
 * How far the copy raises every room's head: the restored server numbers its rooms' next
 * messages past it, so that no seq the original handed out after the snapshot (messages the
 * restore rolls back, which clients may have seen) is given to another message. It bounds how many
 * messages a room may have taken on the original between the backup and the restore.
 */
const SEQ_GAP = 1_000_000;

/**
 * What servers that were running keep for each other, void on a server started on the copy: their
 * registry entries (src/broker/instance_registry.ts), their connections' presence and its locks
 * and sweep lease (src/store/kv_presence_store.ts, kv_presence_sweeper.ts), and the logs of
 * signals and evictions they told each other (src/broker/kv_room_signals.ts, kv_room_events.ts).
 */
const LIVE_KEYS: Deno.KvKey[] = [
  ["instance"],
  ["instance_epoch"],
  ["instance_swept"],
  ["presence"],
  ["presence_user"],
  ["presence_sweep"],
  ["signals"],
  ["room_events"],
];

/** Mutations per commit and their keys' bytes: well within KV's 1000 and 80 KiB. */
const PREPARE_MUTATIONS = 500;
const PREPARE_KEY_BYTES = 60 * 1024;

/**
 * Keys of the KV copy due to expire within this long (ms) are deleted before KV opens it: mostly
 * what running servers keep for each other (the preparation deletes it anyway), deletion marks
 * of a minute, and the last minutes of client ids' and forgotten readers' windows, which a
 * server started on the copy would see go at once. KV's own thread deletes the keys that come
 * due while it has a file open, and ends the process when the volume refuses that write (a
 * panic no catch sees, the hidden folder left behind); with none due before the preparation
 * ends, only the preparation's own writes can meet a full volume, and fail as errors.
 */
const EXPIRY_MARGIN_MS = 5 * 60_000;

/** Deletes the keys of the KV file at `path` that are due within {@link EXPIRY_MARGIN_MS}. */
function dropExpiring(path: string): void {
  // denokv's SQLite table: `kv (k, v, v_encoding, version, seq, expiration_ms)`, -1 for never.
  const db = new DatabaseSync(path);
  try {
    db.prepare("delete from kv where expiration_ms >= 0 and expiration_ms <= ?")
      .run(Date.now() + EXPIRY_MARGIN_MS);
  } finally {
    db.close();
  }
}

/**
 * Makes the KV copy at `path` one that a server starts on as after a restore: every room's head
 * raised by {@link SEQ_GAP} (a head past the newest message is a state the store knows: a
 * deleted room keeps its head), and what running servers keep for each other deleted.
 */
async function prepareKvCopy(path: string): Promise<void> {
  dropExpiring(path);
  const kv = await Deno.openKv(path);
  try {
    let op = kv.atomic();
    let mutations = 0;
    let keyBytes = 0;
    const commit = async () => {
      if (mutations === 0) return;
      if (!(await op.commit()).ok) throw new Error("the KV copy changed while it was prepared");
      op = kv.atomic();
      mutations = 0;
      keyBytes = 0;
    };
    const add = async (key: Deno.KvKey, change: (op: Deno.AtomicOperation) => void) => {
      // An over-estimate of KV's encoding of the key.
      const bytes = new TextEncoder().encode(JSON.stringify(key)).length + 8 * key.length;
      if (mutations >= PREPARE_MUTATIONS || keyBytes + bytes > PREPARE_KEY_BYTES) await commit();
      change(op);
      mutations++;
      keyBytes += bytes;
    };
    // KV_KEYS.head (src/store/kv_message_store.ts): ["head", room], the room's newest seq.
    for await (const e of kv.list<number>({ prefix: ["head"] })) {
      if (typeof e.value === "number") await add(e.key, (op) => op.set(e.key, e.value + SEQ_GAP));
    }
    for (const key of LIVE_KEYS) {
      for await (const e of kv.list({ prefix: key })) await add(e.key, (op) => op.delete(e.key));
      // A listing by prefix leaves out the key itself.
      await add(key, (op) => op.delete(key));
    }
    await commit();
  } finally {
    kv.close();
  }
}

/** What the media copy met besides files it copied. */
const media = { files: 0, bytes: 0, gone: 0, skipped: 0 };

/**
 * Copies the files under `from` into `to`, with their names and modification times, owner-only;
 * links are not followed (one could lead out of the media directory), the temporary files of
 * writes under way are left out (never served, and swept when a crash leaves them), and a file
 * deleted while the copy runs is passed over.
 */
async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { mode: 0o700 });
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const entry of Deno.readDir(from)) entries.push(entry);
  } catch (err) {
    // A folder its last file's deletion removed meanwhile.
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  for (const entry of entries) {
    const source = join(from, entry.name);
    const copy = join(to, entry.name);
    if (entry.isDirectory) {
      await copyTree(source, copy);
    } else if (entry.isFile && !isTemporaryName(entry.name)) {
      const copied = await copyFile(source, copy);
      if (copied === undefined) media.gone++;
      else {
        media.files++;
        media.bytes += copied;
      }
    } else if (!entry.isFile) {
      media.skipped++;
    }
  }
  await flush(to);
}

/**
 * Copies one file, owner-only, keeping its modification time, and flushes it to the disk;
 * answers its size, or undefined when it was deleted before it could be opened.
 */
async function copyFile(source: string, to: string): Promise<number | undefined> {
  let input: Deno.FsFile;
  try {
    input = await Deno.open(source, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
  using _input = input;
  const info = await input.stat();
  using output = await Deno.open(to, { write: true, createNew: true, mode: 0o600 });
  const buffer = new Uint8Array(1 << 20);
  let size = 0;
  for (let n = await input.read(buffer); n !== null; n = await input.read(buffer)) {
    for (let done = 0; done < n;) done += await output.write(buffer.subarray(done, n));
    size += n;
  }
  await output.syncData();
  await Deno.utime(to, info.atime ?? new Date(), info.mtime ?? new Date());
  return size;
}

/** Flushes a folder's entries to the disk: a rename must not outlive what it names in a crash. */
async function flush(path: string): Promise<void> {
  using dir = await Deno.open(path, { read: true });
  // Some file systems take no fsync of a folder; the files' own were flushed.
  await dir.sync().catch(() => {});
}

const notes: string[] = [];
const copied: string[] = [];
/** The entries moved out of the hidden folder into an existing destination so far. */
const moved: string[] = [];
let step = "";
try {
  // The directory before the KV file: a room deleted between the two snapshots is then still in
  // the directory's copy, whole if its messages' deletion had not begun at the KV snapshot, else
  // empty (the restored start finishes the purge its marks in KV name). The other order would
  // bring a deleted room's messages back without the room, open to anyone whose token claims it.
  // A room created between the two has no row; what was sent to it is kept, as for any room the
  // directory does not know, and is its history again once the room is created again.
  if (sqliteSource) {
    step = `the directory (${sqliteSource})`;
    await snapshot(sqliteSource, join(partial, DEFAULT_SQLITE_FILE));
    copied.push(DEFAULT_SQLITE_FILE);
    if (sqliteSource !== join(config.dataDir, DEFAULT_SQLITE_FILE)) {
      notes.push(
        `DATABASE_URL (${sqliteSource}) is copied to ${DEFAULT_SQLITE_FILE}, where a server ` +
          "without DATABASE_URL finds it",
      );
    }
  } else if (directoryTarget.dialect === "postgres") {
    notes.push("The directory is in Postgres (DATABASE_URL): not copied; back it up with pg_dump");
  } else {
    notes.push("DATABASE_URL is :memory:: the directory lives in the server's memory, not copied");
  }

  step = `the KV file (${kvSource})`;
  await snapshot(kvSource, join(partial, DEFAULT_KV_FILE));
  await prepareKvCopy(join(partial, DEFAULT_KV_FILE));
  copied.push(DEFAULT_KV_FILE);
  if (kvSource !== join(config.dataDir, DEFAULT_KV_FILE)) {
    notes.push(
      `KV_PATH (${kvSource}) is copied to ${DEFAULT_KV_FILE}, where a server without KV_PATH ` +
        "finds it",
    );
  }

  // After the KV snapshot: every file its messages name was stored before it, so is here unless
  // deleted since; files stored after it are extras no message names.
  const mediaSource = resolve(config.mediaDir);
  step = `MEDIA_DIR (${mediaSource})`;
  const found = await Deno.stat(mediaSource).catch((err) => {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  });
  if (found) await copyTree(mediaSource, join(partial, "media"));
  else {
    await Deno.mkdir(join(partial, "media"), { mode: 0o700 });
    notes.push(`MEDIA_DIR (${mediaSource}) does not exist: no files to copy`);
  }
  if (mediaSource !== join(config.dataDir, "media")) {
    notes.push(
      `MEDIA_DIR (${mediaSource}) is copied to media, where a server without MEDIA_DIR finds it`,
    );
  }

  step = `DATA_DIR (${config.dataDir})`;
  for (const path of [devSecretPath(config.dataDir), keySetCachePath(config.dataDir)]) {
    if (await copyFile(path, join(partial, basename(path))) !== undefined) {
      copied.push(basename(path));
    }
  }

  step = `the destination (${target})`;
  await flush(partial);
  if (existing) {
    for (const entry of await Array.fromAsync(Deno.readDir(partial))) {
      await Deno.rename(join(partial, entry.name), join(target, entry.name));
      moved.push(entry.name);
    }
    await flush(target);
    // Last: while the hidden folder is there, the copy is not whole.
    await Deno.remove(partial);
    await flush(target);
  } else {
    // One that filled up meanwhile fails the rename.
    await Deno.rename(partial, target);
    await flush(parent);
  }
} catch (err) {
  await Deno.remove(partial, { recursive: true }).catch(() => {});
  for (const name of moved) {
    await Deno.remove(join(target, name), { recursive: true }).catch(() => {});
  }
  console.error(
    `Backup failed copying ${step}: ${
      noSpace(err)
        ? `no space left on the volume of ${home}`
        // SQLite's word when a full volume refuses its journal or shared memory file.
        : /disk I\/O error/i.test(message(err))
        ? `disk I/O error (the volume of ${home} may be full)`
        : message(err)
    }; nothing was written to ${target}`,
  );
  Deno.exit(1);
}

for (const note of notes) console.log(note);
const what = [
  ...copied,
  `${media.files} media file${media.files === 1 ? "" : "s"} (${media.bytes} bytes)`,
];
const passed = [
  ...(media.gone > 0 ? [`${media.gone} deleted while copied`] : []),
  ...(media.skipped > 0 ? [`${media.skipped} links or special files passed over`] : []),
];
console.log(
  `Backed up to ${target}: ${what.join(", ")}${passed.length > 0 ? `; ${passed.join(", ")}` : ""}`,
);
