import type Database from "better-sqlite3";
import { decodeRecord, decodeRecordHead, headOf, oversizeRecord } from "../../audit/record-decode.js";
import { type BatchShape, batchShape, MAX_RECORD_BYTES } from "../../audit/record-size.js";
import { SegmentIndex } from "../../audit/verify-segments.js";
import { type IndexSpan, parseSpan, type SpanRead, type SpanRow, segmentName } from "../audit-segments.js";
import type { AuditCheckpoint, AuditRow, RecordHead } from "../types.js";
import { AuditReads } from "./audit-read.js";

/** What every reader of the audit asks (the table's reads, audit-read.ts, and the segments' here). */
export type AuditReadApi = Pick<
  AuditReads,
  "rows" | "record" | "last" | "up" | "heads" | "down" | "records" | "count" | "first" | "head" | "hashAt" | "checkpoints"
>;

/** Bytes of adjacent spans {@link SegmentReads.heads} reads at once at most. */
const GROUP_BYTES = 4 * 1024 * 1024;

/**
 * The audit's reads over its segment files (store/audit-segments.ts): the index says which span
 * holds a record, one pread brings the span, the record is decoded from its bytes. Records
 * retention pruned (at or below the stored "retained through" seq) are not shown. A span whose
 * bytes are damaged shows the records before the damage; `audit verify` says what is wrong.
 */
export class SegmentReads implements AuditReadApi {
  readonly index: SegmentIndex;
  readonly rows: number;
  /** The checkpoints are read from their table as before. */
  readonly #table: AuditReads;

  constructor(db: Database.Database, dir: string, shape: BatchShape = batchShape()) {
    this.index = new SegmentIndex(db, dir);
    this.rows = shape.rows;
    this.#table = new AuditReads(db);
  }

