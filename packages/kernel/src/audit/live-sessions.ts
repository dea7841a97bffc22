import type { AuditRow, AuditStore, LiveSessionStore } from "../store/types.js";
import { detailJson } from "./detail.js";
import type { AuditEntry, AuditLog } from "./log.js";

/**
 * The sessions open, kept beside the log so that a start after a kill can end them on the record.
 * Sessions live in memory only: a kernel killed (SIGKILL, an OOM kill, a crash) left each open
 * one with a `session.open` record and no end. Each has a row in the store's `live_sessions`
 * table (persona, caps, the open record's sequence number), written before its open record is
 * chained; its end record's sequence number is noted on the row before that record is chained,
 * and the row goes once the end record is committed. A kill at any point so leaves a row naming
 * the records it may or may not have committed, and {@link recoverSessions} tells which by
 * reading those records (a few, never the log): the table holds at most the sessions open at
 * once, and those whose end is being committed.
 */
export class LiveSessions {
  /** Sessions whose end record committed, their rows deleted on the next turn (one transaction). */
  private ended: string[] = [];
  private scheduled = false;

  constructor(
    private readonly store: LiveSessionStore,
    private readonly audit: AuditLog,
  ) {}

  /** Appends a session's `session.open` record, its row written first. */
  opened(entry: AuditEntry): Promise<void> {
    return this.audit.appendAs(entry, (openSeq) =>
      this.write(() =>
        this.store.liveSessionOpened({ session: entry.session, persona: entry.persona, caps: entry.caps ?? null, openSeq }),
      ),
    );
  }

  /** Appends an open session's end (`session.close`, `session.error`), noted on its row first; the row goes once it commits. */
  ending(entry: AuditEntry): Promise<void> {
    const committed = this.audit.appendAs(entry, (seq) => this.write(() => this.store.liveSessionEnding(entry.session, seq)));
    committed.then(
      () => this.drop(entry.session),
      // Not on the record: the row stays for the next start, which ends the session there.
      () => {},
    );
    return committed;
  }

  private drop(session: string): void {
    this.ended.push(session);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const ended = this.ended;
      this.ended = [];
      // Closed at a stop: the next start finds these ends on the record and drops the rows.
      this.write(() => this.store.liveSessionsEnded(ended));
    });
  }

  private write(f: () => void): void {
    try {
      f();
    } catch {
      // A database that fails fails the kernel (checkpointer.ts); the record still goes to the log.
    }
  }
}

/** The message of a `session.close` a start wrote for a session its previous run left open. */
export const RECOVERED_SESSION_MESSAGE = "recorded at the next start: the previous run ended with this session open";

/** A start could not commit the ends of the sessions its previous run left open: it does not serve (the next start tries again). */
export class SessionRecoveryError extends Error {
  override name = "SessionRecoveryError";
}

const isEnd = (r: AuditRow | undefined, session: string) =>
  r !== undefined && r.session === session && r.phase === "session" && (r.op === "session.close" || r.op === "session.error");

/**
 * At a start, before the kernel serves: every session the previous runs left open (a row whose
 * end record is not on the log) gets its `session.close`, FAILURE INTERNAL, with the open
 * record's persona and caps and `detail` {recovered, open (its open record), last (the seq and
 * time of the last record before this start)}. A row whose open record is not on the log (the
 * kill came before its commit) goes without a record; one whose open record retention pruned
 * is ended all the same. The row notes each record's sequence number before it is chained and
 * goes once it is committed (after a sync of its segment), so a kill during this start writes
 * nothing twice: the next start finds the records that committed. Returns how many it recorded
 * and how many could not be committed (their rows stay).
 */
export async function recoverSessions(
  store: LiveSessionStore &
    Pick<AuditStore, "auditRecordsAt" | "firstAuditSeq"> & {
      syncAuditSegment?(): Promise<void>;
      readonly auditSyncFailure?: Error;
    },
  audit: AuditLog,
  previous: { seq: number; time: number; stopped: boolean } | undefined,
): Promise<{ recorded: number; failed: number }> {
  const rows = store.liveSessions();
  if (rows.length === 0) return { recorded: 0, failed: 0 };
  const seqs: number[] = [];
  for (const r of rows) {
    seqs.push(r.openSeq);
    if (r.closeSeq !== null) seqs.push(r.closeSeq);
  }
  const records = store.auditRecordsAt(seqs);
  const first = store.firstAuditSeq() ?? Number.POSITIVE_INFINITY;
  const done: string[] = [];
  const appended: Promise<string | undefined>[] = [];
  const how = previous?.stopped === false ? "; the kernel was killed or crashed" : "";
  const last = previous ? { seq: previous.seq, time: previous.time } : null;
  const lastText = previous ? `; its last record is ${previous.seq} at ${new Date(previous.time).toISOString()}` : "";
  for (const r of rows) {
    if (r.closeSeq !== null && isEnd(records.get(r.closeSeq), r.session)) {
      done.push(r.session);
      continue;
    }
    const open = records.get(r.openSeq);
    const onLog = open ? open.session === r.session && open.phase === "session" && open.op === "session.open" : r.openSeq < first; // pruned by retention: it was on the log
    if (!onLog) {
      done.push(r.session);
      continue;
    }
    const committed = audit.appendAs(
      {
        session: r.session,
        persona: r.persona,
        phase: "session",
        op: "session.close",
        caps: r.caps,
        status: "FAILURE",
        errorClass: "INTERNAL",
        message: `${RECOVERED_SESSION_MESSAGE} and no record of its end${how}${lastText}`,
        detail: detailJson({ recovered: true, open: r.openSeq, last }),
      },
      (seq) => store.liveSessionEnding(r.session, seq),
    );
    appended.push(
      committed.then(
        () => r.session,
        () => undefined,
      ),
    );
  }
  audit.flush();
  const recorded = (await Promise.all(appended)).filter((s) => s !== undefined);
  // Synced before the rows go: an OS crash never keeps the rows' absence without the records.
  if (recorded.length > 0) await store.syncAuditSegment?.();
  if (store.auditSyncFailure === undefined) done.push(...recorded);
  store.liveSessionsEnded(done);
  return { recorded: recorded.length, failed: appended.length - recorded.length };
}
