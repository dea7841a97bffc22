import { generateKeyPairSync } from "node:crypto";
import { copyFileSync, cpSync, existsSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { sha256 } from "@kpip/protocol";
import Database from "better-sqlite3";
import { type AuditEntry, AuditLog } from "../src/audit/log.js";
import { recordBytes } from "../src/audit/record.js";
import { decodeRecordStrict, recordSeq } from "../src/audit/record-decode.js";
import { SegmentIndex } from "../src/audit/verify-segments.js";
import {
  AUDIT_SEGMENT_DIR,
  type IndexSpan,
  listSegments,
  RETAINED_THROUGH_KEY,
  segmentName,
} from "../src/store/audit-segments.js";
import { SEGMENTS_SENTINEL } from "../src/store/sqlite/audit.js";
import { SqliteStore } from "../src/store/sqlite.js";
import type { AuditRow } from "../src/store/types.js";

/**
 * A fresh audit file at `path` holding `n` records, `record(i)` for i = 1..n, appended the way a
 * busy kernel does (batched, awaited every 5000). For the verify tests and `bench/ab/verify`.
 */
export async function fillAuditFile(
  path: string,
  n: number,
  record: (i: number) => AuditEntry,
  options: { batchMax: number; checkpointEvery: number; segments?: boolean },
  kernel = "kv",
): Promise<void> {
  const store = new SqliteStore(path);
  // In segment files beside the database, as a kernel writes (else in its `audit` table, as before segments).
  if (options.segments) {
    mkdirSync(dirname(path), { recursive: true });
    store.useAuditSegments(join(dirname(path), AUDIT_SEGMENT_DIR));
  }
  const log = new AuditLog(store, kernel, generateKeyPairSync("ed25519").privateKey, options);
  try {
    let last: Promise<void> = Promise.resolve();
    for (let i = 1; i <= n; i++) {
      last = log.append(record(i));
      if (i % 5000 === 0) await last;
    }
    await last;
  } finally {
    log.close();
    store.close();
  }
}

/** A copy of the audit file `source` in `dir`, named after `name`, with `sql` applied (or `sql(db)` run). */
export function tamperedCopy(source: string, dir: string, name: string, sql: string | ((db: Database.Database) => void)): string {
  const segments = join(dirname(source), AUDIT_SEGMENT_DIR);
  if (existsSync(segments)) {
    // A home of segment files: the database and its segments copied to a directory of their own,
    // tampered as rows, and moved back into segments (unsegment, resegment).
    const home = join(dir, name.replace(/\W+/g, "-"));
    mkdirSync(home, { recursive: true });
    const p = join(home, "kernel.db");
    copyFileSync(source, p);
    cpSync(segments, join(home, AUDIT_SEGMENT_DIR), { recursive: true });
    unsegment(p);
    applySql(p, sql);
    resegment(p);
    return p;
  }
  const p = join(dir, `${name.replace(/\W+/g, "-")}.db`);
  copyFileSync(source, p);
  applySql(p, sql);
  return p;
}

/** Runs `sql` (or `sql(db)`) on the database at `p`. */
function applySql(p: string, sql: string | ((db: Database.Database) => void)): void {
  const db = new Database(p);
  try {
    if (typeof sql === "string") db.exec(sql);
    else sql(db);
  } finally {
    db.close();
  }
}

/** The audit table of kpip before the record layout: a column per field, and the persona index. */
export const COLUMN_LAYOUT_DDL = `CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, kernel TEXT NOT NULL, session TEXT NOT NULL,
  persona TEXT NOT NULL, phase TEXT NOT NULL, request_id INTEGER, op TEXT, target TEXT,
  intent_hash BLOB, intent BLOB, caps TEXT, status TEXT, error_class TEXT, message TEXT,
  duration_us INTEGER, traceparent TEXT, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
  execution TEXT, domain TEXT, measurements BLOB, detail TEXT);
CREATE INDEX audit_persona ON audit (persona, seq);`;

const COLUMNS = [
  "seq",
  "time",
  "kernel",
  "session",
  "persona",
  "phase",
  "request_id",
  "op",
  "target",
  "intent_hash",
  "intent",
  "caps",
  "status",
  "error_class",
  "message",
  "duration_us",
  "traceparent",
  "prev_hash",
  "hash",
  "execution",
  "domain",
  "measurements",
  "detail",
];

/**
 * Rewrites the audit table of the database file at `path` in the column layout (as a kpip before
 * the record layout left it), each record's fields in its columns: a home made by the old schema.
 */
export function toColumnLayout(path: string): void {
  const store = new SqliteStore(path);
  const rows = store.scanAudit(1, Number.MAX_SAFE_INTEGER);
  const first = store.firstAuditSeq();
  store.close();
  const db = new Database(path);
  try {
    db.transaction(() => {
      db.exec(`DROP TABLE audit; ${COLUMN_LAYOUT_DDL}`);
      const ins = db.prepare(`INSERT INTO audit (${COLUMNS.join(", ")}) VALUES (${COLUMNS.map(() => "?").join(", ")})`);
      for (const r of rows) {
        const o = r as unknown as Record<string, unknown>;
        ins.run(...COLUMNS.map((c) => o[c.replace(/_([a-z])/g, (_, x: string) => x.toUpperCase())] ?? null));
      }
    })();
    if (first !== undefined && rows[0]?.seq !== first) throw new Error("toColumnLayout: records were not read from the first");
  } finally {
    db.close();
  }
}

/**
 * Tampering with a record of the record layout as an attacker with the file would: its fields
 * decoded from the stored bytes, changed by `change`, and written back as the record's bytes
 * (same previous hash; the stored hash is left as it is unless `rehash`, which also returns it).
 */
export function rewriteRecord(db: Database.Database, seq: number, change: (r: AuditRow) => void, rehash = false): Buffer {
  const row = db.prepare("SELECT hash, record FROM audit WHERE seq = ?").get(seq) as { hash: Buffer; record: Buffer };
  // Decoded as the record it is (a row moved to another seq carries its own).
  const r = decodeRecordStrict(recordSeq(row.record) ?? seq, row.hash, row.record);
  change(r);
  const bytes = recordBytes(r);
  const hash = rehash ? sha256(bytes) : row.hash;
  db.prepare("UPDATE audit SET record = ?, hash = ? WHERE seq = ?").run(bytes, hash, seq);
  return hash;
}

/** Rewrites the chain from `fromSeq` on so every link and hash is consistent again (an attacker without the kernel key). */
export function rechain(db: Database.Database, fromSeq: number): void {
  const seqs = (db.prepare("SELECT seq FROM audit WHERE seq >= ? ORDER BY seq").raw(true).all(fromSeq) as [number][]).map(
    ([s]) => s,
  );
  let prev = (db.prepare("SELECT hash FROM audit WHERE seq = ?").get(fromSeq - 1) as { hash: Buffer } | undefined)?.hash;
  for (const s of seqs) {
    const p = prev ?? Buffer.alloc(32);
    prev = rewriteRecord(db, s, (r) => (r.prevHash = p), true);
  }
}

/**
 * Moves a stopped home's audit out of its segment files into the `audit` table (the layout
 * before segments), bytes as they are, so a test can tamper with rows by SQL; {@link resegment}
 * moves them back the way a kernel migrates an older home: the tampering ends up in the
 * segments' bytes, where verify must find it. A home not in segments is left as it is.
 */
export function unsegment(dbPath: string): void {
  const dir = join(dirname(dbPath), AUDIT_SEGMENT_DIR);
  const db = new Database(dbPath);
  try {
    if (db.prepare("SELECT value FROM meta WHERE key = 'audit_segments'").pluck(true).get() !== "1") return;
    const index = new SegmentIndex(db, dir);
    const retained = index.retained();
    const ins = db.prepare("INSERT INTO audit (seq, hash, record) VALUES (?, ?, ?)");
    db.transaction(() => {
      // A home from before segments never had the sentinel row.
      db.prepare("DELETE FROM audit WHERE seq = 0 AND record = ?").run(Buffer.from(SEGMENTS_SENTINEL, "utf8"));
      let spans = index.from(Number.MIN_SAFE_INTEGER);
      while (spans.length > 0) {
        for (const sp of spans) {
          const read = index.read(sp);
          if (read.damage) throw new Error(`unsegment: ${read.damage}`);
          for (const r of read.rows) if (r.seq > retained) ins.run(r.seq, Buffer.from(r.hash), Buffer.from(r.record));
        }
        spans = index.after((spans.at(-1) as IndexSpan).first);
      }
      db.exec("DELETE FROM audit_batches");
      db.prepare("DELETE FROM meta WHERE key IN (?, ?)").run("audit_segments", RETAINED_THROUGH_KEY);
    })();
    index.close();
    for (const seg of listSegments(dir)) unlinkSync(join(dir, segmentName(seg)));
  } finally {
    db.close();
  }
}

/** The `audit` table's rows moved (back) to segment files, as a kernel's start does (see {@link unsegment}). */
export function resegment(dbPath: string): void {
  const s = new SqliteStore(dbPath);
  try {
    s.useAuditSegments(join(dirname(dbPath), AUDIT_SEGMENT_DIR));
  } finally {
    s.close();
  }
}

/**
 * A stopped home's store after `tamper` ran on its audit as rows of the `audit` table
 * (unsegment, tamper, resegment): open on the segments, for verify and the readers.
 */
export function tamperedStore(dbPath: string, tamper: (s: SqliteStore) => void): SqliteStore {
  unsegment(dbPath);
  const s = new SqliteStore(dbPath);
  try {
    tamper(s);
  } finally {
    s.close();
  }
  resegment(dbPath);
  return new SqliteStore(dbPath);
}

/** Whether a home's audit is in segment files. */
export function hasSegments(dbPath: string): boolean {
  return existsSync(join(dirname(dbPath), AUDIT_SEGMENT_DIR));
}

/** Where record `seq`'s bytes are in its segment file (its length field is the 4 bytes before), and their length. */
export function recordInSegment(dbPath: string, seq: number): { file: string; at: number; length: number } {
  const dir = join(dirname(dbPath), AUDIT_SEGMENT_DIR);
  const db = new Database(dbPath, { readonly: true });
  try {
    const index = new SegmentIndex(db, dir);
    const span = index.from(seq, 1)[0];
    const row = span && index.read(span).rows.find((r) => r.seq === seq);
    index.close();
    if (!span || !row) throw new Error(`record ${seq} is in no segment`);
    return { file: join(dir, segmentName(span.segment)), at: span.offset + row.at, length: row.record.length };
  } finally {
    db.close();
  }
}
