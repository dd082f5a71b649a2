/**
 * The admin REST API end to end: every route with good and bad input and without credentials,
 * on SQLite and (with `TEST_POSTGRES_URL`) Postgres.
 */

import { loadConfig } from "../src/config.ts";
import { API_ROUTES } from "../src/http/api/mod.ts";
import { ADMIN_TOKEN, apiTest, directoryWith, requirePostgresInCi } from "./api_helpers.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "./assert.ts";
import { eventually, rawExchange, startTestServer, TestClient } from "./helpers.ts";

requirePostgresInCi("admin API");

type Json = Record<string, unknown>;

/** A concrete path for a documented one: sample values for its parameters. */
const samplePath = (path: string) =>
  path.replace("{kind}", "ticket").replace("{id}", "1").replace("{user_id}", "1");

apiTest("admin API: every route refuses missing, wrong and non-admin credentials", async (s) => {
  const client = await s.token({ sub: "1", username: "one", role: "client" });
  const expiredAdmin = await s.token({ sub: "2", role: "admin" }, -60);
  for (const route of API_ROUTES.filter((r) => !r.public)) {
    const path = samplePath(route.path);
    const method = route.method.toUpperCase();
    const what = `${method} ${path}`;
    const none = await s.api(method, path, { token: null });
    assertEquals(none.status, 401, what);
    assertEquals(none.body.status, 401, what);
    assertMatch(none.body.message as string, /Bearer/, what);
    assertEquals(none.headers.get("www-authenticate"), 'Bearer realm="chat-admin"', what);
    assertEquals((await s.api(method, path, { token: ADMIN_TOKEN + "x" })).status, 401, what);
    assertEquals((await s.api(method, path, { token: expiredAdmin })).status, 401, what);
    // Member routes (the upload) refuse a non-admin only where the room is closed to them.
    if (route.members) continue;
    const forbidden = await s.api(method, path, { token: client });
    assertEquals(forbidden.status, 403, what);
    assertEquals(forbidden.body.message, 'User "1" has role "client", not admin', what);
  }
  // Basic auth and a token in the query string are not credentials here.
  assertEquals(
    (await s.api("GET", `/api/users/1?token=${ADMIN_TOKEN}`, { token: null })).status,
    401,
  );
  assertEquals(
    (await s.api("GET", "/api/users/1", {
      token: null,
      headers: { authorization: `Basic ${btoa(`admin:${ADMIN_TOKEN}`)}` },
    })).status,
    401,
  );
  // A JWT with an admin role is as good as ADMIN_TOKEN; the OpenAPI document is public.
  for (const role of ["admin", "super_admin"]) {
    const admin = await s.token({ sub: "9", role });
    assertEquals((await s.api("GET", "/api/users/nobody", { token: admin })).status, 404);
  }
  assertEquals((await s.api("GET", "/api/openapi.json", { token: null })).status, 200);
});

Deno.test("admin API: a short ADMIN_TOKEN stops the server without being echoed", async () => {
  const err = await assertRejects(() => loadConfig({ ADMIN_TOKEN: "short-secret" }));
  assertMatch(err.message, /ADMIN_TOKEN: expected at least 16 characters/);
  assert(!err.message.includes("short-secret"));
  assertEquals(loadConfig({ ADMIN_TOKEN: " " }).adminToken, undefined);
  assertEquals(loadConfig({ ADMIN_TOKEN: ADMIN_TOKEN }).adminToken, ADMIN_TOKEN);
});

apiTest("admin API: without ADMIN_TOKEN only admin tokens get in", async (s) => {
  assertEquals((await s.api("GET", "/api/users/1", { token: "anything" })).status, 401);
  const admin = await s.token({ sub: "9", role: "admin" });
  assertEquals((await s.api("GET", "/api/users/1", { token: admin })).status, 404);
}, { ADMIN_TOKEN: "" });

apiTest(
  "admin API: pages of another origin may call it (CORS), with the token they hold",
  async (s) => {
    const preflight = await fetch(`${s.url}/api/rooms/ticket/1/attachments`, {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
      },
    });
    await preflight.body?.cancel();
    assertEquals(preflight.status, 204);
    assertEquals(preflight.headers.get("access-control-allow-origin"), "*");
    assertMatch(preflight.headers.get("access-control-allow-methods") ?? "", /POST/);
    assertMatch(preflight.headers.get("access-control-allow-headers") ?? "", /authorization/i);
    // No credentials: the API reads no cookie, so none is asked for.
    assertEquals(preflight.headers.get("access-control-allow-credentials"), null);
    const read = await s.api("GET", "/api/users/none", {
      headers: { origin: "https://app.example" },
    });
    assertEquals([read.status, read.headers.get("access-control-allow-origin")], [404, "*"]);
  },
);

apiTest(
  "admin API: PUBLIC_URL alone does not narrow CORS",
  async (s) => {
    const res = await s.api("GET", "/api/users/none", {
      headers: { origin: "https://app.example" },
    });
    assertEquals(res.headers.get("access-control-allow-origin"), "*");
  },
  { PUBLIC_URL: "https://chat.example" },
);

apiTest(
  "admin API: with ALLOWED_ORIGINS, only those origins get CORS headers",
  async (s) => {
    for (
      const [origin, allowed] of [["https://app.example", true], ["https://evil.example", false]]
    ) {
      const res = await s.api("GET", "/api/users/none", { headers: { origin: origin as string } });
      assertEquals(res.headers.get("access-control-allow-origin"), allowed ? origin : null);
    }
  },
  { ALLOWED_ORIGINS: "https://app.example" },
);

apiTest("users: upsert, read, partial update, delete, and bad input", async (s) => {
  const full = {
    username: "alice",
    full_name: "Alice Liddell",
    email: "alice@example.com",
    phone: "+1 555 0100",
    profile_image: "https://cdn.example/a.png",
    company: "Wonderland Ltd",
    role: "client",
    user_type: "talker",
  };
  const put = await s.api("PUT", "/api/users/42", { json: full });
  assertEquals(put.status, 200);
  assertEquals(put.body, { id: "42", ...full });
  assertEquals((await s.api("GET", "/api/users/42")).body, { id: "42", ...full });

  const partial = await s.api("PUT", "/api/users/42", {
    json: { phone: null, company: "Looking" },
  });
  assertEquals(partial.body, { id: "42", ...full, phone: null, company: "Looking" });
  const empty = await s.api("PUT", "/api/users/new", { json: {} });
  assertEquals(empty.body.username, null);

  // Ids are text: non-ASCII and odd characters round-trip through the path.
  const odd = "auth0|Zoë 7";
  assertEquals(
    (await s.api("PUT", `/api/users/${encodeURIComponent(odd)}`, { json: {} })).body.id,
    odd,
  );
  assertEquals((await s.api("GET", `/api/users/${encodeURIComponent(odd)}`)).status, 200);

  const bad = async (init: Parameters<typeof s.api>[2], status: number, message: RegExp) => {
    const res = await s.api("PUT", "/api/users/42", init);
    assertEquals(res.status, status, JSON.stringify(res.body));
    assertEquals(res.body.status, status);
    assertMatch(res.body.message as string, message);
    return res;
  };
  const unknownField = await bad({ json: { nickname: "al" } }, 400, /Invalid body/);
  assertEquals((unknownField.body.issues as Json[])[0].message, 'Unrecognized key: "nickname"');
  const wrongType = await bad({ json: { email: 5 } }, 400, /"email"/);
  assertEquals((wrongType.body.issues as Json[])[0].path, "email");
  await bad({ json: { username: "x".repeat(151) } }, 400, /"username"/);
  await bad({ json: [1, 2] }, 400, /Invalid body/);
  await bad(
    {
      body: "{not json",
      headers: { "content-type": "application/json" },
    },
    400,
    /not valid JSON/,
  );
  await bad({ body: "", headers: { "content-type": "application/json" } }, 400, /required/);
  await bad({ body: "username=al", headers: { "content-type": "text/plain" } }, 415, /text\/plain/);
  await bad(
    {
      body: new Uint8Array([0x7b, 0xff, 0x7d]),
      headers: { "content-type": "application/json" },
    },
    400,
    /UTF-8/,
  );
  const huge = await s.api("PUT", "/api/users/42", {
    body: JSON.stringify({ username: "x".repeat(5 * 1024 * 1024) }),
    headers: { "content-type": "application/json" },
  });
  assertEquals(huge.status, 413);
  assertEquals((await s.api("PUT", `/api/users/${"x".repeat(257)}`, { json: {} })).status, 400);
  assertEquals((await s.api("GET", "/api/users/42")).body.company, "Looking");

  const missing = await s.api("GET", "/api/users/43");
  assertEquals(missing.status, 404);
  assertEquals(missing.body, { status: 404, message: 'User "43" not found' });
  assertEquals((await s.api("DELETE", "/api/users/42")).status, 204);
  assertEquals((await s.api("DELETE", "/api/users/42")).status, 404);
  assertEquals((await s.api("GET", "/api/users/42")).status, 404);

  const nowhere = await s.api("GET", "/api/nothing/here");
  assertEquals(nowhere.body, { status: 404, message: "No API route GET /api/nothing/here" });
  const wrongMethod = await s.api("PATCH", "/api/users/1", { json: {} });
  assertEquals(wrongMethod.status, 405);
  assertEquals(wrongMethod.headers.get("allow"), "PUT, GET, DELETE");
});

