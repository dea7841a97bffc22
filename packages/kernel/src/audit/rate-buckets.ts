/** A token bucket: tokens left, and when it was last filled. */
export interface Bucket {
  tokens: number;
  at: number;
}

/** Bursts are this many seconds of the rate. */
export const BURST_SECONDS = 5;

/**
 * Fills `b` at `rate` a second for the time since it was last filled, up to a burst. A clock
 * stepped back (NTP, `date -s`) is no time passed: the negative span was a debt of that many
 * seconds of the rate, which ended every session at its next PONG and refused every open (case 664).
 */
export function refill(b: Bucket, rate: number, now: number): void {
  b.tokens = Math.min(rate * BURST_SECONDS, b.tokens + (Math.max(0, now - b.at) / 1000) * rate);
  b.at = now;
}

/** Takes `n` from `b`, down to a burst below empty at most: a debt paid back at `rate` before the bucket lets anything through again. */
export function drain(b: Bucket, n: number, rate: number): void {
  b.tokens = Math.max(-rate * BURST_SECONDS, b.tokens - n);
}

/** Buckets a table holds before a new key is sweep-checked ({@link RateBuckets.take}) or refused ({@link RateBuckets.takeIfRoom}). */
const MAX_BUCKETS = 10_000;

/**
 * Token buckets by key, one rate for all: the audit's record limiters (refusals, failed
 * handshakes). A bucket idle for a full burst is full again, so dropping it changes nothing:
 * {@link sweep} keeps the table to the keys active lately. Past MAX_BUCKETS buckets a new key is
 * either taken after a sweep ({@link take}) or given none ({@link takeIfRoom}).
 */
export class RateBuckets {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly rate: () => number) {}

  /**
   * The bucket of `key`, filled for the time since it was last used (a new one is full). A new
   * key when the table is full first sweeps the idle buckets (for keys the kernel vouches for:
   * sessions, persona trees), rather than the table keeping one per key ever seen.
   */
  take(key: string, now: number): Bucket {
    if (this.buckets.size >= MAX_BUCKETS && !this.buckets.has(key)) this.sweep(now);
    return this.fill(key, now);
  }

  /**
   * As {@link take}, but a new key when the table is full gets no bucket (undefined) and sweeps
   * nothing: keys a peer picks (its addresses) cannot make the table, or a sweep per call, large.
   * The owner sweeps on its own tick.
   */
  takeIfRoom(key: string, now: number): Bucket | undefined {
    if (this.buckets.size >= MAX_BUCKETS && !this.buckets.has(key)) return undefined;
    return this.fill(key, now);
  }

  /** Whether a new key would find no room ({@link takeIfRoom}). */
  get full(): boolean {
    return this.buckets.size >= MAX_BUCKETS;
  }

  /** The bucket of `key` if it has one, filled to now; never makes one. */
  peek(key: string, now: number): Bucket | undefined {
    return this.buckets.has(key) ? this.fill(key, now) : undefined;
  }

  private fill(key: string, now: number): Bucket {
    const rate = this.rate();
    let b = this.buckets.get(key);
    if (!b) {
      b = { tokens: rate * BURST_SECONDS, at: now };
      this.buckets.set(key, b);
      return b;
    }
    refill(b, rate, now);
    return b;
  }

  delete(key: string): void {
    this.buckets.delete(key);
  }

  /** Drops the buckets idle for a full burst (full again: nothing is lost). */
  sweep(now: number): void {
    for (const [k, v] of this.buckets) if (now - v.at >= BURST_SECONDS * 1000) this.buckets.delete(k);
  }
}
