import type { KeyObject } from "node:crypto";
import { createPublicKey } from "node:crypto";
import { rawPublicKey, sha256, signBytes } from "@kpip/protocol";
import type { AuditCheckpoint, AuditRow, AuditStore, DedupeRow, OfflineEntry } from "../store/types.js";
import type { PrunedSpan } from "./pruned-span.js";
import { checkpointMessage, GENESIS_HASH, recordBytes } from "./record.js";
import { DEFAULT_INTENT_MAX_BYTES } from "./record-size.js";

/**
 * Journalled records go into SQLite once this many wait (on the next turn), else at most this
 * long after the first of them. The index step is one SQLite commit of a span row or a few
 * (store/audit-segments.ts spansOf: a span is bounded in bytes, not in time), costing about the
 * same (~30–50 µs, as much as a `bench.noop` request) however many records it covers; but the
 * next request cannot be read while it runs. At one request in flight every 2 ms (64 records)
 * it ran before ~3–8 % of requests, inside the p99; every 50 ms (1,024 records) it is ~0.1 %.
 * A kill loses nothing to the wait (the records are in the segment: the start indexes them),
 * and every read of the index, and every dedupe lookup, indexes what waits first.
 *
 * A kernel that goes quiet indexes sooner: once no commit came for INDEX_IDLE_MS (measured with
 * performance.now). A live home's reader (audit/reader.ts) reads the committed segment tail past
 * the index, so no reader depends on this wait (round twenty-seven; before it, 10 ms made readers
 * started right after their action miss the last records). 5 and 10 ms were measured then at one
 * request in flight: fewer index steps in front of the slowest requests, but the p99 no better
 * (BENCHMARKS.md, round twenty-seven), so it stays 2 ms.
 */
export const INDEX_ROWS = 1024;
const INDEX_DELAY_MS = 50;
export const INDEX_IDLE_MS = 2;

/**
 * A batch is committed on the turn's next check phase, after every socket read of the turn: after
 * a stall (a GC pause, the thread descheduled) one turn reads the whole backlog, and every answer
 * of it waited for all of it (40 requests behind a 50 ms stall: ~12 ms more). So once a batch's
 * first record has waited this long, the append that finds it so commits it there and then (as a
 * full batch does), and its answers go out before the next socket's requests are read. Looked at
 * every FLUSH_CHECK_EVERY records of a batch, so a request costs no clock read of its own.
 */
const FLUSH_AFTER_MS = 1;
const FLUSH_CHECK_EVERY = 4;

/** A placeholder until a record's hash is computed (never stored). */
export const PENDING_HASH = new Uint8Array(0);

/** What a caller supplies for one audit record; the log fills in seq, time, kernel and the chain. */
export type AuditEntry = Pick<AuditRow, "session" | "persona" | "phase"> &
  Partial<Omit<AuditRow, "seq" | "time" | "kernel" | "session" | "persona" | "phase" | "prevHash" | "hash">>;

