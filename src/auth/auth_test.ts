import * as jose from "jose";
import { generateKeyPairSync } from "node:crypto";
import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { grantMatches } from "../core/rooms.ts";
import { ClaimsAccessPolicy } from "./access.ts";
import { principalFromClaims } from "./principal.ts";
import { requestOrigin } from "./request_origin.ts";
import { findToken, trustedOrigin } from "./token.ts";
import { createVerifier, devSecretPath, ensureDevSecret, KeySetUnavailable } from "./verifier.ts";

Deno.test("principalFromClaims() takes sub, else user_id, else id, numbers as numbers", () => {
  assertEquals(principalFromClaims({ sub: "3" })?.id, 3);
  assertEquals(principalFromClaims({ user_id: 7, username: "x" })?.id, 7);
  assertEquals(principalFromClaims({ id: "abc" })?.id, "abc");
  assertEquals(principalFromClaims({ sub: "007" })?.id, "007");
  assertEquals(principalFromClaims({ email: "a@b" }), null);
  // A claim that names no valid user is nobody: the next claim does not stand in for it.
  assertEquals(principalFromClaims({ sub: "alice\u0000", user_id: 7 }), null);
  assertEquals(principalFromClaims({ sub: "x".repeat(300), id: "admin-bot" }), null);
  assertEquals(principalFromClaims({ sub: "", user_id: 7 })?.id, 7);
  const p = principalFromClaims({
    sub: "5",
    full_name: "John Talker",
    email: "talker@example.com",
    picture: "http://x/p.png",
    user_type: "talker",
    rooms: "ticket:1, chat:*",
  })!;
  assertEquals([p.username, p.name, p.profileImage, p.userType], [
    "John Talker",
    "John Talker",
    "http://x/p.png",
    "talker",
  ]);
  assertEquals(p.grants, ["ticket:1", "chat:*"]);
});

Deno.test("ClaimsAccessPolicy admits admins everywhere and others by grant pattern", async () => {
  const policy = new ClaimsAccessPolicy();
  const user = (extra: object) => ({ id: 1, username: "u", grants: [], ...extra });
  assertEquals(await policy.canAccess(user({ role: "super_admin" }), "ticket:9"), true);
  assertEquals(await policy.canAccess(user({ grants: ["ticket:*"] }), "ticket:9"), true);
  assertEquals(await policy.canAccess(user({ grants: ["ticket:*"] }), "chat:9"), false);
  assertEquals(await policy.canAccess(user({ grants: ["ticket:1"] }), "ticket:10"), false);
  assertEquals(grantMatches("ticket:1*", "ticket:12"), true);
  assertEquals(grantMatches("ticket:1.", "ticket:12"), false);
  // A role however the system we replace spells it; nothing that merely contains one.
  for (const role of ["SuperAdmin", "superadmin", "Super Admin", "super-admin", "Admin"]) {
    assertEquals(await policy.canAccess(user({ role }), "ticket:9"), true, role);
  }
  for (const role of ["Support", "SUPPORT"]) {
    assertEquals(await policy.canAccess(user({ role }), "support-chat:3"), true, role);
    assertEquals(await policy.canAccess(user({ role }), "ticket:9"), false, role);
  }
  for (const role of ["administrator", "not_admin", "admin2", "supporter", ""]) {
    assertEquals(await policy.canAccess(user({ role }), "ticket:9"), false, role);
    assertEquals(await policy.canAccess(user({ role }), "support-chat:3"), false, role);
  }
});