apiTest("rooms: create, update, participants, list by kind, delete, and bad input", async (s) => {
  const created = await s.api("PUT", "/api/rooms/ticket/1", {
    json: {
      title: "Printer",
      owner_id: "3",
      participants: [{ user_id: "4" }, { user_id: "5", role: "agent" }],
    },
  });
  assertEquals(created.status, 201);
  assertMatch(created.body.created_at as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assertEquals({ ...created.body, created_at: "" }, {
    kind: "ticket",
    id: "1",
    title: "Printer",
    owner_id: "3",
    created_at: "",
    participants: [{ user_id: "4", role: "member" }, { user_id: "5", role: "agent" }],
  });
  const retitled = await s.api("PUT", "/api/rooms/ticket/1", { json: { title: "On fire" } });
  assertEquals(retitled.status, 200);
  assertEquals([retitled.body.title, retitled.body.owner_id], ["On fire", "3"]);
  assertEquals((retitled.body.participants as Json[]).length, 2);
  const replaced = await s.api("PUT", "/api/rooms/ticket/1", {
    json: { participants: [{ user_id: "6" }], owner_id: null },
  });
  assertEquals(replaced.body.participants, [{ user_id: "6", role: "member" }]);
  assertEquals(replaced.body.owner_id, null);
  assertEquals((await s.api("GET", "/api/rooms/ticket/1")).body, replaced.body);

  const added = await s.api("POST", "/api/rooms/ticket/1/participants", {
    json: { user_id: "7", role: "agent" },
  });
  assertEquals(added.status, 200);
  assertEquals(added.body.participants, [
    { user_id: "6", role: "member" },
    { user_id: "7", role: "agent" },
  ]);
  // Added again without a role: the stored one stays; a new participant is a member.
  for (const user_id of ["7", "8"]) {
    await s.api("POST", "/api/rooms/ticket/1/participants", { json: { user_id } });
  }
  assertEquals((await s.api("GET", "/api/rooms/ticket/1")).body.participants, [
    { user_id: "6", role: "member" },
    { user_id: "7", role: "agent" },
    { user_id: "8", role: "member" },
  ]);
  // The same in a PUT's list: the integrator sends who it knows, roles it does not change.
  const relisted = await s.api("PUT", "/api/rooms/ticket/1", {
    json: { participants: [{ user_id: "6", role: "agent" }, { user_id: "7" }, { user_id: "8" }] },
  });
  assertEquals(relisted.body.participants, [
    { user_id: "6", role: "agent" },
    { user_id: "7", role: "agent" },
    { user_id: "8", role: "member" },
  ]);
  await s.api("PUT", "/api/rooms/ticket/1", {
    json: { participants: [{ user_id: "6", role: "member" }, { user_id: "7" }, { user_id: "8" }] },
  });
  assertEquals((await s.api("DELETE", "/api/rooms/ticket/1/participants/8")).status, 204);
  assertEquals((await s.api("DELETE", "/api/rooms/ticket/1/participants/6")).status, 204);
  const gone = await s.api("DELETE", "/api/rooms/ticket/1/participants/6");
  assertEquals(gone.body, {
    status: 404,
    message: 'User "6" is not a participant of "ticket:1"',
  });
  assertEquals(
    (await s.api("POST", "/api/rooms/ticket/2/participants", { json: { user_id: "7" } })).body,
    { status: 404, message: 'Room "ticket:2" not found' },
  );
  assertEquals(
    (await s.api("POST", "/api/rooms/ticket/1/participants", { json: { role: "x" } })).status,
    400,
  );

  for (const id of ["b", "a", "c", "_under"]) {
    await s.api("PUT", `/api/rooms/room/${id}`, { json: { title: id } });
  }
  const page1 = await s.api("GET", "/api/rooms/room?limit=2");
  assertEquals((page1.body.rooms as Json[]).map((r) => r.id), ["_under", "a"]);
  assertEquals(page1.body.next_after, "a");
  const page2 = await s.api("GET", "/api/rooms/room?limit=2&after=a");
  assertEquals((page2.body.rooms as Json[]).map((r) => r.id), ["b", "c"]);
  // The last page, though full, says it is the last.
  assertEquals(page2.body.next_after, null);
  const page3 = await s.api("GET", "/api/rooms/room?limit=2&after=c");
  assertEquals(page3.body, { rooms: [], next_after: null });
  assertEquals((await s.api("GET", "/api/rooms/ticket")).body.next_after, null);
  assert(!("participants" in ((await s.api("GET", "/api/rooms/ticket")).body.rooms as Json[])[0]));

  for (
    const [method, path, json] of [
      ["GET", "/api/rooms/planet", undefined],
      ["GET", "/api/rooms/room?limit=0", undefined],
      ["GET", "/api/rooms/room?limit=abc", undefined],
      ["GET", "/api/rooms/room?limit=1&limit=2", undefined],
      ["PUT", "/api/rooms/planet/1", {}],
      ["PUT", "/api/rooms/ticket/bad%20id", {}],
      ["PUT", "/api/rooms/ticket/1", { title: 5 }],
      ["PUT", "/api/rooms/ticket/1", { participants: [{ user_id: "" }] }],
      ["PUT", "/api/rooms/ticket/1", { participants: "4,5" }],
      ["PUT", "/api/rooms/ticket/1", { owner: "3" }],
      ["GET", "/api/rooms/ticket/bad%20id", undefined],
      ["DELETE", "/api/rooms/planet/1", undefined],
      ["POST", "/api/rooms/ticket/1/participants", { user_id: "7", role: "" }],
      // NUL: Postgres cannot store it (a 500 there), SQLite would cut the text short at it.
      ["PUT", "/api/rooms/ticket/1", { title: "a\u0000b" }],
      ["PUT", "/api/users/7", { username: "a\u0000b" }],
      ["POST", "/api/rooms/ticket/1/participants", { user_id: "7", role: "x\u0000" }],
      // A lone surrogate: stored as UTF-8 it would become U+FFFD, and two ids one.
      ["PUT", "/api/rooms/ticket/1", { title: "t\udfff" }],
      ["PUT", "/api/rooms/ticket/1", { participants: [{ user_id: "\ud800" }] }],
      ["PUT", "/api/users/7", { username: "a\ud800b" }],
      ["POST", "/api/rooms/ticket/1/participants", { user_id: "\udbff" }],
      ["DELETE", "/api/rooms/ticket/1/participants/%01", undefined],
      ["GET", `/api/users/${"x".repeat(257)}`, undefined],
      ["DELETE", "/api/users/a%7Fb", undefined],
      ["PUT", "/api/users/%207", {}],
      ["PUT", "/api/users/a%E2%80%A8b%20", {}],
      ["PUT", "/api/rooms/ticket/1", { participants: [{ user_id: "7 " }] }],
      ["GET", "/api/rooms/ticket/1/messages?limit=x", undefined],
      ["POST", "/api/rooms/ticket/no%20such/messages", { body: "x" }],
    ] as const
  ) {
    const res = await s.api(method, path, { json });
    assertEquals(res.status, 400, `${method} ${path} ${JSON.stringify(json)}`);
    assert((res.body.issues as Json[]).length > 0);
  }
  assertEquals(
    (await s.api("GET", "/api/rooms/room?limit=1&limit=2")).body.message,
    'Invalid query: "limit" given more than once',
  );
  const badKind = await s.api("GET", "/api/rooms/planet");
  assertMatch(badKind.body.message as string, /^Invalid path parameters: "kind" /);

  assertEquals((await s.api("DELETE", "/api/rooms/ticket/1")).status, 204);
  assertEquals((await s.api("GET", "/api/rooms/ticket/1")).status, 404);
  assertEquals((await s.api("DELETE", "/api/rooms/ticket/1")).body, {
    status: 404,
    message: 'Room "ticket:1" not found',
  });
});

apiTest(
  "rooms: of concurrent first saves exactly one answers 201, each with its own participants",
  async (s) => {
    for (let round = 0; round < 5; round++) {
      const saves = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          s.api("PUT", `/api/rooms/chat/new${round}`, {
            json: { title: `save ${i}`, participants: [{ user_id: `p${i}` }] },
          })),
      );
      assertEquals(
        saves.map((r) => r.status).sort(),
        [200, 200, 200, 200, 200, 200, 200, 201],
        `round ${round}`,
      );
      // Room and participants are saved together: the last save's pair, never a mix.
      const stored = (await s.api("GET", `/api/rooms/chat/new${round}`)).body;
      const i = (stored.title as string).slice("save ".length);
      assertEquals(stored.participants, [{ user_id: `p${i}`, role: "member" }]);
    }
  },
);

