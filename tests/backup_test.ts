/**
 * `deno task backup`: a copy taken while a client keeps sending is a DATA_DIR a server starts on,
 * with every message acknowledged before it, their files, the directory and the dev secret; and
 * what it refuses, without leaving anything behind.
 */

import { basename, dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { assert, assertEquals, assertMatch, eventually } from "./assert.ts";
import { adminCall, listFiles, TestClient } from "./helpers.ts";
import { mayMount, run, smallDisk, type spawnServer, withDataDir } from "./server_process.ts";
import { ensureDevSecret, signDevToken } from "../src/auth/verifier.ts";
import { ChatClient } from "../client/mod.ts";

type Frame = Record<string, unknown>;
type Attachment = { name: string; url: string };

const ADMIN = "an-admin-token-for-the-backup-test";

/** The flags `deno task backup` runs scripts/backup.ts with, as deno.json's task names them. */
async function taskFlags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const words: string[] = config.tasks.backup.split(/\s+/);
  const script = words.indexOf("scripts/backup.ts");
  if (words[0] !== "deno" || words[1] !== "run" || script < 0) {
    throw new Error(`the backup task is not "deno run <flags> scripts/backup.ts"`);
  }
  return words.slice(2, script);
}

/** Runs the backup task into `dir` with `env` as its whole environment (and PATH). */
async function backup(env: Record<string, string>, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...await taskFlags(),
      new URL("../scripts/backup.ts", import.meta.url).pathname,
      ...args,
    ],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "", NO_COLOR: "1", ...env },
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes).trim();
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/**
 * Backs `dataDir` up to `${dataDir}-backup`, which must succeed, and gives `use` the copy and what
 * the task printed; the copy is removed after, whatever `use` did.
 */
async function withBackup(
  dataDir: string,
  use: (copy: string, stdout: string) => Promise<void>,
): Promise<void> {
  const copy = `${dataDir}-backup`;
  try {
    const result = await backup({ DATA_DIR: dataDir }, copy);
    assertEquals(result.code, 0, result.stderr);
    await use(copy, result.stdout);
  } finally {
    await Deno.remove(copy, { recursive: true }).catch(() => {});
  }
}

/** Every message of `room` the native socket `ws` reads through `history`, in pages. */
async function wholeHistory(ws: TestClient, room: string): Promise<Frame[]> {
  const messages: Frame[] = [];
  for (let after = 0;;) {
    ws.send({ type: "history", room, after, limit: 200, ref: `h${after}` });
    const page = await ws.next((f) => f.type === "history" && f.ref === `h${after}`, 30_000);
    const got = page.messages as Frame[];
    messages.push(...got);
    if (!page.has_more || got.length === 0) return messages;
    after = got.at(-1)!.seq as number;
  }
}

/** A file's bytes for message `i`: different for each, and more than one read's worth. */
const fileOf = (i: number) => new Uint8Array(70_000).map((_, j) => (i * 31 + j) % 251);

/** Owner-only modes of everything under `dir`: 0700 folders, 0600 files. */
async function modesUnder(dir: string): Promise<string[]> {
  const wrong: string[] = [];
  const walk = async (path: string) => {
    const mode = (await Deno.lstat(path)).mode! & 0o777;
    const info = await Deno.lstat(path);
    if (info.isDirectory) {
      if (mode !== 0o700) wrong.push(`${path} ${mode.toString(8)}`);
      for await (const e of Deno.readDir(path)) await walk(`${path}/${e.name}`);
    } else if (mode !== 0o600) wrong.push(`${path} ${mode.toString(8)}`);
  };
  await walk(dir);
  return wrong;
}

