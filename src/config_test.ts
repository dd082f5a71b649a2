import { assertEquals, assertMatch, assertRejects, assertThrows } from "../tests/assert.ts";
import { loadConfig, urlHost } from "./config.ts";
import { maxEventSize, maxFrameSize, maxQueuedBytes } from "./dialects/context.ts";
import { uploadMemoryBytes } from "./http/api/framework.ts";

Deno.test("loadConfig() fills the documented defaults", () => {
  const c = loadConfig({});
  assertEquals([c.port, c.host, c.maxFileBytes, c.chatPathProtocol], [
    8000,
    "0.0.0.0",
    10485760,
    "conversations",
  ]);
  assertEquals(c.mediaDir, `${c.dataDir}/media`);
  assertEquals(c.allowedOrigins, []);
});

Deno.test("loadConfig() names every bad value", async () => {
  const err = await assertRejects(() =>
    loadConfig({
      PORT: "eighty",
      MAX_FILE_BYTES: "-1",
      PUBLIC_URL: "not a url",
      CHAT_PATH_PROTOCOL: "x",
    })
  );
  for (const name of ["PORT", "MAX_FILE_BYTES", "PUBLIC_URL", "CHAT_PATH_PROTOCOL"]) {
    assertEquals(err.message.includes(name), true, err.message);
  }
});

Deno.test("loadConfig() splits origins and trims trailing slashes from URLs; refuses what is not an origin", async () => {
  const c = loadConfig({
    ALLOWED_ORIGINS: "https://a.example/, https://b.example",
    PUBLIC_URL: "https://chat.example/",
  });
  assertEquals(c.allowedOrigins, ["https://a.example", "https://b.example"]);
  assertEquals(c.publicUrl, "https://chat.example");
  assertEquals(loadConfig({ ALLOWED_ORIGINS: "http://localhost:5173" }).allowedOrigins, [
    "http://localhost:5173",
  ]);
  for (const bad of ["notaurl", "https://a.example/app", "ftp://a.example"]) {
    const err = await assertRejects(() =>
      loadConfig({ ALLOWED_ORIGINS: `https://ok.example,${bad}` })
    );
    assertEquals(
      err.message.includes(`ALLOWED_ORIGINS: "${bad}" is not an origin`),
      true,
      err.message,
    );
  }
  // No page's Origin holds a star: a wildcard would match nothing and refuse every subdomain.
  for (const wildcard of ["https://*.example.com", "http://app.*.example:8080", "https://*"]) {
    const err = await assertRejects(() => loadConfig({ ALLOWED_ORIGINS: wildcard }));
    assertMatch(err.message, /ALLOWED_ORIGINS: ".*": a \* matches no origin .*list each origin/);
  }
});

Deno.test("loadConfig() reads TRUST_PROXY as 1 or 0 (true or false), off unless set, and nothing else", async () => {
  assertEquals(loadConfig({}).trustProxy, false);
  for (const on of ["1", "true", "TRUE", " 1 "]) {
    assertEquals(loadConfig({ TRUST_PROXY: on }).trustProxy, true);
  }
  for (const off of ["0", "false", ""]) {
    assertEquals(loadConfig({ TRUST_PROXY: off }).trustProxy, false);
  }
  for (const bad of ["yes", "2", "on", "nginx"]) {
    const err = await assertRejects(() => loadConfig({ TRUST_PROXY: bad }));
    assertEquals(
      err.message.includes(`TRUST_PROXY: expected 1 or 0 (true or false), got "${bad}"`),
      true,
      err.message,
    );
  }
});

