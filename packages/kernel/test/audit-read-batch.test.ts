import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import fc from "fast-check";
import type { AuditEntry } from "../src/audit/log.js";
import { BATCH_BYTES, batchShape, DEFAULT_INTENT_MAX_BYTES } from "../src/audit/record-size.js";
import { RecordScan } from "../src/audit/verify-records.js";
import { AuditReads } from "../src/store/sqlite/audit-read.js";
import { fillAuditFile } from "./audit-fill.js";
import { removeHome } from "./harness.js";

/* The scans read records in batches sized from the kept intents, within one memory bound (issue #22). */

/** The record bytes of each batch the scans read from `db`, and how many records were read alone after their batch. */
function watched(db: Database.Database): { db: Database.Database; batches: number[]; alone: () => number } {
  const batches: number[] = [];
  let alone = 0;
  const wrap = (st: Database.Statement): Database.Statement => {
    const single = /^SELECT octet_length\(record\)/.test(st.source);
    const p: Database.Statement = new Proxy(st, {
      get(t, k) {
        if (k === "all")
          return (...a: unknown[]) => {
            const rows = t.all(...a) as unknown[][];
            batches.push(rows.reduce((n, r) => n + (Buffer.isBuffer(r[2]) ? r[2].length : 0), 0));
            return rows;
          };
        if (k === "get" && single)
          return (...a: unknown[]) => {
            alone++;
            return t.get(...a);
          };
        if (k === "raw" || k === "pluck")
          return (...a: unknown[]) => {
            (t[k] as (...x: unknown[]) => unknown)(...a);
            return p;
          };
        const v = Reflect.get(t, k, t);
        return typeof v === "function" ? v.bind(t) : v;
      },
    });
    return p;
  };
  const proxy = new Proxy(db, {
    get(t, k) {
      if (k === "prepare") return (sql: string) => wrap(t.prepare(sql));
      const v = Reflect.get(t, k, t);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { db: proxy, batches, alone: () => alone };
}

const entry =
  (intentBytes: (i: number) => number) =>
  (i: number): AuditEntry => ({
    session: "s",
    persona: "p",
    phase: "complete",
    requestId: i,
    op: "storage.write",
    target: `obj://ws/${i}`,
    intentHash: randomBytes(32),
    intent: randomBytes(intentBytes(i)),
    caps: "storage.write@obj://ws/*",
    status: "SUCCESS",
    durationUs: 10,
  });

describe("the audit scans' batches", () => {
  it("are sized from the kept intent size: rows × record size never passes the bound, and a kept intent fits (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 64 * 1024 * 1024 }), (intentMax) => {
        const s = batchShape(intentMax);
        assert.ok(s.rows >= 1 && s.rows * s.recordBytes <= BATCH_BYTES, JSON.stringify(s));
        if (intentMax + 8 * 1024 <= BATCH_BYTES)
          assert.ok(s.recordBytes >= intentMax + 4096, "a record keeping such an intent is batched");
      }),
    );
    assert.ok(batchShape().recordBytes > DEFAULT_INTENT_MAX_BYTES, "the default's kept intents come in their batch");
  });

  it("hold at most the bound, records near the largest kept intent included; those records need no second read", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kpip-audit-batch-"));
    const path = join(dir, "kernel.db");
    try {
      // Intents up to the default kept size, most of them large: 600 records, about 30 MiB.
      const n = 600;
      await fillAuditFile(
        path,
        n,
        entry((i) => (i % 5 === 0 ? 100 : DEFAULT_INTENT_MAX_BYTES - (i % 7))),
        {
          batchMax: 64,
          checkpointEvery: 1000,
        },
      );
      const raw = new Database(path, { readonly: true });
      try {
        const w = watched(raw);
        const reads = new AuditReads(w.db);
        let seen = 0;
        for (const r of reads.records()) if (r.requestId !== null) seen++;
        for (const _ of reads.records({ newest: true })) seen++;
        // As `kpip audit tail -f` and the store's scanAudit ask: up to 1,000 rows, read a batch at a time.
        for (let from = 1; ; ) {
          const rows = reads.up(from, 1000);
          if (rows.length === 0) break;
          seen += rows.length;
          from = (rows.at(-1)?.seq as number) + 1;
        }
        assert.equal(seen, 3 * n);
        const scan = new RecordScan(w.db);
        const v = scan.verify(1, n, new Set(), 1000);
        assert.equal(v.firstBad, undefined);
        assert.equal(v.lastSeq, n);
        assert.ok(w.batches.length >= 4 * Math.ceil(n / batchShape().rows), `batches: ${w.batches.length}`);
        const largest = Math.max(...w.batches);
        assert.ok(largest <= BATCH_BYTES, `a batch held ${largest} bytes of records`);
        assert.ok(largest > BATCH_BYTES / 2, "the batches were full ones");
        assert.equal(w.alone(), 0, "no record was read a second time, alone");
      } finally {
        raw.close();
      }
    } finally {
      removeHome(dir);
    }
  });
});
