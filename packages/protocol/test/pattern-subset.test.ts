import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { matchTarget, patternCovers } from "../src/index.js";

/**
 * A request target may be a pattern (an event subscription). It must be allowed only when every
 * concrete target it can match is allowed by the grant: the subset test, never a literal match.
 */
const SEGS = ["a", "b", "*", "**"];
const grantPattern = fc
  .array(fc.constantFrom(...SEGS), { minLength: 1, maxLength: 4 })
  .filter((s) => s.every((x, i) => x !== "**" || i === s.length - 1))
  .map((s) => `topic://${s.join("/")}`);
const requestPattern = grantPattern;

/** Every concrete target of up to `depth` segments over {a, b, c} ("c" appears in no pattern). */
function concrete(depth: number): string[] {
  const out: string[] = [];
  const walk = (prefix: string[]) => {
    if (prefix.length > 0) out.push(`topic://${prefix.join("/")}`);
    if (prefix.length === depth) return;
    for (const x of ["a", "b", "c"]) walk([...prefix, x]);
  };
  walk([]);
  return out;
}
const TARGETS = concrete(6);

describe("target patterns inside patterns", () => {
  it("a request pattern is allowed only if every concrete target it can match is allowed", () => {
    fc.assert(
      fc.property(grantPattern, requestPattern, (grant, request) => {
        const allowed = matchTarget(grant, request);
        const matched = TARGETS.filter((t) => matchTarget(request, t));
        const everyAllowed = matched.every((t) => matchTarget(grant, t));
        if (allowed)
          assert.ok(everyAllowed, `grant ${grant} allowed request ${request}, which matches a target it does not allow`);
        // A pattern with no wildcard is a concrete target: there the answer is exact.
        if (!request.includes("*")) assert.equal(allowed, everyAllowed, `grant ${grant}, target ${request}`);
      }),
      { numRuns: 2000 },
    );
  });

  it("a one-segment '*' in a grant never covers a literal '**' in a request", () => {
    assert.equal(matchTarget("topic://shared/*", "topic://shared/**"), false);
    assert.equal(matchTarget("topic://*", "topic://**"), false);
    assert.equal(matchTarget("topic://shared/**", "topic://shared/*"), true);
    assert.equal(matchTarget("topic://shared/*", "topic://shared/*"), true);
    assert.equal(matchTarget("topic://shared/x", "topic://shared/*"), false);
    assert.equal(patternCovers("topic://a/**", "topic://a/**", "/"), true);
  });
});
