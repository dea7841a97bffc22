import * as crypto from "node:crypto";
import type Database from "better-sqlite3";
import { type IndexSpan, RETAINED_THROUGH_KEY, SegmentFiles, type SpanRead } from "../store/audit-segments.js";
import { PREV_HASH_BYTES, recordSeq } from "./record-seq.js";
import { MAX_RECORD_BYTES, oversizeReason } from "./record-size.js";
import type { RangeResult } from "./verify.js";

type OneShot = (algorithm: string, data: Uint8Array, encoding: "buffer") => Buffer;
const oneShot = (crypto as unknown as { hash?: OneShot }).hash;
/** SHA-256: Node's one-shot hash where it has one (20.12+; no Hash object per record), else a Hash object. */
const sha256: (data: Uint8Array) => Buffer = oneShot
  ? (data) => oneShot("sha256", data, "buffer")
  : (data) => crypto.createHash("sha256").update(data).digest();

const LINK_BROKEN = "previous-hash link is broken (a record before it was changed, removed or reordered)";

/** Spans an index read takes at a time. */
const SPANS = 64;

/**
 * The index of a home's segments (`audit_batches`, store/audit-segments.ts) on one connection:
 * the statements every reader of the segments uses (the kernel's store, the audit reader, the
 * verify workers).
 */
export class SegmentIndex {
  readonly #from: Database.Statement;
  readonly #below: Database.Statement;
  readonly #after: Database.Statement;
  readonly #last: Database.Statement;
  readonly #first: Database.Statement;
  readonly #count: Database.Statement;
  readonly #retained: Database.Statement;
  readonly files: SegmentFiles;
  /** The span read last (reads of records near each other read it once). */
  #cached: { key: string; read: SpanRead } | undefined;
  /**
   * A live home's reader: the batches committed past the index (one span a batch, oldest first),
   * read from the segments and checked to continue the chain (audit/reader.ts). Only those past
   * the index's end now are shown: the kernel's index step takes whole batches into its spans.
   */
  #tail: IndexSpan[] = [];
  /**
   * Runs a read in one read transaction (a savepoint inside one): with a tail shown, the index's
   * end (#tailPast) and its spans are read in one snapshot, else an index step committing
   * between the two (the kernel, in another process) shows a batch twice or leaves it out.
   */
  readonly #snapshot: <T>(fn: () => T) => T;
  readonly #db: Database.Database;

  constructor(db: Database.Database, dir: string) {
    this.files = new SegmentFiles(dir);
    this.#db = db;
    const tx = db.transaction((fn: () => unknown) => fn());
    this.#snapshot = <T>(fn: () => T) => (this.#tail.length === 0 || this.#db.inTransaction ? fn() : (tx(fn) as T));
    const cols = "first_seq AS first, last_seq AS last, segment, offset, length";
    this.#from = db.prepare(
      `SELECT ${cols} FROM audit_batches WHERE first_seq >= coalesce((SELECT max(first_seq) FROM audit_batches WHERE first_seq <= ?), -9007199254740991) ORDER BY first_seq LIMIT ?`,
    );
    this.#after = db.prepare(`SELECT ${cols} FROM audit_batches WHERE first_seq > ? ORDER BY first_seq LIMIT ?`);
    this.#below = db.prepare(`SELECT ${cols} FROM audit_batches WHERE first_seq < ? ORDER BY first_seq DESC LIMIT ?`);
    this.#last = db.prepare(`SELECT ${cols} FROM audit_batches ORDER BY first_seq DESC LIMIT 1`);
    this.#first = db.prepare(`SELECT ${cols} FROM audit_batches WHERE last_seq > ? ORDER BY first_seq LIMIT 1`);
    this.#count = db
      .prepare("SELECT coalesce(sum(last_seq - max(first_seq, ?) + 1), 0) FROM audit_batches WHERE last_seq >= ?")
      .pluck(true);
    this.#retained = db.prepare("SELECT value FROM meta WHERE key = ?").pluck(true);
  }

  /** Sets the batches past the index a live reader shows (see #tail). */
  setTail(spans: IndexSpan[]): void {
    this.#tail = spans;
  }

  /** The last span of the index itself (none of the tail). */
  lastIndexed(): IndexSpan | undefined {
    return this.#last.get() as IndexSpan | undefined;
  }

  /** The tail's batches the index does not cover yet. */
  #tailPast(): IndexSpan[] {
    if (this.#tail.length === 0) return this.#tail;
    const end = this.lastIndexed()?.last ?? Number.NEGATIVE_INFINITY;
    return (this.#tail[0] as IndexSpan).first > end ? this.#tail : this.#tail.filter((s) => s.first > end);
  }

  /** Records through this seq were pruned (0: none). */
  retained(): number {
    const v = this.#retained.get(RETAINED_THROUGH_KEY) as string | undefined;
    return v === undefined ? 0 : Number(v);
  }

  /** Spans from the one holding `seq` up, oldest first. */
  from(seq: number, n = SPANS): IndexSpan[] {
    return this.#snapshot(() => this.#fromRead(seq, n));
  }

  #fromRead(seq: number, n: number): IndexSpan[] {
    const tail = this.#tailPast();
    if (tail.length > 0 && seq >= (tail[0] as IndexSpan).first) {
      let i = 0;
      while (i + 1 < tail.length && (tail[i + 1] as IndexSpan).first <= seq) i++;
      return tail.slice(i, i + n);
    }
    const spans = this.#from.all(seq, n) as IndexSpan[];
    return spans.length >= n || tail.length === 0 ? spans : spans.concat(tail.slice(0, n - spans.length));
  }

  /** Spans starting above `seq`, oldest first. */
  after(seq: number, n = SPANS): IndexSpan[] {
    return this.#snapshot(() => this.#afterRead(seq, n));
  }

  #afterRead(seq: number, n: number): IndexSpan[] {
    const spans = this.#after.all(seq, n) as IndexSpan[];
    const tail = this.#tailPast();
    if (spans.length >= n || tail.length === 0) return spans;
    return spans.concat(tail.filter((s) => s.first > seq).slice(0, n - spans.length));
  }

  /** Spans starting below `seq`, newest first. */
  below(seq: number, n = SPANS): IndexSpan[] {
    return this.#snapshot(() => this.#belowRead(seq, n));
  }

  #belowRead(seq: number, n: number): IndexSpan[] {
    const tail = this.#tailPast().filter((s) => s.first < seq);
    if (tail.length === 0) return this.#below.all(seq, n) as IndexSpan[];
    tail.reverse();
    if (tail.length >= n) return tail.slice(0, n);
    return tail.concat(this.#below.all(seq, n - tail.length) as IndexSpan[]);
  }

  last(): IndexSpan | undefined {
    return this.#snapshot(() => this.#tailPast().at(-1) ?? this.lastIndexed());
  }

  /** The lowest retained seq, or undefined for an empty log. */
  first(): number | undefined {
    return this.#snapshot(() => {
      const r = this.retained();
      const s = (this.#first.get(r) as IndexSpan | undefined) ?? this.#tailPast().find((t) => t.last > r);
      return s && Math.max(s.first, r + 1);
    });
  }

  head(): number | undefined {
    return this.#snapshot(() => {
      const s = this.last();
      return s && s.last > this.retained() ? s.last : undefined;
    });
  }

  count(): number {
    return this.#snapshot(() => {
      const r = this.retained() + 1;
      let n = this.#count.get(r, r) as number;
      for (const s of this.#tailPast()) if (s.last >= r) n += s.last - Math.max(s.first, r) + 1;
      return n;
    });
  }

  /** A span's records (the last one read is kept). */
  read(s: IndexSpan): SpanRead {
    const key = `${s.segment}/${s.offset}/${s.length}`;
    if (this.#cached?.key === key) return this.#cached.read;
    const read = this.files.read(s);
    this.#cached = { key, read };
    return read;
  }

  close(): void {
    this.#cached = undefined;
    this.files.close();
  }
}