export interface AuditLogOptions {
  /** Most records written in one transaction. */
  batchMax: number;
  /**
   * A signed checkpoint is written at least every this many records, in the same transaction
   * as the record it signs, so no run of records longer than this is ever unsigned, crash or not.
   */
  checkpointEvery: number;
  /** And at least this often while records arrive (ms; 0 = by count only): the unsigned tail is also bounded in time. */
  checkpointIntervalMs?: number;
  /**
   * Also sign one checkpoint by count this many records after the log was opened (the kernel:
   * FIRST_CHECKPOINT_AFTER), counting on from it. A commit that carries a checkpoint takes branches
   * and array shapes a plain one never does; V8 compiles the commit path for what it has seen, so
   * the first checkpoint a process signs after the path was optimized (record 10,000, inside
   * `npm run bench`'s one-in-flight window) deoptimized it, ~100–300 ms of recompiling and some
   * hundred slower requests. Signed while the path is still warming up, the checkpoint's branches
   * and shapes are in the feedback it is optimized with (BENCHMARKS.md, round twenty-six).
   */
  firstCheckpointAfter?: number;
  /**
   * Intents larger than this keep only their hash in the record, not their bytes: a bulk
   * payload is not copied into the log (default 64 KiB).
   */
  intentMaxBytes?: number;
  /**
   * How long a batch's first record waits before an append commits the batch there and then, mid-turn
   * (ms; default FLUSH_AFTER_MS). Infinity: only on the turn's check phase or when full, as tests
   * that compare two runs of the same requests need (a commit mid-turn lands wherever the clock says).
   */
  flushAfterMs?: number;
  /**
   * How long committed records wait for the index step at most (ms; default INDEX_DELAY_MS).
   * Infinity: only once INDEX_ROWS wait (or a read needs the index), as tests of the count need.
   */
  indexDelayMs?: number;
  /** How long commits must pause before the index step runs sooner (ms; default INDEX_IDLE_MS). */
  indexIdleMs?: number;
  /** A journalled batch SQLite could not index now (it stays in the journal and is retried). */
  onIndexError?: (e: Error) => void;
  /** A batch that could not be committed (its records' requests are refused): ENOSPC tells the kernel its disk is full. */
  onCommitFailed?: (e: Error) => void;
  /** Called with each signed checkpoint once stored (audit anchors outside the home). */
  onCheckpoint?: (c: AuditCheckpoint) => void;
}

/**
 * The tamper-evident audit log: records are chained as they are appended (so chain order is
 * append order) and committed in batches, one transaction per event-loop turn. `append`
 * returns a promise that settles when the record is durable; callers acknowledge nothing
 * before it resolves.
 */
/** An append after the log was closed: the request it belongs to is refused, nothing is written. */
export class AuditClosedError extends Error {
  override name = "AuditClosedError";
}

/** A batch of records that could not be committed (nothing of it was answered); `cause` says why (ENOSPC: the disk is full). */
export class AuditCommitError extends Error {
  override name = "AuditCommitError";
}

/**
 * An empty array for a batch's checkpoints, made with the elements kind a checkpoint gives it:
 * `[]` starts as small integers, and the first checkpoint pushed changed its map (and, through the
 * literal's allocation site, every later batch's), which deoptimized appendRow (round twenty-six).
 */
function noCheckpoints(): AuditCheckpoint[] {
  const a: (AuditCheckpoint | null)[] = [null];
  a.pop();
  return a as AuditCheckpoint[];
}

export class AuditLog {
  private seq = 0;
  private head: Uint8Array = GENESIS_HASH;
  private pending: AuditRow[] = [];
  private pendingDedupe: DedupeRow[] = [];
  private pendingJournalUpTo = 0;
  private waiters: { resolve: () => void; reject: (e: Error) => void } | undefined;
  private batchPromise: Promise<void> | undefined;
  /** When the pending batch's first record was appended (performance.now()). */
  private batchStarted = 0;
  private scheduled = false;
  private closed = false;
  private lastCheckpointSeq = 0;
  private lastCheckpointTime = Date.now();
  /** The record {@link AuditLogOptions.firstCheckpointAfter} names (-1: none). */
  private firstCheckpointSeq = -1;
  /** Checkpoints signed in append(), stored with the batch that holds their record. */
  private pendingCheckpoints: AuditCheckpoint[] = noCheckpoints();
  private readonly publicKey: Uint8Array;
  /** Sizes of recent batches, for metrics. */
  committedBatches = 0;
  committedRecords = 0;
  /**
   * Called after each commit with its records, its duration and an upper estimate of the bytes it
   * added to the WAL (metrics, and the WAL bound: see WalCheckpointer.committed).
   */
  onCommit: ((records: number, seconds: number, walBytes: number) => void) | undefined;
  /**
   * A commit failed and the chain went back to `seq`, its last committed record: the sequence
   * numbers after it are given again to the next records (what names them beside the log must
   * forget them: live-sessions.ts).
   */
  onRewind: ((seq: number) => void) | undefined;
  /** The WAL-bytes estimate of the records pending (a page per record, and the intent's bytes twice). */
  private pendingBytes = 0;
  /** {@link AuditLogOptions.flushAfterMs}, resolved. */
  private readonly flushAfterMs: number;
  /** {@link AuditLogOptions.indexDelayMs}, resolved. */
  private readonly indexDelayMs: number;
  /** {@link AuditLogOptions.indexIdleMs}, resolved. */
  private readonly indexIdleMs: number;

