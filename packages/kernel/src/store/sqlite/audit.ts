import { existsSync, statSync, truncateSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { recordBytes } from "../../audit/record.js";
import { MAX_RECORD_BYTES } from "../../audit/record-size.js";
import type { RangeResult } from "../../audit/verify.js";
import { RecordScan } from "../../audit/verify-records.js";
import { SegmentScan } from "../../audit/verify-segments.js";
import { AuditJournalError, type JournalBatch, type JournalRecord } from "../audit-journal.js";
import {
  AUDIT_SEGMENT_DIR,
  dropSegmentsThrough,
  type IndexSpan,
  listSegments,
  RETAINED_THROUGH_KEY,
  type RotationOptions,
  SegmentCutError,
  SegmentWriter,
  SPAN_MAX_BYTES,
  type SpanLocation,
  segmentName,
  spansOf,
  type TailBatch,
  tailBatches,
} from "../audit-segments.js";
import type {
  AuditCheckpoint,
  AuditQuery,
  AuditRow,
  AuditStore,
  DedupeRow,
  EffectAnswer,
  EffectAnswerRef,
  RecordHead,
} from "../types.js";
import { auditAppender } from "./audit-append.js";
import { AuditReads } from "./audit-read.js";
import { type AuditReadApi, SegmentReads } from "./audit-segment-read.js";
import type { Row, StoreBase, WithRows } from "./base.js";
import { indexJournalFile } from "./journal-replay.js";

/** meta key: this home's audit is in segment files (its `audit` table holds no records). */
export const SEGMENTED_KEY = "audit_segments";

/**
 * The one row a home's `audit` table keeps once its records are in segments (seq 0, a zero
 * hash, a record that is this text): nothing of this version reads the table then (SEGMENTED_KEY),
 * while a kpip from before the segments, started on the home, finds a record that does not
 * verify and refuses to start ("does not verify at record 0") — without it, it found an empty
 * table and began a chain of its own beside the segments' (tried on 887e7e6).
 */
export const SEGMENTS_SENTINEL =
  "this home's audit chain is in the segment files under audit/ (kpip with audit segments): a kpip from before them must not append here";

/** What opening the segments did: records a killed kernel left past the index, records moved out of the table. */
export interface SegmentsOpened {
  recovered: number;
  migrated: number;
  /**
   * What the index named past the newest segment's end (an OS crash before its sync, or a cut)
   * and the segment no longer holds: records `from..to` and the signed checkpoints over them,
   * dropped from the index (the kernel says so in its kernel.start record).
   */
  lost?: LostTail;
}

/** Records (and checkpoints) the index named that the newest segment no longer holds. */
export interface LostTail {
  records: number;
  from: number;
  to: number;
  checkpoints: number;
}

/**
 * Journalled records (and bytes) kept in memory for SQLite at most; past either a commit indexes
 * first, and fails if SQLite does. The log indexes long before (AuditLog: 64 records or 2 ms).
 */
export const MAX_UNINDEXED_ROWS = 16_384;
const MAX_UNINDEXED_BYTES = 32 * 1024 * 1024;

/** The audit segments' side of the store: the kernel opens them; tools beside a kernel never do. */
export interface JournalledAudit {
  useAuditSegments(dir: string, legacyJournal?: string, opts?: RotationOptions): SegmentsOpened;
  /** An fdatasync of the open segment off the kernel's thread (the kernel's periodic sync). */
  syncAuditSegment(): Promise<void>;
  readonly auditUnindexed: number;
  /** Why a sync of an audit segment failed, if one did: the audit takes no more records. */
  readonly auditSyncFailure: Error | undefined;
  /** Why the store failed, if it did: the database's failed sync, else an audit segment's. */
  readonly failure: Error | undefined;
}

/** A batch in the open segment and not yet in the index. */
interface Queued extends TailBatch {}

/**
 * How far a dedupe row's after_seq may lie below the log's head when it was written, for the
 * walk of {@link AuditRows}' effectAnswersSince down the table in rowid (write) order: an effect's
 * answer names the head at its commit (no lag); an answer kept with its outcome record names the
 * last record of the commit that carries it, written by the index step up to MAX_UNINDEXED_ROWS
 * records plus a batch or two (auditBatchMax, 512) after that record. Far more than either.
 */
export const DEDUPE_POSITION_SLACK = 65_536;
/** Dedupe rows read per statement by that walk. */
const WALK_ROWS = 1024;

/** A queued batch's first or last record as the index step reads it: its seq (spansOf, #index). */
const NO_BYTES = new Uint8Array(0);
const edge = (seq: number): JournalRecord => ({ seq, hash: NO_BYTES, record: NO_BYTES });

/** A queued batch that carries nothing but records (no dedupe rows, offline-journal delete or checkpoint to write with them). */
const plain = (b: Pick<JournalBatch, "dedupe" | "journalUpTo" | "checkpoints">): boolean =>
  b.dedupe.length === 0 && b.journalUpTo === 0 && b.checkpoints.length === 0;
/** `next` follows `prev` in its segment and one span may take both (as spansOf merges them). */
const extends_ = (prev: SpanLocation, next: SpanLocation): boolean =>
  prev.segment === next.segment && prev.offset + prev.length === next.offset && prev.length + next.length <= SPAN_MAX_BYTES;

/** Rows a migration writes per batch (one segment append, one span). */
const MIGRATE_ROWS = 1000;

/** The audit chain, its signed checkpoints, and the dedupe answers committed with it. */
export function AuditRows<B extends StoreBase>(Base: B): WithRows<B, Omit<AuditStore, "offlineJournal"> & JournalledAudit> {
  return class AuditRows extends Base implements Omit<AuditStore, "offlineJournal">, JournalledAudit {
    /** Reads of the table (a home not yet moved to segments; an in-memory store). */
    readonly #table = new AuditReads(this.db);
    /** Writes: the table's (as above), and the dedupe and checkpoint rows of every commit. */
    readonly #writes = auditAppender(this.db);
    /** Reads of the segments, once this home's audit is in them. */
    #segments: SegmentReads | undefined = this.#detectSegments();
    /** The open segment, once the kernel opened the segments (useAuditSegments). */
    #writer: SegmentWriter | undefined;
    #closedSyncFailure: Error | undefined;
    /** Batches in the segment and not yet indexed, oldest first. */
    #unindexed: Queued[] = [];
    /** See AuditStore.onIndexFailed. */
    onIndexFailed?: (e: unknown) => void;
    #unindexedRows = 0;
    #unindexedDedupe = 0;
    #unindexedBytes = 0;
    #insertSpan = this.db.prepare(
      "INSERT INTO audit_batches (first_seq, last_seq, segment, offset, length) VALUES (?, ?, ?, ?, ?)",
    );
    #dropJournal = this.db.prepare("DELETE FROM offline_journal WHERE id <= ?");

    #detectSegments(): SegmentReads | undefined {
      if (this.path === ":memory:" || this.getMeta(SEGMENTED_KEY) !== "1") return undefined;
      return new SegmentReads(this.db, join(dirname(this.path), AUDIT_SEGMENT_DIR));
    }

    get #reads(): AuditReadApi {
      return this.#segments ?? this.#table;
    }

    /**
     * Opens the audit segments in `dir` for the one kernel that holds the home (never for a
     * tool's connection beside it): first moves the records of a home of an older kpip out of
     * the `audit` table (after indexing what its journal at `legacyJournal` held), then indexes
     * the batches a killed kernel appended past the index (throws AuditJournalError when they
     * are not batches continuing the chain), cutting a torn last append.
     */
    useAuditSegments(dir: string, legacyJournal?: string, opts: RotationOptions = {}): SegmentsOpened {
      if (this.#writer) throw new AuditJournalError("the audit segments are already open");
      let migrated = 0;
      if (this.getMeta(SEGMENTED_KEY) !== "1") {
        if (legacyJournal && existsSync(legacyJournal) && statSync(legacyJournal).size > 0)
          indexJournalFile(this.db, legacyJournal, this.#writes.append, this.#table);
        migrated = this.#migrate(dir);
      } else if (legacyJournal && existsSync(legacyJournal) && statSync(legacyJournal).size > 0) {
        throw new AuditJournalError(`${legacyJournal} holds batches, and this home's audit is in segments: not read`);
      }
      if (legacyJournal && existsSync(legacyJournal)) unlinkSync(legacyJournal);
      this.#segments ??= new SegmentReads(this.db, dir);
      const seg = this.#segments;
      const indexedHead = seg.head();
      const signed = this.#countCheckpoints();
      const dropped = this.#dropLostTail(dir, seg);
      this.#checkSegments(dir);
      const headSeq = seg.head();
      const hash = headSeq === undefined ? undefined : seg.hashAt(headSeq);
      const { batches, cut } = tailBatches(
        dir,
        seg.index.last(),
        headSeq !== undefined && hash ? { seq: headSeq, hash } : undefined,
      );
      let recovered = 0;
      if (batches.length > 0) {
        this.#index(batches);
        for (const b of batches) recovered += b.batch.rows.length;
      }
      if (cut) {
        // The torn append was never acknowledged: cut, so the next append follows whole batches.
        truncateSync(join(dir, segmentName(cut.segment)), cut.size);
      }
      const next = (seg.head() ?? seg.index.retained()) + 1;
      this.#writer = new SegmentWriter(dir, next, opts);
      if (dropped === 0 || indexedHead === undefined) return { recovered, migrated };
      // Exactly what is gone: the whole batches still there were indexed again just above.
      const lost: LostTail = {
        records: Math.max(0, indexedHead - next + 1),
        from: next,
        to: indexedHead,
        checkpoints: Math.max(0, signed - this.#countCheckpoints()),
      };
      return lost.records > 0 || lost.checkpoints > 0 ? { recovered, migrated, lost } : { recovered, migrated };
    }

    /**
     * The index may be durable ahead of the newest segment: both are synced on their own
     * schedules (synchronous=NORMAL's checkpoints, the segment's periodic fdatasync), so an OS
     * crash can keep spans whose bytes the segment lost. Only then — spans of the newest segment
     * naming bytes past its end — are they dropped from the index with their checkpoints (the
     * records were lost with the page cache, as the WAL's last commits can be; the signed
     * checkpoints and anchors bound such a cut, as they bound a WAL cut at its end); the whole
     * batches still there are indexed again by the tail scan. Anything else a segment lacks stops
     * the start (tailBatches).
     */
    /** Every segment the index names is there and holds the bytes it names (else the start stops: never a silent hole). */
    #checkSegments(dir: string): void {
      const ends = this.prep("SELECT segment, max(offset + length) AS end FROM audit_batches GROUP BY segment").all() as {
        segment: number;
        end: number;
      }[];
      for (const { segment, end } of ends) {
        const path = join(dir, segmentName(segment));
        const size = existsSync(path) ? statSync(path).size : -1;
        if (size < 0) throw new SegmentCutError(`${segmentName(segment)}, named by the index, is missing`);
        if (size < end)
          throw new SegmentCutError(
            `${segmentName(segment)} is cut short: the index names bytes through ${end}, it holds ${size}`,
          );
      }
    }

    #countCheckpoints(): number {
      return (this.prep("SELECT count(*) AS n FROM audit_checkpoints").get() as { n: number }).n;
    }

    #dropLostTail(dir: string, seg: SegmentReads): number {
      const last = seg.index.last();
      if (!last) return 0;
      const newest = listSegments(dir).at(-1);
      // The newest segment may be gone altogether (its directory entry was lost with its bytes):
      // only when nothing newer is there — an older segment missing is a hole, never this.
      if (newest !== undefined && newest > last.segment) return 0;
      const size = newest === last.segment ? statSync(join(dir, segmentName(last.segment))).size : 0;
      if (last.offset + last.length <= size) return 0;
      return this.db.transaction(() => {
        const gone = this.prep(
          "SELECT coalesce(sum(last_seq - first_seq + 1), 0) AS n FROM audit_batches WHERE segment = ? AND offset + length > ?",
        ).get(last.segment, size) as { n: number };
        this.prep("DELETE FROM audit_batches WHERE segment = ? AND offset + length > ?").run(last.segment, size);
        this.prep("DELETE FROM audit_checkpoints WHERE seq > ?").run(seg.head() ?? seg.index.retained());
        return gone.n;
      })();
    }

    /**
     * Moves the `audit` table's rows to segments, byte for byte (a tampered row stays as it is,
     * for verify to report), then in one transaction indexes them and empties the table: a crash
     * before it leaves the table as it was (and segments the next try starts over).
     */
    #migrate(dir: string): number {
      // A sentinel of an earlier move (the table's rows put back by a tool) is not a record.
      this.db
        .prepare("DELETE FROM audit WHERE seq = 0 AND hash = zeroblob(32) AND record = ?")
        .run(Buffer.from(SEGMENTS_SENTINEL, "utf8"));
      const first = this.#table.first();
      if (first !== undefined) {
        for (const s of listSegments(dir)) unlinkSync(join(dir, segmentName(s)));
      }
      const writer = new SegmentWriter(dir, first ?? 1, { presync: false });
      const batches: TailBatch[] = [];
      let moved = 0;
      try {
        const rows = this.db.prepare(
          `SELECT seq, CASE WHEN typeof(hash) = 'blob' AND length(hash) <= 64 THEN hash ELSE x'' END AS hash,
          CASE WHEN typeof(record) = 'blob' AND octet_length(record) <= ${MAX_RECORD_BYTES} THEN record ELSE x'' END AS record
          FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`,
        );
        let after = Number.MIN_SAFE_INTEGER;
        for (;;) {
          const got = rows.all(after, MIGRATE_ROWS) as { seq: number; hash: Uint8Array; record: Uint8Array }[];
          if (got.length === 0) break;
          const last = (got.at(-1) as { seq: number }).seq;
          if (!(last > after)) throw new AuditJournalError(`the audit table's seq ${last} cannot be read exactly: not moved`);
          const batch: JournalBatch = { rows: got, dedupe: [], journalUpTo: 0, checkpoints: [] };
          batches.push({ batch, at: writer.append(batch) });
          moved += got.length;
          after = last;
        }
        writer.syncNow();
      } finally {
        writer.close();
      }
      this.db.transaction(() => {
        for (const s of spansOf(batches)) this.#putSpan(s);
        if (first !== undefined && first > 1) this.setMeta(RETAINED_THROUGH_KEY, String(first - 1));
        this.setMeta(SEGMENTED_KEY, "1");
        this.db.exec("DELETE FROM audit");
        this.db
          .prepare("INSERT INTO audit (seq, hash, record) VALUES (0, zeroblob(32), ?)")
          .run(Buffer.from(SEGMENTS_SENTINEL, "utf8"));
      })();
      return moved;
    }

    #putSpan(s: IndexSpan): void {
      this.#insertSpan.run(s.first, s.last, s.segment, s.offset, s.length);
    }

    /** Indexes batches that are in a segment: their spans, dedupe rows, offline-journal deletes and checkpoints; one commit. */
    #index(q: readonly Queued[]): void {
      const spans = spansOf(q);
      let extra = false;
      for (const { batch } of q) if (batch.dedupe.length || batch.journalUpTo > 0 || batch.checkpoints.length) extra = true;
      if (!extra && spans.length === 1) {
        // The common commit: one span alone, its own transaction.
        this.#putSpan(spans[0] as IndexSpan);
        return;
      }
      this.transaction(() => {
        for (const s of spans) this.#putSpan(s);
        let journalUpTo = 0;
        for (const { batch } of q) {
          // An answer kept with its outcome record is where that batch is in the log.
          const at = batch.rows.at(-1)?.seq;
          for (const d of batch.dedupe) this.#writes.putDedupe(d, at);
          for (const c of batch.checkpoints) this.#writes.addCheckpoint(c);
          if (batch.journalUpTo > journalUpTo) journalUpTo = batch.journalUpTo;
        }
        if (journalUpTo > 0) this.#dropJournal.run(journalUpTo);
      });
    }

    /** Why a sync of an audit segment failed, if one did: the audit takes no more records. */
    get auditSyncFailure(): Error | undefined {
      return this.#writer?.syncFailure ?? this.#closedSyncFailure;
    }

    get failure(): Error | undefined {
      return this.storageFailure ?? this.auditSyncFailure;
    }

    async syncAuditSegment(): Promise<void> {
      await this.#writer?.sync();
    }

    /** Records appended and not yet indexed. */
    get auditUnindexed(): number {
      return this.#unindexedRows;
    }
    indexAudit(): void {
      const q = this.#unindexed;
      if (q.length === 0) return;
      // Inside a caller's transaction this would be a savepoint its rollback could undo, after the
      // queue let the batches go.
      if (this.db.inTransaction)
        throw new AuditJournalError("audit records in a segment cannot be indexed inside another transaction");
      try {
        this.#index(q);
      } catch (e) {
        this.onIndexFailed?.(e);
        throw e;
      }
      this.#unindexed = [];
      this.#unindexedRows = 0;
      this.#unindexedDedupe = 0;
      this.#unindexedBytes = 0;
    }
    /**
     * Before a read or write of the dedupe table: only when a waiting batch carries dedupe rows (a
     * new request with effects looks its key up there, and must not pay for an index of records).
     */
    #settleDedupe(): void {
      if (this.#unindexedDedupe > 0 && !this.db.inTransaction) this.indexAudit();
    }
    /** Before any read of what the index step writes: the index holds every committed batch. */
    #settle(): void {
      // Inside a caller's transaction a read sees SQLite as it is (indexAudit would refuse).
      if (this.#unindexed.length > 0 && !this.db.inTransaction) this.indexAudit();
    }

    auditHashAt(seq: number): Uint8Array | undefined {
      this.#settle();
      return this.#reads.hashAt(seq);
    }
    appendAudit(rows: AuditRow[], dedupe: DedupeRow[] = [], journalUpTo = 0, checkpoints: AuditCheckpoint[] = []): void {
      const failed = this.storageFailure;
      if (failed)
        throw new AuditJournalError(
          `the database file could not be synced (${failed.message}): the kernel takes no more changes; restart it once the disk is mended`,
        );
      const writer = this.#writer;
      if (!writer) {
        if (this.#segments) throw new AuditJournalError("this home's audit is in segments: only its kernel appends to it");
        return this.#writes.append(rows, dedupe, journalUpTo, checkpoints);
      }
      // SQLite that keeps failing holds the records back: the backlog in memory stays bounded.
      if (this.#unindexedRows >= MAX_UNINDEXED_ROWS || this.#unindexedBytes >= MAX_UNINDEXED_BYTES) this.indexAudit();
      // The log hands over rows with their hashed bytes; one built elsewhere is encoded here, once.
      for (const r of rows) r.record ??= recordBytes(r);
      const batch: JournalBatch = { rows: rows as JournalBatch["rows"], dedupe, journalUpTo, checkpoints };
      const at = writer.append(batch);
      this.#unindexedBytes += at.length;
      this.#unindexedRows += rows.length;
      this.#unindexedDedupe += dedupe.length;
      // Queued for the index step with its first and last seq only: the records' objects and bytes
      // are in the segment now, and do not outlive their answers waiting for the index.
      const first = rows[0];
      const last = rows[rows.length - 1];
      const prev = this.#unindexed.at(-1);
      const alone = dedupe.length === 0 && journalUpTo === 0 && checkpoints.length === 0;
      if (first && last && alone && prev && prev.batch.rows.length === 2 && plain(prev.batch) && extends_(prev.at, at)) {
        // A batch of records alone, right after another: the queued one grows to cover it (what
        // spansOf would do at the step), so the queue holds a few objects however long it waits,
        // not one per commit surviving scavenges into the old space (one commit a request at one in flight).
        prev.at.length += at.length;
        // The queue's own edges array (made below), its last edge replaced.
        (prev.batch.rows as JournalRecord[])[1] = edge(last.seq);
        return;
      }
      const edges = first && last ? [edge(first.seq), edge(last.seq)] : [];
      this.#unindexed.push({ batch: { rows: edges, dedupe, journalUpTo, checkpoints }, at });
    }
    firstAuditSeq(): number | undefined {
      this.#settle();
      return this.#reads.first();
    }
    pruneAudit(throughSeq: number, base?: AuditCheckpoint): number {
      this.#settle();
      const seg = this.#segments;
      if (!seg) {
        return this.db.transaction(() => {
          if (base) this.addCheckpoint(base);
          const n = this.prep("DELETE FROM audit WHERE seq <= ?").run(throughSeq).changes;
          this.prep("DELETE FROM audit_checkpoints WHERE seq < ?").run(throughSeq);
          return n;
        })();
      }
      const previous = seg.index.retained();
      const n = this.db.transaction(() => {
        if (base) this.addCheckpoint(base);
        const before = seg.count();
        if (throughSeq > seg.index.retained()) this.setMeta(RETAINED_THROUGH_KEY, String(throughSeq));
        this.prep("DELETE FROM audit_batches WHERE last_seq <= ?").run(throughSeq);
        this.prep("DELETE FROM audit_checkpoints WHERE seq < ?").run(throughSeq);
        return before - seg.count();
      })();
      // After the commit, and one prune late: the files wholly below the previous retained point.
      // A reader beside the kernel whose snapshot still names them (a long `kpip audit verify`)
      // has until the next prune to read them; a crash before leaves files no span names, which
      // a later prune removes.
      dropSegmentsThrough(seg.index.files.dir, Math.min(previous, throughSeq));
      return n;
    }
    lookupDedupe(key: string, now: number): DedupeRow | undefined {
      this.#settleDedupe();
      const r = this.prep("SELECT * FROM dedupe WHERE key = ? AND expires >= ?").get(key, now) as Row | undefined;
      return r && { key, hash: r.hash as Uint8Array, response: r.response as Uint8Array, expires: r.expires as number };
    }
    putDedupe(d: DedupeRow): void {
      this.#settleDedupe();
      this.#writes.putDedupe(d);
    }
    /**
     * No index finds these rows (a partial index on them cost every effect's commit a page: the
     * migration drops it). Rows are written in rowid order, each naming where the log was
     * (after_seq), which lags that order by less than DEDUPE_POSITION_SLACK: the walk reads the
     * newest rows first and stops at the first one named below `sinceSeq` by more than that. A
     * row with no after_seq (an older kernel's answer kept with its outcome record, or one it
     * cleared) does not stop it: on a home of an older kpip the first walk may read the whole
     * table (the rows of one dedupe window).
     */
    effectAnswersSince(sinceSeq: number): EffectAnswerRef[] {
      // Every waiting batch: its answers, and their positions, are in the table.
      this.#settle();
      // Where each row is, not its answer (effectAnswer reads that for the few a start records).
      const page = this.prep(
        `SELECT rowid, key, intent_seq, after_seq FROM dedupe WHERE rowid < ? ORDER BY rowid DESC LIMIT ${WALK_ROWS}`,
      ).raw(true);
      const stop = sinceSeq - DEDUPE_POSITION_SLACK;
      const out: EffectAnswerRef[] = [];
      for (let below = Number.MAX_SAFE_INTEGER; ; ) {
        const rows = page.all(below) as unknown[][];
        for (const r of rows) {
          const after = r[3];
          if (typeof after !== "number") continue;
          if (after < stop) return byPosition(out);
          const intentSeq = r[2];
          if (typeof intentSeq !== "number" || after < sinceSeq) continue;
          out.push({ key: r[1] as string, intentSeq, afterSeq: after });
        }
        if (rows.length < WALK_ROWS) return byPosition(out);
        below = (rows.at(-1) as unknown[])[0] as number;
      }
    }
    effectAnswer(key: string): EffectAnswer | undefined {
      this.#settleDedupe();
      const r = this.prep("SELECT response, intent_seq, after_seq, detail, revoked FROM dedupe WHERE key = ?").get(key) as
        | Row
        | undefined;
      if (!r || typeof r.intent_seq !== "number" || typeof r.after_seq !== "number") return undefined;
      return {
        key,
        response: r.response as Uint8Array,
        intentSeq: r.intent_seq,
        afterSeq: r.after_seq,
        ...(typeof r.detail === "string" ? { detail: r.detail } : {}),
        ...(typeof r.revoked === "string" ? { revoked: stringList(r.revoked) } : {}),
      };
    }
    effectAnswersRecorded(keys: readonly string[]): void {
      const clear = this.prep(
        "UPDATE dedupe SET intent_seq = NULL, after_seq = NULL, detail = NULL, revoked = NULL WHERE key = ?",
      );
      this.transaction(() => {
        for (const k of keys) clear.run(k);
      });
    }
    pruneDedupe(now: number, max?: number): number {
      this.#settleDedupe();
      if (max === undefined) return this.prep("DELETE FROM dedupe WHERE expires < ?").run(now).changes;
      // Rows are appended in expiry order: the oldest by rowid, not a scan of the table.
      return this.prep("DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe ORDER BY rowid LIMIT ?) AND expires < ?").run(
        max,
        now,
      ).changes;
    }
    dedupeEnd(): number {
      this.#settleDedupe();
      return ((this.prep("SELECT max(rowid) AS n FROM dedupe").get() as Row).n as number | null) ?? 0;
    }
    pruneDedupeRange(now: number, after: number, through: number, max: number): { deleted: number; last: number } {
      this.#settleDedupe();
      const last = (
        this.prep(
          "SELECT max(rowid) AS n FROM (SELECT rowid FROM dedupe WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?)",
        ).get(after, through, max) as Row
      ).n as number | null;
      if (last === null) return { deleted: 0, last: through };
      const deleted = this.prep("DELETE FROM dedupe WHERE rowid > ? AND rowid <= ? AND expires < ?").run(
        after,
        last,
        now,
      ).changes;
      return { deleted, last };
    }
    lastAudit(): AuditRow | undefined {
      this.#settle();
      return this.#reads.last();
    }
    scanAudit(fromSeq: number, batch: number): AuditRow[] {
      this.#settle();
      return this.#reads.up(fromSeq, batch);
    }
    auditHeads(fromSeq: number, toSeq: number, visit: (h: RecordHead) => void): void {
      this.#settle();
      this.#reads.heads(fromSeq, toSeq, visit);
    }
    /** `audit verify`'s check of a range (verify-records.ts): the kernel's inherited-chain check and tools take it. */
    verifyRecords(from: number, to: number, cpSeqs: Set<number>, onProgress?: (done: number) => void): RangeResult {
      this.#settle();
      this.#verifier ??= this.#segments ? new SegmentScan(this.#segments.index) : new RecordScan(this.db);
      return this.#verifier.verify(from, to, cpSeqs, 1000, onProgress);
    }
    #verifier: RecordScan | SegmentScan | undefined;
    countAudit(): number {
      this.#settle();
      return this.#reads.count();
    }
    /** Newest first through the records (decoded: the fields are only in the record's bytes), oldest first out. */
    queryAudit(q: AuditQuery): AuditRow[] {
      this.#settle();
      const limit = q.limit ?? 100;
      const out: AuditRow[] = [];
      let below = Number.POSITIVE_INFINITY;
      while (out.length < limit) {
        const reads = this.#reads;
        const rows = reads.down(below, q.afterSeq ?? Number.NEGATIVE_INFINITY, reads.rows);
        if (rows.length === 0) break;
        for (const r of rows) {
          if (q.persona !== undefined && r.persona !== q.persona) continue;
          if (q.op !== undefined && r.op !== q.op) continue;
          if (q.status !== undefined && r.status !== q.status) continue;
          if (q.since !== undefined && r.time < q.since) continue;
          out.push(r);
          if (out.length === limit) break;
        }
        below = (rows.at(-1) as AuditRow).seq;
      }
      return out.reverse();
    }
    addCheckpoint(c: AuditCheckpoint): void {
      this.#settle();
      this.#writes.addCheckpoint(c);
    }
    checkpoints(): AuditCheckpoint[] {
      this.#settle();
      return this.#reads.checkpoints();
    }
    override settleAudit(): void {
      this.#settle();
    }
    /** Indexes what is appended, syncs and closes the segment, then the database. */
    override close(): void {
      const writer = this.#writer;
      if (writer && this.db.open) {
        try {
          this.indexAudit();
        } catch {
          // What SQLite could not take stays past the index: the next start indexes it.
        } finally {
          try {
            writer.close();
          } finally {
            // Still told after the close (its own sync may be the one that failed): kpip kernel exits 4.
            this.#closedSyncFailure = writer.syncFailure;
            this.#writer = undefined;
          }
        }
      }
      this.#segments?.close();
      super.close();
    }
  };
}

/** Newest effect first (by where the log was at its commit), as the rows were written. */
function byPosition(a: EffectAnswerRef[]): EffectAnswerRef[] {
  return a.sort((x, y) => y.afterSeq - x.afterSeq);
}

/** A JSON list of strings as stored; what a damaged row holds instead is read as no list. */
function stringList(text: string): string[] {
  try {
    const v: unknown = JSON.parse(text);
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
  } catch {
    return [];
  }
}
