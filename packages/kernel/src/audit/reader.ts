import {
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  rmSync,
  statfsSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import Database from "better-sqlite3";
import { AUDIT_JOURNAL_FILE } from "../store/audit-journal.js";
import { AUDIT_SEGMENT_DIR, type IndexSpan, SegmentCutError, spansOf, tailBatches } from "../store/audit-segments.js";
import { auditAppender } from "../store/sqlite/audit-append.js";
import { columnRecordSource, hasColumnLayout } from "../store/sqlite/audit-layout.js";
import { AuditReads } from "../store/sqlite/audit-read.js";
import { type AuditReadApi, SegmentReads } from "../store/sqlite/audit-segment-read.js";
import { indexJournalFile } from "../store/sqlite/journal-replay.js";
import type { AuditCheckpoint, AuditRow, AuditStore } from "../store/types.js";
import { foreignSchema, foreignSchemaText } from "./evidence-schema.js";
import { batchShape } from "./record-size.js";
import type { RangeVerifier } from "./verify.js";
import { RecordScan } from "./verify-records.js";
import { SegmentScan } from "./verify-segments.js";

/** Why a home could not be read: no database there, not a kpip database, or a damaged one. */
export class HomeReadError extends Error {
  override name = "HomeReadError";
  constructor(
    message: string,
    readonly kind: "not-a-home" | "corrupt",
  ) {
    super(message);
  }
}

/**
 * Segments a verify holds open from its snapshot's start (the oldest: retention removes them
 * first). More would be gigabytes appended while one verify runs, past two retention passes.
 */
const PINNED_SEGMENTS = 256;

/** What the audit tools read: the verify interface, the record scans, and the raw connection for other tables. */
export interface AuditReader
  extends Pick<AuditStore, "scanAudit" | "countAudit" | "checkpoints" | "firstAuditSeq" | "auditHashAt">,
    RangeVerifier {
  readonly db: Database.Database;
  /** The file the connection reads: the home's database (live kernel) or a private copy of it. */
  readonly path: string;
  /** True when reading a private copy (no kernel was running on the home). */
  readonly snapshot: boolean;
  /** True for a home of an older kpip (a column per field), read in place as records. */
  readonly columnLayout: boolean;
  /** The home's audit segments directory, when its audit is in segment files (verify's workers read it too). */
  readonly segments: string | undefined;
  /** Runs `fn` in one read transaction: one snapshot of a live kernel's database (verify). */
  transaction<T>(fn: () => T): T;
  /** Record `seq`, decoded from its stored bytes, or undefined. */
  record(seq: number): AuditRecord | undefined;
  /**
   * Records one at a time, oldest first from `from` (newest first below it with `newest`), a
   * batch of rows read at a time: the one scan every audit command walks the log with.
   */
  records(opts?: { from?: number; newest?: boolean }): Iterable<AuditRecord>;
  /** The highest sequence number, or undefined for an empty log. */
  headSeq(): number | undefined;
  close(): void;
}

/** An audit record as read: its fields decoded from its stored bytes. */
export type AuditRecord = AuditRow & { detail?: string | null };

/**
 * Whether a kernel holds the home now (its exclusive lock on kernel.lock, see acquireHome):
 * a read of the lock database is refused while it does. Opening it read-only creates nothing.
 */
function kernelHolds(home: string): boolean {
  const lock = join(home, "kernel.lock");
  // Only a regular file can be a kernel's lock; SQLite's open of a FIFO would wait for ever.
  if (!existsSync(lock) || !statSync(lock).isFile()) return false;
  // A kernel's lock is a rollback-journal database. One in WAL mode (header bytes 18-19 are 2) is
  // none of a kernel's, and SQLite's read-only open of it would create its -wal and -shm in the home.
  if (walMode(lock)) return false;
  let db: Database.Database | undefined;
  try {
    db = new Database(lock, { readonly: true, fileMustExist: true, timeout: 0 });
    db.prepare("SELECT count(*) FROM sqlite_master").get();
    return false;
  } catch (e) {
    return (e as { code?: string }).code === "SQLITE_BUSY";
  } finally {
    db?.close();
  }
}

/** Whether the SQLite file at `path` says it is in WAL mode (read without waiting on a FIFO). */
function walMode(path: string): boolean {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const head = Buffer.alloc(20);
    return readSync(fd, head, 0, head.length, 0) === head.length && (head[18] === 2 || head[19] === 2);
  } finally {
    closeSync(fd);
  }
}

