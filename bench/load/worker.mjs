/**
 * One load-generator process. The Deno runner drives it over stdin/stdout, one JSON object a line:
 * `{"id", "cmd", ...args}` in, `{"id", "ok": true, ...}` or `{"id", "error"}` out.
 *
 * Clients live in named groups (one scenario step's members of one peer). Senders are open-loop:
 * message k of a sender is due at `startAt + phase + k / rate` and carries that due time (µs of
 * the machine's monotonic clock, shared by every process) as the start of its body, so latency
 * counts any delay of the load generator too. Receivers record `now - ts` in an HDR histogram
 * for messages due inside the measurement window, and track `pk` for gaps and duplicates.
 */

import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import process from "node:process";
import { createRequire } from "node:module";
import { adapters, bodyOf } from "./adapters.mjs";

// npm packages load through require so that `deno check .` never resolves them.
const hdr = createRequire(import.meta.url)("hdr-histogram-js");

const HIGHEST_US = 3_600_000_000;
const PAD = " lorem ipsum dolor sit amet consectetur";
const hrBase = Number(process.hrtime.bigint()) / 1000 - performance.now() * 1000;

/** Microseconds on the monotonic clock (CLOCK_MONOTONIC, the same in every process). */
const nowUs = () => hrBase + performance.now() * 1000;

const newHistogram = () =>
  hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: HIGHEST_US,
    numberOfSignificantValueDigits: 3,
  });

const record = (histogram, us) =>
  histogram.recordValue(Math.min(HIGHEST_US, Math.max(1, Math.round(us))));

const groups = new Map();
let tokens = [];
const payloads = new Map();

function newGroup(name) {
  const group = {
    name,
    clients: [],
    from: Infinity,
    to: -Infinity,
    timer: null,
    attach: null,
    closeCodes: {},
    closed: 0,
    others: 0,
    otherSamples: [],
  };
  resetCounters(group);
  return group;
}

function resetCounters(group) {
  group.hist = newHistogram();
  group.lag = newHistogram();
  group.sentWindow = 0;
  group.expectWindow = 0;
  group.recvWindow = 0;
  group.sentTotal = 0;
  group.expectTotal = 0;
  group.recvTotal = 0;
  group.gaps = 0;
  group.dups = 0;
  for (const c of group.clients) c.win = 0;
}

function onDelivery(group, client, ts, pk, bytes) {
  const now = nowUs();
  group.recvTotal++;
  if (ts >= group.from && ts < group.to) {
    group.recvWindow++;
    client.win++;
    record(group.hist, now - ts);
  }
  if (pk > 0) {
    const last = client.lastPk;
    if (last > 0) {
      if (pk <= last) group.dups++;
      else if (pk > last + 1) group.gaps += pk - last - 1;
    }
    if (pk > last) client.lastPk = pk;
  }
  if (group.attach) trackAttachment(group, bytes, now);
}

function trackAttachment(group, bytes, now) {
  const body = bodyOf(bytes);
  const parts = body.split("|");
  const file = group.attach.files.get(parts[1]);
  if (!file) return;
  file.received++;
  if (file.first === 0) file.first = now;
  file.last = now;
  if (group.attach.done()) group.attach.resolve();
}

async function pool(items, limit, fn) {
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
}

