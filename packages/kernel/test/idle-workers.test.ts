import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { IDLE_BUSY_MAX_MS, IDLE_BUSY_WINDOW_MS, type IdleBusy, idleBusyAdd } from "../src/compute/idle-workers.js";

/** The busy time a worker's ticks see, `ms` each `every` ms, for `span` ms from 0: its state after each. */
function ticks(ms: number, every: number, span: number): IdleBusy[] {
  const out: IdleBusy[] = [];
  let s: IdleBusy | undefined;
  for (let now = every; now <= span; now += every) {
    s = idleBusyAdd(s, ms, now);
    out.push(s);
  }
  return out;
}

describe("an idle task worker's busy time is judged per window", () => {
  it("a worker kept warm for hours whose own work (a collection, 5 ms a second) sums past a second is not over the bound", () => {
    const seen = ticks(5, 1000, 4 * 3600 * 1000);
    assert.ok(5 * seen.length > IDLE_BUSY_MAX_MS, "its sum since its last task is past the bound");
    assert.equal(
      seen.some((s) => s.over),
      false,
    );
  });

  it("a leftover busy 30 ms of every 100 is over the bound within its first window", () => {
    const seen = ticks(300, 1000, IDLE_BUSY_WINDOW_MS);
    const at = seen.findIndex((s) => s.over);
    assert.ok(at >= 0 && at < 5, `over at tick ${at}`);
  });
});