/** Adds to `db` (a private copy) the journalled batches past its newest record; a damaged journal is a HomeReadError. */
function indexJournal(db: Database.Database, journal: string): void {
  if (hasColumnLayout(db)) return;
  try {
    indexJournalFile(db, journal, auditAppender(db).append, new AuditReads(db));
  } catch (e) {
    throw new HomeReadError(`${journal}: ${(e as Error).message}`, "corrupt");
  }
}

/** Whether `db`'s audit is in segment files (store/sqlite/audit.ts, SEGMENTED_KEY). */
function segmented(db: Database.Database): boolean {
  try {
    return db.prepare("SELECT value FROM meta WHERE key = 'audit_segments'").pluck(true).get() === "1";
  } catch {
    return false; // no meta table: not a home of this layout
  }
}

/**
 * Adds to `db` (a private copy) the spans of the batches a stopped kernel appended past its
 * index, and their checkpoints. Batches that are not valid or do not continue the chain are a
 * HomeReadError, as the kernel refuses to start on them; a segment shorter than its index says
 * is read as it is (verify reports the records it lacks).
 */
function indexSegmentTail(db: Database.Database, reads: SegmentReads): void {
  const head = reads.head();
  const hash = head === undefined ? undefined : reads.hashAt(head);
  let tail: ReturnType<typeof tailBatches>;
  try {
    tail = tailBatches(reads.index.files.dir, reads.index.last(), head !== undefined && hash ? { seq: head, hash } : undefined);
  } catch (e) {
    if (e instanceof SegmentCutError) return;
    throw new HomeReadError(`${reads.index.files.dir}: ${(e as Error).message}`, "corrupt");
  }
  if (tail.batches.length === 0) return;
  const span = db.prepare(
    "INSERT OR IGNORE INTO audit_batches (first_seq, last_seq, segment, offset, length) VALUES (?, ?, ?, ?, ?)",
  );
  const cp = db.prepare(
    "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time, kernel, public_key, signature) VALUES (?, ?, ?, ?, ?, ?)",
  );
  db.transaction(() => {
    for (const s of spansOf(tail.batches)) span.run(s.first, s.last, s.segment, s.offset, s.length);
    for (const { batch } of tail.batches)
      for (const c of batch.checkpoints) cp.run(c.seq, c.hash, c.time, c.kernel, c.publicKey, c.signature);
  })();
}

/** What a live home's reader shows past the index (readLiveTail). */
interface LiveTail {
  spans: IndexSpan[];
  checkpoints: AuditCheckpoint[];
  /** The tail's last record: the chain goes on from it. */
  head?: { seq: number; hash: Uint8Array };
}

/**
 * A live home's reader: reads the batches the kernel committed to its segments past the index
 * (the index step runs when the kernel is quiet, audit/log.ts INDEX_IDLE_MS) and shows them as
 * the index's tail (SegmentIndex.setTail), one span a batch. Nothing is written. The batches are
 * checked as the private copy's (tailBatches: framing, each record's hash, the chain continuing
 * from the index's last record); a batch the kernel is still writing (or a kill cut) is torn and
 * not shown. A tail that does not continue the chain is a HomeReadError, as on a copy; a segment
 * cut short is verify's to report (nothing shown past it). `prev`: the tail read last, whose
 * batches are not read again (continueTail).
 */
