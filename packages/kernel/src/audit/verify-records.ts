import { sha256 } from "@kpip/protocol";
import type Database from "better-sqlite3";
import { PREV_HASH_BYTES, recordSeq } from "./record-decode.js";
import type { RangeResult } from "./verify.js";

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

  constructor(db: Database.Database) {
    this.scan = db.prepare("SELECT seq, hash, record FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?").raw(true);
  }

  /**
   * Checks records `from`..`to` as {@link verifyRange} does (contiguous, linked within the
   * range, each hash recomputed), reading `batch` rows at a time.
   */
  verify(from: number, to: number, cpSeqs: Set<number>, batch = 1000, onProgress?: (done: number) => void): RangeResult {
    const out: RangeResult = { from, lastSeq: from - 1, lastHash: null, firstPrev: null, checkpointHashes: [] };
    let expected = from;
    let prev: Buffer | undefined;
    let sinceProgress = 0;
    const bad = (seq: number, reason: string) => {
      out.firstBad = { seq, reason };
      return out;
    };
    while (expected <= to) {
      const rows = this.scan.all(expected, Math.min(batch, to - expected + 1)) as unknown[][];
      if (rows.length === 0) break;
      for (const r of rows) {
        const seq = r[0];
        if (seq !== expected) return bad(expected, `record ${expected} is missing (next is ${seq})`);
        const hash = r[1];
        const rec = r[2];
        // A hash or record that is not a blob (another SQL type) is not the kernel's row.
        const record = Buffer.isBuffer(rec) ? rec : Buffer.alloc(0);
        if (prev === undefined) out.firstPrev = Buffer.from(record.subarray(0, PREV_HASH_BYTES));
        else if (record.length < PREV_HASH_BYTES || record.compare(prev, 0, PREV_HASH_BYTES, 0, PREV_HASH_BYTES) !== 0)
          return bad(seq, LINK_BROKEN);
        if (!Buffer.isBuffer(hash) || !Buffer.isBuffer(rec) || !sha256(record).equals(hash))
          return bad(seq, "record content does not match its hash");
        if (recordSeq(record) !== seq) return bad(seq, `record ${seq} holds the bytes of another record (a row renumbered)`);
        if (cpSeqs.has(seq)) out.checkpointHashes.push([seq, hash]);
        prev = hash;
        out.lastSeq = seq;
        out.lastHash = hash;
        expected++;
      }
      sinceProgress += rows.length;
      if (sinceProgress >= 10_000) {
        sinceProgress = 0;
        onProgress?.(expected - from);
      }
    }
    onProgress?.(expected - from);
    return out;
  }
}
