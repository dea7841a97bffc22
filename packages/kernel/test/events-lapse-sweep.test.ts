// The housekeeping's check of every subscription's capability runs a slice per turn of the event
// loop: with many subscriptions one pass held the kernel's thread for all of them at every tick.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Grant } from "@kpip/protocol";
import { DEFAULT_EVENT_LIMITS, EventBus } from "../src/events/bus.js";
import { LAPSE_SLICE } from "../src/limits.js";

const turn = () => new Promise<void>((r) => setImmediate(r));

describe("the housekeeping's lapse sweep", () => {
  it("asks at most LAPSE_SLICE subscriptions per turn, ends the lapsed ones, skips those gone meanwhile, and runs one sweep at a time", async () => {
    const n = 3 * LAPSE_SLICE + 17;
    const bus = new EventBus({ ...DEFAULT_EVENT_LIMITS, perSession: n, perPersona: n, total: n });
    bus.useRoots({ of: (p) => p });
    const written: number[] = [];
    const sink = { id: "s1", persona: "alice", buffered: 0, write: (f: Uint8Array) => written.push(f.length) };
    const grants: Grant[] = [];
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const g = { id: `t${i}`, chain: [], exp: 0 } as unknown as Grant;
      grants.push(g);
      ids.push(bus.subscribe(sink, `topic://x/${i}`, g));
    }
    let asked = 0;
    // Every seventh capability lapsed.
    const lapsed = new Set(grants.filter((_, i) => i % 7 === 0));
    bus.lapsed = (g) => {
      asked++;
      return lapsed.has(g) ? "expired" : undefined;
    };
    assert.equal(bus.sweepLapsed(), true);
    assert.equal(asked, LAPSE_SLICE, "one slice in this turn");
    assert.equal(bus.sweepLapsed(), false, "a sweep is under way: the next tick asks again");
    // One not yet visited goes before its turn: it is not asked.
    bus.unsubscribe(sink, ids[n - 1] as number);
    let turns = 0;
    while (asked < n - 1 && turns < 100) {
      const before = asked;
      await turn();
      turns++;
      assert.ok(asked - before <= LAPSE_SLICE, `at most one slice a turn (${asked - before})`);
    }
    await turn();
    assert.equal(asked, n - 1, "every other subscription asked once");
    const ended = [...lapsed].filter((g) => g !== grants[n - 1]).length;
    assert.equal(bus.subscriptionCount(), n - 1 - ended, "the lapsed ones ended");
    assert.ok(written.length >= ended, "each lapsed one told its session why");
    // Done: a new sweep may start.
    assert.equal(bus.sweepLapsed(), true);
    bus.stopSweeps();
  });
});
