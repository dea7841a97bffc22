import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type Database from "better-sqlite3";
import { openAuditReader } from "../src/audit/reader.js";
import { FIELDS } from "../src/audit/record.js";
import { verifyAudit } from "../src/audit/verify.js";
import { verifyAuditFile } from "../src/audit/verify-parallel.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";
import { rechain, rewriteRecord, tamperedCopy } from "./audit-fill.js";
import { removeHome, startKernel } from "./harness.js";

/**
 * The record layout (audit (seq, hash, record)) against an attacker with the home's database
 * file: every field a reader shows, each of the three columns, the bytes, the chain, rows
 * deleted, inserted and reordered. Each tamper is found at its record by `kpip audit verify`'s
 * path (the read-only reader) and by the kernel's store, with the same answer.
 */
describe("audit tamper evidence of the record layout, on a real home", () => {
  let home: string;
  let db: string;
  let rows: AuditRow[];
  before(async () => {
    const t = await startKernel({ auditCheckpointEvery: 1000 });
    try {
      const c = await t.admin();
      for (let i = 0; i < 4; i++) await c.storage.write(`obj://ws1/t/${i}`, `v${i}`);
      await c.storage.read("obj://ws1/t/1");
      await c.call("nope.op", "kernel://").catch(() => {});
    } finally {
      await t.stop();
    }
    home = t.home;
    db = join(home, "kernel.db");
    const s = new SqliteStore(db);
    rows = s.scanAudit(1, 10_000);
    s.close();
  });
  after(() => removeHome(home));

  /** Both verify paths on a tampered copy: they agree, and the result. */
  const verifyBoth = async (name: string, tamper: (d: Database.Database) => void) => {
    const p = tamperedCopy(db, home, name, tamper);
    const file = await verifyAuditFile(p);
    const s = new SqliteStore(p);
    try {
      assert.deepEqual(verifyAudit(s), file, "the kernel's store and audit verify agree");
      // The record path (fields decoded, re-encoded and hashed), as an inspector of a running kernel verifies.
      const generic = verifyAudit({
        countAudit: () => s.countAudit(),
        checkpoints: () => s.checkpoints(),
        firstAuditSeq: () => s.firstAuditSeq(),
        scanAudit: (from, batch) => s.scanAudit(from, batch),
      });
      assert.deepEqual([generic.ok, generic.firstBad?.seq], [file.ok, file.firstBad?.seq], generic.firstBad?.reason);
    } finally {
      s.close();
    }
    return { file, path: p };
  };

  it("the untouched home verifies", async () => {
    const { file } = await verifyBoth("untouched", () => {});
    assert.equal(file.ok, true, file.firstBad?.reason);
    assert.equal(file.records, rows.length);
  });

  it("every field a reader shows, rewritten in the file, is found at its record (and readers show the rewritten value)", async () => {
    for (const [field, kind] of FIELDS) {
      // A record that has the field (else one that lacks it, given a value: a null field filled).
      const target = rows.find((r) => r.seq > 1 && r[field] != null) ?? (rows[2] as AuditRow);
      const had = target[field] ?? null;
      const changed =
        kind === "uint"
          ? ((had as number | null) ?? 0) + 1
          : kind === "text"
            ? `${(had as string | null) ?? ""}x`
            : Buffer.concat([(had as Uint8Array | null) ?? Buffer.alloc(0), Buffer.from([0])]);
      const { file, path } = await verifyBoth(`field-${field}`, (d) =>
        rewriteRecord(d, target.seq, (r) => Object.assign(r, { [field]: changed })),
      );
      assert.equal(file.ok, false, field);
      assert.equal(file.firstBad?.seq, target.seq, `${field}: ${file.firstBad?.reason}`);
      // The seq is in the bytes too: changed there alone, the row's key is what readers go by.
      if (field === "seq") continue;
      const reader = openAuditReader(path);
      try {
        assert.deepEqual(reader.record(target.seq)?.[field], changed, `${field}: what a reader shows is the bytes`);
      } finally {
        reader.close();
      }
    }
  });

  const n = () => rows.length;
  const cases: [string, (d: Database.Database) => void, () => number, RegExp][] = [
    ["one byte of the record flipped", (d) => flip(d, 4, -1), () => 4, /content/],
    ["one byte of the previous-hash prefix flipped", (d) => flip(d, 4, 0), () => 4, /link/],
    ["a byte appended to the record", (d) => d.exec("UPDATE audit SET record = record || X'00' WHERE seq = 4"), () => 4, /./],
    ["the record truncated", (d) => d.exec("UPDATE audit SET record = substr(record, 1, 40) WHERE seq = 4"), () => 4, /content/],
    ["the record emptied", (d) => d.exec("UPDATE audit SET record = X'' WHERE seq = 4"), () => 4, /link/],
    ["the record stored as text", (d) => d.exec("UPDATE audit SET record = CAST(record AS TEXT) WHERE seq = 4"), () => 4, /./],
    ["the hash changed", (d) => d.exec("UPDATE audit SET hash = zeroblob(32) WHERE seq = 4"), () => 4, /content/],
    [
      "the hash stored as its hex text",
      (d) => d.exec("UPDATE audit SET hash = lower(hex(hash)) WHERE seq = 4"),
      () => 4,
      /content/,
    ],
    ["a row deleted", (d) => d.exec("DELETE FROM audit WHERE seq = 5"), () => 5, /missing/],
    [
      "two rows swapped (reordered)",
      (d) =>
        d.exec(
          "UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -1",
        ),
      () => 4,
      /link/,
    ],
    [
      "a copy of a row inserted",
      (d) =>
        d.exec(
          "UPDATE audit SET seq = seq + 100000 WHERE seq >= 6; INSERT INTO audit SELECT 6, hash, record FROM audit WHERE seq = 5; UPDATE audit SET seq = seq - 100000 + 1 WHERE seq > 100000",
        ),
      () => 6,
      /link/,
    ],
    [
      "a record rewritten and the chain after it re-hashed (no key)",
      (d) => {
        rewriteRecord(d, 3, (r) => (r.persona = "mallory"));
        rechain(d, 3);
      },
      () => rows.find((r) => r.seq >= 3 && r.phase === "kernel" && r.op === "kernel.stop")?.seq ?? n(),
      /checkpoint/,
    ],
    [
      "the last (unsigned) record's bytes re-hashed under another sequence number",
      (d) => {
        d.exec(`DELETE FROM audit_checkpoints WHERE seq = ${n()}`);
        rewriteRecord(d, n(), (r) => (r.seq = n() + 5), true);
      },
      () => n(),
      /another record/,
    ],
  ];
  it("the bytes, the hash, rows deleted, swapped or copied in, the chain re-hashed, a seq re-encoded: each found at its record", async () => {
    for (const [name, tamper, seq, reason] of cases) {
      const { file } = await verifyBoth(name, tamper);
      assert.equal(file.ok, false, name);
      assert.equal(file.firstBad?.seq, seq(), `${name}: ${file.firstBad?.reason}`);
      assert.match(file.firstBad?.reason ?? "", reason, name);
    }
  });
});

/** Flips one byte of record `seq`: at `at` (negative: from the end). */
function flip(d: Database.Database, seq: number, at: number): void {
  const rec = (d.prepare("SELECT record FROM audit WHERE seq = ?").get(seq) as { record: Buffer }).record;
  const i = at < 0 ? rec.length + at : at;
  rec.writeUInt8((rec[i] as number) ^ 1, i);
  d.prepare("UPDATE audit SET record = ? WHERE seq = ?").run(rec, seq);
}
