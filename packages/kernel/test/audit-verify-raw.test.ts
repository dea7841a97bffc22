import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { encodeIntent, intentHash } from "@kpip/protocol";
import type { AuditEntry } from "../src/audit/log.js";
import { openAuditReader } from "../src/audit/reader.js";
import { recordHashGeneric } from "../src/audit/record.js";
import { verifyAudit } from "../src/audit/verify.js";
import { RawRecordScan } from "../src/audit/verify-raw.js";
import { SqliteStore } from "../src/store/sqlite.js";
import { fillAuditFile, tamperedCopy } from "./audit-fill.js";
import { removeHome } from "./harness.js";

/** Texts and integers at every CBOR head size, non-ASCII text, empty and large blobs, absent fields. */
const TEXTS = [
  "",
  "a",
  "x".repeat(23),
  "y".repeat(24),
  "z".repeat(255),
  "é".repeat(128),
  "日本語 🙂",
  "w".repeat(70_000),
  "nul\u0000in",
];
const UINTS = [0, 23, 24, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER];
const N = 120;

describe("audit verify's raw scan (rows hashed straight from SQLite) is as strict as the record path", () => {
  let dir: string;
  let good: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "kpip-verify-raw-"));
    good = join(dir, "good.db");
    const row = (i: number): AuditEntry => {
      const t = (k: number) => TEXTS[(i + k) % TEXTS.length] as string;
      const intent = encodeIntent({ op: "storage.write", target: "obj://ws/k", args: { data: t(1).slice(0, 300) } });
      return {
        session: t(0) || "s",
        persona: "p",
        phase: i % 3 === 0 ? "intent" : "complete",
        requestId: i % 4 === 0 ? null : (UINTS[i % UINTS.length] as number),
        op: i % 5 === 0 ? null : "storage.write",
        target: t(2),
        intentHash: i % 6 === 0 ? null : intentHash(intent),
        intent: i % 7 === 0 ? null : i % 7 === 1 ? new Uint8Array(0) : intent,
        caps: t(3),
        status: i % 2 ? "SUCCESS" : null,
        errorClass: i % 9 === 0 ? "NotFound" : null,
        message: t(4),
        durationUs: UINTS[(i + 3) % UINTS.length] as number,
        traceparent: i % 8 === 0 ? null : `00-${"ab".repeat(16)}-${"cd".repeat(8)}-01`,
        execution: i % 10 === 0 ? null : t(5),
        domain: i % 11 === 0 ? null : t(6),
        measurements: i % 12 === 0 ? Buffer.from([0xa1, 0x61, 0x6b, 0x01]) : null,
        detail: i % 13 === 0 ? null : `{"n":${i},"t":${JSON.stringify(t(7).slice(0, 40))}}`,
      };
    };
    await fillAuditFile(good, N, (i) => row(i - 1), { batchMax: 64, checkpointEvery: 50 });
  });
  after(() => removeHome(dir));

  /** The raw scan of a file, and how many rows it sent down the record path. */
  const rawVerify = (path: string) => {
    const reader = openAuditReader(path, { direct: true });
    try {
      const scan = new RawRecordScan(reader.db, reader.columns, (seq) => reader.scanAudit(seq, 1)[0]);
      const cps = new Set(reader.checkpoints().map((c) => c.seq));
      return { range: scan.verify(1, Number.POSITIVE_INFINITY, cps, 7), slow: scan.slowRows, full: verifyAudit(reader) };
    } finally {
      reader.close();
    }
  };
  const recordPath = (path: string) => {
    const s = new SqliteStore(path);
    try {
      return verifyAudit(s);
    } finally {
      s.close();
    }
  };

  it("every record the kernel writes is hashed on the fast path, to the generic definition's hash", () => {
    const reader = openAuditReader(good, { direct: true });
    for (const r of reader.scanAudit(1, N)) assert.deepEqual(recordHashGeneric(r), Buffer.from(r.hash));
    reader.close();
    const { range, slow, full } = rawVerify(good);
    assert.equal(range.firstBad, undefined);
    assert.equal(range.lastSeq, N);
    assert.equal(slow, 0);
    assert.equal(full.ok, true);
    assert.deepEqual(full, recordPath(good));
    assert.ok(full.checkpoints >= 2);
  });

  // [what, sql, seq found bad, whether the record path answers the same: on some wrong types it
  // throws (a CborError, or a TypeError writing a blob as text) where the raw scan names the record]
  const cases: [string, string, number, boolean][] = [
    ["a text field changed", "UPDATE audit SET message = 'forged' WHERE seq = 40", 40, true],
    [
      "one byte of an intent changed",
      "UPDATE audit SET intent = CAST(X'00' AS BLOB) || substr(intent, 2) WHERE seq = 41",
      41,
      true,
    ],
    ["an integer changed", "UPDATE audit SET duration_us = duration_us + 1 WHERE seq = 42", 42, true],
    ["a null field filled", "UPDATE audit SET status = 'SUCCESS' WHERE seq = 57", 57, true],
    ["a field nulled", "UPDATE audit SET caps = NULL WHERE seq = 45", 45, true],
    ["an intent stored as text of the same bytes", "UPDATE audit SET intent = CAST(intent AS TEXT) WHERE seq = 46", 46, true],
    ["a text stored as a blob of the same bytes", "UPDATE audit SET target = CAST(target AS BLOB) WHERE seq = 50", 50, false],
    ["the hash stored as its own hex text", "UPDATE audit SET hash = lower(hex(hash)) WHERE seq = 47", 47, true],
    ["the previous hash shortened", "UPDATE audit SET prev_hash = substr(prev_hash, 1, 31) WHERE seq = 48", 48, true],
    ["an integer field stored as a fraction", "UPDATE audit SET duration_us = 24.5 WHERE seq = 49", 49, false],
    ["a negative integer", "UPDATE audit SET time = -time WHERE seq = 51", 51, true],
    ["an integer beyond 2^53", "UPDATE audit SET request_id = 9007199254740993 WHERE seq = 53", 53, false],
    ["a text field holding an integer", "UPDATE audit SET persona = 7 WHERE seq = 54", 54, false],
  ];
  for (const [what, sql, seq, same] of cases) {
    it(`${what}: found at its record`, () => {
      const p = tamperedCopy(good, dir, what, sql);
      const { full } = rawVerify(p);
      assert.equal(full.ok, false);
      assert.equal(full.firstBad?.seq, seq, full.firstBad?.reason);
      if (same) assert.deepEqual(full, recordPath(p));
    });
  }

  it("an intact record outside the kernel's types (a negative integer, hashed by the generic encoder) takes the record path and verifies", async () => {
    const p = join(dir, "fraction.db");
    const entry = (i: number): AuditEntry => ({ session: "s", persona: "p", phase: "complete", requestId: i === 3 ? -3 : i - 1 });
    await fillAuditFile(p, 5, entry, { batchMax: 8, checkpointEvery: 50 });
    const { range, slow, full } = rawVerify(p);
    assert.equal(range.firstBad, undefined);
    assert.equal(slow, 1);
    assert.equal(full.ok, true);
    assert.deepEqual(full, recordPath(p));
  });
});
