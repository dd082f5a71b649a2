/**
 * ChatService with a real KV store and media directory: what a failed send leaves behind; with
 * a presence store that refuses writes: how a restore of presence after a lapse retries; and
 * typing states, renewed and across one user's tabs.
 */

import { assert, assertEquals, assertRejects, delay } from "../../tests/assert.ts";
import { MediaAttachmentStore } from "../media/attachments.ts";
import { LocalMediaStore } from "../media/local_media_store.ts";
import { KV_KEYS, KvMessageStore } from "../store/kv_message_store.ts";
import { ChatService, type ChatServiceDeps, type UserPresence } from "./chat_service.ts";
import { objectId } from "./ids.ts";
import type { MessageDraft, PendingFiles, PresenceStore, RoomEvent, UserProfile } from "./types.ts";

/** A chat on a real KV and media directory whose store's next append and forget can fail. */
async function failingChat() {
  const root = await Deno.makeTempDir();
  const kv = await Deno.openKv(":memory:");
  const attachments = new MediaAttachmentStore(new LocalMediaStore(root), 1 << 20);
  const store = new KvMessageStore(kv, { discard: (files) => attachments.discard(files) });
  const fail = { append: false, forget: false };
  const append = store.append.bind(store);
  store.append = (room: string, draft: MessageDraft) =>
    fail.append ? Promise.reject(new Error("KV down")) : append(room, draft);
  const pending: PendingFiles = {
    note: (id, files) => store.note(id, files),
    forget: (id) => fail.forget ? Promise.reject(new Error("KV down")) : store.forget(id),
  };
  const chat = new ChatService({
    store,
    attachments,
    pending,
    fanout: { committed: () => {}, publish: () => {} } as unknown as ChatServiceDeps["fanout"],
    access: { canAccess: () => Promise.resolve(true) },
    metrics: { messagesIn: 0, attachmentBytes: 0 } as unknown as ChatServiceDeps["metrics"],
    presence: {} as ChatServiceDeps["presence"],
  });
  // Every name under d/, each file being in a folder of its own there.
  const files = (dir = `${root}/d`): string[] =>
    [...Deno.readDirSync(dir)].flatMap((e) => e.isDirectory ? files(`${dir}/${e.name}`) : [e.name])
      .sort();
  return {
    root,
    chat,
    store,
    fail,
    files,
    async close() {
      chat.close();
      await store.close();
      kv.close();
      await Deno.remove(root, { recursive: true });
    },
  };
}

const file = (name: string, text: string) => ({
  name,
  data: new TextEncoder().encode(text).toBase64(),
});

/**
 * A send fails (its pending entry not forgotten either, with `forgetFails`); the next a.png is
 * stored, and a sweep of what is left keeps exactly that file, in the one folder left (a file's
 * folder of its own goes with it, with no mark: its random name is never given again).
 */
async function failedSendThenAnother(forgetFails: boolean) {
  const t = await failingChat();
  try {
    t.fail.append = true;
    t.fail.forget = forgetFails;
    await assertRejects(() =>
      t.chat.send(null, "r", { files: [file("a.png", "A")], mediaDir: "d" })
    );
    t.fail.append = false;
    t.fail.forget = false;
    const next = await t.chat.send(null, "r", { files: [file("a.png", "B")], mediaDir: "d" });
    assertEquals(next.message.attachments[0].name, "a.png");
    await t.store.sweepPendingFiles(0);
    const left = t.files();
    assertEquals(left.filter((n) => !n.startsWith(".")), ["a.png"]);
    assertEquals(await Deno.readTextFile(`${t.root}/${next.message.attachments[0].key}`), "B");
    assertEquals(left, ["a.png"]);
    assertEquals([...Deno.readDirSync(`${t.root}/d`)].length, 1);
  } finally {
    await t.close();
  }
}

