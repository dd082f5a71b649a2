/** `deno task token`, the README's way to mint a development token, run as the README shows it. */

import * as jose from "jose";
import { generateKeyPairSync } from "node:crypto";
import { assert, assertEquals } from "./assert.ts";
import { startTestServer } from "./helpers.ts";

const SECRET = "token-script-secret-token-script-secret";

/** Runs `deno task token` with JWT_SECRET set unless `env` says otherwise. */
async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-token-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "token", ...args],
      cwd: new URL("..", import.meta.url).pathname,
      env: { DATA_DIR: dataDir, JWT_SECRET: SECRET, NO_COLOR: "1", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes).trim();
    return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

async function mint(
  args: string[],
  env: Record<string, string> = {},
): Promise<jose.JWTPayload> {
  const out = await run(args, env);
  assertEquals(out.code, 0, out.stderr);
  const { payload } = await jose.jwtVerify(out.stdout, new TextEncoder().encode(SECRET), {
    issuer: env.JWT_ISSUER,
    audience: env.JWT_AUDIENCE,
  });
  return payload;
}

Deno.test("deno task token: the README's command, with or without `--` before the options", async () => {
  for (const args of [["--sub", "3"], ["--", "--sub", "3"]]) {
    const claims = await mint([...args, "--username", "user3", "--rooms", "ticket:1"]);
    assertEquals([claims.sub, claims.username, claims.rooms], ["3", "user3", ["ticket:1"]]);
  }
});

Deno.test("deno task token: signs the issuer and audience the server requires when they are set", async () => {
  const claims = await mint(["--sub", "3"], {
    JWT_ISSUER: "https://issuer.example",
    JWT_AUDIENCE: "chat",
  });
  assertEquals([claims.iss, claims.aud], ["https://issuer.example", "chat"]);
});

Deno.test("deno task token: with JWT_PUBLIC_KEY or JWT_JWKS_URL set, JWT_SECRET beside it too, refuses naming them; the server's start says JWT_SECRET is ignored", async () => {
  const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = publicKey.export({ type: "spki", format: "pem" }) as string;
  const jwks = "https://idp.example.com/.well-known/jwks.json";
  const cases: [Record<string, string>, string][] = [
    [{ JWT_PUBLIC_KEY: pem }, "with JWT_PUBLIC_KEY (JWT_SECRET is ignored)"],
    [{ JWT_JWKS_URL: jwks }, "with JWT_JWKS_URL (JWT_SECRET is ignored)"],
    [{ JWT_PUBLIC_KEY: pem, JWT_SECRET: "" }, "with JWT_PUBLIC_KEY: sign"],
  ];
  for (const [env, expected] of cases) {
    const { code, stderr } = await run(["--sub", "3"], env);
    assertEquals(code, 2, stderr);
    assert(stderr.includes(`The server verifies tokens ${expected}`), stderr);
  }
  const logged: string[] = [];
  const server = await startTestServer({ JWT_SECRET: SECRET, JWT_PUBLIC_KEY: pem }, {
    log: (line) => logged.push(line),
  });
  await server.close();
  assertEquals(logged.filter((l) => l.includes("JWT_SECRET")), [
    "JWT_SECRET is ignored: JWT_PUBLIC_KEY is set, and tokens are checked with it only",
  ]);
});

Deno.test("deno task token: an unknown option, a bad setting, a bad --expires or a DATA_DIR it cannot write is refused with its message alone, no stack trace", async () => {
  const unknown = await run(["--sub", "1", "--bogus"]);
  assertEquals(unknown.code, 2);
  assertEquals(
    unknown.stderr,
    "Unknown option '--bogus' (deno task token --help lists the options)",
  );
  const bad = await run(["--sub", "1"], { HISTORY_LIMIT: "abc" });
  assertEquals(bad.code, 2);
  assertEquals(
    bad.stderr,
    'Invalid configuration:\n  HISTORY_LIMIT: expected a whole number (0 keeps everything), got "abc"',
  );
  const expires = await run(["--sub", "1", "--expires", "tomorrow"]);
  assertEquals(expires.code, 2);
  assertEquals(expires.stderr.split("\n").length, 1, expires.stderr);
  assert(expires.stderr.startsWith('--expires "tomorrow": '), expires.stderr);
  // Under a regular file, no folder can be made for the development secret.
  const file = await Deno.makeTempFile();
  try {
    const unwritable = await run(["--sub", "1"], { JWT_SECRET: "", DATA_DIR: `${file}/data` });
    assertEquals(unwritable.code, 2);
    assertEquals(unwritable.stderr.split("\n").length, 1, unwritable.stderr);
    assert(unwritable.stderr.startsWith(`DATA_DIR (${file}/data): `), unwritable.stderr);
  } finally {
    await Deno.remove(file);
  }
});
