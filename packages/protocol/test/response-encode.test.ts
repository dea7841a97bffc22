import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { encodeFrame, encodeFramePieces } from "../src/frame/encoder.js";
import { type CborValue, encodeMessagePieces, type Message, MessageType } from "../src/index.js";

const TYPE = MessageType.RESPONSE;
const generic = (body: unknown, stream = 3) => encodeFrame({ type: TYPE, stream }, body as CborValue);
const fast = (body: unknown) => Buffer.concat(encodeFramePieces({ type: TYPE, stream: 3 }, body as CborValue, 1 << 30, true));

const payload: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(undefined),
  fc.record({ ok: fc.boolean() }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.integer(), fc.string(), fc.uint8Array({ maxLength: 40 })), {
    maxKeys: 6,
    noNullPrototype: true,
  }),
  fc.array(fc.integer(), { maxLength: 5 }),
);
const text = fc.oneof(fc.constant(undefined), fc.string({ unit: "grapheme", maxLength: 60 }), fc.string({ maxLength: 300 }));

describe("RESPONSE bodies on the encoder's fast path", () => {
  it("give exactly the generic canonical bytes for any response, whatever order its fields were built in", () => {
    fc.assert(
      fc.property(
        fc.record({
          version: fc.nat(),
          id: fc.oneof(fc.nat(), fc.constant(2 ** 32), fc.constant(Number.MAX_SAFE_INTEGER)),
          status: fc.constantFrom("SUCCESS", "FAILURE", "PARTIAL", "DEFERRED", "é"),
          error: fc.option(fc.constantFrom("AUTH", "CAPABILITY", "RESOURCE"), { nil: undefined }),
          message: text,
          payload,
        }),
        fc.boolean(),
        (r, reversed) => {
          const entries = Object.entries(r);
          const body = Object.fromEntries(reversed ? entries.reverse() : entries);
          assert.deepEqual(fast(body), generic(body));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("leave anything else to the generic path: extra fields, fractions, negatives, bigints, non-text, null prototypes", () => {
    const odd: unknown[] = [
      { version: 1, id: 1, status: "SUCCESS", extra: 1 },
      { version: 1, id: 1.5, status: "SUCCESS" },
      { version: -1, id: 1, status: "SUCCESS" },
      { version: 1, id: 5n, status: "SUCCESS" },
      { version: 1, id: 1, status: 7 },
      { version: 1, id: 1, status: "FAILURE", error: 3 },
      { version: 1, id: 1, status: "SUCCESS", message: null },
      Object.assign(Object.create(null), { version: 1, id: 1, status: "SUCCESS" }),
    ];
    for (const body of odd) {
      let want: Buffer | Error;
      try {
        want = generic(body);
      } catch (e) {
        want = e as Error;
      }
      if (want instanceof Error) assert.throws(() => fast(body), { name: want.name, message: want.message });
      else
        assert.deepEqual(
          fast(body),
          want,
          JSON.stringify(body, (_k, v) => (typeof v === "bigint" ? `${v}n` : v)),
        );
    }
  });

  it("a large byte string in a payload is still referenced, not copied", () => {
    const data = new Uint8Array(100_000).fill(7);
    const msg = { type: "RESPONSE", body: { version: 1, id: 9, status: "SUCCESS", payload: { data } } } as unknown as Message;
    const pieces = encodeMessagePieces(msg, 0, 64 * 1024);
    assert.ok(pieces.includes(data), "the payload's bytes are one of the pieces");
    assert.deepEqual(Buffer.concat(pieces), generic(msg.body, 0));
  });
});
