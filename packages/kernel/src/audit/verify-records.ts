import * as crypto from "node:crypto";
import type Database from "better-sqlite3";
import { PREV_HASH_BYTES, recordSeq } from "./record-seq.js";
import {
  aloneRecordSql,
  type BatchShape,
  batchRecordSql,
  batchShape,
  boundedHashSql,
  MAX_RECORD_BYTES,
  oversizeReason,
  type RecordSource,
  STORED_RECORD,
} from "./record-size.js";
import type { RangeResult } from "./verify.js";

type OneShot = (algorithm: string, data: Uint8Array, encoding: "hex") => string;
const oneShot = (crypto as unknown as { hash?: OneShot }).hash;
/** SHA-256 as lowercase hex: Node's one-shot hash where it has one (20.12+), else a Hash object. */
const sha256Hex: (data: Uint8Array) => string = oneShot
  ? (data) => oneShot("sha256", data, "hex")
  : (data) => crypto.createHash("sha256").update(data).digest("hex");

const LINK_BROKEN = "previous-hash link is broken (a record before it was changed, removed or reordered)";

/**
 * `audit verify`'s scan of the audit table: each row is its sequence number, its hash and the
 * exact bytes the hash covers (store/sqlite/audit-layout.ts), so a record is checked by one
 * SHA-256 over what is stored, its first 32 bytes against the previous record's hash, and the
 * sequence number its bytes carry against the row's. Every reader shows fields decoded from
 * these bytes, so nothing shown is left unchecked. No record is decoded here.
 */
export class RecordScan {
  private readonly scan: Database.Statement;
  private readonly one: Database.Statement;
  private readonly rows: number;

  /**
   * `src`: the record's bytes and size in SQL (store/sqlite/audit-layout.ts: the stored bytes, or
   * an old home's columns encoded); `shape`: the batches (record-size.ts).
   */
  constructor(db: Database.Database, src: RecordSource = STORED_RECORD, shape: BatchShape = batchShape()) {
    this.rows = shape.rows;
    // The hash as lowercase hex text (a string costs far less than a Buffer per row); a hash
    // that is not a hash-sized blob reads as NULL, never as the hex of some other value's bytes.
    // The record's bytes only up to the batch's record size (SQLite tells the size without reading
    // them); a larger record (NULL here) is read alone, one over MAX_RECORD_BYTES never.
    this.scan = db
      .prepare(
        `SELECT seq, ${boundedHashSql("lower(hex(hash))")}, ${batchRecordSql(src, shape.recordBytes)}
        FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?`,
      )
      .raw(true);
    this.one = db.prepare(aloneRecordSql(src)).raw(true);
  }

  /**
   * Checks records `from`..`to` as {@link verifyRange} does (contiguous, linked within the
   * range, each hash recomputed), reading `batch` rows at a time (at most the shape's rows).
   */
  verify(from: number, to: number, cpSeqs: Set<number>, batch = 1000, onProgress?: (done: number) => void): RangeResult {
    const out: RangeResult = { from, lastSeq: from - 1, lastHash: null, firstPrev: null, checkpointHashes: [] };
    let expected = from;
    let prev: string | undefined;
    let sinceProgress = 0;
    const done = () => {
      if (prev !== undefined) out.lastHash = Buffer.from(prev, "hex");
      return out;
    };
    const bad = (seq: number, reason: string) => {
      out.firstBad = { seq, reason };
      return done();
    };
    while (expected <= to) {
      const rows = this.scan.all(expected, Math.min(batch, this.rows, to - expected + 1)) as unknown[][];
      if (rows.length === 0) break;
      for (const r of rows) {
        const seq = r[0];
        if (seq !== expected) return bad(expected, `record ${expected} is missing (next is ${seq})`);
        const hash = r[1];
        let rec = r[2];
        if (rec === null) {
          // Past the batch size (or NULL): alone, if within the bound.
          const alone = this.one.get(seq) as [number | null, unknown] | undefined;
          // Gone since the batch was read (retention pruned it on a live home): reported, not a crash.
          if (alone === undefined) return bad(seq, `record ${seq} is missing (removed while it was read)`);
          const [size, bytes] = alone;
          if (size !== null && size > MAX_RECORD_BYTES) return bad(seq, oversizeReason(size));
          rec = bytes;
        }
        // A record that is not a blob (another SQL type) is not the kernel's row.
        const record = Buffer.isBuffer(rec) ? rec : Buffer.alloc(0);
        if (prev === undefined) out.firstPrev = Buffer.from(record.subarray(0, PREV_HASH_BYTES));
        else if (record.length < PREV_HASH_BYTES || record.toString("hex", 0, PREV_HASH_BYTES) !== prev)
          return bad(seq, LINK_BROKEN);
        if (typeof hash !== "string" || !Buffer.isBuffer(rec) || sha256Hex(record) !== hash)
          return bad(seq, "record content does not match its hash");
        if (recordSeq(record) !== seq) return bad(seq, `record ${seq} holds the bytes of another record (a row renumbered)`);
        if (cpSeqs.has(seq)) out.checkpointHashes.push([seq, Buffer.from(hash, "hex")]);
        prev = hash;
        out.lastSeq = seq;
        expected++;
      }
      sinceProgress += rows.length;
      if (sinceProgress >= 10_000) {
        sinceProgress = 0;
        onProgress?.(expected - from);
      }
    }
    onProgress?.(expected - from);
    return done();
  }
}
