import { SliceLoop } from "../slice-loop.js";
import type { AuditStore } from "./types.js";

/**
 * Deletes expired dedupe records in small slices, yielding to requests between slices. One
 * `DELETE ... WHERE expires < ?` a minute scanned the whole table on the request thread:
 * 60 ms with nothing to delete and 180 ms deleting 20,000 of 100,000 rows (about five minutes
 * of writes at a few hundred a second), a stall every request in flight waited out. Records
 * are appended in expiry order, so each slice of {@link run} looks at the oldest `slice` rows
 * only; {@link sweep} (the first pass after a start) walks the whole table instead.
 */
export class DedupePruner {
  private readonly loop = new SliceLoop();
  /** Rows deleted so far (metrics, tests). */
  deleted = 0;
  /** Called when a slice throws (the kernel logs and counts it); the pass ends, the next tick starts again. */
  onError: ((e: unknown) => void) | undefined;

  constructor(
    private readonly store: Pick<AuditStore, "pruneDedupe" | "dedupeEnd" | "pruneDedupeRange">,
    private readonly slice = 128,
  ) {}

  /** Starts deleting what expired before `now`, a slice a turn, unless a run is under way. */
  run(now: number): void {
    this.loop.run(() => {
      let n = 0;
      try {
        n = this.store.pruneDedupe(now, this.slice);
      } catch (e) {
        this.onError?.(e); // the store is closing or busy: the next tick starts again
      }
      this.deleted += n;
      return n >= this.slice;
    });
  }

  /**
   * Deletes what expired before `now` anywhere in the table, `slice` rows looked at a turn, up
   * to the newest row there now: the first pass after a start, over what expired while the kernel
   * was down, in whatever order the last runs wrote it (a window since shortened, a clock moved
   * back). It was one whole-table DELETE, a stall at start as long as the table is big.
   */
  sweep(now: number): void {
    let through: number;
    try {
      through = this.store.dedupeEnd();
    } catch (e) {
      this.onError?.(e);
      return; // the store is closing or busy: the ticks after this one prune the oldest rows
    }
    let after = 0;
    this.loop.run(() => {
      try {
        const r = this.store.pruneDedupeRange(now, after, through, this.slice);
        this.deleted += r.deleted;
        after = r.last;
      } catch (e) {
        this.onError?.(e);
        return false;
      }
      return after < through;
    });
  }

  /** Whether a run or sweep is under way. */
  get busy(): boolean {
    return this.loop.busy;
  }

  stop(): void {
    this.loop.stop();
  }
}
