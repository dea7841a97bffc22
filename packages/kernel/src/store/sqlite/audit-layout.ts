import type Database from "better-sqlite3";
import { FIELDS, recordBytes } from "../../audit/record.js";
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

/**
 * Moves a column-layout audit table to the record layout in one transaction: each row's record
 * bytes are re-encoded from its columns (the bytes its hash covers), its stored hash kept as it
 * is, so a record changed before the move still fails verify after it. Returns the rows moved.
 */
export function migrateAuditLayout(db: Database.Database, batch = 2000): number {
  if (!hasColumnLayout(db)) return 0;
  return db.transaction(() => {
    db.exec("DROP TABLE IF EXISTS audit_new");
    db.exec(AUDIT_TABLE.replace("audit (", "audit_new ("));
    const read = db.prepare("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?");
    const put = db.prepare("INSERT INTO audit_new (seq, hash, record) VALUES (?, ?, ?)");
    let after = Number.MIN_SAFE_INTEGER;
    let moved = 0;
    for (;;) {
      const rows = read.all(after, batch) as Record<string, unknown>[];
      if (rows.length === 0) break;
      for (const row of rows) put.run(row.seq, row.hash, columnRowBytes(row));
      moved += rows.length;
      after = (rows.at(-1) as { seq: number }).seq;
    }
    db.exec("DROP INDEX IF EXISTS audit_persona; DROP TABLE audit; ALTER TABLE audit_new RENAME TO audit");
    return moved;
  })();
}