Deno.test("loadConfig() takes PUBLIC_URL as an http(s) base URL only, and JWT_JWKS_URL over https (http for this machine)", async () => {
  assertEquals(
    loadConfig({ PUBLIC_URL: "https://chat.example/chat/" }).publicUrl,
    "https://chat.example/chat",
  );
  assertEquals(
    loadConfig({ PUBLIC_URL: "http://localhost:8000" }).publicUrl,
    "http://localhost:8000",
  );
  // Each of these was taken, and every absolute file URL handed out was broken.
  const badBases: [string, string][] = [
    [
      "chat.example.com:443",
      'expected an http(s) URL like https://chat.example.com, got "chat.example.com:443"',
    ],
    [
      "ftp://chat.example",
      'expected an http(s) URL like https://chat.example.com, got "ftp://chat.example"',
    ],
    ["https://chat.example/?v=1", 'expected no query or fragment, got "https://chat.example/?v=1"'],
    ["https://chat.example/#top", 'expected no query or fragment, got "https://chat.example/#top"'],
    [
      "https://user:secret@chat.example",
      'expected no user name or password in it, got "https://…@chat.example"',
    ],
    // Empty, yet kept: every file URL would have been `https://chat.example/?/media/...`.
    ["https://chat.example/?", 'expected no query or fragment, got "https://chat.example/?"'],
    ["https://chat.example/#", 'expected no query or fragment, got "https://chat.example/#"'],
    [
      "ftp://svc:secret@chat.example",
      'expected no user name or password in it, got "ftp://…@chat.example"',
    ],
    // A password holding `#` (which new URL cannot read past), or no scheme at all.
    [
      "https://svc:p#ss-secret@chat.example",
      'expected no user name or password in it, got "https://…@chat.example"',
    ],
    ["svc:secret@chat.example", 'expected no user name or password in it, got "…@chat.example"'],
    // Parsed as a port and a fragment or query: only the raw text shows the password.
    [
      "https://svc:2024/#secret@chat.example",
      'expected no user name or password in it, got "https://…@chat.example"',
    ],
    [
      "https://svc:2024/?secret@chat.example",
      'expected no user name or password in it, got "https://…@chat.example"',
    ],
  ];
  for (const [value, message] of badBases) {
    const err = await assertRejects(() => loadConfig({ PUBLIC_URL: value }));
    assertEquals(err.message.includes(`PUBLIC_URL: ${message}`), true, err.message);
    assertEquals(err.message.includes("secret"), false, err.message);
  }
  // An `@` in the path of a real host is no password.
  assertEquals(
    loadConfig({ PUBLIC_URL: "https://social.example.com/@support/chat" }).publicUrl,
    "https://social.example.com/@support/chat",
  );
  for (
    const ok of [
      "https://cdn.example.net/npm/@acme/keys@1.2.0/jwks.json",
      "https://idp.example/jwks.json",
      "http://127.0.0.1:9/jwks.json",
      "http://localhost/jwks",
      "http://[::1]:8080/jwks",
    ]
  ) {
    assertEquals(loadConfig({ JWT_JWKS_URL: ok }).jwtJwksUrl, ok);
  }
  for (
    const [value, message] of [
      [
        "http://idp.example/jwks.json",
        'expected https (http only for localhost), got "http://idp.example"',
      ],
      [
        "idp.example/jwks.json",
        "expected an http(s) URL like https://idp.example.com/.well-known/jwks.json",
      ],
      ["file:///etc/jwks.json", "expected an http(s) URL like"],
      ["https://svc:secret@idp.example/jwks", "expected no user name or password in it"],
      [
        "ftp://svc:secret@idp.example/jwks",
        'expected no user name or password in it, got "ftp://…@idp.example/jwks"',
      ],
      [
        "https://svc:2024/secret@idp.example.com/jwks",
        'expected no user name or password in it, got "https://…@idp.example.com/jwks"',
      ],
    ]
  ) {
    const err = await assertRejects(() => loadConfig({ JWT_JWKS_URL: value }));
    assertEquals(err.message.includes(`JWT_JWKS_URL: ${message}`), true, err.message);
    assertEquals(err.message.includes("secret"), false, err.message);
  }
});

Deno.test("loadConfig() leaves frame memory unbounded by default, takes a byte count, refuses the rest", async () => {
  assertEquals(loadConfig({}).frameMemoryBudgetBytes, 0);
  assertEquals(
    loadConfig({ FRAME_MEMORY_BUDGET_BYTES: "268435456" }).frameMemoryBudgetBytes,
    2 ** 28,
  );
  const err = await assertRejects(() => loadConfig({ FRAME_MEMORY_BUDGET_BYTES: "1e9" }));
  assertEquals(
    err.message.includes(
      'FRAME_MEMORY_BUDGET_BYTES: expected a whole number (0 turns the bound off), got "1e9"',
    ),
    true,
    err.message,
  );
});

Deno.test("loadConfig() reads when commits pause: the CPU share and the interval, with the store's defaults", async () => {
  const defaults = loadConfig({});
  assertEquals(defaults.commitPauseAboveCpu, 0.85);
  assertEquals(defaults.commitIntervalMs, 2);
  const always = loadConfig({ COMMIT_PAUSE_CPU_PERCENT: "0", COMMIT_INTERVAL_MS: "5" });
  assertEquals([always.commitPauseAboveCpu, always.commitIntervalMs], [0, 5]);
  const never = loadConfig({ COMMIT_PAUSE_CPU_PERCENT: "150", COMMIT_INTERVAL_MS: "0" });
  assertEquals([never.commitPauseAboveCpu, never.commitIntervalMs], [1.5, 0]);
  const err = await assertRejects(() =>
    loadConfig({ COMMIT_PAUSE_CPU_PERCENT: "0.5", COMMIT_INTERVAL_MS: "-1" })
  );
  for (
    const line of [
      'COMMIT_PAUSE_CPU_PERCENT: expected a whole number (0 always pauses), got "0.5"',
      'COMMIT_INTERVAL_MS: expected a whole number (0 never pauses), got "-1"',
    ]
  ) assertEquals(err.message.includes(line), true, err.message);
});

