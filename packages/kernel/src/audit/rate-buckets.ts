/** A token bucket: tokens left, and when it was last filled. */
export interface Bucket {
  tokens: number;
  at: number;
}

/** Bursts are this many seconds of the rate. */
const BURST_SECONDS = 5;

/**
 * Token buckets by key, one rate for all: the audit's record limiters (refusals, failed
 * handshakes). A bucket idle for a full burst is full again, so dropping it changes nothing:
 * {@link sweep} keeps the table to the keys active lately.
 */
export class RateBuckets {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly rate: () => number) {}

  get size(): number {
    return this.buckets.size;
  }

  has(key: string): boolean {
    return this.buckets.has(key);
  }

  /** The bucket of `key`, filled for the time since it was last used (a new one is full). */
  take(key: string, now: number): Bucket {
    const rate = this.rate();
    const burst = rate * BURST_SECONDS;
    let b = this.buckets.get(key);
    if (!b) {
      b = { tokens: burst, at: now };
      this.buckets.set(key, b);
      return b;
    }
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rate);
    b.at = now;
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