Deno.test("backup: taken while a client keeps sending, it is a DATA_DIR with every acknowledged message, file, directory row and dev token", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const server = spawn(env);
    const url = await server.url();
    // The dev secret, as the server made it: tokens signed with it must work on the copy.
    const { secret } = await ensureDevSecret(dataDir);
    const token = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");

    for (const [id, username] of [["1", "ann"], ["2", "bob"]]) {
      assertEquals(await adminCall(url, ADMIN, "PUT", `/api/users/${id}`, { username }), 200);
    }
    assertEquals(
      await adminCall(url, ADMIN, "PUT", "/api/rooms/ticket/1", {
        title: "Printer",
        owner_id: "1",
        participants: [{ user_id: "2", role: "agent" }],
      }),
      201,
    );

    const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
    clients.push(ws);
    await ws.next((f) => f.type === "welcome");
    ws.send({ type: "join", room: "ticket:1", ref: "j" });
    await ws.next((f) => f.ref === "j");

    // Bodies by seq, from the acks; the files each message carried, by seq.
    const bodies = new Map<number, string>();
    const files = new Map<number, Uint8Array>();
    const sent = new Map<string, { body: string; file?: Uint8Array }>();
    let sending = 0;
    const send = (withFile: boolean) => {
      const i = ++sending;
      const body = `message ${i} ${"é".repeat(i % 50)}`;
      const file = withFile ? fileOf(i) : undefined;
      sent.set(`c${i}`, { body, file });
      ws.send({
        type: "send",
        room: "ticket:1",
        body,
        client_id: `c${i}`,
        ...(file ? { files: [{ name: `f${i}.bin`, data: file.toBase64() }] } : {}),
      });
    };
    const takeAcks = async (until: () => boolean) => {
      while (!until()) {
        const ack = await ws.next((f) => f.type === "ack" || f.type === "error", 30_000);
        assertEquals(ack.type, "ack", JSON.stringify(ack));
        const mine = sent.get(ack.client_id as string)!;
        bodies.set(ack.seq as number, mine.body);
        if (mine.file) files.set(ack.seq as number, mine.file);
        // The broadcast copies of the messages are not needed.
        const replies = ws.frames.filter((f) =>
          ["ack", "error"].includes((f as Frame).type as string)
        );
        ws.frames.splice(0, ws.frames.length, ...replies);
      }
    };
    for (let i = 1; i <= 40; i++) send(i % 4 === 0);
    await takeAcks(() => bodies.size === 40);
    const ackedBefore = new Map(bodies);

    // Keeps sending until the backup is done: its snapshot is taken under these commits.
    let done = false;
    const writer = (async () => {
      while (!done) {
        for (let k = 0; k < 10; k++) send(sending % 5 === 0);
        await takeAcks(() => bodies.size === sending);
      }
    })();
    const stopWriter = async () => {
      done = true;
      await writer;
    };
    try {
      await withBackup(dataDir, async (copy, stdout) => {
        // The copy is taken: what the writer sends now is the original's alone.
        await stopWriter();
        assertMatch(
          stdout,
          /^Backed up to .*: directory\.sqlite3, chat\.kv, dev-jwt-secret, \d+ media files/m,
        );

        // A DATA_DIR as the server's own: owner-only, and none of SQLite's side files nor the
        // space reserve, which belong to a live file.
        assertEquals(await modesUnder(copy), []);
        const names = (await listFiles(copy)).filter((n) => !n.startsWith("media/"));
        assertEquals(names, ["chat.kv", "dev-jwt-secret", "directory.sqlite3"]);

        // The same settings as the first server's but DATA_DIR: the dev secret, no JWT_SECRET.
        const restored = spawn({ ...env, DATA_DIR: copy });
        const restoredUrl = await restored.url();
        const reader = await TestClient.open(
          `${restoredUrl.replace(/^http/, "ws")}/ws?token=${token}`,
        );
        clients.push(reader);
        await reader.next((f) => f.type === "welcome");
        const history = await wholeHistory(reader, "ticket:1");

        // A prefix of the room's history with no hole, each message as it was acknowledged.
        const seqs = history.map((m) => m.seq as number);
        assertEquals(seqs, seqs.map((_, i) => i + 1));
        assert(history.length >= ackedBefore.size, `${history.length} < ${ackedBefore.size}`);
        for (const m of history) {
          const seq = m.seq as number;
          if (bodies.has(seq)) assertEquals(m.body, bodies.get(seq), `seq ${seq}`);
        }
        for (const [seq, body] of ackedBefore) assertEquals(history[seq - 1].body, body);

        // Each file of those messages serves the same bytes from the copy.
        let checked = 0;
        for (const m of history) {
          const seq = m.seq as number;
          const attachments = (m.attachments ?? []) as Attachment[];
          if (!ackedBefore.has(seq)) continue;
          assertEquals(attachments.length, files.has(seq) ? 1 : 0, `seq ${seq}`);
          for (const a of attachments) {
            const res = await fetch(a.url);
            assertEquals(res.status, 200, a.url);
            assertEquals(new Uint8Array(await res.arrayBuffer()), files.get(seq));
            checked++;
          }
        }
        assertEquals(checked, 10);

        // The directory: users, the room and its participants.
        const room = await fetch(`${restoredUrl}/api/rooms/ticket/1`, {
          headers: { authorization: `Bearer ${ADMIN}` },
        });
        assertEquals(room.status, 200);
        const body = await room.json();
        assertEquals([body.title, body.owner_id], ["Printer", "1"]);
        const participants = (body.participants as { user_id: string; role: string }[])
          .map((p) => `${p.user_id}:${p.role}`);
        assert(participants.includes("2:agent"), JSON.stringify(body));
        const user = await fetch(`${restoredUrl}/api/users/2`, {
          headers: { authorization: `Bearer ${ADMIN}` },
        });
        assertEquals((await user.json()).username, "bob");
      });
    } finally {
      await stopWriter();
    }
  }, {
    extra: {
      JWT_SECRET: "",
      ADMIN_TOKEN: ADMIN,
      RATE_LIMIT_PER_SECOND: "100000",
      RATE_LIMIT_USER_PER_SECOND: "100000",
    },
  });
});

/** Opens a native socket on `url` as the holder of `token`, once welcomed. */
async function openAs(url: string, token: string, clients: TestClient[]): Promise<TestClient> {
  const ws = await TestClient.open(`${url.replace(/^http/, "ws")}/ws?token=${token}`);
  clients.push(ws);
  await ws.next((f) => f.type === "welcome");
  return ws;
}

/** Joins `room` on `ws` and sends `bodies` one after another; resolves to their acks' seqs. */
async function sendEach(ws: TestClient, room: string, bodies: string[]): Promise<number[]> {
  const ref = `j${crypto.randomUUID()}`;
  ws.send({ type: "join", room, ref });
  await ws.next((f) => f.ref === ref, 10_000);
  const seqs: number[] = [];
  for (const body of bodies) {
    ws.send({ type: "send", room, body, client_id: body });
    const ack = await ws.next((f) => f.type === "ack" && f.client_id === body, 10_000);
    seqs.push(ack.seq as number);
  }
  return seqs;
}

