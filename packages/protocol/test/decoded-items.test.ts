import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CborError, decodeCanonical, encodeCanonical, lastDecodedItems } from "../src/index.js";

/* lastDecodedItems: what the last decode cost, which the kernel charges a refused request's persona tree. */

describe("lastDecodedItems", () => {
  it("counts the items the last decode read, whether it succeeded or failed", () => {
    decodeCanonical(encodeCanonical([1, [2, 3], { a: 4 }]));
    assert.equal(lastDecodedItems(), 8, "outer array, 1, inner array, 2, 3, map, key, value");
    // Truncated in its third element's head: the array, two elements, and the third as it began.
    const cut = encodeCanonical([1, 2, 300]).subarray(0, 4);
    assert.throws(() => decodeCanonical(cut), CborError);
    assert.equal(lastDecodedItems(), 4);
  });

  it("a decode that fails before reading anything (input that is not bytes) reports 0, not the previous decode's count", () => {
    decodeCanonical(encodeCanonical(Array.from({ length: 1000 }, (_, i) => i)));
    assert.equal(lastDecodedItems(), 1001);
    assert.throws(() => decodeCanonical(undefined as unknown as Uint8Array), TypeError);
    assert.equal(lastDecodedItems(), 0, "the stale 1001 would be charged to the next reader's request");
  });
});
