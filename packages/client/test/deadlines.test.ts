import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { DeadlineQueue, type Expiring } from "../src/deadlines.js";
import { TimeoutError } from "../src/index.js";
import { FakeKernel, until } from "./harness.js";

interface Entry extends Expiring {
  n: number;
}

describe("DeadlineQueue: every call's local expiry under one timer", () => {
  it("expires exactly the entries not removed, each once, never before its time, earliest first", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ ms: fc.nat({ max: 25 }), remove: fc.boolean(), again: fc.option(fc.nat({ max: 25 })) }), {
          minLength: 1,
          maxLength: 40,
        }),
        async (plan) => {
          const expired: { e: Entry; at: number }[] = [];
          const q = new DeadlineQueue<Entry>((e) => expired.push({ e, at: performance.now() }));
          const entries = plan.map((_, n) => ({ n, expiresAt: 0, heapIndex: -1 }));
          plan.forEach((p, i) => {
            q.add(entries[i] as Entry, p.ms);
          });
          // Some move (added again with another time), some leave before they expire.
          plan.forEach((p, i) => {
            if (p.again !== null) q.add(entries[i] as Entry, p.again);
          });
          plan.forEach((p, i) => {
            if (p.remove) q.remove(entries[i] as Entry);
          });
          const kept = entries.filter((_, i) => !plan[i]?.remove);
          await until(() => expired.length >= kept.length, 10_000, "every kept entry expired");
          assert.equal(q.size, 0);
          assert.deepEqual(
            expired.map((x) => x.e.n).sort((a, b) => a - b),
            kept.map((e) => e.n),
          );
          for (const x of expired) assert.ok(x.at >= x.e.expiresAt, "not before its time");
          for (let i = 1; i < expired.length; i++) {
            assert.ok((expired[i - 1] as { e: Entry }).e.expiresAt <= (expired[i] as { e: Entry }).e.expiresAt, "earliest first");
          }
          for (const e of entries) assert.equal(e.heapIndex, -1);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("leaves no timer once empty, so a closed client does not hold the process open", () => {
    const q = new DeadlineQueue<Entry>(() => assert.fail("nothing may expire"));
    const a = { n: 1, expiresAt: 0, heapIndex: -1 };
    const b = { n: 2, expiresAt: 0, heapIndex: -1 };
    q.add(a, 60_000);
    q.add(b, 30_000);
    assert.equal(q.armed, true);
    q.remove(b);
    q.remove(a);
    q.remove(a);
    assert.equal(q.armed, false);
    assert.equal(q.size, 0);
  });

  it("a deadline farther than a timer holds (30 days) arms a timer of the longest a timer holds, not one that overflows to 1 ms", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on("warning", onWarning);
    const q = new DeadlineQueue<Entry>(() => assert.fail("nothing may expire"));
    const a = { n: 1, expiresAt: 0, heapIndex: -1 };
    try {
      q.add(a, 30 * 24 * 3600 * 1000);
      // Node warns (on the next tick) of a delay it cut to 1 ms.
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(warnings, []);
    } finally {
      q.remove(a);
      process.off("warning", onWarning);
    }
  });
});

describe("deadlines through the client: one queue for every call", () => {
  it("of many calls with deadlines, the answered resolve, the unanswered time out, each settles once and none is left", async () => {
    const fake = new FakeKernel();
    await fake.listen();
    const c = await fake.connect();
    try {
      // Every third request goes unanswered; the rest are answered at once.
      const steps = Array.from({ length: 90 }, (_, i) =>
        i % 3 === 0 ? () => "silent" as const : () => ({ status: "SUCCESS" as const, payload: { i } }),
      );
      fake.reset(...steps);
      const settled = await Promise.allSettled(
        Array.from({ length: 90 }, (_, i) => c.call("x.y", "kernel://", { i }, { deadlineMs: 200 + (i % 7) * 50 })),
      );
      assert.equal(fake.requests.length, 90);
      // One socket, one turn: the fake kernel saw the calls in the order they were made.
      settled.forEach((s, i) => {
        if (i % 3 === 0) assert.ok(s.status === "rejected" && s.reason instanceof TimeoutError, `call ${i}: ${String(s)}`);
        else assert.deepEqual(s.status === "fulfilled" && s.value.payload, { i }, `call ${i}`);
      });
      assert.equal(c.inFlight, 0);
    } finally {
      await c.close();
      fake.close();
    }
  });
});
