/**
 * The chat page: sign in (the dev sign-in or a pasted token), join rooms, read history, see who is
 * here and who is typing, send text and files, read receipts, and a visible reconnecting state.
 * Built into web/app.js by `deno run -A web/build.ts`.
 *
 * @module
 */

import {
  ChatClient,
  type ChatError,
  type ChatMessage,
  type ChatUser,
  formatBytes,
  newClientId,
  type StateEvent,
} from "../client/mod.ts";
import type {
  PageDocument,
  PageDragEvent,
  PageElement,
  PageHistory,
  PageInput,
  PageProgress,
  PageTags,
} from "./dom.ts";

// The browser's globals, typed by ./dom.ts (see there why not lib.dom).
declare const document: PageDocument;
declare const history: PageHistory;

const ROOM_KEY = /^(ticket|chat|service-chat|support-chat|room):[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;
const DEV_GRANTS = ["room:*", "ticket:*", "chat:*"];
const SESSION_KEY = "chat-session";
const PAGE_SIZE = 50;

interface Session {
  token: string;
  name: string;
  rooms: string[];
}

interface PendingItem {
  el: PageElement;
}

interface RoomView {
  name: string;
  list: PageElement;
  item: PageElement;
  /** Seq → rendered element. */
  rendered: Map<number, PageElement>;
  firstSeq?: number;
  lastSeq?: number;
  hasMore: boolean;
  /**
   * The seqs of others' messages that came while the room was not on screen: the badge counts
   * them, and a read on another of our devices takes off those it covers.
   */
  unread: Set<number>;
  /**
   * Senders of the messages shown and readers a `read` frame named, by user id: the names of
   * the readers the client's cursors list by id.
   */
  people: Map<string, ChatUser>;
  /** Our messages not yet acknowledged, by client id. */
  pending: Map<string, PendingItem>;
  readSent: number;
  /** True once the join is done: the history it shows is not news, what comes after is. */
  joined: boolean;
  /** Set while a read cursor is due to go out (see `markRead`). */
  readDue?: ReturnType<typeof setTimeout>;
}

const $ = <T extends PageElement = PageElement>(id: string) => document.getElementById(id) as T;

const ui = {
  signin: $("signin"),
  signinForm: $<PageElement>("signin-form"),
  signinName: $<PageInput>("signin-name"),
  signinRooms: $<PageInput>("signin-rooms"),
  signinTokenField: $("signin-token-field"),
  signinToken: $<PageInput>("signin-token"),
  signinHint: $("signin-hint"),
  signinError: $("signin-error"),
  chat: $("chat"),
  me: $("me"),
  status: $("status"),
  banner: $("banner"),
  signout: $("signout"),
  rooms: $<PageElement>("rooms"),
  addRoom: $<PageElement>("add-room"),
  addRoomInput: $<PageInput>("add-room-input"),
  people: $<PageElement>("people"),
  roomTitle: $("room-title"),
  roomCount: $("room-count"),
  messages: $("messages"),
  older: $<PageInput>("older"),
  lists: $("lists"),
  typing: $("typing"),
  upload: $("upload"),
  uploadName: $("upload-name"),
  uploadProgress: $<PageProgress>("upload-progress"),
  uploadPercent: $("upload-percent"),
  sendError: $("send-error"),
  composer: $<PageElement>("composer"),
  text: $<PageInput>("text"),
  file: $<PageInput>("file"),
};

const devSignIn = document.body.dataset.devSignIn === "on";
let client: ChatClient | null = null;
let session: Session | null = null;
let current: string | null = null;
const views = new Map<string, RoomView>();

/** `general` means `room:general`; anything else must already be a room key. */
function normalizeRoom(text: string): string | null {
  const trimmed = text.trim();
  if (!trimmed) return null;
  const key = trimmed.includes(":") ? trimmed : `room:${trimmed}`;
  return ROOM_KEY.test(key) ? key : null;
}

function parseRooms(text: string): string[] | string {
  const rooms: string[] = [];
  for (const part of text.split(",")) {
    if (!part.trim()) continue;
    const key = normalizeRoom(part);
    if (!key) return `"${part.trim()}" is not a room: use kind:id, e.g. room:general or ticket:1`;
    if (!rooms.includes(key)) rooms.push(key);
  }
  return rooms.length > 0 ? rooms : "Name at least one room";
}

function displayName(user: ChatUser | null): string {
  if (!user) return "System";
  return user.name || user.username || String(user.id);
}

function isMe(user: ChatUser | null): boolean {
  return !!user && !!client?.user && String(user.id) === String(client.user.id);
}

/** Our own read cursor in a room, moved by any of our devices (0 before any). */
function ownCursor(room: string): number {
  const me = client?.user ? String(client.user.id) : undefined;
  return client?.reads(room).find((r) => String(r.userId) === me)?.seq ?? 0;
}

/** Takes off the room's unread count what our read cursor covers, and shows the count. */
function dropRead(view: RoomView): void {
  const cursor = ownCursor(view.name);
  for (const seq of view.unread) if (seq <= cursor) view.unread.delete(seq);
  renderUnread(view);
}

function el<K extends keyof PageTags>(
  tag: K,
  className?: string,
  text?: string,
): PageTags[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function safeUrl(url: string): string | null {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

// ---- sign-in ----

function showSignIn(error = ""): void {
  ui.chat.hidden = true;
  ui.signin.hidden = false;
  ui.signinTokenField.hidden = devSignIn;
  ui.signinHint.textContent = devSignIn
    ? "Development sign-in: pick any name. Open a second window to chat with yourself."
    : "Paste a token signed with the server's key, and pick the rooms to join.";
  ui.signinError.textContent = error;
  if (session?.name) ui.signinName.value = session.name;
  ui.signinName.focus();
}

async function mintDevToken(name: string, rooms: string[]): Promise<string> {
  // Grant the usual patterns plus whatever other rooms were asked for.
  const grants = [...new Set([...DEV_GRANTS, ...rooms])];
  // Relative to the page, which a proxy may serve under a path (`/chat/`).
  const res = await fetch("dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, rooms: grants }),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.error ?? `Sign-in failed with HTTP ${res.status}`);
  return json.token as string;
}

ui.signinForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  ui.signinError.textContent = "";
  const rooms = parseRooms(ui.signinRooms.value);
  if (typeof rooms === "string") {
    ui.signinError.textContent = rooms;
    return;
  }
  const name = ui.signinName.value.trim();
  try {
    let token: string;
    if (devSignIn) {
      if (!name) throw new Error("Pick a name");
      token = await mintDevToken(name, rooms);
    } else {
      token = ui.signinToken.value.trim();
      if (!token) throw new Error("Paste a token");
    }
    session = { token, name, rooms };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await start(session);
  } catch (err) {
    ui.signinError.textContent = (err as Error).message;
  }
});

ui.signout.addEventListener("click", () => {
  sessionStorage.removeItem(SESSION_KEY);
  stop();
  showSignIn();
});

// ---- connection ----

function stop(): void {
  for (const view of views.values()) readNow(view);
  ui.upload.hidden = true;
  client?.close();
  client = null;
  current = null;
  // The next user must not find the last one's draft.
  ui.text.value = "";
  ui.typing.textContent = "";
  views.clear();
  ui.lists.replaceChildren();
  ui.rooms.replaceChildren();
  ui.people.replaceChildren();
}

async function start(s: Session): Promise<void> {
  stop();
  // Next to the page, as its assets are: under a proxy's path prefix the socket is there too.
  const socketUrl = new URL("ws", location.href);
  socketUrl.protocol = socketUrl.protocol === "https:" ? "wss:" : "ws:";
  const chat = new ChatClient({
    url: socketUrl.href,
    token: s.token,
    reconnect: { minDelayMs: 300, maxDelayMs: 5_000 },
  });
  client = chat;
  chat.on("state", renderState);
  chat.on("message", onMessage);
  chat.on("resync", (e) => resetRoom(e.room));
  chat.on("presence", (e) => {
    if (e.room === current) renderPeople();
  });
  chat.on("typing", (e) => {
    if (e.room === current) renderTyping();
  });
  chat.on("read", (e) => {
    const view = views.get(e.room);
    if (!view) return;
    if (isMe(e.user)) {
      // Read on another of our devices: what it covers is not news here either.
      dropRead(view);
      return;
    }
    view.people.set(String(e.user.id), e.user);
    const nearBottom = isNearBottom(120);
    renderReceipts(view);
    // A receipt under the newest message makes it taller: keep it in view.
    if (nearBottom && e.room === current) scrollToBottom(true);
  });
  // The cursors a (re)join lists: receipts of readers who are not here survive a reload.
  chat.on("reads", (e) => {
    const view = views.get(e.room);
    if (!view) return;
    // A rejoin lists our own cursor too: what another device read while this one was away (its
    // replay counted as unread) is not news.
    dropRead(view);
    renderReceipts(view);
  });
  chat.on("removed", (e) => {
    showError(`You were removed from ${e.room} (${e.reason.replace("_", " ")})`);
    dropRoom(e.room);
  });
  chat.on("error", (e: ChatError) => showError(e.message));

  ui.signin.hidden = true;
  ui.chat.hidden = false;
  try {
    const user = await chat.connect();
    if (client !== chat) return;
    ui.me.textContent = `signed in as ${displayName(user)}`;
  } catch (err) {
    if (client !== chat) return;
    stop();
    sessionStorage.removeItem(SESSION_KEY);
    showSignIn(`Could not sign in: ${(err as Error).message}`);
    return;
  }
  for (const room of s.rooms) addRoom(room);
  selectRoom(roomFromHash() ?? s.rooms[0]);
}

function renderState(e: StateEvent): void {
  ui.status.dataset.state = e.state;
  ui.status.textContent = e.state === "open"
    ? "Connected"
    : e.state === "connecting"
    ? "Connecting…"
    : e.state === "reconnecting"
    ? `Reconnecting…${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`
    : e.state === "closed"
    ? "Disconnected"
    : "";
  ui.banner.hidden = e.state !== "reconnecting";
  if (e.state === "closed" && e.reason === "unauthorized") {
    stop();
    sessionStorage.removeItem(SESSION_KEY);
    showSignIn("Your session expired or was refused: sign in again.");
  }
  if (e.state === "open" && current) renderPeople();
}

// ---- rooms ----

function addRoom(name: string): void {
  if (views.has(name) || !client) return;
  const list = el("ol", "message-list");
  list.dataset.room = name;
  list.hidden = true;
  ui.lists.append(list);
  const item = el("li");
  item.dataset.room = name;
  item.append(el("span", "room-name", name), el("span", "unread"));
  item.addEventListener("click", () => selectRoom(name));
  ui.rooms.append(item);
  const view: RoomView = {
    name,
    list,
    item,
    rendered: new Map(),
    hasMore: false,
    unread: new Set(),
    people: new Map(),
    pending: new Map(),
    readSent: 0,
    joined: false,
  };
  views.set(name, view);
  renderUnread(view);
  const chat = client;
  chat.join(name, { history: PAGE_SIZE }).then((joined) => {
    if (views.get(name) !== view) return;
    view.joined = true;
    view.hasMore = joined.has_more;
    if (name === current) {
      renderOlderButton();
      renderPeople();
      markRead(view);
    }
  }).catch((err: Error) => {
    if (views.get(name) !== view) return;
    showError(`Could not join ${name}: ${err.message}`);
    dropRoom(name);
  });
}

function dropRoom(name: string): void {
  const view = views.get(name);
  if (!view) return;
  views.delete(name);
  view.list.remove();
  view.item.remove();
  if (session) {
    session.rooms = session.rooms.filter((r) => r !== name);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }
  if (current === name) selectRoom([...views.keys()][0] ?? null);
}

function selectRoom(name: string | null): void {
  // A read due for the room being left goes now: it was on screen.
  const leaving = current ? views.get(current) : undefined;
  if (leaving) readNow(leaving);
  current = name && views.has(name) ? name : null;
  for (const view of views.values()) {
    const on = view.name === current;
    view.list.hidden = !on;
    view.item.classList.toggle("current", on);
  }
  ui.roomTitle.textContent = current ?? "No room";
  ui.text.placeholder = current ? `Message ${current}` : "Join a room first";
  if (current) {
    history.replaceState(null, "", `#${current}`);
    const view = views.get(current)!;
    view.unread.clear();
    renderUnread(view);
    markRead(view);
  }
  renderOlderButton();
  renderPeople();
  renderTyping();
  scrollToBottom(true);
}

function roomFromHash(): string | null {
  let name: string;
  try {
    name = decodeURIComponent(location.hash.slice(1));
  } catch {
    // A link cut short mid-character names no room: the first one opens instead.
    return null;
  }
  return views.has(name) ? name : null;
}

ui.addRoom.addEventListener("submit", (e) => {
  e.preventDefault();
  const name = normalizeRoom(ui.addRoomInput.value);
  if (!name) {
    showError("Use kind:id, e.g. room:random or ticket:2");
    return;
  }
  ui.addRoomInput.value = "";
  addRoom(name);
  if (session && !session.rooms.includes(name)) {
    session.rooms.push(name);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }
  selectRoom(name);
});

function renderUnread(view: RoomView): void {
  const badge = view.item.querySelector(".unread")!;
  badge.textContent = view.unread.size > 0 ? String(view.unread.size) : "";
  badge.hidden = view.unread.size === 0;
  const total = [...views.values()].reduce((n, v) => n + v.unread.size, 0);
  document.title = total > 0 ? `(${total}) Chat` : "Chat";
}

function renderPeople(): void {
  const users = current && client ? client.presence(current) : [];
  const typing = new Set(
    (current && client ? client.typers(current) : []).map((u) => String(u.id)),
  );
  ui.people.replaceChildren(...users.map((u) => {
    const li = el("li", "", displayName(u) + (isMe(u) ? " (you)" : ""));
    li.dataset.userId = String(u.id);
    if (typing.has(String(u.id))) li.append(el("span", "tag", "typing…"));
    return li;
  }));
  ui.roomCount.textContent = current ? `${users.length} here` : "";
}

function renderTyping(): void {
  const typers = current && client ? client.typers(current) : [];
  const names = typers.map(displayName);
  ui.typing.textContent = names.length === 0
    ? ""
    : names.length === 1
    ? `${names[0]} is typing…`
    : names.length === 2
    ? `${names[0]} and ${names[1]} are typing…`
    : "Several people are typing…";
  renderPeople();
}

function renderOlderButton(): void {
  const view = current ? views.get(current) : undefined;
  ui.older.hidden = !view || !view.hasMore;
}

// ---- messages ----

function onMessage(message: ChatMessage): void {
  const view = views.get(message.room);
  if (!view) return;
  const nearBottom = isNearBottom();
  if (message.client_id && view.pending.has(message.client_id)) {
    view.pending.get(message.client_id)!.el.remove();
    view.pending.delete(message.client_id);
  }
  if (message.sender) view.people.set(String(message.sender.id), message.sender);
  const li = renderMessage(message);
  // Live messages go after everything rendered, but before our own still-pending ones.
  const firstPending = view.list.querySelector("li.pending");
  view.list.insertBefore(li, firstPending);
  view.rendered.set(message.seq, li);
  view.firstSeq = Math.min(view.firstSeq ?? message.seq, message.seq);
  view.lastSeq = Math.max(view.lastSeq ?? 0, message.seq);
  const seen = message.room === current && document.visibilityState === "visible";
  if (message.room === current && (nearBottom || isMe(message.sender))) scrollToBottom(true);
  if (seen) {
    markRead(view);
  } else if (!isMe(message.sender) && view.joined && message.seq > ownCursor(view.name)) {
    // History a join shows is not news; a hidden tab's current room is not seen; nor is what
    // another of our devices read already (a replay after a rejoin, or a read that overtook it).
    view.unread.add(message.seq);
    renderUnread(view);
  }
  renderReceipts(view);
}

function renderMessage(message: ChatMessage): PageElement {
  const li = el("li", "msg");
  if (isMe(message.sender)) li.classList.add("mine");
  li.dataset.seq = String(message.seq);
  li.dataset.id = message.id;
  li.dataset.senderId = message.sender ? String(message.sender.id) : "";
  const meta = el("div", "meta");
  const time = el("time", "", formatTime(message.created_at));
  time.dateTime = message.created_at;
  time.title = new Date(message.created_at).toLocaleString();
  meta.append(el("span", "author", displayName(message.sender)), time);
  li.append(meta);
  if (message.body) li.append(el("div", "body", message.body));
  if (message.attachments.length > 0) {
    const files = el("div", "files");
    for (const a of message.attachments) {
      const url = safeUrl(a.url);
      if (!url) continue;
      const link = el("a", "file");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener";
      // SVG is served as a download with a sandbox policy: show it as a link, not an image.
      if (a.mime.startsWith("image/") && a.mime !== "image/svg+xml") {
        const img = el("img");
        img.src = url;
        img.alt = a.name;
        img.loading = "lazy";
        img.addEventListener("load", () => {
          if (message.room === current && isNearBottom(240)) scrollToBottom(true);
        });
        // Named like an image but not one: the file's link instead of a broken picture.
        img.addEventListener("error", () => link.replaceChildren(...fileLabel(a)));
        link.append(img);
      } else {
        link.append(...fileLabel(a));
      }
      files.append(link);
    }
    li.append(files);
  }
  li.append(el("div", "receipts"));
  return li;
}

/** A file's extension, name and size, as a link shows them. */
function fileLabel(a: { name: string; size: number }): PageElement[] {
  const ext = a.name.includes(".") ? a.name.split(".").pop()!.slice(0, 4) : "file";
  return [
    el("span", "file-ext", ext.toUpperCase()),
    el("span", "file-name", a.name),
    el("span", "file-size", formatBytes(a.size)),
  ];
}

function renderPending(view: RoomView, clientId: string, text: string): PageElement {
  const li = el("li", "msg mine pending");
  li.dataset.clientId = clientId;
  const meta = el("div", "meta");
  meta.append(el("span", "author", displayName(client?.user ?? null)), el("span", "", "sending…"));
  li.append(meta, el("div", "body", text));
  view.list.append(li);
  view.pending.set(clientId, { el: li });
  scrollToBottom(true);
  return li;
}

function formatTime(iso: string): string {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], {
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
    });
}