const bodiesOf = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);

Deno.test("backup: on the restored server, a client that saw messages sent after the backup resumes with `since` and gets every new one, under seqs it never saw; history and retention keep the restored messages", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const original = spawn(env);
    const url = await original.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const bob = await signDevToken(secret, { sub: "2", username: "bob" }, "1h");
    const a = await openAs(url, ann, clients);
    assertEquals(
      await sendEach(a, "room:general", bodiesOf("before", 10)),
      bodiesOf("", 10).map(Number),
    );
    await withBackup(dataDir, async (copy) => {
      // Ann sees 11..15 on the original, which the restore rolls back; her read cursor says so.
      const seen = await sendEach(a, "room:general", bodiesOf("lost", 5));
      assertEquals(seen, [11, 12, 13, 14, 15]);
      a.socket.close();
      await original.kill("SIGTERM");

      const restored = spawn({ ...env, DATA_DIR: copy });
      const rurl = await restored.url();
      // Bob talks first on the restored server.
      const b = await openAs(rurl, bob, clients);
      const fresh = await sendEach(b, "room:general", bodiesOf("after", 7));
      for (const seq of fresh) assert(seq > 15, `seq ${seq} reused: ${fresh}`);
      assertEquals(fresh, fresh.map((_, i) => fresh[0] + i));

      // Ann's client resumes where it was: since = 15.
      const a2 = await openAs(rurl, ann, clients);
      a2.send({ type: "join", room: "room:general", since: 15, ref: "r" });
      const joined = await a2.next((f) => f.ref === "r" && f.type === "joined", 10_000);
      assertEquals(joined.head, fresh.at(-1));
      const got: Frame[] = [];
      while (got.at(-1)?.seq !== fresh.at(-1)) {
        got.push(await a2.next((f) => f.type === "message", 10_000));
      }
      assertEquals(got.map((m) => m.body), bodiesOf("after", 7));
      assertEquals(got.map((m) => m.seq), fresh);
      // Her cursor (15) covers none of them.
      a2.send({ type: "read", room: "room:general", seq: 15 });
      a2.send({ type: "join", room: "room:general", ref: "k" });
      const again = await a2.next((f) => f.ref === "k" && f.type === "joined", 10_000);
      const reads = (again.reads ?? []) as Frame[];
      const mine = reads.find((r) => String(r.user_id) === "1")?.seq as number | undefined;
      assert(mine === undefined || mine < fresh[0], JSON.stringify(reads));

      // History pages through the jump; HISTORY_LIMIT (20) counts messages, not seqs: the 10
      // restored ones stay beside the 7 new ones once retention has looked at the room (a moment
      // after its first commit).
      await new Promise((r) => setTimeout(r, 1000));
      const history = await wholeHistory(b, "room:general");
      assertEquals(history.map((m) => m.body), [
        ...bodiesOf("before", 10),
        ...bodiesOf("after", 7),
      ]);
    });
  }, {
    extra: {
      JWT_SECRET: "",
      HISTORY_LIMIT: "20",
      RATE_LIMIT_PER_SECOND: "100000",
      RATE_LIMIT_USER_PER_SECOND: "100000",
    },
  });
});

Deno.test("backup: on the restored server, a native join with since below the jump replays every stored message after since and those past the jump, without replay_limited; one with since among the rolled-back messages gets history_truncated first, the typed client rebuilds only then, also when the replay is limited", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const original = spawn(env);
    const url = await original.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const a = await openAs(url, ann, clients);
    await sendEach(a, "room:general", bodiesOf("before", 10));
    const copy = `${dataDir}-backup`;
    const result = await backup({ DATA_DIR: dataDir }, copy);
    assertEquals(result.code, 0, result.stderr);
    // 11..15, seen on the original, are rolled back by the restore.
    assertEquals(await sendEach(a, "room:general", bodiesOf("lost", 5)), [11, 12, 13, 14, 15]);
    a.socket.close();
    await original.kill("SIGTERM");
    const typed: ChatClient[] = [];
    try {
      const restored = spawn({ ...env, DATA_DIR: copy });
      const rurl = await restored.url();
      const b = await openAs(rurl, ann, clients);
      const fresh = await sendEach(b, "room:general", bodiesOf("after", 2));
      let newest = { seq: fresh.at(-1), body: "after2" };
      /** The messages and resyncs a native join with `since` gets, up to the newest message. */
      const rejoin = async (since: number) => {
        const c = await openAs(rurl, ann, clients);
        c.send({ type: "join", room: "room:general", since, ref: "r" });
        const got: Frame[] = [];
        while (!got.some((f) => f.seq === newest.seq)) {
          got.push(await c.next((f) => f.type === "message" || f.type === "resync", 10_000));
        }
        return got.map((f) => f.type === "resync" ? `resync ${f.reason} ${f.first_seq}` : f.body);
      };
      /** The same through the typed client: its message and resync events. */
      const typedRejoin = async (since: number) => {
        const chat = new ChatClient({ url: `${rurl.replace(/^http/, "ws")}/ws`, token: ann });
        typed.push(chat);
        const got: string[] = [];
        chat.on("message", (m) => got.push(m.body));
        chat.on("resync", (r) => got.push(`resync ${r.reason} ${r.first_seq}`));
        await chat.connect();
        await chat.join("room:general", { since });
        const deadline = Date.now() + 10_000;
        while (got.at(-1) !== newest.body && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
        }
        // Anything a late gap read would add.
        await new Promise((r) => setTimeout(r, 300));
        return got;
      };
      // A client that holds 1..5 (it was offline) resumes: all it lacks is still stored.
      const held = [...bodiesOf("before", 10).slice(5), ...bodiesOf("after", 2)];
      assertEquals(await rejoin(5), held);
      assertEquals(await typedRejoin(5), held);
      // One that holds 11..15 holds what this server does not have: told to rebuild.
      const rebuilt = [`resync history_truncated ${fresh[0]}`, ...bodiesOf("after", 2)];
      assertEquals(await rejoin(15), rebuilt);
      assertEquals(await typedRejoin(15), rebuilt);
      // More than REPLAY_LIMIT (8) past the jump: the replay is limited, and the typed client, reading
      // back the rest, finds the message it holds gone.
      const more = await sendEach(b, "room:general", bodiesOf("after", 10).slice(2));
      newest = { seq: more.at(-1), body: "after10" };
      assertEquals(await typedRejoin(15), [
        `resync history_truncated ${fresh[0]}`,
        ...bodiesOf("after", 10),
      ]);
    } finally {
      for (const chat of typed) chat.close();
      await Deno.remove(copy, { recursive: true }).catch(() => {});
    }
  }, { extra: { JWT_SECRET: "", REPLAY_LIMIT: "8" } });
});

