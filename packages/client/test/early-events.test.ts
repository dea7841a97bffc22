import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { kernelPool } from "./harness.js";

describe("events that come before a subscription's id is known", () => {
  const kernel = kernelPool();

  it("an event emitted while event.subscribe awaits its answer reaches the new subscription: the emitter is told it has a subscriber, and it has", async (t) => {
    const k = kernel();
    await k.start();
    const c = await k.connect();
    t.after(() => c.close());
    // Sent in one turn: the kernel makes the subscription live when its op runs and answers once
    // its record commits, so the emit runs in between and its EVENT comes before (or right behind,
    // in the same read as) the answer naming the subscription's id.
    const [sub, emitted] = await Promise.all([c.subscribe("topic://early/**"), c.events.emit("topic://early/x", { n: 1 })]);
    assert.equal(emitted.subscribers, 1, "the kernel counted the subscription as reached");
    // Its answer comes after the EVENT (written while the emit ran): read by then.
    await c.system.health();
    assert.equal(sub.buffered.events, 1, "the event is the subscription's, not dropped as an unknown id's");
    const first = await sub[Symbol.asyncIterator]().next();
    assert.equal(first.value?.topic, "topic://early/x");
    assert.deepEqual(first.value?.data, { n: 1 });
  });
});
