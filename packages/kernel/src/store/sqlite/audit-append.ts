import type Database from "better-sqlite3";
import { recordBytes } from "../../audit/record.js";
import type { JournalRecord } from "../audit-journal.js";
import type { AuditCheckpoint, AuditRow, DedupeRow } from "../types.js";
import type { Statement } from "./base.js";

/**
 * Most records one INSERT statement binds (3 parameters each). A statement per record cost
 * ~1 µs of CPU per record in the call into SQLite and the statement's step; one statement
 * for 64 records roughly halves the insert's share of a commit (docs/architecture.md).
 */
export const ROWS_PER_INSERT = 64;

/** Appends one commit: audit rows, the dedupe answers they carry, the journal entries they replace, checkpoints. */
export type AuditAppend = (
  rows: readonly (AuditRow | JournalRecord)[],
  dedupe: readonly DedupeRow[],
  journalUpTo: number,
  cps: readonly AuditCheckpoint[],
) => void;

/**
 * The audit chain's commit on `db`. Rows go in with one multi-row INSERT per
 * {@link ROWS_PER_INSERT} records. A commit that is only rows and fits one statement (the
 * common one: a request's intent and outcome at one in flight) runs that statement alone:
 * SQLite makes a lone statement its own transaction, as atomic and as durable as
 * BEGIN…COMMIT around it, without the two extra statement steps; anything larger is one
 * explicit transaction as before. Its dedupe and checkpoint statements serve the store's single
 * writes of those rows too.
 */
export function auditAppender(db: Database.Database): {
  append: AuditAppend;
  putDedupe: (d: DedupeRow, at?: number) => void;
  addCheckpoint: (c: AuditCheckpoint) => void;
} {
  /** The INSERT of n rows and its parameter array at index n, made when first needed (at most ROWS_PER_INSERT). */
  const inserts: { st: Statement; p: unknown[] }[] = [];
  const insertOf = (n: number) => {
    let i = inserts[n];
    if (!i) {
      const values = `${"(?, ?, ?), ".repeat(n - 1)}(?, ?, ?)`;
      i = { st: db.prepare(`INSERT INTO audit (seq, hash, record) VALUES ${values}`), p: new Array<unknown>(3 * n) };
      inserts[n] = i;
    }
    return i;
  };
  const insert = (rows: readonly (AuditRow | JournalRecord)[], from: number, n: number) => {
    const { st, p } = insertOf(n);
    for (let j = 0; j < n; j++) {
      const r = rows[from + j] as AuditRow | JournalRecord;
      p[3 * j] = r.seq;
      p[3 * j + 1] = r.hash;
      // The record's bytes as the log hashed them (encoded again only for a row built elsewhere).
      p[3 * j + 2] = r.record ?? recordBytes(r as AuditRow);
    }
    try {
      st.run(p);
    } finally {
      // The array is reused: it keeps no record alive between commits.
      p.fill(null);
    }
  };
  const insertAll = (rows: readonly (AuditRow | JournalRecord)[]) => {
    let i = 0;
    for (; rows.length - i >= ROWS_PER_INSERT; i += ROWS_PER_INSERT) insert(rows, i, ROWS_PER_INSERT);
    if (i < rows.length) insert(rows, i, rows.length - i);
  };
  const dedupeRow = db.prepare(
    "INSERT OR REPLACE INTO dedupe (key, hash, response, expires, intent_seq, after_seq, detail, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
  );
  const dropJournal = db.prepare("DELETE FROM offline_journal WHERE id <= ?");
  const checkpointRow = db.prepare(
    "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, kernel, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
  );
  // SQLite binds any Uint8Array as a blob (it copies the bytes): no Buffer copy first. `at`: the
  // last record of the commit that carries an answer kept with its outcome record, as its
  // after_seq: every row says where in the log it was written (SqliteStore.effectAnswersSince).
  const putDedupe = (d: DedupeRow, at?: number) =>
    dedupeRow.run(
      d.key,
      d.hash,
      d.response,
      d.expires,
      d.intentSeq ?? null,
      d.afterSeq ?? at ?? null,
      d.detail ?? null,
      d.revoked ? JSON.stringify(d.revoked) : null,
    );
  const addCheckpoint = (c: AuditCheckpoint) => checkpointRow.run(c.seq, c.hash, c.time, c.kernel, c.publicKey, c.signature);
  const transaction = db.transaction((...[rows, dedupe, journalUpTo, cps]: Parameters<AuditAppend>) => {
    insertAll(rows);
    const at = rows.at(-1)?.seq;
    for (const d of dedupe) putDedupe(d, at);
    if (journalUpTo > 0) dropJournal.run(journalUpTo);
    for (const c of cps) addCheckpoint(c);
  });
  const append: AuditAppend = (rows, dedupe, journalUpTo, cps) => {
    if (rows.length <= ROWS_PER_INSERT && dedupe.length === 0 && journalUpTo <= 0 && cps.length === 0) {
      if (rows.length > 0) insert(rows, 0, rows.length);
      return;
    }
    transaction(rows, dedupe, journalUpTo, cps);
  };
  return { append, putDedupe, addCheckpoint };
}
