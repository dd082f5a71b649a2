import { assert, assertEquals } from "../../tests/assert.ts";
import { mayMount, smallDisk } from "../../tests/server_process.ts";
import { freeBytes, reservePath, SpaceReserve } from "./space_reserve.ts";

const MIB = 1024 * 1024;

/**
 * A reserve (2 MiB unless told: low mark 1 MiB, written again at 5 MiB free) beside `dir`'s KV
 * file, as each server sharing it keeps, on a volume whose free bytes `free` tells; its lines go
 * to `logged`.
 */
const reserveAt = (
  dir: string,
  free: () => number | undefined,
  { bytes = 2 * MIB, logged = [] as string[] } = {},
) =>
  new SpaceReserve(`${dir}/chat.kv`, {
    bytes,
    pollMs: 60_000,
    log: (line) => logged.push(line),
    free: () => Promise.resolve(free()),
  });

/**
 * Runs `fn` in a fresh directory, with `at` making reserves there as {@link reserveAt} does;
 * every reserve it made is stopped after, and the directory removed.
 */
async function inDir(
  fn: (
    dir: string,
    at: (free: () => number | undefined, options?: Parameters<typeof reserveAt>[2]) => SpaceReserve,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "space-reserve-" });
  const made: SpaceReserve[] = [];
  try {
    await fn(dir, (free, options) => {
      const reserve = reserveAt(dir, free, options);
      made.push(reserve);
      return reserve;
    });
  } finally {
    for (const reserve of made) await reserve.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** The names in `dir`, sorted. */
const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("SpaceReserve writes its file with real bytes, releases it below the low mark or at a refused write, and writes it again only well above", () =>
  inDir(async (dir, at) => {
    let free = 100 * MIB;
    const logged: string[] = [];
    const reserve = at(() => free, { logged });
    assertEquals(reserve.path, reservePath(`${dir}/chat.kv`));
    assertEquals(reserve.path, `${dir}/.chat.kv-reserve`);
    await reserve.start();
    const written = await Deno.stat(reserve.path);
    assertEquals(written.size, 2 * MIB);
    // Allocated, not sparse.
    assert((written.blocks ?? 0) * 512 >= 2 * MIB, JSON.stringify(written));
    assertEquals([reserve.short, logged.length], [false, 0]);

    free = MIB / 2;
    await reserve.check();
    assert(reserve.short);
    assertEquals(await Deno.stat(reserve.path).catch(() => "gone"), "gone");
    // Its bytes freed at once (the mark is emptied), not a reading later.
    assertEquals((await Deno.stat(`${reserve.path}.released`)).size, 0);
    assert(/released the 2\.0 MiB space reserve/.test(logged[0]), logged[0]);
    // Between the marks: still short, nothing more said.
    free = 4 * MIB;
    await reserve.check();
    assertEquals([reserve.short, logged.length], [true, 1]);
    free = 10 * MIB;
    await reserve.check();
    assertEquals([reserve.short, (await Deno.stat(reserve.path)).size], [false, 2 * MIB]);
    assert(/has room again/.test(logged[1]), logged[1]);

    // A write refused for want of space, before the next reading says so.
    free = 4 * MIB;
    reserve.storageFailed();
    await reserve.check();
    assert(reserve.short);
    // With plenty free, a refusal is some other trouble: the reserve stays.
    free = 100 * MIB;
    await reserve.check();
    assertEquals(reserve.short, false);
    reserve.storageFailed();
    await reserve.check();
    assertEquals([reserve.short, logged.length], [false, 4]);
  }));

Deno.test("freeBytes reads the volume's free bytes, and says nothing of a path that is not there", async () => {
  assert(((await freeBytes(Deno.cwd())) ?? 0) > 0);
  assertEquals(await freeBytes("/no/such/dir/here"), undefined);
});

Deno.test("SpaceReserve that cannot read the volume's free space (no --allow-sys) says so once, writes no file and never refuses", () =>
  inDir(async (_dir, at) => {
    const logged: string[] = [];
    const reserve = at(() => undefined, { bytes: MIB, logged });
    await reserve.start();
    await reserve.check();
    assertEquals(logged.length, 1);
    assert(/statfs needs --allow-sys/.test(logged[0]), logged[0]);
    assertEquals([reserve.short, await Deno.stat(reserve.path).then(() => "there", () => "none")], [
      false,
      "none",
    ]);
  }));

Deno.test("SpaceReserve: a server sharing the file, or started after, refuses too while another's release stands, and each takes sends again once there is room", () =>
  inDir(async (dir, at) => {
    let free = 100 * MIB;
    const reserveOn = () => at(() => free);
    const [a, b] = [reserveOn(), reserveOn()];
    const started: SpaceReserve[] = [a, b];
    await a.start();
    await b.start();
    // Between the low mark and room for the reserve: only the one that reads first releases it.
    free = MIB / 2;
    await a.check();
    free = 3 * MIB;
    await b.check();
    assertEquals([a.short, b.short], [true, true]);
    // A restart meanwhile (or a new server) finds the release standing.
    const c = reserveOn();
    started.push(c);
    await c.start();
    assert(c.short);
    free = 100 * MIB;
    for (const r of started) await r.check();
    assertEquals(started.map((r) => r.short), [false, false, false]);
    assertEquals((await Deno.stat(a.path)).size, 2 * MIB);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), [".chat.kv-reserve"]);
  }));