Deno.test("findToken() reads query, bearer header, bearer subprotocol and cookie, and says which", () => {
  const req = (url: string, headers: Record<string, string> = {}) =>
    new Request(`http://h${url}`, { headers });
  const found = (r: Request) => {
    const { token, source } = findToken(r);
    return [token, source];
  };
  assertEquals(found(req("/?token=q", { cookie: "access_token=c" })), ["q", "query"]);
  assertEquals(found(req("/", { cookie: "a=1; access_token=c" })), ["c", "cookie"]);
  assertEquals(found(req("/", { authorization: "Bearer h" })), ["h", "header"]);
  // A stale cookie in the client's jar does not stand in front of a token sent on purpose.
  const both = { cookie: "access_token=c", authorization: "Bearer h" };
  assertEquals(found(req("/", both)), ["h", "header"]);
  const withProtocol = { cookie: "access_token=c", "sec-websocket-protocol": "bearer.p" };
  assertEquals(found(req("/", withProtocol)), ["p", "subprotocol"]);
  const viaProtocol = findToken(req("/", { "sec-websocket-protocol": "bearer.p, chat" }));
  assertEquals(viaProtocol, { token: "p", source: "subprotocol", protocol: "chat" });
  assertEquals(findToken(req("/", { "sec-websocket-protocol": "bearer.p" })).protocol, "bearer.p");
  assertEquals(findToken(req("/")).token, undefined);
});

Deno.test("findToken() takes the cookie only without an Origin, from this host, or from a trusted origin", () => {
  const req = (origin?: string) =>
    new Request("http://chat.example/ws", {
      headers: {
        host: "chat.example",
        cookie: "access_token=c",
        ...(origin ? { origin } : {}),
      },
    });
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (message: string) => warnings.push(message);
  try {
    assertEquals(findToken(req()).token, "c");
    assertEquals(findToken(req("http://chat.example")).token, "c");
    // Another site's page: the browser sends the cookie, the server must not act on it.
    assertEquals(findToken(req("https://evil.example")).token, undefined);
    assertEquals(findToken(req("https://evil.example")).token, undefined);
    assertEquals(findToken(req("https://app.example"), ["https://app.example"]).token, "c");
    assertEquals(findToken(req("null")).token, undefined);
  } finally {
    console.warn = warn;
  }
  // The client sees only 4001: the log says why, once per origin.
  assertEquals(warnings.length, 2, warnings.join("\n"));
  assert(warnings[0].includes('"https://evil.example"') && warnings[0].includes("ALLOWED_ORIGINS"));
  assert(warnings[1].includes('"null"'));
  // A token sent on purpose is not the browser's doing, whatever the Origin.
  const query = new Request("http://chat.example/ws?token=q", {
    headers: { host: "chat.example", origin: "https://evil.example" },
  });
  assertEquals(findToken(query).token, "q");
});

Deno.test("createVerifier() pins algorithms to the key type", async () => {
  const secret = "s".repeat(32);
  const hs = await createVerifier({ secret, issuer: "me" });
  const good = await new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "HS256" })
    .setIssuer("me").setExpirationTime("1h").sign(new TextEncoder().encode(secret));
  assertEquals((await hs.verify(good)).sub, "1");
  // Without `exp` a token would never expire.
  const forever = await new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "HS256" })
    .setIssuer("me").sign(new TextEncoder().encode(secret));
  await assertRejects(() => hs.verify(forever), /"exp" claim/);
  const wrongIssuer = await new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "HS256" })
    .setIssuer("other").setExpirationTime("1h").sign(new TextEncoder().encode(secret));
  await assertRejects(() => hs.verify(wrongIssuer));
  const notYet = await new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "HS256" })
    .setNotBefore(Math.floor(Date.now() / 1000) + 3600).sign(new TextEncoder().encode(secret));
  await assertRejects(() => hs.verify(notYet));

  const { publicKey, privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
  const pem = await jose.exportSPKI(publicKey);
  const es = await createVerifier({ publicKey: pem });
  const signed = await new jose.SignJWT({ sub: "2" }).setProtectedHeader({ alg: "ES256" })
    .setExpirationTime("1h").sign(privateKey);
  assertEquals((await es.verify(signed)).sub, "2");
  // An HS256 token "signed" with the public key text must never pass.
  const confused = await new jose.SignJWT({ sub: "3" }).setProtectedHeader({ alg: "HS256" })
    .setExpirationTime("1h").sign(new TextEncoder().encode(pem));
  await assertRejects(() => es.verify(confused));

  const rsa = await jose.generateKeyPair("RS256", { extractable: true });
  const rs = await createVerifier({ publicKey: await jose.exportSPKI(rsa.publicKey) });
  assertEquals(rs.description, "RS256 public key");
  await assertRejects(() => createVerifier({ publicKey: "not a pem" }), /not a PEM/);
});