/**
 * The `chat_message` bodies a chat-rooms socket is shown on connect: the `count` expected (fewer
 * if they do not come), then any more that come within 300 ms.
 */
async function historyOnConnect(
  url: string,
  name: string,
  token: string,
  clients: TestClient[],
  count: number,
) {
  const ws = await TestClient.open(
    `${url.replace(/^http/, "ws")}/ws/rooms/${name}/?token=${token}`,
  );
  clients.push(ws);
  await ws.next((f) => f.type === "room_users_list", 10_000);
  const got: string[] = [];
  const take = async (ms: number) =>
    got.push((await ws.next((f) => f.type === "chat_message", ms)).message as string);
  try {
    while (got.length < count) await take(10_000);
    for (;;) await take(300);
  } catch {
    // Timed out: the caller compares what came with what should have.
  } finally {
    ws.socket.close();
  }
  return got;
}

Deno.test("backup: on the restored server, a chat-rooms socket is shown the room's last HISTORY_ON_CONNECT messages on connect, from before and after the jump", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const original = spawn(env);
    const url = await original.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const a = await openAs(url, ann, clients);
    await sendEach(a, "room:lobby", bodiesOf("before", 5));
    const lastFour = bodiesOf("before", 5).slice(1);
    assertEquals(await historyOnConnect(url, "lobby", ann, clients, 4), lastFour);
    await withBackup(dataDir, async (copy) => {
      a.socket.close();
      await original.kill("SIGTERM");
      const restored = spawn({ ...env, DATA_DIR: copy });
      const rurl = await restored.url();
      assertEquals(await historyOnConnect(rurl, "lobby", ann, clients, 4), lastFour);
      // Two sent after the jump: the last four are two from each side of it.
      const b = await openAs(rurl, ann, clients);
      await sendEach(b, "room:lobby", bodiesOf("after", 2));
      assertEquals(await historyOnConnect(rurl, "lobby", ann, clients, 4), [
        "before4",
        "before5",
        "after1",
        "after2",
      ]);
    });
  }, { extra: { JWT_SECRET: "", HISTORY_ON_CONNECT: "4" } });
});

Deno.test("backup: on the restored server, HISTORY_LIMIT bounds a room's history again after each commit, the restored messages going as new ones fill it, their files with them", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const original = spawn(env);
    const url = await original.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const a = await openAs(url, ann, clients);
    a.send({ type: "join", room: "room:general", ref: "j" });
    await a.next((f) => f.ref === "j", 10_000);
    for (let i = 1; i <= 3; i++) {
      a.send({
        type: "send",
        room: "room:general",
        body: `old${i}`,
        client_id: `old${i}`,
        files: [{ name: `old${i}.bin`, data: fileOf(i).toBase64() }],
      });
      await a.next((f) => f.type === "ack" && f.client_id === `old${i}`, 10_000);
    }
    await withBackup(dataDir, async (copy) => {
      a.socket.close();
      await original.kill("SIGTERM");
      // The only files stored are the restored messages' (under names of their own).
      const oldFiles = async () =>
        (await listFiles(`${copy}/media`)).filter((f) => !basename(f).startsWith(".")).length;
      assertEquals(await oldFiles(), 3);
      const restored = spawn({ ...env, DATA_DIR: copy });
      const rurl = await restored.url();
      const b = await openAs(rurl, ann, clients);
      const bodies = async () => (await wholeHistory(b, "room:general")).map((m) => m.body);
      /** Waits for the commit's check, and the files' sweep after it, to leave `want` and `files`. */
      const settled = async (want: string[], files: number) => {
        await eventually(
          async () =>
            JSON.stringify(await bodies()) === JSON.stringify(want) && await oldFiles() === files,
          10_000,
          `history ${want} with ${files} old files`,
        ).catch(() => {});
        assertEquals(await bodies(), want);
        assertEquals(await oldFiles(), files);
      };
      await sendEach(b, "room:general", ["new1"]);
      // Nothing to delete: a pause as long as the checks below are given, then nothing gone.
      await new Promise((r) => setTimeout(r, 1500));
      assertEquals(await bodies(), ["old1", "old2", "old3", "new1"]);
      assertEquals(await oldFiles(), 3);
      await sendEach(b, "room:general", ["new2", "new3"]);
      await settled(["old2", "old3", "new1", "new2", "new3"], 2);
      await sendEach(b, "room:general", bodiesOf("new", 8).slice(3));
      await settled(["new4", "new5", "new6", "new7", "new8"], 0);
    });
  }, {
    extra: {
      JWT_SECRET: "",
      HISTORY_LIMIT: "5",
      RATE_LIMIT_PER_SECOND: "100000",
      RATE_LIMIT_USER_PER_SECOND: "100000",
    },
  });
});

