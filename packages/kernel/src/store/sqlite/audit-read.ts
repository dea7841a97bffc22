import type Database from "better-sqlite3";
import { decodeRecord, decodeRecordHead, headOf, oversizeRecord } from "../../audit/record-decode.js";
import {
  aloneRecordSql,
  type BatchShape,
  batchRecordSql,
  batchShape,
  boundedHashSql,
  MAX_RECORD_BYTES,
  type RecordSource,
  STORED_RECORD,
} from "../../audit/record-size.js";
import type { AuditCheckpoint, AuditRow, RecordHead } from "../types.js";
import { rowReader } from "./base.js";
import { boundedColumns } from "./cells.js";

/** A row's hash, or no bytes for one that is not a hash-sized blob (tampering: never a large value). */
const HASH = boundedHashSql("hash", "x''");

/**
 * Every read of the audit table goes through here: the kernel's store, the audit reader of the
 * CLI and the tools. A row is read as (seq, hash, the record's bytes) with the bytes only when
 * SQLite says (without reading them) they are at most the batch's record size (batchShape): a
 * larger record is read alone when its turn comes, and one over MAX_RECORD_BYTES never (its
 * record is a placeholder saying so). A batch of rows holds at most rows × that size of records.
 */
function rowColumns(src: RecordSource, recordBytes: number): string {
  return `seq, ${HASH}, ${batchRecordSql(src, recordBytes)}`;
}

export class AuditReads {
  readonly #one: Database.Statement;
  readonly #bytes: Database.Statement;
  readonly #up: Database.Statement;
  readonly #down: Database.Statement;
  readonly #after: Database.Statement;
  readonly #count: Database.Statement;
  readonly #first: Database.Statement;
  readonly #head: Database.Statement;
  readonly #hashAt: Database.Statement;
  #checkpoints: Database.Statement | null | undefined;
  readonly #db: Database.Database;
  /** Rows a scan reads at a time (within BATCH_BYTES of records). */
  readonly rows: number;

  /**
   * `src`: how a row's record is read (the stored bytes; a home of the column layout reads its
   * columns encoded); `shape`: the batches, from the home's kept intent size.
   */
  constructor(db: Database.Database, src: RecordSource = STORED_RECORD, shape: BatchShape = batchShape()) {
    this.#db = db;
    this.rows = shape.rows;
    const cols = rowColumns(src, shape.recordBytes);
    this.#count = db.prepare("SELECT count(*) FROM audit").pluck(true);
    this.#first = db.prepare("SELECT min(seq) FROM audit").pluck(true);
    this.#head = db.prepare("SELECT max(seq) FROM audit").pluck(true);
    this.#hashAt = db.prepare(`SELECT ${HASH} FROM audit WHERE seq = ?`).pluck(true);
    this.#one = db.prepare(`SELECT ${cols} FROM audit WHERE seq = ?`).raw(true);
    // A record past the batch size, alone; over the bound, not at all.
    this.#bytes = db.prepare(aloneRecordSql(src)).raw(true);
    this.#up = db.prepare(`SELECT ${cols} FROM audit WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?`).raw(true);
    this.#after = db.prepare(`SELECT ${cols} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`).raw(true);
    this.#down = db.prepare(`SELECT ${cols} FROM audit WHERE seq < ? AND seq > ? ORDER BY seq DESC LIMIT ?`).raw(true);
  }