  constructor(
    private readonly store: AuditStore,
    private readonly kernelId: string,
    private readonly signingKey: KeyObject,
    private readonly opts: AuditLogOptions = { batchMax: 512, checkpointEvery: 10_000 },
  ) {
    this.publicKey = rawPublicKey(createPublicKey(signingKey));
    this.flushAfterMs = opts.flushAfterMs ?? FLUSH_AFTER_MS;
    this.indexDelayMs = opts.indexDelayMs ?? INDEX_DELAY_MS;
    this.indexIdleMs = opts.indexIdleMs ?? INDEX_IDLE_MS;
    this.reload();
    const first = opts.firstCheckpointAfter ?? 0;
    if (first > 0 && first < opts.checkpointEvery) this.firstCheckpointSeq = this.seq + first;
  }

  /** The sequence number and hash of the newest record appended (committed or not). */
  get headSeq(): number {
    return this.seq;
  }

  private reload(): void {
    const last = this.store.lastAudit();
    const cps = this.store.checkpoints();
    this.durable = {
      seq: last?.seq ?? 0,
      head: last?.hash ?? GENESIS_HASH,
      checkpointSeq: cps.length ? (cps[cps.length - 1]?.seq ?? 0) : 0,
    };
    this.rewind();
  }

  /** The chain as last committed: where a failed commit takes the chain in memory back to. */
  private durable: { seq: number; head: Uint8Array; checkpointSeq: number } = { seq: 0, head: GENESIS_HASH, checkpointSeq: 0 };
  /** When the last checkpoint stored was signed (or the log opened): a failed one leaves it, so the timed one stays due. */
  private durableCheckpointTime = this.lastCheckpointTime;

  private rewind(): void {
    this.seq = this.durable.seq;
    this.head = this.durable.head;
    this.lastCheckpointSeq = this.durable.checkpointSeq;
    this.lastCheckpointTime = this.durableCheckpointTime;
  }

  /** Chains the record now and resolves once it is committed (with `dedupe`, in the same transaction). */
  append(entry: AuditEntry, dedupe?: DedupeRow): Promise<void> {
    return this.appendRow(this.rowOf(entry), dedupe);
  }

  /** The row {@link appendRow} takes for `entry` (seq, time and the chain filled in when appended). */
  rowOf(entry: AuditEntry): AuditRow {
    // One object per record: the hash is filled in once computed (no copy of 19 fields).
    return {
      seq: 0,
      time: 0,
      kernel: this.kernelId,
      session: entry.session,
      persona: entry.persona,
      phase: entry.phase,
      requestId: entry.requestId ?? null,
      op: entry.op ?? null,
      target: entry.target ?? null,
      intentHash: entry.intentHash ?? null,
      intent: entry.intent ?? null,
      caps: entry.caps ?? null,
      status: entry.status ?? null,
      errorClass: entry.errorClass ?? null,
      message: entry.message ?? null,
      durationUs: entry.durationUs ?? null,
      traceparent: entry.traceparent ?? null,
      execution: entry.execution ?? null,
      domain: entry.domain ?? null,
      measurements: entry.measurements ?? null,
      detail: entry.detail ?? null,
      prevHash: PENDING_HASH,
      hash: PENDING_HASH,
    };
  }

  /**
   * {@link append}, first telling `before` the sequence number the record gets (not when the log
   * is closed: nothing is appended then). What the caller writes beside the log names the record
   * before it can commit, even in the commit this append makes itself (a full batch).
   */
  appendAs(entry: AuditEntry, before: (seq: number) => void): Promise<void> {
    if (!this.closed) before(this.seq + 1);
    return this.append(entry);
  }

