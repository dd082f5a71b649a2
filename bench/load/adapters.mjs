/**
 * Client side of each peer: how a member of room R connects, how it sends a message whose body
 * starts with a timestamp, and how it recognises a delivered message and reads that timestamp
 * and the room position (`pk`). Adding a peer that speaks a new protocol means adding one entry
 * to `adapters` (plus its server side in bench/lib/peers.ts).
 *
 * Every adapter's `connect(options)` resolves, once the member is in its room, to
 * `{ send(body), sendFile(body, base64, filename, onWritten), close() }`, and reports each
 * delivery as `options.onDelivery(ts, pk, bytes)`. Bodies never need JSON escaping: the load
 * generator only puts digits, letters, `|` and spaces in them.
 */

import { Buffer } from "node:buffer";
import { createRequire } from "node:module";

// npm packages load through require so that `deno check .` never resolves them.
const require = createRequire(import.meta.url);
const WebSocket = require("ws");

const WS_OPTIONS = {
  perMessageDeflate: false,
  skipUTF8Validation: true,
  maxPayload: 256 * 1024 * 1024,
  handshakeTimeout: 20_000,
};

const BODY = Buffer.from('"body":"');
const PK = Buffer.from('"pk":');

function readInt(bytes, at) {
  let n = 0;
  let digits = 0;
  for (let i = at; i < bytes.length; i++) {
    const c = bytes[i];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
    digits++;
  }
  return digits === 0 ? -1 : n;
}

/**
 * Reads `ts` (the body's leading number) and `pk` from a broadcast shaped
 * `{"pk": n, "body": "<ts>|...", ...}` without decoding it; false when the frame is not one.
 * The fast path expects `"pk":<n>,"body":"` near the start (every peer here renders that);
 * anything else falls back to searching the frame.
 */
export function scanBroadcast(bytes, out) {
  const n = bytes.length;
  const limit = n < 40 ? n - 5 : 35;
  for (let i = 0; i < limit; i++) {
    if (
      bytes[i] !== 34 || bytes[i + 1] !== 112 || bytes[i + 2] !== 107 || bytes[i + 3] !== 34 ||
      bytes[i + 4] !== 58
    ) continue;
    let j = i + 5;
    let pk = 0;
    for (; j < n; j++) {
      const c = bytes[j];
      if (c < 48 || c > 57) break;
      pk = pk * 10 + (c - 48);
    }
    if (j === i + 5 || bytes[j] !== 44) break;
    let k = 0;
    while (k < BODY.length && bytes[j + 1 + k] === BODY[k]) k++;
    if (k !== BODY.length) break;
    const ts = readInt(bytes, j + 1 + k);
    if (ts < 0) return false;
    out.ts = ts;
    out.pk = pk;
    return true;
  }
  const b = bytes.indexOf(BODY);
  if (b < 0) return false;
  const ts = readInt(bytes, b + BODY.length);
  if (ts < 0) return false;
  const p = bytes.indexOf(PK);
  out.ts = ts;
  out.pk = p < 0 ? 0 : readInt(bytes, p + PK.length);
  return true;
}

/** The body string of a broadcast, read from its bytes (bodies here have no escapes). */
export function bodyOf(bytes) {
  const b = bytes.indexOf(BODY);
  if (b < 0) return "";
  const end = bytes.indexOf(34, b + BODY.length);
  return bytes.toString("latin1", b + BODY.length, end < 0 ? bytes.length : end);
}

/** Opens a socket and resolves once `isReady` says so for an incoming frame (or at open). */
function openMember(url, options, hooks) {
  return new Promise((resolve, reject) => {
    let ready = false;
    const ws = new WebSocket(url, { ...WS_OPTIONS, localAddress: options.localAddress });
    const member = {
      ws,
      send: (body) => ws.readyState === 1 && ws.send(hooks.frame(body)),
      sendFile: (body, base64, filename, onWritten) => {
        if (ws.readyState !== 1) return onWritten?.(new Error("socket closed"));
        ws.send(hooks.fileFrame(body, base64, filename), onWritten);
      },
      close: () => ws.terminate(),
    };
    const becomeReady = () => {
      if (ready) return;
      ready = true;
      resolve(member);
    };
    ws.on("open", () => {
      if (hooks.onOpen) hooks.onOpen(ws);
      else becomeReady();
    });
    ws.on("message", (data) => {
      if (!ready) {
        if (hooks.handshake?.(ws, data)) becomeReady();
        return;
      }
      hooks.onFrame(ws, data);
    });
    ws.on("unexpected-response", (_req, res) => {
      reject(new Error(`HTTP ${res.statusCode} on upgrade`));
      ws.terminate();
    });
    ws.on("error", (err) => {
      if (!ready) reject(err);
    });
    ws.on("close", (code, reason) => {
      hooks.onClosed?.();
      if (!ready) reject(new Error(`closed with ${code} before joining`));
      else options.onClose?.(code, reason.toString());
    });
  });
}

/** Frames `{"body"}` and `{"body","file","filename"}`, shared by the ticket socket and raw Deno. */
const plainFrames = {
  frame: (body) => `{"body":"${body}"}`,
  fileFrame: (body, base64, filename) =>
    `{"body":"${body}","file":"${base64}","filename":"${filename}"}`,
};

