/** Checking, decoding and storing the files of a message. */

import { ChatError } from "../core/errors.ts";
import { objectId } from "../core/ids.ts";
import type { Attachment, AttachmentStore, FileInput, MediaStore } from "../core/types.ts";
import { decodeAttachment } from "./base64.ts";
import { safeFilename } from "./filename.ts";
import { detectMime } from "./mime.ts";

/** Longest filename a client may send, in characters. */
export const MAX_FILENAME_CHARS = 255;

/** Validates all files before writing any, so a bad one leaves nothing behind. */
export class MediaAttachmentStore implements AttachmentStore {
  #media: MediaStore;
  #maxBytes: number;

  /** Stores into `media`, refusing files over `maxBytes` decoded. */
  constructor(media: MediaStore, maxBytes: number) {
    this.#media = media;
    this.#maxBytes = maxBytes;
  }

  /** Decodes and checks every file, then writes them all under `dir`. */
  async save(dir: string, files: FileInput[]): Promise<Attachment[]> {
    const prepared = files.map((file) => {
      const name = file.name?.trim();
      if (!name) throw new ChatError("filename_required", "Filename is required with a file");
      if ([...name].length > MAX_FILENAME_CHARS) {
        throw new ChatError(
          "filename_too_long",
          `Filename is too long: the limit is ${MAX_FILENAME_CHARS} characters`,
        );
      }
      const bytes = typeof file.data === "string"
        ? decodeAttachment(file.data, this.#maxBytes)
        : file.data;
      if (bytes.length > this.#maxBytes) {
        throw new ChatError(
          "file_too_large",
          `File is too large: ${bytes.length} bytes, the limit is ${this.#maxBytes} bytes`,
        );
      }
      const safe = safeFilename(name);
      return { bytes, originalName: safe, mime: detectMime(bytes, safe) };
    });
    const stored: Attachment[] = [];
    try {
      for (const file of prepared) {
        const put = await this.#media.put(dir, file.originalName, file.bytes);
        stored.push({
          id: objectId(),
          key: put.key,
          name: put.name,
          originalName: file.originalName,
          mime: file.mime,
          size: put.size,
          uploadedAt: new Date().toISOString(),
        });
      }
    } catch (err) {
      await this.discard(stored);
      throw err;
    }
    return stored;
  }

  /** Deletes stored files, ignoring ones already gone. */
  async discard(attachments: Attachment[]): Promise<void> {
    for (const a of attachments) await this.#media.delete(a.key).catch(() => false);
  }
}