Deno.test("createVerifier() takes EC keys on P-384 and P-521 (ES384, ES512, by the curve); refuses other curves, certificates and PKCS#1 keys naming JWT_PUBLIC_KEY", async () => {
  for (const [curve, alg] of [["P-384", "ES384"], ["P-521", "ES512"]]) {
    const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: curve });
    const verifier = await createVerifier({
      publicKey: publicKey.export({ type: "spki", format: "pem" }) as string,
    });
    assertEquals(verifier.description, `${alg} public key`);
    const token = await new jose.SignJWT({ sub: "4" }).setProtectedHeader({ alg })
      .setExpirationTime("1h").sign(privateKey);
    assertEquals((await verifier.verify(token)).sub, "4");
    // The curve fixes the algorithm: a token of another hash is refused.
    const other = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const es256 = await new jose.SignJWT({ sub: "4" }).setProtectedHeader({ alg: "ES256" })
      .setExpirationTime("1h").sign(other);
    await assertRejects(() => verifier.verify(es256));
  }
  const k1 = generateKeyPairSync("ec", { namedCurve: "secp256k1" }).publicKey;
  await assertRejects(
    () => createVerifier({ publicKey: k1.export({ type: "spki", format: "pem" }) as string }),
    /^JWT_PUBLIC_KEY has an unsupported key type, EC on the curve secp256k1: expected an RSA or EC/,
  );
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey;
  await assertRejects(
    () => createVerifier({ publicKey: rsa.export({ type: "pkcs1", format: "pem" }) as string }),
    /^JWT_PUBLIC_KEY could not be read as a "PUBLIC KEY" PEM/,
  );
  await assertRejects(
    async () =>
      createVerifier({
        // The form an identity provider's page shows its signing key in (Keycloak's "Certificate").
        publicKey: await Deno.readTextFile(
          new URL("../../tests/fixtures/idp_certificate.pem", import.meta.url),
        ),
      }),
    /^JWT_PUBLIC_KEY is an X.509 certificate, not a public key: give its public key/,
  );
});

/** Three starts' calls at once, as isolates starting together make them. */
const atOnce = (dir: string) => Promise.all([0, 1, 2].map(() => ensureDevSecret(dir)));