  #decode(r: SpanRow): AuditRow {
    if (r.declared !== undefined) {
      // Bytes that are not there (a forged length): a placeholder, nothing read.
      if (r.declared > MAX_RECORD_BYTES) return oversizeRecord(r.seq, r.hash, r.declared);
      return decodeRecord(r.seq, r.hash, new Uint8Array(0));
    }
    if (r.record.length > MAX_RECORD_BYTES) return oversizeRecord(r.seq, r.hash, r.record.length);
    return decodeRecord(r.seq, r.hash, r.record);
  }

  /** The stored row of `seq` (undefined when pruned, absent or unreadable). */
  #row(seq: number): SpanRow | undefined {
    if (!(seq > this.index.retained())) return undefined;
    const s = this.index.from(seq, 1)[0];
    if (!s || s.first > seq || s.last < seq) return undefined;
    return this.index.read(s).rows.find((r) => r.seq === seq);
  }

  record(seq: number): AuditRow | undefined {
    const r = this.#row(seq);
    return r && this.#decode(r);
  }

  last(): AuditRow | undefined {
    return this.down(Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1)[0];
  }

  /** Rows from `from` up to `to`, oldest first, at most `limit` (and a batch's rows). */
  #upRows(from: number, to: number, limit: number): SpanRow[] {
    const out: SpanRow[] = [];
    const lo = Math.max(from, this.index.retained() + 1);
    let spans = this.index.from(lo);
    let next = lo;
    while (spans.length > 0) {
      for (const s of spans) {
        if (s.first > to) return out;
        for (const r of this.index.read(s).rows) {
          // Strictly increasing, and only what the index names: rows out of order (tampering) are verify's to report.
          if (r.seq < next || r.seq > to || r.seq > s.last) continue;
          out.push(r);
          next = r.seq + 1;
          if (out.length >= limit) return out;
        }
      }
      spans = this.index.after((spans.at(-1) as IndexSpan).first);
    }
    return out;
  }

  up(from: number, limit: number, to = Number.POSITIVE_INFINITY): AuditRow[] {
    return this.#upRows(from, to, Math.min(limit, this.rows)).map((r) => this.#decode(r));
  }

  /**
   * Each record from `from` through `to`, oldest first, as its head: the rows {@link up} gives.
   * Spans adjacent in one segment are read with one pread (a kernel at one request in flight
   * indexes a few records a span: a read and an fstat each were most of such a window's cost),
   * and each parsed as if read alone; a group whose bytes cannot be read so is read span by span.
   */
  heads(from: number, to: number, visit: (h: RecordHead) => void): void {
    const lo = Math.max(from, this.index.retained() + 1);
    let spans = this.index.from(lo);
    let next = lo;
    const take = (s: IndexSpan, read: SpanRead) => {
      for (const r of read.rows) {
        if (r.seq < next || r.seq > to || r.seq > s.last) continue;
        next = r.seq + 1;
        if (r.declared !== undefined || r.record.length > MAX_RECORD_BYTES) visit(headOf(this.#decode(r)));
        else visit(decodeRecordHead(r.seq, r.hash, r.record));
      }
    };
    while (spans.length > 0) {
      for (let i = 0; i < spans.length; ) {
        const s = spans[i] as IndexSpan;
        if (s.first > to) return;
        let j = i + 1;
        let length = s.length;
        for (; j < spans.length; j++) {
          const t = spans[j] as IndexSpan;
          if (t.segment !== s.segment || t.offset !== s.offset + length || t.first > to || length + t.length > GROUP_BYTES) break;
          length += t.length;
        }
        const bytes = j > i + 1 ? this.index.files.bytes({ segment: s.segment, offset: s.offset, length }) : undefined;
        for (let k = i; k < j; k++) {
          const t = spans[k] as IndexSpan;
          take(
            t,
            bytes instanceof Buffer
              ? parseSpan(bytes.subarray(t.offset - s.offset, t.offset - s.offset + t.length), segmentName(t.segment))
              : this.index.read(t),
          );
        }
        i = j;
      }
      spans = this.index.after((spans.at(-1) as IndexSpan).first);
    }
  }

  down(below: number, above: number, limit: number): AuditRow[] {
    const out: AuditRow[] = [];
    const floor = Math.max(above, this.index.retained());
    let top = below;
    // The span holding `below - 1` first (it starts below `below`), then older ones.
    let spans = this.index.below(below);
    while (spans.length > 0) {
      for (const s of spans) {
        if (s.last <= floor) return out;
        const rows = this.index.read(s).rows;
        for (let i = rows.length - 1; i >= 0; i--) {
          const r = rows[i] as SpanRow;
          if (r.seq >= top || r.seq <= floor || r.seq > s.last) continue;
          out.push(this.#decode(r));
          top = r.seq;
          if (out.length >= limit) return out;
        }
      }
      spans = this.index.below((spans.at(-1) as IndexSpan).first);
    }
    return out;
  }

  *records(opts: { from?: number; newest?: boolean } = {}): Generator<AuditRow> {
    if (opts.newest) {
      let below = opts.from ?? Number.POSITIVE_INFINITY;
      for (;;) {
        const rows = this.down(below, Number.NEGATIVE_INFINITY, this.rows);
        for (const r of rows) yield r;
        if (rows.length < this.rows) return;
        below = (rows.at(-1) as AuditRow).seq;
      }
    }
    let from = opts.from ?? Number.NEGATIVE_INFINITY;
    for (;;) {
      const rows = this.#upRows(from, Number.POSITIVE_INFINITY, this.rows);
      for (const r of rows) yield this.#decode(r);
      if (rows.length < this.rows) return;
      from = (rows.at(-1) as SpanRow).seq + 1;
    }
  }

  count(): number {
    return this.index.count();
  }

  first(): number | undefined {
    return this.index.first();
  }

  head(): number | undefined {
    return this.index.head();
  }

  hashAt(seq: number): Uint8Array | undefined {
    const r = this.#row(seq);
    return r && Uint8Array.prototype.slice.call(r.hash);
  }

  checkpoints(): AuditCheckpoint[] {
    return this.#table.checkpoints();
  }

  close(): void {
    this.index.close();
  }
}