/** Set to hold the next participant addition back this long, ms, before it reaches the directory. */
const slowAddition = { ms: 0 };

apiTest(
  "rooms: an addition the room's deletion overtakes is refused 404 and leaves no participant behind",
  async (s) => {
    const path = "/api/rooms/ticket/race";
    assertEquals((await s.api("PUT", path, { json: {} })).status, 201);
    slowAddition.ms = 300;
    const adding = s.api("POST", `${path}/participants`, { json: { user_id: "late" } });
    await new Promise((r) => setTimeout(r, 50));
    assertEquals((await s.api("DELETE", path)).status, 204);
    // Before, the addition had found the room before the deletion and inserted its row after
    // it: the user was a participant of the room once it was created again.
    assertEquals((await adding).body, { status: 404, message: 'Room "ticket:race" not found' });
    assertEquals((await s.api("PUT", path, { json: {} })).status, 201);
    assertEquals((await s.api("GET", path)).body.participants, []);
  },
  {},
  {
    directory: directoryWith("addParticipant", (add) => async (...args) => {
      const ms = slowAddition.ms;
      slowAddition.ms = 0;
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      return await add(...args);
    }),
  },
);

apiTest(
  "messages: publish as the system or a user reaches every protocol; history by cursor",
  async (s) => {
    await s.api("PUT", "/api/users/3", {
      json: { username: "agent3", full_name: "Agent Three", phone: "0912", user_type: "listener" },
    });
    await s.api("PUT", "/api/users/8", { json: { username: "outsider" } });
    await s.api("PUT", "/api/rooms/ticket/1", { json: { participants: [{ user_id: "3" }] } });
    await s.api("PUT", "/api/rooms/chat/1", { json: { participants: [{ user_id: "3" }] } });

    const token = await s.token({ sub: "3" });
    const ticket = await TestClient.open(`${s.wsUrl}/ws/ticket/1/?token=${token}`);
    const native = await TestClient.open(`${s.wsUrl}/ws?token=${token}`);
    await native.next((f) => f.type === "welcome");
    native.send({ type: "join", room: "ticket:1" });
    await native.next((f) => f.type === "joined");
    const conversation = await TestClient.open(`${s.wsUrl}/ws/chat/1/?token=${token}`);
    await conversation.next((f) => f.type === "connection_established");

    const system = await s.api("POST", "/api/rooms/ticket/1/messages", {
      json: { body: "Your ticket was assigned" },
    });
    assertEquals(system.status, 201);
    assertEquals(system.body.sender, null);
    assertEquals([system.body.type, system.body.room, system.body.seq], ["message", "ticket:1", 1]);
    assertEquals((await ticket.next()).sender, {
      id: null,
      username: "system",
      phone: null,
      profile_image: null,
    });
    const live = await native.next((f) => f.type === "message");
    assertEquals(live, system.body);

    const asUser = await s.api("POST", "/api/rooms/ticket/1/messages", {
      json: { body: "On my way", sender_id: "3", client_id: "c-1" },
    });
    assertEquals(asUser.status, 201);
    assertEquals(asUser.body.sender, {
      id: 3,
      username: "agent3",
      name: "Agent Three",
      email: null,
      profile_image: null,
      role: null,
    });
    assertEquals((await ticket.next()).sender, {
      id: 3,
      username: "agent3",
      phone: "0912",
      profile_image: null,
    });
    assertEquals(await native.next((f) => f.type === "message"), asUser.body);
    const retry = await s.api("POST", "/api/rooms/ticket/1/messages", {
      json: { body: "On my way (again)", sender_id: "3", client_id: "c-1" },
    });
    assertEquals(retry.status, 200);
    assertEquals(retry.body.id, asUser.body.id);
    await ticket.nothing();
    // Read as every protocol reads it: a number is its digits, an empty one is none.
    await s.api("PUT", "/api/rooms/ticket/2", { json: { participants: [{ user_id: "3" }] } });
    const numbered = await s.api("POST", "/api/rooms/ticket/2/messages", {
      json: { body: "numbered", sender_id: "3", client_id: 42 },
    });
    const again = await s.api("POST", "/api/rooms/ticket/2/messages", {
      json: { body: "numbered", sender_id: "3", client_id: "42" },
    });
    assertEquals([numbered.status, again.status, again.body.id], [201, 200, numbered.body.id]);
    // A number past JavaScript's exact integers would be taken for another id: refused.
    const big = await s.api("POST", "/api/rooms/ticket/2/messages", {
      json: { body: "big id", sender_id: "3", client_id: 2 ** 60 },
    });
    assertEquals(big.status, 400);
    assertEquals(
      (big.body.issues as Json[])[0].message,
      "A client_id that is a number too large to be read exactly: send it as a string",
      JSON.stringify(big.body),
    );
    for (let i = 0; i < 2; i++) {
      const none = await s.api("POST", "/api/rooms/ticket/2/messages", {
        json: { body: "no id", sender_id: "3", client_id: "" },
      });
      assertEquals(none.status, 201);
    }

    const chat = await s.api("POST", "/api/rooms/chat/1/messages", {
      json: { body: "Hello", sender_id: "3" },
    });
    assertEquals(chat.status, 201);
    const rendered = await conversation.next((f) => f.content === "Hello");
    assertEquals(rendered.sender, {
      id: 3,
      email: null,
      user_type: "listener",
      full_name: "Agent Three",
    });

    // The core's refusals carry the code every protocol gives them.
    const refusals: [Json, number, RegExp, string?][] = [
      [{ body: "x", sender_id: "404" }, 404, /^User "404" not found$/],
      [
        { body: "x", sender_id: "8" },
        403,
        /^User "8" may not post in room "ticket:1"$/,
        "forbidden",
      ],
      [{ body: "   " }, 400, /^Message body or file is required$/, "empty_message"],
      [
        { body: "x".repeat(20_001) },
        400,
        /^Message is too long: 20001 characters/,
        "body_too_long",
      ],
      [{ body: "😀".repeat(10_001) }, 400, /^Message is too long: 20002 /, "body_too_long"],
      [{ body: 5 }, 400, /"body"/],
      [{ body: "x", client_id: "x".repeat(129) }, 400, /"client_id"/],
      [{ body: "x", client_id: { id: 1 } }, 400, /"client_id"/],
      [{ body: "x", extra: 1 }, 400, /extra/],
    ];
    for (const [json, status, message, code] of refusals) {
      const res = await s.api("POST", "/api/rooms/ticket/1/messages", { json });
      assertEquals([res.status, res.body.code], [status, code], JSON.stringify(json));
      assertMatch(res.body.message as string, message);
    }

    // History of any room, known to the directory or not.
    for (let i = 0; i < 5; i++) {
      await s.api("POST", "/api/rooms/service-chat/77/messages", { json: { body: `m${i + 1}` } });
    }
    const seqs = async (query: string) => {
      const res = await s.api("GET", `/api/rooms/service-chat/77/messages${query}`);
      assertEquals(res.status, 200, JSON.stringify(res.body));
      return [
        (res.body.messages as Json[]).map((m) => m.seq),
        res.body.has_more,
        res.body.first_seq,
        res.body.last_seq,
      ];
    };
    assertEquals(await seqs(""), [[1, 2, 3, 4, 5], false, 1, 5]);
    assertEquals(await seqs("?limit=2"), [[4, 5], true, 4, 5]);
    assertEquals(await seqs("?limit=2&before=4"), [[2, 3], true, 2, 3]);
    assertEquals(await seqs("?after=3"), [[4, 5], false, 4, 5]);
    assertEquals(await seqs("?after=1&limit=2"), [[2, 3], true, 2, 3]);
    assertEquals(await seqs("?after=5"), [[], false, null, null]);
    const history = await s.api("GET", "/api/rooms/ticket/1/messages");
    assertEquals(history.body.messages, [system.body, asUser.body]);
    assertEquals(history.body.room, "ticket:1");
    for (const query of ["?limit=0", "?limit=201", "?before=-1", "?after=x", "?limit=1.5"]) {
      const res = await s.api("GET", `/api/rooms/ticket/1/messages${query}`);
      assertEquals(res.status, 400, query);
    }
    for (const client of [ticket, native, conversation]) await client.close();
  },
);

