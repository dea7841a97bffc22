import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type DetailValue, detailJson, sortedKeys } from "../src/audit/detail.js";

// The detail column is hashed into the chain: its bytes must not change with how its keys are sorted.

/** The definition the insertion sort replaced. */
function definition(v: DetailValue | undefined): DetailValue | undefined {
  if (Array.isArray(v)) return v.map((x) => definition(x) ?? null);
  if (v === null || typeof v !== "object") return v;
  const out: { [k: string]: DetailValue } = {};
  for (const k of Object.keys(v).sort()) {
    const x = definition(v[k]);
    if (x !== undefined) out[k] = x;
  }
  return out;
}

const key = fc.oneof(
  fc.string({ maxLength: 6 }),
  fc.constantFrom("status", "object", "generation", "é", "Z", "a", "aa", "\u{1f600}", "10", "9"),
);
const detail = fc.letrec<{ v: DetailValue; o: { [k: string]: DetailValue | undefined } }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small" },
    fc.string({ maxLength: 8 }),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("v"), { maxLength: 4 }),
    tie("o"),
  ),
  o: fc.dictionary(key, fc.option(tie("v"), { nil: undefined }), { maxKeys: 40 }),
}));

describe("the audit detail column", () => {
  it("sorts keys in place exactly as Array.prototype.sort does (property)", () => {
    fc.assert(
      fc.property(detail.o, (o) => {
        assert.equal(detailJson(o), JSON.stringify(definition(o)));
        assert.deepEqual(sortedKeys(o), Object.keys(o).sort());
      }),
      { numRuns: 500 },
    );
  });

  it("keeps a key named __proto__ (a name a peer chose, as JSON.parse makes it): an assignment would set the prototype and drop it from the record", () => {
    const named = JSON.parse('{"z":1,"__proto__":{"b":2,"a":1},"a":3}') as { [k: string]: DetailValue };
    assert.equal(detailJson({ removed: named }), '{"removed":{"__proto__":{"a":1,"b":2},"a":3,"z":1}}');
  });
});
