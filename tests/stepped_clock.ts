/**
 * Preloaded into a server process (`deno run --preload`, see `spawnServer`'s options): its wall
 * clock (`Date`, not the monotonic clock timers and `performance.now()` read, as NTP moves only
 * the first) is off by CLOCK_OFFSET_MS milliseconds, a machine whose clock drifted; or by what
 * the file CLOCK_OFFSET_FILE holds, read again every 50 ms, so that a test can step it while the
 * server runs.
 */

const file = Deno.env.get("CLOCK_OFFSET_FILE");
let offset = Number(Deno.env.get("CLOCK_OFFSET_MS") ?? "0");
const read = () => {
  try {
    const value = Number(Deno.readTextFileSync(file!).trim());
    if (Number.isFinite(value)) offset = value;
  } catch {
    // Not written yet: no offset.
  }
};
if (file) {
  read();
  Deno.unrefTimer(setInterval(read, 50));
}

const RealDate = Date;
const realNow = RealDate.now.bind(RealDate);

/** `Date` with the offset: `new Date()` and `Date.now()` say the stepped time. */
class SteppedDate extends RealDate {
  constructor(...args: ConstructorParameters<DateConstructor> | []) {
    super(...((args.length === 0 ? [realNow() + offset] : args) as [number]));
  }

  static override now(): number {
    return realNow() + offset;
  }
}

(globalThis as { Date: DateConstructor }).Date = SteppedDate as DateConstructor;
