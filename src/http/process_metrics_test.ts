import { assertEquals } from "../../tests/assert.ts";
import { type ProcSource, renderProcessMetrics } from "./process_metrics.ts";

/** The single sample of `name` in `text`, or undefined when the family is absent. */
const sample = (text: string, name: string): number | undefined => {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
};

// Fields 3 to 22 of /proc/<pid>/stat after a command name with a space and a parenthesis in it;
// starttime (field 22) is 12345 ticks after boot.
const STAT = "4242 (deno (x) y) S 1 4242 4242 0 -1 4194560 9 0 0 0 150 50 0 0 20 0 14 0 12345 " +
  "1000 2000 18446744073709551615";

const fixture = (over: Partial<ProcSource> = {}): ProcSource => ({
  stat: () => STAT,
  bootStat: () => "cpu  1 2 3\nbtime 1790000000\nprocesses 7\n",
  openFds: () => 17,
  limits: () =>
    "Limit                     Soft Limit           Hard Limit           Units     \n" +
    "Max open files            20000                20000                files     \n",
  ...over,
});

Deno.test("process metrics: start time from the boot time and the process's start ticks, even when its name holds a parenthesis", () => {
  const text = renderProcessMetrics(fixture());
  assertEquals(sample(text, "process_start_time_seconds"), 1790000000 + 123.45);
  assertEquals(sample(text, "process_open_fds"), 17);
  assertEquals(sample(text, "process_max_fds"), 20000);
  assertEquals(text.match(/^# TYPE process_cpu_seconds_total counter$/gm)?.length, 1);
});

Deno.test("process metrics: without /proc the start is the isolate's, and what cannot be read is left out", () => {
  const text = renderProcessMetrics({
    stat: () => undefined,
    bootStat: () => undefined,
    openFds: () => undefined,
    limits: () => undefined,
  });
  assertEquals(sample(text, "process_start_time_seconds"), performance.timeOrigin / 1000);
  assertEquals(sample(text, "process_open_fds"), undefined);
  assertEquals(sample(text, "process_max_fds"), undefined);
  const unlimited = renderProcessMetrics(fixture({
    limits: () => "Max open files            unlimited            unlimited            files\n",
  }));
  assertEquals(sample(unlimited, "process_max_fds"), undefined);
});
