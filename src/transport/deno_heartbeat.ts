/**
 * A fix for Deno 2.9's WebSocket heartbeat (`idleTimeout`), which can close a healthy socket.
 *
 * Deno arms a ping timer on every frame it reads. When it fires, the callback sends a ping,
 * awaits the write, and only then arms the close timer. A frame read during that await (a pong,
 * a message) arms a second ping timer, which the continuation overwrites without cancelling it;
 * that orphan later pings again and overwrites the close timer, also without cancelling it. The
 * close timer then fires however promptly the client answered: 1001, "No response from ping
 * frame.". The await is long exactly when the socket has output queued (a busy room), and that is
 * when the benchmark saw listeners closed.
 *
 * The fix holds back the re-arming while a ping's write is awaited and replays it (through
 * Deno's own method, which cancels the close timer) as soon as the close timer is armed, seen
 * within 20 ms by polling the timer slot. It uses two private slots of Deno's WebSocket, found by
 * their descriptions, and applies only when Deno's method still reads as the one described here;
 * otherwise sockets are left as they are.
 */

const HANDLE = "[[serverHandleIdleTimeout]]";
const TIMER = "[[idleTimeoutTimeout]]";
const DURATION = "[[idleTimeout]]";

const symbolOf = (target: object, description: string) =>
  Object.getOwnPropertySymbols(target).find((s) => s.description === description);

/** Deno's method, when its code is the one this fix was written against. */
function originalHandler(): { symbol: symbol; fn: () => void } | undefined {
  const symbol = symbolOf(WebSocket.prototype, HANDLE);
  if (!symbol) return undefined;
  // deno-lint-ignore no-explicit-any
  const fn = (WebSocket.prototype as any)[symbol];
  if (typeof fn !== "function") return undefined;
  const code = String(fn);
  // Both timers, the ping's and the close's, are kept in one slot, and the close's is armed
  // after the ping's write: what the fix relies on.
  const slots = [...code.matchAll(/this\[(\w+)\]\s*=\s*[\w.]+\.createSystemTimer\(/g)].map((m) =>
    m[1]
  );
  const known = slots.length === 2 && slots[0] === slots[1] &&
    code.includes("No response from ping frame.") && code.includes("cancelTimer(") &&
    code.indexOf("await") < code.lastIndexOf("createSystemTimer(");
  return known ? { symbol, fn } : undefined;
}

const ORIGINAL = originalHandler();
const STATE = Symbol("heartbeat");
/**
 * The ping timer is kept through activity for its first 1/KEEP_DIVISOR of the half period (about
 * 470 ms of the default 15 s), so a ping may come that share of the period early.
 */
const KEEP_DIVISOR = 32;
/** The first wait of a held activity for the close timer, ms; it doubles up to a quarter period. */
const POLL_MS = 20;

interface State {
  /** Deno's timer slot on the socket. */
  slot: symbol;
  /** The ping timer Deno's method armed last: the slot holds something else once the close is. */
  armed: unknown;
  /** When that ping timer was armed, performance.now() ms. */
  armedAt: number;
  /** When that ping timer fires, performance.now() ms. */
  firesAt: number;
  /** Half the idle timeout, ms: the delay of each of Deno's timers. */
  halfMs: number;
  /** Activity seen while a ping's write was awaited, to replay once the close timer is armed. */
  held: boolean;
}

type Patched = WebSocket & { [STATE]: State; [key: symbol]: unknown };

function rearm(socket: Patched): void {
  const state = socket[STATE];
  state.held = false;
  ORIGINAL!.fn.call(socket);
  state.armed = socket[state.slot];
  state.armedAt = performance.now();
  state.firesAt = state.armedAt + state.halfMs;
}

/** Waits `ms`, without keeping the process alive, then looks again. */
function pollLater(socket: Patched, ms: number): void {
  Deno.unrefTimer(setTimeout(replayWhenArmed, ms, socket, ms));
}

/**
 * Replays held activity once Deno's ping callback has armed the close timer, which waits half a
 * period: looking at growing intervals up to a quarter of it is soon enough, and cheap while a
 * ping's write waits long behind queued output.
 */
function replayWhenArmed(socket: Patched, waited: number): void {
  const state = socket[STATE];
  if (!state.held || socket.readyState !== WebSocket.OPEN) return;
  if (socket[state.slot] === state.armed) {
    pollLater(socket, Math.min(waited * 2, state.halfMs / 4));
    return;
  }
  // Deno's own method cancels the close timer now in the slot and arms a fresh ping timer.
  rearm(socket);
}

// Shared by every socket (no closure per socket: tens of thousands may be open). Deno calls it
// for every frame and pong the socket reads.
function handleIdleTimeout(this: Patched): void {
  const state = this[STATE];
  if (this[state.slot] === state.armed) {
    const now = performance.now();
    // The ping timer is due and the slot still holds it: its ping's write may be awaited.
    if (now >= state.firesAt - 2) {
      if (!state.held) {
        state.held = true;
        pollLater(this, POLL_MS);
      }
      return;
    }
    // Armed moments ago: Deno's method would cancel it and arm another (a timer per frame read,
    // on a busy socket thousands a second) that fires at most 1/KEEP_DIVISOR of its delay later.
    // The ping it sends comes that much sooner after the socket's last frame, at worst; a socket
    // that keeps sending still re-arms it before it fires. The close timer is never left armed:
    // the slot holds the ping timer here.
    if (now - state.armedAt < state.halfMs / KEEP_DIVISOR) return;
  }
  rearm(this);
}

/** True when the running Deno has the heartbeat this module fixes. */
export const heartbeatFixApplies = ORIGINAL !== undefined;

/**
 * Fixes the heartbeat of a server socket just returned by `Deno.upgradeWebSocket` with an
 * `idleTimeout` of `idleSeconds` (before it opens); a no-op when the fix does not apply.
 */
export function fixHeartbeat(socket: WebSocket, idleSeconds: number): void {
  if (!ORIGINAL || idleSeconds <= 0) return;
  const slot = symbolOf(socket, TIMER);
  if (!slot) return;
  const patched = socket as Patched;
  // Deno's own duration, as its timers use it (the argument when it cannot be read).
  const durationSlot = symbolOf(socket, DURATION);
  const duration = durationSlot ? patched[durationSlot] : undefined;
  const seconds = typeof duration === "number" && duration > 0 ? duration : idleSeconds;
  patched[STATE] = {
    slot,
    armed: undefined,
    armedAt: -Infinity,
    firesAt: Infinity,
    halfMs: (seconds / 2) * 1000,
    held: false,
  };
  // An own property in front of the prototype's method; the slot itself is left as it is (an
  // accessor there would turn every socket's properties into a dictionary: a kilobyte each).
  patched[ORIGINAL.symbol] = handleIdleTimeout;
}
