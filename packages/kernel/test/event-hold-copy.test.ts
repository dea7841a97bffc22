// A structured event waits as a copy of its encoding (case 676): made only for an event that
// still waits once its emit's pumps ran, not for one every subscriber got at once.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_EVENT_LIMITS, EventBus } from "../src/events/bus.js";

/** Counts Buffer.allocUnsafeSlow's calls (hold's copy) while `f` runs. */
function copiesDuring(f: () => void): number {
  const slow = Buffer.allocUnsafeSlow;
  let n = 0;
  Buffer.allocUnsafeSlow = (size: number) => {
    n++;
    return slow(size);
  };
  try {
    f();
  } finally {
    Buffer.allocUnsafeSlow = slow;
  }
  return n;
}

describe("an event's held copy", () => {
  it("a structured event delivered at once by its emit's pump is not copied; one still waiting after it is", () => {
    const bus = new EventBus(DEFAULT_EVENT_LIMITS);
    bus.useRoots({ of: (p) => p.split("/")[0] ?? p });
    const frames: Uint8Array[] = [];
    // The persona tree's room for unread events: none at first, so the first event waits.
    let room = false;
    const sink = { id: "s1", persona: "ann", buffered: 0, write: (f: Uint8Array) => frames.push(f), room: () => room };
    bus.subscribe(sink, "topic://x");
    const data = { n: 1, list: [1, 2, 3] };
    assert.equal(
      copiesDuring(() => bus.emit("topic://x", data)),
      1,
      "the first waits: held as a copy",
    );
    assert.equal(frames.length, 0);
    // Room again (the pump that would follow a drain has not run): this emit's pump sends both at once.
    room = true;
    assert.equal(
      copiesDuring(() => bus.emit("topic://x", data)),
      0,
      "delivered by the pump at once: no copy",
    );
    assert.equal(frames.length, 2);
    assert.equal(bus.queuedBytes, 0);
    // Waiting again for room: still held as a copy.
    room = false;
    assert.equal(
      copiesDuring(() => bus.emit("topic://x", data)),
      1,
    );
    assert.ok(bus.queuedBytes > 0);
  });
});
