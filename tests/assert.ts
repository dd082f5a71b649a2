/** Assertions for the test suite, on top of `node:assert` (the std library is not reachable here). */

import nodeAssert from "node:assert/strict";

/** Fails unless `value` is truthy. */
export function assert(value: unknown, message?: string): asserts value {
  nodeAssert.ok(value, message);
}

/** Fails unless the two values are deeply and strictly equal. */
export function assertEquals<T>(actual: unknown, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Fails when the two values are deeply and strictly equal. */
export function assertNotEquals(actual: unknown, expected: unknown, message?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, message);
}

/** Fails unless `text` matches `pattern`. */
export function assertMatch(text: string, pattern: RegExp, message?: string): void {
  nodeAssert.match(text, pattern, message);
}

/** Fails unless `fn` throws (or rejects with) an error whose message matches `pattern`. */
export async function assertRejects(
  fn: () => unknown,
  pattern?: RegExp,
): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    if (pattern) nodeAssert.match((err as Error).message, pattern);
    return err as Error;
  }
  throw new nodeAssert.AssertionError({ message: "Expected the function to throw" });
}

/** Fails unless `fn` throws synchronously an instance of `type`. */
export function assertThrows(fn: () => unknown, type: new (...args: never[]) => Error): Error {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof type)) {
      throw new nodeAssert.AssertionError({
        message: `Expected ${type.name}, got ${(err as Error)?.name}: ${(err as Error)?.message}`,
      });
    }
    return err;
  }
  throw new nodeAssert.AssertionError({ message: "Expected the function to throw" });
}

/** Waits until `check` returns true, polling, or fails after `timeoutMs`. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves as `promise` does, or fails after `ms` naming `what`. */
export function within<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the arguments of an emitter's next `event`, or fails after `ms`. */
export function nextEvent<T extends unknown[] = unknown[]>(
  emitter: { once(event: string, fn: (...args: never[]) => void): unknown },
  event: string,
  ms = 5000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    emitter.once(event, (...args: never[]) => {
      clearTimeout(timer);
      resolve(args as unknown as T);
    });
  });
}