apiTest(
  "attachments: a file named with ';', '=' or quotes keeps its name, however the client quoted it",
  async (s) => {
    await s.api("PUT", "/api/users/3", { json: { username: "agent3" } });
    await s.api("PUT", "/api/rooms/ticket/6", { json: { participants: [{ user_id: "3" }] } });
    const names = (res: { status: number; body: Json }) => {
      assertEquals(res.status, 201, JSON.stringify(res.body));
      return (res.body.attachments as Json[]).map((a) => [
        a.name,
        decodeURIComponent(new URL(a.url as string).pathname.split("/").pop()!),
      ]);
    };
    // As Deno's and browsers' FormData write them: quoted, `"` as %22.
    const form = new FormData();
    form.append("file", new File(["a"], "Budget 2026; v2.pdf"));
    form.append("file", new File(["b"], "a=b.txt"));
    form.append("file", new File(["c"], 'say "hi".txt'));
    form.append("sender_id", "3");
    assertEquals(names(await s.api("POST", "/api/rooms/ticket/6/attachments", { body: form })), [
      ["Budget 2026; v2.pdf", "Budget 2026; v2.pdf"],
      ["a=b.txt", "a=b.txt"],
      ['say "hi".txt', "say _hi_.txt"],
    ]);
    // Backslash escapes (curl's), and RFC 5987's filename* beside a plain fallback.
    const boundary = "----boundary0123";
    const body = [
      `--${boundary}`,
      'Content-Disposition: form-data; name="file"; filename="x \\"y\\"; z.txt"',
      "",
      "d",
      `--${boundary}`,
      'Content-Disposition: form-data; name="file"; filename="ete.txt"; filename*=UTF-8\'\'%C3%A9t%C3%A9%3B%201.txt',
      "",
      "e",
      `--${boundary}`,
      'Content-Disposition: form-data; name="sender_id"',
      "",
      "3",
      `--${boundary}--`,
      "",
    ].join("\r\n");
    const raw = await s.api("POST", "/api/rooms/ticket/6/attachments", {
      body,
      headers: { "content-type": `multipart/form-data; boundary=${boundary}` },
    });
    assertEquals(names(raw), [
      ['x "y"; z.txt', "x _y_; z.txt"],
      ["été; 1.txt", "été; 1.txt"],
    ]);
  },
);

apiTest(
  "attachments: a multipart upload is one message on every protocol; limits hold",
  async (s) => {
    await s.api("PUT", "/api/users/3", { json: { username: "agent3" } });
    await s.api("PUT", "/api/rooms/ticket/5", { json: { participants: [{ user_id: "3" }] } });
    const token = await s.token({ sub: "3" });
    const ticket = await TestClient.open(`${s.wsUrl}/ws/ticket/5/?token=${token}`);

    const png = new Uint8Array(3000).map((_, i) => i % 251);
    png.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const form = new FormData();
    form.append("file", new File([png], "screen shot.png"));
    form.append("file", new File(["hello"], "notes.txt"));
    form.append("body", "Two files");
    form.append("sender_id", "3");
    const res = await s.api("POST", "/api/rooms/ticket/5/attachments", { body: form });
    assertEquals(res.status, 201, JSON.stringify(res.body));
    const attachments = res.body.attachments as Json[];
    assertEquals(attachments.map((a) => [a.name, a.mime, a.size]), [
      ["screen shot.png", "image/png", 3000],
      ["notes.txt", "text/plain", 5],
    ]);
    assertMatch(
      attachments[0].url as string,
      new RegExp(`^${s.url}/media/files/ticket_5/[0-9a-f]{32}/screen%20shot\\.png$`),
    );
    const frame = await ticket.next();
    // The ticket socket's one `file` is the first; the second follows the body as its URL.
    assertEquals([frame.body, frame.file, frame.pk], [
      `Two files\n${attachments[1].url}`,
      attachments[0].url,
      1,
    ]);
    const served = await fetch(attachments[0].url as string);
    assertEquals(new Uint8Array(await served.arrayBuffer()), png);

    // A chat upload goes where the conversation chat keeps its files.
    const chatForm = new FormData();
    chatForm.append("file", new File(["x"], "a.txt"));
    const chat = await s.api("POST", "/api/rooms/chat/5/attachments", { body: chatForm });
    assertEquals(chat.status, 201);
    assertMatch(
      (chat.body.attachments as Json[])[0].url as string,
      /\/media\/chat_files\/\d{4}\/\d\d\/\d\d\/[0-9a-f]{32}\/a\.txt$/,
    );
    assertEquals(chat.body.sender, null);

    const upload = (build: (f: FormData) => void) => {
      const f = new FormData();
      build(f);
      return s.api("POST", "/api/rooms/ticket/5/attachments", { body: f });
    };
    const tooBig = await upload((f) =>
      f.append("file", new File([new Uint8Array(4097)], "big.bin"))
    );
    assertEquals(tooBig.status, 413);
    assertEquals(
      tooBig.body.message,
      'File "big.bin" is too large: 4097 bytes, the limit is 4096 bytes',
    );
    // Refusals the sockets share carry the native protocol's code, for clients that switch on it.
    assertEquals(tooBig.body.code, "file_too_large");
    const longName = await upload((f) =>
      f.append("file", new File(["x"], `${"n".repeat(300)}.txt`))
    );
    assertEquals([longName.status, longName.body.code], [400, "filename_too_long"]);
    const declared = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: new Uint8Array(300 * 1024),
      headers: { "content-type": "multipart/form-data; boundary=x" },
    });
    assertEquals(declared.status, 413);
    assertMatch(declared.body.message as string, /^Upload is too large: 307200 bytes/);
    // A chunked body with no length is cut off at the cap instead of being buffered whole.
    let sent = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        sent += 64 * 1024;
        if (sent > 64 * 1024 * 1024) controller.close();
        else controller.enqueue(new Uint8Array(64 * 1024));
      },
    });
    const chunked = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: endless,
      headers: { "content-type": "multipart/form-data; boundary=x" },
    });
    assertEquals(chunked.status, 413);
    assert(sent < 8 * 1024 * 1024, `the server read ${sent} bytes`);

    const badRequests: [(f: FormData) => void, number, RegExp][] = [
      [(f) => f.append("body", "no file"), 400, /"file"/],
      [(f) => f.append("file", "not a file"), 400, /"file/],
      [
        (f) => {
          f.append("file", new File(["x"], "a.txt"));
          f.append("sender_id", "404");
        },
        404,
        /User "404" not found/,
      ],
      [
        (f) => {
          f.append("file", new File(["x"], "a.txt"));
          f.append("colour", "red");
        },
        400,
        /colour/,
      ],
    ];
    for (const [build, status, message] of badRequests) {
      const bad = await upload(build);
      assertEquals(bad.status, status, JSON.stringify(bad.body));
      assertMatch(bad.body.message as string, message);
    }
    const notMultipart = await s.api("POST", "/api/rooms/ticket/5/attachments", { json: {} });
    assertEquals(notMultipart.status, 415);
    const broken = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: "garbage",
      headers: { "content-type": "multipart/form-data; boundary=x" },
    });
    assertEquals(broken.status, 400);
    // A boundary past RFC 2046's 70 characters only makes every byte cost more to scan.
    const longBoundary = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: `--${"b".repeat(71)}--\r\n`,
      headers: { "content-type": `multipart/form-data; boundary=${"b".repeat(71)}` },
    });
    assertEquals(longBoundary.status, 400);
    assertMatch(longBoundary.body.message as string, /boundary must be 1 to 70 characters/);
    // Whole parts but no closing delimiter (a cut-off body with its length to match): the
    // platform's parser would take the first file alone and drop the client_id after it.
    const part = (headers: string, content: string) => `--x\r\n${headers}\r\n\r\n${content}\r\n`;
    const first = part('Content-Disposition: form-data; name="file"; filename="one.txt"', "ONE");
    const clientId = part('Content-Disposition: form-data; name="client_id"', "cut-1");
    for (const body of [first, first + clientId.slice(0, -8), first + clientId]) {
      const cut = await s.api("POST", "/api/rooms/ticket/5/attachments", {
        body,
        headers: { "content-type": "multipart/form-data; boundary=x" },
      });
      assertEquals(cut.status, 400, JSON.stringify(cut.body));
      assertMatch(cut.body.message as string, /ends before its closing boundary/);
    }
    // The same parts, closed: stored once.
    const whole = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: first + clientId + "--x--\r\n",
      headers: { "content-type": 'multipart/form-data; boundary="x"' },
    });
    assertEquals([whole.status, whole.body.client_id], [201, "cut-1"]);
    assertEquals((await ticket.next()).body, "");
    // An epilogue after the closing delimiter (RFC 2046 allows one), however long, is no part.
    const epilogue = await s.api("POST", "/api/rooms/ticket/5/attachments", {
      body: first + clientId.replace("cut-1", "cut-2") + "--x--\r\n" + "e".repeat(5000),
      headers: { "content-type": "multipart/form-data; boundary=x" },
    });
    assertEquals([epilogue.status, epilogue.body.client_id], [201, "cut-2"]);
    assertEquals((await ticket.next()).body, "");
    await ticket.nothing();
    await ticket.close();
  },
  { MAX_FILE_BYTES: "4096" },
);

