import type { AuditCheckpoint, AuditQuery, AuditRow, AuditStore, DedupeRow } from "../types.js";
import { type Row, rowReader, type Statement, type StoreBase, type WithRows } from "./base.js";

/** The audit chain, its signed checkpoints, and the dedupe answers committed with it. */
export function AuditRows<B extends StoreBase>(Base: B): WithRows<B, Omit<AuditStore, "offlineJournal">> {
  return class AuditRows extends Base implements Omit<AuditStore, "offlineJournal"> {
    readonly #append: Statement = this.db.prepare(
      "INSERT INTO audit (seq, time, kernel, session, persona, phase, request_id, op, target, intent_hash, intent, caps, status, error_class, message, duration_us, traceparent, prev_hash, hash, execution, domain, measurements, detail) " +
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    readonly #last: Statement = this.db.prepare("SELECT * FROM audit ORDER BY seq DESC LIMIT 1");
    // Raw rows (arrays): scanning is most of `audit verify`, and arrays come out of SQLite
    // almost twice as fast as objects.
    readonly #scan: Statement = this.db
      .prepare(
        "SELECT seq, time, kernel, session, persona, phase, request_id, op, target, intent_hash, intent, caps, status, error_class, message, duration_us, traceparent, prev_hash, hash, execution, domain, measurements, detail FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?",
      )
      .raw(true);
    readonly #count: Statement = this.db.prepare("SELECT count(*) AS n FROM audit");
    readonly #addCheckpoint: Statement = this.db.prepare(
      "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, kernel, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
    );
    readonly #checkpoints: Statement = this.db.prepare("SELECT * FROM audit_checkpoints ORDER BY seq");
    readonly #appendTx = this.#appendTransaction();

    /** One commit: audit rows, the dedupe answers they carry, the journal entries they replace, checkpoints. */
    #appendTransaction() {
      const putDedupe = this.db.prepare("INSERT OR REPLACE INTO dedupe (key, hash, response, expires) VALUES (?, ?, ?, ?)");
      const dropJournal = this.db.prepare("DELETE FROM offline_journal WHERE id <= ?");
      const putCheckpoint = this.#addCheckpoint;
      return this.db.transaction((rows: AuditRow[], dedupe: DedupeRow[], journalUpTo: number, cps: AuditCheckpoint[]) => {
        const s = this.#append;
        // Positional parameters: binding by name costs a property lookup per column per row.
        for (const r of rows) {
          s.run(
            r.seq,
            r.time,
            r.kernel,
            r.session,
            r.persona,
            r.phase,
            r.requestId,
            r.op,
            r.target,
            r.intentHash,
            r.intent,
            r.caps,
            r.status,
            r.errorClass,
            r.message,
            r.durationUs,
            r.traceparent,
            r.prevHash,
            r.hash,
            r.execution,
            r.domain,
            r.measurements,
            r.detail ?? null,
          );
        }
        for (const d of dedupe) putDedupe.run(d.key, Buffer.from(d.hash), Buffer.from(d.response), d.expires);
        if (journalUpTo > 0) dropJournal.run(journalUpTo);
        for (const c of cps)
          putCheckpoint.run(c.seq, Buffer.from(c.hash), c.time, c.kernel, Buffer.from(c.publicKey), Buffer.from(c.signature));
      });
    }

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
      const r = this.#last.get() as Row | undefined;
      return r && toAudit(r);
    }
    scanAudit(fromSeq: number, batch: number): AuditRow[] {
      return (this.#scan.all(fromSeq, batch) as unknown[][]).map((a) => ({
        seq: a[0] as number,
        time: a[1] as number,
        kernel: a[2] as string,
        session: a[3] as string,
        persona: a[4] as string,
        phase: a[5] as AuditRow["phase"],
        requestId: a[6] as number | null,
        op: a[7] as string | null,
        target: a[8] as string | null,
        intentHash: a[9] as Uint8Array | null,
        intent: a[10] as Uint8Array | null,
        caps: a[11] as string | null,
        status: a[12] as string | null,
        errorClass: a[13] as string | null,
        message: a[14] as string | null,
        durationUs: a[15] as number | null,
        traceparent: a[16] as string | null,
        prevHash: a[17] as Uint8Array,
        hash: a[18] as Uint8Array,
        execution: a[19] as string | null,
        domain: a[20] as string | null,
        measurements: a[21] as Uint8Array | null,
        detail: (a[22] as string | null) ?? null,
      }));
    }
    countAudit(): number {
      return (this.#count.get() as Row).n as number;
    }
    queryAudit(q: AuditQuery): AuditRow[] {
      const where: string[] = [];
      const args: unknown[] = [];
      if (q.persona !== undefined) where.push("persona = ?") && args.push(q.persona);
      if (q.op !== undefined) where.push("op = ?") && args.push(q.op);
      if (q.status !== undefined) where.push("status = ?") && args.push(q.status);
      if (q.since !== undefined) where.push("time >= ?") && args.push(q.since);
      if (q.afterSeq !== undefined) where.push("seq > ?") && args.push(q.afterSeq);
      const sql = `SELECT * FROM audit ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq DESC LIMIT ?`;
      args.push(q.limit ?? 100);
      return (this.prep(sql).all(...args) as Row[]).map(toAudit).reverse();
    }
    addCheckpoint(c: AuditCheckpoint): void {
      this.#addCheckpoint.run(c.seq, Buffer.from(c.hash), c.time, c.kernel, Buffer.from(c.publicKey), Buffer.from(c.signature));
    }
    checkpoints(): AuditCheckpoint[] {
      return (this.#checkpoints.all() as Row[]).map(toCheckpoint);
    }
  };
}

const toAudit = rowReader<AuditRow>({
  seq: true,
  time: true,
  kernel: true,
  session: true,
  persona: true,
  phase: true,
  requestId: true,
  op: true,
  target: true,
  intentHash: true,
  intent: true,
  caps: true,
  status: true,
  errorClass: true,
  message: true,
  durationUs: true,
  traceparent: true,
  execution: true,
  domain: true,
  measurements: true,
  detail: true,
  prevHash: true,
  hash: true,
});

/** A signed checkpoint as stored (also read by the audit reader, on a copy of a home's database). */
export const toCheckpoint = rowReader<AuditCheckpoint>({
  seq: true,
  hash: true,
  time: true,
  kernel: true,
  publicKey: true,
  signature: true,
});
