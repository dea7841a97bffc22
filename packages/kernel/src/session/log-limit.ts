import type { Logger } from "../log.js";

/**
 * Log lines caused by peers, rate-limited per peer: at most `lines` per `windowMs` for one key
 * (a persona, or a transport address before attestation), then one "suppressed N" line when
 * the window ends. A peer can make the kernel log, never make it log without bound.
 */
export class PeerLogLimiter {
  private readonly keys = new Map<string, { start: number; used: number; suppressed: number }>();

  constructor(
    private readonly log: Logger,
    private readonly o: { lines: number; windowMs: number },
  ) {}

  /** Logs at `level` unless `key` used up its lines in this window (then counts it). */
  write(key: string, level: "info" | "warn" | "error", obj: Record<string, unknown>, msg: string, now = Date.now()): void {
    let k = this.keys.get(key);
    if (k && now - k.start >= this.o.windowMs) {
      this.flushOne(key, k);
      k = undefined;
    }
    if (!k) {
      k = { start: now, used: 0, suppressed: 0 };
      this.keys.set(key, k);
    }
    if (k.used < this.o.lines) {
      k.used++;
      this.log[level]({ ...obj, peer: key }, msg);
    } else k.suppressed++;
  }

  /** Ends windows that are over (from the kernel's tick): says what was suppressed, forgets idle keys. */
  sweep(now = Date.now()): void {
    for (const [key, k] of this.keys) if (now - k.start >= this.o.windowMs) this.flushOne(key, k);
  }

  /** Keys currently tracked (bounded by the peers active within one window). */
  get size(): number {
    return this.keys.size;
  }

  private flushOne(key: string, k: { suppressed: number }): void {
    this.keys.delete(key);
    if (k.suppressed > 0) {
      this.log.warn({ peer: key, suppressed: k.suppressed }, `suppressed ${k.suppressed} log lines from this peer`);
    }
  }
}
