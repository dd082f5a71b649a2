/**
 * The media volume as operators have it: a shared volume that makes no hard links (SMB and Azure
 * Files, s3fs, gcsfuse), where files were linked into place and so every one was refused; and
 * files refused for their bytes, which left an empty folder each behind.
 *
 * The FUSE test mounts a volume that refuses links (tests/fixtures/no_links_fs.py, Debian's
 * python3-fusepy and fuse3): where it cannot (no /dev/fuse, no fusepy) it is skipped, and its
 * name says so; the same sends run everywhere with Deno.link failing as it does there.
 */

import { assert, assertEquals, delay, eventually } from "./assert.ts";
import { health, startTestServer, TEST_SECRET, TestClient } from "./helpers.ts";
import { mayMount, run, spawnServer } from "./server_process.ts";
import { signDevToken } from "../src/auth/verifier.ts";

/** Every folder under `root` that holds nothing, relative to it. */
async function emptyFolders(root: string): Promise<string[]> {
  const empty: string[] = [];
  const walk = async (dir: string, rel: string) => {
    let entries = 0;
    for await (const e of Deno.readDir(dir)) {
      entries++;
      if (e.isDirectory) await walk(`${dir}/${e.name}`, `${rel}${e.name}/`);
    }
    if (entries === 0) empty.push(rel);
  };
  await walk(root, "");
  return empty.sort();
}

Deno.test("media: files refused as not base64 on the ticket socket and the conversation chat leave no empty folder each behind", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:1", "chat:1"] });
    const ticket = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
    const chat = await TestClient.open(`${server.wsUrl}/ws/chat/1/?token=${token}`);
    await chat.next();
    ticket.send({ body: "ok", file: btoa("fine"), filename: "ok.txt" });
    assertEquals(typeof (await ticket.next()).file, "string");
    // The conversation's folder of the day is made once, by its first file.
    chat.send({ type: "file_message", message: "ok", file: btoa("fine"), filename: "ok.pdf" });
    assertEquals((await chat.next()).message_type, "file");
    const media = `${server.dataDir}/media`;
    const before = await emptyFolders(media);
    for (let i = 0; i < 3; i++) {
      ticket.send({ body: "x", file: "@@@@", filename: "a.png" });
      assertEquals(await ticket.next(), { error: "File is not valid base64" });
      chat.send({ type: "file_message", message: "x", file: "QUJD!!!!", filename: "a.pdf" });
      assertEquals(await chat.next(), { type: "error", message: "File is not valid base64" });
    }
    assertEquals(await emptyFolders(media), before);
    await ticket.close();
    await chat.close();
  } finally {
    await server.close();
  }
});

