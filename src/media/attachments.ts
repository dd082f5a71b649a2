/** Checking, decoding and storing the files of a message. */

import { ChatError } from "../core/errors.ts";
import { failureLog } from "../core/failure_log.ts";
import { objectId } from "../core/ids.ts";
import type {
  Attachment,
  AttachmentStore,
  FileInput,
  MediaStore,
  StoredNames,
} from "../core/types.ts";
import { decodeAttachmentChunks, fileTooLarge } from "./base64.ts";
import { displayFilename, numberedName, safeFilename, shownPart } from "./filename.ts";
import { detectMime, SNIFF_BYTES } from "./mime.ts";

/**
 * 122 random bits in hex and the client name's extension, when it has a short plain one (files
 * are served by it): a name nobody can guess from the original's.
 */
function randomName(original: string): string {
  const ext = /\.[A-Za-z0-9]{1,16}$/.exec(original)?.[0] ?? "";
  return randomHex() + ext;
}

/** 122 random bits as 32 hex digits. */
const randomHex = () => crypto.randomUUID().replaceAll("-", "");

/** The disk name of a file named `diskName` by its client, as `names` says. */
function storedName(diskName: string, names: StoredNames = "client"): string {
  if (names === "random") return randomName(diskName);
  // Within the 255 bytes a name may have: a long client name gives up the end of its stem.
  if (names === "tagged") return numberedName(diskName, randomHex());
  return diskName;
}

/** Longest filename a client may send, in characters. */
export const MAX_FILENAME_CHARS = 255;

/**
 * A failure of the volume itself (permissions, a full disk, a read-only mount) as an error the
 * client is told in words, logged here with its cause (once per outage: every file is refused
 * until the volume takes files again); the client's own faults pass unchanged.
 */
function storageError(err: unknown): unknown {
  if (err instanceof ChatError) return err;
  const os = Object.values(Deno.errors).some((kind) => err instanceof kind) ||
    /\(os error \d+\)/.test(String((err as Error)?.message));
  if (!os) return err;
  failureLog.refused("media", err, "media: storing a file failed");
  return new ChatError(
    "internal",
    "The file could not be stored: the server's storage is unavailable; try again later",
  );
}

/**
 * Names and sizes of all files are checked before anything is written; base64 is decoded while
 * it is written, and a file that turns out bad takes every file of the message with it.
 */
export class MediaAttachmentStore implements AttachmentStore {
  #media: MediaStore;
  #maxBytes: number;

  /** Stores into `media`, refusing files over `maxBytes` decoded. */
  constructor(media: MediaStore, maxBytes: number) {
    this.#media = media;
    this.#maxBytes = maxBytes;
  }

  /** Decodes and checks every file, then writes them all under `dir`. */
  async save(
    dir: string,
    files: FileInput[],
    options: {
      names?: StoredNames;
      onStored?: (stored: Attachment[]) => Promise<void>;
      onAbandon?: () => Promise<boolean>;
    } = {},
  ): Promise<Attachment[]> {
    const prepared = files.map((file) => {
      // A lone surrogate (valid in JSON) has no UTF-8 form: the disk would hold another name
      // than the message, and its URL could not be written.
      const name = file.name?.toWellFormed().trim();
      // A name with nothing showable (`/`, control characters alone) is no name either.
      if (!name || !shownPart(name)) {
        throw new ChatError("filename_required", "Filename is required with a file");
      }
      if ([...name].length > MAX_FILENAME_CHARS) {
        throw new ChatError(
          "filename_too_long",
          `Filename is too long: the limit is ${MAX_FILENAME_CHARS} characters`,
        );
      }
      const chunks = typeof file.data === "string"
        ? decodeAttachmentChunks(file.data, this.#maxBytes)
        : [file.data];
      if (typeof file.data !== "string" && file.data.length > this.#maxBytes) {
        throw fileTooLarge(file.data.length, this.#maxBytes);
      }
      return { chunks, originalName: displayFilename(name), diskName: safeFilename(name) };
    });
    const stored: Attachment[] = [];
    try {
      for (const file of prepared) {
        let head: Uint8Array | undefined;
        await this.#media.put(
          // A name as the client gave it is found by guessing it (`image.png` in a ticket's
          // folder): a folder nobody can guess holds it, the name itself kept.
          (options.names ?? "client") === "client" ? `${dir}/${randomHex()}` : dir,
          storedName(file.diskName, options.names),
          {
            *[Symbol.iterator]() {
              for (const chunk of file.chunks) {
                // Chunks share one buffer: the start is copied before the next overwrites it.
                head ??= chunk.slice(0, SNIFF_BYTES);
                yield chunk;
              }
            },
          },
          {
            // Named while a crash would still leave the file to the media sweep.
            linked: async (put) => {
              stored.push({
                id: objectId(),
                key: put.key,
                name: put.name,
                originalName: file.originalName,
                // What it is served as, by the name it is stored under and its first bytes.
                mime: detectMime(head ?? new Uint8Array(), put.name),
                size: put.size,
                uploadedAt: new Date().toISOString(),
              });
              await options.onStored?.(stored);
            },
          },
        );
      }
    } catch (err) {
      // Told first: the names are free once the files go, unless it says they may not be.
      const free = stored.length === 0 || !options.onAbandon ||
        await options.onAbandon().catch(() => false);
      await this.discard(stored, free ? { unannounced: true } : {});
      throw storageError(err);
    }
    if (stored.length > 0) failureLog.answered("media");
    return stored;
  }

  /** Deletes stored files, ignoring ones already gone (see AttachmentStore.discard in core/types.ts). */
  async discard(attachments: Attachment[], options?: { unannounced?: boolean }): Promise<void> {
    for (const a of attachments) await this.#media.delete(a.key, options).catch(() => false);
  }
}