Deno.test("SpaceReserve: a server that refused sends takes them again once another sharing the file wrote the reserve back, though less than room for another is free", () =>
  inDir(async (_dir, at) => {
    let free = 100 * MIB;
    const logged: string[] = [];
    const reserveOn = () => at(() => free, { logged });
    const [a, b] = [reserveOn(), reserveOn()];
    await a.start();
    await b.start();
    free = MIB / 2;
    await a.check();
    await b.check();
    assertEquals([a.short, b.short], [true, true]);
    // Only the one that released it says it did.
    assertEquals(logged.filter((line) => /released the/.test(line)).length, 1);
    free = 100 * MIB;
    await a.check();
    // What the reserve A wrote took leaves B less than room for another.
    free = 3 * MIB;
    await b.check();
    assertEquals([a.short, b.short], [false, false]);
  }));

Deno.test("SpaceReserve writes one at a time: a write under way elsewhere is left to finish, one a crash cut short is taken over once a minute old", () =>
  inDir(async (dir, at) => {
    const reserve = at(() => 100 * MIB, { bytes: MIB });
    const writing = `${reserve.path}.writing`;
    await Deno.writeFile(writing, new Uint8Array(10));
    await reserve.start();
    assertEquals(names(dir), [".chat.kv-reserve.writing"]);
    const hourAgo = new Date(Date.now() - 3_600_000);
    await Deno.utime(writing, hourAgo, hourAgo);
    await reserve.check();
    await reserve.check();
    assertEquals(names(dir), [".chat.kv-reserve"]);
    assertEquals((await Deno.stat(reserve.path)).size, MIB);
  }));

Deno.test("SpaceReserve acts on what the files say at each reading: a reserve deleted by hand is written again, and one another server wrote back is released when the volume fills again", () =>
  inDir(async (_dir, at) => {
    let free = 100 * MIB;
    const reserveOn = () => at(() => free);
    const [a, b] = [reserveOn(), reserveOn()];
    const size = () => Deno.stat(a.path).then((s) => s.size, () => 0);
    await a.start();
    await b.start();
    await Deno.remove(a.path);
    await a.check();
    assertEquals(await size(), 2 * MIB);
    // Both refuse; A writes the reserve back once there is room, then stops.
    free = MIB / 2;
    await a.check();
    await b.check();
    free = 100 * MIB;
    await a.check();
    await a.stop();
    // The volume fills before B read it again: B, refusing all along, releases the reserve.
    free = MIB / 2;
    await b.check();
    assertEquals([b.short, await size()], [true, 0]);
  }));