Deno.test("backup: a server started on the copy of a running server's data waits for no other server and shows none of its users present", async () => {
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const original = spawn(env);
    const url = await original.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const bob = await signDevToken(secret, { sub: "2", username: "bob" }, "1h");
    const a = await openAs(url, ann, clients);
    await sendEach(a, "room:general", ["hello"]);
    await withBackup(dataDir, async (copy) => {
      // The original keeps running beside it, on its own file.
      const restored = spawn({ ...env, DATA_DIR: copy });
      const rurl = await restored.url();
      const b = await openAs(rurl, bob, clients);
      b.send({ type: "join", room: "room:general", ref: "p" });
      const joined = await b.next((f) => f.ref === "p" && f.type === "joined", 10_000);
      assertEquals((joined.presence as Frame[]).map((p) => String(p.id)), ["2"]);
      assert(!/shares KV_PATH/.test(restored.log()), restored.log());
      // The message is there all the same.
      assertEquals((await wholeHistory(b, "room:general")).map((m) => m.body), ["hello"]);
    });
  }, { extra: { JWT_SECRET: "" } });
});

Deno.test("backup: an in-memory or remote KV, a destination that is not empty (also with only a lost+found that is not), an unknown option, a missing KV file and bad settings are refused with one line and exit 2, writing nothing", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "backup-refusals-" });
  const kept = `${dataDir}-kept`;
  const found = `${dataDir}-found`;
  try {
    const kv = await Deno.openKv(`${dataDir}/chat.kv`);
    kv.close();
    new DatabaseSync(`${dataDir}/directory.sqlite3`).close();
    await Deno.mkdir(kept);
    await Deno.writeTextFile(`${kept}/note`, "mine");
    // A volume's lost+found is passed over only while empty: fsck's finds are someone's data.
    await Deno.mkdir(`${found}/lost+found`, { recursive: true });
    await Deno.writeTextFile(`${found}/lost+found/#12`, "recovered");
    const cases: [Record<string, string>, string[], RegExp][] = [
      [{ KV_PATH: ":memory:" }, [`${dataDir}-a`], /^KV_PATH is :memory:: .*no file to copy$/],
      [
        { KV_PATH: "https://api.deno.com/databases/x/connect" },
        [`${dataDir}-a`],
        /^KV_PATH is a KV Connect URL: there is no local file to copy; .*$/,
      ],
      [{}, [kept], /^.*-kept is not empty: a backup goes into a new or empty directory$/],
      [{}, [found], /^.*-found is not empty: a backup goes into a new or empty directory$/],
      [{}, ["--keep", `${dataDir}-a`], /^Unknown option '--keep'.*deno task backup --help.*$/],
      [{}, [], /^Usage: deno task backup <dir>/],
      [
        { DATA_DIR: `${dataDir}/nothing-here` },
        [`${dataDir}-a`],
        /^The KV file \(.*\/nothing-here\/chat\.kv\) does not exist: .*$/,
      ],
      [{ MEDIA_DIR: `${dataDir}-media` }, [`${dataDir}-media/copy`], /is inside MEDIA_DIR/],
      [
        { PORT: "abc", RATE_LIMIT_PER_SECOND: "x" },
        [`${dataDir}-a`],
        /^Invalid configuration: PORT: [^\n]+; RATE_LIMIT_PER_SECOND: [^\n]+$/,
      ],
    ];
    for (const [env, args, said] of cases) {
      const result = await backup({ DATA_DIR: dataDir, ...env }, ...args);
      assertEquals(result.code, 2, `${JSON.stringify(env)} ${args}: ${result.stderr}`);
      assertMatch(result.stderr, said);
      if (args.length > 0 && !said.source.startsWith("^Usage")) {
        assertEquals(result.stderr.split("\n").length, 1, result.stderr);
      }
      assertEquals(result.stdout, "");
    }
    // Nothing was created, and what was there is as it was.
    assertEquals(await Deno.lstat(`${dataDir}-a`).catch(() => undefined), undefined);
    assertEquals(await Deno.lstat(`${dataDir}-media/copy`).catch(() => undefined), undefined);
    assertEquals(await listFiles(kept), ["note"]);
    assertEquals(await listFiles(found), ["lost+found/#12"]);
    const parent = await Array.fromAsync(Deno.readDir(dirname(dataDir)));
    assertEquals(parent.filter((e) => e.name.startsWith(`.${basename(dataDir)}`)), []);
  } finally {
    for (const dir of [dataDir, `${dataDir}-a`, kept, found, `${dataDir}-media`]) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }
});