Deno.test("ChatService: a failed send whose pending entry could not be forgotten leaves nothing once swept, and the sweep of that entry never deletes another message's file", async () => {
  await failedSendThenAnother(true);
});

Deno.test("ChatService: a failed send forgets its pending entry, then deletes its files and their folders", async () => {
  await failedSendThenAnother(false);
});

/** A chat on `store` with no media, fan-out or directory behind it. */
function plainChat(store: KvMessageStore): ChatService {
  return new ChatService({
    store,
    attachments: { discard: () => Promise.resolve() } as unknown as ChatServiceDeps["attachments"],
    fanout: { committed: () => {}, publish: () => {} } as unknown as ChatServiceDeps["fanout"],
    access: { canAccess: () => Promise.resolve(true) },
    metrics: { messagesIn: 0, attachmentBytes: 0 } as unknown as ChatServiceDeps["metrics"],
    presence: {} as ChatServiceDeps["presence"],
  });
}

Deno.test("ChatService.seqOfId: a message stored by a server whose clock is behind another's by 90 s is found by its id; an id older than the history kept gives its oldest seq", async () => {
  const dir = await Deno.makeTempDir();
  // Two servers on one KV file.
  const kvs = [await Deno.openKv(`${dir}/kv`), await Deno.openKv(`${dir}/kv`)];
  const [ahead, behind] = kvs.map((kv) => new KvMessageStore(kv, { discard: async () => {} }));
  const chat = plainChat(behind);
  const realNow = Date.now;
  const draft = (body: string) => ({ sender: null, body, attachments: [] }) as MessageDraft;
  try {
    Date.now = () => realNow() + 90_000;
    const first = await ahead.append("t", draft("ahead"));
    Date.now = realNow;
    const second = await behind.append("t", draft("behind"));
    // Stamped after the one before, as a room's times always are.
    assertEquals(second.message.createdAt > first.message.createdAt, true);
    assertEquals(await chat.seqOfId("t", second.message.id), 2);
    assertEquals(await chat.seqOfId("t", first.message.id), 1);
    assertEquals(await chat.seqOfId("t", "f".repeat(24)), undefined);
    // Older than anything kept: the oldest seq, before which a page is empty.
    assertEquals(await chat.seqOfId("t", "00000001" + "0".repeat(16)), 1);
    assertEquals(await chat.seqOfId("empty", first.message.id), undefined);
  } finally {
    Date.now = realNow;
    chat.close();
    for (const store of [ahead, behind]) await store.close();
    for (const kv of kvs) kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A chat on a store in memory holding `count` messages of room "t", appended at once (stamped
 * within a second or two, each at its own millisecond), counting the messages its lists read.
 */
async function storedRoom(count: number) {
  const kv = await Deno.openKv(":memory:");
  const store = new KvMessageStore(kv, { discard: async () => {} });
  const chat = plainChat(store);
  const counted = { read: 0 };
  const list = store.list.bind(store);
  store.list = async (room, query) => {
    const page = await list(room, query);
    counted.read += page.length;
    return page;
  };
  const appends = [];
  for (let i = 0; i < count; i++) {
    appends.push(store.append("t", { sender: null, body: `m${i}`, attachments: [] }));
  }
  const stored = (await Promise.all(appends)).map((a) => a.message);
  return {
    kv,
    chat,
    stored,
    counted,
    async close() {
      chat.close();
      await store.close();
      kv.close();
    },
  };
}

Deno.test("ChatService.seqOfId: an id leads to its message in a few reads, also past thousands of messages of one second; a dropped one ends at once", async () => {
  const { chat, stored, counted, close } = await storedRoom(2_000);
  try {
    for (const m of [stored[0], stored[999], stored[1999]]) {
      counted.read = 0;
      assertEquals(await chat.seqOfId("t", m.id), m.seq);
      // The binary search's single reads, not a scan of the second.
      assertEquals(counted.read < 40, true, `read ${counted.read} messages`);
    }
    // An id of the millisecond before the oldest (dropped by retention, say).
    counted.read = 0;
    assertEquals(await chat.seqOfId("t", objectId(Date.parse(stored[0].createdAt) - 1)), 1);
    assertEquals(counted.read < 40, true, `read ${counted.read} messages`);
  } finally {
    await close();
  }
});

Deno.test("ChatService.seqOfId: ids stored before ids named their millisecond (random digits there, which may read as one) are still found, and paging by them reads every message", async () => {
  const { kv, chat, stored, close } = await storedRoom(12);
  try {
    // As the release before stored them: the second of the commit's clock, then a process's
    // random digits ("001", a millisecond before any of these), then a counter. A burst's times
    // ran on into the next seconds while its ids named the one it began in: here the first
    // second for all, the room's first second.
    const first = Math.floor(Date.parse(stored[0].createdAt) / 1000);
    const old = stored.map((m, i) => ({
      ...m,
      id: first.toString(16).padStart(8, "0") + "0014e2b9c1" +
        (0x100 + i).toString(16).padStart(6, "0"),
      createdAt: new Date(first * 1000 + 700 + 50 * i).toISOString(),
    }));
    for (const m of old) await kv.set(KV_KEYS.message("t", m.seq), m);
    for (const m of old) assertEquals(await chat.seqOfId("t", m.id), m.seq);
    // Paged back by the oldest id of each page, 5 at a time: all 12, once each.
    const seen: string[] = [];
    let before: number | undefined;
    for (let pages = 0; pages < 5; pages++) {
      const page = await chat.historyPage("t", { before, limit: 5 });
      seen.unshift(...page.messages.map((m) => m.body));
      if (!page.hasMore) break;
      before = await chat.seqOfId("t", page.messages[0].id);
    }
    assertEquals(seen, old.map((m) => m.body));
  } finally {
    await close();
  }
});

Deno.test("ChatService.historyPageByTime: a page whose oldest message shares its time with older ones holds them all, past limit and across reads; one of distinct times is historyPage's, read no further", async () => {
  const { kv, chat, stored, counted, close } = await storedRoom(130);
  try {
    for (const before of [undefined, 100, 3]) {
      counted.read = 0;
      assertEquals(
        await chat.historyPageByTime("t", { before, limit: 4 }),
        await chat.historyPage("t", { before, limit: 4 }),
      );
      // Both read the page and the one message before it.
      assertEquals(counted.read, before === 3 ? 4 : 10);
    }
    // As releases before 2026-11-24 stored a commit's messages: seqs 2 to 121 at one time.
    const at = stored[1].createdAt;
    for (const m of stored.slice(1, 121)) {
      await kv.set(KV_KEYS.message("t", m.seq), { ...m, createdAt: at });
    }
    const page = await chat.historyPageByTime("t", { before: 123, limit: 2 });
    assertEquals(
      [page.messages.map((m) => m.seq), page.hasMore],
      [stored.slice(1, 122).map((m) => m.seq), true],
    );
    const last = await chat.historyPageByTime("t", { before: 100, limit: 1 });
    assertEquals([last.messages.length, last.hasMore], [98, true]);
    assertEquals(await chat.historyPageByTime("t", { before: 2, limit: 1 }), {
      messages: [stored[0]],
      hasMore: false,
    });
  } finally {
    await close();
  }
});

Deno.test("ChatService.seqOfId: an old-format id whose minute ended before the oldest kept message is dropped without a read of the messages; one the scan cannot reach is not taken for dropped", async () => {
  const { chat, stored, counted, close } = await storedRoom(2_100);
  try {
    // An id of the release before (no millisecond mark), of two minutes before the oldest.
    const hex = (n: number, digits: number) => n.toString(16).padStart(digits, "0");
    const oldSecond = Math.floor(Date.parse(stored[0].createdAt) / 1000) - 120;
    counted.read = 0;
    assertEquals(await chat.seqOfId("t", hex(oldSecond, 8) + "0014e2b9c1000001"), 1);
    assertEquals(counted.read < 40, true, `read ${counted.read} messages`);
    // Of the oldest's second but not among the 2,000 messages read from it: unknown, not an
    // end of history.
    const first = Math.floor(Date.parse(stored[0].createdAt) / 1000);
    const unread = hex(first, 8) + "0014e2b9c1ffffff";
    assertEquals(await chat.seqOfId("t", unread), undefined);
  } finally {
    await close();
  }
});

/**
 * A chat on stores that are not there (what a test needs it gives in `deps`), letting everyone in
 * and handing each event it publishes to `publish`.
 */
function stubbedChat(
  publish: (e: RoomEvent, options?: { elsewhereOnly?: boolean }) => void,
  deps: Partial<ChatServiceDeps>,
): ChatService {
  return new ChatService({
    store: {} as ChatServiceDeps["store"],
    attachments: {} as ChatServiceDeps["attachments"],
    fanout: { committed: () => {}, publish } as unknown as ChatServiceDeps["fanout"],
    access: { canAccess: () => Promise.resolve(true) },
    metrics: {} as ChatServiceDeps["metrics"],
    presence: {} as ChatServiceDeps["presence"],
    ...deps,
  });
}

/**
 * A chat whose presence store takes enters (once `stalled` settles) unless `refusing`, recording
 * the connections entered and the presence events published (those told only elsewhere marked
 * so), listing `listed` and counting the reads of one user's presence; failed restores are tried
 * again within 50 ms.
 */
function restoringChat() {
  const state = {
    refusing: false,
    entered: [] as string[],
    told: [] as string[],
    listed: [] as UserProfile[],
    reads: 0,
    stalled: Promise.resolve(),
  };
  const presence: PresenceStore & UserPresence = {
    async enter(_room, _user, connId) {
      await state.stalled;
      if (state.refusing) throw new Error("KV down");
      state.entered.push(connId);
      return { first: true };
    },
    exit: () => Promise.resolve({ last: true }),
    list: () => Promise.resolve([...state.listed]),
    sweep: () => Promise.resolve([]),
    isPresent(_room, userId) {
      state.reads++;
      return Promise.resolve(state.listed.some((u) => u.id === userId));
    },
  };
  const chat = stubbedChat((e, options) => {
    if (e.type !== "presence") return;
    state.told.push(`${e.action}:${e.user.id}${options?.elsewhereOnly ? " elsewhere" : ""}`);
  }, { presence, presenceSweepMs: 50 });
  const user = (id: string) => ({ id, username: id, grants: [] });
  return { chat, state, user };
}

Deno.test("ChatService.restorePresence: a restore the store refuses is tried again until every connection still open is written back, once; one closed meanwhile is not, and a lapse meanwhile adds to the restore under way", async () => {
  const { chat, state, user } = restoringChat();
  try {
    for (const id of ["1", "2", "3"]) await chat.enter(user(id), "r", `c${id}`);
    state.entered.length = 0;
    state.told.length = 0;
    state.refusing = true;
    const restoring = chat.restorePresence();
    await delay(20);
    await chat.exit(user("2"), "r", "c2");
    assert(chat.restorePresence({ onlySwept: true }) === restoring, "one restore at a time");
    await delay(150);
    state.refusing = false;
    await restoring;
    assertEquals(state.entered.sort(), ["c1", "c3"]);
    // Not to this isolate's members, who were never told they left.
    assertEquals(state.told, ["leave:2", "join:1 elsewhere", "join:3 elsewhere"]);
  } finally {
    chat.close();
  }
});

Deno.test("ChatService.restorePresence: a restore the store keeps refusing ends when the service is closed", async () => {
  const { chat, state, user } = restoringChat();
  await chat.enter(user("1"), "r", "c1");
  state.refusing = true;
  const restoring = chat.restorePresence();
  await delay(100);
  chat.close();
  await restoring;
  assertEquals(state.entered, ["c1"]);
});

Deno.test("ChatService.presenceHolds: a leave heard from elsewhere of a user with a connection here does not hold, without a read of the store; once it closes, the store decides", async () => {
  const { chat, state, user } = restoringChat();
  try {
    await chat.enter(user("1"), "r", "c1");
    const leave = (id: string, room = "r") => ({
      type: "presence" as const,
      room,
      user: { id, username: id },
      action: "leave" as const,
    });
    // The store lost the entry (swept after a lapse): the user is still here.
    assertEquals(await chat.presenceHolds(leave("1")), false);
    assertEquals(state.reads, 0);
    // Another user, or another room: read from the store.
    assertEquals(await chat.presenceHolds(leave("2")), true);
    assertEquals(await chat.presenceHolds(leave("1", "s")), true);
    assertEquals(state.reads, 2);
    await chat.exit(user("1"), "r", "c1");
    assertEquals(await chat.presenceHolds(leave("1")), true);
    assertEquals(state.reads, 3);
    // Entering still (not yet announced): the store decides, as for a user moving here.
    let resume!: () => void;
    state.stalled = new Promise((r) => resume = r);
    const entering = chat.enter(user("1"), "r", "c1");
    assertEquals(await chat.presenceHolds(leave("1")), true);
    assertEquals(state.reads, 4);
    resume();
    await entering;
    assertEquals(await chat.presenceHolds(leave("1")), false);
  } finally {
    chat.close();
  }
});

Deno.test("ChatService.present: the users listed are the store's and those with a connection here the store lost, each once", async () => {
  const { chat, state, user } = restoringChat();
  try {
    await chat.enter(user("1"), "r", "c1");
    await chat.enter(user("1"), "r", "c1b");
    await chat.enter(user("2"), "r", "c2");
    await chat.enter(user("4"), "s", "c4");
    // The store shows 2 (still written) and 3 (another server's), not 1 (swept after a lapse).
    state.listed = [{ id: "2", username: "2" }, { id: "3", username: "3" }];
    assertEquals((await chat.present("r")).map((u) => u.id), ["2", "3", "1"]);
    assertEquals((await chat.present("t")).map((u) => u.id), ["2", "3"]);
    // Still entering: its join, told after the list, shows it.
    state.stalled = new Promise(() => {});
    void chat.enter(user("5"), "r", "c5");
    assertEquals((await chat.present("r")).map((u) => u.id), ["2", "3", "1"]);
  } finally {
    chat.close();
  }
});

Deno.test("ChatService.enter: a connection that comes back while its exit waits behind its first enter is written after that exit, and stays present", async () => {
  const writes: string[] = [];
  let resume!: () => void;
  const stalled = new Promise<void>((r) => resume = r);
  const presence: PresenceStore = {
    async enter(_room, user, connId) {
      await stalled;
      writes.push(`enter ${user.id} ${connId}`);
      return { first: true };
    },
    exit(_room, userId, connId) {
      writes.push(`exit ${userId} ${connId}`);
      return Promise.resolve({ last: true });
    },
    list: () => Promise.resolve([]),
    sweep: () => Promise.resolve([]),
  };
  const chat = stubbedChat(() => {}, { presence });
  const user = (id: string) => ({ id, username: id, grants: [] });
  try {
    // A Socket.IO socket joins, leaves and joins again (or signs in as user 2 and joins) while
    // the store is slow: its connection id is the same each time.
    const first = chat.enter(user("1"), "r", "c1");
    const exit = chat.exit(user("1"), "r", "c1");
    const again = chat.enter(user("2"), "r", "c1");
    resume();
    await Promise.all([first, exit, again]);
    assertEquals(writes, ["enter 1 c1", "exit 1 c1", "enter 2 c1"]);
    assertEquals(chat.holdsHere("r", "2"), true);
  } finally {
    chat.close();
  }
});

/** A chat recording the typing events it publishes (`<user>:<is typing>`), ending after `ms`. */
function typingChat(ms: number) {
  const told: string[] = [];
  const chat = stubbedChat((e) => {
    if (e.type === "typing") told.push(`${e.user.id}:${e.isTyping}`);
  }, { typingTimeoutMs: ms });
  return { chat, told, user: { id: "2", username: "two", grants: [] } };
}

Deno.test("ChatService.typing: a typing state the client keeps renewing outlives its first start's timeout, and ends at its stop", async () => {
  const { chat, told, user } = typingChat(400);
  try {
    chat.typing(user, "r", true, "c1");
    // Renewed for 600 ms, past the first start's 400.
    for (let i = 0; i < 3; i++) {
      await delay(200);
      chat.typing(user, "r", true, "c1");
    }
    await delay(100);
    assertEquals(told, ["2:true", "2:true", "2:true", "2:true"]);
    chat.typing(user, "r", false, "c1");
    assertEquals(told.at(-1), "2:false");
    // Once renewals cease, the timeout ends it.
    told.length = 0;
    chat.typing(user, "r", true, "c1");
    await delay(600);
    assertEquals(told, ["2:true", "2:false"]);
  } finally {
    chat.close();
  }
});

Deno.test("ChatService.typing: one tab's stop leaves the user typing while another tab of theirs types; the last tab's stop ends it", () => {
  const { chat, told, user } = typingChat(30_000);
  try {
    chat.typing(user, "r", true, "tab1");
    chat.typing(user, "r", true, "tab2");
    told.length = 0;
    chat.typing(user, "r", false, "tab1");
    assertEquals(told, []);
    chat.typing(user, "r", false, "tab2");
    assertEquals(told, ["2:false"]);
  } finally {
    chat.close();
  }
});

Deno.test("ChatService.seqBeforeNewest: counts stored messages, not seqs: across a restored backup's jump of a million, past retention's cut, in an empty room, and in pages past 1000", async () => {
  const { kv, chat, counted, close } = await storedRoom(3_000);
  try {
    // Consecutive seqs: what head - count gave, from one message read rather than a list.
    assertEquals(await chat.seqBeforeNewest("t", 50), 2_950);
    assertEquals(counted.read, 0);
    assertEquals(await chat.seqBeforeNewest("t", 2_500), 500);
    assertEquals(await chat.seqBeforeNewest("t", 3_000), 0);
    assertEquals(await chat.seqBeforeNewest("t", 5_000), 0);
    assertEquals(await chat.seqBeforeNewest("empty", 50), 0);
    // Retention kept 2991..3000: all ten are replayed, as from head - 50.
    for (let seq = 1; seq <= 2_990; seq++) await kv.delete(KV_KEYS.message("t", seq));
    assertEquals(await chat.seqBeforeNewest("t", 50), 0);
    assertEquals(await chat.seqBeforeNewest("t", 4), 2_996);
    // Three messages, a head raised by a million (scripts/backup.ts), then two more.
    const store = new KvMessageStore(kv, { discard: async () => {} });
    for (let i = 0; i < 3; i++) {
      await store.append("g", { sender: null, body: `m${i}`, attachments: [] });
    }
    await kv.set(KV_KEYS.head("g"), 1_000_003);
    const restored = new KvMessageStore(kv, { discard: async () => {} });
    const after = [];
    for (let i = 0; i < 2; i++) {
      after.push(
        (await restored.append("g", { sender: null, body: `n${i}`, attachments: [] })).message.seq,
      );
    }
    assertEquals(after, [1_000_004, 1_000_005]);
    assertEquals(await chat.seqBeforeNewest("g", 50), 0);
    assertEquals(await chat.seqBeforeNewest("g", 4), 1);
    assertEquals(await chat.seqBeforeNewest("g", 2), 1_000_003);
    await store.close();
    await restored.close();
  } finally {
    await close();
  }
});
