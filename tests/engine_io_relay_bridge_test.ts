/**
 * The relay's reliability between two isolates, seen from its two ends: two relays in one
 * isolate stand for two isolates, and the channel's drops and delays are simulated by routing
 * every post through a function (Deno drops posts for an isolate that falls behind).
 */

import { ok, strictEqual } from "node:assert/strict";
import { delay, eventually } from "./assert.ts";
import {
  BroadcastChannelRelay,
  type FrameSocket,
  type RelayOwner,
  type RelayReply,
} from "../src/engine_io/mod.ts";

type Posted = { k: string; to: string; n?: number; gap?: number };

const realPost = BroadcastChannel.prototype.postMessage;

/** Routes every post through `fn`, which may drop it, delay it, or `send()` it. */
function intercept(fn: (m: Posted, send: () => void) => void): void {
  BroadcastChannel.prototype.postMessage = function (this: BroadcastChannel, m: unknown) {
    fn(m as Posted, () => realPost.call(this, m));
  };
}

const idle: RelayOwner = {
  relayPoll: () => new Promise<RelayReply>(() => {}),
  relayPost: () => Promise.resolve({ status: 200, body: "ok", contentType: "text/html" }),
  relayWebSocket: () => false,
};

interface Pair {
  /** The isolate owning the session. */
  owner: BroadcastChannelRelay;
  /** The isolate a request reached. */
  requester: BroadcastChannelRelay;
  sid: string;
}

async function withPair(
  owner: Partial<RelayOwner>,
  fn: (p: Pair) => Promise<void>,
  options: { giveUpMs?: number } = {},
): Promise<void> {
  const name = `relay-bridge-test:${crypto.randomUUID()}`;
  const a = new BroadcastChannelRelay({ name, ackTimeout: 1000, ...options });
  const b = new BroadcastChannelRelay({ name, ackTimeout: 1000, ...options });
  a.attach({ ...idle, ...owner });
  b.attach(idle);
  try {
    await fn({ owner: a, requester: b, sid: `${a.nodeId}.SID` });
  } finally {
    BroadcastChannel.prototype.postMessage = realPost;
    await a.close();
    await b.close();
  }
}

/** An owner that takes every bridged WebSocket, and the ends it took. */
function taking(): { owned: FrameSocket[]; owner: Partial<RelayOwner> } {
  const owned: FrameSocket[] = [];
  return {
    owned,
    owner: {
      relayWebSocket: (_sid, frames) => {
        owned.push(frames);
        return true;
      },
    },
  };
}

/** The close code `socket` is closed with, once it is (`code` null until then). */
function closeOf(socket: FrameSocket): { code: number | null } {
  const seen: { code: number | null } = { code: null };
  socket.onclose = (code) => seen.code = code;
  return seen;
}

/** Opens a bridge from the requester to the owner; returns the requester's end. */
async function bridge(p: Pair, owned: FrameSocket[]): Promise<FrameSocket> {
  const end = await p.requester.openWebSocket(p.sid);
  ok(end, "the bridge opened");
  await eventually(() => owned.length === 1);
  return end;
}

Deno.test("relay bridge: one that gives up ends the other side too, though the frame before its end was lost", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const endClosed = closeOf(end);
    const ownerClosed = closeOf(owned[0]);
    // The requester's isolate lags: frame 1 to it and every confirmation from it are lost.
    intercept((m, send) => {
      if (m.k === "frame" && m.to === p.requester.nodeId && m.n === 1) return;
      if (m.k === "fack" && m.to === p.owner.nodeId) return;
      send();
    });
    owned[0].send("one");
    owned[0].send("two");
    await eventually(() => ownerClosed.code !== null, 5000, "the owner's side giving up");
    strictEqual(ownerClosed.code, 1011);
    BroadcastChannel.prototype.postMessage = realPost;
    await eventually(() => endClosed.code !== null, 3000, "the requester's side to close");
    strictEqual(endClosed.code, 1011);
  }, { giveUpMs: 600 });
});

Deno.test("relay bridge: a closing owner's last frame and close reach the requester, the frame lost once", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const got: unknown[] = [];
    end.onmessage = (d) => got.push(d);
    const endClosed = closeOf(end);
    let dropped = false;
    intercept((m, send) => {
      if (!dropped && m.k === "frame" && m.to === p.requester.nodeId) {
        dropped = true;
        return;
      }
      send();
    });
    // EngineServer.close(): sessions close their transports, then the relay closes.
    owned[0].send("bye");
    owned[0].close(4000, "done");
    await p.owner.close();
    BroadcastChannel.prototype.postMessage = realPost;
    await eventually(() => endClosed.code !== null, 3000, "the requester's side to close");
    strictEqual(endClosed.code, 4000);
    strictEqual(got.join(), "bye");
  });
});

