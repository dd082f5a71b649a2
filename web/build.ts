/**
 * Builds the browser bundles the server serves: web/app.ts → web/app.js (the page) and
 * client/mod.ts → web/client.js (the client as one ES module). Run `deno run -A web/build.ts`
 * after changing either; the bundles are committed so the quick start needs no build step, and
 * tests/client_test.ts fails when they are stale.
 *
 * @module
 */

/**
 * Each bundle: its entry point and output, relative to the repository root. The page does not
 * carry the client a second time: its import of the client module is left out of the bundle and
 * pointed at `./client.js`, which the server serves next to it.
 */
export const BUNDLES: readonly {
  entry: string;
  output: string;
  external?: { specifier: string; url: string };
}[] = [
  {
    entry: "web/app.ts",
    output: "web/app.js",
    external: { specifier: "../client/mod.ts", url: "./client.js" },
  },
  { entry: "client/mod.ts", output: "web/client.js" },
];

/** The repository root. */
export const ROOT = new URL("../", import.meta.url);

const HEADER = (entry: string) =>
  [
    "// deno-fmt-ignore-file",
    "// deno-lint-ignore-file",
    `// Generated from ${entry} by \`deno run -A web/build.ts\`: do not edit by hand.`,
    "",
  ].join("\n");

/** Bundles one entry point of {@link BUNDLES} with `deno bundle`; the JavaScript, header included. */
export async function bundle(entry: string): Promise<string> {
  const external = BUNDLES.find((b) => b.entry === entry)?.external;
  const dir = await Deno.makeTempDir({ prefix: "chat-bundle-" });
  try {
    const out = `${dir}/out.js`;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        "--format",
        "esm",
        ...(external ? ["--external", external.specifier] : []),
        "-o",
        out,
        entry,
      ],
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    if (code !== 0) {
      throw new Error(`deno bundle ${entry} failed:\n${new TextDecoder().decode(stderr)}`);
    }
    let js = await Deno.readTextFile(out);
    if (external) {
      const from = `from ${JSON.stringify(external.specifier)}`;
      if (!js.includes(from)) throw new Error(`${entry}: no import of ${external.specifier}`);
      js = js.replaceAll(from, `from ${JSON.stringify(external.url)}`);
    }
    return HEADER(entry) + js;
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
