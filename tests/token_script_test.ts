/** `deno task token`, the README's way to mint a development token, run as the README shows it. */

import * as jose from "jose";
import { assertEquals } from "./assert.ts";

const SECRET = "token-script-secret-token-script-secret";

async function mint(
  args: string[],
  env: Record<string, string> = {},
): Promise<jose.JWTPayload> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-token-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "token", ...args],
      cwd: new URL("..", import.meta.url).pathname,
      env: { DATA_DIR: dataDir, JWT_SECRET: SECRET, NO_COLOR: "1", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    const { payload } = await jose.jwtVerify(text, new TextEncoder().encode(SECRET), {
      issuer: env.JWT_ISSUER,
      audience: env.JWT_AUDIENCE,
    });
    return payload;
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
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
