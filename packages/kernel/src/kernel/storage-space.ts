import { detailJson } from "../audit/detail.js";
import type { AuditEntry } from "../audit/log.js";
import type { Logger } from "../log.js";
import { isStorageFull, REPEAT_LOG_MS, RepeatedFailureLog } from "../store/storage-full.js";
import type { AuditRow } from "../store/types.js";

/**
 * Most records kept for later (each a few hundred bytes): past it, effects' outcomes are left to
 * the next start's recovery (the kernel then writes no kernel.stop record); the kernel's own acts
 * past it are lost, counted on the `kernel.unrecorded` record once there is room and on the stop.
 * The room is shared fairly among persona trees ({@link StorageSpace.keep}): one tree's acts
 * cannot push out another's.
 */
export const MAX_LATE_RECORDS = 16_384;

/** Trees a `kernel.unrecorded` record names one by one (the rest are summed as `otherPersonas`). */
export const UNRECORDED_NAMED = 32;

/** What a late outcome record says besides its own message: why it comes later than its effect. */
export const LATE_OUTCOME = "recorded late: the kernel's storage was full when the effect committed";

/** What a late record of the kernel's own act adds to its message: when the act happened (its record's time is when it was written). */
export function lateActMessage(message: string | null, at: number): string {
  const why = `recorded late: the kernel's storage was full when this happened, at ${new Date(at).toISOString()}`;
  return message ? `${message}; ${why}` : why;
}

/** A record kept for later, and who is told the sequence number it gets once written. */
interface LateRecord {
  row: AuditRow;
  written?: (seq: number) => void;
  /** Told once it is dropped (never written): what relied on it being on the record may record it otherwise. */
  lost?: () => void;
  /** The persona tree it is counted to ("-": the kernel as a whole). */
  tree?: string;
  /** Pushed out by another tree's record (its tree held the most): not written. */
  evicted?: boolean;
}

/** Records dropped for want of room to keep them, by tree, since they were last put on the record. */
export interface Unrecorded {
  count: number;
  /** Of `count`, outcomes of effects (the next start recovers them: the stop writes no kernel.stop). */
  outcomes: number;
  byPersona: Record<string, number>;
  /** Dropped records of trees past the {@link UNRECORDED_NAMED} named ones. */
  otherPersonas: number;
  /** When the first of them was dropped (ms). */
  since: number;
}

/** How long after the last write refused room the kernel tries to put the condition's end on the record (ms). */
export const FULL_HOLD_MS = 2_000;
/**
 * How long the audit's commits are refused room (nothing can be recorded: no request of anyone
 * is served) before the uploads in progress fail and give their partial bytes back
 * (UploadTable.failAll): long enough that a moment's full disk, freed from outside, costs no
 * upload; short beside `uploadIdleMs`, until which an upload held the room before.
 */
export const FAIL_UPLOADS_AFTER_MS = 10_000;

/**
 * Whether the kernel's storage is full now, as its writes find it. Set by a write refused room
 * (an audit commit, a body's file, a SQLite transaction); it ends when, FULL_HOLD_MS after the
 * last such refusal, the housekeeping tick's `kernel.storage` record — saying since when and how
 * many requests were refused — commits ({@link probe}, {@link ended}): the end of the condition
 * is on the record, and a file system with room for small records but not for a large body does
 * not flap between the two states with every request. Meanwhile `system.health` answers
 * "degraded" with {@link reason}, and `/metrics` shows `kpip_storage_full 1`. Requests are not
 * held back by it: each tries its own writes, so service resumes as soon as there is room.
 */