  /**
   * {@link append} of a record built whole by its caller (a request's, pipeline/context.ts): the
   * log takes the object as its own and fills in seq, time, kernel and the chain, so a request's
   * record is one object, not an entry copied into a row.
   */
  appendRow(row: AuditRow, dedupe?: DedupeRow): Promise<void> {
    if (this.closed) return Promise.reject(new AuditClosedError("audit log is closed (kernel stopped)"));
    if (dedupe) this.pendingDedupe.push(dedupe);
    row.seq = ++this.seq;
    row.time = Date.now();
    row.kernel = this.kernelId;
    if (row.intent !== null && row.intent.length > (this.opts.intentMaxBytes ?? DEFAULT_INTENT_MAX_BYTES)) row.intent = null;
    row.prevHash = this.head;
    // Encoded once: the store keeps these bytes, the hash covers exactly them.
    const bytes = recordBytes(row);
    row.record = bytes;
    row.hash = sha256(bytes);
    // A view of Buffer's pool (protocol/sha256.ts): the head pins one 8 KiB slab until the next record, no more.
    this.head = row.hash;
    this.pending.push(row);
    this.pendingBytes += 4096 + 2 * (row.intent?.length ?? 0);
    // Both compared every record (no branch without feedback in the optimized path).
    if (row.seq - this.lastCheckpointSeq >= this.opts.checkpointEvery || row.seq === this.firstCheckpointSeq)
      this.pendingCheckpoints.push(this.sign());
    if (this.batchPromise === undefined) {
      this.batchPromise = new Promise<void>((resolve, reject) => {
        this.waiters = { resolve, reject };
      });
      this.batchStarted = performance.now();
    }
    const p = this.batchPromise;
    const n = this.pending.length;
    if (n >= this.opts.batchMax || (n % FLUSH_CHECK_EVERY === 0 && performance.now() - this.batchStarted >= this.flushAfterMs))
      this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    return p;
  }

  /** Commits everything pending in one transaction. */
  flush(): void {
    this.scheduled = false;
    if (this.pending.length === 0 || this.closed) return;
    const rows = this.pending;
    const dedupe = this.pendingDedupe;
    const journalUpTo = this.pendingJournalUpTo;
    const waiters = this.waiters;
    const checkpoints = this.pendingCheckpoints;
    const walBytes = this.pendingBytes + 8192;
    this.pendingBytes = 0;
    this.pendingCheckpoints = noCheckpoints();
    this.pending = [];
    this.pendingDedupe = [];
    this.pendingJournalUpTo = 0;
    this.waiters = undefined;
    this.batchPromise = undefined;
    // performance.now(): a double, where hrtime.bigint() allocated two BigInts a commit (a request at one in flight).
    const t = performance.now();
    try {
      this.store.appendAudit(rows, dedupe, journalUpTo, checkpoints);
    } catch (e) {
      // The chain in memory ran ahead of the store: back to what is durable (no read of a failing store).
      this.rewind();
      try {
        this.onRewind?.(this.durable.seq);
      } catch {
        // What forgets the numbers fails with the store: the commit's own failure is reported below.
      }
      try {
        this.opts.onCommitFailed?.(e as Error);
      } catch {
        // What the kernel notes of a failure never changes how the batch fails.
      }
      waiters?.reject(new AuditCommitError(`audit commit failed: ${(e as Error).message}`, { cause: e }));
      return;
    }
    // Committed: only a throw of the commit itself may rewind the chain (it is in the journal now).
    const last = rows[rows.length - 1] as AuditRow;
    const lastCheckpoint = checkpoints.at(-1);
    this.durable = { seq: last.seq, head: last.hash, checkpointSeq: lastCheckpoint?.seq ?? this.durable.checkpointSeq };
    if (lastCheckpoint) this.durableCheckpointTime = lastCheckpoint.time;
    this.committedBatches++;
    this.committedRecords += rows.length;
    try {
      this.onCommit?.(rows.length, (performance.now() - t) / 1e3, walBytes);
    } catch {
      // Metrics and the WAL bound's size check: neither unmakes a commit.
    }
    waiters?.resolve();
    for (const cp of checkpoints) this.opts.onCheckpoint?.(cp);
    // A journalled commit goes into SQLite later, after the answers it let go are written: on the
    // next turn once INDEX_ROWS wait, else within indexDelayMs (many commits, one SQLite commit).
    if (this.store.indexAudit) {
      if ((this.store.auditUnindexed ?? 0) >= INDEX_ROWS) {
        this.indexSoon ??= setImmediate(this.index);
      } else if (this.indexDelayMs !== Number.POSITIVE_INFINITY) {
        const now = performance.now();
        this.lastCommitAt = now;
        if (this.indexTimer === undefined) {
          this.indexSince = now;
          this.indexTimer = setTimeout(this.indexWhenQuiet, Math.min(this.indexIdleMs, this.indexDelayMs));
          this.indexTimer.unref();
        }
      }
    }
  }

