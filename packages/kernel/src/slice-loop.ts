/**
 * One pass of work a slice per turn of the event loop, so what waits behind it (requests) waits
 * one slice, not the whole pass: the session sweep, the dedupe pruner and audit retention run
 * theirs on it. One pass at a time: a pass asked for while one runs is dropped (the next tick
 * asks again). A slice that throws ends its pass and the error goes up.
 */
export class SliceLoop {
  private running = false;
  private halted = false;

  /**
   * Runs `slice` now, then once a turn while it returns true and the loop is not stopped; `done`
   * after the last one (or a stop). False, and nothing runs, if a pass is under way or the loop stopped.
   */
  run(slice: () => boolean, done?: () => void): boolean {
    if (this.running || this.halted) return false;
    this.running = true;
    const step = () => {
      let more: boolean;
      try {
        more = !this.halted && slice();
      } catch (e) {
        this.running = false;
        throw e;
      }
      if (more && !this.halted) setImmediate(step);
      else {
        this.running = false;
        done?.();
      }
    };
    step();
    return true;
  }

  /** Whether a pass is under way. */
  get busy(): boolean {
    return this.running;
  }

  /** Whether {@link stop} was called (a slice checks it to end early). */
  get stopped(): boolean {
    return this.halted;
  }

  /** No more slices, from this pass or another. */
  stop(): void {
    this.halted = true;
  }
}
