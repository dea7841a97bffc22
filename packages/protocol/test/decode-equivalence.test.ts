import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { mutate, prng, SEED_MESSAGES } from "../fuzz/engine.js";
import {
  CborError,
  type CborValue,
  CodecError,
  DEFAULT_LIMITS,
  type DecodeLimits,
  decodeCanonical,
  decodeIntent,
  decodeMessage,
  encodeCanonical,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  HEADER_SIZE,
  IntentError,
  type Message,
  messageTypeName,
  validateIntent,
  validateMessage,
} from "../src/index.js";
import { anyCodePoint } from "./any-code-point.js";
import { MUTATIONS, mutateCbor } from "./cbor-mutations.js";
import { decodeCanonicalReference } from "./reference.js";

/**
 * The single-pass decoder (cbor/decode.ts) against the two-pass path it replaced
 * (cbor/reference.ts: validate.ts, then cbor-x): same verdict, same value (type for type,
 * Buffer for Buffer), same error class, code and message, for canonical values, arbitrary
 * bytes and every kind of broken encoding.
 */

type Verdict = { ok: true; value: unknown } | { ok: false; error: string; errorClass: string; code: string; message: string };

function verdict(f: () => unknown): Verdict {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (!(e instanceof CodecError)) throw e;
    return { ok: false, error: e.constructor.name, errorClass: e.errorClass, code: e.code, message: e.message };
  }
}

/** Both decoders on the same bytes: same verdict, value and error. Returns the verdict. */
function agree(b: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): Verdict {
  const fast = verdict(() => decodeCanonical(b, limits));
  const ref = verdict(() => decodeCanonicalReference(b, limits));
  assert.deepStrictEqual(fast, ref, `input ${Buffer.from(b).toString("hex").slice(0, 400)}`);
  return fast;
}

/** decodeMessage as it was: the reference decoder, then the same message check. */
function referenceMessage(frame: { type: number; body: Uint8Array }): Message {
  const type = messageTypeName(frame.type) as Message["type"];
  const body = decodeCanonicalReference(frame.body);
  validateMessage(type, body);
  return { type, body } as Message;
}

/** decodeIntent as it was. */
function referenceIntent(bytes: Uint8Array) {
  let v: CborValue;
  try {
    v = decodeCanonicalReference(bytes);
  } catch (e) {
    if (e instanceof CborError) throw new IntentError(e.code, `intent is not canonical CBOR: ${e.message}`);
    throw e;
  }
  validateIntent(v);
  return v;
}

const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ maxLength: 40, unit: "grapheme" }),
  fc.string({ maxLength: 80, unit: anyCodePoint }),
  fc.constantFrom("\uFEFF", "\uFEFFbom", "a\u0000b", "é", "日本語", "😀", "x".repeat(33), "version", "persona", "id"),
);
const integer = fc.oneof(
  fc.integer(),
  fc.constantFrom(23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, -(2 ** 53) + 1, -(2 ** 32), -(2 ** 32) - 1),
  fc.constantFrom(2n ** 53n, -(2n ** 53n), 2n ** 64n - 1n, -(2n ** 64n), 2n ** 63n),
  fc
    .bigInt({ min: -(2n ** 64n), max: 2n ** 64n - 1n })
    .map((b) => (b >= -(2n ** 53n) + 1n && b <= 2n ** 53n - 1n ? Number(b) : b)),
);
const key = text.filter((k) => k !== "__proto__");
const value: fc.Arbitrary<CborValue> = fc.letrec<{ v: CborValue }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    integer,
    text,
    fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
    fc.constantFrom(true, false, null),
    fc.array(tie("v"), { maxLength: 5 }),
    fc.dictionary(key, tie("v"), { maxKeys: 5 }),
  ),
})).v;
const limits: fc.Arbitrary<DecodeLimits> = fc.oneof(
  fc.constant(DEFAULT_LIMITS),
  fc.record({ maxDepth: fc.integer({ min: 0, max: 8 }), maxItems: fc.integer({ min: 1, max: 64 }) }),
);
const fraction = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });

