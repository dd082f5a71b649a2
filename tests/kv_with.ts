/** A Deno KV handle with one method swapped, for tests that slow, count or break its calls. */

/** `kv` with one method replaced by `wrap` (given the original, bound); the rest pass through. */
export function kvWith<K extends keyof Deno.Kv>(
  kv: Deno.Kv,
  method: K,
  wrap: (original: Deno.Kv[K]) => Deno.Kv[K],
): Deno.Kv {
  return new Proxy(kv, {
    get(target, key) {
      const value = Reflect.get(target, key, target);
      if (typeof value !== "function") return value;
      const bound = value.bind(target);
      return key === method ? wrap(bound) : bound;
    },
  });
}
