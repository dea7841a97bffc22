import {
  closeSync,
  constants,
  existsSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { PREV_HASH_BYTES, recordSeq } from "../audit/record-seq.js";
import {
  AuditJournalError,
  decodeBatches,
  encodeBatch,
  HEAD,
  type JournalBatch,
  MAGIC,
  openRegular,
  TAIL,
} from "./audit-journal.js";

/**
 * The audit chain's bytes, in append-only segment files under the home (`<home>/audit/<first
 * seq>.seg`, 0600): each commit of the log is one batch of the journal's format (head, body,
 * tail: audit-journal.ts) appended with one `write`, and the request is answered once it is
 * there. SQLite keeps no record bytes, only where each span of batches is (the `audit_batches`
 * table, written in the index step with the dedupe rows, offline-journal deletes and
 * checkpoints the batches carry). A reader finds a record's span there, reads it with one
 * pread (its length bounded by the file), and decodes it. Docs: docs/architecture.md, "The
 * audit chain in segment files".
 */

/** The index names bytes a segment does not hold (cut short or missing): verify reports it; a kernel does not start on it. */
export class SegmentCutError extends AuditJournalError {
  override name = "SegmentCutError";
}

/** The segments' directory in a kernel home. */
export const AUDIT_SEGMENT_DIR = "audit";

/** The index of the segments (one row per span of batches the index step wrote). */
export const AUDIT_BATCHES_TABLE =
  "CREATE TABLE IF NOT EXISTS audit_batches (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL)";

/** meta key: records through this seq were pruned by retention (the rest of their span is hidden). */
export const RETAINED_THROUGH_KEY = "audit_retained_through";

/** A span's bytes a reader reads at most: more is tampering (the kernel indexes a few MiB at a time). */
export const MAX_SPAN_BYTES = 512 * 1024 * 1024;

/** A segment file's name: its first record's seq, zero-padded so names sort as numbers. */
export function segmentName(first: number): string {
  return `${String(first).padStart(16, "0")}.seg`;
}

/** The segments in `dir`, oldest first (their first seqs); none when there is no directory. */
export function listSegments(dir: string): number[] {
  if (!existsSync(dir)) return [];
  const out: number[] = [];
  for (const n of readdirSync(dir)) {
    const m = /^(\d{16})\.seg$/.exec(n);
    if (m) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

/** Where a batch (or a span of adjacent batches) is. */
export interface SpanLocation {
  segment: number;
  offset: number;
  length: number;
}

/** One row of the index: a span of adjacent batches in one segment and the records they hold. */
export interface IndexSpan extends SpanLocation {
  first: number;
  last: number;
}

/** A record as a span holds it, unchecked (verify checks it; the readers decode it). */
export interface SpanRow {
  seq: number;
  hash: Uint8Array;
  record: Buffer;
  /** Where the record's bytes start in the span (its length field is the 4 bytes before). */
  at: number;
  /**
   * Set when the record's length runs past its batch (tampering, or damage): the length it
   * declares, never allocated; `record` is then empty, and the span ends there.
   */
  declared?: number;
}

/** A span's records as read: those before any damage, and the damage's reason. */
export interface SpanRead {
  rows: SpanRow[];
  damage?: string;
}

/**
 * The records of a span's bytes (adjacent batches), unchecked: what the framing and the
 * fields' lengths say, never more than the bytes hold. The first thing that is not a batch
 * ends the list with `damage`.
 */
export function parseSpan(buf: Buffer, where: string): SpanRead {
  const rows: SpanRow[] = [];
  let at = 0;
  const damaged = (reason: string): SpanRead => ({ rows, damage: `${where}: the batch at byte ${at} ${reason}` });
  while (at < buf.length) {
    if (buf.length - at < HEAD + TAIL) return damaged("is cut short");
    if (buf.readUInt32LE(at) !== MAGIC) return damaged("is not an audit batch");
    const body = buf.readUInt32LE(at + 4);
    if (buf.readUInt32LE(at + 8) !== ~body >>> 0) return damaged("is damaged (its length does not match its check)");
    const end = at + HEAD + body + TAIL;
    if (end > buf.length) return damaged("is cut short (its length runs past the span)");
    if (buf.readUInt32LE(end - TAIL) !== (body ^ MAGIC) >>> 0) return damaged("is damaged (its tail does not match its head)");
    let p = at + HEAD;
    const stop = end - TAIL;
    const u32 = () => {
      if (p + 4 > stop) return -1;
      const v = buf.readUInt32LE(p);
      p += 4;
      return v;
    };
    const nRows = u32();
    p += 4 + 4 + 8; // the counts of dedupe rows and checkpoints, the offline journal's id
    if (nRows < 0 || p > stop) return damaged("is shorter than its fields");
    for (let i = 0; i < nRows; i++) {
      if (p + 8 > stop) return damaged("is shorter than its fields");
      const seq = buf.readDoubleLE(p);
      p += 8;
      const hn = u32();
      if (hn < 0 || p + hn > stop) return damaged("is shorter than its fields");
      const hash = buf.subarray(p, p + hn);
      p += hn;
      const rn = u32();
      if (rn < 0) return damaged("is shorter than its fields");
      // A length read from the framing, checked against the bytes there: never allocated.
      if (p + rn > stop) {
        rows.push({ seq, hash, record: buf.subarray(p, p), at: p, declared: rn });
        return damaged(`is damaged (record ${seq}'s length, ${rn} bytes, runs past it)`);
      }
      rows.push({ seq, hash, record: buf.subarray(p, p + rn), at: p });
      p += rn;
    }
    at = end;
  }
  return { rows };
}

/** Segment descriptors a reader keeps open at most. */
const SEGMENT_FDS = 4;

/** Reads spans of a home's segments: one descriptor per segment read, kept until close (at most SEGMENT_FDS). */
export class SegmentFiles {
  readonly #fds = new Map<number, number>();
  /** Segments opened ahead by {@link pin}: kept open, outside the SEGMENT_FDS bound, until unpin. */
  readonly #pinned = new Map<number, number>();

  constructor(readonly dir: string) {}

  /**
   * Opens these segments now and keeps them open until {@link unpin}: a reader beside a running
   * kernel whose snapshot names them (a long `audit verify`) still reads a file retention unlinks
   * meanwhile, through its descriptor. One that cannot be opened now is read as before (missing).
   */
  pin(segments: readonly number[]): void {
    for (const s of segments) {
      if (this.#pinned.has(s)) continue;
      try {
        this.#pinned.set(s, openRegular(join(this.dir, segmentName(s)), constants.O_RDONLY));
      } catch {
        // Gone already, or not a regular file: its reads report it.
      }
    }
  }

  unpin(): void {
    for (const fd of this.#pinned.values()) closeSync(fd);
    this.#pinned.clear();
  }

  #fd(segment: number): number | string {
    const pinned = this.#pinned.get(segment);
    if (pinned !== undefined) return pinned;
    let fd = this.#fds.get(segment);
    if (fd === undefined) {
      try {
        fd = openRegular(join(this.dir, segmentName(segment)), constants.O_RDONLY);
      } catch (e) {
        // Retention removed it (a live home), or it is gone: the span's records are missing.
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return `${segmentName(segment)} is missing`;
        // A link or a FIFO put in its place (a tampered home): its records are unreadable, which verify reports.
        if ((e as NodeJS.ErrnoException).code === "ELOOP" || e instanceof AuditJournalError)
          return `${segmentName(segment)} is not a regular file`;
        if ((e as NodeJS.ErrnoException).code === "ENOTDIR")
          return `${segmentName(segment)} cannot be read: the segments' directory is not a directory`;
        throw e;
      }
      // A few at most (a scan reads one segment after another): the kernel's descriptor margin is small (fd-budget.ts).
      if (this.#fds.size >= SEGMENT_FDS) this.#closeOpen();
      this.#fds.set(segment, fd);
    }
    return fd;
  }

  /** The bytes of a span, or why they cannot be read (never more than the file holds, nor MAX_SPAN_BYTES). */
  bytes(s: SpanLocation): Buffer | string {
    const name = segmentName(s.segment);
    if (!(s.length >= 0 && s.offset >= 0 && Number.isSafeInteger(s.offset) && Number.isSafeInteger(s.length)))
      return `${name}: the index names no bytes there`;
    if (s.length > MAX_SPAN_BYTES)
      return `${name}: the index names ${s.length} bytes at once, more than any kernel writes: not read`;
    const fd = this.#fd(s.segment);
    if (typeof fd === "string") return fd;
    const size = fstatSync(fd).size;
    if (s.offset + s.length > size) return `${name} is cut short (the index names bytes past its end)`;
    const buf = Buffer.allocUnsafe(s.length);
    let done = 0;
    while (done < s.length) {
      const n = readSync(fd, buf, done, s.length - done, s.offset + done);
      if (n === 0) return `${name} is cut short (the index names bytes past its end)`;
      done += n;
    }
    return buf;
  }

  /** The records of a span, checked only to be what the framing says (parseSpan). */
  read(s: SpanLocation): SpanRead {
    const b = this.bytes(s);
    if (typeof b === "string") return { rows: [], damage: b };
    return parseSpan(b, `${segmentName(s.segment)}`);
  }

  #closeOpen(): void {
    for (const fd of this.#fds.values()) closeSync(fd);
    this.#fds.clear();
  }

  close(): void {
    this.#closeOpen();
    this.unpin();
  }
}

/** How a SegmentWriter rotates. */
export interface RotationOptions {
  /** A segment past this many bytes is full: the next batch starts a new one. */
  rotateAbove?: number;
  /**
   * Whether a full segment is synced off the kernel's thread before it is closed (default):
   * past the bound an fdatasync starts in the background and appends go on into the full
   * segment until it completes (at most to twice the bound); the rotation's own sync then
   * flushes only the last milliseconds. Off, the rotation syncs the whole unsynced tail on the
   * thread, as tests appending in synchronous loops expect (they never yield to the sync).
   */
  presync?: boolean;
}

/**
 * The open segment the kernel appends to: one `write` a batch, a new segment (named after its
 * first record) once the current one passes `rotateAbove`.
 */
export class SegmentWriter {
  #fd: number | undefined;
  #segment = 0;
  #size = 0;
  #broken = false;
  /**
   * A background sync that failed (EIO, ENOSPC): the kernel reports a writeback error to one
   * fsync only, so a later sync of the same file may succeed while the pages it should have
   * made durable are lost. The audit fails closed: no append is taken after it.
   */
  #syncFailed: { segment: number; error: Error } | undefined;
  #scratch: Buffer | undefined;
  /** Bytes written since the last sync (none: the sync has nothing to do). */
  #dirty = false;
  /** The seq the next record takes (names a new segment). */
  #next: number;
  readonly #rotateAbove: number;
  readonly #presyncs: boolean;
  /** The full segment's background sync: none started, running, or done (rotate at the next batch). */
  #presync: "none" | "running" | "done" = "none";
  #presyncDone: Promise<void> = Promise.resolve();
  /**
   * Background syncs in flight per descriptor: a descriptor is closed only when none is (closed
   * under one, its number could be reused and the sync would land on another file).
   */
  readonly #inflight = new Map<number, number>();
  readonly #closeWhenIdle = new Set<number>();

  constructor(
    readonly dir: string,
    next: number,
    opts: RotationOptions = {},
  ) {
    this.#next = next;
    this.#rotateAbove = opts.rotateAbove ?? 64 * 1024 * 1024;
    this.#presyncs = opts.presync ?? true;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const last = listSegments(dir).at(-1);
    if (last !== undefined) this.#open(last);
  }

  #open(segment: number): void {
    const path = join(this.dir, segmentName(segment));
    const created = !existsSync(path);
    const fd = openRegular(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT);
    this.#fd = fd;
    this.#segment = segment;
    this.#size = fstatSync(fd).size;
    this.#presync = "none";
    // A new segment's name is durable before its records are: an OS crash must not lose the file
    // while keeping the index rows that name it (the start cuts back only the newest one's loss).
    if (created) syncDirectory(this.dir);
  }

  /** Appends one batch in one write; answers where it is. Throws (leaving the file as it was) when it cannot. */
  append(b: JournalBatch): SpanLocation {
    if (this.#broken) throw new AuditJournalError(`${this.dir}: a torn write could not be cut back; the audit takes no more`);
    if (this.#syncFailed) {
      const { segment, error } = this.#syncFailed;
      throw new AuditJournalError(
        `${segmentName(segment)} could not be synced (${error.message}): its records may not be on the disk, and the audit takes no more; restart the kernel once the disk is mended`,
      );
    }
    const first = b.rows[0]?.seq;
    if (this.#fd === undefined) this.#rotate(first ?? this.#next);
    else if (first !== undefined && this.#size >= this.#rotateAbove) this.#full(first);
    const fd = this.#fd as number;
    const { buf, length } = encodeBatch(b, this.#scratch);
    if (buf.length <= 1024 * 1024) this.#scratch = buf;
    let done = 0;
    try {
      while (done < length) done += writeSync(fd, buf, done, length - done);
    } catch (e) {
      if (done > 0) {
        try {
          ftruncateSync(fd, this.#size);
        } catch {
          this.#broken = true;
        }
      }
      throw e;
    }
    const at: SpanLocation = { segment: this.#segment, offset: this.#size, length };
    this.#size += length;
    this.#dirty = true;
    const last = b.rows.at(-1);
    if (last) this.#next = last.seq + 1;
    return at;
  }

  /** The open segment is past its bound: rotate now, or once its background sync is done. */
  #full(first: number): void {
    if (!this.#presyncs || this.#presync === "done" || this.#size >= 2 * this.#rotateAbove) {
      this.#rotate(first);
      return;
    }
    if (this.#presync === "running") return;
    this.#presync = "running";
    const segment = this.#segment;
    this.#presyncDone = new Promise((resolve) =>
      this.#background(this.#fd as number, () => {
        if (this.#segment === segment && this.#fd !== undefined) this.#presync = "done";
        resolve();
      }),
    );
  }

  /** Why a sync of a segment failed, if one did: no append is taken any more ({@link #syncFailed}). */
  get syncFailure(): Error | undefined {
    const f = this.#syncFailed;
    return f && new AuditJournalError(`${segmentName(f.segment)} could not be synced: ${f.error.message}`);
  }

  /** Settles when the full segment's background sync (if one was started) is done. */
  get presynced(): Promise<void> {
    return this.#presyncDone;
  }

  /**
   * An fdatasync on the thread pool; `then` runs when it is done. A failure is kept
   * ({@link #syncFailed}): every append after it throws.
   */
  #background(fd: number, then: () => void): void {
    const segment = this.#segment;
    this.#inflight.set(fd, (this.#inflight.get(fd) ?? 0) + 1);
    fdatasync(fd, (err) => {
      if (err && !this.#syncFailed) this.#syncFailed = { segment, error: err };
      const left = (this.#inflight.get(fd) ?? 1) - 1;
      if (left > 0) this.#inflight.set(fd, left);
      else {
        this.#inflight.delete(fd);
        if (this.#closeWhenIdle.delete(fd)) closeSync(fd);
      }
      then();
    });
  }

  #release(fd: number): void {
    if (this.#inflight.has(fd)) this.#closeWhenIdle.add(fd);
    else closeSync(fd);
  }

  /** An fdatasync on this thread; a failure is kept as a background one's is ({@link #syncFailed}). */
  #syncHere(fd: number): void {
    try {
      fdatasyncSync(fd);
    } catch (e) {
      this.#syncFailed ??= { segment: this.#segment, error: e as Error };
      throw e;
    }
  }

  #rotate(first: number): void {
    if (this.#fd !== undefined) {
      // The full segment is durable before the next one starts: an OS crash loses only the newest one's tail.
      this.#syncHere(this.#fd);
      this.#release(this.#fd);
      this.#fd = undefined;
    }
    if (existsSync(join(this.dir, segmentName(first))))
      throw new AuditJournalError(`${segmentName(first)} exists already: the audit would fork`);
    this.#open(first);
  }

  /** An fdatasync of the open segment off the kernel's thread (the periodic sync); nothing when nothing was written. */
  sync(): Promise<void> {
    const fd = this.#fd;
    if (fd === undefined || !this.#dirty) return Promise.resolve();
    this.#dirty = false;
    return new Promise((resolve) => this.#background(fd, resolve));
  }

  /** An fdatasync now (a clean stop; before the legacy rows are dropped). */
  syncNow(): void {
    if (this.#fd !== undefined) this.#syncHere(this.#fd);
    this.#dirty = false;
  }

  close(): void {
    if (this.#fd !== undefined) {
      try {
        this.#syncHere(this.#fd);
      } finally {
        this.#release(this.#fd);
        this.#fd = undefined;
      }
    }
  }
}

/** A batch found in a segment past the index, with where it is. */
export interface TailBatch {
  batch: JournalBatch;
  at: SpanLocation;
}

/**
 * The batches in `dir` past the index's end (`end`: the last span, none for an empty index),
 * checked (decodeBatches: framing, hashes) and checked to continue the chain from `head`. A
 * torn last batch of the last segment ends the list (`cut`: where to cut it); anything else that
 * is not a batch, or records that do not continue the chain, throw AuditJournalError.
 */
export function tailBatches(
  dir: string,
  end: IndexSpan | undefined,
  head: { seq: number; hash: Uint8Array } | undefined,
): { batches: TailBatch[]; cut?: { segment: number; size: number } } {
  const segs = listSegments(dir);
  const from = end ? segs.filter((s) => s >= end.segment) : segs;
  if (end && from[0] !== end.segment) throw new SegmentCutError(`${segmentName(end.segment)}, named by the index, is missing`);
  let seq = head?.seq ?? 0;
  let hash = head?.hash;
  const batches: TailBatch[] = [];
  let cut: { segment: number; size: number } | undefined;
  for (const [i, segment] of from.entries()) {
    const path = join(dir, segmentName(segment));
    const st = lstatSync(path);
    if (!st.isFile()) throw new AuditJournalError(`${path} is not a regular file`);
    let offset = end && segment === end.segment ? end.offset + end.length : 0;
    if (offset > st.size)
      throw new SegmentCutError(
        `${segmentName(segment)} is cut short: the index names bytes through ${offset}, it holds ${st.size} (an OS crash before its sync, or tampering)`,
      );
    const fd = openRegular(path, constants.O_RDONLY);
    let data: Buffer;
    try {
      data = Buffer.allocUnsafe(st.size - offset);
      let done = 0;
      while (done < data.length) {
        const n = readSync(fd, data, done, data.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      data = data.subarray(0, done);
    } finally {
      closeSync(fd);
    }
    let decoded: JournalBatch[];
    try {
      decoded = decodeBatches(data);
    } catch (e) {
      throw new AuditJournalError(`${segmentName(segment)} past byte ${offset}: ${(e as Error).message}`);
    }
    for (const b of decoded) {
      const { length } = encodeBatch(b);
      for (const r of b.rows) {
        if (r.seq !== seq + 1)
          throw new AuditJournalError(`${segmentName(segment)} skips from record ${seq} to ${r.seq}: not the chain of this home`);
        if (hash && Buffer.compare(r.record.subarray(0, PREV_HASH_BYTES), hash) !== 0)
          throw new AuditJournalError(`record ${r.seq} in ${segmentName(segment)} does not continue the chain of the index`);
        seq = r.seq;
        hash = r.hash;
      }
      batches.push({ batch: b, at: { segment, offset, length } });
      offset += length;
    }
    if (offset < st.size) {
      // A torn append: only the newest segment's last write can be one.
      if (i !== from.length - 1)
        throw new AuditJournalError(`${segmentName(segment)} ends in a torn batch, and a segment follows it`);
      cut = { segment, size: offset };
    }
  }
  return { batches, cut };
}

/**
 * Bytes of adjacent batches one span takes at most (a batch larger than this is a span alone). A
 * reader of one record reads its whole span: the index step may cover many records (audit/log.ts
 * INDEX_ROWS, INDEX_DELAY_MS), so a span stays the size a turn of 256 requests' records made one.
 */
export const SPAN_MAX_BYTES = 256 * 1024;

/**
 * Merges adjacent batches of one segment into the spans the index keeps, up to SPAN_MAX_BYTES a
 * span (batches without records join a span, never start one).
 */
export function spansOf(batches: readonly TailBatch[]): IndexSpan[] {
  const out: IndexSpan[] = [];
  let cur: IndexSpan | undefined;
  for (const { batch, at } of batches) {
    const first = batch.rows[0]?.seq;
    const last = batch.rows.at(-1)?.seq;
    if (
      cur &&
      cur.segment === at.segment &&
      cur.offset + cur.length === at.offset &&
      (first === undefined || cur.length + at.length <= SPAN_MAX_BYTES)
    ) {
      cur.length += at.length;
      if (last !== undefined) cur.last = last;
      continue;
    }
    if (first === undefined || last === undefined) {
      // Not adjacent to the span before (a new segment): its records (none) need no row.
      continue;
    }
    cur = { first, last, segment: at.segment, offset: at.offset, length: at.length };
    out.push(cur);
  }
  return out;
}

/** Removes the segment files wholly at or below `through` (every record in them pruned): the newest one stays. */
export function dropSegmentsThrough(dir: string, through: number): number {
  const segs = listSegments(dir);
  let dropped = 0;
  for (let i = 0; i + 1 < segs.length; i++) {
    const next = segs[i + 1] as number;
    if (next - 1 > through) break;
    try {
      unlinkSync(join(dir, segmentName(segs[i] as number)));
      dropped++;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
  }
  return dropped;
}

/** Whether a record's bytes carry its sequence number (a cheap check the readers leave to verify otherwise). */
export function carriesSeq(r: SpanRow): boolean {
  return r.record.length > PREV_HASH_BYTES && recordSeq(r.record) === r.seq;
}

/** fsync of a directory: its entries (a file just created) survive an OS crash. */
function syncDirectory(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
