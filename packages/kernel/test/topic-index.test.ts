import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { matchTarget } from "@kpip/protocol";
import fc from "fast-check";
import { TopicIndex } from "../src/events/topic-index.js";

const seg = fc.constantFrom("a", "b", "*", "**");
const pattern = fc.array(seg, { maxLength: 4 }).map((s) => `topic://${s.join("/")}`);
const topic = fc.array(fc.constantFrom("a", "b", "c"), { maxLength: 4 }).map((s) => `topic://${s.join("/")}`);

describe("the subscription index", () => {
  it("finds exactly the subscriptions whose pattern matches, before and after removals", () => {
    fc.assert(
      fc.property(fc.array(pattern, { maxLength: 12 }), fc.array(fc.nat(11)), topic, (patterns, drop, t) => {
        const subs = patterns.map((p, id) => ({ id, pattern: p }));
        const index = new TopicIndex<{ id: number; pattern: string }>();
        for (const s of subs) index.add(s);
        const ids = (xs: { id: number }[]) => xs.map((s) => s.id).sort((a, b) => a - b);
        assert.deepEqual(ids(index.match(t)), ids(subs.filter((s) => matchTarget(s.pattern, t))));
        const gone = new Set(drop.filter((d) => d < subs.length));
        for (const d of gone) index.remove(subs[d] as { id: number; pattern: string });
        const left = subs.filter((s) => !gone.has(s.id));
        assert.deepEqual(ids(index.match(t)), ids(left.filter((s) => matchTarget(s.pattern, t))));
      }),
      { numRuns: 2000 },
    );
  });
});
