import { type CborMap, decodeCanonical, decodeToken } from "@kpip/protocol";
import type { AuditStore, EffectAnswer, RecordHead, TokenStore } from "../store/types.js";
import { type DetailValue, detailJson, tokenDetail } from "./detail.js";
import type { AuditLog } from "./log.js";

/**
 * How far before the log's head a start looks for effects without an outcome record. An effect
 * and its outcome record are made in one turn of the kernel's event loop (the outcome is appended
 * as the handler returns), so the records between them are that turn's: far fewer than this.
 */
export const RECOVERY_WINDOW = 65_536;

/** The message of an outcome record a start wrote for an effect its kernel committed and did not record. */
export const RECOVERED_MESSAGE =
  "recorded at the next start: the kernel ended after this request's effect committed and before its outcome record; the status is the answer committed with the effect";

/**
 * A start could not commit the outcome records of effects its previous run left off the record:
 * it does not serve (every answer would come after an effect missing from the log); the next
 * start tries again.
 */
export class OutcomeRecoveryError extends Error {
  override name = "OutcomeRecoveryError";
}

/**
 * An op's effect commits with its dedupe answer (PROTOCOL §11 rule 9) and its outcome record is
 * appended just after: a kernel killed between the two left an effect that happened (an object
 * written, a token minted or revoked, a persona removed) with an intent record and no outcome,
 * which reads as "did not finish". Every such answer names its intent record and the log's head
 * at its commit. At a start after a run that ended without kernel.stop, every answer committed
 * within RECOVERY_WINDOW records of the log's head (found by the store's walk down the dedupe
 * table's newest rows: no index) whose outcome record is not on the log gets one now: the
 * intent record's request, persona, session and capabilities, the answer's status, the detail
 * the op made for its outcome record (what a revocation ended, what a write created), and
 * `detail.recovered`; the tokens it revoked are noted as revoked by that record. The log is read
 * once, from a window before the oldest of those answers, for their intent records and for the
 * outcome records after them, each record by its head only (a window full of effects took up to
 * a second decoded whole); an effect's intent record and answer are read whole only to record it. The answers whose record this start wrote stop naming their intents
 * (after a sync of the segment that holds the records: an OS crash never keeps the one without
 * the other), so a later start does not write them again. Returns how many records it committed
 * and how many it could not: an answer whose record did not commit keeps naming its intent, for
 * the next start.
 */
