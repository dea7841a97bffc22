import type { AuditStore } from "./types.js";

/**
 * Deletes expired dedupe records in small slices, yielding to requests between slices. One
 * `DELETE ... WHERE expires < ?` a minute scanned the whole table on the request thread:
 * 60 ms with nothing to delete and 180 ms deleting 20,000 of 100,000 rows (about five minutes
 * of writes at a few hundred a second), a stall every request in flight waited out. Records
 * are appended in expiry order, so each slice looks at the oldest `slice` rows only.
 */
export class DedupePruner {
  private running = false;
  private stopped = false;
  /** Rows deleted so far (metrics, tests). */
  deleted = 0;

  constructor(
    private readonly store: Pick<AuditStore, "pruneDedupe">,
    private readonly slice = 128,
  ) {}

  /** Starts deleting what expired before `now`, a slice a turn, unless a run is under way. */
  run(now: number): void {
    if (this.running || this.stopped) return;
    this.running = true;
    const step = () => {
      let n = 0;
      try {
        if (!this.stopped) n = this.store.pruneDedupe(now, this.slice);
      } catch {
        // The store is closing or busy: the next tick starts again.
      }
      this.deleted += n;
      if (n >= this.slice && !this.stopped) setImmediate(step);
      else this.running = false;
    };
    step();
  }

  stop(): void {
    this.stopped = true;
  }
}
