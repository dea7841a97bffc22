import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  type CborValue,
  CodecError,
  decodeCanonical,
  decodeMessage,
  encodeCanonical,
  encodeIntent,
  encodeMessage,
  FrameDecoder,
  type Message,
} from "../src/index.js";
import { structural } from "../src/testing.js";
import { validateCanonical } from "./canonical-validate.js";

const bytes = (max = 40) => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b));
const uint = fc.nat({ max: Number.MAX_SAFE_INTEGER });
const text = fc.string({ maxLength: 20, unit: "grapheme" });
const personaId = fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,10}(\/[a-z0-9][a-z0-9_-]{0,10}){0,2}$/);
const integer = fc.oneof(
  fc.integer(),
  fc.maxSafeInteger(),
  fc
    .bigInt({ min: -(2n ** 64n), max: 2n ** 64n - 1n })
    .map((b) => (b >= -(2n ** 53n) + 1n && b <= 2n ** 53n - 1n ? Number(b) : b)),
);
const key = fc.string({ maxLength: 8, unit: "grapheme" }).filter((k) => k !== "__proto__");
const value: fc.Arbitrary<CborValue> = fc.letrec<{ v: CborValue }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    integer,
    text,
    bytes(),
    fc.constantFrom(true, false, null),
    fc.array(tie("v"), { maxLength: 4 }),
    fc.dictionary(key, tie("v"), { maxKeys: 4 }).map((o) => Object.assign(Object.create(Object.prototype), o)),
  ),
})).v;

const intent = encodeIntent({ op: "storage.write", target: "obj://ws1/x", args: { data: new Uint8Array([1]) } });
const message: fc.Arbitrary<Message> = fc.oneof(
  fc
    .record({
      versions: fc.array(fc.nat(9), { maxLength: 4 }),
      persona: personaId,
      publicKey: bytes(32).map(() => Buffer.alloc(32, 5)),
      instance: fc.constant(Buffer.alloc(16, 6)),
      features: fc.array(
        text.filter((t) => t.length < 30),
        { maxLength: 3 },
      ),
    })
    .map((body) => ({ type: "HELLO" as const, body })),
  fc
    .record({
      signature: fc.constant(Buffer.alloc(64, 1)),
      tokens: fc.array(
        bytes(30).filter((b) => b.length > 0),
        { maxLength: 3 },
      ),
    })
    .map((body) => ({ type: "ATTEST" as const, body })),
  fc
    .record({ persona: personaId, handles: fc.array(uint, { maxLength: 5 }) })
    .map((body) => ({ type: "WELCOME" as const, body })),
  fc
    .record({
      version: fc.nat(5),
      persona: personaId,
      id: uint,
      intent: fc.constant(intent),
      context: fc.record({ persona: personaId }),
      caps: fc.array(
        fc.oneof(
          uint,
          bytes(20).filter((b) => b.length > 0),
        ),
        { maxLength: 4 },
      ),
    })
    .map((body) => ({ type: "REQUEST" as const, body })),
  fc
    .record({
      version: fc.nat(5),
      id: uint,
      status: fc.constantFrom("SUCCESS", "PARTIAL", "DEFERRED") as fc.Arbitrary<"SUCCESS">,
      payload: value,
    })
    .map((body) => ({ type: "RESPONSE" as const, body })),
  fc
    .record({
      version: fc.nat(5),
      id: uint,
      status: fc.constant("FAILURE" as const),
      error: fc.constantFrom(
        "SEMANTIC",
        "PERMISSION",
        "RESOURCE",
        "CAPABILITY",
        "INTERNAL",
        "AUTH",
        "PROTOCOL",
      ) as fc.Arbitrary<"SEMANTIC">,
      message: text,
    })
    .map((body) => ({ type: "RESPONSE" as const, body })),
  fc.record({ subscription: uint, topic: text, seq: uint, data: value }).map((body) => ({ type: "EVENT" as const, body })),
  fc.record({ seq: uint }).map((body) => ({ type: "PING" as const, body })),
  fc.record({ seq: uint }).map((body) => ({ type: "PONG" as const, body })),
  fc.record({ reason: text }).map((body) => ({ type: "GOODBYE" as const, body })),
  fc
    .record({
      class: fc.constant("PROTOCOL" as const),
      code: text.filter((t) => t.length < 60),
      message: text,
      fatal: fc.boolean(),
    })
    .map((body) => ({ type: "ERROR" as const, body })),
);

const norm = structural;
const same = (a: unknown, b: unknown) => assert.deepEqual(norm(a), norm(b));

const onlyCodecErrors = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    if (!(e instanceof CodecError)) throw e;
  }
};

describe("properties", () => {
  it("encode → decode is the identity for every message type", () => {
    fc.assert(
      fc.property(message, fc.nat(0xffffffff), (m, stream) => {
        const frames = new FrameDecoder().push(encodeMessage(m, stream));
        assert.equal(frames.length, 1);
        assert.equal(frames[0]?.stream, stream);
        same(decodeMessage(frames[0] as NonNullable<(typeof frames)[0]>), m);
      }),
      { numRuns: 500 },
    );
  });

  it("canonical encodings validate, decode to the value, and are unique", () => {
    fc.assert(
      fc.property(value, (v) => {
        const b = encodeCanonical(v);
        validateCanonical(b);
        const back = decodeCanonical(b);
        same(back, v);
        assert.ok(encodeCanonical(back).equals(b));
      }),
      { numRuns: 1000 },
    );
  });

  it("whatever decodes re-encodes to the same bytes (one value, one encoding)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 24 }), (b) => {
        let v: CborValue;
        try {
          v = decodeCanonical(b);
        } catch (e) {
          if (e instanceof CodecError) return;
          throw e;
        }
        assert.ok(encodeCanonical(v).equals(Buffer.from(b)));
      }),
      { numRuns: 5000 },
    );
  });

  it("the frame decoder, given arbitrary bytes, returns frames or throws a CodecError", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.array(fc.nat(40), { maxLength: 10 }), (b, cuts) => {
        const d = new FrameDecoder(1024);
        onlyCodecErrors(() => {
          let pos = 0;
          for (const c of cuts) {
            for (const f of d.push(b.subarray(pos, pos + c))) onlyCodecErrors(() => decodeMessage(f));
            pos += c;
          }
          for (const f of d.push(b.subarray(pos))) onlyCodecErrors(() => decodeMessage(f));
          d.end();
        });
      }),
      { numRuns: 2000 },
    );
  });

  it("chunking never changes the frames", () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(64), { maxLength: 30 }), (ms, cuts) => {
        const all = Buffer.concat(ms.map((m, i) => encodeMessage(m, i)));
        const whole = new FrameDecoder().push(all);
        const d = new FrameDecoder();
        const parts = [];
        let pos = 0;
        for (const c of cuts) {
          parts.push(...d.push(all.subarray(pos, pos + c)));
          pos = Math.min(all.length, pos + c);
        }
        parts.push(...d.push(all.subarray(pos)));
        const norm = (fs: typeof whole) =>
          fs.map((f) => ({ type: f.type, stream: f.stream, flags: f.flags, body: Buffer.from(f.body).toString("hex") }));
        assert.deepEqual(norm(parts), norm(whole));
        assert.equal(whole.length, ms.length);
      }),
      { numRuns: 300 },
    );
  });
});