export async function recoverOutcomes(
  store: AuditStore &
    Pick<TokenStore, "noteRevocationSeq"> & { syncAuditSegment?(): Promise<void>; readonly auditSyncFailure?: Error },
  audit: AuditLog,
  head: number,
): Promise<{ recorded: number; failed: number }> {
  const answers = store.effectAnswersSince(Math.max(0, head - RECOVERY_WINDOW));
  if (answers.length === 0) return { recorded: 0, failed: 0 };
  // One read of the log: the outcome records after the earliest of those effects (by session and
  // request id), and the intent records they name from a window before it (an intent older than
  // that, a handler that awaited long before its effect, is read on its own).
  let firstAfter = head;
  let firstIntent = head;
  const intentSeqs = new Set<number>();
  for (const a of answers) {
    if (a.afterSeq < firstAfter) firstAfter = a.afterSeq;
    if (a.intentSeq < firstIntent) firstIntent = a.intentSeq;
    intentSeqs.add(a.intentSeq);
  }
  /** The sessions of the outcome records after firstAfter, by request id. */
  const outcomes = new Map<number, string | Set<string>>();
  const intents = new Map<number, RecordHead>();
  // Each record's head only (phase, session, persona, request id): decoding the window's records
  // whole was most of this search. The few intents this start records are read whole below.
  store.auditHeads(Math.max(1, firstIntent, firstAfter - RECOVERY_WINDOW), head, (r) => {
    if (r.phase === "outcome") {
      if (r.requestId === null || r.seq <= firstAfter) return;
      const had = outcomes.get(r.requestId);
      if (had === undefined) outcomes.set(r.requestId, r.session);
      else if (typeof had === "string") {
        if (had !== r.session) outcomes.set(r.requestId, new Set([had, r.session]));
      } else had.add(r.session);
    } else if (r.phase === "intent" && intentSeqs.has(r.seq)) intents.set(r.seq, r);
  });
  const hasOutcome = (session: string, requestId: number): boolean => {
    const had = outcomes.get(requestId);
    return had === undefined ? false : typeof had === "string" ? had === session : had.has(session);
  };
  /** Keys whose rows name nothing on the log (their intent pruned, or not this request's in a tampered table). */
  const done: string[] = [];
  /** Each appended record's answer and sequence number once committed; undefined: its commit failed. */
  const appended: Promise<{ a: EffectAnswer; seq: number } | undefined>[] = [];
  // Oldest effect first: the recovered records keep the order the effects committed in.
  for (const ref of answers.reverse()) {
    const intent = intents.get(ref.intentSeq) ?? headAt(store, ref.intentSeq);
    if (
      intent?.phase !== "intent" ||
      intent.requestId === null ||
      !(ref.key.startsWith(intent.persona) && ref.key.charCodeAt(intent.persona.length) === COLON) ||
      !ref.key.endsWith(`:${intent.requestId}`)
    ) {
      // Cleared, or it would be read again at every start.
      done.push(ref.key);
      continue;
    }
    // Its outcome is on the log: the usual case (answers are no longer cleared as they are recorded).
    if (hasOutcome(intent.session, intent.requestId)) continue;
    // Read whole: the record and the answer this start records.
    const whole = store.scanAudit(ref.intentSeq, 1)[0];
    const a = store.effectAnswer(ref.key);
    if (!whole || whole.seq !== ref.intentSeq || !a) continue;
    const answer = decodeCanonical(a.response) as CborMap;
    const status = typeof answer.status === "string" ? answer.status : "SUCCESS";
    const errorClass = typeof answer.error === "string" ? answer.error : null;
    const committed = audit.append({
      session: whole.session,
      persona: whole.persona,
      phase: "outcome",
      requestId: whole.requestId,
      op: whole.op,
      target: whole.target,
      intentHash: whole.intentHash,
      caps: whole.caps,
      traceparent: whole.traceparent,
      execution: whole.execution ?? null,
      domain: whole.domain ?? null,
      status,
      errorClass,
      message: RECOVERED_MESSAGE,
      detail: detailJson({ ...(outcomeDetail(a) ?? answerSummary(answer.payload)), status, recovered: true }),
    });
    const seq = audit.headSeq;
    appended.push(
      committed.then(
        () => ({ a, seq }),
        () => undefined,
      ),
    );
  }
  audit.flush();
  const recorded = (await Promise.all(appended)).filter((r) => r !== undefined);
  // The refusals a revocation causes name its record, as they would have named the request's own.
  for (const { a, seq } of recorded) for (const id of a.revoked ?? []) store.noteRevocationSeq(id, seq);
  // Only those whose record committed stop naming their intents (a kill in between writes them
  // again, never loses them); one whose commit failed is left for the next start. Its record may
  // come before the answer's after_seq (an OS crash cut the log there), where no later start would
  // look for it: the answer must stop naming its intent, and only once the record is synced.
  if (recorded.length > 0) await store.syncAuditSegment?.();
  // A failed sync fails the audit closed (nothing more is answered): those answers stay named.
  if (store.auditSyncFailure === undefined) done.push(...recorded.map((r) => r.a.key));
  if (done.length) store.effectAnswersRecorded(done);
  return { recorded: recorded.length, failed: appended.length - recorded.length };
}

/** The detail the op made for its outcome record, committed with its answer (none in an older kernel's row). */
function outcomeDetail(a: EffectAnswer): { [k: string]: DetailValue } | undefined {
  if (a.detail === undefined) return undefined;
  try {
    const v: unknown = JSON.parse(a.detail);
    if (v !== null && typeof v === "object" && !Array.isArray(v)) return v as { [k: string]: DetailValue };
  } catch {
    // A damaged row: the answer's summary instead.
  }
  return undefined;
}

/**
 * What the outcome summary can say from the recorded answer alone (an older kernel's row): its small scalar fields
 * (generation, size, ids, counts), and a token it carries as its audit detail (never the token's bytes).
 */
function answerSummary(payload: unknown): { [k: string]: DetailValue } {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload) || payload instanceof Uint8Array) return {};
  const out: { [k: string]: DetailValue } = {};
  for (const [k, v] of Object.entries(payload as CborMap)) {
    if (typeof v === "number" || typeof v === "boolean" || (typeof v === "string" && v.length <= 256)) out[k] = v;
    else if (k === "token" && v instanceof Uint8Array) {
      try {
        out.token = tokenDetail(decodeToken(v));
      } catch {
        // Not a token: nothing to say about it.
      }
    }
  }
  return out;
}

const COLON = 0x3a;

/** Record `seq`'s head, if the log holds that record. */
function headAt(store: Pick<AuditStore, "auditHeads">, seq: number): RecordHead | undefined {
  let found: RecordHead | undefined;
  store.auditHeads(seq, seq, (h) => {
    found = h;
  });
  return found;
}
