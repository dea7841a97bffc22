import { type CborMap, decodeCanonical, decodeToken } from "@kpip/protocol";
import type { AuditRow, AuditStore } from "../store/types.js";
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
 * An op's effect commits with its dedupe answer (PROTOCOL §11 rule 9) and its outcome record is
 * appended just after: a kernel killed between the two left an effect that happened (an object
 * written, a token minted or revoked, a persona removed) with an intent record and no outcome,
 * which reads as "did not finish". The outcome record's commit clears its answer's row (the
 * audit appender, store/sqlite/audit-append.ts), so the rows left naming an intent are those a
 * kill caught before that commit: few. At a start after a run that ended without kernel.stop,
 * every such answer near the log's head whose outcome record is not on the log gets one now:
 * the intent record's request, persona, session and capabilities, the answer's status, and
 * `detail.recovered`. Returns how many records it wrote, committed when it returns.
 */
export function recoverOutcomes(store: AuditStore, audit: AuditLog, head: number): number {
  const answers = store.effectAnswersSince(Math.max(0, head - RECOVERY_WINDOW));
  if (answers.length === 0) return 0;
  // The outcome records after the earliest of those effects, by session and request id.
  let from = head + 1;
  for (const a of answers) if (a.afterSeq + 1 < from) from = a.afterSeq + 1;
  const outcomes = new Set<string>();
  for (let seq = from; seq <= head; ) {
    const rows = store.scanAudit(seq, 1024);
    if (rows.length === 0) break;
    for (const r of rows) if (r.phase === "outcome" && r.requestId !== null) outcomes.add(`${r.session}\0${r.requestId}`);
    seq = (rows[rows.length - 1] as AuditRow).seq + 1;
  }
  const recorded: string[] = [];
  let written = 0;
  // Oldest effect first: the recovered records keep the order the effects committed in.
  for (const a of answers.reverse()) {
    const intent = store.scanAudit(a.intentSeq, 1)[0];
    // Done with either way: recorded below, or nothing names it (its intent pruned, or not this
    // request's in a tampered table) — read again at every start otherwise.
    recorded.push(a.key);
    if (!intent || intent.seq !== a.intentSeq || intent.phase !== "intent" || intent.requestId === null) continue;
    if (!a.key.startsWith(`${intent.persona}:`) || !a.key.endsWith(`:${intent.requestId}`)) continue;
    if (outcomes.has(`${intent.session}\0${intent.requestId}`)) continue;
    const answer = decodeCanonical(a.response) as CborMap;
    const status = typeof answer.status === "string" ? answer.status : "SUCCESS";
    const errorClass = typeof answer.error === "string" ? answer.error : null;
    written++;
    void audit
      .append({
        session: intent.session,
        persona: intent.persona,
        phase: "outcome",
        requestId: intent.requestId,
        op: intent.op,
        target: intent.target,
        intentHash: intent.intentHash,
        caps: intent.caps,
        traceparent: intent.traceparent,
        execution: intent.execution ?? null,
        domain: intent.domain ?? null,
        status,
        errorClass,
        message: RECOVERED_MESSAGE,
        detail: detailJson({ status, recovered: true, ...answerSummary(answer.payload) }),
      })
      .catch(() => {});
  }
  // Committed before the answers stop naming their intents: a kill in between writes them again, never loses them.
  audit.flush();
  if (recorded.length) store.effectAnswersRecorded(recorded);
  return written;
}

/**
 * What the outcome summary can say from the recorded answer alone: its small scalar fields
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