// Files a crash leaves, on a volume whose free space is what the files in it leave.

/** A volume of `room` bytes for the files in `dir`: free is what they leave. */
function volume(dir: string, room: () => number) {
  return () => {
    let used = 0;
    for (const e of Deno.readDirSync(dir)) used += Deno.statSync(`${dir}/${e.name}`).size;
    return Math.max(0, room() - used);
  };
}

const zeros = (n: number) => new Uint8Array(n);

Deno.test("SpaceReserve: a write of it a crash cut short after a release is taken over, though it holds the room the write-back needs", () =>
  inDir(async (dir, at) => {
    const r = at(volume(dir, () => 6 * MIB)); // 6 MiB free once the stale write is gone
    await Deno.writeFile(`${dir}/.chat.kv-reserve.released`, zeros(0));
    await Deno.writeFile(`${dir}/.chat.kv-reserve.writing`, zeros(2 * MIB));
    const old = new Date(Date.now() - 10 * 60_000);
    await Deno.utime(`${dir}/.chat.kv-reserve.writing`, old, old);
    await r.start();
    for (let i = 0; i < 5; i++) await r.check();
    // Expected: the 10-minute-old write taken over, the reserve written, sends taken.
    assertEquals([r.short, names(dir)], [false, [".chat.kv-reserve"]]);
  }));

Deno.test("SpaceReserve: a release a crash cut short (its bytes in the mark) is emptied below the low mark too", () =>
  inDir(async (dir, at) => {
    const r = at(volume(dir, () => 2.5 * MIB)); // 0.5 MiB free while the mark holds 2
    await Deno.writeFile(`${dir}/.chat.kv-reserve.released`, zeros(2 * MIB));
    await r.start();
    for (let i = 0; i < 3; i++) await r.check();
    assertEquals(r.short, true);
    // Expected: the 2 MiB left in the mark freed for KV.
    assertEquals((await Deno.stat(`${dir}/.chat.kv-reserve.released`)).size, 0);
  }));

Deno.test("SpaceReserve: a smaller reserve, from before SPACE_RESERVE_MB was raised, is released below the low mark", () =>
  inDir(async (dir, at) => {
    await Deno.writeFile(`${dir}/.chat.kv-reserve`, zeros(1 * MIB)); // the old, smaller reserve
    const r = at(volume(dir, () => 1.5 * MIB)); // 0.5 MiB free
    await r.start();
    for (let i = 0; i < 3; i++) await r.check();
    assertEquals(r.short, true);
    // Expected: its 1 MiB freed for KV.
    assertEquals(await Deno.stat(`${dir}/.chat.kv-reserve`).then((s) => s.size, () => 0), 0);
  }));

Deno.test("SpaceReserve: a whole reserve beside a mark a crash left (between the write-back and the mark's removal) takes sends", () =>
  inDir(async (dir, at) => {
    await Deno.writeFile(`${dir}/.chat.kv-reserve`, zeros(2 * MIB));
    await Deno.writeFile(`${dir}/.chat.kv-reserve.released`, zeros(0));
    const r = at(volume(dir, () => 6 * MIB)); // 4 MiB free with the reserve whole
    await r.start();
    for (let i = 0; i < 3; i++) await r.check();
    // Expected: the reserve stands whole with 3 MiB above the low mark: sends taken.
    assertEquals(r.short, false);
  }));

