import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SliceLoop } from "../src/slice-loop.js";
import { SliceSweep } from "../src/slice-sweep.js";
import { until } from "./harness.js";

/** Turns of the event loop: a counter a setImmediate chain advances until stopped. */
function turns(): { n: number; stop(): void } {
  const t = { n: 0, stopped: false, stop: () => (t.stopped = true) };
  const next = () => {
    if (t.stopped) return;
    t.n++;
    setImmediate(next);
  };
  setImmediate(next);
  return t;
}

describe("the heartbeat sweep visits sessions a slice per turn", () => {
  it("visits every item once, never more than a slice in one turn, and skips items gone before their turn", async () => {
    const live = new Set(Array.from({ length: 1000 }, (_, i) => i));
    const sweep = new SliceSweep<number>(64, (i) => live.has(i));
    const t = turns();
    const visited: number[] = [];
    const turnOf = new Map<number, number>();
    try {
      assert.ok(
        sweep.run(live, (i) => {
          visited.push(i);
          turnOf.set(t.n, (turnOf.get(t.n) ?? 0) + 1);
          // Closing another session mid-sweep: it is not visited after it closed.
          if (i === 10) live.delete(900);
        }),
      );
      assert.equal(visited.length, 64, "the first slice runs at once, the rest later");
      live.add(5000); // opened during the sweep: the next sweep's, not this one's
      assert.equal(
        sweep.run(live, () => assert.fail("a second sweep while one runs")),
        false,
      );
      await until(() => !sweep.busy, 30_000, "the sweep finished");
      assert.deepEqual(
        visited,
        Array.from({ length: 1000 }, (_, i) => i).filter((i) => i !== 900),
      );
      assert.ok(turnOf.size >= Math.ceil(999 / 64), `spread over turns: ${[...turnOf.values()]}`);
      for (const [turn, n] of turnOf) assert.ok(n <= 64, `turn ${turn} visited ${n}`);
      const second: number[] = [];
      assert.ok(
        sweep.run(live, (i) => second.push(i)),
        "a new sweep once the last ended",
      );
      await until(() => !sweep.busy, 30_000, "the second sweep finished");
      assert.ok(second.includes(5000) && !second.includes(900) && second.length === 1000);
    } finally {
      t.stop();
    }
  });

  it("a visit that throws ends that sweep only; stop ends every sweep", async () => {
    const sweep = new SliceSweep<number>(2, () => true);
    assert.throws(() =>
      sweep.run([1, 2, 3], () => {
        throw new Error("boom");
      }),
    );
    assert.equal(sweep.busy, false, "the throwing sweep ended");
    const seen: number[] = [];
    assert.ok(sweep.run([1, 2, 3, 4, 5], (i) => seen.push(i)));
    sweep.stop();
    await until(() => !sweep.busy, 30_000, "the stopped sweep ended");
    assert.deepEqual(seen, [1, 2], "the slice under way finishes, nothing after stop");
    assert.equal(
      sweep.run([9], () => assert.fail("visited after stop")),
      false,
    );
  });
});

describe("the slice loop the sweeps, the dedupe pruner and audit retention share", () => {
  it("runs a slice now and one a turn while it asks for more; one pass at a time; done after the last slice or a stop", async () => {
    const loop = new SliceLoop();
    const t = turns();
    const slices: number[] = [];
    let done = 0;
    try {
      assert.ok(
        loop.run(
          () => slices.push(t.n) < 5,
          () => done++,
        ),
      );
      assert.deepEqual(slices.length, 1, "the first slice at once");
      assert.equal(
        loop.run(() => assert.fail("a second pass while one runs")),
        false,
      );
      await until(() => !loop.busy, 30_000, "the pass ended");
      assert.equal(slices.length, 5);
      assert.equal(new Set(slices).size, 5, "one slice a turn");
      assert.equal(done, 1);
      assert.ok(
        loop.run(
          () => true,
          () => done++,
        ),
      );
      loop.stop();
      await until(() => !loop.busy, 30_000, "the stopped pass ended");
      assert.equal(done, 2, "done after a stop too");
      assert.equal(
        loop.run(() => assert.fail("a slice after stop")),
        false,
      );
    } finally {
      t.stop();
    }
  });
});
