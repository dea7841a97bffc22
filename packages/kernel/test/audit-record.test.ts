import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { recordBytes, recordBytesGeneric, recordHash, recordHashGeneric } from "../src/audit/record.js";
import { decodeRecord, decodeRecordHead, decodeRecordStrict, headOf } from "../src/audit/record-decode.js";
import type { AuditRow } from "../src/store/types.js";

const nullable = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
const uint = fc.oneof(fc.nat(30), fc.nat(300), fc.nat(70_000), fc.maxSafeNat(), fc.constant(1_795_000_000_000));

/**
 * Any code point but a lone surrogate (fast-check's unit "binary"), ASCII and the BMP often.
 * "binary" itself took 1.3 s of CPU to build (4-18 s on a busy machine) as the module loaded,
 * outside every test: the reporter named this file as one that outlived its tests.
 */
const SURROGATES = 0x800;
const anyCodePoint = fc
  .oneof(fc.nat(0x7f), fc.nat(0xffff - SURROGATES), fc.nat(0x10ffff - SURROGATES))
  .map((c) => String.fromCodePoint(c < 0xd800 ? c : c + SURROGATES));

/** Any row, odd values included. */
const anyRow = fc.record({
  seq: uint,
  time: uint,
  kernel: fc.string(),
  session: fc.string(),
  persona: fc.string({ unit: "grapheme" }),
  phase: fc.constantFrom("intent", "outcome", "complete", "refused", "session"),
  requestId: nullable(fc.oneof(uint, fc.double(), fc.integer({ min: -5, max: -1 }))),
  op: nullable(fc.string()),
  target: nullable(fc.string({ unit: anyCodePoint, maxLength: 300 })),
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

describe("audit record hash", () => {
  it("the fast encoder gives the generic canonical-CBOR hash for every row, odd values included", () => {
    fc.assert(
      fc.property(anyRow, (r) => {
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

describe("audit record head", () => {
  // A start after a kill reads its window's records by their heads only (recover-outcomes.ts):
  // what it reads must be what every other reader decodes, whatever the stored bytes are.
  it("a record's head (seq, phase, session, persona, request id) is its decoded record's, for the kernel's bytes and any others", () => {
    const hash = new Uint8Array(32);
    const agree = (seq: number, bytes: Uint8Array) =>
      assert.deepEqual(decodeRecordHead(seq, hash, bytes), headOf(decodeRecord(seq, hash, bytes)));
    // Mostly in the record's first bytes (its fields' heads and texts), not deep in a long intent.
    const at = fc.oneof(fc.nat(600), fc.nat());
    const edit = fc.oneof(
      // A byte changed (a text made invalid UTF-8, a head made longer or of another type, a key renamed).
      fc.record({ kind: fc.constant("set" as const), at, byte: fc.nat(255) }),
      fc.record({ kind: fc.constant("cut" as const), at }),
      fc.record({ kind: fc.constant("add" as const), at, byte: fc.nat(255) }),
    );
    fc.assert(
      fc.property(anyRow, fc.array(edit, { maxLength: 3 }), fc.boolean(), (r, edits, otherSeq) => {
        let bytes: Buffer;
        try {
          bytes = recordBytes(r);
        } catch {
          return;
        }
        bytes = Buffer.from(bytes);
        agree(r.seq, bytes);
        if (otherSeq) agree(r.seq + 1, bytes);
        for (const e of edits) {
          const at = e.at % (bytes.length + 1);
          if (e.kind === "set" && at < bytes.length) bytes[at] = e.byte;
          else if (e.kind === "cut") bytes = bytes.subarray(0, at);
          else if (e.kind === "add") bytes = Buffer.concat([bytes.subarray(0, at), Buffer.of(e.byte ?? 0), bytes.subarray(at)]);
          agree(r.seq, bytes);
        }
      }),
      { numRuns: 3000 },
    );
    // Bytes a random edit seldom makes: each is the kernel's encoding but for one thing, or is not a record.
    const head = (n: number, major: number, width = 0) => {
      if (width === 0 && n < 24) return Buffer.of((major << 5) | n);
      const w = width || (n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1_0000_0000 ? 4 : 8);
      const b = Buffer.alloc(1 + w);
      b[0] = (major << 5) | (w === 1 ? 24 : w === 2 ? 25 : w === 4 ? 26 : 27);
      b.writeUIntBE(n, 1 + w - Math.min(w, 6), Math.min(w, 6));
      return b;
    };
    const text = (s: string, width = 0) => Buffer.concat([head(Buffer.byteLength(s), 3, width), Buffer.from(s)]);
    const uintV = (n: number, width = 0) => head(n, 0, width);
    const map = (fields: [string, Buffer][], extra = Buffer.alloc(0)) =>
      Buffer.concat([Buffer.alloc(32, 7), Buffer.of(0xa0 | fields.length), ...fields.flatMap(([k, v]) => [text(k), v]), extra]);
    const base: [string, Buffer][] = [
      ["seq", uintV(500)],
      ["time", uintV(1_795_000_000_000)],
      ["phase", text("outcome")],
      ["detail", text("{}")],
      ["kernel", text("k")],
      ["persona", text("admin")],
      ["session", text("sess-1")],
      ["requestId", uintV(30)],
    ];
    const swap = (k: string, v: Buffer) => base.map(([n, w]): [string, Buffer] => [n, n === k ? v : w]);
    assert.deepEqual(decodeRecordHead(500, hash, map(base)), {
      seq: 500,
      phase: "outcome",
      session: "sess-1",
      persona: "admin",
      requestId: 30,
    });
    const others: [string, Buffer][] = [
      ["a byte after the map", map(base, Buffer.of(0))],
      ["a text's head longer than it needs", map(swap("session", text("sess-1", 1)))],
      ["an integer's head longer than it needs", map(swap("requestId", uintV(30, 1)))],
      ["a 64-bit head for a small integer", map(swap("requestId", uintV(300, 8)))],
      ["a negative request id", map(swap("requestId", Buffer.of(0x20 | 4)))],
      ["a text that is not UTF-8", map(swap("detail", Buffer.of(0x62, 0xc3, 0x28)))],
      ["a session as bytes", map(swap("session", Buffer.concat([head(6, 2), Buffer.from("sess-1")])))],
      ["keys out of order", map([base[1], base[0], ...base.slice(2)] as [string, Buffer][])],
      ["a key twice", map([...base.slice(0, 7), base[6], base[7]] as [string, Buffer][])],
      ["an unknown key", map([...base, ["zzzzzzzzzzzzzzzzz", text("x")]])],
      ["a required field missing", map(base.filter(([k]) => k !== "kernel"))],
      ["another record's seq", map(swap("seq", uintV(501)))],
      ["an indefinite map", Buffer.concat([Buffer.alloc(32), Buffer.of(0xbf)])],
      ["no map", Buffer.alloc(32)],
    ];
    for (const [what, bytes] of others)
      assert.deepEqual(decodeRecordHead(500, hash, bytes), headOf(decodeRecord(500, hash, bytes)), what);
  });
});
