// deno-fmt-ignore-file
// deno-lint-ignore-file
// Generated from web/app.ts by `deno run -A web/build.ts`: do not edit by hand.
// web/app.ts
import { ChatClient, formatBytes, newClientId } from "./client.js";
var ROOM_KEY = /^(ticket|chat|service-chat|support-chat|room):[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;
var DEV_GRANTS = [
  "room:*",
  "ticket:*",
  "chat:*"
];
var SESSION_KEY = "chat-session";
var PAGE_SIZE = 50;
var $ = (id) => document.getElementById(id);
var ui = {
  signin: $("signin"),
  signinForm: $("signin-form"),
  signinName: $("signin-name"),
  signinRooms: $("signin-rooms"),
  signinTokenField: $("signin-token-field"),
  signinToken: $("signin-token"),
  signinHint: $("signin-hint"),
  signinError: $("signin-error"),
  chat: $("chat"),
  me: $("me"),
  status: $("status"),
  banner: $("banner"),
  signout: $("signout"),
  rooms: $("rooms"),
  addRoom: $("add-room"),
  addRoomInput: $("add-room-input"),
  people: $("people"),
  roomTitle: $("room-title"),
  roomCount: $("room-count"),
  messages: $("messages"),
  older: $("older"),
  lists: $("lists"),
  typing: $("typing"),
  upload: $("upload"),
  uploadName: $("upload-name"),
  uploadProgress: $("upload-progress"),
  uploadPercent: $("upload-percent"),
  sendError: $("send-error"),
  composer: $("composer"),
  text: $("text"),
  file: $("file")
};
var devSignIn = document.body.dataset.devSignIn === "on";
var client = null;
var session = null;
var current = null;
var views = /* @__PURE__ */ new Map();
function normalizeRoom(text) {
  const trimmed = text.trim();
  if (!trimmed) return null;
  const key = trimmed.includes(":") ? trimmed : `room:${trimmed}`;
  return ROOM_KEY.test(key) ? key : null;
}
function parseRooms(text) {
  const rooms = [];
  for (const part of text.split(",")) {
    if (!part.trim()) continue;
    const key = normalizeRoom(part);
    if (!key) return `"${part.trim()}" is not a room: use kind:id, e.g. room:general or ticket:1`;
    if (!rooms.includes(key)) rooms.push(key);
  }
  return rooms.length > 0 ? rooms : "Name at least one room";
}
function displayName(user) {
  if (!user) return "System";
  return user.name || user.username || String(user.id);
}
function isMe(user) {
  return !!user && !!client?.user && String(user.id) === String(client.user.id);
}
function ownCursor(room) {
  const me = client?.user ? String(client.user.id) : void 0;
  return client?.reads(room).find((r) => String(r.userId) === me)?.seq ?? 0;
}
function dropRead(view) {
  const cursor = ownCursor(view.name);
  for (const seq of view.unread) if (seq <= cursor) view.unread.delete(seq);
  renderUnread(view);
}
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== void 0) node.textContent = text;
  return node;
}
function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}
function showSignIn(error = "") {
  ui.chat.hidden = true;
  ui.signin.hidden = false;
  ui.signinTokenField.hidden = devSignIn;
  ui.signinHint.textContent = devSignIn ? "Development sign-in: pick any name. Open a second window to chat with yourself." : "Paste a token signed with the server's key, and pick the rooms to join.";
  ui.signinError.textContent = error;
  if (session?.name) ui.signinName.value = session.name;
  ui.signinName.focus();
}
async function mintDevToken(name, rooms) {
  const grants = [
    .../* @__PURE__ */ new Set([
      ...DEV_GRANTS,
      ...rooms
    ])
  ];
  const res = await fetch("dev/token", {
    method: "POST",
    headers: {
      "content-type": "application/json"
    },
    body: JSON.stringify({
      name,
      rooms: grants
    })
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.error ?? `Sign-in failed with HTTP ${res.status}`);
  return json.token;
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
    let token;
    if (devSignIn) {
      if (!name) throw new Error("Pick a name");
      token = await mintDevToken(name, rooms);
    } else {
      token = ui.signinToken.value.trim();
      if (!token) throw new Error("Paste a token");
    }
    session = {
      token,
      name,
      rooms
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await start(session);
  } catch (err) {
    ui.signinError.textContent = err.message;
  }
});
ui.signout.addEventListener("click", () => {
  sessionStorage.removeItem(SESSION_KEY);
  stop();
  showSignIn();
});
function stop() {
  for (const view of views.values()) readNow(view);
  ui.upload.hidden = true;
  client?.close();
  client = null;
  current = null;
  ui.text.value = "";
  ui.typing.textContent = "";
  views.clear();
  ui.lists.replaceChildren();
  ui.rooms.replaceChildren();
  ui.people.replaceChildren();
}
async function start(s) {
  stop();
  const socketUrl = new URL("ws", location.href);
  socketUrl.protocol = socketUrl.protocol === "https:" ? "wss:" : "ws:";
  const chat = new ChatClient({
    url: socketUrl.href,
    token: s.token,
    reconnect: {
      minDelayMs: 300,
      maxDelayMs: 5e3
    }
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
      dropRead(view);
      return;
    }
    view.people.set(String(e.user.id), e.user);
    const nearBottom = isNearBottom(120);
    renderReceipts(view);
    if (nearBottom && e.room === current) scrollToBottom(true);
  });
  chat.on("reads", (e) => {
    const view = views.get(e.room);
    if (!view) return;
    dropRead(view);
    renderReceipts(view);
  });
  chat.on("removed", (e) => {
    showError(`You were removed from ${e.room} (${e.reason.replace("_", " ")})`);
    dropRoom(e.room);
  });
  chat.on("error", (e) => showError(e.message));
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
    showSignIn(`Could not sign in: ${err.message}`);
    return;
  }
  for (const room of s.rooms) addRoom(room);
  selectRoom(roomFromHash() ?? s.rooms[0]);
}
function renderState(e) {
  ui.status.dataset.state = e.state;
  ui.status.textContent = e.state === "open" ? "Connected" : e.state === "connecting" ? "Connecting\u2026" : e.state === "reconnecting" ? `Reconnecting\u2026${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}` : e.state === "closed" ? "Disconnected" : "";
  ui.banner.hidden = e.state !== "reconnecting";
  if (e.state === "closed" && e.reason === "unauthorized") {
    stop();
    sessionStorage.removeItem(SESSION_KEY);
    showSignIn("Your session expired or was refused: sign in again.");
  }
  if (e.state === "open" && current) renderPeople();
}
function addRoom(name) {
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
  const view = {
    name,
    list,
    item,
    rendered: /* @__PURE__ */ new Map(),
    hasMore: false,
    unread: /* @__PURE__ */ new Set(),
    people: /* @__PURE__ */ new Map(),
    pending: /* @__PURE__ */ new Map(),
    readSent: 0,
    joined: false
  };
  views.set(name, view);
  renderUnread(view);
  const chat = client;
  chat.join(name, {
    history: PAGE_SIZE
  }).then((joined) => {
    if (views.get(name) !== view) return;
    view.joined = true;
    view.hasMore = joined.has_more;
    if (name === current) {
      renderOlderButton();
      renderPeople();
      markRead(view);
    }
  }).catch((err) => {
    if (views.get(name) !== view) return;
    showError(`Could not join ${name}: ${err.message}`);
    dropRoom(name);
  });
}
function dropRoom(name) {
  const view = views.get(name);
  if (!view) return;
  views.delete(name);
  view.list.remove();
  view.item.remove();
  if (session) {
    session.rooms = session.rooms.filter((r) => r !== name);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  }
  if (current === name) selectRoom([
    ...views.keys()
  ][0] ?? null);
}
function selectRoom(name) {
  const leaving = current ? views.get(current) : void 0;
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
    const view = views.get(current);
    view.unread.clear();
    renderUnread(view);
    markRead(view);
  }
  renderOlderButton();
  renderPeople();
  renderTyping();
  scrollToBottom(true);
}
function roomFromHash() {
  let name;
  try {
    name = decodeURIComponent(location.hash.slice(1));
  } catch {
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
function renderUnread(view) {
  const badge = view.item.querySelector(".unread");
  badge.textContent = view.unread.size > 0 ? String(view.unread.size) : "";
  badge.hidden = view.unread.size === 0;
  const total = [
    ...views.values()
  ].reduce((n, v) => n + v.unread.size, 0);
  document.title = total > 0 ? `(${total}) Chat` : "Chat";
}
function renderPeople() {
  const users = current && client ? client.presence(current) : [];
  const typing = new Set((current && client ? client.typers(current) : []).map((u) => String(u.id)));
  ui.people.replaceChildren(...users.map((u) => {
    const li = el("li", "", displayName(u) + (isMe(u) ? " (you)" : ""));
    li.dataset.userId = String(u.id);
    if (typing.has(String(u.id))) li.append(el("span", "tag", "typing\u2026"));
    return li;
  }));
  ui.roomCount.textContent = current ? `${users.length} here` : "";
}
function renderTyping() {
  const typers = current && client ? client.typers(current) : [];
  const names = typers.map(displayName);
  ui.typing.textContent = names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing\u2026` : names.length === 2 ? `${names[0]} and ${names[1]} are typing\u2026` : "Several people are typing\u2026";
  renderPeople();
}
function renderOlderButton() {
  const view = current ? views.get(current) : void 0;
  ui.older.hidden = !view || !view.hasMore;
}
function onMessage(message) {
  const view = views.get(message.room);
  if (!view) return;
  const nearBottom = isNearBottom();
  if (message.client_id && view.pending.has(message.client_id)) {
    view.pending.get(message.client_id).el.remove();
    view.pending.delete(message.client_id);
  }
  if (message.sender) view.people.set(String(message.sender.id), message.sender);
  const li = renderMessage(message);
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
    view.unread.add(message.seq);
    renderUnread(view);
  }
  renderReceipts(view);
}
function renderMessage(message) {
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
      if (a.mime.startsWith("image/") && a.mime !== "image/svg+xml") {
        const img = el("img");
        img.src = url;
        img.alt = a.name;
        img.loading = "lazy";
        img.addEventListener("load", () => {
          if (message.room === current && isNearBottom(240)) scrollToBottom(true);
        });
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
function fileLabel(a) {
  const ext = a.name.includes(".") ? a.name.split(".").pop().slice(0, 4) : "file";
  return [
    el("span", "file-ext", ext.toUpperCase()),
    el("span", "file-name", a.name),
    el("span", "file-size", formatBytes(a.size))
  ];
}
function renderPending(view, clientId, text) {
  const li = el("li", "msg mine pending");
  li.dataset.clientId = clientId;
  const meta = el("div", "meta");
  meta.append(el("span", "author", displayName(client?.user ?? null)), el("span", "", "sending\u2026"));
  li.append(meta, el("div", "body", text));
  view.list.append(li);
  view.pending.set(clientId, {
    el: li
  });
  scrollToBottom(true);
  return li;
}
function formatTime(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === (/* @__PURE__ */ new Date()).toDateString();
  return sameDay ? date.toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit"
  }) : date.toLocaleString([], {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit"
  });
}
function renderReceipts(view) {
  for (const li of view.list.querySelectorAll(".receipts")) li.textContent = "";
  const bySeq = /* @__PURE__ */ new Map();
  const seqs = [
    ...view.rendered.keys()
  ].sort((a, b) => a - b);
  const present = client?.presence(view.name) ?? [];
  const me = client?.user ? String(client.user.id) : void 0;
  for (const { userId, seq } of client?.reads(view.name) ?? []) {
    const id = String(userId);
    if (id === me) continue;
    let target;
    for (const s of seqs) {
      if (s > seq) break;
      const sender = view.rendered.get(s)?.dataset.senderId;
      if (sender !== id) target = s;
    }
    if (target === void 0) continue;
    const reader = view.people.get(id) ?? present.find((u) => String(u.id) === id);
    const name = reader ? displayName(reader) : `user ${id}`;
    bySeq.set(target, [
      ...bySeq.get(target) ?? [],
      name
    ]);
  }
  for (const [seq, names] of bySeq) {
    const receipts = view.rendered.get(seq)?.querySelector(".receipts");
    if (receipts) receipts.textContent = `Seen by ${names.join(", ")}`;
  }
}
function resetRoom(name) {
  const view = views.get(name);
  if (!view) return;
  for (const li of view.rendered.values()) li.remove();
  view.rendered.clear();
  view.firstSeq = view.lastSeq = void 0;
  view.hasMore = true;
  renderOlderButton();
}
function markRead(view) {
  if (view.readDue !== void 0) return;
  view.readDue = setTimeout(() => {
    view.readDue = void 0;
    sendRead(view);
  }, READ_DELAY_MS);
}
var READ_DELAY_MS = 250;
function readNow(view) {
  if (view.readDue === void 0) return;
  clearTimeout(view.readDue);
  view.readDue = void 0;
  sendRead(view);
}
function sendRead(view) {
  if (!client || views.get(view.name) !== view) return;
  if (view.name !== current || document.visibilityState !== "visible") return;
  const seq = view.lastSeq;
  if (seq === void 0 || seq <= view.readSent) return;
  view.readSent = seq;
  client.read(view.name, seq).catch(() => {
    view.readSent = 0;
  });
}
document.addEventListener("visibilitychange", () => {
  const view = current ? views.get(current) : void 0;
  if (!view || document.visibilityState !== "visible") return;
  view.unread.clear();
  renderUnread(view);
  markRead(view);
});
ui.older.addEventListener("click", async () => {
  const view = current ? views.get(current) : void 0;
  if (!view || !client) return;
  ui.older.disabled = true;
  try {
    const page = await client.history(view.name, {
      before: view.firstSeq ?? (view.lastSeq ?? 0) + 1,
      limit: PAGE_SIZE
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
    ui.messages.scrollTop += ui.messages.scrollHeight - height;
    renderReceipts(view);
  } catch (err) {
    showError(err.message);
  } finally {
    ui.older.disabled = false;
    renderOlderButton();
  }
});
function isNearBottom(slack = 80) {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < slack;
}
function scrollToBottom(force = false) {
  if (force || isNearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
}
function showError(text) {
  ui.sendError.textContent = text;
  if (text) {
    setTimeout(() => ui.sendError.textContent === text && (ui.sendError.textContent = ""), 6e3);
  }
}
ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const view = current ? views.get(current) : void 0;
  const body = ui.text.value;
  if (!view || !client || !body.trim()) return;
  const max = client.limits.maxBodyChars;
  if (body.length > max) {
    showError(`Not sent: the message has ${body.length} characters; the limit is ${max}`);
    return;
  }
  ui.text.value = "";
  client.typing(view.name, false);
  const clientId = newClientId();
  const pending = renderPending(view, clientId, body);
  client.send(view.name, {
    body,
    clientId
  }).catch((err) => {
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
var uploads = Promise.resolve();
function sendFiles(files) {
  const room = current;
  const chat = client;
  if (!room || !chat) return;
  uploads = uploads.then(() => upload(chat, room, files));
}
async function upload(chat, room, files) {
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
        }
      });
    } catch (err) {
      if (client === chat) showError(`${file.name} not sent: ${err.message}`);
    }
  }
  if (client === chat) ui.upload.hidden = true;
}
ui.file.addEventListener("change", () => {
  const files = [
    ...ui.file.files ?? []
  ];
  ui.file.value = "";
  sendFiles(files);
});
ui.messages.addEventListener("dragover", (e) => {
  if (!e.dataTransfer?.types.includes("Files")) return;
  e.preventDefault();
  ui.messages.classList.add("dragging");
});
ui.messages.addEventListener("dragleave", () => ui.messages.classList.remove("dragging"));
ui.messages.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.messages.classList.remove("dragging");
  sendFiles([
    ...e.dataTransfer?.files ?? []
  ]);
});
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
