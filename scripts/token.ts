/**
 * Prints a signed token for development and tests:
 * `deno task token --sub 3 --username user3 --rooms ticket:1` (a `--` before the options works too).
 * Signs with JWT_SECRET when set, else with the development secret under DATA_DIR; refuses when
 * JWT_PUBLIC_KEY or JWT_JWKS_URL is set, since the server then checks tokens with that key only.
 */

import { parseArgs } from "node:util";
import { jwtKeySources, loadConfig } from "../src/config.ts";
import { ensureDevSecret, signDevToken } from "../src/auth/verifier.ts";

/** Prints `message` (a setting or an option it cannot take) and exits 2, without a stack trace. */
function refuse(message: string): never {
  console.error(message);
  Deno.exit(2);
}

const { values } = (() => {
  try {
    return parseArgs({
      // `deno task token -- --sub 3` hands the script the `--` too (Deno 2.9 does; older ones
      // dropped it), and parseArgs would take everything after it as positionals.
      args: Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args,
      options: {
        sub: { type: "string" },
        username: { type: "string" },
        name: { type: "string" },
        email: { type: "string" },
        phone: { type: "string" },
        company: { type: "string" },
        role: { type: "string" },
        "user-type": { type: "string" },
        rooms: { type: "string", multiple: true },
        expires: { type: "string", default: "12h" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    return refuse(`${(err as Error).message} (deno task token --help lists the options)`);
  }
})();

if (values.help || !values.sub) {
  console.error(
    "Usage: deno task token --sub <user id> [--username u] [--name n] [--email e] [--phone p]\n" +
      "         [--company c] [--role admin|super_admin|support|client] [--user-type t]\n" +
      "         [--rooms ticket:1 --rooms 'chat:*' | --rooms ticket:1,chat:2] [--expires 12h]",
  );
  Deno.exit(values.help ? 0 : 2);
}

const config = (() => {
  try {
    return loadConfig(Deno.env.toObject());
  } catch (err) {
    // The message names the setting; the stack would only hide it.
    return refuse((err as Error).message);
  }
})();
const [key, ...ignored] = jwtKeySources(config);
if (key && key !== "JWT_SECRET") {
  // The server then ignores JWT_SECRET, and would refuse what this signed with it.
  refuse(
    `The server verifies tokens with ${key}` +
      `${ignored.includes("JWT_SECRET") ? " (JWT_SECRET is ignored)" : ""}` +
      ": sign tokens with its private key instead.",
  );
}
const secret = config.jwtSecret ??
  (await ensureDevSecret(config.dataDir).catch((err) =>
    refuse(`DATA_DIR (${config.dataDir}): the development secret: ${(err as Error).message}`)
  )).secret;
const rooms = (values.rooms ?? []).flatMap((r) => r.split(",")).map((r) => r.trim()).filter(
  Boolean,
);
const claims: Record<string, unknown> = {
  sub: values.sub,
  username: values.username,
  name: values.name,
  email: values.email,
  phone: values.phone,
  company: values.company,
  role: values.role,
  user_type: values["user-type"],
  rooms: rooms.length > 0 ? rooms : undefined,
  // The server requires these claims when it is configured with them.
  iss: config.jwtIssuer,
  aud: config.jwtAudience,
};
for (const key of Object.keys(claims)) if (claims[key] === undefined) delete claims[key];
console.log(
  await signDevToken(secret, claims, values.expires).catch((err) =>
    refuse(`--expires "${values.expires}": ${(err as Error).message} (say 12h, 30m or 7d)`)
  ),
);
