// deno-fmt-ignore-file
// deno-lint-ignore-file
// Generated from client/mod.ts by `deno run -A web/build.ts`: do not edit by hand.
// client/mod.ts
var ChatError = class extends Error {
  /** Protocol error code (`forbidden`, `not_found`, …) or `closed`, `unauthorized`, `http`. */
  code;
  /** HTTP status for upload errors. */
  status;
  /** Builds an error with a code. */
  constructor(code, message, status) {
    super(message);
    this.name = "ChatError";
    this.code = code;
    this.status = status;
  }
};
function newClientId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [
    ...bytes
  ].map((b) => b.toString(16).padStart(2, "0")).join("");
}
function bytesToBase64(bytes) {
  const native = bytes.toBase64;
  if (typeof native === "function") return native.call(bytes);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 32768) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 32768));
  }
  return btoa(binary);
}
function formatBytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}
var LARGE_FRAME_CHARS = 64 * 1024;
var SLOWEST_UPLINK_BYTES_PER_S = 4096;
var MAX_GRACE_MS = 12e4;
var MAX_FRAME_CHARS = 64 * 1024 * 1024 - 2 * 64 * 1024;
var DEFAULTS = {
  minDelayMs: 250,
  maxDelayMs: 1e4,
  factor: 2,
  jitter: 0.3,
  heartbeatMs: 25e3,
  timeoutMs: 1e4,
  retryMs: 500,
  inlineMaxBytes: 256 * 1024,
  maxFileBytes: 10 * 1024 * 1024,
  maxBodyChars: 2e4,
  maxFiles: 10,
  typingRenewMs: 2e3,
  typingIdleMs: 3e3,
  // Under the server's 24 hours of recognising a client_id, with an hour to spare.
  sendExpiryMs: 23 * 36e5,
  // The server's RATE_LIMIT_PER_SECOND by default, for servers whose welcome does not say it.
  framesPerSecond: 20
};
var MAX_HEARD_TIMEOUTS = 6;
var MAX_ROOMS_PER_JOIN = 100;
var RATE_SHARE = 0.8;
var UNAUTHORIZED = 4001;
var RATE_LIMITED = 4029;
var TYPING_EXPIRY_MS = 7e3;
var ChatClient = class {
  #options;
  /** `options.url`, absolute. */
  #url;
  #socket = null;
  #generation = 0;
  #state = "idle";
  #attempt = 0;
  #user = null;
  #limits;
  #listeners = /* @__PURE__ */ new Map();
  #rooms = /* @__PURE__ */ new Map();
  #pending = /* @__PURE__ */ new Map();
  /** The rooms each join frame on this socket named, by its ref, until each has its reply. */
  #joinRefs = /* @__PURE__ */ new Map();
  /** Rooms whose join is to be written: together, in as few frames as the server takes. */
  #joinQueue = /* @__PURE__ */ new Map();
  #joinFlushQueued = false;
  /**
   * Frames this socket may still write at once: the server refuses a socket's frames past its
   * rate, and closes one that goes on (4029), so what waited (rejoins, sends queued offline) is
   * paced to stay under it.
   */
  #bucket = {
    tokens: 0,
    at: 0
  };
  #nextRef = 1;
  #reconnectTimer;
  #heartbeatTimer;
  /** The server's heartbeat period from `welcome`, ms. */
  #serverHeartbeatMs;
  #deadline;
  /** When the current socket last brought a frame (performance.now()). */
  #heardAt = -Infinity;
  /** Characters written to the current socket, to tell a slow upload from a dead connection. */
  #written = 0;
  /**
   * Until this time (performance.now()) a missing pong does not end the connection: a large frame just
   * written may still be crossing a slow uplink, with the pings queued behind it.
   */
  #graceUntil = 0;
  /** The ref of the last large frame: its reply ends the grace, as every frame before it arrived. */
  #graceRef;
  /** Requests are not written before this time (performance.now()): the server said to slow down. */
  #holdUntil = 0;
  /** Gap fills, one history read at a time (see `#fillTurn`). */
  #fills = Promise.resolve();
  #flushTimer;
  /** When `#flushTimer` fires (performance.now()). */
  #flushTimerAt = 0;
  /** Rooms whose join is reading its first history page: joins under way, and a leave since. */
  #joining = /* @__PURE__ */ new Map();
  get #retryMs() {
    return this.#options.retryMs ?? DEFAULTS.retryMs;
  }
  #connectWaiters = [];
  #retriedToken = false;
  #onOnline = () => {
    if (this.#state === "reconnecting") this.#retryNow();
  };
  /** Creates a client; nothing happens until {@link connect}. */
  constructor(options) {
    this.#options = options;
    const base = globalThis.location?.href;
    let url;
    try {
      url = new URL(options.url, base);
    } catch {
    }
    if (!url || !/^(wss?|https?):$/.test(url.protocol) || url.host === "" || url.href.includes("#")) {
      throw new TypeError(`ChatClient: "${options.url}" is not a URL the client can connect to`);
    }
    this.#url = url.toString();
  }
  /** Where the connection is now. */
  get state() {
    return this.#state;
  }
  /** The user the server greeted us as, once connected. */
  get user() {
    return this.#user;
  }
  /** What the server takes in one message: its `welcome`'s word, or the options' until then. */
  get limits() {
    if (this.#limits) return this.#limits;
    const maxFileBytes = this.#options.maxFileBytes ?? DEFAULTS.maxFileBytes;
    const base64 = Math.ceil(maxFileBytes / 3) * 4;
    return {
      maxBodyChars: DEFAULTS.maxBodyChars,
      maxFiles: DEFAULTS.maxFiles,
      maxFileBytes,
      maxFrameChars: Math.min(base64 + Math.ceil(base64 / 76) * 4 + 64 * 1024, MAX_FRAME_CHARS),
      framesPerSecond: DEFAULTS.framesPerSecond
    };
  }
  /** Base URL of the HTTP routes: the `httpUrl` option, else `url` without its trailing `/ws`. */
  get httpUrl() {
    if (this.#options.httpUrl) return this.#options.httpUrl.replace(/\/$/, "");
    const url = new URL(this.#url);
    url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
    const path = url.pathname.replace(/\/$/, "");
    return url.origin + (path.endsWith("/ws") ? path.slice(0, -"/ws".length) : "");
  }
  /** Subscribes to an event; returns the function that unsubscribes. */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => set.delete(listener);
  }
  /** Opens the socket; resolves with our user at the first welcome and reconnects from then on. */
  connect() {
    const promise = new Promise((resolve, reject) => {
      this.#connectWaiters.push({
        resolve,
        reject
      });
    });
    if (this.#state === "open" && this.#user) {
      this.#settleConnect(this.#user);
    } else if (this.#state === "idle" || this.#state === "closed") {
      this.#attempt = 0;
      globalThis.addEventListener?.("online", this.#onOnline);
      this.#open();
    }
    return promise;
  }
  /** Closes the socket for good: no reconnect; waiting requests fail with code `closed`. */
  close() {
    globalThis.removeEventListener?.("online", this.#onOnline);
    clearTimeout(this.#reconnectTimer);
    this.#stopTimers();
    const socket = this.#socket;
    this.#socket = null;
    this.#generation++;
    if (socket && socket.readyState <= 1) socket.close(1e3, "Client closed");
    this.#failAll(new ChatError("closed", "The client was closed"));
    for (const [name, room] of this.#rooms) this.#clearTypers(name, room);
    this.#rooms.clear();
    this.#setState({
      state: "closed",
      attempt: this.#attempt,
      reason: "closed"
    });
  }
  /** Rooms joined (or being joined). */
  rooms() {
    return [
      ...this.#rooms.keys()
    ];
  }
  /** Users present in a room, as of the last join and presence events. */
  presence(room) {
    return [
      ...this.#rooms.get(room)?.presence.values() ?? []
    ];
  }
  /** Read cursors of a room (ours included), as of its last join and the `read` events since. */
  reads(room) {
    return [
      ...this.#rooms.get(room)?.reads.values() ?? []
    ];
  }
  /** Other users typing in a room now. */
  typers(room) {
    return [
      ...this.#rooms.get(room)?.typers.values() ?? []
    ].map((t) => t.user);
  }
  /** Newest seq of a room delivered to the application. */
  lastSeq(room) {
    return this.#rooms.get(room)?.lastSeq;
  }
  /**
   * Joins a room. `history: n` (1 to 200) first delivers the newest n messages (fewer when they
   * pass the server's page of about 1 MiB: see `has_more`) as `message` events, then everything
   * after them; `since: seq` delivers everything after that seq. With neither, only messages
   * committed from now on. Either way, messages follow on without gap or duplicate, and after a
   * reconnect the room is rejoined from the last seq delivered.
   */
  async join(room, options = {}) {
    if (this.#state === "closed") {
      throw new ChatError("closed", "Not connected: call connect() first");
    }
    let messages = [];
    let hasMore = false;
    let state = this.#rooms.get(room);
    if (!state) {
      let since = options.since;
      if (since === void 0 && options.history) {
        const joining = this.#joining.get(room) ?? {
          joins: 0,
          left: false
        };
        joining.joins++;
        this.#joining.set(room, joining);
        let page;
        try {
          page = await this.history(room, {
            limit: options.history
          });
        } catch (err) {
          this.#doneJoining(room, true);
          throw err;
        }
        if (joining.left && !this.#rooms.has(room)) {
          this.#doneJoining(room, true);
          throw new ChatError("left", `Left room "${room}"`);
        }
        this.#doneJoining(room, false);
        messages = page.messages;
        hasMore = page.has_more;
        since = page.last_seq ?? 0;
        if (this.#rooms.has(room)) return await this.join(room, options);
      }
      state = this.#newRoom(since);
      this.#rooms.set(room, state);
      for (const m of messages) this.#emit("message", m);
    }
    const current = state;
    const joined = current.live && current.joinedFrame ? Promise.resolve(current.joinedFrame) : new Promise((resolve, reject) => current.waiters.push({
      resolve,
      reject
    }));
    if (current.joinSentOn !== this.#generation) this.#sendJoin(room, current);
    const frame = await joined;
    return {
      room,
      head: frame.head,
      presence: frame.presence,
      messages,
      has_more: hasMore
    };
  }
  /** Ends one join's history phase; `flush` sends what waited when no other join of it is left. */
  #doneJoining(room, flush) {
    const joining = this.#joining.get(room);
    if (--joining.joins > 0) return;
    this.#joining.delete(room);
    if (flush) this.#flush();
  }
  /** Leaves a room: no more messages, presence or typing from it. */
  async leave(room) {
    const state = this.#rooms.get(room);
    if (!state) {
      const joining = this.#joining.get(room);
      if (joining) joining.left = true;
      return;
    }
    this.#clearTypers(room, state);
    this.#rooms.delete(room);
    for (const w of state.waiters) w.reject(new ChatError("left", `Left room "${room}"`));
    if (this.#ready()) await this.#request({
      type: "leave",
      room
    }).catch(() => {
    });
  }
  /**
   * Sends a message and resolves with the server's ack once it is durable. Queued while
   * disconnected and resent with the same `client_id` after reconnecting, so it is stored once.
   */
  async send(room, options) {
    const limits = this.limits;
    const body = options.body ?? "";
    if (body.length > limits.maxBodyChars) {
      throw new ChatError("body_too_long", `Message is too long: ${body.length} characters, the limit is ${limits.maxBodyChars}`);
    }
    for (const file of options.files ?? []) this.#checkFileSize(file);
    const files = await Promise.all((options.files ?? []).map(encodeFile));
    const frame = {
      type: "send",
      room,
      body,
      client_id: options.clientId ?? newClientId()
    };
    if (files.length > 0) frame.files = files;
    const size = JSON.stringify({
      ...frame,
      ref: Number.MAX_SAFE_INTEGER
    }).length;
    if (size > limits.maxFrameChars) throw tooLarge(size, limits.maxFrameChars);
    const ack = await this.#request(frame, {
      needsRoom: room,
      checkedAgainst: limits
    });
    const { type: _type, ref: _ref, ...rest } = ack;
    return rest;
  }
  /**
   * Sends one file: inline in a `send` frame up to `inlineMaxBytes`, else over the HTTP upload
   * route with progress events (in browsers; Deno reports the start and the end). When the
   * upload route is missing, refuses the token, or a proxy's body cap refuses the file (a 413 that
   * is not the server's), a file one `send` frame carries goes inline.
   */
  async sendFile(room, file, options = {}) {
    this.#checkFileSize(file);
    const blob = toBlob(file);
    const clientId = options.clientId ?? newClientId();
    const inlineMax = this.#options.inlineMaxBytes ?? DEFAULTS.inlineMaxBytes;
    const via = options.via ?? (blob.size <= inlineMax ? "inline" : "upload");
    if (via === "upload") {
      try {
        return await this.#uploadRetrying(room, file, {
          ...options,
          clientId
        });
      } catch (err) {
        const status = err instanceof ChatError ? err.status : void 0;
        const routeUnusable = status === 401 || status === 403 || status === 404 || status === 405 || status === 501 || status === 413 && !SERVER_REFUSALS.has(err);
        const limits = this.limits;
        const frameChars = inlineFrameChars(room, fileName(file), blob.size, options.body, clientId);
        if (!routeUnusable || blob.size > limits.maxFileBytes || frameChars > limits.maxFrameChars) {
          throw err;
        }
      }
    }
    return await this.#sendInline(room, file, blob, clientId, options);
  }
  /** Refuses a file larger than the server takes, before a byte of it is sent. */
  #checkFileSize(file) {
    const size = toBlob(file).size;
    const max = this.limits.maxFileBytes;
    if (size > max) {
      throw new ChatError("file_too_large", `File "${fileName(file)}" is too large: ${formatBytes(size)}, the limit is ${formatBytes(max)}`);
    }
  }
  /**
   * {@link upload}, queued as sends are: it waits for the connection, and an upload the network
   * or a server going down cut short goes again (same client id) once the client is connected
   * again, up to five times.
   */
  async #uploadRetrying(room, file, options) {
    for (let attempt = 1; ; attempt++) {
      await this.#whenOpen();
      try {
        return await this.upload(room, file, options);
      } catch (err) {
        const status = err instanceof ChatError ? err.status : void 0;
        const passing = err instanceof ChatError && (err.code === "network" || status === 429 || status === 502 || status === 503 || status === 504);
        if (!passing || attempt >= 5 || this.#state === "closed") throw err;
        await new Promise((r) => setTimeout(r, this.#retryMs * attempt));
      }
    }
  }
  /** Resolves once the socket is open; rejects if the client is closed (or was never connected). */
  #whenOpen() {
    if (this.#state === "open") return Promise.resolve();
    const closed = () => new ChatError("closed", "Not connected: call connect() first");
    if (this.#state === "closed" || this.#state === "idle") return Promise.reject(closed());
    return new Promise((resolve, reject) => {
      const off = this.on("state", (s) => {
        if (s.state === "open") {
          off();
          resolve();
        } else if (s.state === "closed") {
          off();
          reject(closed());
        }
      });
    });
  }
  /**
   * Uploads one file over `POST /api/rooms/{kind}/{id}/attachments` (multipart, field `file`,
   * optional `body` and `client_id`) and resolves with the stored message's ack; the message
   * itself also arrives as a `message` event.
   */
  async upload(room, file, options = {}) {
    this.#checkFileSize(file);
    const blob = toBlob(file);
    const name = fileName(file);
    const at = room.indexOf(":");
    const url = `${this.httpUrl}/api/rooms/${encodeURIComponent(room.slice(0, at))}/${encodeURIComponent(room.slice(at + 1))}/attachments`;
    const form = new FormData();
    form.append("file", blob, name);
    if (options.body) form.append("body", options.body);
    const clientId = options.clientId ?? newClientId();
    form.append("client_id", clientId);
    const token = await this.#token();
    let reported = -1;
    const progress = (loaded) => {
      if (loaded === reported) return;
      reported = loaded;
      options.onProgress?.({
        loaded,
        total: blob.size,
        via: "upload"
      });
    };
    const { status, text } = await postWithProgress(url, form, token, (share) => progress(Math.round(share * blob.size)));
    let json = {};
    try {
      json = JSON.parse(text);
    } catch {
    }
    if (status < 200 || status >= 300) {
      const message2 = typeof json.message === "string" ? json.message : typeof json.error === "string" ? json.error : `Upload failed with HTTP ${status}`;
      const code = typeof json.code === "string" ? json.code : "http";
      const err = new ChatError(code, message2, status);
      if (typeof json.status === "number" && typeof json.message === "string") {
        SERVER_REFUSALS.add(err);
      }
      throw err;
    }
    progress(blob.size);
    const message = json.message && typeof json.message === "object" ? json.message : json;
    return {
      room: message.room ?? room,
      client_id: message.client_id ?? clientId,
      id: message.id,
      seq: message.seq,
      created_at: message.created_at,
      // The route answers 201 for a new message and 200 with the original for a repeated client_id.
      duplicate: json.duplicate === true || status === 200
    };
  }
  /**
   * Says we are typing (default) or stopped. Call it on every keystroke: it sends at most one
   * frame per `typingRenewMs`, renews while typing goes on, and stops by itself when it pauses.
   */
  typing(room, isTyping = true) {
    const state = this.#rooms.get(room);
    if (!state) return;
    clearTimeout(state.typingIdle);
    const now = performance.now();
    if (isTyping) {
      const renew = this.#options.typingRenewMs ?? DEFAULTS.typingRenewMs;
      if (now - state.typingSentAt >= renew && this.#write({
        type: "typing",
        room,
        is_typing: true
      })) {
        state.typingSentAt = now;
      }
      state.typingIdle = setTimeout(() => this.typing(room, false), this.#options.typingIdleMs ?? DEFAULTS.typingIdleMs);
    } else if (state.typingSentAt !== -Infinity) {
      state.typingSentAt = -Infinity;
      this.#write({
        type: "typing",
        room,
        is_typing: false
      });
    }
  }
  /** Moves our read cursor forward (to the room's head without `seq`); resolves with it. */
  async read(room, seq) {
    const reply = await this.#request({
      type: "read",
      room,
      seq
    }, {
      needsRoom: room
    });
    const state = this.#rooms.get(room);
    if (state && this.#user) moveCursor(state.reads, this.#user.id, reply.seq);
    return reply.seq;
  }
  /** Reads a page of history, oldest first: the newest, `before` a seq, or `after` one. */
  async history(room, options = {}) {
    const reply = await this.#request({
      type: "history",
      room,
      ...options
    });
    return {
      messages: reply.messages,
      has_more: reply.has_more,
      first_seq: reply.first_seq,
      last_seq: reply.last_seq
    };
  }
  // ---- connection ----
  async #open() {
    const generation = ++this.#generation;
    if (this.#attempt === 0) this.#setState({
      state: "connecting",
      attempt: 0
    });
    let token;
    try {
      token = await this.#token();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#scheduleReconnect(void 0, err);
      return;
    }
    if (generation !== this.#generation) return;
    const Ctor = this.#options.WebSocket ?? globalThis.WebSocket;
    const url = new URL(this.#url);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (url.pathname === "/") url.pathname = "/ws";
    let socket;
    try {
      socket = new Ctor(url.toString(), [
        `bearer.${token}`
      ]);
    } catch (err) {
      this.#scheduleReconnect(void 0, err);
      return;
    }
    this.#socket = socket;
    this.#written = 0;
    this.#heardAt = -Infinity;
    this.#graceUntil = 0;
    this.#graceRef = void 0;
    this.#armDeadline(socket);
    socket.onmessage = (e) => {
      if (this.#socket !== socket) return;
      this.#heardAt = performance.now();
      let frame;
      try {
        frame = JSON.parse(typeof e.data === "string" ? e.data : "");
      } catch {
        return;
      }
      this.#handle(frame);
    };
    socket.onclose = (e) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#disconnected(e.code);
    };
    socket.onerror = () => {
    };
  }
  #disconnected(code) {
    this.#stopTimers();
    this.#generation++;
    this.#joinRefs.clear();
    this.#joinQueue.clear();
    for (const [name, room] of this.#rooms) {
      room.live = false;
      room.typingSentAt = -Infinity;
      this.#clearTypers(name, room);
    }
    if (code === UNAUTHORIZED) {
      if (typeof this.#options.token === "function" && !this.#retriedToken) {
        this.#retriedToken = true;
        this.#scheduleReconnect(code);
        return;
      }
      const err = new ChatError("unauthorized", "The server refused the token");
      this.#failAll(err);
      this.#setState({
        state: "closed",
        attempt: this.#attempt,
        code,
        reason: "unauthorized"
      });
      return;
    }
    this.#scheduleReconnect(code);
  }
  #scheduleReconnect(code, err) {
    if (err) console.warn("chat client: connection attempt failed:", err);
    const r = {
      ...DEFAULTS,
      ...this.#options.reconnect
    };
    this.#attempt++;
    let delay = Math.min(r.maxDelayMs, r.minDelayMs * r.factor ** (this.#attempt - 1));
    if (code === RATE_LIMITED) delay = Math.max(delay, 5e3);
    delay = Math.round(delay * (1 - r.jitter * Math.random()));
    this.#setState({
      state: "reconnecting",
      attempt: this.#attempt,
      delay_ms: delay,
      code
    });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }
  #retryNow() {
    clearTimeout(this.#reconnectTimer);
    if (this.#socket) return;
    this.#open();
  }
  #armDeadline(socket, since = performance.now()) {
    clearTimeout(this.#deadline);
    const timeout = this.#options.timeoutMs ?? DEFAULTS.timeoutMs;
    const outstanding = socket.bufferedAmount - this.#written;
    this.#deadline = setTimeout(() => {
      if (this.#socket !== socket) return;
      const buffered = socket.bufferedAmount;
      const draining = buffered > 0 && buffered < outstanding + this.#written;
      const hearing = this.#joinRefs.size > 0 && performance.now() - this.#heardAt < timeout && performance.now() - since < MAX_HEARD_TIMEOUTS * timeout;
      const graced = performance.now() < this.#graceUntil;
      if (draining || hearing || graced) {
        this.#armDeadline(socket, draining || graced ? void 0 : since);
        return;
      }
      this.#socket = null;
      try {
        socket.close(4e3, "Timed out");
      } catch {
      }
      this.#disconnected(1006);
    }, timeout);
  }
  #stopTimers() {
    clearTimeout(this.#deadline);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#flushTimer);
    this.#flushTimer = void 0;
    this.#deadline = void 0;
    this.#heartbeatTimer = void 0;
  }
  #welcomed(user) {
    clearTimeout(this.#deadline);
    this.#deadline = void 0;
    this.#user = user;
    this.#attempt = 0;
    this.#retriedToken = false;
    this.#setState({
      state: "open",
      attempt: 0
    });
    this.#emit("welcome", user);
    let heartbeat = this.#options.heartbeatMs ?? DEFAULTS.heartbeatMs;
    if (heartbeat > 0 && this.#serverHeartbeatMs !== void 0) {
      heartbeat = Math.min(heartbeat, Math.max(100, Math.floor(this.#serverHeartbeatMs / 3)));
    }
    if (heartbeat > 0) {
      const socket = this.#socket;
      this.#heartbeatTimer = setInterval(() => {
        if (!socket || this.#socket !== socket) return;
        this.#write({
          type: "ping"
        });
        if (this.#deadline === void 0) this.#armDeadline(socket);
      }, heartbeat);
    }
    const rate = this.limits.framesPerSecond;
    this.#bucket = {
      tokens: burstOf(rate),
      at: performance.now()
    };
    for (const [room, state] of this.#rooms) this.#joinQueue.set(room, state);
    this.#flush();
    this.#settleConnect(user);
  }
  #settleConnect(user) {
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) w.resolve(user);
  }
  #ready() {
    return this.#state === "open" && this.#socket !== null;
  }
  async #token() {
    const t = this.#options.token;
    return typeof t === "function" ? await t() : t;
  }
  #setState(event) {
    this.#state = event.state;
    this.#emit("state", event);
  }
  // ---- requests ----
  #request(frame, options = {}) {
    if (this.#state === "closed" || this.#state === "idle") {
      return Promise.reject(new ChatError("closed", "Not connected: call connect() first"));
    }
    const ref = this.#nextRef++;
    return new Promise((resolve, reject) => {
      const pending = {
        frame: {
          ...frame,
          ref
        },
        resolve,
        reject,
        needsRoom: options.needsRoom,
        checkedAgainst: options.checkedAgainst,
        sentOn: -1,
        retries: 0,
        madeAt: Date.now()
      };
      this.#pending.set(ref, pending);
      this.#flush();
    });
  }
  /**
   * Writes the joins due, then every request not yet written on this socket whose room is joined
   * (or being joined), as fast as the server's rate takes them.
   */
  #flush() {
    if (!this.#ready()) return;
    const now = performance.now();
    if (now < this.#holdUntil) return this.#flushAt(this.#holdUntil);
    this.#writeJoins(now);
    const expiry = this.#options.sendExpiryMs ?? DEFAULTS.sendExpiryMs;
    const limits = this.limits;
    for (const [ref, pending] of this.#pending) {
      if (pending.sentOn === this.#generation) continue;
      if (pending.frame.type === "send" && pending.checkedAgainst !== limits) {
        pending.checkedAgainst = limits;
        const size = JSON.stringify(pending.frame).length;
        if (size > limits.maxFrameChars) {
          this.#pending.delete(ref);
          pending.reject(pending.written ? new ChatError("send_unconfirmed", `Sent before the connection dropped and now over the server's frame limit (${size} characters, the limit is ${limits.maxFrameChars}): it may have been stored; look for client_id ${pending.frame.client_id} in the history`) : tooLarge(size, limits.maxFrameChars));
          continue;
        }
      }
      if (pending.frame.type === "send" && Date.now() - pending.madeAt > expiry) {
        this.#pending.delete(ref);
        pending.reject(new ChatError("send_expired", "Not acknowledged in time to be sent again safely: it may or may not have been stored"));
        continue;
      }
      const room = pending.needsRoom ? this.#rooms.get(pending.needsRoom) : void 0;
      if (room && room.joinSentOn !== this.#generation) continue;
      if (!room && pending.needsRoom && this.#joining.has(pending.needsRoom)) continue;
      if (!this.#takeToken(now)) return;
      if (this.#write(pending.frame)) {
        pending.sentOn = this.#generation;
        pending.written = true;
      }
    }
  }
  /** Takes one frame from the bucket, or arranges a flush for when it holds one again. */
  #takeToken(now) {
    const rate = this.limits.framesPerSecond * RATE_SHARE;
    const b = this.#bucket;
    b.tokens = Math.min(burstOf(this.limits.framesPerSecond), b.tokens + (now - b.at) / 1e3 * rate);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens--;
      return true;
    }
    this.#flushAt(now + Math.ceil((1 - b.tokens) / rate * 1e3));
    return false;
  }
  /** Writes the queued joins that are due, up to the server's most rooms per frame in each. */
  #writeJoins(now) {
    let later = Infinity;
    const due = [];
    for (const [room, state] of this.#joinQueue) {
      if (this.#rooms.get(room) !== state || state.joinSentOn === this.#generation) {
        this.#joinQueue.delete(room);
      } else if (state.joinAfter > now) later = Math.min(later, state.joinAfter);
      else due.push([
        room,
        state
      ]);
    }
    if (later < Infinity) this.#flushAt(later);
    for (let i = 0; i < due.length; i += MAX_ROOMS_PER_JOIN) {
      if (!this.#takeToken(now)) return;
      const chunk = due.slice(i, i + MAX_ROOMS_PER_JOIN);
      const ref = this.#nextRef++;
      const entries = chunk.map(([room, state]) => {
        const entry = {
          room
        };
        if (state.lastSeq !== void 0) {
          entry.since = state.lastSeq;
          if (state.epoch !== void 0) entry.epoch = state.epoch;
        }
        return entry;
      });
      const frame = entries.length === 1 ? {
        type: "join",
        ...entries[0],
        ref
      } : {
        type: "join",
        rooms: entries,
        ref
      };
      if (!this.#write(frame)) return;
      this.#joinRefs.set(ref, new Set(chunk.map(([room]) => room)));
      for (const [room, state] of chunk) {
        state.joinSentOn = this.#generation;
        this.#joinQueue.delete(room);
      }
    }
  }
  /**
   * Flushes again at `time` (performance.now()), unless a flush is already due by then: the earliest
   * wins (a token a moment away must not wait for a failed join's retry), and each flush arranges
   * the next one it needs.
   */
  #flushAt(time) {
    if (this.#flushTimer !== void 0 && this.#flushTimerAt <= time) return;
    clearTimeout(this.#flushTimer);
    this.#flushTimerAt = time;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = void 0;
      this.#flush();
    }, Math.max(0, time - performance.now()));
  }
  #write(frame) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== 1 || this.#state !== "open") return false;
    const text = JSON.stringify(frame);
    socket.send(text);
    this.#written += text.length;
    if (text.length > LARGE_FRAME_CHARS) {
      const now = performance.now();
      this.#graceUntil = Math.min(Math.max(this.#graceUntil, now) + text.length / SLOWEST_UPLINK_BYTES_PER_S * 1e3, now + MAX_GRACE_MS);
      this.#graceRef = frame.ref;
    }
    return true;
  }
  /**
   * Queues the room's join; the joins asked for in one turn (a `Promise.all` of joins) go out
   * together, in one frame.
   */
  #sendJoin(room, state) {
    this.#joinQueue.set(room, state);
    if (this.#joinFlushQueued) return;
    this.#joinFlushQueued = true;
    queueMicrotask(() => {
      this.#joinFlushQueued = false;
      this.#flush();
    });
  }
  #failAll(err) {
    const pending = [
      ...this.#pending.values()
    ];
    this.#pending.clear();
    this.#joinRefs.clear();
    for (const p of pending) p.reject(err);
    for (const room of this.#rooms.values()) {
      for (const w of room.waiters) w.reject(err);
      room.waiters = [];
    }
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) w.reject(err);
  }
  // ---- incoming frames ----
  #handle(frame) {
    const ref = typeof frame.ref === "number" ? frame.ref : void 0;
    if (ref !== void 0 && ref === this.#graceRef) this.#graceUntil = 0;
    switch (frame.type) {
      case "welcome":
        this.#limits = parseLimits(frame.limits) ?? this.#limits;
        this.#serverHeartbeatMs = typeof frame.heartbeat_ms === "number" && frame.heartbeat_ms > 0 ? frame.heartbeat_ms : void 0;
        this.#welcomed(frame.user);
        return;
      case "pong":
        clearTimeout(this.#deadline);
        this.#deadline = void 0;
        return;
      case "message":
        this.#enqueue(frame.room, (room) => this.#deliver(room, frame));
        return;
      case "resync":
        this.#enqueue(frame.room, (room) => {
          const firstSeq = frame.first_seq;
          if (frame.reason === "replay_limited") {
            return this.#fillGap(room, {
              room: frame.room,
              seq: firstSeq
            });
          }
          room.lastSeq = firstSeq - 1;
          this.#emit("resync", frame);
        });
        return;
      case "joined":
        if (ref !== void 0 && this.#joinRefs.has(ref)) {
          this.#answeredJoin(ref, frame.room);
          this.#joined(frame);
          return;
        }
        break;
      case "presence":
        this.#presence(frame);
        return;
      case "typing":
        this.#typingEvent(frame);
        return;
      case "read": {
        const user = frame.user;
        if (!user) return;
        const state = this.#rooms.get(frame.room);
        if (state) moveCursor(state.reads, user.id, frame.seq);
        this.#emit("read", frame);
        return;
      }
      case "removed": {
        const state = this.#rooms.get(frame.room);
        if (state) {
          const err = new ChatError(String(frame.reason), `Removed from "${frame.room}"`);
          this.#dropRoom(frame.room, state, err);
        }
        this.#emit("removed", frame);
        return;
      }
      case "error":
        if (ref !== void 0 && this.#joinRefs.has(ref)) {
          const rooms = this.#joinRefs.get(ref);
          const failed = typeof frame.room === "string" ? rooms.has(frame.room) ? [
            frame.room
          ] : [] : frame.code === "rate_limited" ? [
            ...rooms
          ] : [
            ...rooms
          ].slice(0, 1);
          for (const room of failed) this.#answeredJoin(ref, room);
          for (const room of failed) this.#joinFailed(room, frame);
          return;
        }
        if (ref !== void 0 && this.#pending.has(ref)) {
          this.#requestFailed(ref, frame);
          return;
        }
        this.#emit("error", new ChatError(String(frame.code), String(frame.message)));
        return;
    }
    if (ref !== void 0) {
      const pending = this.#pending.get(ref);
      if (pending) {
        this.#pending.delete(ref);
        pending.resolve(frame);
      }
    }
  }
  #requestFailed(ref, frame) {
    const pending = this.#pending.get(ref);
    const code = String(frame.code);
    const again = code === "rate_limited" ? pending.retries < 20 : code === "internal" && pending.retries < 5;
    if (again) {
      pending.retries++;
      pending.sentOn = -1;
      this.#holdUntil = Math.max(this.#holdUntil, performance.now() + this.#retryMs * Math.min(pending.retries, 4));
      this.#flushAt(this.#holdUntil);
      return;
    }
    const room = pending.needsRoom ? this.#rooms.get(pending.needsRoom) : void 0;
    if (code === "not_found" && room && !room.live && (pending.retries < 5 || room.joinRetries > 0)) {
      if (room.joinRetries === 0) pending.retries++;
      pending.sentOn = -1;
      return;
    }
    this.#pending.delete(ref);
    pending.reject(code === "not_found" && pending.dropped ? pending.dropped : new ChatError(code, String(frame.message)));
  }
  #joined(frame) {
    const name = frame.room;
    const state = this.#rooms.get(name);
    if (!state) return;
    state.live = true;
    state.joinRetries = 0;
    state.joinedFrame = frame;
    if (typeof frame.epoch === "number") state.epoch = frame.epoch;
    state.presence = new Map(frame.presence.map((u) => [
      String(u.id),
      u
    ]));
    this.#emit("presence", {
      room: name,
      action: "sync",
      users: this.presence(name)
    });
    if (Array.isArray(frame.reads)) {
      state.reads = /* @__PURE__ */ new Map();
      for (const r of frame.reads) {
        moveCursor(state.reads, r.user_id, r.seq);
      }
      this.#emit("reads", {
        room: name,
        reads: this.reads(name)
      });
    }
    this.#enqueue(name, (room) => {
      if (room.lastSeq === void 0) room.lastSeq = frame.head;
      const waiters = room.waiters;
      room.waiters = [];
      for (const w of waiters) w.resolve(frame);
    });
    this.#flush();
  }
  #joinFailed(name, frame) {
    const state = this.#rooms.get(name);
    if (!state) return;
    const code = String(frame.code);
    if (code === "internal" || code === "rate_limited") {
      state.joinRetries++;
      state.joinSentOn = -1;
      if (state.joinRetries === 5) this.#emit("error", new ChatError(code, String(frame.message)));
      state.joinAfter = performance.now() + this.#retryMs * Math.min(state.joinRetries, 10);
      this.#joinQueue.set(name, state);
      this.#flushAt(state.joinAfter);
      return;
    }
    const err = new ChatError(code, String(frame.message));
    const waited = state.waiters.length > 0;
    this.#dropRoom(name, state, err);
    if (code === "room_deleted") this.#emit("removed", {
      room: name,
      reason: code
    });
    else if (!waited) this.#emit("error", err);
  }
  /** Notes that the join frame `ref` has its reply for `room`. */
  #answeredJoin(ref, room) {
    const rooms = this.#joinRefs.get(ref);
    rooms.delete(room);
    if (rooms.size === 0) this.#joinRefs.delete(ref);
  }
  /**
   * Forgets a room the client may no longer be in: its join waiters and the requests waiting
   * for it (sends queued while disconnected, say) fail with `err` rather than go out.
   */
  #dropRoom(name, state, err) {
    this.#clearTypers(name, state);
    this.#rooms.delete(name);
    for (const w of state.waiters) w.reject(err);
    for (const [ref, pending] of this.#pending) {
      if (pending.needsRoom !== name) continue;
      if (pending.sentOn === this.#generation) {
        pending.dropped = err;
        continue;
      }
      this.#pending.delete(ref);
      pending.reject(err);
    }
  }
  #enqueue(name, task) {
    const room = this.#rooms.get(name);
    if (!room) return;
    room.chain = room.chain.then(() => {
      if (this.#rooms.get(name) === room) return task(room);
    }).catch((err) => console.error("chat client: delivery failed:", err));
  }
  async #deliver(room, message) {
    if (room.lastSeq !== void 0) {
      if (message.seq <= room.lastSeq) return;
      if (message.seq > room.lastSeq + 1) await this.#fillGap(room, message);
      if (this.#rooms.get(message.room) !== room) return;
    }
    if (room.lastSeq !== void 0 && message.seq <= room.lastSeq) return;
    room.lastSeq = message.seq;
    this.#emit("message", message);
  }
  /**
   * Runs one gap's history read after the others': gaps in many rooms at once (a rejoin past the
   * server's replay limit) would otherwise send a burst of requests the rate limit refuses.
   */
  #fillTurn(read) {
    const run = this.#fills.then(read, read);
    this.#fills = run.catch(() => {
    });
    return run;
  }
  /** The server promises no gaps; should one appear anyway, read it back before going on. */
  async #fillGap(room, upTo) {
    while (room.lastSeq !== void 0 && room.lastSeq + 1 < upTo.seq) {
      let page;
      try {
        const after = room.lastSeq;
        page = await this.#fillTurn(() => this.history(upTo.room, {
          after,
          limit: Math.min(200, upTo.seq - after - 1)
        }));
      } catch {
        if (this.#rooms.get(upTo.room) !== room) return;
        room.lastSeq = upTo.seq - 1;
        this.#emit("resync", {
          room: upTo.room,
          reason: "history_unavailable",
          first_seq: upTo.seq,
          head: upTo.seq
        });
        return;
      }
      if (this.#rooms.get(upTo.room) !== room) return;
      const older = page.messages.filter((m) => m.seq < upTo.seq && m.seq > room.lastSeq);
      const first = older[0]?.seq ?? upTo.seq;
      let jump = first > room.lastSeq + 1 && room.lastSeq > 0 && await this.#stored(upTo.room, room.lastSeq);
      if (this.#rooms.get(upTo.room) !== room) return;
      const skip = (next) => {
        if (next <= room.lastSeq + 1) return;
        room.lastSeq = next - 1;
        if (jump) return;
        this.#emit("resync", {
          room: upTo.room,
          reason: "history_truncated",
          first_seq: next,
          head: upTo.seq
        });
      };
      for (const m of older) {
        skip(m.seq);
        room.lastSeq = m.seq;
        jump = true;
        this.#emit("message", m);
      }
      if (older.length === 0) skip(upTo.seq);
    }
  }
  /** Whether `room`'s history still has the message at `seq` (false when it cannot be read). */
  async #stored(room, seq) {
    try {
      const page = await this.#fillTurn(() => this.history(room, {
        after: seq - 1,
        limit: 1
      }));
      return page.messages[0]?.seq === seq;
    } catch {
      return false;
    }
  }
  #presence(frame) {
    const name = frame.room;
    const state = this.#rooms.get(name);
    if (!state || !frame.user) return;
    const user = frame.user;
    const action = frame.action === "leave" ? "leave" : "join";
    if (action === "join") state.presence.set(String(user.id), user);
    else state.presence.delete(String(user.id));
    this.#emit("presence", {
      room: name,
      action,
      user,
      users: this.presence(name)
    });
  }
  #typingEvent(frame) {
    const name = frame.room;
    const state = this.#rooms.get(name);
    if (!state || !frame.user) return;
    const user = frame.user;
    const key = String(user.id);
    clearTimeout(state.typers.get(key)?.timer);
    const isTyping = frame.is_typing === true;
    if (isTyping) {
      const timer = setTimeout(() => {
        state.typers.delete(key);
        this.#emit("typing", {
          room: name,
          user,
          is_typing: false,
          typers: this.typers(name)
        });
      }, TYPING_EXPIRY_MS);
      state.typers.set(key, {
        user,
        timer
      });
    } else {
      state.typers.delete(key);
    }
    this.#emit("typing", {
      room: name,
      user,
      is_typing: isTyping,
      typers: this.typers(name)
    });
  }
  /** Others' typing states end with the socket that brought them: nobody renews them now. */
  #clearTypers(name, room) {
    for (const t of room.typers.values()) clearTimeout(t.timer);
    clearTimeout(room.typingIdle);
    const had = [
      ...room.typers.values()
    ];
    room.typers.clear();
    for (const t of had) {
      this.#emit("typing", {
        room: name,
        user: t.user,
        is_typing: false,
        typers: []
      });
    }
  }
  #newRoom(since) {
    return {
      lastSeq: since,
      joinSentOn: -1,
      joinAfter: 0,
      joinRetries: 0,
      live: false,
      presence: /* @__PURE__ */ new Map(),
      reads: /* @__PURE__ */ new Map(),
      typers: /* @__PURE__ */ new Map(),
      chain: Promise.resolve(),
      waiters: [],
      typingSentAt: -Infinity
    };
  }
  #emit(type, event) {
    for (const listener of this.#listeners.get(type) ?? []) {
      try {
        listener(event);
      } catch (err) {
        console.error(`chat client: ${type} listener failed:`, err);
      }
    }
  }
  async #sendInline(room, file, blob, clientId, options) {
    const total = blob.size;
    const report = (loaded) => options.onProgress?.({
      loaded,
      total,
      via: "inline"
    });
    report(0);
    const socket = this.#socket;
    const before = socket?.bufferedAmount ?? 0;
    let seen = false;
    const poll = setInterval(() => {
      if (!socket || this.#socket !== socket) return;
      const left = Math.max(0, socket.bufferedAmount - before) * 3 / 4;
      if (left > 0) seen = true;
      if (seen) report(Math.max(0, Math.min(total, Math.round(total - left))));
    }, 100);
    try {
      const ack = await this.send(room, {
        body: options.body,
        files: [
          file
        ],
        clientId
      });
      report(total);
      return ack;
    } finally {
      clearInterval(poll);
    }
  }
};
function fileName(file) {
  if (file instanceof Blob) return file.name || "file";
  return file.name;
}
function moveCursor(reads, userId, seq) {
  if (typeof seq !== "number") return;
  const known = reads.get(String(userId));
  if (!known || known.seq < seq) reads.set(String(userId), {
    userId,
    seq
  });
}
var SERVER_REFUSALS = /* @__PURE__ */ new WeakSet();
function inlineFrameChars(room, name, size, body, clientId) {
  const frame = {
    type: "send",
    room,
    body: body ?? "",
    client_id: clientId,
    files: [
      {
        name,
        data: ""
      }
    ],
    ref: Number.MAX_SAFE_INTEGER
  };
  return JSON.stringify(frame).length + Math.ceil(size / 3) * 4;
}
function tooLarge(size, max) {
  return new ChatError("frame_too_large", `Message is too large: ${size} characters, the limit is ${max}; send large files one per message (sendFile)`);
}
var burstOf = (framesPerSecond) => Math.max(1, 2 * framesPerSecond - 4);
function parseLimits(value) {
  if (typeof value !== "object" || value === null) return void 0;
  const v = value;
  const limits = {
    maxBodyChars: v.max_body_chars,
    maxFiles: v.max_files,
    maxFileBytes: v.max_file_bytes,
    maxFrameChars: v.max_frame_chars,
    // Servers before it said nothing of their rate: theirs was the default.
    framesPerSecond: v.frames_per_second ?? DEFAULTS.framesPerSecond
  };
  const valid = Object.values(limits).every((n) => typeof n === "number" && n > 0);
  return valid ? limits : void 0;
}
function toBlob(file) {
  if (file instanceof Blob) return file;
  return file.data instanceof Blob ? file.data : new Blob([
    file.data
  ], {
    type: file.type ?? ""
  });
}
async function encodeFile(file) {
  const name = fileName(file);
  const bytes = !(file instanceof Blob) && file.data instanceof Uint8Array ? file.data : new Uint8Array(await toBlob(file).arrayBuffer());
  return {
    name,
    data: bytesToBase64(bytes)
  };
}
function postWithProgress(url, form, token, progress) {
  const XhrCtor = globalThis.XMLHttpRequest;
  progress(0);
  if (!XhrCtor) {
    return fetch(url, {
      method: "POST",
      body: form,
      headers: {
        authorization: `Bearer ${token}`
      }
    }).then(async (res) => ({
      status: res.status,
      text: await res.text()
    })).catch((err) => {
      throw new ChatError("network", `Upload failed: ${err.message}`);
    });
  }
  return new Promise((resolve, reject) => {
    const xhr = new XhrCtor();
    xhr.open("POST", url);
    xhr.setRequestHeader("authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && e.total > 0) progress(e.loaded / e.total);
    };
    xhr.onload = () => resolve({
      status: xhr.status,
      text: xhr.responseText
    });
    xhr.onerror = () => reject(new ChatError("network", "Upload failed: network error"));
    xhr.onabort = () => reject(new ChatError("network", "Upload aborted"));
    xhr.send(form);
  });
}
export {
  ChatClient,
  ChatError,
  bytesToBase64,
  formatBytes,
  newClientId
};