export class StorageSpace {
  /** When the first write was refused room (ms), while the condition holds. */
  fullSince: number | undefined;
  /** When the last write was refused room. */
  private lastFull = 0;
  /** Requests refused for lack of room since it began. */
  refused = 0;
  private lastError = "";
  private probing = false;
  /** When the audit's commits began, and last were, refused room ({@link recordsFailed}). */
  private recordsSince: number | undefined;
  private recordsLast = 0;
  /** The audit's committed batches, once told ({@link countCommits}), and their number at the last refusal. */
  private commits: (() => number) | undefined;
  private commitsAtRefusal = 0;
  private readonly repeats: RepeatedFailureLog;

  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.repeats = new RepeatedFailureLog(
      (f, m) => log.error(f, m),
      "the kernel's storage is still full: requests that must be recorded or stored are refused RESOURCE",
      REPEAT_LOG_MS,
      now,
    );
  }

  get full(): boolean {
    return this.fullSince !== undefined;
  }

  /** Why health is degraded, while it is. */
  get reason(): string | undefined {
    if (this.fullSince === undefined) return undefined;
    return `the kernel's storage is full since ${new Date(this.fullSince).toISOString()} (${this.lastError}): requests that must be recorded or stored are refused RESOURCE until space is freed`;
  }

  /**
   * A write was refused: when it was for lack of room, notes it (logged when it begins, then at
   * most once per REPEAT_LOG_MS) and answers true; any other failure is the caller's to report.
   * `request`: a request was refused for it (counted).
   */
  failed(e: unknown, request = false): boolean {
    if (!isStorageFull(e)) return false;
    if (request) this.refused++;
    this.lastError = (e as Error).message;
    this.lastFull = this.now();
    if (this.fullSince === undefined) {
      this.fullSince = this.lastFull;
      this.repeats.began();
      this.log.error(
        { err: this.lastError },
        "the kernel's storage is full: requests that must be recorded or stored are refused RESOURCE until space is freed; the kernel resumes by itself once it is",
      );
      return true;
    }
    this.repeats.failed({ err: this.lastError, refused: this.refused });
    return true;
  }

  /**
   * The record that ends the condition, when it is time to try one (FULL_HOLD_MS after the last
   * write refused room, none in flight): the caller appends it and calls {@link ended} once it
   * committed, {@link probeFailed} if it did not.
   */
  probe(): { since: number; refused: number; error: string } | undefined {
    if (this.fullSince === undefined || this.probing || this.now() - this.lastFull < FULL_HOLD_MS) return undefined;
    this.probing = true;
    return { since: this.fullSince, refused: this.refused, error: this.lastError };
  }

  /**
   * The audit's commit was refused room: nothing can be recorded (as {@link failed} otherwise).
   * Not a body the file store had no room for, which a persona can cause at will while records
   * still fit: only this says the kernel serves no one.
   */
  recordsFailed(e: unknown): boolean {
    if (!this.failed(e)) return false;
    const t = this.now();
    // Records committed in between: a new run starts.
    if (this.recordsSince === undefined || this.committedSince(t)) this.recordsSince = t;
    this.recordsLast = t;
    this.commitsAtRefusal = this.commits?.() ?? 0;
    return true;
  }

  /** How long the audit's commits have been refused room without a pause (0: they were not, lately). */
  unrecordedFor(now = this.now()): number {
    if (this.recordsSince === undefined || this.committedSince(now)) return 0;
    return now - this.recordsSince;
  }

  /**
   * Tells where to count the audit's committed batches (AuditLog.committedBatches): a pause in the
   * refusals ends their run only when records were committed meanwhile, however long it was. An
   * idle kernel's only attempt to record is its own probe, made FULL_HOLD_MS after the last
   * refusal at the next tick: told by the gap alone, every probe began a new run, and the uploads
   * in progress never failed unless requests kept being refused more often than that.
   */
  countCommits(committed: () => number): void {
    this.commits = committed;
    this.commitsAtRefusal = committed();
  }

  /**
   * Whether records were committed since the last refusal: no refusal for FULL_HOLD_MS and, once
   * the count is told, a batch committed since (a pause alone may be the kernel's own probe's).
   */
  private committedSince(now: number): boolean {
    if (now - this.recordsLast < FULL_HOLD_MS) return false;
    return this.commits === undefined || this.commits() !== this.commitsAtRefusal;
  }

  probeFailed(e: unknown): void {
    this.probing = false;
    this.failed(e);
  }

  /**
   * Records that could not be committed for lack of room and must not be lost: the outcome
   * records of effects that committed with their answer, and the kernel's own acts (op state,
   * agent lifecycle, revocations: what happened whether or not it was recorded). Written once
   * there is room ({@link recordLateRecords}), in the order they failed, so that nothing the
   * kernel did stays off the record after it stops cleanly (a start recovers effects' outcomes,
   * and only after a kill).
   */
  private late: LateRecord[] = [];
  /** Records not kept ({@link MAX_LATE_RECORDS}), or whose late commit failed for another cause. */
  lateDropped = 0;
  /** Of {@link lateDropped}, the outcomes of effects (the next start recovers them). */
  private lateOutcomesDropped = 0;

  /** An effect's outcome `row`'s commit failed with `e`: kept for later when for lack of room (true), else the caller's. */
  lateOutcome(row: AuditRow, e: unknown): boolean {
    if (!isStorageFull(e)) return false;
    if (!row.message) row.message = LATE_OUTCOME;
    this.keep({ row });
    return true;
  }

  /**
   * The kernel's own act `row` (phase "kernel") could not be committed (`e`): kept for later when
   * for lack of room (true; `written` is told the sequence number it gets then), else the caller's.
   */
  lateAct(row: AuditRow, e: unknown, written?: (seq: number) => void, lost?: () => void): boolean {
    if (!isStorageFull(e)) return false;
    row.message = lateActMessage(row.message, row.time);
    this.keep({ row, ...(written ? { written } : {}), ...(lost ? { lost } : {}) });
    return true;
  }

  /**
   * The kernel's act `row` comes while older ones wait for room (kept, not yet written): it is
   * kept behind them (true), said late as they are, so that the record keeps the order the acts
   * happened in; else (false) the caller appends it. Effects' outcomes never wait here: a request's
   * records are the request's.
   */
  queueBehindLate(row: AuditRow, written?: (seq: number) => void, lost?: () => void): boolean {
    if (this.lateActs === 0) return false;
    row.message = lateActMessage(row.message, row.time);
    this.keep({ row, ...(written ? { written } : {}), ...(lost ? { lost } : {}) });
    return true;
  }

  /** Of the records kept, the kernel's acts. */
  private lateActs = 0;
  /** Records kept (not evicted): `late` may also hold evicted ones until it is compacted. */
  private lateKept = 0;
  /** The records each tree has kept, oldest first (evicted ones taken out). */
  private lateByTree = new Map<string, LateRecord[]>();
  /**
   * How many trees keep each number of records (1 or more), and the most one keeps: a record that
   * comes while the room is full is weighed without a scan of the trees (one is made only to find
   * the tree that gives a record up).
   */
  private treesKeeping = new Map<number, number>();
  private mostKept = 0;
  /** What was dropped since the last `kernel.unrecorded` record. */
  private unrecorded: Unrecorded | undefined;
  private roots: { of(persona: string): string } = { of: (p) => p.split("/")[0] as string };

  /** The persona trees the room for late records is shared among (the registry's roots). */
  useRoots(roots: { of(persona: string): string }): void {
    this.roots = roots;
  }

  /**
   * Keeps `r` when there is room; when there is none, the tree holding the most records gives
   * up its newest for it — unless that is `r`'s own tree (or one no larger than it would be):
   * `r` is dropped then. So one tree making many acts while the disk is full fills only its
   * fair share, and never pushes out another tree's records. What is dropped is counted.
   */
  private keep(r: LateRecord): boolean {
    let tree = "-";
    if (r.row.persona !== "-") {
      try {
        tree = this.roots.of(r.row.persona);
      } catch {
        tree = r.row.persona.split("/")[0] as string;
      }
    }
    r.tree = tree;
    const mine = this.lateByTree.get(tree);
    if (this.lateKept >= MAX_LATE_RECORDS) {
      if (this.mostKept <= (mine?.length ?? 0) + 1) {
        this.dropped(r);
        return false;
      }
      // The first tree (in the order trees began keeping) that keeps the most.
      let most: LateRecord[] = [];
      for (const l of this.lateByTree.values())
        if (l.length === this.mostKept) {
          most = l;
          break;
        }
      const victim = most.pop() as LateRecord;
      this.keeps(most.length + 1, most.length);
      victim.evicted = true;
      this.lateKept--;
      if (victim.row.phase === "kernel") this.lateActs--;
      this.dropped(victim);
    }
    // Evicted records are skipped when taken; compacted here so that `late` stays bounded.
    if (this.late.length >= 2 * MAX_LATE_RECORDS) this.late = this.late.filter((x) => !x.evicted);
    this.late.push(r);
    this.lateKept++;
    if (mine) mine.push(r);
    else this.lateByTree.set(tree, [r]);
    this.keeps(mine ? mine.length - 1 : 0, mine ? mine.length : 1);
    if (r.row.phase === "kernel") this.lateActs++;
    return true;
  }

  /** A tree that kept `from` records keeps `to` now (one more or one fewer). */
  private keeps(from: number, to: number): void {
    const h = this.treesKeeping;
    const n = (h.get(from) ?? 0) - 1;
    if (n > 0) h.set(from, n);
    else h.delete(from); // none at 0 are counted
    if (to > 0) h.set(to, (h.get(to) ?? 0) + 1);
    if (to > this.mostKept) this.mostKept = to;
    else if (from === this.mostKept && !h.has(from)) this.mostKept = to;
  }

  /** Counts `r` dropped, for the log, the stop and the next `kernel.unrecorded` record. */
  private dropped(r: LateRecord): void {
    this.lateDropped++;
    // After this turn: what it tells may record again, never from inside the keeping.
    if (r.lost) queueMicrotask(r.lost);
    const outcome = r.row.phase === "outcome";
    if (outcome) this.lateOutcomesDropped++;
    this.unrecorded ??= { count: 0, outcomes: 0, byPersona: {}, otherPersonas: 0, since: this.now() };
    const u = this.unrecorded;
    u.count++;
    if (outcome) u.outcomes++;
    const tree = r.tree ?? "-";
    if (Object.hasOwn(u.byPersona, tree)) u.byPersona[tree] = (u.byPersona[tree] as number) + 1;
    else if (Object.keys(u.byPersona).length < UNRECORDED_NAMED) u.byPersona[tree] = 1;
    else u.otherPersonas++;
  }

  /** The records waiting for room, handed over (the caller gives back what fails again: {@link giveBack}). */
  takeLate(): LateRecord[] {
    const l = this.late.filter((r) => !r.evicted);
    this.late = [];
    this.lateActs = 0;
    this.lateKept = 0;
    this.lateByTree = new Map();
    this.treesKeeping = new Map();
    this.mostKept = 0;
    return l;
  }

  /** A late record whose commit failed again (`e`): kept again when for lack of room, else counted dropped. */
  giveBack(r: LateRecord, e: unknown): void {
    if (!isStorageFull(e)) this.dropped(r);
    else this.keep(r);
  }

  /** What was dropped since it was last recorded, handed over (given back with {@link giveBackUnrecorded} if its record fails). */
  takeUnrecorded(): Unrecorded | undefined {
    const u = this.unrecorded;
    this.unrecorded = undefined;
    return u;
  }

  /** The `kernel.unrecorded` record of `u` could not be committed: counted again with what is dropped meanwhile. */
  giveBackUnrecorded(u: Unrecorded): void {
    const now = this.unrecorded;
    this.unrecorded = u;
    if (!now) return;
    u.count += now.count;
    u.outcomes += now.outcomes;
    u.otherPersonas += now.otherPersonas;
    for (const [tree, n] of Object.entries(now.byPersona)) {
      if (Object.hasOwn(u.byPersona, tree)) u.byPersona[tree] = (u.byPersona[tree] as number) + n;
      else if (Object.keys(u.byPersona).length < UNRECORDED_NAMED) u.byPersona[tree] = n;
      else u.otherPersonas += n;
    }
  }

  /** How many records are kept waiting for room. */
  get lateCount(): number {
    return this.lateKept;
  }

  /**
   * Whether outcome records of committed effects are missing from the log (kept, or dropped): a
   * stop then writes no kernel.stop, so that the next start recovers them.
   */
  get outcomesMissing(): boolean {
    return this.lateOutcomesDropped > 0 || this.late.some((r) => !r.evicted && r.row.phase === "outcome");
  }

  /** The probe's record committed: the condition has ended (unless a write was refused room since it was taken). */
  ended(): void {
    this.probing = false;
    if (this.fullSince === undefined || this.now() - this.lastFull < FULL_HOLD_MS) return;
    const ended = { ms: this.now() - this.fullSince, refused: this.refused };
    this.fullSince = undefined;
    this.refused = 0;
    this.repeats.reset();
    this.log.info(ended, "the kernel's storage has room again: requests are served");
  }
}

