/**
 * Settings the server can only try at startup fail it with one line naming them, not a stack; the
 * line it prints once it listens names a URL one can open.
 */

import * as jose from "jose";
import { generateKeyPairSync } from "node:crypto";
import { join } from "node:path";
import { assert, assertEquals } from "./assert.ts";

/**
 * Starts main.ts (or serve.ts under `deno serve`) as production does, until it exits; `wrap` is
 * a command and its arguments that run it.
 */
async function start(
  env: Record<string, string>,
  entry: "main" | "serve" = "main",
  wrap: string[] = [],
  cwd?: string,
): Promise<{ code: number; stderr: string; dataDir: string }> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-startup-" });
  const path = new URL(`../${entry}.ts`, import.meta.url).pathname;
  const [command, ...before] = [...wrap, Deno.execPath()];
  try {
    const out = await new Deno.Command(command, {
      args: [
        ...before,
        ...(entry === "main"
          ? ["run", "-A", path]
          : ["serve", "-A", "--port", "0", "--host", "127.0.0.1", path]),
      ],
      env: {
        DATA_DIR: dataDir,
        PORT: "0",
        NO_COLOR: "1",
        // `$DATA_DIR` in a value stands for the fresh data directory.
        ...Object.fromEntries(
          Object.entries(env).map(([k, v]) => [k, v.replaceAll("$DATA_DIR", dataDir)]),
        ),
      },
      cwd,
      stdout: "null",
      stderr: "piped",
      // A server that starts instead of refusing is killed, and the test fails on its code.
      signal: AbortSignal.timeout(15_000),
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr), dataDir };
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test("startup: a HOST, DATABASE_URL, KV_PATH or DATA_DIR the server cannot use stops it with a message naming it", async () => {
  const cases: [Record<string, string>, string][] = [
    [{ HOST: "nonexistent.invalid" }, "Could not start: Cannot listen on HOST=nonexistent.invalid"],
    [
      { DATABASE_URL: "mysql://x" },
      'Could not start: DATABASE_URL has unsupported scheme "mysql:"',
    ],
    [
      { DATABASE_URL: "postgres://u:secret@127.0.0.1:1/db" },
      "Could not start: DATABASE_URL: the directory could not be opened: ",
    ],
    [
      { KV_PATH: "$DATA_DIR/no/such/dir/chat.kv" },
      "Could not start: KV_PATH ($DATA_DIR/no/such/dir/chat.kv) could not be opened: ",
    ],
    [
      { DATA_DIR: "/etc/hostname" },
      "Could not start: DATA_DIR (/etc/hostname) is not a usable directory: ",
    ],
  ];
  for (const [env, expected] of cases) {
    const { code, stderr, dataDir } = await start(env);
    assertEquals(code, 1, stderr);
    assert(stderr.includes(expected.replaceAll("$DATA_DIR", dataDir)), stderr);
    assert(!/\n\s+at /.test(stderr), `a stack trace: ${stderr}`);
    assert(!stderr.includes("secret@"), `the password: ${stderr}`);
  }
});

Deno.test("startup: KV_PATH=:memory: under deno serve, whose isolates would each open a store of their own, stops it naming KV_PATH", async () => {
  const { code, stderr } = await start({ KV_PATH: ":memory:" }, "serve");
  assertEquals(code, 1, stderr);
  assert(stderr.includes("KV_PATH=:memory: cannot be used under deno serve"), stderr);
  assert(stderr.includes("its own in-memory store"), stderr);
  assert(!/\n\s+at /.test(stderr), `a stack trace: ${stderr}`);
});

Deno.test("startup: a JWT_PUBLIC_KEY the server cannot use (a certificate, a curve it does not take) stops it naming JWT_PUBLIC_KEY; one on P-384 checks ES384 tokens", async () => {
  const pem = (curve: string) =>
    generateKeyPairSync("ec", { namedCurve: curve }).publicKey
      .export({ type: "spki", format: "pem" }) as string;
  const certificate = await Deno.readTextFile(
    new URL("./fixtures/idp_certificate.pem", import.meta.url),
  );
  const cases: [string, string][] = [
    [certificate, "Could not start: JWT_PUBLIC_KEY is an X.509 certificate, not a public key"],
    [pem("secp256k1"), "Could not start: JWT_PUBLIC_KEY has an unsupported key type, EC on the"],
  ];
  for (const [key, expected] of cases) {
    const { code, stderr } = await start({ JWT_PUBLIC_KEY: key });
    assertEquals(code, 1, stderr);
    assert(stderr.includes(expected), stderr);
    assert(!/\n\s+at /.test(stderr), `a stack trace: ${stderr}`);
  }
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
  const { startTestServer, TestClient } = await import("./helpers.ts");
  const server = await startTestServer({
    JWT_SECRET: "",
    JWT_PUBLIC_KEY: publicKey.export({ type: "spki", format: "pem" }) as string,
  });
  try {
    const token = await new jose.SignJWT({ sub: "1", username: "one" })
      .setProtectedHeader({ alg: "ES384" }).setExpirationTime("1h").sign(privateKey);
    const client = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await client.next((f) => f.type === "welcome");
    await client.close();
  } finally {
    await server.close();
  }
});

Deno.test("startup: the line saying where the server listens names a URL one can open: an IPv6 HOST in brackets, once, whether given with them or not; on every interface (0.0.0.0, [::]), it says so", async () => {
  const { spawnServer } = await import("./server_process.ts");
  const hosts = [
    ["::1", "http://[::1]:"],
    ["[::1]", "http://[::1]:"],
    ["0.0.0.0", "http://127.0.0.1:"],
    ["[::]", "http://127.0.0.1:"],
  ];
  for (const [host, said] of hosts) {
    const dataDir = await Deno.makeTempDir({ prefix: "chat-host-" });
    const server = spawnServer({ DATA_DIR: dataDir, HOST: host });
    try {
      const url = await server.url();
      assert(url.startsWith(said), server.log());
      const res = await fetch(`${url}/healthz`);
      assertEquals(res.status, 200);
      await res.body?.cancel();
      assertEquals(
        server.log().includes(`(HOST=${host}: every interface; data in ${dataDir})`),
        said === "http://127.0.0.1:",
        server.log(),
      );
    } finally {
      await server.kill("SIGTERM");
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  }
});

/** What a DATABASE_URL that reads more than one way is refused with, quoting none of it. */
const AMBIGUOUS = "DATABASE_URL is not a valid URL: a user name or password holding @ / ? # : " +
  "or a space must be %-escaped (@ as %40, / as %2F, ? as %3F, # as %23, : as %3A, a space as " +
  "%20), and an @ in the database name too (as %40)";

Deno.test("startup: a DATABASE_URL whose password holds an unescaped # / or ?, an @ before it too, is refused, saying to %-escape it, without printing any of it (main.ts and deno serve)", async () => {
  // With an @ before the cut, what precedes it parses as credentials and what follows it as a
  // host. The last is cut where its port would be: it parses, as another server's address.
  const passwords = ["Pw@LEAKED#rest", "Pw@LEAKED.invalid/rest", "Pw@LEAKED.invalid?rest"];
  passwords.push("s3cr3t#Pw-LEAKED", "s3cr3t/Pw-LEAKED", "1234/Pw-LEAKED");
  for (const password of passwords) {
    const env = {
      DATABASE_URL: `postgres://chat:${password}@db.internal:5432/chat`,
      DATABASE_TIMEOUT_MS: "1000",
    };
    const started = await Promise.all([start(env, "main"), start(env, "serve")]);
    for (const [i, { code, stderr }] of started.entries()) {
      const what = `${i === 0 ? "main" : "serve"}, ${password}: ${stderr}`;
      assertEquals(code, 1, what);
      assert(!/leaked/i.test(stderr), `the password is printed: ${what}`);
      // main.ts says it could not start.
      assertEquals(stderr.trimEnd().replace(/^Could not start: /, ""), AMBIGUOUS, what);
    }
  }
});

Deno.test("startup: a DATABASE_URL with its password in the query, an @ in it, reaches the driver and is never printed (main.ts and deno serve)", async () => {
  for (const entry of ["main", "serve"] as const) {
    const { code, stderr } = await start({
      DATABASE_URL: "postgres://127.0.0.1:1/chat?user=app&password=s3cr@t-LEAKED",
      DATABASE_TIMEOUT_MS: "1000",
    }, entry);
    const what = `${entry}: ${stderr}`;
    assertEquals(code, 1, what);
    assert(!stderr.includes("LEAKED"), `the password is printed: ${what}`);
    // Refused by the Postgres that is not there, not by the server.
    assert(
      stderr.includes("DATABASE_URL: the directory could not be opened: connect ECONNREFUSED"),
      what,
    );
  }
});

Deno.test("startup: a DATABASE_URL whose database name holds an unescaped @ is refused, saying to write it %40, without printing any of it", async () => {
  const { code, stderr } = await start({
    DATABASE_URL: "postgres://127.0.0.1:1/chat@db?user=app&password=s3cr3t-LEAKED",
  });
  assertEquals(code, 1, stderr);
  assert(!/leaked|chat@db/i.test(stderr), `the URL is printed: ${stderr}`);
  assertEquals(stderr.trimEnd(), `Could not start: ${AMBIGUOUS}`);
});

Deno.test("startup: a MEDIA_DIR that would serve the data directory or the KV file stops the server", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [
      { MEDIA_DIR: "$DATA_DIR" },
      /MEDIA_DIR: \S+ is served over HTTP and must not contain DATA_DIR/,
    ],
    [{ MEDIA_DIR: "$DATA_DIR/.." }, /must not contain DATA_DIR/],
    [{ MEDIA_DIR: "$DATA_DIR/m", KV_PATH: "$DATA_DIR/m/x/chat.kv" }, /must not contain KV_PATH/],
  ];
  for (const [env, expected] of cases) {
    const { code, stderr } = await start(env);
    assertEquals(code, 1, stderr);
    assert(expected.test(stderr), stderr);
    assert(!/\n\s+at /.test(stderr), `a stack trace: ${stderr}`);
  }
});