apiTest("healthz answers with KV and directory; metrics count API requests", async (s) => {
  const health = await fetch(`${s.url}/healthz`);
  assertEquals(health.status, 200);
  const healthText = await health.text();
  assertEquals(JSON.parse(healthText).status, "ok");
  // HEAD says the length the GET has, not 0.
  for (const path of ["/healthz", "/api/openapi.json"]) {
    const bytes = (await (await fetch(`${s.url}${path}`)).arrayBuffer()).byteLength;
    const head = await fetch(`${s.url}${path}`, { method: "HEAD" });
    assert(bytes > 0, path);
    assertEquals(Number(head.headers.get("content-length")), bytes, path);
  }

  await s.api("GET", "/api/users/none");
  await s.api("GET", "/api/users/none", { token: null });
  // Made-up methods share one series: the label must not grow with what clients send.
  for (const method of ["FOO", "BAR1", "BAZ2"]) {
    const res = await fetch(`${s.url}/api/nothing`, { method });
    await res.body?.cancel();
    assertEquals(res.status, 404);
  }
  const metrics = await (await fetch(`${s.url}/metrics`)).text();
  assertMatch(metrics, /chat_api_requests_total\{method="OTHER",status="404"\} 3/);
  assertEquals(/method="(FOO|BAR1|BAZ2)"/.test(metrics), false);
  assertMatch(metrics, /chat_api_requests_total\{method="GET",status="404"\} 1/);
  assertMatch(metrics, /chat_api_requests_total\{method="GET",status="401"\} 1/);
  assertMatch(metrics, /# TYPE chat_connections gauge/);
  // One summary family, its two samples under it: no counter without _total.
  assertMatch(
    metrics,
    /# TYPE chat_commit_seconds summary\nchat_commit_seconds_sum \S+\nchat_commit_seconds_count \d+\n/,
  );
  for (const [, name] of metrics.matchAll(/^# TYPE (\S+) counter$/gm)) {
    assert(name.endsWith("_total"), `counter ${name} does not end in _total`);
  }
  // A server alone labels nothing, its isolate's heap included.
  assertMatch(metrics, /^deno_heap_used_bytes [1-9]\d*$/m);
  assertEquals(metrics.match(/^process_resident_memory_bytes [1-9]\d*$/gm)?.length, 1);
});

Deno.test('admin API: a system message\'s client_id is its own, not that of a user whose id is "system"', async () => {
  const server = await startTestServer({ ADMIN_TOKEN });
  try {
    const token = await server.token({ sub: "system", username: "mallory" });
    const ws = await TestClient.open(`${server.wsUrl}/ws?token=${token}`);
    await ws.next((f) => f.type === "welcome");
    ws.send({ type: "join", room: "room:general" });
    await ws.next((f) => f.type === "joined");
    ws.send({ type: "send", room: "room:general", body: "fake notice", client_id: "maint-1" });
    assertEquals((await ws.next((f) => f.type === "ack")).duplicate, false);
    const post = () =>
      fetch(`${server.url}/api/rooms/room/general/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ body: "Maintenance at 22:00", client_id: "maint-1" }),
      }).then(async (r) => [r.status, await r.json()] as const);
    const [status, notice] = await post();
    assertEquals([status, notice.sender, notice.body], [201, null, "Maintenance at 22:00"]);
    const [retried, again] = await post();
    assertEquals([retried, again.seq], [200, notice.seq]);
    await ws.close();
  } finally {
    await server.close();
  }
});

Deno.test('admin API: a notice\'s client_id stored by an older release (under the sender "system") and sent again after the upgrade is answered with the original, not stored twice', async () => {
  // What releases before c8d6588 stored for a notice with a client id, an hour ago.
  const dataDir = await Deno.makeTempDir({ prefix: "chat-older-notice-" });
  const kv = await Deno.openKv(`${dataDir}/chat.kv`);
  const at = Date.now() - 3600_000;
  const second = Math.floor(at / 1000).toString(16).padStart(8, "0");
  await kv.set(["msg", "ticket:1", 1], {
    room: "ticket:1",
    seq: 1,
    id: `${second}a1b2c3d4e5000001`,
    sender: null,
    body: "maintenance tonight",
    attachments: [],
    createdAt: new Date(at).toISOString(),
    clientId: "notice-42",
  });
  await kv.set(["idem", "ticket:1", "system", "notice-42"], 1, { expireIn: 23 * 3600_000 });
  await kv.set(["head", "ticket:1"], 1);
  kv.close();
  const server = await startTestServer({ ADMIN_TOKEN, DATA_DIR: dataDir });
  try {
    const call = (method: string, path: string, json?: unknown) =>
      fetch(`${server.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: json === undefined ? undefined : JSON.stringify(json),
      }).then(async (r) => [r.status, await r.json()] as const);
    const notice = { body: "maintenance tonight", client_id: "notice-42" };
    const [status, again] = await call("POST", "/api/rooms/ticket/1/messages", notice);
    assertEquals([status, again.seq, again.sender], [200, 1, null]);
    const [, list] = await call("GET", "/api/rooms/ticket/1/messages");
    assertEquals(list.messages.length, 1);
    // Another client id is a message of its own, and its resend is found under its new key.
    const [first, other] = await call("POST", "/api/rooms/ticket/1/messages", {
      body: "done",
      client_id: "notice-43",
    });
    const [second, same] = await call("POST", "/api/rooms/ticket/1/messages", {
      body: "done",
      client_id: "notice-43",
    });
    assertEquals([first, other.seq, second, same.seq], [201, 2, 200, 2]);
  } finally {
    await server.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("healthz says so while the media directory takes no files, and recovers; an unreadable file is 503, not 404; files a crash left half written are swept at start", async () => {
  const media = await Deno.makeTempDir({ prefix: "chat-media-" });
  // A write a crash cut short two hours ago, and one another instance may still be making.
  await Deno.mkdir(`${media}/files/ticket_1`, { recursive: true });
  const old = `${media}/files/ticket_1/.upload-old`;
  const young = `${media}/files/ticket_1/.upload-young`;
  const kept = `${media}/files/ticket_1/kept.png`;
  for (const path of [old, young, kept]) await Deno.writeTextFile(path, "x");
  const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
  await Deno.utime(old, twoHoursAgo, twoHoursAgo);
  await Deno.utime(kept, twoHoursAgo, twoHoursAgo);
  const server = await startTestServer({ MEDIA_DIR: media });
  try {
    const health = async () => {
      const res = await fetch(`${server.url}/healthz`);
      return { status: res.status, body: await res.json() };
    };
    assertEquals((await health()).status, 200);
    await eventually(async () => !(await Deno.stat(old).then(() => true, () => false)));
    for (const path of [young, kept]) await Deno.stat(path);

    // The volume goes away under the server: a file where the directory was.
    await Deno.rename(media, `${media}-away`);
    await Deno.writeTextFile(media, "not a directory");
    // A probe's answer stands for a second (the check writes, and anyone may ask).
    let down = await health();
    await eventually(async () => (down = await health()).status === 503, 3000, "the 503");
    assertEquals(down.body.status, "error");
    assertMatch(down.body.message, /^Media directory does not accept files: /);
    // The answer is public: it names no path.
    assertEquals(down.body.message.includes(media), false, down.body.message);

    await Deno.remove(media);
    await Deno.rename(`${media}-away`, media);
    await eventually(async () => (await health()).status === 200, 3000, "the 200");
    assertEquals(
      (await Array.fromAsync(Deno.readDir(media))).filter((e) => e.name.startsWith(".health")),
      [],
    );
    // A file the server cannot read (as root, permissions do not apply: a symlink loop stands in
    // for them) is not a deleted file: 503, not 404.
    await Deno.symlink("loop.png", `${media}/files/ticket_1/loop.png`);
    const unreadable = await fetch(`${server.url}/media/files/ticket_1/loop.png`);
    await unreadable.body?.cancel();
    assertEquals(unreadable.status, 503);
    for (const name of ["missing.png", "b".repeat(5000)]) {
      const missing = await fetch(`${server.url}/media/files/ticket_1/${name}`);
      await missing.body?.cancel();
      assertEquals(missing.status, 404, name.slice(0, 20));
    }
  } finally {
    await server.close();
    await Deno.remove(media, { recursive: true }).catch(() => {});
    await Deno.remove(`${media}-away`, { recursive: true }).catch(() => {});
  }
});

Deno.test("uploads: a body the client cuts short is answered 400 saying so, not 503", async () => {
  const server = await startTestServer();
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:9"] });
    const part = '--x\r\ncontent-disposition: form-data; name="file"; filename="a.txt"\r\n\r\n';
    // The client stops sending in the middle of its chunked body.
    const text = await rawExchange(
      server.url,
      `POST /api/rooms/ticket/9/attachments HTTP/1.1\r\nHost: x\r\n` +
        `Authorization: Bearer ${token}\r\n` +
        "Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n" +
        `${part.length.toString(16)}\r\n${part}\r\n`,
      true,
    );
    assert(text.startsWith("HTTP/1.1 400"), text);
    assertMatch(text, /The upload's body ended before its end/);
  } finally {
    await server.close();
  }
});

Deno.test("uploads: a body cut off by the server stopping is answered 503 with Retry-After, not 400", async () => {
  const server = await startTestServer({ UPLOAD_IDLE_SECONDS: "30" });
  let closing: Promise<void> | undefined;
  let release = () => {};
  const stalled = new Promise<void>((r) => release = r);
  try {
    const token = await server.token({ sub: "3", rooms: ["ticket:9"] });
    const head = '--x\r\ncontent-disposition: form-data; name="file"; filename="a.txt"\r\n\r\n';
    let sent = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (!sent) {
          sent = true;
          return controller.enqueue(new TextEncoder().encode(head));
        }
        // The rest never comes before the server stops.
        await stalled;
        controller.close();
      },
    });
    const upload = fetch(`${server.url}/api/rooms/ticket/9/attachments`, {
      method: "POST",
      body,
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "multipart/form-data; boundary=x",
      },
    });
    await eventually(async () => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      return Number(/^chat_api_upload_bytes (\d+)$/m.exec(text)?.[1]) > 0;
    });
    closing = server.close();
    const res = await upload;
    assertEquals([res.status, res.headers.get("retry-after"), (await res.json()).message], [
      503,
      "1",
      "The upload was cut off before its end by the server restarting: send it again",
    ]);
    release();
  } finally {
    release();
    await (closing ?? server.close());
  }
});

