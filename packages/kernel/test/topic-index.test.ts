import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { matchTarget } from "@kpip/protocol";
import fc from "fast-check";
import { patternSegments, patternStars, TopicIndex } from "../src/events/topic-index.js";
import { MAX_PATTERN_SEGMENTS, MAX_PATTERN_STARS } from "../src/limits.js";

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
    // Red-team F4's shape within the bounds: every choice of up to MAX_PATTERN_STARS '*' among the
    // first 12 segments, then 'a's to the most segments allowed, ending in 'zz' (matches no all-'a' topic).
    let id = 0;
    const gen = (segs: string[], stars: number): void => {
      if (segs.length === 12) {
        let pattern = `topic://${segs.join("/")}`;
        while (patternSegments(pattern) < MAX_PATTERN_SEGMENTS - 1) pattern += "/a";
        index.add({ id: id++, pattern: `${pattern}/zz` });
        return;
      }
      gen([...segs, "a"], stars);
      if (stars < MAX_PATTERN_STARS) gen([...segs, "*"], stars + 1);
    };
    gen([], 0);
    index.add({ id: -1, pattern: "topic://**" });
    let topic = "topic://a";
    while (topic.length + 2 <= 2048) topic += "/a";
    // Only `**` matches a topic of 1,000 segments; the walk stops past the deepest pattern's depth.
    assert.deepEqual(
      index.match(topic).map((s) => s.id),
      [-1],
    );
    assert.ok(index.steps <= 1 + (id + 1) * (MAX_PATTERN_SEGMENTS + 1), `${index.steps} nodes walked`);
    // Whatever the number of patterns: at depth d, at most the ways to put up to MAX_PATTERN_STARS '*' among d segments.
    const choose = (n: number, k: number): number => (k === 0 ? 1 : (choose(n - 1, k - 1) * n) / k);
    let bound = 0;
    for (let d = 0; d <= MAX_PATTERN_SEGMENTS + 1; d++)
      for (let k = 0; k <= Math.min(MAX_PATTERN_STARS, d); k++) bound += choose(d, k);
    assert.ok(index.steps <= bound, `${index.steps} nodes walked, bound ${bound}`);
    assert.equal(patternSegments("topic://x/a/b"), 3);
    assert.equal(patternSegments("kernel://"), 0);
    assert.equal(patternStars("topic://*/a/*/**"), 2);
  });
});