const commands = {
  /** Monotonic clock reading, µs. */
  now: () => ({ now: nowUs() }),

  /** Tokens for adapters that authenticate: member with user u uses tokens[u % length]. */
  tokens: ({ list }) => {
    tokens = list;
    return {};
  },

  /**
   * Connects members `{rooms[i], users[i]}` to a group, `concurrency` handshakes at a time.
   * Replies with how many joined, how long it took, and the first errors.
   */
  async connect({ group: name, adapter, base, rooms, users, concurrency, localAddress }) {
    const connectAdapter = adapters[adapter];
    if (!connectAdapter) throw new Error(`unknown adapter ${adapter}`);
    let group = groups.get(name);
    if (!group) groups.set(name, group = newGroup(name));
    const errors = new Map();
    let failed = 0;
    const started = nowUs();
    const offset = group.clients.length;
    const slots = new Array(rooms.length);
    await pool(rooms, concurrency ?? 64, async (room, i) => {
      // `win`: deliveries of the window's messages, to find members that got none.
      const client = { lastPk: 0, member: null, room, win: 0 };
      const user = users[i];
      try {
        client.member = await connectAdapter.connect({
          base,
          room,
          user,
          token: tokens.length > 0 ? tokens[user % tokens.length] : "",
          localAddress,
          onDelivery: (ts, pk, bytes) => onDelivery(group, client, ts, pk, bytes),
          onOther: (bytes) => {
            group.others++;
            if (group.otherSamples.length < 5) {
              group.otherSamples.push(bytes.toString("utf8", 0, Math.min(200, bytes.length)));
            }
          },
          onClose: (code, reason) => {
            const key = reason ? `${code} ${reason}` : String(code);
            group.closed++;
            group.closeCodes[key] = (group.closeCodes[key] ?? 0) + 1;
          },
        });
      } catch (err) {
        failed++;
        const message = String(err?.message ?? err);
        errors.set(message, (errors.get(message) ?? 0) + 1);
      }
      slots[i] = client;
    });
    for (const client of slots) group.clients.push(client);
    return {
      connected: rooms.length - failed,
      failed,
      offset,
      ms: (nowUs() - started) / 1000,
      errors: Object.fromEntries([...errors].slice(0, 5)),
    };
  },

  /**
   * Starts open-loop sending: `senders` are `{client, rate, fanout}` (client index in the group,
   * messages per second, members that should receive each message). Sending runs from `startAt`
   * to `endAt`; latencies count for messages due in [from, to).
   */
  load({ group: name, senders, startAt, endAt, from, to, tag }) {
    const group = groups.get(name);
    if (!group) throw new Error(`no group ${name}`);
    clearTimeout(group.timer);
    resetCounters(group);
    group.from = from;
    group.to = to;
    const plan = senders.map((s, i) => {
      const period = 1e6 / s.rate;
      return {
        client: group.clients[s.client],
        period,
        next: startAt + Math.random() * period,
        k: 0,
        fanout: s.fanout,
        tag: `${tag}s${i}`,
      };
    });
    const tick = () => {
      const now = nowUs();
      let active = false;
      for (const s of plan) {
        while (s.next <= now && s.next < endAt) {
          const ts = Math.round(s.next);
          s.client.member?.send(`${ts}|${s.k++}|${s.tag}${PAD}`);
          record(group.lag, now - ts);
          group.sentTotal++;
          group.expectTotal += s.fanout;
          if (ts >= from && ts < to) {
            group.sentWindow++;
            group.expectWindow += s.fanout;
          }
          s.next += s.period;
        }
        if (s.next < endAt) active = true;
      }
      group.timer = active ? setTimeout(tick, 1) : null;
    };
    group.timer = setTimeout(tick, Math.max(0, (startAt - nowUs()) / 1000));
    return {};
  },

  /** Counters so far, to wait for the window's deliveries. */
  stats({ group: name }) {
    const g = groups.get(name);
    if (!g) throw new Error(`no group ${name}`);
    return {
      expectWindow: g.expectWindow,
      recvWindow: g.recvWindow,
      sentTotal: g.sentTotal,
      expectTotal: g.expectTotal,
      recvTotal: g.recvTotal,
      sending: g.timer !== null,
    };
  },

  /**
   * The window's histogram (compressed base64) and counters; counters are kept until next load,
   * except the closes, counted from one report to the next (a socket closed between two windows
   * is still reported, by the next one).
   */
  report({ group: name }) {
    const g = groups.get(name);
    if (!g) throw new Error(`no group ${name}`);
    const { closed, closeCodes } = g;
    g.closed = 0;
    g.closeCodes = {};
    // Members open in a room whose other members here got several window messages, yet given none
    // of them (several: in a room with one or two, a single lost delivery is not a silent member).
    const busy = new Set(g.clients.filter((c) => c.win >= 5).map((c) => c.room));
    const silent =
      g.clients.filter((c) => c.win === 0 && busy.has(c.room) && c.member?.ws.readyState === 1)
        .length;
    return {
      histogram: hdr.encodeIntoCompressedBase64(g.hist),
      lag: hdr.encodeIntoCompressedBase64(g.lag),
      sentWindow: g.sentWindow,
      expectWindow: g.expectWindow,
      recvWindow: g.recvWindow,
      sentTotal: g.sentTotal,
      recvTotal: g.recvTotal,
      gaps: g.gaps,
      dups: g.dups,
      closed,
      closeCodes,
      silent,
      open: g.clients.filter((c) => c.member?.ws.readyState === 1).length,
      others: g.others,
      otherSamples: g.otherSamples,
    };
  },

  /** Merges compressed histograms and summarises them in µs. */
  merge({ histograms }) {
    const total = newHistogram();
    for (const text of histograms) {
      if (!text) continue;
      const h = hdr.decodeFromCompressedBase64(text);
      total.add(h);
      h.destroy();
    }
    const at = (p) => total.getValueAtPercentile(p);
    const summary = {
      count: total.totalCount,
      min: total.totalCount > 0 ? total.minNonZeroValue : 0,
      p50: at(50),
      p90: at(90),
      p99: at(99),
      p999: at(99.9),
      max: total.maxValue,
      mean: total.mean,
    };
    total.destroy();
    return summary;
  },

  /**
   * Sends one attachment of `bytes` random bytes from each of `senders` (client indices) at once,
   * and resolves when every member of the group has its broadcast (or after `timeoutMs`). Times
   * are µs from the first send: `written` when the frame left this process, `first`/`last` when
   * the first/last member had the broadcast.
   */
  async attach({ group: name, senders, bytes, timeoutMs }) {
    const g = groups.get(name);
    if (!g) throw new Error(`no group ${name}`);
    let base64 = payloads.get(bytes);
    if (!base64) payloads.set(bytes, base64 = randomBytes(bytes).toString("base64"));
    const members = g.clients.filter((c) => c.member).length;
    const files = new Map();
    let resolve;
    const finished = new Promise((r) => resolve = r);
    g.attach = {
      files,
      resolve,
      done: () => [...files.values()].every((f) => f.received >= members),
    };
    const started = nowUs();
    for (const [i, index] of senders.entries()) {
      const file = { sent: 0, written: 0, first: 0, last: 0, received: 0, error: null };
      files.set(`f${i}`, file);
      file.sent = nowUs();
      const body = `${Math.round(file.sent)}|f${i}|attachment`;
      g.clients[index].member.sendFile(body, base64, "x.bin", (err) => {
        file.written = nowUs();
        if (err) file.error = String(err.message ?? err);
      });
    }
    const timer = setTimeout(resolve, timeoutMs);
    await finished;
    clearTimeout(timer);
    g.attach = null;
    const rel = (t) => (t === 0 ? null : (t - started) / 1000);
    return {
      members,
      files: [...files.values()].map((f) => ({
        sentMs: rel(f.sent),
        writtenMs: rel(f.written),
        firstMs: rel(f.first),
        lastMs: rel(f.last),
        received: f.received,
        error: f.error,
      })),
    };
  },

  /** Builds the base64 payload of `bytes` random bytes ahead of an attach. */
  payload({ bytes }) {
    if (!payloads.has(bytes)) payloads.set(bytes, randomBytes(bytes).toString("base64"));
    return { length: payloads.get(bytes).length };
  },

  /** Closes every member of a group and forgets it. */
  close({ group: name }) {
    const g = groups.get(name);
    if (!g) return { closed: 0 };
    clearTimeout(g.timer);
    for (const c of g.clients) c.member?.close();
    groups.delete(name);
    return { closed: g.clients.length };
  },

  /** Memory and CPU of this process. */
  usage: () => ({ rss: process.memoryUsage().rss, cpu: process.cpuUsage() }),
};

const reply = (message) => process.stdout.write(JSON.stringify(message) + "\n");

createInterface({ input: process.stdin }).on("line", async (line) => {
  if (line.trim() === "") return;
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    return;
  }
  try {
    const fn = commands[request.cmd];
    if (!fn) throw new Error(`unknown command ${request.cmd}`);
    reply({ id: request.id, ok: true, ...(await fn(request.args ?? {})) });
  } catch (err) {
    reply({ id: request.id, ok: false, error: String(err?.stack ?? err) });
  }
}).on("close", () => process.exit(0));

process.on("uncaughtException", (err) => console.error("worker:", err));
process.on("SIGTERM", () => process.exit(0));
console.error(`load worker ${process.pid} ready`);
