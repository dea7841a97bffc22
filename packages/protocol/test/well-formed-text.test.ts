import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { wellFormed } from "../src/cbor/encode.js";
import { CborError, encodeCanonical } from "../src/index.js";

/** Strings of code units drawn to make lone and paired surrogates common. */
const units = fc.string({
  unit: fc.constantFrom("a", "é", "\ud800", "\udc00", "\ud83d", "\ude42", "🙂", "日"),
  maxLength: 200,
});

describe("well-formed text (the intent's writer refuses a lone surrogate)", () => {
  it("wellFormed agrees with the lone-surrogate rule at any length, and the writer refuses exactly those texts", () => {
    fc.assert(
      fc.property(units, (s) => {
        const lone = /[\uD800-\uDFFF]/u.test(s);
        assert.equal(wellFormed(s), !lone, JSON.stringify(s));
        if (lone)
          assert.throws(
            () => encodeCanonical({ t: s }, { wellFormedText: true }),
            (e) => e instanceof CborError,
          );
        else assert.deepEqual(encodeCanonical({ t: s }, { wellFormedText: true }), encodeCanonical({ t: s }));
      }),
      { numRuns: 1000 },
    );
  });

  it("uses String.prototype.isWellFormed where Node has it (no regex scan per text)", {
    skip: typeof (String.prototype as { isWellFormed?: unknown }).isWellFormed !== "function" && "no isWellFormed",
  }, () => {
    const proto = String.prototype as unknown as { isWellFormed(this: string): boolean };
    const native = proto.isWellFormed;
    let calls = 0;
    proto.isWellFormed = function (this: string) {
      calls++;
      return native.call(this);
    };
    try {
      encodeCanonical({ t: "x".repeat(100), u: "é".repeat(60) }, { wellFormedText: true });
    } finally {
      proto.isWellFormed = native;
    }
    assert.equal(calls, 2);
  });
});