Deno.test("relay bridge: an owner that closes while its answer to the upgrade is posted again still gets the close to the requester", async () => {
  await withPair({
    relayWebSocket: (_sid, frames) => {
      // The owner abandons the candidate soon (the session closed, the upgrade abandoned).
      setTimeout(() => frames.close(), 30);
      return true;
    },
  }, async (p) => {
    let dropped = false;
    intercept((m, send) => {
      if (!dropped && m.k === "res") {
        dropped = true;
        return;
      }
      send();
    });
    const end = await p.requester.openWebSocket(p.sid);
    ok(end, "the owner took it");
    let closed = false;
    end.onclose = () => closed = true;
    await eventually(() => closed, 2000, "the close to be heard");
  });
});

Deno.test("relay bridge: a frame written and the bridge closed while the owner decides both reach the requester", async () => {
  await withPair({
    relayWebSocket: (_sid, frames) => {
      frames.send("last words");
      frames.close(4000, "bye");
      return true;
    },
  }, async (p) => {
    const end = await p.requester.openWebSocket(p.sid);
    ok(end, "the owner took it");
    const got: unknown[] = [];
    let closed: number | null = null;
    end.onmessage = (d) => got.push(d);
    end.onclose = (code) => closed = code;
    await eventually(() => closed !== null, 2000, "the close");
    strictEqual(closed, 4000);
    strictEqual(got.join(), "last words");
  });
});

Deno.test("relay bridge: a parked poll answered by the owner's shutdown reaches the requester, the answer lost once", async () => {
  let answer!: (r: RelayReply) => void;
  await withPair({
    relayPoll: () => new Promise<RelayReply>((resolve) => answer = resolve),
  }, async (p) => {
    const reply = p.requester.poll(p.sid, 3000);
    await eventually(() => answer !== undefined);
    let dropped = false;
    intercept((m, send) => {
      if (!dropped && m.k === "res") {
        dropped = true;
        return;
      }
      send();
    });
    // EngineServer.close(): sessions answer parked polls (with a noop), then the relay closes.
    answer({ status: 200, body: "6", contentType: "text/plain" });
    await p.owner.close();
    strictEqual((await reply)?.body, "6");
  });
});

Deno.test("relay bridge: one frame lost in a burst of 1000 is posted again, not the window after it", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const got: unknown[] = [];
    end.onmessage = (d) => got.push(d);
    let posts = 0;
    let dropped = false;
    intercept((m, send) => {
      if (m.k === "frame" && m.to === p.requester.nodeId) {
        posts++;
        if (!dropped) {
          dropped = true;
          return;
        }
      }
      send();
    });
    for (let i = 0; i < 1000; i++) owned[0].send(`f${i}`);
    await eventually(() => got.length === 1000, 5000, "every frame");
    strictEqual(got.join(), Array.from({ length: 1000 }, (_, i) => `f${i}`).join());
    await delay(600);
    ok(posts <= 1010, `1000 frames, 1 lost: posted ${posts} times`);
  });
});

Deno.test("relay bridge: a merely slow peer gets at most a batch again, not every frame", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const got: unknown[] = [];
    end.onmessage = (d) => got.push(d);
    let posts = 0;
    intercept((m, send) => {
      if (m.k === "frame" && m.to === p.requester.nodeId) {
        posts++;
        // Delivered, late: past the first wait before a resend.
        setTimeout(send, 300);
        return;
      }
      send();
    });
    for (let i = 0; i < 1000; i++) owned[0].send(`f${i}`);
    await eventually(() => got.length === 1000, 5000, "every frame");
    await delay(800);
    strictEqual(got.length, 1000);
    ok(posts <= 1100, `1000 frames, none lost, posted ${posts} times`);
  });
});

Deno.test("relay bridge: a give-up whose first abort is lost still ends the quiet side", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const endClosed = closeOf(end);
    const ownerClosed = closeOf(owned[0]);
    // The requester's isolate lags: the frame to it, its confirmations and the abort are lost.
    intercept((m, send) => {
      if (m.to === p.requester.nodeId && (m.k === "frame" || m.k === "abort")) return;
      if (m.k === "fack" && m.to === p.owner.nodeId) return;
      send();
    });
    owned[0].send("one");
    await eventually(() => ownerClosed.code !== null, 5000, "the owner's side giving up");
    BroadcastChannel.prototype.postMessage = realPost;
    // The channel works again; the requester's client is idle, and sends nothing to answer.
    await eventually(() => endClosed.code !== null, 3000, "the requester's side to close");
    strictEqual(endClosed.code, 1011);
  }, { giveUpMs: 600 });
});

Deno.test("relay bridge: both isolates shutting down together confirm each other's closes at once", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const end = await bridge(p, owned);
    const endClosed = closeOf(end);
    // EngineServer.close() on every isolate (SIGTERM to deno serve --parallel): the owner's
    // session closes its transport, then both relays close.
    owned[0].close(1001, "server shutting down");
    let settled = false;
    const closing = Promise.all([p.owner.close(), p.requester.close()]).then(() => settled = true);
    // Well before the second a closing relay waits at most for its closes to be confirmed.
    await eventually(() => settled, 800, "both relays to close");
    await closing;
    strictEqual(endClosed.code, 1001);
  });
});

