import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { CborError, decodeCanonical, encodeCanonical } from "../src/index.js";
import { anyCodePoint } from "./any-code-point.js";

const hex = (v: Parameters<typeof encodeCanonical>[0]) => encodeCanonical(v).toString("hex");
const dec = (h: string) => decodeCanonical(Buffer.from(h, "hex"));
const code = (h: string) => {
  try {
    dec(h);
  } catch (e) {
    assert.ok(e instanceof CborError, `expected CborError, got ${e}`);
    return (e as CborError).code;
  }
  return "OK";
};

describe("canonical CBOR encoding (RFC 8949 §4.2.1)", () => {
  it("map keys are the same bytes whether written fresh or from the encoder's key cache, in any insertion order", () => {
    const keys = ["id", "é", "caps", "z".repeat(23), "y".repeat(24), "intent", "context", "persona", "version", "日本"];
    const expected = Buffer.concat(
      [...keys]
        .map((k) => Buffer.from(k, "utf8"))
        .sort((a, b) => a.length - b.length || Buffer.compare(a, b))
        .map((k) => Buffer.concat([Buffer.from(k.length < 24 ? [0x60 | k.length] : [0x78, k.length]), k, Buffer.from([0x01])])),
    );
    const withHead = Buffer.concat([Buffer.from([0xa0 | keys.length]), expected]).toString("hex");
    for (let round = 0; round < 3; round++) {
      const order = round === 1 ? [...keys].reverse() : keys;
      assert.equal(encodeCanonical(Object.fromEntries(order.map((k) => [k, 1]))).toString("hex"), withHead, `round ${round}`);
    }
  });

  it("writes integers in the shortest head", () => {
    const cases: [number | bigint, string][] = [
      [0, "00"],
      [23, "17"],
      [24, "1818"],
      [255, "18ff"],
      [256, "190100"],
      [65535, "19ffff"],
      [65536, "1a00010000"],
      [2 ** 32 - 1, "1affffffff"],
      [2 ** 32, "1b0000000100000000"],
      [2 ** 53 - 1, "1b001fffffffffffff"],
      [-1, "20"],
      [-24, "37"],
      [-25, "3818"],
      [-256, "38ff"],
      [-257, "390100"],
      [-(2 ** 32) - 1, "3b0000000100000000"],
      [2n ** 64n - 1n, "1bffffffffffffffff"],
      [-(2n ** 64n), "3bffffffffffffffff"],
      [5n, "05"],
    ];
    for (const [v, h] of cases) assert.equal(hex(v), h, String(v));
  });

  it("sorts map keys by encoded length, then bytewise", () => {
    assert.equal(hex({ b: 1, a: 2, aa: 3 }), "a361610261620162616103");
    // "é" is 2 bytes in UTF-8, so it sorts after every 1-byte key and before 3-byte ones
    assert.equal(hex({ abc: 1, é: 2, z: 3 }), "a3617a0362c3a9026361626301");
  });

  it("encodes text, bytes, arrays, booleans and null", () => {
    assert.equal(hex("héllo"), "6668c3a96c6c6f");
    assert.equal(hex(new Uint8Array([1, 2, 3])), "43010203");
    assert.equal(hex([1, [2, {}]]), "82018202a0");
    assert.equal(hex([true, false, null]), "83f5f4f6");
    assert.equal(hex("a".repeat(24)).slice(0, 4), "7818");
  });

  it("refuses values outside the data model", () => {
    for (const v of [0.5, Number.NaN, 2 ** 53, 2n ** 64n, -(2n ** 64n) - 1n, new Date(0), new Map(), () => 1, Symbol("s")]) {
      assert.throws(
        () => encodeCanonical(v as never),
        (e: unknown) => e instanceof CborError && e.code === "UNSUPPORTED_TYPE",
        String(v),
      );
    }
  });

  it("refuses to build nesting a decoder must refuse", () => {
    let v: unknown = 1;
    for (let i = 0; i < 40; i++) v = [v];
    assert.throws(
      () => encodeCanonical(v as never),
      (e: unknown) => e instanceof CborError && e.code === "TOO_DEEP",
    );
  });
});

