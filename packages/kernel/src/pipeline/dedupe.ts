import { decodeCanonical, type Response } from "@kpip/protocol";
import type { AuditStore } from "../store/types.js";

interface Entry {
  hash: Buffer;
  expires: number;
  /** The recorded response, or the promise of it while the first attempt runs. */
  response: Response | Promise<Response>;
}

/**
 * Remembers responses by (client instance id, request id) for the dedupe window, so a
 * retried request is answered from the record instead of running twice. Bounded: past
 * `maxEntries` the oldest entries go first.
 */
export class DedupeCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly windowMs: number,
    private readonly store?: Pick<AuditStore, "lookupDedupe">,
    private readonly maxEntries = 200_000,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * The earlier attempt of this request, if any within the window. `persistent`: also look
   * in the store, where responses of ops with effects survive a kernel restart.
   */
  lookup(key: string, now: number, persistent = false): Entry | undefined {
    const e = this.entries.get(key);
    if (e === undefined) {
      const row = persistent ? this.store?.lookupDedupe(key, now) : undefined;
      if (!row) return undefined;
      return {
        hash: Buffer.from(row.hash),
        expires: row.expires,
        response: decodeCanonical(row.response) as unknown as Response,
      };
    }
    if (e.expires < now) {
      this.entries.delete(key);
      return undefined;
    }
    return e;
  }

  record(key: string, hash: Buffer, response: Response | Promise<Response>, now: number): void {
    this.entries.delete(key);
    this.entries.set(key, { hash, response, expires: now + this.windowMs });
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
  }

  /** Forgets a request whose failure was transient, so its retry runs again. */
  forget(key: string): void {
    this.entries.delete(key);
  }

  /** Drops expired entries (Map order is insertion order, so expiry order). */
  sweep(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.expires >= now) break;
      this.entries.delete(k);
    }
  }
}