Deno.test("ensureDevSecret() creates one secret and then keeps it", async () => {
  const dir = await Deno.makeTempDir();
  const results = await atOnce(dir);
  assertEquals(new Set(results.map((r) => r.secret)).size, 1);
  assertEquals(results.filter((r) => r.created).length, 1);
  assertEquals((await ensureDevSecret(dir)).created, false);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("ensureDevSecret() replaces an old empty file, a failed start's, once for all callers", async () => {
  const dir = await Deno.makeTempDir();
  const path = devSecretPath(dir);
  // Empty, as a start that failed between creating and writing it leaves it; or zeroed, as a
  // power cut may.
  for (const leftover of ["", "\0".repeat(44)]) {
    await Deno.writeTextFile(path, leftover);
    const minuteAgo = new Date(Date.now() - 60_000);
    await Deno.utime(path, minuteAgo, minuteAgo);
    const results = await atOnce(dir);
    assertEquals(new Set(results.map((r) => r.secret)).size, 1);
    assertEquals(results.filter((r) => r.replaced).length, 1);
    assertEquals(results.filter((r) => r.created).length, 1);
    assertEquals(await Deno.readTextFile(path), `${results[0].secret}\n`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("ensureDevSecret() waits for a fresh empty file's creator to write it", async () => {
  const dir = await Deno.makeTempDir();
  const path = devSecretPath(dir);
  await Deno.writeTextFile(path, "");
  const reading = ensureDevSecret(dir);
  // As a creator that writes without the lock (an earlier version) does, a moment later.
  await new Promise((r) => setTimeout(r, 100));
  await Deno.writeTextFile(path, "theirs\n");
  assertEquals(await reading, { secret: "theirs", created: false, replaced: false });
  // No creator ever writes it: it counts as left over once old enough.
  await Deno.writeTextFile(path, "");
  const replaced = await ensureDevSecret(dir, { leftoverMs: 200 });
  assertEquals([replaced.created, replaced.replaced], [true, true]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("ensureDevSecret() replaces an empty file dated in the future (the clock set back since), not waiting on it for ever", async () => {
  const dir = await Deno.makeTempDir();
  const path = devSecretPath(dir);
  await Deno.writeTextFile(path, "");
  const hourAhead = new Date(Date.now() + 3_600_000);
  await Deno.utime(path, hourAhead, hourAhead);
  const result = await Promise.race([
    ensureDevSecret(dir, { leftoverMs: 200 }),
    new Promise<"waiting">((r) => setTimeout(() => r("waiting"), 3_000)),
  ]);
  assertEquals(result === "waiting" ? result : [result.created, result.replaced], [true, true]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("ensureDevSecret(): processes starting at once agree on one secret", async () => {
  const dir = await Deno.makeTempDir();
  const verifier = new URL("./verifier.ts", import.meta.url).href;
  const script = `
    const { ensureDevSecret } = await import(${JSON.stringify(verifier)});
    console.log(JSON.stringify(await ensureDevSecret(Deno.args[0])));
  `;
  const start = () =>
    new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", script, dir],
      stdout: "piped",
      stderr: "inherit",
    }).output().then((out) => JSON.parse(new TextDecoder().decode(out.stdout)));
  // A fresh DATA_DIR, then a failed start's leftover.
  for (const leftover of [undefined, ""]) {
    if (leftover !== undefined) {
      await Deno.writeTextFile(devSecretPath(dir), leftover);
      await Deno.utime(devSecretPath(dir), 0, 0);
    }
    const results = await Promise.all([start(), start(), start()]);
    assertEquals(new Set(results.map((r) => r.secret)).size, 1, JSON.stringify(results));
    assertEquals(results.filter((r) => r.created).length, 1, JSON.stringify(results));
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("grantMatches: a star stands for any run of characters, and many stars stay cheap", () => {
  const cases: [string, string, boolean][] = [
    ["ticket:*", "ticket:", true],
    ["ticket:*", "ticket:42", true],
    ["ticket:*", "chat:42", false],
    ["*:42", "chat:42", true],
    ["*:42", "chat:421", false],
    ["room:a*b*c", "room:aXbYc", true],
    ["room:a*b*c", "room:aXbYcZ", false],
    ["room:a*b*c", "room:abc", true],
    ["room:**", "room:x", true],
    ["room:*x*", "room:yyy", false],
    ["room:a*", "room:", false],
  ];
  for (const [pattern, room, expected] of cases) {
    assertEquals(grantMatches(pattern, room), expected, `${pattern} ~ ${room}`);
  }
  // As a regular expression (six stars on 60 characters took 3 s), this would never end.
  assertEquals(grantMatches("room:" + "*a".repeat(30) + "*b", "room:" + "a".repeat(200)), false);
});

Deno.test("principalFromClaims() expires a token when the verifier would refuse it: exp rounded up to a whole second, plus its tolerance", () => {
  const expiresAt = (exp: number) => principalFromClaims({ sub: "1", exp })?.expiresAt;
  assertEquals(expiresAt(100), 105_000);
  // jose compares a fractional exp with the time in whole seconds: accepted until 106 here.
  assertEquals(expiresAt(100.2), 106_000);
  assertEquals(principalFromClaims({ sub: "1" })?.expiresAt, undefined);
});

Deno.test("createVerifier() with a JWKS takes the EC keys an identity provider publishes on every curve a JWT_PUBLIC_KEY may have (ES256, ES384, ES512)", async () => {
  const keys: Record<string, unknown>[] = [];
  const tokens = new Map<string, string>();
  for (const alg of ["ES256", "ES384", "ES512"]) {
    const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true });
    keys.push({ ...await jose.exportJWK(publicKey), kid: alg, alg, use: "sig" });
    tokens.set(
      alg,
      await new jose.SignJWT({ sub: alg }).setProtectedHeader({ alg, kid: alg })
        .setExpirationTime("1h").sign(privateKey),
    );
  }
  const provider = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => Response.json({ keys }),
  );
  try {
    const verifier = await createVerifier({
      jwksUrl: `http://127.0.0.1:${provider.addr.port}/jwks.json`,
    });
    for (const [alg, token] of tokens) assertEquals((await verifier.verify(token)).sub, alg);
  } finally {
    await provider.shutdown();
  }
});

Deno.test("createVerifier() with a JWKS keeps using the keys fetched last while the key set does not answer, and calls a token of another key unavailable, not invalid", async () => {
  const { privateKey, publicKey } = await jose.generateKeyPair("RS256");
  const other = await jose.generateKeyPair("RS256");
  const jwk = { ...await jose.exportJWK(publicKey), kid: "k1", alg: "RS256", use: "sig" };
  const sign = (key: CryptoKey, kid: string) =>
    new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "RS256", kid })
      .setExpirationTime("1h").sign(key);
  let up = true;
  const provider = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => up ? Response.json({ keys: [jwk] }) : new Response("down", { status: 502 }),
  );
  const logged: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => logged.push(args.map(String).join(" "));
  try {
    const verifier = await createVerifier({
      jwksUrl: `http://127.0.0.1:${provider.addr.port}/jwks.json`,
      keySetMaxAgeMs: 20,
    });
    assertEquals((await verifier.verify(await sign(privateKey, "k1"))).sub, "1");
    up = false;
    // Past the keys' age, the next token fetches again, in vain: the keys it had still count.
    await new Promise((r) => setTimeout(r, 50));
    assertEquals((await verifier.verify(await sign(privateKey, "k1"))).sub, "1");
    assertEquals(verifier.keySet?.up, false);
    assert(logged.some((l) => /checked with the keys fetched at/.test(l)), logged.join("\n"));
    // A key it does not have may be one the provider added meanwhile.
    const foreign = await sign(other.privateKey, "k2");
    const err = await assertRejects(() => verifier.verify(foreign));
    assert(err instanceof KeySetUnavailable, `${err.name}: ${err.message}`);
  } finally {
    console.error = error;
    await provider.shutdown();
  }
});

Deno.test("createVerifier() with a JWKS and a cache file checks tokens with the kept keys after a restart while the key set does not answer, only for the same URL", async () => {
  const { privateKey, publicKey } = await jose.generateKeyPair("RS256");
  const jwk = { ...await jose.exportJWK(publicKey), kid: "k1", alg: "RS256", use: "sig" };
  const token = await new jose.SignJWT({ sub: "1" }).setProtectedHeader({ alg: "RS256", kid: "k1" })
    .setExpirationTime("1h").sign(privateKey);
  let up = true;
  const provider = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    () => up ? Response.json({ keys: [jwk] }) : new Response("down", { status: 502 }),
  );
  const dir = await Deno.makeTempDir({ prefix: "jwks-cache-" });
  const keySetCachePath = `${dir}/jwks_cache.json`;
  const error = console.error;
  console.error = () => {};
  try {
    const jwksUrl = `http://127.0.0.1:${provider.addr.port}/jwks.json`;
    const before = await createVerifier({ jwksUrl, keySetCachePath });
    assertEquals((await before.verify(token)).sub, "1");
    assertEquals((await Deno.stat(keySetCachePath)).mode! & 0o777, 0o600);
    up = false;
    // Restarted during the outage.
    const after = await createVerifier({ jwksUrl, keySetCachePath });
    assertEquals((await after.verify(token)).sub, "1");
    // Kept keys "fetched" in the future (a clock that was ahead) are not trusted.
    const kept = JSON.parse(await Deno.readTextFile(keySetCachePath));
    await Deno.writeTextFile(
      keySetCachePath,
      JSON.stringify({ ...kept, at: Date.now() + 365 * 86_400_000 }),
    );
    const ahead = await createVerifier({ jwksUrl, keySetCachePath });
    const refused = await assertRejects(() => ahead.verify(token));
    assert(refused instanceof KeySetUnavailable, `${refused.name}: ${refused.message}`);
    // The kept keys are another URL's: not used for this one.
    const other = await createVerifier({ jwksUrl: `${jwksUrl}?v=2`, keySetCachePath });
    const err = await assertRejects(() => other.verify(token));
    assert(err instanceof KeySetUnavailable, `${err.name}: ${err.message}`);
  } finally {
    console.error = error;
    await provider.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("requestOrigin() takes a proxy's word only when trusted: Forwarded first, else X-Forwarded-Proto/-Host, each only when well formed", () => {
  const origin = (headers: Record<string, string>, trustProxy = true) =>
    requestOrigin(
      new Request("http://127.0.0.1:8000/ws?token=t", {
        headers: { host: "127.0.0.1:8000", ...headers },
      }),
      trustProxy,
    );
  const xf = { "x-forwarded-proto": "https", "x-forwarded-host": "chat.example" };
  assertEquals(origin(xf, false), "http://127.0.0.1:8000");
  assertEquals(origin({}), "http://127.0.0.1:8000");
  assertEquals(origin(xf), "https://chat.example");
  // Each part on its own: nginx sends the scheme and keeps Host (`Host $host`).
  assertEquals(origin({ "x-forwarded-proto": "https" }), "https://127.0.0.1:8000");
  assertEquals(origin({ "x-forwarded-host": "chat.example:8443" }), "http://chat.example:8443");
  // The first of a list (the proxy nearest the client), a default port dropped, case folded.
  assertEquals(
    origin({ "x-forwarded-proto": "HTTPS, http", "x-forwarded-host": "Chat.Example:443, lb" }),
    "https://chat.example",
  );
  // Forwarded wins, quoted values and its first element only.
  assertEquals(
    origin({
      ...xf,
      forwarded: 'for=1.2.3.4;proto=https;host="[2001:db8::1]:8443", for=5.6.7.8;host=lb.internal',
    }),
    "https://[2001:db8::1]:8443",
  );
  assertEquals(origin({ ...xf, forwarded: "for=1.2.3.4;proto=http" }), "http://chat.example");
  // Anything but a plain host[:port], and schemes other than http(s), are passed over.
  for (
    const host of [
      "evil.example/x",
      "evil.example@x",
      "a b",
      "evil.example:99999",
      "evil.example:",
      "[::1",
      "-evil.example",
      "x".repeat(300),
      "",
    ]
  ) {
    assertEquals([host, origin({ "x-forwarded-host": host })], [host, "http://127.0.0.1:8000"]);
    assertEquals(
      [host, origin({ forwarded: `host="${host}"`, "x-forwarded-host": "chat.example" })],
      [host, "http://chat.example"],
    );
  }
  assertEquals(origin({ "x-forwarded-proto": "javascript" }), "http://127.0.0.1:8000");
});

Deno.test("trustedOrigin() takes the server's own host from Host and the trusted origins only, never from forwarded headers", () => {
  const req = new Request("http://127.0.0.1:8000/ws", {
    headers: {
      host: "127.0.0.1:8000",
      "x-forwarded-host": "chat.example",
      forwarded: "proto=https;host=chat.example",
    },
  });
  // A page can add these headers to its own credentialed fetch: they name no trusted page.
  assertEquals(trustedOrigin("https://chat.example", req, []), false);
  assertEquals(trustedOrigin("http://127.0.0.1:8000", req, []), true);
  // Behind a proxy that rewrites Host, PUBLIC_URL's origin (or ALLOWED_ORIGINS) names the page.
  assertEquals(trustedOrigin("https://chat.example", req, ["https://chat.example"]), true);
});