/** Each reader's name goes under the newest message of someone else that their cursor covers. */
function renderReceipts(view: RoomView): void {
  for (const li of view.list.querySelectorAll(".receipts")) li.textContent = "";
  const bySeq = new Map<number, string[]>();
  const seqs = [...view.rendered.keys()].sort((a, b) => a - b);
  const present = client?.presence(view.name) ?? [];
  const me = client?.user ? String(client.user.id) : undefined;
  for (const { userId, seq } of client?.reads(view.name) ?? []) {
    const id = String(userId);
    if (id === me) continue;
    let target: number | undefined;
    for (const s of seqs) {
      if (s > seq) break;
      const sender = view.rendered.get(s)?.dataset.senderId;
      if (sender !== id) target = s;
    }
    if (target === undefined) continue;
    const reader = view.people.get(id) ?? present.find((u) => String(u.id) === id);
    const name = reader ? displayName(reader) : `user ${id}`;
    bySeq.set(target, [...(bySeq.get(target) ?? []), name]);
  }
  for (const [seq, names] of bySeq) {
    const receipts = view.rendered.get(seq)?.querySelector(".receipts");
    if (receipts) receipts.textContent = `Seen by ${names.join(", ")}`;
  }
}

function resetRoom(name: string): void {
  const view = views.get(name);
  if (!view) return;
  for (const li of view.rendered.values()) li.remove();
  view.rendered.clear();
  view.firstSeq = view.lastSeq = undefined;
  view.hasMore = true;
  renderOlderButton();
}