/** Sends a file on a ticket socket of `url` and answers its URL, fetched, and its bytes. */
async function sendAndFetch(url: string, token: string, name: string, text: string) {
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws/ticket/1/?token=${token}`);
  try {
    ws.send({ body: "report", file: btoa(text), filename: name });
    const reply = await ws.next();
    assert(typeof reply.file === "string", JSON.stringify(reply));
    const res = await fetch(reply.file as string);
    return [res.status, await res.text()];
  } finally {
    await ws.close();
  }
}

Deno.test("media: a MEDIA_DIR whose volume makes no hard links takes files (Deno.link failing as it does on one)", async () => {
  const { link } = Deno;
  (Deno as { link: typeof Deno.link }).link = () =>
    Promise.reject(Object.assign(new Error("Operation not supported (os error 95)"), {
      code: "ENOTSUP",
    }));
  const { warn } = console;
  const warnings: string[] = [];
  console.warn = (text: string) => warnings.push(text);
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "1", rooms: ["ticket:1"] });
    assertEquals(await sendAndFetch(server.url, token, "a.txt", "first"), [200, "first"]);
    assertEquals(await sendAndFetch(server.url, token, "a.txt", "second"), [200, "second"]);
    assertEquals((await fetch(`${server.url}/healthz`)).status, 200);
    assertEquals(
      warnings.filter((w) => /makes no hard links/.test(w)).length,
      1,
      warnings.join("\n"),
    );
  } finally {
    console.warn = warn;
    (Deno as { link: typeof Deno.link }).link = link;
    await server.close();
  }
});

/** Whether a FUSE volume can be mounted here by the fixture: /dev/fuse, fusepy, fusermount. */
async function mayMountFuse(): Promise<boolean> {
  if (Deno.build.os !== "linux") return false;
  try {
    await Deno.stat("/dev/fuse");
    const probe = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", "import fusepy"],
      stdout: "null",
      stderr: "null",
    }).output();
    return probe.success;
  } catch {
    return false;
  }
}

const noFuse = !(await mayMountFuse());

Deno.test({
  name:
    `media: a server process whose MEDIA_DIR is a FUSE volume refusing hard links stores and serves files, and says once how${
      noFuse ? " (SKIPPED: no /dev/fuse or python3-fusepy)" : ""
    }`,
  ignore: noFuse,
  async fn() {
    const backing = await Deno.makeTempDir({ prefix: "no-links-backing-" });
    const mount = await Deno.makeTempDir({ prefix: "no-links-" });
    const dataDir = await Deno.makeTempDir({ prefix: "no-links-data-" });
    const fs = new Deno.Command("/usr/bin/python3", {
      args: [new URL("./fixtures/no_links_fs.py", import.meta.url).pathname, backing, mount],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let server: ReturnType<typeof spawnServer> | undefined;
    try {
      // Mounted once the mount point's device differs from its parent's.
      await eventually(
        async () => (await Deno.stat(mount)).dev !== (await Deno.stat(dataDir)).dev,
        10_000,
        "the FUSE volume to mount",
      );
      server = spawnServer({ DATA_DIR: dataDir, MEDIA_DIR: mount });
      const url = await server.url();
      const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["ticket:1"] });
      assertEquals(await sendAndFetch(url, token, "a.txt", "first"), [200, "first"]);
      assertEquals(await sendAndFetch(url, token, "a.txt", "second"), [200, "second"]);
      const log = server.log();
      assertEquals(log.match(/makes no hard links/g)?.length, 1, log);
      // The bytes are on the volume, under the names given, with nothing hidden left.
      const names: string[] = [];
      for await (const e of Deno.readDir(`${backing}/files/ticket_1`)) {
        for await (const f of Deno.readDir(`${backing}/files/ticket_1/${e.name}`)) {
          names.push(f.name);
        }
      }
      assertEquals(names.sort(), ["a.txt", "a.txt"]);
    } finally {
      await server?.kill("SIGTERM");
      await new Deno.Command("fusermount", { args: ["-u", mount] }).output().catch(() => {});
      await delay(100);
      try {
        fs.kill("SIGTERM");
      } catch {
        // Gone with its unmount.
      }
      await fs.status;
      await fs.stderr.cancel().catch(() => {});
      for (const dir of [backing, mount, dataDir]) {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    }
  },
});

Deno.test("media: a server process whose MEDIA_DIR links to a volume not mounted yet starts, says 503 on /healthz, and stores and serves files once the volume appears", async () => {
  const base = await Deno.makeTempDir({ prefix: "media-later-" });
  const mediaDir = `${base}/media`;
  await Deno.symlink(`${base}/volume/media`, mediaDir);
  const server = spawnServer({ DATA_DIR: `${base}/data`, MEDIA_DIR: mediaDir });
  try {
    const url = await server.url();
    assertEquals((await health(url)).status, 503);
    await Deno.mkdir(`${base}/volume/media`, { recursive: true });
    await eventually(async () => (await health(url)).status === 200, 5_000, "/healthz to say 200");
    const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["ticket:1"] });
    assertEquals(await sendAndFetch(url, token, "a.txt", "later"), [200, "later"]);
  } finally {
    await server.kill("SIGTERM");
    await Deno.remove(base, { recursive: true });
  }
});

const noMount = !(await mayMount());

Deno.test({
  name:
    `media: a server process whose MEDIA_DIR is on a full volume (no inode left: not even an empty file or a folder) starts, says 503 on /healthz, and stores files once there is room${
      noMount ? " (SKIPPED: mounting a tmpfs needs root)" : ""
    }`,
  ignore: noMount,
  async fn() {
    const volume = await Deno.makeTempDir({ prefix: "media-full-" });
    const dataDir = await Deno.makeTempDir({ prefix: "media-full-data-" });
    await run("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=16", "tmpfs", volume);
    const fillers: string[] = [];
    /** Creates empty files until the volume has no inode left. */
    const fill = async () => {
      while (true) {
        const path = `${volume}/filler-${crypto.randomUUID()}`;
        try {
          await Deno.writeFile(path, new Uint8Array());
        } catch (err) {
          if (err instanceof Error && /no space left/i.test(err.message)) return;
          throw err;
        }
        fillers.push(path);
      }
    };
    try {
      // The volume's root, where an empty file cannot be created, and a folder not yet made.
      for (const mediaDir of [volume, `${volume}/media`]) {
        await fill();
        const server = spawnServer({ DATA_DIR: dataDir, MEDIA_DIR: mediaDir });
        try {
          const url = await server.url();
          assertEquals((await health(url)).status, 503, server.log());
          // Room for a file: its folders, its name and the bytes' temporary name.
          for (const path of fillers.splice(0, 8)) await Deno.remove(path);
          await eventually(async () => (await health(url)).status === 200, 5_000, "/healthz 200");
          const token = await signDevToken(TEST_SECRET, { sub: "1", rooms: ["ticket:1"] });
          assertEquals(await sendAndFetch(url, token, "a.txt", "room"), [200, "room"]);
        } finally {
          await server.kill("SIGTERM");
        }
      }
    } finally {
      await run("umount", volume).catch(() => run("umount", "-l", volume));
      await Deno.remove(volume, { recursive: true }).catch(() => {});
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
