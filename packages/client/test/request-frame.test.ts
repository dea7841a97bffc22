import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CanonicalWriter,
  type CapabilityRef,
  type CborMap,
  type CborValue,
  encodeIntent,
  framePieces,
  HEADER_SIZE,
  type Intent,
  PIECE_REF_MIN,
  type RequestContext,
} from "@kpip/protocol";
import fc from "fast-check";
import { RequestEncoder } from "../src/request-frame.js";

const key = fc.string({ maxLength: 8, unit: "grapheme" }).filter((k) => k !== "__proto__");
const scalar = fc.oneof(
  fc.integer(),
  fc.maxSafeInteger(),
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n - 1n }),
  fc.string({ maxLength: 60, unit: "grapheme" }),
  fc.string({ maxLength: 60 }),
  fc.uint8Array({ maxLength: 40 }),
  fc.constantFrom(true, false, null),
);
const value: fc.Arbitrary<CborValue> = fc.letrec<{ v: CborValue }>((tie) => ({
  v: fc.oneof({ depthSize: "small" }, scalar, fc.array(tie("v"), { maxLength: 4 }), fc.dictionary(key, tie("v"), { maxKeys: 4 })),
})).v as fc.Arbitrary<CborValue>;
const args = fc.dictionary(key, value, { maxKeys: 5 }) as fc.Arbitrary<CborMap>;
const op = fc.stringMatching(/^[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){1,3}$/);
const target = fc.oneof(
  fc.constant("kernel://"),
  fc.stringMatching(/^(obj|agent|persona):\/\/[a-z0-9][a-z0-9_-]{0,10}(\/[A-Za-z0-9][A-Za-z0-9._~-]{0,11}){0,3}$/),
  fc.stringMatching(/^topic:\/\/[a-z]{1,10}(\/[A-Za-z0-9_-]{1,12}){0,3}$/),
);
const deadline = fc.option(fc.nat({ max: Number.MAX_SAFE_INTEGER }), { nil: undefined });
const caps = fc.array(fc.oneof(fc.nat({ max: Number.MAX_SAFE_INTEGER }), fc.uint8Array({ minLength: 1, maxLength: 40 })), {
  maxLength: 4,
}) as fc.Arbitrary<CapabilityRef[]>;
const name = fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,10}$/);
const context = fc.option(
  fc.record(
    {
      persona: name,
      workspace: name,
      execution: fc.string({ maxLength: 30 }),
      domain: name,
      traceparent: fc.string({ maxLength: 30 }),
    },
    { requiredKeys: ["persona"] },
  ),
  { nil: undefined },
) as fc.Arbitrary<RequestContext | undefined>;

const PERSONA = "alice/worker-1";
const DEFAULT_CONTEXT: RequestContext = { persona: PERSONA, workspace: "ws1" };

/** The generic path the encoder replaces: encodeIntent, then framePieces of the REQUEST. */
function reference(
  intent: Intent,
  id: number,
  cs: CapabilityRef[],
  ctx: RequestContext | undefined,
  version: number,
): { frame: Buffer; intent: Buffer } {
  const bytes = encodeIntent(intent);
  const body = { id, caps: cs, intent: bytes, context: ctx ?? DEFAULT_CONTEXT, persona: PERSONA, version };
  return { frame: Buffer.concat(framePieces({ type: "REQUEST", body }, id % 0x100000000).pieces), intent: bytes };
}

/** What a function did: its value, or the error's class, name, code and message. */
function outcome(f: () => unknown): unknown {
  try {
    return { ok: f() };
  } catch (e) {
    const err = e as Error & { code?: string; errorClass?: string };
    return { name: err.name, code: err.code, errorClass: err.errorClass, message: err.message };
  }
}