  private indexSoon: NodeJS.Immediate | undefined;
  private indexTimer: NodeJS.Timeout | undefined;
  /** When the first commit the pending index step covers, and the latest, were made (ms). */
  private indexSince = 0;
  private lastCommitAt = 0;
  /** The index timer: indexes once commits paused for INDEX_IDLE_MS or the first waited indexDelayMs. */
  private readonly indexWhenQuiet = (): void => {
    const now = performance.now();
    const quietFor = now - this.lastCommitAt;
    const waited = now - this.indexSince;
    if (quietFor >= this.indexIdleMs || waited >= this.indexDelayMs) {
      this.index();
      return;
    }
    this.indexTimer = setTimeout(
      this.indexWhenQuiet,
      Math.max(1, Math.ceil(Math.min(this.indexIdleMs - quietFor, this.indexDelayMs - waited))),
    );
    this.indexTimer.unref();
  };
  private readonly index = (): void => {
    if (this.indexSoon !== undefined) {
      clearImmediate(this.indexSoon);
      this.indexSoon = undefined;
    }
    if (this.indexTimer !== undefined) {
      clearTimeout(this.indexTimer);
      this.indexTimer = undefined;
    }
    try {
      this.store.indexAudit?.();
    } catch (e) {
      // Kept in the journal and retried by the next commit or read; a backlog refuses commits.
      this.opts.onIndexError?.(e as Error);
    }
  };

  /** Signs the head (the record just chained) and marks it the last checkpoint. */
  private sign(): AuditCheckpoint {
    const c = { kernel: this.kernelId, seq: this.seq, hash: this.head, time: Date.now() };
    this.lastCheckpointSeq = this.seq;
    this.lastCheckpointTime = c.time;
    return { ...c, publicKey: this.publicKey, signature: signBytes(this.signingKey, checkpointMessage(c)) };
  }

  /** The kernel's tick: a checkpoint when records arrived and checkpointIntervalMs passed since the last one. */
  checkpointIfDue(now = Date.now()): void {
    const every = this.opts.checkpointIntervalMs ?? 0;
    if (every > 0 && this.seq > this.lastCheckpointSeq && now - this.lastCheckpointTime >= every) this.checkpoint();
  }

  /**
   * Moves administrative changes made while no kernel was running (the offline journal) into
   * the chain: one `offline` record each, committed in the same transaction that empties the
   * journal, so each is recorded exactly once. Returns the entries recorded.
   */
  recordOfflineJournal(): OfflineEntry[] {
    const recorded: OfflineEntry[] = [];
    for (;;) {
      if (this.closed) return recorded;
      // Runs on every kernel tick: an empty journal costs one indexed read and nothing else.
      const batch = this.store.offlineJournal(Math.max(1, this.opts.batchMax - 1));
      if (batch.length === 0) return recorded;
      // Whatever is pending commits first, and a batch stays under batchMax, so append() never
      // commits mid-batch: one commit covers exactly these entries and their journal rows.
      if (this.pending.length) this.flush();
      for (const e of batch) {
        void this.append({
          session: "offline",
          persona: "-",
          phase: "offline",
          op: e.op,
          target: e.target,
          status: "SUCCESS",
          message: `${e.message} (by ${e.actor} at ${new Date(e.time).toISOString()})`,
        }).catch(() => {});
      }
      this.pendingJournalUpTo = (batch[batch.length - 1] as OfflineEntry).id;
      const before = this.committedBatches;
      this.flush();
      // A failed commit leaves the journal as it was: the entries are taken again next time.
      if (this.committedBatches === before) return recorded;
      recorded.push(...batch);
    }
  }