function readLiveTail(reads: SegmentReads, prev?: LiveTail): LiveTail {
  const index = reads.index;
  const end = index.lastIndexed();
  const more = prev && continueTail(index, end, prev);
  if (more) return tailShown(index, more);
  let head: { seq: number; hash: Uint8Array } | undefined;
  if (end) {
    const row = index.read(end).rows.find((r) => r.seq === end.last);
    // The index's last record unreadable: the chain cannot be checked on from it, so nothing past it is shown.
    if (!row || row.declared !== undefined) return tailShown(index, { spans: [], checkpoints: [] });
    head = { seq: end.last, hash: row.hash };
  }
  let tail: ReturnType<typeof tailBatches>;
  try {
    tail = tailBatches(index.files.dir, end, head);
  } catch (e) {
    if (e instanceof SegmentCutError) return tailShown(index, { spans: [], checkpoints: [] });
    throw new HomeReadError(`${index.files.dir}: ${(e as Error).message}`, "corrupt");
  }
  return tailShown(index, withBatches({ spans: [], checkpoints: [] }, tail.batches));
}

/**
 * The tail read last, less the batches the index step has taken since, and the batches committed
 * past it: only those new bytes are read and hashed (a head look of `kpip audit tail` beside a
 * busy kernel whose index lags would otherwise read the whole unindexed tail again). Undefined
 * where the index's end is not one of its batches' starts (the index caught up, or something
 * else changed): the caller reads the tail from the index's end again.
 */
function continueTail(index: SegmentReads["index"], end: IndexSpan | undefined, prev: LiveTail): LiveTail | undefined {
  const last = prev.spans.at(-1);
  if (!last || !prev.head) return undefined;
  const from = (end?.last ?? 0) + 1;
  const i = prev.spans.findIndex((s) => s.first === from);
  if (i < 0) return undefined;
  let tail: ReturnType<typeof tailBatches>;
  try {
    tail = tailBatches(index.files.dir, last, prev.head);
  } catch {
    return undefined; // read again from the index's end, which reports it
  }
  const kept = { spans: prev.spans.slice(i), checkpoints: prev.checkpoints.filter((c) => c.seq >= from), head: prev.head };
  return withBatches(kept, tail.batches);
}

function withBatches(tail: LiveTail, batches: ReturnType<typeof tailBatches>["batches"]): LiveTail {
  for (const { batch, at } of batches) {
    const first = batch.rows[0];
    const last = batch.rows.at(-1);
    if (first !== undefined && last !== undefined) {
      tail.spans.push({ ...at, first: first.seq, last: last.seq });
      tail.head = { seq: last.seq, hash: last.hash };
    }
    tail.checkpoints.push(...batch.checkpoints);
  }
  return tail;
}

function tailShown(index: SegmentReads["index"], tail: LiveTail): LiveTail {
  index.setTail(tail.spans);
  return tail;
}

/**
 * A private copy's directory in the temp directory: `kpip-audit-<pid namespace>.<pid of its
 * reader>-<random>`. The namespace (its inode, 0 where unknown) tells which readers' pids this
 * process can see: a reader in another container sharing the temp directory is none of its business.
 */
const COPY_PREFIX = "kpip-audit-";
const OWN_PID_NS = pidNamespace();

function pidNamespace(): string {
  try {
    return /\[(\d+)\]/.exec(readlinkSync("/proc/self/ns/pid"))?.[1] ?? "0";
  } catch {
    return "0";
  }
}

/**
 * Removes the private copies of readers that died without removing theirs (`kpip audit` killed:
 * Ctrl-C ends it without its clean-up), each as large as a home's database: only directories of
 * this user, made in this pid namespace, whose pid no process has (one that has it, reused or
 * not, keeps its copy).
 */
function sweepStaleCopies(dir: string): void {
  const uid = process.getuid?.();
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith(COPY_PREFIX));
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^kpip-audit-(\d+)\.(\d+)-[^/]+$/.exec(name);
    const pid = Number(m?.[2]);
    if (!m || m[1] !== OWN_PID_NS || OWN_PID_NS === "0") continue;
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || alive(pid)) continue;
    const path = join(dir, name);
    try {
      const st = lstatSync(path);
      if (!st.isDirectory() || (uid !== undefined && st.uid !== uid)) continue;
      rmSync(path, { recursive: true, force: true });
    } catch {
      // gone meanwhile, or not ours to remove: left
    }
  }
}

