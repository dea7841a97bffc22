import { recordBytes } from "../../audit/record.js";
import type { RangeResult } from "../../audit/verify.js";
import { RecordScan } from "../../audit/verify-records.js";
import { AuditJournal, AuditJournalError, type JournalBatch } from "../audit-journal.js";
import type { AuditCheckpoint, AuditQuery, AuditRow, AuditStore, DedupeRow } from "../types.js";
import { auditAppender } from "./audit-append.js";
import { AuditReads } from "./audit-read.js";
import type { Row, StoreBase, WithRows } from "./base.js";
import { indexJournalFile } from "./journal-replay.js";

/**
 * Journalled records (and bytes) kept in memory for SQLite at most; past either a commit indexes
 * first, and fails if SQLite does. The log indexes long before (AuditLog: 64 records or 2 ms).
 */
export const MAX_UNINDEXED_ROWS = 16_384;
const MAX_UNINDEXED_BYTES = 32 * 1024 * 1024;

/** The audit journal's side of the store: the kernel opens it; tools beside a kernel never do. */
export interface JournalledAudit {
  useAuditJournal(path: string): number;
  readonly auditUnindexed: number;
}

/** The audit chain, its signed checkpoints, and the dedupe answers committed with it. */
export function AuditRows<B extends StoreBase>(Base: B): WithRows<B, Omit<AuditStore, "offlineJournal"> & JournalledAudit> {
  return class AuditRows extends Base implements Omit<AuditStore, "offlineJournal">, JournalledAudit {
    /** Every read of the table (audit-read.ts, shared with the audit reader). */
    readonly #reads = new AuditReads(this.db);
    /** Every write: a commit of audit rows with what they carry, and single dedupe and checkpoint rows. */
    readonly #writes = auditAppender(this.db);

    /** The audit journal, once the kernel opened it (useAuditJournal): commits go there first. */
    #journal: AuditJournal | undefined;
    /** Batches in the journal and not yet in SQLite, oldest first. */
    #unindexed: JournalBatch[] = [];
    #unindexedRows = 0;
    #unindexedDedupe = 0;
    #unindexedBytes = 0;

    /**
     * Makes `path` this store's audit journal, for the one kernel that holds the home (never for
     * a tool's connection beside it): first indexes the batches a killed kernel left there
     * (throws AuditJournalError when the file is not a journal continuing this database's
     * chain), then empties it. Returns the records indexed.
     */
    useAuditJournal(path: string): number {
      if (this.#journal) throw new AuditJournalError("the audit journal is already open");
      const records = indexJournalFile(this.db, path, this.#writes.append, this.#reads);
      const journal = new AuditJournal(path);
      this.#emptyJournal(journal);
      this.#journal = journal;
      return records;
    }
    /** Records journalled and not yet indexed. */
    get auditUnindexed(): number {
      return this.#unindexedRows;
    }
    indexAudit(): void {
      const q = this.#unindexed;
      if (q.length === 0) return;
      // Inside a caller's transaction this would be a savepoint its rollback could undo, after the
      // queue (and maybe the journal) let the batches go.
      if (this.db.inTransaction)
        throw new AuditJournalError("journalled audit records cannot be indexed inside another transaction");
      if (q.length === 1) {
        const b = q[0] as JournalBatch;
        this.#writes.append(b.rows, b.dedupe, b.journalUpTo, b.checkpoints);
      } else {
        // Every batch waiting, as one commit: its rows in the multi-row INSERTs, one transaction.
        const rows: JournalBatch["rows"][number][] = [];
        const dedupe: DedupeRow[] = [];
        const checkpoints: AuditCheckpoint[] = [];
        let journalUpTo = 0;
        for (const b of q) {
          for (const r of b.rows) rows.push(r);
          for (const d of b.dedupe) dedupe.push(d);
          for (const c of b.checkpoints) checkpoints.push(c);
          if (b.journalUpTo > journalUpTo) journalUpTo = b.journalUpTo;
        }
        this.#writes.append(rows, dedupe, journalUpTo, checkpoints);
      }
      this.#unindexed = [];
      this.#unindexedRows = 0;
      this.#unindexedDedupe = 0;
      this.#unindexedBytes = 0;
      const journal = this.#journal;
      if (journal?.full) this.#emptyJournal(journal);
    }
    /**
     * Before a read or write of the dedupe table: only when a waiting batch carries dedupe rows (a
     * new request with effects looks its key up there, and must not pay for an index of records).
     */
    #settleDedupe(): void {
      if (this.#unindexedDedupe > 0 && !this.db.inTransaction) this.indexAudit();
    }
    /** Before any read or write of the tables the journal feeds: SQLite holds every committed batch. */
    #settle(): void {
      // Inside a caller's transaction a read sees SQLite as it is (indexAudit would refuse).
      if (this.#unindexed.length > 0 && !this.db.inTransaction) this.indexAudit();
    }

    auditHashAt(seq: number): Uint8Array | undefined {
      this.#settle();
      return this.#reads.hashAt(seq);
    }
    appendAudit(rows: AuditRow[], dedupe: DedupeRow[] = [], journalUpTo = 0, checkpoints: AuditCheckpoint[] = []): void {
      const journal = this.#journal;
      if (!journal) return this.#writes.append(rows, dedupe, journalUpTo, checkpoints);
      // SQLite that keeps failing holds the records back: the backlog in memory stays bounded.
      if (this.#unindexedRows >= MAX_UNINDEXED_ROWS || this.#unindexedBytes >= MAX_UNINDEXED_BYTES) this.indexAudit();
      // The log hands over rows with their hashed bytes; one built elsewhere is encoded here, once.
      for (const r of rows) r.record ??= recordBytes(r);
      const b: JournalBatch = { rows: rows as JournalBatch["rows"], dedupe, journalUpTo, checkpoints };
      this.#unindexedBytes += journal.append(b);
      this.#unindexedRows += rows.length;
      this.#unindexedDedupe += dedupe.length;
      this.#unindexed.push(b);
    }
    firstAuditSeq(): number | undefined {
      this.#settle();
      return this.#reads.first();
    }
    pruneAudit(throughSeq: number, base?: AuditCheckpoint): number {
      this.#settle();
      return this.db.transaction(() => {
        if (base) this.addCheckpoint(base);
        const n = this.prep("DELETE FROM audit WHERE seq <= ?").run(throughSeq).changes;
        this.prep("DELETE FROM audit_checkpoints WHERE seq < ?").run(throughSeq);
        return n;
      })();
    }
    lookupDedupe(key: string, now: number): DedupeRow | undefined {
      this.#settleDedupe();
      const r = this.prep("SELECT * FROM dedupe WHERE key = ? AND expires >= ?").get(key, now) as Row | undefined;
      return r && { key, hash: r.hash as Uint8Array, response: r.response as Uint8Array, expires: r.expires as number };
    }
    putDedupe(d: DedupeRow): void {
      this.#settleDedupe();
      this.#writes.putDedupe(d);
    }
    pruneDedupe(now: number, max?: number): number {
      this.#settleDedupe();
      if (max === undefined) return this.prep("DELETE FROM dedupe WHERE expires < ?").run(now).changes;
      // Rows are appended in expiry order: the oldest by rowid, not a scan of the table.
      return this.prep("DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe ORDER BY rowid LIMIT ?) AND expires < ?").run(
        max,
        now,
      ).changes;
    }
    dedupeEnd(): number {
      this.#settleDedupe();
      return ((this.prep("SELECT max(rowid) AS n FROM dedupe").get() as Row).n as number | null) ?? 0;
    }
    pruneDedupeRange(now: number, after: number, through: number, max: number): { deleted: number; last: number } {
      this.#settleDedupe();
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
      this.#settle();
      return this.#reads.last();
    }
    scanAudit(fromSeq: number, batch: number): AuditRow[] {
      this.#settle();
      return this.#reads.up(fromSeq, batch);
    }
    /** `audit verify`'s check of a range (verify-records.ts): the kernel's inherited-chain check and tools take it. */
    verifyRecords(from: number, to: number, cpSeqs: Set<number>, onProgress?: (done: number) => void): RangeResult {
      this.#settle();
      this.#verifier ??= new RecordScan(this.db);
      return this.#verifier.verify(from, to, cpSeqs, 1000, onProgress);
    }
    #verifier: RecordScan | undefined;
    countAudit(): number {
      this.#settle();
      return this.#reads.count();
    }
    /** Newest first through the records (decoded: the fields are only in the record's bytes), oldest first out. */
    queryAudit(q: AuditQuery): AuditRow[] {
      this.#settle();
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
      this.#settle();
      this.#writes.addCheckpoint(c);
    }
    checkpoints(): AuditCheckpoint[] {
      this.#settle();
      return this.#reads.checkpoints();
    }
    override settleAudit(): void {
      this.#settle();
    }
    /** Indexes what is journalled, empties the journal and closes it, then the database. */
    override close(): void {
      const journal = this.#journal;
      if (journal && this.db.open) {
        try {
          this.indexAudit();
          this.#emptyJournal(journal);
        } catch {
          // What SQLite could not take stays in the journal: the next start indexes it.
        } finally {
          journal.close();
          this.#journal = undefined;
        }
      }
      super.close();
    }
    /**
     * Empties the journal once everything in it is indexed, after a sync of the WAL: an OS crash
     * must not keep the emptied journal and lose the commits that held its records.
     */
    #emptyJournal(journal: AuditJournal): void {
      // Nothing to let go (a clean stop's journal at start, a stop with nothing since): no sync.
      if (journal.bytes === 0) return;
      this.syncWal();
      journal.empty();
    }
  };
}