/**
 * `audit verify`'s scan of the segments: each record's bytes are hashed (one SHA-256 over what
 * is stored), their first 32 bytes checked against the previous record's hash and the sequence
 * number they carry against the framing's. The index is only where to read: a span whose bytes
 * do not hold the records it names shows as missing records or a broken link.
 */
export class SegmentScan {
  constructor(private readonly index: SegmentIndex) {}

  verify(from: number, to: number, cpSeqs: Set<number>, _batch = 1000, onProgress?: (done: number) => void): RangeResult {
    const out: RangeResult = { from, lastSeq: from - 1, lastHash: null, firstPrev: null, checkpointHashes: [] };
    let expected = from;
    let prev: Buffer | undefined;
    let sinceProgress = 0;
    const done = () => {
      if (prev !== undefined) out.lastHash = prev;
      return out;
    };
    const bad = (seq: number, reason: string) => {
      out.firstBad = { seq, reason };
      return done();
    };
    let spans = this.index.from(expected);
    let lastFirst = Number.NEGATIVE_INFINITY;
    while (expected <= to && spans.length > 0) {
      for (const s of spans) {
        if (expected > to) break;
        lastFirst = s.first;
        if (s.last < expected) continue;
        const read = this.index.read(s);
        for (const r of read.rows) {
          if (r.seq < expected) continue;
          // The index says where the log ends: bytes past a span's last record are not the log's.
          if (expected > to || r.seq > s.last) break;
          if (r.seq !== expected) return bad(expected, `record ${expected} is missing (next is ${r.seq})`);
          if (r.declared !== undefined)
            return bad(
              r.seq,
              r.declared > MAX_RECORD_BYTES ? oversizeReason(r.declared) : `record ${r.seq} cannot be read: ${read.damage}`,
            );
          const record = r.record;
          if (record.length > MAX_RECORD_BYTES) return bad(r.seq, oversizeReason(record.length));
          if (prev === undefined) out.firstPrev = Buffer.from(record.subarray(0, PREV_HASH_BYTES));
          else if (record.length < PREV_HASH_BYTES || prev.compare(record, 0, PREV_HASH_BYTES) !== 0)
            return bad(r.seq, LINK_BROKEN);
          const hash = sha256(record);
          if (r.hash.length !== hash.length || hash.compare(r.hash) !== 0)
            return bad(r.seq, "record content does not match its hash");
          if (record.length <= PREV_HASH_BYTES || recordSeq(record) !== r.seq)
            return bad(r.seq, `record ${r.seq} holds the bytes of another record (a row renumbered)`);
          if (cpSeqs.has(r.seq)) out.checkpointHashes.push([r.seq, hash]);
          prev = hash;
          out.lastSeq = r.seq;
          expected++;
          if (++sinceProgress >= 10_000) {
            sinceProgress = 0;
            onProgress?.(expected - from);
          }
        }
        if (read.damage && expected <= Math.min(to, s.last))
          return bad(expected, `record ${expected} cannot be read: ${read.damage}`);
        if (expected <= Math.min(to, s.last))
          return bad(expected, `record ${expected} is missing (its batch's bytes do not hold it)`);
      }
      spans = this.index.after(lastFirst);
    }
    onProgress?.(expected - from);
    return done();
  }
}
