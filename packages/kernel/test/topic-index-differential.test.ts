import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { TopicIndex } from "../src/events/topic-index.js";

/**
 * The subscription index against the spec's meaning of a pattern (PROTOCOL §13.1, §9.6), written
 * from the spec alone: `*` one segment, `**` zero or more as the last segment only (anywhere
 * else the pattern matches nothing), the scheme exactly. The index must deliver a topic to every
 * subscription whose pattern matches it and to no other, however deep the topic.
 */
function specMatches(pattern: string, topic: string): boolean {
  const [ps, prest] = pattern.split("://") as [string, string];
  const [ts, trest] = topic.split("://") as [string, string];
  if (ps !== ts) return false;
  const p = prest === "" ? [] : prest.split("/");
  const t = trest === "" ? [] : trest.split("/");
  if (p.some((s, i) => s === "**" && i !== p.length - 1)) return false;
  const tail = p.at(-1) === "**";
  const fixed = tail ? p.length - 1 : p.length;
  if (tail ? t.length < fixed : t.length !== fixed) return false;
  return p.slice(0, fixed).every((s, i) => s === "*" || s === t[i]);
}

// PATTERN_HUNT=<runs> runs unseeded, for a longer hunt by hand.
const RUNS = process.env.PATTERN_HUNT ? { numRuns: Number(process.env.PATTERN_HUNT) } : { seed: 430, numRuns: 150 };
const lit = fc.constantFrom("a", "b", "ab", "kernel", "a.b", "-");
const seg = fc.oneof({ weight: 5, arbitrary: lit }, { weight: 3, arbitrary: fc.constantFrom("*", "**") });
const scheme = fc.constantFrom("topic", "obj", "kernel");
const deep = (n: number) => fc.array(lit, { minLength: n, maxLength: n + 3 });
const pattern = fc
  .oneof(
    { weight: 8, arbitrary: fc.tuple(scheme, fc.array(seg, { maxLength: 5 })) },
    // Deep patterns: the 32-segment bound's edge, with and without a trailing `**`.
    {
      weight: 1,
      arbitrary: fc.tuple(
        scheme,
        deep(30).map((s) => [...s, "**"]),
      ),
    },
    { weight: 1, arbitrary: fc.tuple(scheme, deep(30)) },
  )
  .map(([s, segs]) => ({ pattern: `${s}://${segs.join("/")}` }));
const topic = fc
  .oneof(
    { weight: 8, arbitrary: fc.tuple(scheme, fc.array(lit, { maxLength: 6 })) },
    { weight: 1, arbitrary: fc.tuple(scheme, deep(30)) },
  )
  .map(([s, segs]) => `${s}://${segs.join("/")}`);

describe("the subscription index against the spec's matching", () => {
  it("delivers a topic to exactly the subscriptions whose pattern matches it, before and after removals", () => {
    fc.assert(
      fc.property(
        fc.array(pattern, { maxLength: 12 }),
        fc.array(fc.boolean(), { maxLength: 12 }),
        fc.array(topic, { minLength: 1, maxLength: 6 }),
        (subs, drop, topics) => {
          const ix = new TopicIndex<{ pattern: string }>();
          for (const s of subs) ix.add(s);
          const check = (held: { pattern: string }[]) => {
            for (const t of topics) {
              const got = new Set(ix.match(t));
              for (const s of held) assert.equal(got.has(s), specMatches(s.pattern, t), `${s.pattern} on ${t}`);
              assert.equal(got.size, held.filter((s) => specMatches(s.pattern, t)).length, `only held subscriptions for ${t}`);
            }
          };
          check(subs);
          const kept: { pattern: string }[] = [];
          for (const [i, s] of subs.entries()) {
            if (drop[i]) ix.remove(s);
            else kept.push(s);
          }
          check(kept);
          for (const s of kept) ix.remove(s);
          assert.equal(ix.nodes, 0, "an emptied index holds no nodes");
        },
      ),
      RUNS,
    );
  });
});