/** Whether a process has `pid` (EPERM: one of another user's does). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/**
 * Refuses a private copy that would not fit where it is made: a home's database or -wal can be a
 * sparse file of any apparent size (a terabyte of holes costs its writer nothing), which a copy
 * writes out whole, filling the disk (or, for a tmpfs /tmp, memory).
 */
function copyFits(path: string, wal: string): void {
  const bytes = statSync(path).size + (existsSync(wal) ? statSync(wal).size : 0);
  const fs = statfsSync(tmpdir());
  const free = fs.bavail * fs.bsize;
  if (bytes > free)
    throw new HomeReadError(
      `a private copy of ${path} and its -wal (${bytes} bytes) does not fit in ${tmpdir()} (${free} bytes free): set TMPDIR to a larger place`,
      "not-a-home",
    );
}

/**
 * Opens a home's database for reading without changing any file of the home. SQLite writes
 * even on a read-only open of a WAL database (it creates the -wal and -shm files, and readers
 * mark the -shm), so a home no kernel holds is read from a private copy of the database and its
 * -wal (committed frames in the -wal are recovered there, as a kernel would); a running
 * kernel's home is read through a read-only connection beside the kernel's own. `direct` opens
 * `path` as it is (a copy already made, e.g. by a parallel verify's workers). `intentMaxBytes`:
 * the home's auditIntentMaxBytes, which sizes the scans' batches (record-size.ts).
 */
