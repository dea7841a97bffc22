import type { RangeResult } from "../../audit/verify.js";
import { RecordScan } from "../../audit/verify-records.js";
import type { AuditCheckpoint, AuditQuery, AuditRow, AuditStore, DedupeRow } from "../types.js";
import { auditAppender } from "./audit-append.js";
import { AuditReads } from "./audit-read.js";
import type { Row, StoreBase, WithRows } from "./base.js";

/** The audit chain, its signed checkpoints, and the dedupe answers committed with it. */
export function AuditRows<B extends StoreBase>(Base: B): WithRows<B, Omit<AuditStore, "offlineJournal">> {
  return class AuditRows extends Base implements Omit<AuditStore, "offlineJournal"> {
    /** Every read of the table (audit-read.ts, shared with the audit reader). */
    readonly #reads = new AuditReads(this.db);
    /** Every write: a commit of audit rows with what they carry, and single dedupe and checkpoint rows. */
    readonly #writes = auditAppender(this.db);

    auditHashAt(seq: number): Uint8Array | undefined {
      return this.#reads.hashAt(seq);
    }
    appendAudit(rows: AuditRow[], dedupe: DedupeRow[] = [], journalUpTo = 0, checkpoints: AuditCheckpoint[] = []): void {
      this.#writes.append(rows, dedupe, journalUpTo, checkpoints);
    }
    firstAuditSeq(): number | undefined {
      return this.#reads.first();
    }
    pruneAudit(throughSeq: number, base?: AuditCheckpoint): number {
      return this.db.transaction(() => {
        if (base) this.addCheckpoint(base);
        const n = this.prep("DELETE FROM audit WHERE seq <= ?").run(throughSeq).changes;
        this.prep("DELETE FROM audit_checkpoints WHERE seq < ?").run(throughSeq);
        return n;
      })();
    }
    lookupDedupe(key: string, now: number): DedupeRow | undefined {
      const r = this.prep("SELECT * FROM dedupe WHERE key = ? AND expires >= ?").get(key, now) as Row | undefined;
      return r && { key, hash: r.hash as Uint8Array, response: r.response as Uint8Array, expires: r.expires as number };
    }
    putDedupe(d: DedupeRow): void {
      this.#writes.putDedupe(d);
    }
    pruneDedupe(now: number, max?: number): number {
      if (max === undefined) return this.prep("DELETE FROM dedupe WHERE expires < ?").run(now).changes;
      // Rows are appended in expiry order: the oldest by rowid, not a scan of the table.
      return this.prep("DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe ORDER BY rowid LIMIT ?) AND expires < ?").run(
        max,
        now,
      ).changes;
    }
    dedupeEnd(): number {
      return ((this.prep("SELECT max(rowid) AS n FROM dedupe").get() as Row).n as number | null) ?? 0;
    }
    pruneDedupeRange(now: number, after: number, through: number, max: number): { deleted: number; last: number } {
      const last = (
        this.prep(
          "SELECT max(rowid) AS n FROM (SELECT rowid FROM dedupe WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?)",
        ).get(after, through, max) as Row
      ).n as number | null;
      if (last === null) return { deleted: 0, last: through };
      const deleted = this.prep("DELETE FROM dedupe WHERE rowid > ? AND rowid <= ? AND expires < ?").run(
        after,
        last,
        now,
      ).changes;
      return { deleted, last };
    }
    lastAudit(): AuditRow | undefined {
      return this.#reads.last();
    }
    scanAudit(fromSeq: number, batch: number): AuditRow[] {
      return this.#reads.up(fromSeq, batch);
    }
    /** `audit verify`'s check of a range (verify-records.ts): the kernel's inherited-chain check and tools take it. */
    verifyRecords(from: number, to: number, cpSeqs: Set<number>, onProgress?: (done: number) => void): RangeResult {
      this.#verifier ??= new RecordScan(this.db);
      return this.#verifier.verify(from, to, cpSeqs, 1000, onProgress);
    }
    #verifier: RecordScan | undefined;
    countAudit(): number {
      return this.#reads.count();
    }
    /** Newest first through the records (decoded: the fields are only in the record's bytes), oldest first out. */
    queryAudit(q: AuditQuery): AuditRow[] {
      const limit = q.limit ?? 100;
      const out: AuditRow[] = [];
      let below = Number.POSITIVE_INFINITY;
      while (out.length < limit) {
        const rows = this.#reads.down(below, q.afterSeq ?? Number.NEGATIVE_INFINITY, this.#reads.rows);
        if (rows.length === 0) break;
        for (const r of rows) {
          if (q.persona !== undefined && r.persona !== q.persona) continue;
          if (q.op !== undefined && r.op !== q.op) continue;
          if (q.status !== undefined && r.status !== q.status) continue;
          if (q.since !== undefined && r.time < q.since) continue;
          out.push(r);
          if (out.length === limit) break;
        }
        below = (rows.at(-1) as AuditRow).seq;
      }
      return out.reverse();
    }
    addCheckpoint(c: AuditCheckpoint): void {
      this.#writes.addCheckpoint(c);
    }
    checkpoints(): AuditCheckpoint[] {
      return this.#reads.checkpoints();
    }
  };
}
