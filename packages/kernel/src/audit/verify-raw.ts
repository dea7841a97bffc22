import * as crypto from "node:crypto";
import type Database from "better-sqlite3";
import type { AuditRow } from "../store/types.js";
import { CborWriter, textKey } from "./cbor-writer.js";
import { recordHash } from "./record.js";
import type { RangeResult } from "./verify.js";

/**
 * `audit verify`'s scan of a database file: the records' hashed bytes written straight from
 * the rows SQLite returns (arrays, never objects), blobs read as hex text and hashes compared as
 * hex strings — no Buffer is allocated per row, which is most of what a scan of records costs in Node.
 * The bytes are the ones {@link recordHash} hashes (a property test pins the two together).
 *
 * A row that is not what the kernel writes — a column of another SQL type, an integer that is
 * negative or beyond 2^53 − 1 — is not judged here: it is read again as a record and hashed by
 * {@link recordHash}, exactly as a scan without this fast path would.
 */

type Kind = "text" | "uint" | "bytes";
/** Record fields in canonical key order (as in record.ts): key, column, kind. */
const FIELDS: [string, string, Kind][] = [
  ["op", "op", "text"],
  ["seq", "seq", "uint"],
  ["caps", "caps", "text"],
  ["time", "time", "uint"],
  ["phase", "phase", "text"],
  ["detail", "detail", "text"],
  ["domain", "domain", "text"],
  ["intent", "intent", "bytes"],
  ["kernel", "kernel", "text"],
  ["status", "status", "text"],
  ["target", "target", "text"],
  ["message", "message", "text"],
  ["persona", "persona", "text"],
  ["session", "session", "text"],
  ["execution", "execution", "text"],
  ["requestId", "request_id", "uint"],
  ["durationUs", "duration_us", "uint"],
  ["errorClass", "error_class", "text"],
  ["intentHash", "intent_hash", "bytes"],
  ["traceparent", "traceparent", "text"],
  ["measurements", "measurements", "bytes"],
];
const KIND_CODE: Record<Kind, number> = { text: 0, uint: 1, bytes: 2 };

/** A blob column as (uppercase) hex; any other non-null type as 0.5, which sends the row to the slow path. */
const hexOf = (c: string) => `CASE WHEN typeof(${c}) = 'blob' THEN hex(${c}) WHEN ${c} IS NULL THEN NULL ELSE 0.5 END`;

type OneShot = (algorithm: string, data: Uint8Array, encoding: "hex") => string;
const oneShot = (crypto as unknown as { hash?: OneShot }).hash;
/** SHA-256 in uppercase hex, as SQLite's hex() writes the stored hashes. */
const sha256Hex: (data: Uint8Array) => string = oneShot
  ? (data) => oneShot("sha256", data, "hex").toUpperCase()
  : (data) => crypto.createHash("sha256").update(data).digest("hex").toUpperCase();

/** Hashes rows of one audit table; `columns` are the table's (older homes lack the newer ones). */
export class RawRecordScan extends CborWriter {
  private readonly scan: Database.Statement;
  private readonly keys: Buffer[];
  private readonly kinds: number[];
  /** Rows hashed through the record path (outside the kernel's types), for tests. */
  slowRows = 0;

  constructor(
    db: Database.Database,
    columns: ReadonlySet<string>,
    /** The record as a slow-path scan reads it (for rows the fast path does not take). */
    private readonly record: (seq: number) => AuditRow | undefined,
  ) {
    super();
    const present = FIELDS.filter(([, c]) => columns.has(c));
    this.keys = present.map(([k]) => textKey(k));
    this.kinds = present.map(([, , kind]) => KIND_CODE[kind]);
    const cols = present.map(([, c, kind]) => (kind === "bytes" ? hexOf(c) : c));
    // Columns 0..2: seq, prev_hash, hash; then the fields in canonical order.
    this.scan = db
      .prepare(
        `SELECT seq, ${hexOf("prev_hash")}, ${hexOf("hash")}, ${cols.join(", ")} FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?`,
      )
      .raw(true);
  }