describe("the single-pass decoder against the two-pass reference", () => {
  it("decodes every canonical value to the same value (deepStrictEqual: Buffers, bigints, prototypes)", () => {
    fc.assert(
      fc.property(value, limits, (v, l) => {
        const b = encodeCanonical(v);
        agree(b, l);
        // from a plain Uint8Array too: byte strings are then Uint8Array views
        agree(new Uint8Array(b), l);
      }),
      { numRuns: 1500 },
    );
  });

  it("gives the same verdict on arbitrary bytes", () => {
    const cborish = fc
      .array(
        fc.oneof(
          fc.integer({ min: 0, max: 255 }),
          fc.constantFrom(0x18, 0x19, 0x1a, 0x1b, 0x1f, 0x5f, 0x7f, 0x9f, 0xbf, 0xff, 0xf4, 0xf5, 0xf6, 0xf7, 0xa1, 0x81, 0x61),
        ),
        { maxLength: 48 },
      )
      .map((a) => Buffer.from(a));
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), cborish), limits, (b, l) => {
        agree(b, l);
      }),
      { numRuns: 5000 },
    );
  });

  it("gives the same verdict on every targeted break of a canonical encoding", () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(
        value,
        fc.array(fc.tuple(fc.constantFrom(...MUTATIONS), fraction, fraction), { minLength: 1, maxLength: 3 }),
        limits,
        (v, ms, l) => {
          let b: Uint8Array = encodeCanonical(v);
          for (const [m, p1, p2] of ms) b = mutateCbor(b, m, p1, p2);
          const r = agree(b, l);
          const k = r.ok ? "OK" : r.code;
          seen.set(k, (seen.get(k) ?? 0) + 1);
        },
      ),
      { numRuns: 3000 },
    );
    // The mutations reach every rule (so the agreement above is about errors, not only successes).
    for (const code of [
      "OK",
      "NON_CANONICAL",
      "TRUNCATED",
      "TRAILING_BYTES",
      "INDEFINITE_LENGTH",
      "UNSORTED_KEYS",
      "DUPLICATE_KEY",
      "BAD_KEY",
      "INVALID_UTF8",
      "TOO_DEEP",
      "TOO_MANY_ITEMS",
    ]) {
      assert.ok((seen.get(code) ?? 0) > 0, `no mutation ended in ${code}: ${JSON.stringify([...seen])}`);
    }
  });

  it("decodes messages and intents of mutated frames exactly as before", () => {
    const intent = encodeIntent({
      op: "storage.write",
      target: "obj://ws1/a/b",
      args: { data: new Uint8Array(9), n: 2n ** 60n },
    });
    const seeds: Message[] = [
      ...SEED_MESSAGES,
      // an intent whose integer needs a bigint, inside a REQUEST
      {
        type: "REQUEST",
        body: { version: 1, persona: "alice", id: 7, intent, context: { persona: "alice" }, caps: [1, Buffer.from([9])] },
      },
    ];
    const frames = seeds.map((m, i) => encodeMessage(m, i));
    fc.assert(
      fc.property(fc.nat(seeds.length - 1), fc.nat(), fc.constantFrom(...MUTATIONS), fraction, fraction, (i, seed, m, p1, p2) => {
        const frame = frames[i] as Buffer;
        // a byte-level mutation of the whole frame, or a targeted one of its body
        const bytes =
          seed % 2 === 0
            ? mutate(frame, prng(seed))
            : (() => {
                const body = mutateCbor(frame.subarray(HEADER_SIZE), m, p1, p2);
                const h = Buffer.from(frame.subarray(0, HEADER_SIZE));
                h.writeUInt32BE(body.length, 12);
                return Buffer.concat([h, body]);
              })();
        let got: ReturnType<FrameDecoder["push"]>;
        try {
          got = new FrameDecoder(1 << 20).push(bytes);
        } catch {
          return; // framing is not the decoder's concern
        }
        for (const f of got) {
          const fast = verdict(() => decodeMessage(f));
          assert.deepStrictEqual(
            fast,
            verdict(() => referenceMessage(f)),
          );
          if (fast.ok && (fast.value as Message).type === "REQUEST") {
            const ib = (fast.value as Extract<Message, { type: "REQUEST" }>).body.intent;
            assert.deepStrictEqual(
              verdict(() => decodeIntent(ib)),
              verdict(() => referenceIntent(ib)),
            );
          }
        }
        // the body bytes as intent bytes, too
        const raw = bytes.subarray(HEADER_SIZE);
        assert.deepStrictEqual(
          verdict(() => decodeIntent(raw)),
          verdict(() => referenceIntent(raw)),
        );
      }),
      { numRuns: 3000 },
    );
  });

  it("agrees at the edges: BOM, wide integers, __proto__, huge lengths, limits exactly met", () => {
    const cases = [
      "63efbbbf", // a text string that is only a BOM: kept, not stripped
      "64efbbbf61",
      "1b001fffffffffffff", // 2^53-1: a number
      "1b0020000000000000", // 2^53: a bigint
      "3b001ffffffffffffe", // -(2^53-1): a number
      "3b001fffffffffffff", // -2^53: a bigint
      "1bffffffffffffffff",
      "3bffffffffffffffff",
      "a1695f5f70726f746f5f5f01", // {"__proto__": 1}
      "a2616101695f5f70726f746f5f5f01",
      "a1626964a1695f5f70726f746f5f5f01", // nested
      "9bffffffffffffffff",
      "bbffffffffffffffff",
      "7bffffffffffffffff",
      "5b0000000100000000",
      "db0000000100000000", // a tag with an 8-byte head
      "a17b000000010000000061",
      "9a7fffffff",
      "ba7fffffff",
      "f818",
      "f8ff",
      "fc",
      "a0",
      "80",
      "40",
      "60",
    ];
    for (const h of cases) agree(Buffer.from(h, "hex"));
    for (const depth of [0, 1, 2, 31, 32, 33]) {
      agree(Buffer.from(`${"81".repeat(depth)}01`, "hex"));
      agree(Buffer.from(`${"a16161".repeat(depth)}01`, "hex"));
    }
    // item limits: exactly at and one past, in arrays and maps (a key and a value are two items)
    for (const maxItems of [1, 2, 3, 4, 5]) {
      for (const h of ["820102", "a1616101", "a2616101616202", "8301a0a16161f6"])
        agree(Buffer.from(h, "hex"), { maxDepth: 4, maxItems });
    }
    const r = agree(Buffer.from("63efbbbf", "hex"));
    assert.deepEqual(r, { ok: true, value: "\uFEFF" });
    const proto = agree(Buffer.from("a1695f5f70726f746f5f5f01", "hex"));
    assert.equal(proto.ok ? "accepted" : proto.code, "BAD_KEY");
  });

  it("refuses a huge declared array or map before allocating for it, as the reference does", () => {
    // 2^31-1 elements declared, 1 MiB present: TRUNCATED either way, and the verdict is immediate.
    const big = Buffer.concat([Buffer.from("9a7fffffff", "hex"), Buffer.alloc(1 << 20)]);
    assert.equal((agree(big) as { code: string }).code, "TRUNCATED");
    // 1 MiB of empty arrays, each an item: the item limit stops it, with nothing sized from the head.
    const many = Buffer.concat([Buffer.from("9a00100000", "hex"), Buffer.alloc(1 << 20, 0x80)]);
    assert.equal((agree(many) as { code: string }).code, "TOO_MANY_ITEMS");
  });
});