/**
 * What runs the server as a user whom permissions bind: root without the capabilities that
 * pass over them (setpriv), or nothing for anyone else; undefined where root has no setpriv.
 */
async function boundByPermissions(): Promise<string[] | undefined> {
  if (Deno.uid() !== 0) return [];
  const caps = "-dac_override,-dac_read_search";
  const setpriv = ["setpriv", `--inh-caps=${caps}`, `--bounding-set=${caps}`, "--"];
  const probe = await new Deno.Command(setpriv[0], {
    args: [...setpriv.slice(1), "true"],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  return probe?.success ? setpriv : undefined;
}

const permissions = await boundByPermissions();

Deno.test(
  `startup: a MEDIA_DIR that can never take a file (a file, under a file, a loop of links, a directory the server may not write to or under one) stops the server with one line naming MEDIA_DIR and why${
    permissions ? "" : " (permissions SKIPPED: root without setpriv)"
  }`,
  async () => {
    const base = await Deno.makeTempDir({ prefix: "chat-media-startup-" });
    try {
      const file = `${base}/file.txt`;
      await Deno.writeTextFile(file, "not a directory");
      const locked = `${base}/locked`;
      await Deno.mkdir(locked);
      await Deno.chmod(locked, 0o555);
      const loop = `${base}/loop`;
      await Deno.symlink(loop, loop);
      const cases: [string, RegExp, string[]][] = [
        [file, /is not a usable directory: it exists and is not a directory$/, []],
        [`${file}/media`, /is not a usable directory: Not a directory \(os error 20\)/, []],
        [loop, /is not a usable directory: Too many levels of symbolic links \(os error 40\)/, []],
        [
          `${loop}/media`,
          /is not a usable directory: Too many levels of symbolic links \(os error 40\)/,
          [],
        ],
      ];
      if (permissions) {
        cases.push(
          [
            locked,
            /: files cannot be created in it: Permission denied \(os error 13\)$/,
            permissions,
          ],
          [
            `${locked}/media`,
            /is not a usable directory: Permission denied \(os error 13\)/,
            permissions,
          ],
        );
      }
      for (const [MEDIA_DIR, expected, wrap] of cases) {
        const { code, stderr } = await start({ MEDIA_DIR }, "main", wrap);
        assertEquals(code, 1, stderr);
        const lines = stderr.trimEnd().split("\n");
        assertEquals(lines.length, 1, stderr);
        assert(lines[0].startsWith(`Could not start: MEDIA_DIR (${MEDIA_DIR}) `), stderr);
        assert(expected.test(lines[0]), stderr);
      }
      // Nothing was left in the directory the server could not write to.
      assertEquals([...Deno.readDirSync(locked)], []);
    } finally {
      await Deno.remove(base, { recursive: true });
    }
  },
);

Deno.test("startup: a DATA_DIR the server creates is its owner's alone (history, directory, dev secret)", async () => {
  const base = await Deno.makeTempDir({ prefix: "chat-mode-" });
  const { startTestServer } = await import("./helpers.ts");
  const server = await startTestServer({ DATA_DIR: `${base}/fresh/data` });
  try {
    for (const dir of [`${base}/fresh`, `${base}/fresh/data`]) {
      assertEquals(((await Deno.stat(dir)).mode ?? 0) & 0o777, 0o700, dir);
    }
  } finally {
    await server.close();
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

Deno.test("startup: a DATA_DIR that `deno task token` created before the first start is owner-only too; KV and SQLite files the start creates elsewhere are its owner's, existing ones and an existing open DATA_DIR are left as they are and named in the log", async () => {
  const base = await Deno.makeTempDir({ prefix: "chat-mode-" });
  const { startTestServer, TestClient } = await import("./helpers.ts");
  const mode = async (path: string) => ((await Deno.stat(path)).mode ?? 0) & 0o777;
  try {
    // The README's order on a fresh checkout: a token first, then the server.
    const dataDir = `${base}/data`;
    const minted = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "token", "--sub", "3", "--rooms", "ticket:1"],
      cwd: new URL("..", import.meta.url).pathname,
      env: { DATA_DIR: dataDir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(minted.code, 0, new TextDecoder().decode(minted.stderr));
    assertEquals(await mode(dataDir), 0o700);
    // The stores outside DATA_DIR, in a folder others may list: one file new, one already there.
    const shared = `${base}/shared`;
    await Deno.mkdir(shared);
    await Deno.chmod(shared, 0o755);
    await Deno.writeFile(`${shared}/existing.sqlite3`, new Uint8Array());
    await Deno.chmod(`${shared}/existing.sqlite3`, 0o644);
    const logged: string[] = [];
    const server = await startTestServer({
      DATA_DIR: dataDir,
      JWT_SECRET: "",
      KV_PATH: `${shared}/chat.kv`,
      DATABASE_URL: `${shared}/existing.sqlite3`,
    }, { log: (line) => logged.push(line) });
    try {
      // The token works: it was signed with the development secret the server reads.
      const token = new TextDecoder().decode(minted.stdout).trim();
      const ws = await TestClient.open(`${server.wsUrl}/ws/ticket/1/?token=${token}`);
      ws.send({ body: "history" });
      await ws.next();
      await ws.close();
      assertEquals(await mode(`${shared}/chat.kv`), 0o600);
      assertEquals(await mode(`${shared}/existing.sqlite3`), 0o644);
      assertEquals(logged.filter((l) => l.includes("can be read by other users")), []);
    } finally {
      await server.close();
    }
    // A DATA_DIR the operator made open is theirs to change; the log says what it exposes.
    const open = `${base}/open`;
    await Deno.mkdir(open);
    await Deno.chmod(open, 0o755);
    const again = await startTestServer({ DATA_DIR: open }, { log: (line) => logged.push(line) });
    await again.close();
    assertEquals(await mode(open), 0o755);
    assert(
      logged.some((l) => l.includes(`DATA_DIR (${open}) can be read by other users (mode 755)`)),
    );
  } finally {
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

/** Runs `deno task start:parallel`'s script with `env` until it exits, or until `until` is seen. */
async function startParallel(
  env: Record<string, string>,
  until?: RegExp,
): Promise<{ code: number; output: string }> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-parallel-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-run",
      "--allow-env",
      "--allow-read",
      new URL("../scripts/start_parallel.ts", import.meta.url).pathname,
    ],
    env: { DATA_DIR: dataDir, DENO_JOBS: "1", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const pumps = [child.stdout, child.stderr].map(async (stream) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      output += text;
      if (until?.test(output)) child.kill("SIGTERM");
    }
  });
  // One that neither refuses nor says the awaited line is stopped, and its test fails.
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    const { code } = await child.status;
    await Promise.all(pumps);
    return { code, output };
  } finally {
    clearTimeout(timer);
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

Deno.test("startup: start:parallel refuses a bad PORT as main.ts does, naming PORT, not deno serve's --port; an IPv6 HOST without brackets is taken as main.ts takes it", async () => {
  for (const port of ["abc", "70000", "-1"]) {
    const parallel = await startParallel({ PORT: port });
    const main = await start({ PORT: port });
    assertEquals(parallel.code, 1, parallel.output);
    assertEquals(
      parallel.output.trimEnd(),
      `Invalid configuration:\n  PORT: expected a port from 0 to 65535, got "${port}"`,
    );
    assertEquals(parallel.output, main.stderr);
  }
  const listening = /Listening on http:\/\/\[::1\]:\d+/;
  const { output } = await startParallel({ PORT: "0", HOST: "::1" }, listening);
  assert(listening.test(output), output);
});

Deno.test("startup: DATABASE_URL=sqlite:///x, where /x does not exist but x in the working directory does (SQLAlchemy's reading), stops it in one line naming both readings", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "chat-sqlite-url-" });
  const name = `three-slashes-${crypto.randomUUID()}.sqlite3`;
  try {
    await Deno.writeTextFile(join(cwd, name), "");
    const { code, stderr } = await start({ DATABASE_URL: `sqlite:///${name}` }, "main", [], cwd);
    assertEquals(code, 1, stderr);
    assertEquals(stderr.trimEnd().split("\n").length, 1, stderr);
    assert(
      stderr.startsWith(
        `Could not start: DATABASE_URL names /${name} (this server reads sqlite:///`,
      ),
      stderr,
    );
    assert(stderr.includes(`while ${join(cwd, name)} does (SQLAlchemy`), stderr);
    assert(!(await Deno.stat(`/${name}`).then(() => true, () => false)), "made at the root");
    assertEquals((await Deno.stat(join(cwd, name))).size, 0, "the file was opened");
  } finally {
    await Deno.remove(cwd, { recursive: true });
    // What a server that reads it otherwise would have made.
    for (const suffix of ["", "-wal", "-shm"]) {
      await Deno.remove(`/${name}${suffix}`).catch(() => {});
    }
  }
});
