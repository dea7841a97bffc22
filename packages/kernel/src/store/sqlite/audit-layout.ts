import type Database from "better-sqlite3";
import { FIELDS, recordBytes } from "../../audit/record.js";
import { MAX_RECORD_BYTES, type RecordSource } from "../../audit/record-size.js";
import type { AuditRow } from "../types.js";

/**
 * The audit table: each record is kept as the exact bytes its hash covers (prevHash ||
 * canonical CBOR of its fields, audit/record.ts), beside its sequence number and hash. Every
 * reader decodes the fields from those bytes, so nothing shown can differ from what `audit
 * verify` hashed; the kernel binds three values per record instead of 23, with no index to keep.
 */
export const AUDIT_TABLE = "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, record BLOB NOT NULL)";

/** Whether `db`'s audit table has the layout before this one: a column per field. */
export function hasColumnLayout(db: Database.Database): boolean {
  return (db.pragma("table_info(audit)") as { name: string }[]).some((c) => c.name === "persona");
}

/** Column of each field in the column layout. */
const COLUMN: [keyof AuditRow, string][] = [
  ...FIELDS.map(([f]) => [f, f.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] as [keyof AuditRow, string]),
  ["prevHash", "prev_hash"],
];
const KIND = new Map<string, string>(FIELDS.map(([f, k]) => [f, k]));
const REQUIRED = new Set(["seq", "time", "kernel", "session", "persona", "phase"]);

/**
 * A column-layout row's record bytes: what its hash was computed over, for every row the kernel
 * wrote. A row no kernel writes (a value of another type, a required field missing: tampering)
 * becomes an empty record, which hashes to nothing stored: verify reports it as before.
 */
export function columnRowBytes(row: Record<string, unknown>): Buffer {
  const r: Record<string, unknown> = {};
  for (const [f, c] of COLUMN) {
    const v = row[c] ?? null;
    const kind = f === "prevHash" ? "bytes" : KIND.get(f);
    if (v === null) {
      if (REQUIRED.has(f) || f === "prevHash") return Buffer.alloc(0);
    } else if (
      kind === "text"
        ? typeof v !== "string"
        : kind === "uint"
          ? typeof v !== "number" // a fraction or a negative is encoded as it was hashed (the generic encoder)
          : !(v instanceof Uint8Array)
    )
      return Buffer.alloc(0);
    r[f] = v;
  }
  try {
    return recordBytes(r as unknown as AuditRow);
  } catch {
    // A number no encoder writes (a fraction past 2^53): no kernel hashed it.
    return Buffer.alloc(0);
  }
}

/** The SQL function that encodes a column-layout row (registered by {@link columnRecordSource}). */
const FN = "kpip_column_record";

/**
 * The column layout read as the record layout, without moving it: each row's record bytes are
 * {@link columnRowBytes} of its columns, computed by an SQL function registered on `db` (a
 * column an older home lacks reads as null), and its size is the sum of its columns' sizes
 * (SQLite reads no bytes for it), so the readers' size bound applies before anything is encoded.
 */
export function columnRecordSource(db: Database.Database): RecordSource {
  const have = new Set((db.pragma("table_info(audit)") as { name: string }[]).map((c) => c.name));
  const cols = COLUMN.map(([, c]) => (have.has(c) ? c : "NULL"));
  db.function(FN, { deterministic: true, varargs: true }, (...vals: unknown[]) => {
    const row: Record<string, unknown> = {};
    COLUMN.forEach(([, c], i) => {
      row[c] = vals[i];
    });
    return columnRowBytes(row);
  });
  return {
    bytes: `${FN}(${cols.join(", ")})`,
    size: cols
      .filter((c) => c !== "NULL")
      .map((c) => `coalesce(octet_length(${c}), 0)`)
      .join(" + "),
  };
}

/** Most bytes of columns moved in one transaction (the WAL holds about that much before a checkpoint). */
const MOVE_BATCH_BYTES = 16 * 1024 * 1024;

/**
 * Moves a column-layout audit table to the record layout: each row's record bytes are
 * re-encoded from its columns (the bytes its hash covers), its stored hash kept as it is, so a
 * record changed before the move still fails verify after it. The rows are copied into a new
 * table by `INSERT … SELECT` in transactions of at most `batch` rows and about
 * MOVE_BATCH_BYTES (memory holds one row; the WAL one batch, checkpointed as it goes), then
 * one transaction drops the old table and renames the new one: a crash before it leaves the old
 * layout (and a partial new table, rebuilt on the next open), after it the new one. A row whose
 * columns pass MAX_RECORD_BYTES is not encoded: it becomes an empty record, which verify reports.
 * Returns the rows moved. `onBatch` (tests) runs after each committed batch.
 */
export function migrateAuditLayout(db: Database.Database, batch = 2000, onBatch?: (moved: number) => void): number {
  if (!hasColumnLayout(db)) return 0;
  const src = columnRecordSource(db);
  db.exec("DROP TABLE IF EXISTS audit_new");
  db.exec(AUDIT_TABLE.replace("audit (", "audit_new ("));
  const sizes = db.prepare(`SELECT seq, ${src.size} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`).raw(true);
  const move = db.prepare(
    `INSERT INTO audit_new (seq, hash, record) SELECT seq, hash, CASE WHEN ${src.size} <= ${MAX_RECORD_BYTES} THEN ${src.bytes} ELSE x'' END FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq`,
  );
  let after = Number.MIN_SAFE_INTEGER;
  let moved = 0;
  for (;;) {
    const rows = sizes.all(after, batch) as [number, number][];
    if (rows.length === 0) break;
    // The batch ends where its columns pass MOVE_BATCH_BYTES (at least one row).
    let to = (rows[0] as [number, number])[0];
    let bytes = 0;
    for (const [seq, size] of rows) {
      if (bytes > 0 && bytes + size > MOVE_BATCH_BYTES) break;
      bytes += size;
      to = seq;
    }
    // Seqs past 2^53 read back as the same number (only a tampered table has them): the batch
    // could not move past them, so the move stops instead of looping.
    if (to <= after) throw new Error(`the audit table's seq ${to} cannot be read exactly (a tampered seq past 2^53): not moved`);
    moved += db.transaction(() => move.run(after, to).changes)();
    after = to;
    onBatch?.(moved);
  }
  db.transaction(() => {
    // Rows appended since the last batch (none: the mover holds the database), then the switch.
    move.run(after, Number.MAX_SAFE_INTEGER);
    db.exec("DROP INDEX IF EXISTS audit_persona; DROP TABLE audit; ALTER TABLE audit_new RENAME TO audit");
  })();
  return moved;
}
