import { decodeRecord } from "../../audit/record-decode.js";
import type { RangeResult } from "../../audit/verify.js";
import { RecordScan } from "../../audit/verify-records.js";
import type { AuditCheckpoint, AuditQuery, AuditRow, AuditStore, DedupeRow } from "../types.js";
import { auditAppender } from "./audit-append.js";
import { type Row, rowReader, type Statement, type StoreBase, type WithRows } from "./base.js";

/** The audit chain, its signed checkpoints, and the dedupe answers committed with it. */
export function AuditRows<B extends StoreBase>(Base: B): WithRows<B, Omit<AuditStore, "offlineJournal">> {
  return class AuditRows extends Base implements Omit<AuditStore, "offlineJournal"> {
    readonly #last: Statement = this.db.prepare("SELECT seq, hash, record FROM audit ORDER BY seq DESC LIMIT 1").raw(true);
    readonly #scan: Statement = this.db
      .prepare("SELECT seq, hash, record FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?")
      .raw(true);
    readonly #scanDown: Statement = this.db
      .prepare("SELECT seq, hash, record FROM audit WHERE seq < ? AND seq > ? ORDER BY seq DESC LIMIT ?")
      .raw(true);
    readonly #count: Statement = this.db.prepare("SELECT count(*) AS n FROM audit");
    readonly #addCheckpoint: Statement = this.db.prepare(
      "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, kernel, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
    );
    readonly #checkpoints: Statement = this.db.prepare("SELECT * FROM audit_checkpoints ORDER BY seq");
    /** One commit: audit rows, the dedupe answers they carry, the journal entries they replace, checkpoints. */
    readonly #appendTx = auditAppender(this.db);

    auditHashAt(seq: number): Uint8Array | undefined {
      const r = this.prep("SELECT hash FROM audit WHERE seq = ?").get(seq) as { hash: Uint8Array } | undefined;
      return r?.hash;
    }
    appendAudit(rows: AuditRow[], dedupe: DedupeRow[] = [], journalUpTo = 0, checkpoints: AuditCheckpoint[] = []): void {
      this.#appendTx(rows, dedupe, journalUpTo, checkpoints);
    }
    firstAuditSeq(): number | undefined {
      return (this.prep("SELECT min(seq) AS s FROM audit").get() as { s: number | null }).s ?? undefined;
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
      this.prep("INSERT OR REPLACE INTO dedupe (key, hash, response, expires) VALUES (?, ?, ?, ?)").run(
        d.key,
        Buffer.from(d.hash),
        Buffer.from(d.response),
        d.expires,
      );
    }
    pruneDedupe(now: number, max?: number): number {
      if (max === undefined) return this.prep("DELETE FROM dedupe WHERE expires < ?").run(now).changes;
      // Rows are appended in expiry order: the oldest by rowid, not a scan of the table.
      return this.prep("DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe ORDER BY rowid LIMIT ?) AND expires < ?").run(
        max,
        now,
      ).changes;
    }
    lastAudit(): AuditRow | undefined {
      const r = this.#last.get() as unknown[] | undefined;
      return r && fromRow(r);
    }
    scanAudit(fromSeq: number, batch: number): AuditRow[] {
      return (this.#scan.all(fromSeq, batch) as unknown[][]).map(fromRow);
    }
    /** `audit verify`'s check of a range (verify-records.ts): the kernel's inherited-chain check and tools take it. */
    verifyRecords(from: number, to: number, cpSeqs: Set<number>, onProgress?: (done: number) => void): RangeResult {
      this.#verifier ??= new RecordScan(this.db);
      return this.#verifier.verify(from, to, cpSeqs, 1000, onProgress);
    }
    #verifier: RecordScan | undefined;
    countAudit(): number {
      return (this.#count.get() as Row).n as number;
    }
    /** Newest first through the records (decoded: the fields are only in the record's bytes), oldest first out. */
    queryAudit(q: AuditQuery): AuditRow[] {
      const limit = q.limit ?? 100;
      const out: AuditRow[] = [];
      let below = Number.MAX_SAFE_INTEGER;
      while (out.length < limit) {
        const rows = this.#scanDown.all(below, q.afterSeq ?? Number.MIN_SAFE_INTEGER, 1000) as unknown[][];
        if (rows.length === 0) break;
        for (const raw of rows) {
          const r = fromRow(raw);
          if (q.persona !== undefined && r.persona !== q.persona) continue;
          if (q.op !== undefined && r.op !== q.op) continue;
          if (q.status !== undefined && r.status !== q.status) continue;
          if (q.since !== undefined && r.time < q.since) continue;
          out.push(r);
          if (out.length === limit) break;
        }
        below = (rows.at(-1) as unknown[])[0] as number;
      }
      return out.reverse();
    }
    addCheckpoint(c: AuditCheckpoint): void {
      this.#addCheckpoint.run(c.seq, Buffer.from(c.hash), c.time, c.kernel, Buffer.from(c.publicKey), Buffer.from(c.signature));
    }
    checkpoints(): AuditCheckpoint[] {
      return (this.#checkpoints.all() as Row[]).map(toCheckpoint);
    }
  };
}

/** A row (seq, hash, record) as its record, decoded from the bytes. */
const fromRow = (r: unknown[]): AuditRow => decodeRecord(r[0] as number, r[1] as Uint8Array, r[2] as Uint8Array);

/** A signed checkpoint as stored (also read by the audit reader, on a copy of a home's database). */
export const toCheckpoint = rowReader<AuditCheckpoint>({
  seq: true,
  hash: true,
  time: true,
  kernel: true,
  publicKey: true,
  signature: true,
});