function broadcastHandler(options) {
  const out = { ts: 0, pk: 0 };
  return (_ws, data) => {
    if (scanBroadcast(data, out)) options.onDelivery(out.ts, out.pk, data);
    else options.onOther?.(data);
  };
}

const SEQ = Buffer.from('"seq":');
const TYPE_MESSAGE = Buffer.from('{"type":"message"');
const TYPE_ERROR = Buffer.from('{"type":"error"');

function startsWith(bytes, prefix) {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

let nativeIds = 0;
const HEARTBEAT_MS = Buffer.from('"heartbeat_ms":');
const PING = '{"type":"ping"}';

/** Client adapters by name. */
export const adapters = {
  /** This server's ticket socket: `/ws/ticket/<id>/?token=`; member once the socket is open. */
  ticket: {
    connect(options) {
      const url = `${options.base}/ws/ticket/${options.room}/?token=${options.token}`;
      return openMember(url, options, { ...plainFrames, onFrame: broadcastHandler(options) });
    },
  },

  /**
   * This server's native protocol: `/ws?token=`, `welcome` → `{"type":"join","room":"ticket:R"}`
   * → member on `joined`; sends carry a fresh `client_id` (idempotent, as the protocol asks);
   * deliveries are `{"type":"message",...,"seq":n,...,"body":"<ts>|..."}`. Acks, presence and
   * other events are ignored; only `error` frames count as errors. Like the typed client, a
   * member pings every third of the `welcome`'s `heartbeat_ms`, so the server never pings it.
   */
  native: {
    connect(options) {
      const room = `ticket:${options.room}`;
      const url = `${options.base}/ws?token=${options.token}`;
      const out = { ts: 0, pk: 0 };
      let heartbeat;
      return openMember(url, options, {
        frame: (body) =>
          `{"type":"send","room":"${room}","body":"${body}","client_id":"${++nativeIds}-${
            Math.random().toString(36).slice(2)
          }"}`,
        fileFrame: (body, base64, filename) =>
          `{"type":"send","room":"${room}","body":"${body}","files":[{"name":"${filename}","data":"${base64}"}]}`,
        onOpen: () => {},
        handshake: (ws, data) => {
          if (data.indexOf('"type":"welcome"') >= 0) {
            ws.send(`{"type":"join","room":"${room}","ref":1}`);
            const at = data.indexOf(HEARTBEAT_MS);
            const ms = at < 0 ? -1 : readInt(data, at + HEARTBEAT_MS.length);
            if (ms > 0) heartbeat = setInterval(() => ws.send(PING), Math.max(100, ms / 3));
          }
          return data.indexOf('"type":"joined"') >= 0;
        },
        onClosed: () => clearInterval(heartbeat),
        onFrame: (_ws, data) => {
          if (startsWith(data, TYPE_MESSAGE)) {
            const b = data.indexOf(BODY);
            const ts = b < 0 ? -1 : readInt(data, b + BODY.length);
            if (ts < 0) return options.onOther?.(data);
            const q = data.indexOf(SEQ);
            out.ts = ts;
            out.pk = q < 0 ? 0 : readInt(data, q + SEQ.length);
            options.onDelivery(out.ts, out.pk, data);
          } else if (startsWith(data, TYPE_ERROR)) options.onOther?.(data);
        },
      });
    },
  },

  /** The raw Deno peer: `/ws/<room>?user=`; member once the socket is open. */
  raw: {
    connect(options) {
      const url = `${options.base}/ws/${options.room}?user=${options.user}`;
      return openMember(url, options, { ...plainFrames, onFrame: broadcastHandler(options) });
    },
  },

  /**
   * Socket.IO v5 over Engine.IO v4, websocket transport, written on `ws` so every peer's clients
   * cost the same: open packet `0{...}` → `40` → ack `40{"sid"}`; pings `2` answered `3`; events
   * `42["message",{...}]`. The server joins the room named in the handshake query before the ack.
   */
  socketio: {
    connect(options) {
      const url = `${options.base}/socket.io/?EIO=4&transport=websocket&room=${
        encodeURIComponent(options.room)
      }&user=${options.user}`;
      const deliver = broadcastHandler(options);
      return openMember(url, options, {
        frame: (body) => `42["message",{"body":"${body}"}]`,
        fileFrame: (body, base64, filename) =>
          `42["message",{"body":"${body}","file":"${base64}","filename":"${filename}"}]`,
        onOpen: () => {},
        handshake: (ws, data) => {
          if (data[0] === 48) ws.send("40"); // "0{...}": Engine.IO open → connect the namespace.
          else if (data[0] === 50) ws.send("3"); // ping
          return data[0] === 52 && data[1] === 48; // "40{...}": joined
        },
        onFrame: (ws, data) => {
          if (data[0] === 52 && data[1] === 50) deliver(ws, data); // "42[...]": event
          else if (data[0] === 50) ws.send("3"); // "2": ping → pong
          else options.onOther?.(data);
        },
      });
    },
  },
};