describe("canonical CBOR decoding", () => {
  it("round-trips integers across the head boundaries, as numbers when safe", () => {
    assert.equal(dec("1b0000000100000000"), 2 ** 32);
    assert.equal(dec("1bffffffffffffffff"), 2n ** 64n - 1n);
    assert.equal(dec("3bffffffffffffffff"), -(2n ** 64n));
    assert.ok(dec("43010203") instanceof Uint8Array);
  });

  it("names every broken rule", () => {
    const cases: [string, string][] = [
      ["1817", "NON_CANONICAL"],
      ["1900ff", "NON_CANONICAL"],
      ["1a0000ffff", "NON_CANONICAL"],
      ["1b00000000ffffffff", "NON_CANONICAL"],
      ["a2616201616101", "UNSORTED_KEYS"],
      ["a2616101616101", "DUPLICATE_KEY"],
      ["9f01ff", "INDEFINITE_LENGTH"],
      ["5f4101ff", "INDEFINITE_LENGTH"],
      ["f93c00", "UNSUPPORTED_TYPE"],
      ["fa3f800000", "UNSUPPORTED_TYPE"],
      ["fb3fe0000000000000", "UNSUPPORTED_TYPE"],
      ["f7", "UNSUPPORTED_TYPE"],
      ["f0", "UNSUPPORTED_TYPE"],
      ["c101", "UNSUPPORTED_TAG"],
      ["d9d9f700", "UNSUPPORTED_TAG"],
      ["a10101", "BAD_KEY"],
      ["a1695f5f70726f746f5f5f01", "BAD_KEY"],
      ["62c328", "INVALID_UTF8"],
      ["62c0af", "INVALID_UTF8"],
      ["63eda080", "INVALID_UTF8"],
      ["1c", "MALFORMED"],
      ["ff", "MALFORMED"],
      ["8201", "TRUNCATED"],
      ["43010203ff", "TRAILING_BYTES"],
      ["9bffffffffffffffff", "TRUNCATED"],
      ["5a7fffffff", "TRUNCATED"],
      ["bbffffffffffffffff", "TRUNCATED"],
      ["", "TRUNCATED"],
    ];
    for (const [h, c] of cases) assert.equal(code(h), c, h);
  });

  it("allows nesting to depth 32 and refuses 33", () => {
    assert.equal(code(`${"81".repeat(32)}01`), "OK");
    assert.equal(code(`${"81".repeat(33)}01`), "TOO_DEEP");
  });

  it("bounds the number of items", () => {
    const many = Buffer.concat([Buffer.from("9a00030d41", "hex"), Buffer.alloc(200_001, 0)]);
    assert.throws(
      () => decodeCanonical(many),
      (e: unknown) => e instanceof CborError && e.code === "TOO_MANY_ITEMS",
    );
  });
});

describe("text strings: the encoder's paths against their definition", () => {
  /** The definition: the shortest head for the UTF-8 length, then the UTF-8 bytes. */
  const textDef = (s: string): Buffer => {
    const b = Buffer.from(s, "utf8");
    const n = b.length;
    const head =
      n < 24
        ? Buffer.from([0x60 | n])
        : n < 0x100
          ? Buffer.from([0x78, n])
          : n < 0x10000
            ? Buffer.from([0x79, n >> 8, n & 0xff])
            : Buffer.from([0x7a, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
    return Buffer.concat([head, b]);
  };

  it("ASCII, non-ASCII and lone surrogates at every head boundary, alone and after other items", () => {
    const units = ["a", "é", "日", "🙂", "\ud800", "\u0000"];
    for (const u of units)
      for (const len of [1, 7, 8, 12, 23, 24, 48, 49, 85, 86, 127, 128, 255, 256, 4096, 4097, 21_845, 21_846, 65_535, 65_536])
        for (const mix of [u, `a${u}`]) {
          const s = mix.repeat(Math.ceil(len / mix.length)).slice(0, len);
          assert.deepEqual(encodeCanonical(s), textDef(s), `${JSON.stringify(u)} × ${len}`);
          // After other bytes in the writer (not at position 0), inside an array.
          assert.deepEqual(encodeCanonical([1, s]), Buffer.concat([Buffer.from([0x82, 0x01]), textDef(s)]));
        }
  });

  it("any generated string encodes to its definition", () => {
    fc.assert(
      fc.property(fc.string({ unit: anyCodePoint, maxLength: 6000 }), (s) => {
        assert.deepEqual(encodeCanonical({ k: s }), Buffer.concat([Buffer.from([0xa1, 0x61, 0x6b]), textDef(s)]));
      }),
      { numRuns: 500 },
    );
  });
});
