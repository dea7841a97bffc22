/** An idle task worker's default time kept (computeIdleWorkerMs; ComputeEngine.endAgedIdle). */
export const IDLE_WORKER_MS = 60_000;

/**
 * The rule an idle task worker's summed busy time is judged by (ComputeEngine.endSpinningIdle):
 * a task's leftover busy under half of every tick (case 628) is caught by the sum, and the sum
 * is over a window, not since the worker's last task — a worker kept warm for hours summed its
 * own collections and timers past the bound and was ended as spinning for them.
 */

/** Most milliseconds an idle worker's event loop may be busy within one window. */
export const IDLE_BUSY_MAX_MS = 1000;
/** The window the busy time is summed over; a new one starts after it. */
export const IDLE_BUSY_WINDOW_MS = 60_000;

export interface IdleBusy {
  /** When the current window started. */
  since: number;
  /** Busy milliseconds summed within it. */
  ms: number;
  /** Past {@link IDLE_BUSY_MAX_MS} within the window. */
  over: boolean;
}

/** `prev` with `activeMs` more busy time seen at `now` (a new window once the current one is over). */
export function idleBusyAdd(prev: IdleBusy | undefined, activeMs: number, now: number): IdleBusy {
  const fresh = prev === undefined || now - prev.since >= IDLE_BUSY_WINDOW_MS;
  const since = fresh ? now : prev.since;
  const ms = (fresh ? 0 : prev.ms) + activeMs;
  return { since, ms, over: ms > IDLE_BUSY_MAX_MS };
}