Deno.test("api: a JSON body the client cuts short is answered 400 saying so, not 500", async () => {
  const server = await startTestServer({ ADMIN_TOKEN });
  try {
    const part = '{"body":';
    // The client stops sending in the middle of its chunked body.
    const text = await rawExchange(
      server.url,
      `POST /api/rooms/ticket/9/messages HTTP/1.1\r\nHost: x\r\n` +
        `Authorization: Bearer ${ADMIN_TOKEN}\r\n` +
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
        `${part.length.toString(16)}\r\n${part}\r\n`,
      true,
    );
    assert(text.startsWith("HTTP/1.1 400"), text);
    assertMatch(text, /Body ended before its end/);
  } finally {
    await server.close();
  }
});

Deno.test("api: a JSON body cut off by the server stopping is answered 503 with Retry-After, not 500", async () => {
  const server = await startTestServer({ ADMIN_TOKEN });
  let closing: Promise<void> | undefined;
  let release = () => {};
  const stalled = new Promise<void>((r) => release = r);
  let reading = () => {};
  const read = new Promise<void>((r) => reading = r);
  try {
    let sent = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (!sent) {
          sent = true;
          return controller.enqueue(new TextEncoder().encode('{"body":'));
        }
        reading();
        // The rest never comes before the server stops.
        await stalled;
        controller.close();
      },
    });
    const send = fetch(`${server.url}/api/rooms/ticket/9/messages`, {
      method: "POST",
      body,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    });
    await read;
    await new Promise((r) => setTimeout(r, 100));
    closing = server.close();
    const res = await send;
    assertEquals([res.status, res.headers.get("retry-after"), (await res.json()).message], [
      503,
      "1",
      "Body was cut off before its end by the server restarting: send it again",
    ]);
    release();
  } finally {
    release();
    await (closing ?? server.close());
  }
});

