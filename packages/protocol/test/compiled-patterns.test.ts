import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  compiledAllows,
  compiledRightsWithin,
  compileGrant,
  type Grant,
  grantAllows,
  matchOp,
  matchTarget,
  PatternSet,
  patternCovers,
  type Right,
  rightsWithin,
} from "../src/index.js";

// Small alphabets so that patterns and names collide often; `**` only last, as the grammar requires.
const seg = fc.constantFrom("a", "b", "c", "*");
const nameSeg = fc.constantFrom("a", "b", "c", "*", "**");
const segs = (min: number) =>
  fc.tuple(fc.array(seg, { minLength: min, maxLength: 3 }), fc.boolean()).map(([s, rest]) => (rest ? [...s, "**"] : s));
const opPattern = fc.oneof(
  fc.constant("**"),
  segs(1).map((s) => s.join(".")),
);
const opName = fc.array(nameSeg, { minLength: 1, maxLength: 4 }).map((s) => s.join("."));
const scheme = fc.constantFrom("obj", "topic");
const targetPattern = fc.oneof(
  fc.constant("**"),
  fc.tuple(scheme, segs(0)).map(([sc, s]) => `${sc}://${s.join("/")}`),
);
const targetName = fc.tuple(scheme, fc.array(nameSeg, { maxLength: 4 })).map(([sc, s]) => `${sc}://${s.join("/")}`);
const right: fc.Arbitrary<Right> = fc.record({
  ops: fc.array(opPattern, { maxLength: 3 }),
  targets: fc.array(targetPattern, { maxLength: 3 }),
});
const grant: fc.Arbitrary<Grant> = fc
  .tuple(
    fc.array(right, { maxLength: 3 }),
    fc.array(fc.array(opPattern, { minLength: 1, maxLength: 2 }), { maxLength: 2 }),
    fc.array(fc.array(targetPattern, { minLength: 1, maxLength: 2 }), { maxLength: 2 }),
    // Rights caveats: lists of (op, target) pairs.
    fc.array(fc.array(fc.tuple(opPattern, targetPattern), { minLength: 1, maxLength: 3 }), { maxLength: 2 }),
  )
  .map(([rights, opFilters, targetFilters, pairs]) => ({
    id: "0".repeat(32),
    chain: [],
    subject: "alice",
    rights,
    pairFilters: pairs.map((f) => f.map(([o, x]) => ({ ops: [o], targets: [x] }))),
    opFilters,
    targetFilters,
    limits: {},
    nbf: 0,
    exp: 1,
    maxExp: 1,
    workspaces: undefined,
    domains: undefined,
    usable: true,
  }));

describe("compiled patterns mean what the pattern functions mean", () => {
  it("matches and covers agree with matchOp/matchTarget/patternCovers for every generated set", () => {
    fc.assert(
      fc.property(fc.array(opPattern, { maxLength: 5 }), opName, opPattern, (ps, name, inner) => {
        const set = new PatternSet(ps, "op");
        assert.equal(
          set.matches(name),
          ps.some((p) => matchOp(p, name)),
        );
        assert.equal(
          set.covers(inner),
          ps.some((p) => patternCovers(p, inner, ".")),
        );
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(fc.array(targetPattern, { maxLength: 5 }), targetName, targetPattern, (ps, name, inner) => {
        const set = new PatternSet(ps, "target");
        assert.equal(
          set.matches(name),
          ps.some((p) => matchTarget(p, name)),
        );
        assert.equal(
          set.covers(inner),
          ps.some((p) => patternCovers(p, inner, "/")),
        );
      }),
      { numRuns: 3000 },
    );
  });

  it("a compiled grant allows and contains exactly what the grant does", () => {
    fc.assert(
      fc.property(grant, fc.constantFrom("a.b", "a", "b.c.a", "c.c"), targetName, (g, op, target) => {
        assert.equal(compiledAllows(compileGrant(g), op, target), grantAllows(g, op, target));
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(grant, fc.array(right, { maxLength: 3 }), (g, inner) => {
        assert.equal(compiledRightsWithin(inner, compileGrant(g)), rightsWithin(inner, g));
      }),
      { numRuns: 3000 },
    );
  });
});
