/**
 * Preloaded into a server process (`deno run --preload`, see `spawnServer`'s `clockFile`): its
 * wall clock (`Date`, not `performance`) is off by the milliseconds the file CLOCK_OFFSET_FILE
 * holds, read again every 50 ms, so that a test can step it while the server runs, as NTP does.
 */

const file = Deno.env.get("CLOCK_OFFSET_FILE");
let offset = 0;
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
    if (args.length === 0) super(realNow() + offset);
    else super(...(args as ConstructorParameters<DateConstructor>));
  }

  static override now(): number {
    return realNow() + offset;
  }
}

(globalThis as { Date: DateConstructor }).Date = SteppedDate as DateConstructor;
