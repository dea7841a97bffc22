import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { compareKeys, sortKeys } from "../src/cbor/encode.js";
import { decodeCanonical, encodeCanonical } from "../src/index.js";

describe("canonical map keys sorted in place", () => {
  it("sortKeys orders any keys exactly as Array.prototype.sort with compareKeys (few keys and many)", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ unit: "grapheme", maxLength: 6 }), { maxLength: 24 }), (keys) => {
        const expected = [...keys].sort(compareKeys);
        const got = [...keys];
        sortKeys(got);
        assert.deepEqual(got, expected);
      }),
      { numRuns: 2000 },
    );
  });

  it("a map encodes to the same canonical bytes whatever order its keys were built in", () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ maxLength: 5 }), fc.integer(), { maxKeys: 20, noNullPrototype: true }), (m) => {
        const reversed = Object.fromEntries(Object.entries(m).reverse());
        const bytes = encodeCanonical(m);
        assert.deepEqual(encodeCanonical(reversed), bytes);
        // decodeCanonical refuses keys out of canonical order: the bytes are canonical.
        assert.deepEqual(decodeCanonical(bytes), Object.fromEntries(Object.entries(m)));
      }),
      { numRuns: 1000 },
    );
  });
});
