import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { HEAVY_QUEUED_BYTES, UnreadTotals } from "../src/kernel/unread-totals.js";

const H = HEAVY_QUEUED_BYTES;

/** A step: a send or a drain leaves `bytes` queued to session `s` (attested or not yet), or `s` closes. */
type Step = { kind: "queued"; s: number; bytes: number; attested: boolean } | { kind: "closed"; s: number };

const SESSIONS = 12;
/** Each session's persona tree (once attested): a few trees, several sessions each. */
const treeOf = (s: number) => `tree${s % 3}`;

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant("queued" as const),
      s: fc.nat(SESSIONS - 1),
      // Around the heavy mark (counted from it, not below), nothing at all, and large.
      bytes: fc.oneof(fc.constant(0), fc.integer({ min: H - 2, max: H + 2 }), fc.nat(8 * H), fc.nat(64 << 20)),
      attested: fc.boolean(),
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ kind: fc.constant("closed" as const), s: fc.nat(SESSIONS - 1) }), weight: 1 },
);

describe("UnreadTotals: running totals of bytes queued unread", () => {
  it("equal the sum recomputed over the heavy sessions, per tree and in all, after any sequence of sends, drains and closes", () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 200 }), (steps) => {
        const totals = new UnreadTotals<number>();
        // The model: what each open session has queued now, and whether it attested.
        const model = new Map<number, { bytes: number; attested: boolean }>();
        for (const st of steps) {
          if (st.kind === "closed") {
            model.delete(st.s);
            totals.remove(st.s);
          } else {
            // A session attests once; it is never un-attested.
            const attested = st.attested || model.get(st.s)?.attested === true;
            model.set(st.s, { bytes: st.bytes, attested });
            totals.set(st.s, st.bytes, attested ? treeOf(st.s) : undefined);
          }
          const heavy = [...model].filter(([, m]) => m.bytes >= H);
          assert.equal(
            totals.kernel,
            heavy.reduce((n, [, m]) => n + m.bytes, 0),
          );
          assert.equal(totals.size, heavy.length);
          for (let t = 0; t < 3; t++) {
            const tree = `tree${t}`;
            const sum = heavy.filter(([s, m]) => m.attested && treeOf(s) === tree).reduce((n, [, m]) => n + m.bytes, 0);
            assert.equal(totals.tree(tree), sum, tree);
          }
        }
        // Every session closed: nothing is left counted anywhere.
        for (const s of model.keys()) totals.remove(s);
        assert.equal(totals.kernel, 0);
        for (let t = 0; t < 3; t++) assert.equal(totals.tree(`tree${t}`), 0);
      }),
      { numRuns: 300 },
    );
  });
});
