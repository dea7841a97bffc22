/** Exponential backoff with full jitter (AWS architecture blog): delay = random(0, min(cap, base · 2^attempt)). */
export interface BackoffPolicy {
  /** First ceiling, in ms. */
  initialMs: number;
  /** Largest ceiling, in ms. */
  maxMs: number;
}

export const DEFAULT_RECONNECT_BACKOFF: BackoffPolicy = { initialMs: 100, maxMs: 5_000 };
export const DEFAULT_RETRY_BACKOFF: BackoffPolicy = { initialMs: 20, maxMs: 1_000 };

export function backoffDelay(p: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(p.maxMs, p.initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