Deno.test("SpaceReserve: a write a crash left at the first start is taken over between the marks, and freed below the low mark", () =>
  inDir(async (dir, at) => {
    let room = 6 * MIB;
    const r = at(volume(dir, () => room));
    await Deno.writeFile(`${dir}/.chat.kv-reserve.writing`, zeros(2 * MIB));
    const old = new Date(Date.now() - 10 * 60_000);
    await Deno.utime(`${dir}/.chat.kv-reserve.writing`, old, old);
    await r.start();
    for (let i = 0; i < 3; i++) await r.check();
    const between = names(dir);
    room = 2.5 * MIB; // 0.5 MiB free while the stale write holds 2
    for (let i = 0; i < 3; i++) await r.check();
    const below = names(dir);
    // Expected: the reserve written (6 MiB of room), then released below the low mark.
    assertEquals([between, below], [[".chat.kv-reserve"], [".chat.kv-reserve.released"]]);
  }));

Deno.test("SpaceReserve on a volume too small for it that then filled up keeps refusing while space comes back only part way, and so does a server sharing the file", () =>
  inDir(async (dir, at) => {
    // Between the low mark (1 MiB) and room for the reserve (5 MiB): none is written.
    let free = 3 * MIB;
    const [a, b] = [at(() => free), at(() => free)];
    await a.start();
    await b.start();
    assertEquals([a.short, b.short, names(dir)], [false, false, []]);
    free = MIB / 2;
    await a.check();
    assert(a.short);
    // Nothing to release: the mark alone tells both that the volume ran short.
    free = 3 * MIB;
    await a.check();
    await b.check();
    assertEquals([a.short, b.short], [true, true]);
  }));

Deno.test("SpaceReserve: a smaller reserve, from before SPACE_RESERVE_MB was raised, is written again at full size when there is room, and does not end a refusal between the marks", () =>
  inDir(async (dir, at) => {
    const reserve = `${dir}/.chat.kv-reserve`;
    await Deno.writeFile(reserve, zeros(MIB));
    const roomy = at(() => 100 * MIB);
    await roomy.start();
    await roomy.stop();
    assertEquals((await Deno.stat(reserve)).size, 2 * MIB);

    await Deno.writeFile(reserve, zeros(MIB / 4));
    await Deno.writeFile(`${reserve}.released`, zeros(0));
    const between = at(() => 3 * MIB);
    await between.start();
    await between.stop();
    assertEquals(between.short, true);
  }));

Deno.test("SpaceReserve: a refused KV write counts at the reading it prompts only: a later dip between the marks, with the reserve whole again, refuses nothing", () =>
  inDir(async (_dir, at) => {
    let free = 100 * MIB;
    const reserve = at(() => free);
    await reserve.start();
    free = 4 * MIB;
    reserve.storageFailed();
    await reserve.check();
    assert(reserve.short);
    free = 100 * MIB;
    await reserve.check();
    assertEquals(reserve.short, false);
    free = 4 * MIB;
    await reserve.check();
    assertEquals(reserve.short, false);
  }));

Deno.test("SpaceReserve on a volume too small for it says so once, not at every reading", () =>
  inDir(async (_dir, at) => {
    const logged: string[] = [];
    const reserve = at(() => 3 * MIB, { logged });
    await reserve.start();
    for (let i = 0; i < 3; i++) await reserve.check();
    assertEquals(logged.length, 1, logged.join("\n"));
    assert(/No space reserve: .* less than the 5\.0 MiB it needs/.test(logged[0]), logged[0]);
  }));

const noMount = !(await mayMount());

Deno.test({
  name:
    `SpaceReserve: a write of it the volume refuses part way leaves no half-written file holding room${
      noMount ? " (SKIPPED: mounting a tmpfs needs root)" : ""
    }`,
  ignore: noMount,
  async fn() {
    const disk = await smallDisk(1);
    // The free space read says plenty (another process just emptied the volume); the write fails.
    const logged: string[] = [];
    const reserve = reserveAt(disk.dir, () => 100 * MIB, { logged });
    try {
      await reserve.start();
      assertEquals(names(disk.dir), []);
      assert(/could not be written/.test(logged[0]), logged.join("\n"));
    } finally {
      await reserve.stop();
      await disk.unmount();
    }
  },
});