Deno.test("relay bridge: 32 bridges to a lagging isolate get every frame through, in order, none ended", async () => {
  const { owned, owner } = taking();
  await withPair(owner, async (p) => {
    const ends: FrameSocket[] = [];
    for (let i = 0; i < 32; i++) ends.push((await p.requester.openWebSocket(p.sid))!);
    await eventually(() => owned.length === 32);
    const got = ends.map(() => [] as unknown[]);
    const closed = ends.map(() => null as number | null);
    ends.forEach((end, i) => {
      end.onmessage = (d) => got[i].push(d);
      end.onclose = (code) => closed[i] = code;
    });
    // The requester's isolate: what is posted to it waits in one queue of 256, the oldest
    // dropped when it is full, as Deno does; it reads 64 messages every 4 ms.
    const queue: (() => void)[] = [];
    let frames = 0;
    intercept((m, send) => {
      if (m.to !== p.requester.nodeId) return send();
      if (m.k === "frame") frames++;
      queue.push(send);
      if (queue.length > 256) queue.shift();
    });
    const reading = setInterval(() => {
      for (let i = 0; i < 64 && queue.length > 0; i++) queue.shift()!();
    }, 4);
    try {
      for (let f = 0; f < 100; f++) for (let i = 0; i < 32; i++) owned[i].send(`b${i}f${f}`);
      await eventually(
        () => got.every((g) => g.length === 100) || closed.some((c) => c !== null),
        20_000,
        "every frame",
      );
      strictEqual(closed.filter((c) => c !== null).length, 0);
      got.forEach((g, i) =>
        strictEqual(g.join(), Array.from({ length: 100 }, (_, f) => `b${i}f${f}`).join())
      );
      ok(frames <= 2 * 3200, `3,200 frames posted ${frames} times`);
    } finally {
      clearInterval(reading);
    }
  });
});

Deno.test("relay: requests for sids naming nodes that never answer are not posted over and over", async () => {
  const relay = new BroadcastChannelRelay({ name: `relay-forged:${crypto.randomUUID()}` });
  relay.attach(idle);
  let posts = 0;
  intercept((_m, send) => {
    posts++;
    send();
  });
  try {
    // Sids of this process's form, naming isolates that do not exist (a client can make them).
    const pid = relay.nodeId.slice(0, relay.nodeId.indexOf("n"));
    const sids = Array.from(
      { length: 300 },
      (_, i) => `${pid}n${i.toString(16).padStart(8, "0")}.x`,
    );
    const replies = await Promise.all(sids.map((sid) => relay.poll(sid, 1000)));
    ok(replies.every((r) => r === null));
    // A few are asked (a real sibling must still be reachable before it ever answered).
    ok(posts <= 200, `300 requests for made-up nodes: ${posts} posts`);
    // One that never acknowledged is taken for gone: its sids fail at once.
    posts = 0;
    strictEqual(await relay.poll(sids[0], 1000), null);
    strictEqual(posts, 0);
  } finally {
    BroadcastChannel.prototype.postMessage = realPost;
    await relay.close();
  }
});

Deno.test("relay: siblings greet each other: made-up node ids never make a sibling unreachable, nor does one request's lost ack", async () => {
  const name = `relay-greet:${crypto.randomUUID()}`;
  const a = new BroadcastChannelRelay({ name, ackTimeout: 1000 });
  const b = new BroadcastChannelRelay({ name, ackTimeout: 1000 });
  a.attach(idle);
  b.attach(idle);
  try {
    // The greeting is a round trip of the channel.
    await delay(50);
    const pid = Deno.pid.toString(36);
    const madeUp = Array.from(
      { length: 40 },
      (_, i) => b.post(`p${pid}n${(0xdead0000 + i).toString(16)}.X`, "x"),
    );
    ok(await b.post(`${a.nodeId}.SID`, "real"), "the sibling answered");
    // Every copy of one request is lost (a lagging isolate); the sibling stays reachable.
    intercept((m, send) => {
      if (m.k === "req" && (m as { body?: string }).body === "lost") return;
      send();
    });
    const [lost, fine] = await Promise.all([
      b.post(`${a.nodeId}.SID`, "lost"),
      b.post(`${a.nodeId}.SID`, "fine"),
    ]);
    strictEqual(lost, null);
    ok(fine, "the sibling answered");
    BroadcastChannel.prototype.postMessage = realPost;
    ok(await b.post(`${a.nodeId}.SID`, "again"), "the sibling is still reachable");
    await Promise.all(madeUp);
  } finally {
    BroadcastChannel.prototype.postMessage = realPost;
    await a.close();
    await b.close();
  }
  // Closed: nothing more is opened (nor an abort scheduled for it).
  strictEqual(await b.openWebSocket(`${a.nodeId}.SID`), null);
});
