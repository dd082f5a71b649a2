import { assertEquals } from "../../tests/assert.ts";
import { FrameBudget, type FrameHolder } from "./frame_budget.ts";

/** Holders that record their reclaim and, like a closing socket, are forgotten by it. */
function holders(budget: FrameBudget, names: string[]) {
  const reclaimed: string[] = [];
  const made = names.map((name) => {
    const holder: FrameHolder = {
      reclaim: () => {
        reclaimed.push(name);
        budget.forget(holder);
      },
    };
    return holder;
  });
  return { made, reclaimed };
}

Deno.test("FrameBudget: the least recently active sockets go first, as many as the limit needs", () => {
  const budget = new FrameBudget(250, { minTrackedBytes: 10 });
  const { made: [a, b, c, d], reclaimed } = holders(budget, ["a", "b", "c", "d"]);
  budget.received(a, 100);
  budget.received(b, 100);
  budget.received(c, 5); // under the tracking size: not held
  budget.received(a, 5); // counts as activity: `a` is now newer than `b`
  assertEquals([budget.heldBytes, reclaimed], [200, []]);
  budget.received(d, 200);
  assertEquals([budget.heldBytes, reclaimed], [200, ["b", "a"]]);
});

Deno.test("FrameBudget: a socket holds its largest frame, and is never reclaimed for its own", () => {
  const budget = new FrameBudget(100, { minTrackedBytes: 10 });
  const { made: [a, b], reclaimed } = holders(budget, ["a", "b"]);
  budget.received(a, 60);
  budget.received(a, 20);
  assertEquals(budget.heldBytes, 60);
  budget.received(a, 150);
  assertEquals([budget.heldBytes, reclaimed], [150, []]);
  budget.received(b, 30);
  assertEquals([budget.heldBytes, reclaimed, budget.reclaimed], [30, ["a"], 1]);
  budget.forget(b);
  budget.forget(b);
  assertEquals(budget.heldBytes, 0);
});

Deno.test("FrameBudget: a limit of 0 counts what sockets hold and never reclaims", () => {
  const budget = new FrameBudget(0);
  const { made: [a, b], reclaimed } = holders(budget, ["a", "b"]);
  budget.received(a, 64 * 1024 * 1024);
  budget.received(b, 64 * 1024 * 1024);
  assertEquals([budget.heldBytes, reclaimed], [128 * 1024 * 1024, []]);
});

Deno.test("FrameBudget: a busy socket is passed over, and a reclaimed one counts until its close", () => {
  const budget = new FrameBudget(150, { minTrackedBytes: 10 });
  let busy = true;
  const reclaimed: string[] = [];
  const a: FrameHolder = {
    reclaim: () => reclaimed.push("a"),
    get busy() {
      return busy;
    },
  };
  const b: FrameHolder = { reclaim: () => reclaimed.push("b") };
  const c: FrameHolder = { reclaim: () => reclaimed.push("c") };
  budget.received(a, 100);
  budget.received(b, 100);
  assertEquals(reclaimed, []);
  budget.received(c, 100);
  // `a` is oldest but still handling its frame: `b` goes instead.
  assertEquals([reclaimed, budget.heldBytes, budget.closingBytes], [["b"], 200, 100]);
  budget.received(b, 500); // a frame on a closing socket is not counted again
  busy = false;
  budget.received(c, 100);
  assertEquals([reclaimed, budget.heldBytes, budget.closingBytes], [["b", "a"], 100, 200]);
  budget.forget(b);
  budget.forget(a);
  assertEquals([budget.heldBytes, budget.closingBytes, budget.reclaimed], [100, 0, 2]);
});