/** Characters of `base64` characters wrapped every 76, as MIME writes it, in a JSON string. */
const wrapped = (base64: number) => base64 + Math.ceil(base64 / 76) * 4;

Deno.test("loadConfig() bounds a socket's waiting frames at four of the largest unless told a positive byte count, never under one and 64 KiB", async () => {
  const c = loadConfig({ MAX_FILE_BYTES: "3000000" });
  assertEquals(c.inboundQueueBytes, undefined);
  assertEquals(maxQueuedBytes(c), 4 * maxFrameSize(c));
  // A file's base64 with room for a line break (4 characters in JSON) every 76, and 64 KiB.
  assertEquals(maxQueuedBytes(c), 4 * (wrapped(4_000_000) + 65_536));
  assertEquals(maxQueuedBytes(loadConfig({ INBOUND_QUEUE_BYTES: "50000000" })), 50_000_000);
  // Never under one largest frame and 64 KiB: a client waiting for each reply is never refused.
  const small = loadConfig({ MAX_FILE_BYTES: "3000000", INBOUND_QUEUE_BYTES: "1" });
  assertEquals(maxQueuedBytes(small), wrapped(4_000_000) + 2 * 65_536);
  const err = await assertRejects(() => loadConfig({ INBOUND_QUEUE_BYTES: "0" }));
  assertEquals(
    err.message.includes('INBOUND_QUEUE_BYTES: expected a positive whole number, got "0"'),
    true,
    err.message,
  );
});

Deno.test("loadConfig() refuses a MEDIA_DIR that holds the data directory or the KV file, takes one beside or under it", async () => {
  for (
    const env of [
      { DATA_DIR: "/srv/chat", MEDIA_DIR: "/srv/chat" },
      { DATA_DIR: "/srv/chat", MEDIA_DIR: "/srv" },
      { DATA_DIR: "/srv/chat", MEDIA_DIR: "/srv/media", KV_PATH: "/srv/media/chat.kv" },
    ]
  ) {
    const err = await assertRejects(() => loadConfig(env));
    assertEquals(/MEDIA_DIR: .* must not contain/.test(err.message), true, err.message);
  }
  for (
    const MEDIA_DIR of ["/srv/media", "/srv/chat/media", "/srv/chat-media", "/srv/chat/..media"]
  ) {
    assertEquals(loadConfig({ DATA_DIR: "/srv/chat", MEDIA_DIR }).mediaDir, MEDIA_DIR);
  }
});

Deno.test("loadConfig() bounds the upload bytes read at once at four of the largest unless told a positive byte count, never under one", async () => {
  const largest = 10 * 1024 * 1024 + 256 * 1024;
  assertEquals(uploadMemoryBytes(loadConfig({})), 4 * largest);
  assertEquals(uploadMemoryBytes(loadConfig({ UPLOAD_MEMORY_BYTES: "100000000" })), 100000000);
  assertEquals(uploadMemoryBytes(loadConfig({ UPLOAD_MEMORY_BYTES: "1" })), largest);
  assertEquals(
    uploadMemoryBytes(loadConfig({ MAX_FILE_BYTES: "4096", UPLOAD_MEMORY_BYTES: "1" })),
    4096 + 256 * 1024,
  );
  assertEquals([
    loadConfig({}).uploadIdleSeconds,
    loadConfig({ UPLOAD_IDLE_SECONDS: "5" }).uploadIdleSeconds,
  ], [20, 5]);
  const err = await assertRejects(() => loadConfig({ UPLOAD_MEMORY_BYTES: "0" }));
  assertEquals(err.message.includes("UPLOAD_MEMORY_BYTES"), true, err.message);
});

Deno.test("maxEventSize() lets a Socket.IO event carry a message's files, as far as Deno reads one message", () => {
  assertEquals(maxEventSize(loadConfig({})), 64 * 1024 * 1024);
  const small = loadConfig({ MAX_FILE_BYTES: "3000" });
  assertEquals(maxEventSize(small), 10 * wrapped(4000) + 64 * 1024);
  const huge = loadConfig({ MAX_FILE_BYTES: String(60 * 1024 * 1024) });
  assertEquals(maxEventSize(huge), 64 * 1024 * 1024);
  // The queue never refuses one such event with a ping behind it.
  assertEquals(
    maxQueuedBytes(loadConfig({}), maxEventSize(loadConfig({}))),
    64 * 1024 * 1024 + 65536,
  );
});