/** The named variables of this process's environment that are set. */
function inherited(...names: string[]): Record<string, string> {
  return Object.fromEntries(
    names.flatMap((name) => {
      const value = Deno.env.get(name);
      return value === undefined ? [] : [[name, value]];
    }),
  );
}

/** True where this test may make and loop-mount an ext4 volume (Linux, as root). */
async function mayMountExt4(): Promise<boolean> {
  if (!(await mayMount())) return false;
  try {
    await run("sh", "-c", "command -v mkfs.ext4 && command -v losetup");
    return true;
  } catch {
    return false;
  }
}

Deno.test("backup: the mount point of a freshly made ext4 disk (only an empty lost+found in it) takes a backup; lost+found stays, and a server started on the disk serves the copy", async () => {
  const ext4 = await mayMountExt4();
  await withDataDir(async ({ dataDir, env, clients, spawn }) => {
    const server = spawn(env);
    const url = await server.url();
    const { secret } = await ensureDevSecret(dataDir);
    const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
    const a = await openAs(url, ann, clients);
    await sendEach(a, "room:general", ["hello"]);
    const image = `${dataDir}-disk.img`;
    const disk = `${dataDir}-disk`;
    await Deno.mkdir(disk);
    let mounted = false;
    let restored: ReturnType<typeof spawnServer> | undefined;
    try {
      if (ext4) {
        await run("dd", "if=/dev/zero", `of=${image}`, "bs=1M", "count=16", "status=none");
        await run("mkfs.ext4", "-q", "-F", image);
        await run("mount", "-o", "loop", image, disk);
        mounted = true;
      } else {
        // What mkfs.ext4 leaves at the root of every new volume, where this test may not make one.
        await Deno.mkdir(`${disk}/lost+found`, { mode: 0o700 });
      }
      assertEquals((await Array.fromAsync(Deno.readDir(disk))).map((e) => e.name), ["lost+found"]);
      const result = await backup({ DATA_DIR: dataDir }, disk);
      assertEquals(result.code, 0, result.stderr);
      a.socket.close();
      await server.kill("SIGTERM");
      assertEquals(await Array.fromAsync(Deno.readDir(`${disk}/lost+found`)), []);
      restored = spawn({ ...env, DATA_DIR: disk });
      const b = await openAs(await restored.url(), ann, clients);
      assertEquals((await wholeHistory(b, "room:general")).map((m) => m.body), ["hello"]);
      await sendEach(b, "room:general", ["again"]);
      assertEquals((await wholeHistory(b, "room:general")).map((m) => m.body), ["hello", "again"]);
      b.socket.close();
    } finally {
      // Off the disk before it is unmounted, also when an assertion failed.
      await restored?.kill("SIGTERM");
      if (mounted) await run("umount", disk).catch(() => run("umount", "-l", disk));
      await Deno.remove(disk, { recursive: true }).catch(() => {});
      await Deno.remove(image).catch(() => {});
    }
  }, { extra: { JWT_SECRET: "" } });
});