  /** A row (seq, hash, bytes or null) as its record, decoded from its bytes (read now if they were left out). */
  decode(r: unknown[]): AuditRow {
    const seq = r[0] as number;
    const hash = r[1] as Uint8Array;
    let bytes = r[2];
    if (bytes === null) {
      const [size, alone] = (this.#bytes.get(seq) as [number | null, unknown] | undefined) ?? [null, null];
      if (size !== null && size > MAX_RECORD_BYTES) return oversizeRecord(seq, hash, size);
      bytes = alone;
    }
    return decodeRecord(seq, hash, bytes as Uint8Array);
  }

  /** Record `seq`, or undefined. */
  record(seq: number): AuditRow | undefined {
    const r = this.#one.get(seq) as unknown[] | undefined;
    return r && this.decode(r);
  }

  /** The newest record, or undefined for an empty log. */
  last(): AuditRow | undefined {
    return this.down(Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1)[0];
  }

  /** Up to `limit` records from `from` up (to `to`), oldest first. */
  up(from: number, limit: number, to = Number.POSITIVE_INFINITY): AuditRow[] {
    // At most a batch's rows whatever the caller asks (kpip audit tail -f asks 1,000): one batch's memory.
    return (this.#up.all(from, to, Math.min(limit, this.rows)) as unknown[][]).map((r) => this.decode(r));
  }

  /** Each record from `from` through `to`, oldest first, as its head (those {@link up} gives). */
  heads(from: number, to: number, visit: (h: RecordHead) => void): void {
    for (let seq = from; seq <= to; ) {
      const rows = this.#up.all(seq, to, this.rows) as unknown[][];
      for (const r of rows) {
        const bytes = r[2];
        visit(
          bytes === null ? headOf(this.decode(r)) : decodeRecordHead(r[0] as number, r[1] as Uint8Array, bytes as Uint8Array),
        );
      }
      if (rows.length < this.rows) return;
      // Strictly past the last row (a tampered seq past 2^53 may not move on: the scan ends there).
      const after = ((rows.at(-1) as unknown[])[0] as number) + 1;
      if (!(after > seq)) return;
      seq = after;
    }
  }

  /** Up to `limit` records below `below` and above `above`, newest first. */
  down(below: number, above: number, limit: number): AuditRow[] {
    return (this.#down.all(below, above, limit) as unknown[][]).map((r) => this.decode(r));
  }

  /**
   * Records one at a time, oldest first from `from` (or newest first below `from` with `newest`),
   * read a batch of rows at a time and decoded as they are taken: memory holds one batch.
   */
  *records(opts: { from?: number; newest?: boolean } = {}): Generator<AuditRow> {
    const newest = opts.newest === true;
    let rows = (
      newest
        ? this.#down.all(opts.from ?? Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, this.rows)
        : this.#up.all(opts.from ?? Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, this.rows)
    ) as unknown[][];
    let prev = newest ? Number.POSITIVE_INFINITY : Number.NEGATIVE_INFINITY;
    for (;;) {
      for (const r of rows) yield this.decode(r);
      if (rows.length < this.rows) return;
      // Strictly past the last row. A tampered seq past 2^53 reads as a nearby double, which may
      // not move on: then the scan ends there (verify reports such rows).
      const last = (rows.at(-1) as unknown[])[0] as number;
      if (newest ? !(last < prev) : !(last > prev)) return;
      prev = last;
      rows = (
        newest ? this.#down.all(last, Number.NEGATIVE_INFINITY, this.rows) : this.#after.all(last, this.rows)
      ) as unknown[][];
    }
  }

  count(): number {
    return this.#count.get() as number;
  }

  /** The lowest sequence number (records below it were pruned), or undefined when the log is empty. */
  first(): number | undefined {
    return (this.#first.get() as number | null) ?? undefined;
  }

  /** The highest sequence number, or undefined when the log is empty. */
  head(): number | undefined {
    return (this.#head.get() as number | null) ?? undefined;
  }

  hashAt(seq: number): Uint8Array | undefined {
    return this.#hashAt.get(seq) as Uint8Array | undefined;
  }

  /** The signed checkpoints, oldest first (none in a database without their table). */
  checkpoints(): AuditCheckpoint[] {
    if (this.#checkpoints === undefined) {
      // A value past its size is tampering: no bytes (the checkpoint then fails to verify), never read.
      // No columns: no such table (a home older than checkpoints).
      const cols = boundedColumns(this.#db, "audit_checkpoints", CHECKPOINT_CELLS);
      this.#checkpoints = cols !== "" ? this.#db.prepare(`SELECT ${cols} FROM audit_checkpoints ORDER BY seq`) : null;
    }
    return this.#checkpoints === null ? [] : (this.#checkpoints.all() as Record<string, unknown>[]).map(toCheckpoint);
  }
}

/** The sizes of a checkpoint's values (a hash and a key of 32 bytes, a signature of 64, a kernel id). */
const CHECKPOINT_CELLS: Record<string, [number, string]> = {
  hash: [64, "x''"],
  public_key: [64, "x''"],
  signature: [128, "x''"],
  kernel: [256, "''"],
};

/** A signed checkpoint as stored. */
const toCheckpoint = rowReader<AuditCheckpoint>({
  seq: true,
  hash: true,
  time: true,
  kernel: true,
  publicKey: true,
  signature: true,
});
