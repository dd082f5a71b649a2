import { assert, assertEquals, assertMatch } from "../../tests/assert.ts";
import { DirectoryUnavailable } from "./directory.ts";
import {
  answeringDirectory,
  FailureLog,
  FULL_PER_MINUTE,
  SETTLE_MS,
  STILL_EVERY_MS,
  unavailableStore,
} from "./failure_log.ts";
import type { Directory } from "./directory.ts";

/** A failure log on a clock the test moves, and the lines it wrote. */
function logged() {
  const clock = { now: 1_000_000 };
  const lines: string[] = [];
  const log = new FailureLog({
    log: (...data) => lines.push(data.map((d) => d instanceof Error ? d.stack : d).join(" ")),
    now: () => clock.now,
  });
  return { clock, lines, log };
}

const kvFull = () => new TypeError("database or disk is full");

Deno.test("unavailableStore: KV's, the directory's and the media volume's refusals, nothing else", () => {
  const os = (code: string) => Object.assign(new Error(`os (os error 28)`), { code });
  const sqlite = (message: string) =>
    Object.assign(new Error(message), { code: "ERR_SQLITE_ERROR" });
  assertEquals(unavailableStore(kvFull()), "kv");
  assertEquals(unavailableStore(new TypeError("database is locked")), "kv");
  assertEquals(unavailableStore(new DirectoryUnavailable("locked")), "directory");
  assertEquals(
    unavailableStore(Object.assign(new Error("x"), { code: "ECONNREFUSED" })),
    "directory",
  );
  assertEquals(unavailableStore(sqlite("database or disk is full")), "directory");
  // pg's connections the OS or the network refused: the directory's, whatever their code.
  const net = (message: string, fields: Record<string, unknown>) =>
    Object.assign(new Error(message), fields);
  assertEquals(
    unavailableStore(
      net("connect EACCES /var/run/postgresql/.s.PGSQL.5432", {
        code: "EACCES",
        syscall: "connect",
        address: "/var/run/postgresql/.s.PGSQL.5432",
      }),
    ),
    "directory",
  );
  assertEquals(
    unavailableStore(net("connect EPERM 10.0.0.5:5432", { code: "EPERM", address: "10.0.0.5" })),
    "directory",
  );
  assertEquals(
    unavailableStore(
      net("getaddrinfo EAI_AGAIN db", { code: "EAI_AGAIN", syscall: "getaddrinfo" }),
    ),
    "directory",
  );
  // An OS code alone names no store: the media volume's refusals are told by the media store.
  for (const code of ["ENOSPC", "EROFS", "EACCES", "EPERM", "EIO"]) {
    assertEquals(unavailableStore(os(code)), undefined, code);
  }
  assertEquals(unavailableStore(new Error("wrapped", { cause: kvFull() })), "kv");
  assertEquals(unavailableStore(sqlite("no such table: users")), undefined);
  assertEquals(unavailableStore(new TypeError("x is not a function")), undefined);
  assertEquals(unavailableStore("text"), undefined);
});

Deno.test("FailureLog: an outage is one line, its refusals counted, and one more line once it answers and stays up", () => {
  const { clock, lines, log } = logged();
  for (let i = 0; i < 40; i++) {
    log.failed("Unexpected error while handling a client frame", kvFull(), `native, room r:${i}`);
    clock.now += 100;
  }
  assertEquals(lines.length, 1, lines.join("\n"));
  assertMatch(
    lines[0],
    /^outage: KV does not accept writes: TypeError: database or disk is full\./,
  );
  assertMatch(
    lines[0],
    /\(first: Unexpected error while handling a client frame \(native, room r:0\)\)$/,
  );
  // An answer, then a refusal within the settling time: still the same outage.
  log.answered("kv");
  clock.now += SETTLE_MS / 2;
  log.failed("api: POST /x failed", kvFull());
  log.answered("kv");
  log.tick();
  clock.now += SETTLE_MS / 2;
  log.tick();
  assertEquals(lines.length, 1, "over before it settled");
  clock.now += SETTLE_MS / 2;
  log.tick();
  assertEquals(lines.slice(1), [
    "outage over: KV accepts writes again after 5 s; 41 refused meanwhile",
  ]);
  // The next is a new outage, logged again.
  log.failed("api: POST /x failed", kvFull());
  assertEquals(lines.length, 3);
  assertMatch(lines[2], /^outage: KV does not accept writes/);
});

Deno.test("FailureLog: a long outage says now and then how much it refused", () => {
  const { clock, lines, log } = logged();
  log.failed("s", kvFull());
  for (let i = 0; i < 25; i++) {
    clock.now += 30_000;
    log.failed("s", kvFull());
  }
  assertEquals(lines.length, 2, lines.join("\n"));
  assertEquals(
    lines[1].replace(/since \S+$/, "since T"),
    "outage: KV does not accept writes still (TypeError: database or disk is full): 20 refused " +
      "in the last 10 min, 21 since T",
  );
  assert(STILL_EVERY_MS === 20 * 30_000);
});