Deno.test("api: a send waiting for its commit when the server stops is answered 503 with Retry-After, not 500", async () => {
  // Commits 10 s apart: the second send still waits for its commit when the server stops.
  const server = await startTestServer({
    ADMIN_TOKEN,
    COMMIT_PAUSE_CPU_PERCENT: "0",
    COMMIT_INTERVAL_MS: "10000",
  });
  let closing: Promise<void> | undefined;
  try {
    const post = (body: string) =>
      fetch(`${server.url}/api/rooms/ticket/5/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ body }),
      });
    const first = await post("first");
    await first.body?.cancel();
    assertEquals(first.status, 201);
    const waiting = post("second");
    await new Promise((r) => setTimeout(r, 300));
    closing = server.close();
    const res = await waiting;
    const reply = await res.json();
    assertEquals([res.status, res.headers.get("retry-after")], [503, "1"], JSON.stringify(reply));
  } finally {
    await (closing ?? server.close());
  }
});

apiTest(
  "attachments: any user may upload as themselves into a room they may enter, nowhere else",
  async (s) => {
    await s.api("PUT", "/api/users/3", { json: { username: "agent3" } });
    await s.api("PUT", "/api/rooms/ticket/6", { json: { participants: [{ user_id: "3" }] } });
    const member = await s.token({ sub: "3", username: "agent3" });
    const outsider = await s.token({ sub: "4" });
    const listener = await TestClient.open(`${s.wsUrl}/ws/ticket/6/?token=${member}`);
    const upload = (token: string, room: string, extra: Record<string, string> = {}) => {
      const form = new FormData();
      form.append("file", new File(["bytes"], "mine.txt"));
      for (const [k, v] of Object.entries(extra)) form.append(k, v);
      return s.api("POST", `/api/rooms/${room}/attachments`, { body: form, token });
    };
    const ok = await upload(member, "ticket/6");
    assertEquals(ok.status, 201, JSON.stringify(ok.body));
    assertEquals((ok.body.sender as Json).id, 3);
    assertEquals((await listener.next()).file, (ok.body.attachments as Json[])[0].url);
    assertEquals((await upload(member, "ticket/6", { sender_id: "9" })).status, 403);
    assertEquals((await upload(outsider, "ticket/6")).status, 403);
    // An admin by token role, with no sender_id (as the chat page uploads): as themselves too.
    const admin = await s.token({ sub: "5", username: "boss", role: "admin" });
    const own = await upload(admin, "ticket/6");
    assertEquals([own.status, (own.body.sender as Json)?.id], [201, 5]);
    assertEquals(((await listener.next()).sender as Json).id, 5);
    // Everything else in the API still needs an admin.
    assertEquals((await s.api("GET", "/api/rooms/ticket/6", { token: member })).status, 403);
    await listener.close();
  },
);

apiTest(
  "attachments: a caption's line breaks, which every form encoder sends as CRLF, are stored and delivered as LF, as the sockets store them",
  async (s) => {
    const token = await s.token({ sub: "3", rooms: ["ticket:5"] });
    const listener = await TestClient.open(`${s.wsUrl}/ws/ticket/5/?token=${token}`);
    const form = new FormData();
    form.append("body", "first line\nsecond line");
    form.append("file", new File([new Uint8Array([1, 2, 3])], "a.png"));
    const res = await s.api("POST", "/api/rooms/ticket/5/attachments", { body: form, token });
    assertEquals([res.status, res.body.body], [201, "first line\nsecond line"]);
    assertEquals((await listener.next()).body, "first line\nsecond line");
    await listener.close();
  },
);

apiTest(
  "a room only token claims open is deleted with its history; empty query parameters count as absent",
  async (s) => {
    for (let i = 1; i <= 3; i++) {
      const res = await s.api("POST", "/api/rooms/chat/55/messages", { json: { body: `m${i}` } });
      assertEquals(res.status, 201);
    }
    // `?before=&after=&limit=` as a URL template filled with nothing: the newest page.
    for (const query of ["before=&after=&limit=", "before=%20"]) {
      const page = await s.api("GET", `/api/rooms/chat/55/messages?${query}`);
      assertEquals(page.status, 200);
      assertEquals((page.body.messages as Json[]).map((m) => m.body), ["m1", "m2", "m3"]);
      assertEquals(page.body.has_more, false);
    }
    assertEquals((await s.api("GET", "/api/rooms/chat?limit=&after=")).status, 200);

    assertEquals((await s.api("GET", "/api/rooms/chat/55")).status, 404);
    const token = await s.token({ sub: "9", rooms: ["chat:55"] });
    const socket = await TestClient.open(`${s.wsUrl}/ws/chat/55/?token=${token}`);
    await socket.next((f) => f.type === "connection_established");
    // A chat-rooms client in a named room with history, deleted too.
    const lobby = await TestClient.open(`${s.wsUrl}/ws/rooms/lobby55/?token=${token}`);
    await lobby.next((f) => f.type === "room_users_list");
    lobby.send({ message: "hello" });
    await lobby.next((f) => f.type === "chat_message");
    assertEquals((await s.api("DELETE", "/api/rooms/chat/55")).status, 204);
    // Each protocol's own code for a room that is not there: the conversation's 4404.
    assertEquals(await socket.closed, { code: 4404, reason: "Room deleted" });
    assertEquals((await s.api("DELETE", "/api/rooms/room/lobby55")).status, 204);
    // The chat rooms' "Room not found or could not be created".
    assertEquals(await lobby.closed, { code: 4000, reason: "Room deleted" });
    const after = await s.api("GET", "/api/rooms/chat/55/messages");
    assertEquals(after.body.messages, []);
    assertEquals((await s.api("DELETE", "/api/rooms/chat/55")).body, {
      status: 404,
      message: 'Room "chat:55" not found',
    });
  },
);

apiTest(
  "an ordinary user's uploads count against the per-user send limit the sockets apply",
  async (s) => {
    const token = await s.token({ sub: "3", username: "three" });
    const statuses: number[] = [];
    let limited: Json | undefined;
    let retryAfter: string | null = null;
    for (let i = 0; i < 8; i++) {
      const form = new FormData();
      form.append("file", new File([`${i}`], `f${i}.txt`));
      const res = await s.api("POST", "/api/rooms/room/pub/attachments", { body: form, token });
      statuses.push(res.status);
      if (res.status === 429) [limited, retryAfter] = [res.body, res.headers.get("retry-after")];
    }
    // Burst: twice the per-second rate (2), then refused until tokens refill.
    assert(statuses.slice(0, 4).every((code) => code === 201), String(statuses));
    assert(statuses.includes(429), String(statuses));
    assertEquals(limited, {
      status: 429,
      message: "Too many messages: slow down",
      code: "rate_limited",
    });
    assertEquals(retryAfter, "1");
    const stored = await s.api("GET", "/api/rooms/room/pub/messages");
    assertEquals(
      (stored.body.messages as Json[]).length,
      statuses.filter((code) => code === 201).length,
    );
  },
  { RATE_LIMIT_USER_PER_SECOND: "2" },
);

apiTest(
  "uploads: the bytes read at once are bounded, 503 with Retry-After past it; an outsider is refused before the upload is read",
  async (s) => {
    await s.api("PUT", "/api/rooms/ticket/7", { json: { participants: [{ user_id: "3" }] } });
    const boundary = { "content-type": "multipart/form-data; boundary=x" };
    const part = '--x\r\ncontent-disposition: form-data; name="file"; filename="slow.txt"\r\n' +
      "content-type: text/plain\r\n\r\nslow";
    // An upload still arriving, with no length: it holds the most it may be, the whole bound.
    let release!: () => void;
    const gate = new Promise<void>((r) => release = r);
    const held = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode(part));
        await gate;
        controller.enqueue(new TextEncoder().encode("\r\n--x--\r\n"));
        controller.close();
      },
    });
    const slow = s.api("POST", "/api/rooms/ticket/7/attachments", {
      body: held,
      headers: boundary,
    });
    const heldBytes = async () => {
      const text = await (await fetch(`${s.url}/metrics`)).text();
      return Number(/^chat_api_upload_bytes (\d+)$/m.exec(text)?.[1]);
    };
    const quick = () => {
      const form = new FormData();
      form.append("file", new File(["x"], "quick.txt"));
      return s.api("POST", "/api/rooms/ticket/7/attachments", { body: form });
    };
    try {
      await eventually(async () => (await heldBytes()) > 0, 5000, "the upload to be held");
      const busy = await quick();
      assertEquals([busy.status, busy.headers.get("retry-after")], [503, "1"]);
      assertEquals(busy.body.message, "Too many uploads are being read at once: try again shortly");
    } finally {
      // Also when an assertion failed: the held upload would keep the server from closing.
      release();
    }
    assertEquals((await slow).status, 201);
    assertEquals(await heldBytes(), 0);
    assertEquals((await quick()).status, 201);
    const history = await s.api("GET", "/api/rooms/ticket/7/messages");
    assertEquals(
      (history.body.messages as Json[]).map((m) => (m.attachments as Json[])[0].name),
      ["slow.txt", "quick.txt"],
    );

    // Refused before the upload is read: read first, a body this long would have been cut
    // off at the cap with 413.
    const outsider = await s.token({ sub: "4" });
    let sent = 0;
    const long = new ReadableStream<Uint8Array>({
      pull(controller) {
        sent += 64 * 1024;
        if (sent > 16 * 1024 * 1024) controller.close();
        else controller.enqueue(new Uint8Array(64 * 1024));
      },
    });
    const refused = await s.api("POST", "/api/rooms/ticket/7/attachments", {
      body: long,
      headers: boundary,
      token: outsider,
    });
    assertEquals([refused.status, refused.body.message], [403, "Access denied to this room"]);
  },
  { MAX_FILE_BYTES: "4096", UPLOAD_MEMORY_BYTES: "1" },
);

apiTest(
  "uploads: one that stops arriving is ended with 408 and gives its share of the bound back",
  async (s) => {
    const part = '--x\r\ncontent-disposition: form-data; name="file"; filename="a.txt"\r\n\r\nab';
    let stop!: () => void;
    const stopped = new Promise<void>((r) => stop = r);
    const stalled = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode(part));
        // Nothing more until the test is over.
        await stopped;
        controller.close();
      },
    });
    // Should the server wait for ever, the body ends after 10 s and the status shows it.
    const guard = setTimeout(stop, 10_000);
    try {
      const started = Date.now();
      const res = await s.api("POST", "/api/rooms/ticket/8/attachments", {
        body: stalled,
        headers: { "content-type": "multipart/form-data; boundary=x" },
      });
      assertEquals([res.status, res.body.message], [
        408,
        "Upload stalled: nothing arrived for 1 s",
      ]);
      assert(Date.now() - started < 10_000);
    } finally {
      clearTimeout(guard);
      stop();
    }
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assertMatch(metrics, /^chat_api_upload_bytes 0$/m);
    const form = new FormData();
    form.append("file", new File(["x"], "after.txt"));
    assertEquals(
      (await s.api("POST", "/api/rooms/ticket/8/attachments", { body: form })).status,
      201,
    );
  },
  { MAX_FILE_BYTES: "4096", UPLOAD_MEMORY_BYTES: "1", UPLOAD_IDLE_SECONDS: "1" },
);

/** A multipart upload of one file that brings a byte every 200 ms until `stop`. */
function dripUpload() {
  let dripping = true;
  let next = '--x\r\ncontent-disposition: form-data; name="file"; filename="drip.txt"\r\n\r\n';
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!dripping) return controller.close();
      await new Promise((r) => setTimeout(r, 200));
      controller.enqueue(new TextEncoder().encode(next));
      next = "a";
    },
  });
  return { body, stop: () => dripping = false };
}

apiTest(
  "uploads: a user with UPLOADS_PER_USER under way is refused with 429; a body that drips past UPLOAD_TIMEOUT_SECONDS is ended with 408",
  async (s) => {
    await s.api("PUT", "/api/rooms/ticket/9", { json: { participants: [{ user_id: "3" }] } });
    const token = await s.token({ sub: "3", username: "three" });
    // A byte every 200 ms: never idle for UPLOAD_IDLE_SECONDS, never done either.
    const { body: drip, stop } = dripUpload();
    const quick = (who?: string) => {
      const form = new FormData();
      form.append("file", new File(["x"], "quick.txt"));
      return s.api("POST", "/api/rooms/ticket/9/attachments", { body: form, token: who });
    };
    // Should the server wait for ever, the body ends after 15 s and the status shows it.
    const guard = setTimeout(stop, 15_000);
    try {
      const started = Date.now();
      const slow = s.api("POST", "/api/rooms/ticket/9/attachments", {
        body: drip,
        headers: { "content-type": "multipart/form-data; boundary=x" },
        token,
      });
      await eventually(
        async () => {
          const text = await (await fetch(`${s.url}/metrics`)).text();
          return Number(/^chat_api_upload_bytes (\d+)$/m.exec(text)?.[1]) > 0;
        },
        5000,
        "the dripping upload to be held",
      );
      const refused = await quick(token);
      assertEquals([refused.status, refused.headers.get("retry-after"), refused.body], [429, "1", {
        status: 429,
        message: "Too many uploads at once: at most 1 per user; try again when one is done",
        code: "rate_limited",
      }]);
      // Someone else is not held up by this user's upload.
      assertEquals((await quick()).status, 201);
      const ended = await slow;
      assertEquals([ended.status, ended.body.message], [
        408,
        "Upload too slow: not all of it arrived within 2 s",
      ]);
      assert(Date.now() - started < 15_000);
    } finally {
      clearTimeout(guard);
      stop();
    }
    // Its turn given back: the user uploads again.
    assertEquals((await quick(token)).status, 201);
    const history = await s.api("GET", "/api/rooms/ticket/9/messages");
    assertEquals(
      (history.body.messages as Json[]).map((m) => (m.attachments as Json[])[0].name),
      ["quick.txt", "quick.txt"],
    );
  },
  { MAX_FILE_BYTES: "4096", UPLOADS_PER_USER: "1", UPLOAD_TIMEOUT_SECONDS: "2" },
);

apiTest(
  "uploads: a body that drips (a byte at a time, never idle) is ended with 408 once two idle periods bring less than 16 KiB, giving its share of the upload memory back",
  async (s) => {
    await s.api("PUT", "/api/rooms/ticket/9", { json: { participants: [{ user_id: "3" }] } });
    const token = await s.token({ sub: "3", username: "three" });
    const { body: drip, stop } = dripUpload();
    const held = async () => {
      const text = await (await fetch(`${s.url}/metrics`)).text();
      return Number(/^chat_api_upload_bytes (\d+)$/m.exec(text)?.[1]);
    };
    // Should the server wait for ever, the body ends after 15 s and the status shows it.
    const guard = setTimeout(stop, 15_000);
    try {
      const started = Date.now();
      const ended = await s.api("POST", "/api/rooms/ticket/9/attachments", {
        body: drip,
        headers: {
          "content-type": "multipart/form-data; boundary=x",
          "content-length": "4000",
        },
        token,
      });
      assertEquals([ended.status, ended.body.message], [
        408,
        "Upload stalled: less than 16 KiB arrived in 2 s",
      ]);
      assert(Date.now() - started < 5000, `${Date.now() - started} ms`);
      assertEquals(await held(), 0);
    } finally {
      clearTimeout(guard);
      stop();
    }
  },
  { MAX_FILE_BYTES: "4096", UPLOAD_IDLE_SECONDS: "1" },
);

apiTest(
  "uploads: idle and overall limits of weeks (past a timer's 2^31 ms) do not end an upload at its start",
  async (s) => {
    await s.api("PUT", "/api/rooms/ticket/9", { json: { participants: [{ user_id: "3" }] } });
    // In two pieces 100 ms apart: the timers run while it arrives.
    const pieces = [
      '--x\r\ncontent-disposition: form-data; name="file"; filename="patient.txt"\r\n\r\nx',
      '\r\n--x\r\ncontent-disposition: form-data; name="body"\r\n\r\nlater\r\n--x--\r\n',
    ];
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const piece = pieces.shift();
        if (piece === undefined) return controller.close();
        if (pieces.length === 0) await new Promise((r) => setTimeout(r, 100));
        controller.enqueue(new TextEncoder().encode(piece));
      },
    });
    const res = await s.api("POST", "/api/rooms/ticket/9/attachments", {
      body,
      headers: { "content-type": "multipart/form-data; boundary=x" },
      token: await s.token({ sub: "3", username: "three" }),
    });
    assertEquals(res.status, 201, JSON.stringify(res.body));
  },
  { UPLOAD_IDLE_SECONDS: "1500000", UPLOAD_TIMEOUT_SECONDS: "3000000" },
);
