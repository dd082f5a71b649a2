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
 * Deno's own method, which cancels the close timer) as soon as the close timer is armed. It uses
 * two private slots of Deno's WebSocket, found by their descriptions, and applies only when
 * Deno's method still reads as the one described here; otherwise sockets are left as they are.
 */

const HANDLE = "[[serverHandleIdleTimeout]]";
const TIMER = "[[idleTimeoutTimeout]]";

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
  const arms = code.split("createSystemTimer(").length - 1;
  const known = arms === 2 && code.includes("No response from ping frame.") &&
    code.includes("cancelTimer(");
  return known ? { symbol, fn } : undefined;
}

const ORIGINAL = originalHandler();
const STATE = Symbol("heartbeat");

interface State {
  /** The value Deno keeps in its timer slot. */
  timer: unknown;
  /** Deno's own method is running (its writes to the slot arm a ping timer). */
  inHandler: boolean;
  /** When the armed ping timer fires, performance.now() ms. */
  firesAt: number;
  /** The close timer was armed since the last ping timer: no ping write is awaited. */
  closeArmed: boolean;
  /** Activity was seen while a ping's write was awaited: replayed once the close timer is armed. */
  held: boolean;
  /** Half the idle timeout, ms: the delay of each of Deno's timers. */
  halfMs: number;
}

type Patched = WebSocket & { [STATE]: State };

function rearm(socket: Patched): void {
  const state = socket[STATE];
  state.inHandler = true;
  try {
    ORIGINAL!.fn.call(socket);
  } finally {
    state.inHandler = false;
  }
  state.firesAt = performance.now() + state.halfMs;
  state.closeArmed = false;
  state.held = false;
}

// Shared by every socket (no closure per socket: tens of thousands may be open).
function handleIdleTimeout(this: Patched): void {
  const state = this[STATE];
  // A ping timer that is due has fired (or is about to): its write may be under way.
  if (!state.closeArmed && performance.now() >= state.firesAt - 2) {
    state.held = true;
    return;
  }
  rearm(this);
}

function getTimer(this: Patched): unknown {
  return this[STATE].timer;
}

function setTimer(this: Patched, value: unknown): void {
  const state = this[STATE];
  state.timer = value;
  if (state.inHandler) return;
  // Deno's ping callback, after the write: the close timer is armed now.
  state.closeArmed = true;
  if (state.held) {
    state.held = false;
    queueMicrotask(() => {
      if (this.readyState === WebSocket.OPEN) rearm(this);
    });
  }
}

/** True when the running Deno has the heartbeat this module fixes. */
export const heartbeatFixApplies = ORIGINAL !== undefined;

/**
 * Fixes the heartbeat of a server socket just returned by `Deno.upgradeWebSocket` with an
 * `idleTimeout` of `idleSeconds` (before it opens); a no-op when the fix does not apply.
 */
export function fixHeartbeat(socket: WebSocket, idleSeconds: number): void {
  if (!ORIGINAL || idleSeconds <= 0) return;
  const timerSlot = symbolOf(socket, TIMER);
  if (!timerSlot) return;
  const patched = socket as Patched;
  patched[STATE] = {
    // deno-lint-ignore no-explicit-any
    timer: (socket as any)[timerSlot],
    inHandler: false,
    firesAt: Infinity,
    closeArmed: false,
    held: false,
    halfMs: (idleSeconds / 2) * 1000,
  };
  Object.defineProperty(socket, timerSlot, {
    get: getTimer,
    set: setTimer,
    configurable: true,
    enumerable: false,
  });
  Object.defineProperty(socket, ORIGINAL.symbol, {
    value: handleIdleTimeout,
    configurable: true,
    writable: true,
    enumerable: false,
  });
}
