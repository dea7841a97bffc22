import type { LiveSession, LiveSessionStore } from "../store/types.js";
import { detailJson } from "./detail.js";
import type { AuditEntry, AuditLog } from "./log.js";

/**
 * The sessions open, kept beside the log so that a start after a kill can end them on the record.
 * Sessions live in memory only: a kernel killed (SIGKILL, an OOM kill, a crash) left each open
 * one with a `session.open` record and no end. Each has a row in the store's `live_sessions`
 * table (persona, caps, the open record's sequence number), written before its open record is
 * chained; its end record's sequence number is noted on the row before that record is chained,
 * and the row goes once the end record is committed. A kill at any point so leaves a row naming
 * records that are on the log exactly when their numbers are at most the log's last: the log is
 * one chain, committed in order, and a failed commit that gives numbers again (onRewind) makes
 * the rows forget them first. The table holds at most the sessions open at once and those whose
 * end is being committed; a start reads it, never the log ({@link recoverSessions}).
 */
export class LiveSessions {
  /** Sessions whose end record committed, their rows deleted on the next turn (one transaction). */
  private ended: string[] = [];
  private scheduled = false;

  constructor(
    private readonly store: LiveSessionStore,
    private readonly audit: AuditLog,
  ) {
    audit.onRewind = (seq) => store.liveSessionsAfter(seq);
  }

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
    const committed = this.audit.appendAs(entry, (seq) =>
      this.write(() => this.store.liveSessionsEnding([{ session: entry.session, closeSeq: seq }])),
    );
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

/**
 * First thing at a start, before it appends anything: the log ends at `last` (the previous run's
 * last record that is on it), so whatever a row noted after it never committed — an open record
 * (the row goes: there is no open on the record to end) or an end (noted again when written).
 */
export function settleLiveSessions(store: LiveSessionStore, last: number): void {
  store.liveSessionsAfter(last);
}

/**
 * At a start, after {@link settleLiveSessions} and before the kernel serves: every session the
 * previous runs left open (a row with no end noted: its open is on the record, perhaps pruned
 * since) gets its `session.close`, FAILURE INTERNAL, with the open record's persona and caps and
 * `detail` {recovered, open (its open record's seq), last (seq and time of the last record before
 * this start)}; a row whose end is noted (on the record) just goes. Each row notes its record's
 * sequence number (one transaction for all) before any is chained, and goes once they are
 * committed and their segment synced: a kill during this start writes nothing twice, the next
 * start finds the ends noted at or below its log's last. Returns how many it recorded and how many
 * could not be committed (their rows stay, for the next start).
 */
export async function recoverSessions(
  store: LiveSessionStore & { syncAuditSegment?(): Promise<void>; readonly auditSyncFailure?: Error },
  audit: AuditLog,
  previous: { seq: number; time: number; stopped: boolean } | undefined,
): Promise<{ recorded: number; failed: number }> {
  const rows = store.liveSessions();
  if (rows.length === 0) return { recorded: 0, failed: 0 };
  const done: string[] = [];
  const open: LiveSession[] = [];
  for (const r of rows) {
    if (r.closeSeq === null) open.push(r);
    else done.push(r.session);
  }
  // The numbers the records get, in order: nothing else appends meanwhile. A failed commit gives
  // them again to the records after it (more ends than a batch), so it unnotes them first: else
  // a failed end would name another session's record and a later start take it as ended. The
  // kernel's LiveSessions (which does the same) is made only once the start has served these.
  const head = audit.headSeq;
  const rewound = audit.onRewind;
  audit.onRewind = (seq) => store.liveSessionsAfter(seq);
  try {
    return await endOpen(store, audit, previous, open, head, done);
  } finally {
    audit.onRewind = rewound;
  }
}

async function endOpen(
  store: LiveSessionStore & { syncAuditSegment?(): Promise<void>; readonly auditSyncFailure?: Error },
  audit: AuditLog,
  previous: { seq: number; time: number; stopped: boolean } | undefined,
  open: LiveSession[],
  head: number,
  done: string[],
): Promise<{ recorded: number; failed: number }> {
  store.liveSessionsEnding(open.map((r, i) => ({ session: r.session, closeSeq: head + 1 + i })));
  const how = previous?.stopped === false ? "; the kernel was killed or crashed" : "";
  const last = previous ? { seq: previous.seq, time: previous.time } : null;
  const lastText = previous ? `; its last record is ${previous.seq} at ${new Date(previous.time).toISOString()}` : "";
  const appended = open.map((r) =>
    audit
      .append({
        session: r.session,
        persona: r.persona,
        phase: "session",
        op: "session.close",
        caps: r.caps,
        status: "FAILURE",
        errorClass: "INTERNAL",
        message: `${RECOVERED_SESSION_MESSAGE} and no record of its end${how}${lastText}`,
        detail: detailJson({ recovered: true, open: r.openSeq, last }),
      })
      .then(
        () => r.session,
        () => undefined,
      ),
  );
  audit.flush();
  const recorded = (await Promise.all(appended)).filter((s) => s !== undefined);
  // Synced before the rows go: an OS crash never keeps the rows' absence without the records.
  if (recorded.length > 0) await store.syncAuditSegment?.();
  if (store.auditSyncFailure === undefined) done.push(...recorded);
  store.liveSessionsEnded(done);
  return { recorded: recorded.length, failed: appended.length - recorded.length };
}