describe("RequestEncoder: the client's REQUEST frames, byte for byte the generic encoder's", () => {
  it("call's intent and its frame equal encodeIntent + framePieces (ids, caps, contexts, deadlines, versions)", () => {
    const enc = new RequestEncoder(PERSONA, DEFAULT_CONTEXT);
    fc.assert(
      fc.property(
        op,
        target,
        args,
        deadline,
        fc.nat({ max: Number.MAX_SAFE_INTEGER - 1 }).map((n) => n + 1),
        caps,
        context,
        fc.nat({ max: 70_000 }),
        (o, t, a, d, id, cs, ctx, version) => {
          const intent: Intent =
            d === undefined ? { op: o, args: a, target: t } : { op: o, args: a, target: t, constraints: { deadline: d } };
          const want = reference(intent, id, cs, ctx, version);
          for (const n of [enc.encodeCall(o, t, a, d), enc.encodeIntent(intent)]) {
            assert.equal(n, want.intent.length);
            const f = enc.frame(id, id % 0x100000000, cs, ctx, version);
            assert.ok(f);
            assert.deepEqual(f.frame, want.frame);
            assert.deepEqual(f.frame.subarray(f.intentAt, f.intentEnd), want.intent);
          }
        },
      ),
      { numRuns: 600 },
    );
  });

  it("refuses what encodeIntent refuses, with the same error, and accepts what it accepts", () => {
    const enc = new RequestEncoder(PERSONA, DEFAULT_CONTEXT);
    const anyText = fc.oneof(
      op,
      target,
      fc.string({ maxLength: 12 }),
      fc.constantFrom("a.b", "A.b", "obj://ws1/../x", "obj://WS/x", ""),
    );
    const loose = fc.oneof(anyText, fc.integer(), fc.constant(null), fc.constant(undefined), fc.uint8Array({ maxLength: 3 }));
    const looseArgs = fc.oneof(
      args as fc.Arbitrary<unknown>,
      loose,
      fc.array(fc.integer(), { maxLength: 2 }),
      fc.constant(new Map()),
      fc.constant(new (class Args {})()),
      fc.constant({ n: 1.5 }),
      fc.constant({ f: () => 1 }),
    );
    const looseDeadline = fc.oneof(deadline, fc.constantFrom(-1, 1.5, 2 ** 60, Number.NaN));
    fc.assert(
      fc.property(loose, loose, looseArgs, looseDeadline, (o, t, a, d) => {
        const intent = { op: o, args: a, target: t, ...(d === undefined ? {} : { constraints: { deadline: d } }) };
        const want = outcome(() => encodeIntent(intent as unknown as Intent).toString("hex"));
        const got = outcome(() => {
          enc.encodeCall(o as string, t as string, a as CborMap, d as number | undefined);
          return enc.copyIntent().toString("hex");
        });
        assert.deepEqual(got, want);
      }),
      { numRuns: 2000 },
    );
  });

  it("text of any length, ASCII or with a character outside it anywhere, is its UTF-8 bytes after the shortest head", () => {
    const w = new CanonicalWriter();
    for (let n = 0; n <= 100; n++) {
      const ascii = "k".repeat(n);
      const variants = [
        ascii,
        ...[0, n >> 1, n - 1]
          .filter((i) => i >= 0 && i < n)
          .flatMap((i) => [
            `${ascii.slice(0, i)}é${ascii.slice(i + 1)}`,
            `${ascii.slice(0, i)}\u{1F600}${ascii.slice(i + 1)}`,
            `${ascii.slice(0, i)}\ud800${ascii.slice(i + 1)}`,
          ]),
      ];
      for (const s of variants) {
        const utf8 = Buffer.from(s, "utf8");
        const len = utf8.length;
        const head = len < 24 ? [0x60 | len] : len < 256 ? [0x78, len] : [0x79, len >> 8, len & 0xff];
        w.reset();
        w.write(s);
        assert.deepEqual(w.finish(), Buffer.concat([Buffer.from(head), utf8]), JSON.stringify(s));
      }
    }
  });

  it("a frame is its own buffer: the next call's encoding does not touch it", () => {
    const enc = new RequestEncoder(PERSONA, DEFAULT_CONTEXT);
    enc.encodeCall("x.first", "obj://ws1/a", { n: 1 }, undefined);
    const first = enc.frame(1, 1, [1], undefined, 1);
    const copy = Buffer.from(first?.frame ?? []);
    enc.encodeCall("x.second", "obj://ws1/bbbbbbbb", { n: 2, s: "longer" }, 5);
    enc.frame(2, 2, [1, 2], { persona: PERSONA, domain: "d" }, 1);
    assert.deepEqual(first?.frame, copy);
  });

  it("a large intent is not copied: its bulk bytes are referenced in its pieces, the next encoding leaves them alone, and its frame's pieces are the generic frame's bytes", () => {
    const enc = new RequestEncoder(PERSONA, DEFAULT_CONTEXT);
    const data = Buffer.alloc(PIECE_REF_MIN, 7);
    const intent: Intent = { op: "storage.write", args: { data }, target: "obj://ws1/big" };
    assert.equal(enc.encodeIntent(intent), encodeIntent(intent).length);
    assert.equal(enc.frame(1, 1, [], undefined, 1), undefined);
    const taken = enc.takeIntent();
    assert.ok(taken.includes(data), "the caller's bytes are a piece, not copied");
    enc.encodeCall("x.y", "kernel://", { data: Buffer.alloc(100, 9) }, undefined);
    assert.deepEqual(Buffer.concat(taken), encodeIntent(intent));
    for (const [ctx, caps] of [
      [undefined, [1, 2]],
      [{ persona: PERSONA, domain: "d" }, [3]],
    ] as const) {
      const { pieces, bodySize } = enc.framePieces(70_000, 70_000, caps, ctx, 1, taken);
      const want = reference(intent, 70_000, [...caps], ctx, 1);
      assert.deepEqual(Buffer.concat(pieces), want.frame);
      assert.equal(bodySize, want.frame.length - HEADER_SIZE);
      assert.ok(pieces.includes(data));
    }
  });

  it("caps are encoded afresh unless the array is frozen handles: a caller's array changed between calls is sent as it is now", () => {
    const enc = new RequestEncoder(PERSONA, DEFAULT_CONTEXT);
    const mine: CapabilityRef[] = [1];
    const frameWith = (cs: readonly CapabilityRef[]) => {
      enc.encodeCall("x.y", "kernel://", {}, undefined);
      return enc.frame(3, 3, cs, undefined, 1)?.frame;
    };
    frameWith(mine);
    mine.push(2);
    assert.deepEqual(frameWith(mine), reference({ op: "x.y", args: {}, target: "kernel://" }, 3, [1, 2], undefined, 1).frame);
    const token = new Uint8Array([1, 2, 3]);
    const frozen = Object.freeze([token]);
    frameWith(frozen);
    token[0] = 9;
    assert.deepEqual(frameWith(frozen), reference({ op: "x.y", args: {}, target: "kernel://" }, 3, [token], undefined, 1).frame);
  });
});
