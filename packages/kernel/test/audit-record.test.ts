import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { recordBytes, recordBytesGeneric, recordHash, recordHashGeneric } from "../src/audit/record.js";
import { decodeRecordStrict } from "../src/audit/record-decode.js";
import type { AuditRow } from "../src/store/types.js";

const nullable = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
const uint = fc.oneof(fc.nat(30), fc.nat(300), fc.nat(70_000), fc.maxSafeNat(), fc.constant(1_795_000_000_000));

describe("audit record hash", () => {
  it("the fast encoder gives the generic canonical-CBOR hash for every row, odd values included", () => {
    const row = fc.record({
      seq: uint,
      time: uint,
      kernel: fc.string(),
      session: fc.string(),
      persona: fc.string({ unit: "grapheme" }),
      phase: fc.constantFrom("intent", "outcome", "complete", "refused", "session"),
      requestId: nullable(fc.oneof(uint, fc.double(), fc.integer({ min: -5, max: -1 }))),
      op: nullable(fc.string()),
      target: nullable(fc.string({ unit: "binary", maxLength: 300 })),
      intentHash: nullable(fc.uint8Array({ minLength: 32, maxLength: 32 })),
      intent: nullable(fc.uint8Array({ maxLength: 70_000 })),
      caps: nullable(fc.string()),
      status: nullable(fc.string()),
      errorClass: nullable(fc.string()),
      message: nullable(fc.string({ unit: "grapheme", maxLength: 400 })),
      durationUs: nullable(uint),
      traceparent: nullable(fc.string({ unit: fc.constantFrom("a", "-", "0", "é", "\u0000"), maxLength: 300 })),
      execution: nullable(fc.string()),
      domain: nullable(fc.string({ unit: "grapheme" })),
      measurements: nullable(fc.uint8Array({ maxLength: 300 })),
      detail: nullable(fc.string({ unit: "grapheme", maxLength: 300 })),
      prevHash: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    }) as fc.Arbitrary<Omit<AuditRow, "hash">>;
    fc.assert(
      fc.property(row, (r) => {
        const outcome = (f: typeof recordHash) => {
          try {
            return f(r).toString("hex");
          } catch (e) {
            return `throws ${(e as Error).name}`;
          }
        };
        assert.equal(outcome(recordHash), outcome(recordHashGeneric));
        const bytes = (f: typeof recordBytes) => {
          try {
            return f(r).toString("hex");
          } catch (e) {
            return `throws ${(e as Error).name}`;
          }
        };
        assert.equal(bytes(recordBytes), bytes(recordBytesGeneric));
        // What a reader decodes from the stored bytes is the record that was hashed: every field
        // the same (numbers as encoded: -0 is 0), and it encodes to the same bytes.
        if (!bytes(recordBytes).startsWith("throws")) {
          const stored = recordBytes(r);
          const back = decodeRecordStrict(r.seq, new Uint8Array(32), stored);
          assert.deepEqual(recordBytes(back), stored);
          for (const k of Object.keys(r) as (keyof typeof r)[]) {
            const want = r[k] instanceof Uint8Array ? Buffer.from(r[k]) : typeof r[k] === "number" ? r[k] + 0 : (r[k] ?? null);
            assert.deepEqual(back[k] ?? null, want, k);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });
});