/**
 * Appends the records kept while the storage was full, in the order they failed (a row whose
 * commit fails again is given back to `space`, or counted dropped if that failure was no lack of
 * room), then — when records were dropped for want of room to keep them — one `kernel.unrecorded`
 * record saying how many, and of which persona trees. Resolves once each commit settled.
 */
export async function recordLateRecords(
  space: StorageSpace,
  audit: { appendRow(row: AuditRow): Promise<void>; append(entry: AuditEntry): Promise<void> },
): Promise<void> {
  const kept = space.takeLate();
  await Promise.all(
    kept.map((r) =>
      audit.appendRow(r.row).then(
        () => r.written?.(r.row.seq),
        (e) => space.giveBack(r, e),
      ),
    ),
  );
  // After what was kept, once it is all written: the count covers the whole episode so far.
  if (space.lateCount > 0) return;
  const u = space.takeUnrecorded();
  if (!u) return;
  await audit.append(unrecordedRecord(u)).catch(() => space.giveBackUnrecorded(u));
}

/** The `kernel.unrecorded` record: records of the kernel's acts (and effects' outcomes) dropped while the storage was full. */
export function unrecordedRecord(u: Unrecorded): AuditEntry {
  const outcomes = u.outcomes > 0 ? ` (${u.outcomes} of them outcomes of committed effects, which the next start writes)` : "";
  return {
    session: "kernel",
    persona: "-",
    phase: "kernel",
    op: "kernel.unrecorded",
    target: "kernel://",
    status: "SUCCESS",
    message: `${u.count} records were dropped while the kernel's storage was full, since ${new Date(u.since).toISOString()}: more waited for room than the kernel keeps${outcomes}`,
    detail: detailJson({
      count: u.count,
      outcomes: u.outcomes,
      byPersona: u.byPersona,
      ...(u.otherPersonas > 0 ? { otherPersonas: u.otherPersonas } : {}),
      since: u.since,
    }),
  };
}
