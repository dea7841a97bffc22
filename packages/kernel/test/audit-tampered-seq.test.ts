import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { batchShape } from "../src/audit/record-size.js";
import { RecordScan } from "../src/audit/verify-records.js";
import { migrateAuditLayout } from "../src/store/sqlite/audit-layout.js";

// Tampered or changing audit tables met by the readers: each ends with an answer, never a hang or a crash.
describe("audit tables that change or lie under their readers", () => {
  it("an old-layout table with seqs past 2^53 (two read as the same number) stops the move with an error instead of looping", () => {
    const db = new Database(":memory:");
    try {
      db.exec("CREATE TABLE audit (seq INTEGER PRIMARY KEY, hash BLOB, persona TEXT)");
      db.exec(
        "INSERT INTO audit VALUES (1, x'00', 'a'), (2, x'00', 'a'), (1152921504606846976, x'00', 'a'), (1152921504606846977, x'00', 'a')",
      );
      let batches = 0;
      assert.throws(
        () =>
          migrateAuditLayout(db, 2000, () => {
            if (++batches > 5) throw new Error("still looping");
          }),
        /cannot be read exactly/,
      );
      assert.equal(db.prepare("SELECT count(*) FROM audit").pluck().get(), 4, "the old table is left as it was");
    } finally {
      db.close();
    }
  });

  it("verify reports a large record removed between its batch and its own read (retention on a live home) as missing, not a crash", () => {
    const db = new Database(":memory:");
    try {
      db.exec("CREATE TABLE audit (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, record BLOB NOT NULL)");
      // Over the batch's record size: read alone, after the batch.
      db.prepare("INSERT INTO audit VALUES (1, randomblob(32), zeroblob(?))").run(batchShape().recordBytes + 1);
      const scan = new RecordScan(db);
      const st = (scan as unknown as { scan: { all: (...a: unknown[]) => unknown } }).scan;
      const all = st.all.bind(st);
      st.all = (...a: unknown[]) => {
        const rows = all(...a);
        db.exec("DELETE FROM audit WHERE seq = 1");
        return rows;
      };
      const r = scan.verify(1, 1, new Set());
      assert.equal(r.firstBad?.seq, 1);
      assert.match(r.firstBad?.reason ?? "", /missing/);
    } finally {
      db.close();
    }
  });
});