Deno.test("loadConfig() follows links when it compares MEDIA_DIR with the data, and checks a SQLite DATABASE_URL too", async () => {
  const root = await Deno.makeTempDir({ prefix: "chat-config-" });
  try {
    const data = `${root}/data`;
    await Deno.mkdir(data);
    await Deno.symlink(data, `${root}/public`);
    for (
      const env of [
        { DATA_DIR: data, MEDIA_DIR: `${root}/public` },
        { DATA_DIR: `${root}/public`, MEDIA_DIR: data },
        { DATA_DIR: data, MEDIA_DIR: `${root}/pub`, DATABASE_URL: `${root}/pub/dir.sqlite3` },
        { DATA_DIR: data, MEDIA_DIR: `${root}/pub`, DATABASE_URL: `sqlite:${root}/pub/d.db` },
      ]
    ) {
      const err = await assertRejects(() => loadConfig(env));
      assertEquals(/MEDIA_DIR: .* must not contain/.test(err.message), true, JSON.stringify(env));
    }
    // An in-memory KV or a Postgres directory is no file to serve.
    for (
      const env of [
        { DATA_DIR: data, MEDIA_DIR: root + "/m", KV_PATH: ":memory:" },
        { DATA_DIR: data, MEDIA_DIR: root + "/m", DATABASE_URL: "postgres://u@h/db" },
      ]
    ) {
      assertEquals(loadConfig(env).mediaDir, `${root}/m`);
    }
    assertEquals(
      loadConfig({ DATA_DIR: "/srv/chat", MEDIA_DIR: root, KV_PATH: ":memory:" }).mediaDir,
      root,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadConfig() takes SPACE_RESERVE_MB up to 1024 and refuses more naming the bound, not cutting it", async () => {
  assertEquals(loadConfig({}).spaceReserveMb, 4);
  for (const mb of ["0", "1024"]) {
    assertEquals(loadConfig({ SPACE_RESERVE_MB: mb }).spaceReserveMb, Number(mb));
  }
  const err = await assertRejects(() => loadConfig({ SPACE_RESERVE_MB: "4096" }));
  assertMatch(err.message, /SPACE_RESERVE_MB: expected at most 1024 \(MiB; .*\), got "4096"/);
});

Deno.test("loadConfig() refuses Socket.IO ping settings whose sum a timer cannot hold (the client waits for it)", async () => {
  const err = await assertRejects(() => loadConfig({ SOCKETIO_PING_INTERVAL_MS: "3000000000" }));
  assertEquals(err.message.includes("SOCKETIO_PING_INTERVAL_MS + SOCKETIO_PING_TIMEOUT_MS"), true);
  const longest = loadConfig({
    SOCKETIO_PING_INTERVAL_MS: String(2 ** 31 - 1 - 20_000),
    SOCKETIO_PING_TIMEOUT_MS: "20000",
  });
  assertEquals(longest.socketIoPingIntervalMs, 2 ** 31 - 1 - 20_000);
});

Deno.test("loadConfig() cuts a time setting past what a timer holds (2^31 - 1 ms) to that, for every use of it", () => {
  const long = loadConfig({
    PRESENCE_TTL_SECONDS: "99999999",
    TYPING_TIMEOUT_SECONDS: "3000000",
    DATABASE_TIMEOUT_MS: "3000000000",
    SOCKETIO_AUTH_TIMEOUT_MS: "3000000000",
    COMMIT_INTERVAL_MS: "3000000000",
    UPLOAD_TIMEOUT_SECONDS: "3000000",
  });
  assertEquals(
    [
      long.presenceTtlSeconds,
      long.typingTimeoutSeconds,
      long.databaseTimeoutMs,
      long.socketIoAuthTimeoutMs,
      long.commitIntervalMs,
      long.uploadTimeoutSeconds,
    ],
    [2147483, 2147483, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1, 2147483],
  );
  assertEquals(loadConfig({ PRESENCE_TTL_SECONDS: "600" }).presenceTtlSeconds, 600);
});

Deno.test("loadConfig() refuses a TYPING_TIMEOUT_SECONDS shorter than clients renew typing (every 2 s), under which the indicator flickers", () => {
  for (const short of ["1", "2"]) {
    const err = assertThrows(() => loadConfig({ TYPING_TIMEOUT_SECONDS: short }), Error);
    assertMatch(
      (err as Error).message,
      new RegExp(
        `TYPING_TIMEOUT_SECONDS: expected at least 3 \\(typing is renewed every 2 s.*got "${short}"`,
      ),
    );
  }
  assertEquals(loadConfig({ TYPING_TIMEOUT_SECONDS: "3" }).typingTimeoutSeconds, 3);
});

Deno.test("urlHost brackets an IPv6 HOST once, with brackets given or not, and leaves others", () => {
  assertEquals(["::1", "[::1]", "::", "127.0.0.1", "localhost"].map(urlHost), [
    "[::1]",
    "[::1]",
    "[::]",
    "127.0.0.1",
    "localhost",
  ]);
});