/**
 * Our read cursor follows what is on screen: the current room, in a visible page. One `read` per
 * READ_DELAY_MS at most, with the newest seq then: a frame per message of a burst (or of the
 * history a join shows) would trip the server's rate limit and hold up our own sends.
 */
function markRead(view: RoomView): void {
  if (view.readDue !== undefined) return;
  view.readDue = setTimeout(() => {
    view.readDue = undefined;
    sendRead(view);
  }, READ_DELAY_MS);
}

const READ_DELAY_MS = 250;

/** Sends a read that is due at once (the room is about to leave the screen). */
function readNow(view: RoomView): void {
  if (view.readDue === undefined) return;
  clearTimeout(view.readDue);
  view.readDue = undefined;
  sendRead(view);
}

function sendRead(view: RoomView): void {
  if (!client || views.get(view.name) !== view) return;
  if (view.name !== current || document.visibilityState !== "visible") return;
  const seq = view.lastSeq;
  if (seq === undefined || seq <= view.readSent) return;
  view.readSent = seq;
  client.read(view.name, seq).catch(() => {
    view.readSent = 0;
  });
}

document.addEventListener("visibilitychange", () => {
  const view = current ? views.get(current) : undefined;
  if (!view || document.visibilityState !== "visible") return;
  // What came while the tab was hidden counted as unread (the title says so); now it is seen.
  view.unread.clear();
  renderUnread(view);
  markRead(view);
});

