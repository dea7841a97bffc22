import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { matchTarget } from "@kpip/protocol";
import fc from "fast-check";
import { patternSegments, TopicIndex } from "../src/events/topic-index.js";
import { MAX_PATTERN_SEGMENTS } from "../src/limits.js";

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
        // Every node is pruned once the last pattern through it is gone.
        for (const s of left) index.remove(s);
        assert.equal(index.nodes, 0);
        assert.deepEqual(index.match(t), []);
      }),
      { numRuns: 2000 },
    );
  });

  it("holds at most a node per segment of each pattern, and none once they are all removed", () => {
    type Sub = { id: number; pattern: string };
    const index = new TopicIndex<Sub>();
    // One persona tree's 1,024 subscriptions on distinct patterns of the most segments allowed (red-team F3's shape).
    const subs: Sub[] = [];
    for (let id = 0; id < 1024; id++) {
      let pattern = `topic://x/${id}`;
      while (patternSegments(pattern) < MAX_PATTERN_SEGMENTS) pattern += "/a";
      const sub = { id, pattern };
      subs.push(sub);
      index.add(sub);
    }
    assert.ok(index.nodes <= subs.length * (MAX_PATTERN_SEGMENTS + 1), `${index.nodes} nodes`);
    for (const s of subs) index.remove(s);
    assert.equal(index.nodes, 0);
  });

  it("an emit walks at most the segments of the patterns it reaches, whatever the topic's depth", () => {
    type Sub = { id: number; pattern: string };
    const index = new TopicIndex<Sub>();
    // Red-team F4's shape, within the bound: '*' or 'a' in the first 10 segments, then 'a's, then 'zz'.
    for (let id = 0; id < 1024; id++) {
      let pattern = "topic://x";
      for (let b = 0; b < 10; b++) pattern += (id >> b) & 1 ? "/*" : "/a";
      while (patternSegments(pattern) < MAX_PATTERN_SEGMENTS - 1) pattern += "/a";
      index.add({ id, pattern: `${pattern}/zz` });
    }
    index.add({ id: -1, pattern: "topic://x/**" });
    let topic = "topic://x";
    while (topic.length + 2 <= 2048) topic += "/a";
    // Only `**` matches a topic of 1,000 segments; the walk stops past the deepest pattern's depth.
    assert.deepEqual(
      index.match(topic).map((s) => s.id),
      [-1],
    );
    assert.ok(index.steps <= 1 + 1025 * (MAX_PATTERN_SEGMENTS + 1), `${index.steps} nodes walked`);
    assert.equal(patternSegments("topic://x/a/b"), 3);
    assert.equal(patternSegments("kernel://"), 0);
  });
});