  /**
   * Checks records `from`..`to` as {@link verifyRange} does (contiguous, linked within the
   * range, each hash recomputed), reading `batch` rows at a time.
   */
  verify(from: number, to: number, cpSeqs: Set<number>, batch = 1000, onProgress?: (done: number) => void): RangeResult {
    const out: RangeResult = { from, lastSeq: from - 1, lastHash: null, firstPrev: null, checkpointHashes: [] };
    let expected = from;
    let prev: string | undefined;
    let last: string | undefined;
    let sinceProgress = 0;
    while (expected <= to) {
      const rows = this.scan.all(expected, Math.min(batch, to - expected + 1)) as unknown[][];
      if (rows.length === 0) break;
      for (const r of rows) {
        const seq = r[0];
        if (seq !== expected) {
          out.firstBad = { seq: expected, reason: `record ${expected} is missing (next is ${seq})` };
          return this.done(out, last);
        }
        let prevHash = r[1] as string;
        let hash = r[2] as string;
        let computed = this.hashRow(r);
        if (computed === undefined || typeof hash !== "string") {
          // Not a row the kernel writes: hashed the slow way, its hashes compared as bytes would be.
          this.slowRows++;
          try {
            const rec = this.record(expected) as AuditRow;
            prevHash = Buffer.from(rec.prevHash).toString("hex").toUpperCase();
            hash = Buffer.from(rec.hash).toString("hex").toUpperCase();
            computed = recordHash(rec).toString("hex").toUpperCase();
          } catch {
            // A value no record can hold (e.g. a number where a hash belongs): not the kernel's row.
            computed = undefined;
            prevHash = typeof prevHash === "string" ? prevHash : "";
            hash = typeof hash === "string" ? hash : "";
          }
        }
        if (prev === undefined) out.firstPrev = Buffer.from(prevHash, "hex");
        else if (prevHash !== prev) {
          out.firstBad = {
            seq: expected,
            reason: "previous-hash link is broken (a record before it was changed, removed or reordered)",
          };
          return this.done(out, last);
        }
        if (computed !== hash) {
          out.firstBad = { seq: expected, reason: "record content does not match its hash" };
          return this.done(out, last);
        }
        if (cpSeqs.has(expected)) out.checkpointHashes.push([expected, Buffer.from(hash, "hex")]);
        prev = hash;
        last = hash;
        out.lastSeq = expected;
        expected++;
      }
      sinceProgress += rows.length;
      if (sinceProgress >= 10_000) {
        sinceProgress = 0;
        onProgress?.(expected - from);
      }
    }
    onProgress?.(expected - from);
    return this.done(out, last);
  }

  private done(out: RangeResult, last: string | undefined): RangeResult {
    if (last !== undefined) out.lastHash = Buffer.from(last, "hex");
    return out;
  }

  /** SHA-256 (hex) of prev_hash ‖ the record's canonical map, or undefined when a value is not of its kind. */
  private hashRow(r: unknown[]): string | undefined {
    const prev = r[1];
    if (typeof prev !== "string") return undefined;
    const kinds = this.kinds;
    let count = 0;
    for (let i = 0; i < kinds.length; i++) {
      const v = r[i + 3];
      if (v === null) continue;
      const kind = kinds[i];
      if (kind === 1 ? !(Number.isSafeInteger(v) && (v as number) >= 0) : typeof v !== "string") return undefined;
      count++;
    }
    this.pos = 0;
    this.ensure(prev.length + 1);
    this.pos = this.buf.write(prev, 0, "hex");
    if (this.pos * 2 !== prev.length) return undefined;
    this.head(5, count);
    for (let i = 0; i < kinds.length; i++) {
      const v = r[i + 3];
      if (v === null) continue;
      const key = this.keys[i] as Buffer;
      this.ensure(key.length);
      this.buf.set(key, this.pos);
      this.pos += key.length;
      const kind = kinds[i];
      if (kind === 1) this.head(0, v as number);
      else if (kind === 0) this.text(v as string);
      else {
        const s = v as string;
        this.head(2, s.length >> 1);
        this.ensure(s.length >> 1);
        this.pos += this.buf.write(s, this.pos, "hex");
      }
    }
    return sha256Hex(this.buf.subarray(0, this.pos));
  }

  /** A text string: its UTF-8 bytes written once after a one-byte head, moved up if the head is longer. */
  private text(s: string): void {
    this.ensure(s.length * 3 + 9);
    const at = this.pos;
    const n = this.buf.write(s, at + 1, "utf8");
    if (n < 24) {
      this.buf[at] = 0x60 | n;
      this.pos = at + 1 + n;
      return;
    }
    const headLen = n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
    this.buf.copyWithin(at + headLen, at + 1, at + 1 + n);
    // No reallocation in head(): the room for the longest head was ensured above.
    this.pos = at;
    this.head(3, n);
    this.pos = at + headLen + n;
  }
}