export function openAuditReader(path: string, opts: { direct?: boolean; intentMaxBytes?: number } = {}): AuditReader {
  if (!existsSync(path) || !statSync(path).isFile()) {
    throw new HomeReadError(`no kpip database at ${path} (is this a kernel home? pass --home)`, "not-a-home");
  }
  const wal = `${path}-wal`;
  // A -wal that is a FIFO would block the copy for ever, a device (/dev/zero) would never end it.
  if (existsSync(wal) && !statSync(wal).isFile())
    throw new HomeReadError(`${wal} is not a regular file (a kernel only ever writes one there)`, "corrupt");
  const live = !opts.direct && existsSync(wal) && kernelHolds(dirname(path));
  let file = path;
  let tmp: string | undefined;
  if (!opts.direct && !live) {
    sweepStaleCopies(tmpdir());
    copyFits(path, wal);
    tmp = mkdtempSync(join(tmpdir(), `${COPY_PREFIX}${OWN_PID_NS}.${process.pid}-`));
    file = join(tmp, basename(path));
    try {
      // A reflink where the filesystem has them, else a plain copy: the home is only read.
      copyFileSync(path, file, constants.COPYFILE_FICLONE);
      if (existsSync(wal)) copyFileSync(wal, `${file}-wal`, constants.COPYFILE_FICLONE);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw new HomeReadError(`cannot read ${path}: ${(e as Error).message}`, "not-a-home");
    }
  }
  const cleanup = () => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  };
  let opened: Database.Database | undefined;
  try {
    // The private copy is opened read-write so SQLite can recover its -wal; nothing is written.
    opened = new Database(file, { readonly: live || opts.direct === true, fileMustExist: true, timeout: 5000 });
    // Before any statement that could run the schema's SQL (a view read, a trigger fired by the tail's indexing).
    const foreign = foreignSchema(opened);
    if (foreign.length > 0) throw new HomeReadError(`${path}: ${foreignSchemaText(foreign)}`, "corrupt");
    const cols = new Set((opened.pragma("table_info(audit)") as { name: string }[]).map((c) => c.name));
    if (!cols.has("seq") || !cols.has("hash"))
      throw new HomeReadError(`${path} is an SQLite database without a kpip audit table (not a kernel home)`, "corrupt");
    // A copy of a stopped home: the batches its kernel journalled and did not index are read too.
    if (tmp && !segmented(opened)) indexJournal(opened, join(dirname(path), AUDIT_JOURNAL_FILE));
    if (!live) opened.pragma("query_only = ON");
  } catch (e) {
    opened?.close();
    cleanup();
    if (e instanceof HomeReadError) throw e;
    throw new HomeReadError(`${path} is not a readable SQLite database: ${(e as Error).message}`, "corrupt");
  }
  const db = opened;
  // A home of an older kpip (a column per field) is read as it is, each row encoded as the
  // record its hash covers: nothing is moved (a kernel moves it when it starts).
  const segDir = segmented(db) ? join(dirname(path), AUDIT_SEGMENT_DIR) : undefined;
  const source = !segDir && hasColumnLayout(db) ? columnRecordSource(db) : undefined;
  const shape = batchShape(opts.intentMaxBytes);
  const segReads = segDir ? new SegmentReads(db, segDir, shape) : undefined;
  if (segReads && tmp) {
    // The copy is written only here, before it is made query-only again.
    try {
      db.pragma("query_only = OFF");
      indexSegmentTail(db, segReads);
      db.pragma("query_only = ON");
    } catch (e) {
      segReads.close();
      db.close();
      cleanup();
      throw e;
    }
  }
  // A live kernel's records committed past its index (the index step waits for a quiet moment):
  // read from the segments when a call looks at the head, once at a transaction's start.
  let shown: LiveTail | undefined;
  let inTransaction = false;
  const liveTail = live && segReads ? segReads : undefined;
  const refresh = () => {
    if (liveTail && !inTransaction) shown = readLiveTail(liveTail, shown);
  };
  const beyond = (seq: number) => {
    if (liveTail && seq > (liveTail.index.last()?.last ?? 0)) refresh();
  };
  try {
    refresh();
  } catch (e) {
    segReads?.close();
    db.close();
    throw e;
  }
  const reads: AuditReadApi = segReads ?? new AuditReads(db, source, shape);
  // Retention removes the oldest segments first: those are the ones a long walk must hold open.
  const pinnedSegments =
    segReads && db.prepare(`SELECT DISTINCT segment FROM audit_batches ORDER BY segment LIMIT ${PINNED_SEGMENTS}`).pluck(true);
  let records: RecordScan | SegmentScan | undefined;
  return {
    db,
    path: file,
    snapshot: tmp !== undefined,
    columnLayout: source !== undefined,
    segments: segDir,
    transaction: (fn) =>
      db.transaction(() => {
        // The tail read after the snapshot's first read: past the index this snapshot sees, and fixed for it.
        refresh();
        inTransaction = true;
        try {
          if (!segReads || !pinnedSegments) return fn();
          // The snapshot begins with this read; the segments it names are opened at once, so a kernel's
          // retention unlinking them during a long walk (one prune late) is no missing record.
          const files = segReads.index.files;
          files.pin(pinnedSegments.all() as number[]);
          try {
            return fn();
          } finally {
            files.unpin();
          }
        } finally {
          inTransaction = false;
        }
      })(),
    record: (seq) => {
      beyond(seq);
      return reads.record(seq);
    },
    records: (o) => {
      refresh();
      return reads.records(o);
    },
    headSeq: () => {
      refresh();
      return reads.head();
    },
    scanAudit: (from, batch) => {
      beyond(from);
      return reads.up(from, batch);
    },
    verifyRecords: (from, to, cpSeqs, onProgress) => {
      records ??= segReads ? new SegmentScan(segReads.index) : new RecordScan(db, source, shape);
      return records.verify(from, to, cpSeqs, 1000, onProgress);
    },
    countAudit: () => {
      refresh();
      return reads.count();
    },
    firstAuditSeq: () => {
      refresh();
      return reads.first();
    },
    auditHashAt: (seq) => reads.hashAt(seq),
    checkpoints: () => {
      const cps = reads.checkpoints();
      const tailCheckpoints = shown?.checkpoints ?? [];
      if (tailCheckpoints.length === 0) return cps;
      // The tail's, less those the index step has put in the table meanwhile.
      const seen = new Set(cps.map((c) => c.seq));
      return cps.concat(tailCheckpoints.filter((c) => !seen.has(c.seq))).sort((a, b) => a.seq - b.seq);
    },
    close: () => {
      segReads?.close();
      if (db.open) db.close();
      cleanup();
    },
  };
}