Deno.test("backup: a KV file, SQLite directory and media outside DATA_DIR are copied into the DATA_DIR layout; media keeps names, times and marks, not links or unfinished writes", async () => {
  const root = await Deno.makeTempDir({ prefix: "backup-outside-" });
  const copy = `${root}/copies/backup`;
  try {
    const env = {
      DATA_DIR: `${root}/data`,
      KV_PATH: `${root}/kv/messages.kv`,
      DATABASE_URL: `sqlite:${root}/db/people.sqlite3`,
      MEDIA_DIR: `${root}/files`,
    };
    for (const dir of ["data", "kv", "db", "files/native/ticket_1"]) {
      await Deno.mkdir(`${root}/${dir}`, { recursive: true });
    }
    const kv = await Deno.openKv(env.KV_PATH);
    await kv.set(["msg", "ticket:1", 1n], { body: "kept" });
    kv.close();
    const db = new DatabaseSync(`${root}/db/people.sqlite3`);
    db.exec("create table users (id text primary key); insert into users values ('7')");
    db.close();
    await Deno.writeTextFile(`${root}/data/jwks_cache.json`, "{}");
    const media = `${root}/files/native/ticket_1`;
    await Deno.writeFile(`${media}/a_photo.png`, fileOf(1));
    const then = new Date("2026-01-02T03:04:05Z");
    await Deno.utime(`${media}/a_photo.png`, then, then);
    await Deno.writeFile(`${media}/.gone-${"0".repeat(64)}`, new Uint8Array());
    await Deno.writeFile(`${media}/.upload-4f1c`, fileOf(2));
    await Deno.symlink(`${root}/data/jwks_cache.json`, `${media}/secrets.json`);

    const result = await backup(env, copy);
    assertEquals(result.code, 0, result.stderr);
    for (const [setting, name] of [["KV_PATH", "chat.kv"], ["DATABASE_URL", "directory.sqlite3"]]) {
      assertMatch(result.stdout, new RegExp(`^${setting} \\(.*\\) is copied to ${name}, `, "m"));
    }
    assertMatch(result.stdout, /^MEDIA_DIR \(.*\) is copied to media, /m);
    assertMatch(
      result.stdout,
      /2 media files \(70000 bytes\); 1 links or special files passed over$/,
    );

    assertEquals(await listFiles(copy), [
      "chat.kv",
      "directory.sqlite3",
      "jwks_cache.json",
      `media/native/ticket_1/.gone-${"0".repeat(64)}`,
      "media/native/ticket_1/a_photo.png",
    ]);
    assertEquals(await modesUnder(copy), []);
    assertEquals(await Deno.readFile(`${copy}/media/native/ticket_1/a_photo.png`), fileOf(1));
    const { mtime } = await Deno.stat(`${copy}/media/native/ticket_1/a_photo.png`);
    assertEquals(mtime?.getTime(), then.getTime());
    const copied = await Deno.openKv(`${copy}/chat.kv`);
    try {
      assertEquals((await copied.get(["msg", "ticket:1", 1n])).value, { body: "kept" });
    } finally {
      copied.close();
    }
    const people = new DatabaseSync(`${copy}/directory.sqlite3`, { readOnly: true });
    try {
      assertEquals(people.prepare("select id from users").all().map((r) => r.id), ["7"]);
    } finally {
      people.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});

Deno.test({
  name: "backup: a volume that fills up fails the copy with one line and exit 1, leaving nothing",
  ignore: !(await mayMount()),
  async fn() {
    const dataDir = await Deno.makeTempDir({ prefix: "backup-full-" });
    let disk: Awaited<ReturnType<typeof smallDisk>> | undefined;
    try {
      disk = await smallDisk(2);
      (await Deno.openKv(`${dataDir}/chat.kv`)).close();
      new DatabaseSync(`${dataDir}/directory.sqlite3`).close();
      await Deno.mkdir(`${dataDir}/media/files`, { recursive: true });
      for (let i = 1; i <= 3; i++) {
        await Deno.writeFile(`${dataDir}/media/files/${i}.bin`, new Uint8Array(1024 * 1024));
      }
      // Room for the two databases, not for the files; then room for nothing.
      for (const [fill, failing] of [[false, "MEDIA_DIR"], [true, "the directory"]] as const) {
        if (fill) await disk.fill();
        const result = await backup({ DATA_DIR: dataDir }, `${disk.dir}/backup`);
        assertEquals(result.code, 1, result.stderr);
        assertMatch(
          result.stderr,
          new RegExp(
            `^Backup failed copying ${failing} \\(.*\\): no space left on the volume of ` +
              `${disk.dir}; nothing was written to ${disk.dir}/backup$`,
          ),
        );
        assertEquals(await listFiles(disk.dir), fill ? [".filler"] : []);
      }
    } finally {
      await disk?.unmount();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "backup: a volume with room for the snapshots but hardly more fails with one line and exit 1 (no panic of KV's expiry thread), leaving no hidden folder, beside a new <dir> or in an empty one",
  ignore: !(await mayMount()),
  async fn() {
    await withDataDir(async ({ dataDir, env, clients, spawn }) => {
      const server = spawn(env);
      const url = await server.url();
      const { secret } = await ensureDevSecret(dataDir);
      const ann = await signDevToken(secret, { sub: "1", username: "ann" }, "1h");
      const a = await openAs(url, ann, clients);
      await sendEach(a, "room:general", bodiesOf("m", 10));
      a.socket.close();
      await server.kill("SIGTERM");
      // A key whose expiry passed since KV last deleted expired keys, as a live file holds
      // between its collections (a lease, a lapsed server's registry entry).
      const kv = await Deno.openKv(`${dataDir}/chat.kv`);
      await kv.set(["media_sweep"], "lease", { expireIn: 1 });
      kv.close();
      await new Promise((r) => setTimeout(r, 50));
      const sizes = (await Deno.stat(`${dataDir}/chat.kv`)).size +
        (await Deno.stat(`${dataDir}/directory.sqlite3`)).size;
      const problems: string[] = [];
      // The task's own line, not a panic's, naming the volume as full, and nothing left.
      // From room for the two snapshots alone to room for the whole copy, 4 KiB a step.
      for (let margin = 4; margin <= 96; margin += 4) {
        for (const into of ["a new <dir>", "an empty <dir>"]) {
          const disk = await Deno.makeTempDir({ prefix: "backup-nearly-full-" });
          const size = `size=${Math.ceil(sizes / 1024) + margin}k`;
          await run("mount", "-t", "tmpfs", "-o", size, "tmpfs", disk);
          try {
            const target = into === "a new <dir>" ? `${disk}/chat-1` : disk;
            const result = await backup({ DATA_DIR: dataDir }, target);
            const left = (await Array.fromAsync(Deno.readDir(disk))).map((e) => e.name);
            if (result.code === 0) continue;
            const full = `(no space left on the volume of ${disk}|` +
              `disk I/O error \\(the volume of ${disk} may be full\\))`;
            if (
              result.code !== 1 || result.stderr.split("\n").length !== 1 ||
              !new RegExp(`^Backup failed copying .*: ${full}; nothing was written to `)
                .test(result.stderr) ||
              left.length > 0
            ) {
              problems.push(
                `${into}, ${margin} KiB spare: exit ${result.code}, ${
                  result.stderr.split("\n").length
                } lines: ${result.stderr.slice(0, 160)}; left: ${left.join(", ")}`,
              );
            }
          } finally {
            await run("umount", disk).catch(() => run("umount", "-l", disk));
            await Deno.remove(disk, { recursive: true }).catch(() => {});
          }
        }
      }
      assertEquals(problems, []);
    }, { extra: { JWT_SECRET: "" } });
  },
});

/** A DATA_DIR with an empty KV file and directory, and one media file. */
async function smallDataDir(): Promise<string> {
  const dataDir = await Deno.makeTempDir({ prefix: "backup-paths-" });
  (await Deno.openKv(`${dataDir}/chat.kv`)).close();
  new DatabaseSync(`${dataDir}/directory.sqlite3`).close();
  await Deno.mkdir(`${dataDir}/media/native/ticket_1`, { recursive: true });
  await Deno.writeTextFile(`${dataDir}/media/native/ticket_1/a.txt`, "a");
  return dataDir;
}

Deno.test("backup: a relative <dir> given to `deno task backup` lands in the directory it was typed in", async () => {
  const dataDir = await smallDataDir();
  const cwd = await Deno.makeTempDir({ prefix: "backup-cwd-" });
  const project = new URL("..", import.meta.url).pathname;
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "--config", `${project}deno.json`, "backup", "nightly"],
      cwd,
      // As typed in a shell: an INIT_CWD this test inherits (`npx deno task test` sets one, which
      // `deno task` keeps) would name the folder the suite was started in.
      clearEnv: true,
      env: { ...inherited("PATH", "HOME", "DENO_DIR"), DATA_DIR: dataDir, NO_COLOR: "1" },
    }).output();
    const stdout = new TextDecoder().decode(out.stdout).trim();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(/^Backed up to (\S+):/m.exec(stdout)?.[1], `${cwd}/nightly`);
    assertEquals(await Deno.lstat(`${project}nightly`).catch(() => undefined), undefined);
    assertEquals(await listFiles(`${cwd}/nightly`), [
      "chat.kv",
      "directory.sqlite3",
      "media/native/ticket_1/a.txt",
    ]);
  } finally {
    await Deno.remove(`${project}nightly`, { recursive: true }).catch(() => {});
    await Deno.remove(cwd, { recursive: true }).catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("backup: a <dir> inside MEDIA_DIR reached through a link, or inside the folder MEDIA_DIR links to, is refused", async () => {
  const dataDir = await smallDataDir();
  const link = `${dataDir}-media-link`;
  await Deno.symlink(`${dataDir}/media`, link);
  try {
    const cases: [Record<string, string>, string][] = [
      [{}, `${link}/backup`],
      [{ MEDIA_DIR: link }, `${dataDir}/media/x`],
    ];
    for (const [env, dir] of cases) {
      const result = await backup({ DATA_DIR: dataDir, ...env }, dir);
      assertEquals(result.code, 2, `${dir}: ${result.stderr.slice(0, 300)}`);
      assertMatch(result.stderr, /^.* is inside MEDIA_DIR \(.*\), which is served over HTTP$/);
    }
    assertEquals(await listFiles(`${dataDir}/media`), ["native/ticket_1/a.txt"]);
  } finally {
    await Deno.remove(link).catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test({
  name:
    "backup: into an empty mount point, the copy is written on that volume and moved into it whole; one cut short there leaves it empty",
  ignore: !(await mayMount()),
  async fn() {
    const dataDir = await smallDataDir();
    const disks: Awaited<ReturnType<typeof smallDisk>>[] = [];
    try {
      const volume = await smallDisk(16);
      disks.push(volume);
      const small = await smallDisk(2);
      disks.push(small);
      const result = await backup({ DATA_DIR: dataDir }, volume.dir);
      assertEquals(result.code, 0, result.stderr);
      assertEquals(await listFiles(volume.dir), [
        "chat.kv",
        "directory.sqlite3",
        "media/native/ticket_1/a.txt",
      ]);
      // Nothing was written beside it, on the parent's volume.
      const beside = await Array.fromAsync(Deno.readDir(dirname(volume.dir)));
      assertEquals(beside.filter((e) => e.name.startsWith(`.${basename(volume.dir)}`)), []);

      // Room for the two databases, not for the files.
      for (let i = 1; i <= 3; i++) {
        await Deno.writeFile(`${dataDir}/media/native/${i}.bin`, new Uint8Array(1024 * 1024));
      }
      const full = await backup({ DATA_DIR: dataDir }, small.dir);
      assertEquals(full.code, 1, full.stderr);
      assertMatch(
        full.stderr,
        new RegExp(
          `^Backup failed copying MEDIA_DIR \\(.*\\): no space left on the volume of ` +
            `${small.dir}; nothing was written to ${small.dir}$`,
        ),
      );
      assertEquals(await Array.fromAsync(Deno.readDir(small.dir)), []);
    } finally {
      await Promise.allSettled(disks.map((disk) => disk.unmount()));
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  },
});
