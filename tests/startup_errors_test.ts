/** Settings the server can only try at startup fail it with one line naming them, not a stack. */

import { assert, assertEquals } from "./assert.ts";

async function start(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  const dataDir = await Deno.makeTempDir({ prefix: "chat-startup-" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname],
      env: { DATA_DIR: dataDir, PORT: "0", NO_COLOR: "1", ...env },
      stdout: "null",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
}

Deno.test("startup: a HOST or DATABASE_URL the server cannot use stops it with a message naming it", async () => {
  const cases: [Record<string, string>, string][] = [
    [{ HOST: "nonexistent.invalid" }, "Could not start: Cannot listen on HOST=nonexistent.invalid"],
    [
      { DATABASE_URL: "mysql://x" },
      'Could not start: DATABASE_URL "mysql://x" has unsupported scheme',
    ],
  ];
  for (const [env, expected] of cases) {
    const { code, stderr } = await start(env);
    assertEquals(code, 1, stderr);
    assert(stderr.includes(expected), stderr);
    assert(!/\n\s+at /.test(stderr), `a stack trace: ${stderr}`);
  }
});