  /** Signs the current head with the kernel key and stores the checkpoint. */
  checkpoint(): void {
    if (this.pending.length) this.flush();
    if (this.closed || this.seq === 0 || this.seq === this.lastCheckpointSeq) return;
    const cp = this.sign();
    try {
      this.store.addCheckpoint(cp);
    } catch (e) {
      // Not stored: the next checkpoint by count comes when it would have without this one, and
      // the timed one stays due (the next tick tries again, not a whole interval later).
      this.lastCheckpointSeq = this.durable.checkpointSeq;
      this.lastCheckpointTime = this.durableCheckpointTime;
      throw e;
    }
    this.durable.checkpointSeq = cp.seq;
    this.durableCheckpointTime = cp.time;
    this.opts.onCheckpoint?.(cp);
  }

  /**
   * Retention, one slice: prunes at most `slice` of the oldest records, and only below the newest
   * signed checkpoint that leaves at least `retain` records (the checkpoint the pass prunes
   * through). A slice that ends there prunes through that checkpoint; one that ends short of it
   * prunes through a retention checkpoint signed now for its last record, stored in the slice's
   * transaction, so the log after every slice starts right after a signed checkpoint. Signing a
   * hash read back from the store vouches for nothing new: the chain from it to the pass's
   * checkpoint, which the kernel signed when it computed that hash, pins it. Returns the records removed.
   * `span`, when given, is shown each record the slice removes, before it goes (the pass's summary).
   */
  pruneSlice(retain: number, slice: number, span?: Pick<PrunedSpan, "add">): number {
    if (retain <= 0 || slice <= 0 || this.closed) return 0;
    const first = this.store.firstAuditSeq();
    if (first === undefined) return 0;
    let through: AuditCheckpoint | undefined;
    for (const c of this.store.checkpoints()) if (c.seq >= first && c.seq <= this.seq - retain) through = c;
    if (!through) return 0;
    const end = first - 1 + slice;
    // Read before they go, counted once they are gone (a slice that throws prunes nothing).
    const doomed = (cut: number) => (span ? this.store.scanAudit(first, cut - first + 1).filter((r) => r.seq <= cut) : []);
    const counted = (rows: AuditRow[], n: number) => {
      for (const r of rows) span?.add(r);
      return n;
    };
    if (end >= through.seq) {
      const rows = doomed(through.seq);
      return counted(rows, this.store.pruneAudit(through.seq));
    }
    const hash = this.store.auditHashAt(end);
    if (!hash) return 0;
    const rows = doomed(end);
    const c = { kernel: this.kernelId, seq: end, hash, time: Date.now() };
    return counted(
      rows,
      this.store.pruneAudit(end, {
        ...c,
        publicKey: this.publicKey,
        signature: signBytes(this.signingKey, checkpointMessage(c)),
      }),
    );
  }

  /** Flushes and writes a final checkpoint; later appends are refused, never written to a closed store. */
  close(): void {
    if (this.closed) return;
    try {
      this.flush();
      this.checkpoint();
    } finally {
      this.closed = true;
      // The store indexes what is left when it closes (what it cannot stays in the journal).
      if (this.indexTimer !== undefined) clearTimeout(this.indexTimer);
      if (this.indexSoon !== undefined) clearImmediate(this.indexSoon);
      this.indexTimer = this.indexSoon = undefined;
    }
  }
}
