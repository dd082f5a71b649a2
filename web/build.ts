/**
 * Builds the browser bundles the server serves: web/app.ts → web/app.js (the page) and
 * client/mod.ts → web/client.js (the client as one ES module). Run `deno run -A web/build.ts`
 * after changing either; the bundles are committed so the quick start needs no build step, and
 * tests/client_test.ts fails when they are stale.
 *
 * @module
 */

/** Each bundle: its entry point and output, relative to the repository root. */
export const BUNDLES = [
  { entry: "web/app.ts", output: "web/app.js" },
  { entry: "client/mod.ts", output: "web/client.js" },
] as const;

/** The repository root. */
export const ROOT = new URL("../", import.meta.url);

const HEADER = (entry: string) =>
  [
    "// deno-fmt-ignore-file",
    "// deno-lint-ignore-file",
    `// Generated from ${entry} by \`deno run -A web/build.ts\`: do not edit by hand.`,
    "",
  ].join("\n");

/** Bundles one entry point with `deno bundle` and returns the JavaScript, header included. */
export async function bundle(entry: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "chat-bundle-" });
  try {
    const out = `${dir}/out.js`;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "browser", "--format", "esm", "-o", out, entry],
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    if (code !== 0) {
      throw new Error(`deno bundle ${entry} failed:\n${new TextDecoder().decode(stderr)}`);
    }
    return HEADER(entry) + await Deno.readTextFile(out);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  for (const { entry, output } of BUNDLES) {
    const js = await bundle(entry);
    await Deno.writeTextFile(new URL(output, ROOT), js);
    console.log(`${output}: ${js.length} bytes from ${entry}`);
  }
}