Deno.test("FailureLog: an outage of writes for another's lock, a full or read-only disk ends at a write's answer, not a read's", () => {
  const { clock, lines, log } = logged();
  log.failed("api: PUT /api/users/{id} failed", new DirectoryUnavailable("stayed locked"));
  log.answered("directory", "read");
  clock.now += SETTLE_MS;
  log.tick();
  assertEquals(lines.length, 1, lines.join("\n"));
  log.answered("directory", "write");
  log.tick();
  assertEquals(lines.length, 2, lines.join("\n"));
  assertMatch(
    lines[1],
    /^outage over: the directory answers again after 2 s; 1 refused meanwhile$/,
  );
  // A full disk or a read-only volume under the SQLite directory, Postgres's disk full: reads
  // pass while writes fail, as with another's lock.
  const full = Object.assign(new Error("database or disk is full"), { code: "ERR_SQLITE_ERROR" });
  const readOnly = Object.assign(new Error("attempt to write a readonly database"), {
    code: "ERR_SQLITE_ERROR",
  });
  const pgFull = Object.assign(new Error("could not extend file"), { code: "53100" });
  for (const err of [full, readOnly, pgFull]) {
    const before = lines.length;
    log.failed("api: PUT /api/users/{id} failed", err);
    assertEquals(lines.length, before + 1, err.message);
    log.answered("directory", "read");
    clock.now += SETTLE_MS;
    log.tick();
    assertEquals(lines.length, before + 1, `over at a read: ${lines.at(-1)}`);
    log.answered("directory", "write");
    log.tick();
    assertMatch(lines.at(-1)!, /^outage over: the directory answers again/);
  }
  // A Postgres that does not answer at all: a read's answer is enough.
  const refused = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
  log.failed("api: GET /x failed", refused);
  log.answered("directory", "read");
  clock.now += SETTLE_MS;
  log.tick();
  assertMatch(lines.at(-1)!, /^outage over: the directory answers again/);
});

Deno.test("FailureLog: other errors are logged in full a few times a minute per message, the rest counted", () => {
  const { clock, lines, log } = logged();
  for (let i = 0; i < 50; i++) {
    log.failed(
      "Unexpected error while handling a client frame",
      new TypeError("boom"),
      `user ${i}`,
    );
    log.failed("api: GET /x failed", new RangeError("other"));
  }
  assertEquals(lines.length, 2 * FULL_PER_MINUTE, lines.join("\n"));
  assert(
    lines[0].startsWith(
      "Unexpected error while handling a client frame (user 0): TypeError: boom\n    at ",
    ),
  );
  clock.now += 60_000;
  log.tick();
  assertEquals(lines.slice(2 * FULL_PER_MINUTE).map((l) => l.replace(/after \S+,/, "after T,")), [
    "Unexpected error while handling a client frame: 47 more in the minute after T, not logged " +
    "one by one: TypeError: boom",
    "api: GET /x failed: 47 more in the minute after T, not logged one by one: RangeError: other",
  ]);
  // A new minute: in full again.
  log.failed("api: GET /x failed", new RangeError("other"));
  assertEquals(lines.length, 2 * FULL_PER_MINUTE + 3);
});

Deno.test("FailureLog: a stop logs what the next minute or answer would have: the counts under way and the outages not over", () => {
  const { clock, lines, log } = logged();
  log.refused("kv", kvFull(), "send failed");
  log.refused("kv", kvFull(), "send failed");
  for (let i = 0; i < FULL_PER_MINUTE + 4; i++) log.failed("api: GET /x failed", new Error("x"));
  clock.now += 30_000;
  log.flush();
  assertEquals(lines.slice(1 + FULL_PER_MINUTE), [
    "outage: KV does not accept writes still at stop: 2 refused since 1970-01-01T00:16:40.000Z",
    "api: GET /x failed: 4 more since 1970-01-01T00:16:40.000Z (30 s before the stop), not " +
    "logged one by one: Error: x",
  ]);
  // Logged once: nothing is owed any more.
  clock.now += 60_000;
  log.tick();
  log.flush();
  assertEquals(lines.length, 1 + FULL_PER_MINUTE + 2);
});

Deno.test("FailureLog: with a redactor, the lines and the errors' text pass through it, stacks included", () => {
  const { lines, log } = logged();
  const secret = "s3cr3t-pw";
  const err = new Error(`connect failed for postgres://app:${secret}@db/chat`);
  log.failed("before", err);
  assert(lines[0].includes(secret), lines[0]);
  log.redactWith((text) => text.replaceAll(secret, "***"));
  log.failed("after", err);
  log.refused("directory", new DirectoryUnavailable(`locked (${secret})`), `site ${secret}`);
  assertEquals(lines.length, 3);
  for (const line of lines.slice(1)) assert(!line.includes(secret), line);
  assertMatch(
    lines[1],
    /^after: Error: connect failed for postgres:\/\/app:\*\*\*@db\/chat\n\s+at /,
  );
  assertMatch(
    lines[2],
    /^outage: the directory does not answer: DirectoryUnavailable: locked \(\*\*\*\)/,
  );
});

Deno.test("answeringDirectory: the directory's answers reach the log, reads as reads; its own fields still work", async () => {
  const { clock, lines, log } = logged();
  class Fake {
    #token = "t1";
    changeToken() {
      return this.#token;
    }
    getUser() {
      return Promise.resolve(null);
    }
    upsertUser() {
      return Promise.reject(new DirectoryUnavailable("stayed locked"));
    }
    deleteRoom() {
      return Promise.resolve(true);
    }
  }
  const directory = answeringDirectory(new Fake() as unknown as Directory, log);
  assertEquals(directory.changeToken?.(), "t1");
  await directory.upsertUser({ id: "1" }).catch((err) => log.failed("api: PUT failed", err));
  await directory.getUser("1");
  clock.now += SETTLE_MS;
  log.tick();
  assertEquals(lines.length, 1, lines.join("\n"));
  await directory.deleteRoom("ticket", "1");
  log.tick();
  assertEquals(lines.length, 2, lines.join("\n"));
});