ui.older.addEventListener("click", async () => {
  const view = current ? views.get(current) : undefined;
  if (!view || !client) return;
  ui.older.disabled = true;
  try {
    const page = await client.history(view.name, {
      before: view.firstSeq ?? (view.lastSeq ?? 0) + 1,
      limit: PAGE_SIZE,
    });
    const height = ui.messages.scrollHeight;
    const anchor = view.list.firstChild;
    for (const m of page.messages) {
      if (view.rendered.has(m.seq)) continue;
      const li = renderMessage(m);
      view.list.insertBefore(li, anchor);
      view.rendered.set(m.seq, li);
      view.firstSeq = Math.min(view.firstSeq ?? m.seq, m.seq);
    }
    view.hasMore = page.has_more;
    // Keep what the reader was looking at in place.
    ui.messages.scrollTop += ui.messages.scrollHeight - height;
    renderReceipts(view);
  } catch (err) {
    showError((err as Error).message);
  } finally {
    ui.older.disabled = false;
    renderOlderButton();
  }
});

function isNearBottom(slack = 80): boolean {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < slack;
}

function scrollToBottom(force = false): void {
  if (force || isNearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---- sending ----

function showError(text: string): void {
  ui.sendError.textContent = text;
  if (text) {
    setTimeout(() => ui.sendError.textContent === text && (ui.sendError.textContent = ""), 6000);
  }
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const view = current ? views.get(current) : undefined;
  const body = ui.text.value;
  if (!view || !client || !body.trim()) return;
  // Said before the draft is taken: the input has no maxlength, which would cut a paste silently.
  const max = client.limits.maxBodyChars;
  if (body.length > max) {
    showError(`Not sent: the message has ${body.length} characters; the limit is ${max}`);
    return;
  }
  ui.text.value = "";
  client.typing(view.name, false);
  const clientId = newClientId();
  const pending = renderPending(view, clientId, body);
  // Queued while offline and resent with the same client id: stored once, whatever happens.
  client.send(view.name, { body, clientId }).catch((err: Error) => {
    pending.remove();
    view.pending.delete(clientId);
    showError(`Not sent: ${err.message}`);
    if (!ui.text.value) ui.text.value = body;
  });
});

ui.text.addEventListener("input", () => {
  if (!current || !client) return;
  client.typing(current, ui.text.value.trim() !== "");
});

/** Uploads one after another: files picked while others go share the one progress bar. */
let uploads: Promise<void> = Promise.resolve();

function sendFiles(files: File[]): void {
  const room = current;
  const chat = client;
  if (!room || !chat) return;
  uploads = uploads.then(() => upload(chat, room, files));
}

/** Sends `files` as `chat`'s user; files still queued when that user signs out are dropped. */
async function upload(chat: ChatClient, room: string, files: File[]): Promise<void> {
  for (const file of files) {
    if (client !== chat || !views.has(room)) break;
    ui.upload.hidden = false;
    ui.uploadName.textContent = file.name;
    ui.uploadProgress.value = 0;
    ui.uploadPercent.textContent = "0%";
    try {
      await chat.sendFile(room, file, {
        onProgress: ({ loaded, total }) => {
          if (client !== chat) return;
          const share = total > 0 ? loaded / total : 1;
          ui.uploadProgress.value = share;
          ui.uploadPercent.textContent = `${Math.round(share * 100)}%`;
        },
      });
    } catch (err) {
      if (client === chat) showError(`${file.name} not sent: ${(err as Error).message}`);
    }
  }
  if (client === chat) ui.upload.hidden = true;
}

ui.file.addEventListener("change", () => {
  const files = [...(ui.file.files ?? [])];
  ui.file.value = "";
  sendFiles(files);
});

ui.messages.addEventListener("dragover", (e) => {
  if (!(e as PageDragEvent).dataTransfer?.types.includes("Files")) return;
  e.preventDefault();
  ui.messages.classList.add("dragging");
});
ui.messages.addEventListener("dragleave", () => ui.messages.classList.remove("dragging"));
ui.messages.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.messages.classList.remove("dragging");
  sendFiles([...((e as PageDragEvent).dataTransfer?.files ?? [])]);
});

// ---- boot ----

try {
  session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
} catch {
  session = null;
}
if (session?.token && Array.isArray(session.rooms) && session.rooms.length > 0) {
  start(session);
} else {
  showSignIn();
}
