// The event bus counts subscriptions by the top of a persona's tree, from the registry the kernel
// gives it once its store is open (the bus is built before): never by another grouping meanwhile.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_EVENT_LIMITS, EventBus } from "../src/events/bus.js";

const sink = (id: string, persona: string) => ({ id, persona, buffered: 0, write: () => {} });

describe("EventBus roots", () => {
  it("refuses a subscription before the kernel gave it the registry's roots, and counts by those roots after", () => {
    const bus = new EventBus({ ...DEFAULT_EVENT_LIMITS, perPersona: 1 });
    assert.throws(() => bus.subscribe(sink("s1", "team/alice"), "topic://x"), /no persona roots/);
    bus.useRoots({ of: (p) => (p.startsWith("team/alice") ? "team/alice" : (p.split("/")[0] ?? p)) });
    bus.subscribe(sink("s1", "team/alice"), "topic://x");
    bus.subscribe(sink("s2", "team/bob"), "topic://x");
    assert.throws(() => bus.subscribe(sink("s3", "team/alice/helper"), "topic://x"), /maxSubscriptionsPerPersona/);
  });
});
