import type { CborMap, CborValue, Grant, Response } from "@kpip/protocol";
import { parseTarget } from "@kpip/protocol";
import { statusDetail } from "../audit/detail.js";
import { checkArgs } from "../primitives/router.js";
import { type OpContext, OpError, type OpResult } from "../primitives/types.js";
import type { AnswerBudget } from "./answer-budget.js";
import { type AtomicAnswer, answer, failure, type Refusal, type RequestCtx } from "./context.js";
import type { DedupeCache } from "./dedupe.js";
import { checkOwnership } from "./ownership.js";

/** The longest delay a Node timer holds (2^31 − 1 ms, ~24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

// Steps 9–10 of the pipeline (pipeline.ts): the request's checks that need its decoded target,
// then its handler, and the answer of what ran.

/**
 * Target, arguments, ownership and deadline, then the handler: a handler never checks rights.
 * Synchronous: a refusal here throws, and a synchronous handler's result is returned as it is.
 */
export function execute(
  ctx: RequestCtx,
  dedupe: DedupeCache,
  answers: AnswerBudget,
  lapsed: Lapsed,
  /** The kernel is stopping: no effect commits any more (Pipeline.stopEffects). */
  stopping: () => boolean = () => false,
  /** The audit log's newest record (appended or not); none: 0. */
  headSeq: () => number = () => 0,
): OpResult | Promise<OpResult> {
  const { session: s, req } = ctx;
  const intent = ctx.intent as NonNullable<RequestCtx["intent"]>;
  const decl = ctx.decl as NonNullable<RequestCtx["decl"]>;
  // Parsed when the intent's grammar was checked (step 3); parsed here only if it was not.
  const target = ctx.target ?? parseTarget(intent.target);
  if (typeof target === "string") throw new OpError("SEMANTIC", target);
  if (!decl.targets.includes(target.scheme)) {
    throw new OpError("SEMANTIC", `${intent.op} takes a ${decl.targets.map((t) => `${t}://`).join(" or ")} target`);
  }
  checkArgs(decl, intent.args);
  const deadline = intent.constraints?.deadline;
  const left = deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
  // A timer holds at most MAX_TIMER_MS: a deadline farther away (any uint is valid, §7.5) threw
  // past 2^32 − 1 ms (the request answered INTERNAL) and below it overflowed to a 1 ms timer
  // (the request aborted at once). No request runs that long (what does is DEFERRED, under
  // maxRuntimeMs ≤ MAX_TIMER_MS): such a deadline arms no timer.
  const signal = left === undefined || left > MAX_TIMER_MS ? s.signal : AbortSignal.any([s.signal, AbortSignal.timeout(left)]);
  const op: OpContext = {
    op: intent.op,
    persona: s.persona,
    session: s.id,
    requestId: req.id,
    workspace: req.context.workspace,
    targetUri: intent.target,
    target,
    args: intent.args as CborMap,
    deadline,
    signal,
    grant: ctx.decision?.grant,
    handles: s.handles,
    // A read-only op has no dedupe hash and keeps no record: its "effect" simply runs.
    atomically: ctx.dhash === undefined ? runNow : atomicallyFor(ctx, dedupe, lapsed, stopping, headSeq),
    maxBody: s.maxBody,
    // The lease is taken only by a handler that holds answer bytes (most never do).
    holdAnswerBytes: (bytes) => {
      ctx.lease ??= answers.lease(s.id, s);
      ctx.lease.hold(bytes);
    },
  };
  checkOwnership(decl, op);
  if (deadline !== undefined && deadline <= Date.now()) throw new OpError("RESOURCE", "deadline exceeded before execution");
  // An op with effects waited for its intent record since the decision: a revocation (or the
  // token's expiry) answered meanwhile must stop it here, before a handler that acts at once
  // (compute.submit, event.emit) acts. `atomically` asks again for one that awaits first.
  if (decl.effects) refuseIfLapsed(ctx, lapsed, "before it ran: nothing was done", decl.effectsInAtomically !== true);
  else {
    // A read shows what the persona id's holder may see: one whose registration no longer stands
    // (the CLI's removal beside the kernel, before its tick) would see the new holder's.
    const lost = s.identityLost ?? s.registrationLost?.(true);
    if (lost !== undefined) throw new OpError("AUTH", `${lost}: nothing was read`);
    // A session whose answers fill its budget gets no read-only op run: its answer would be refused once built.
    answers.checkRoom(s.id, s.buffered ?? 0);
  }
  return decl.handler(op);
}

/**
 * Why the grant that authorized a request no longer holds (revoked, itself or an ancestor, or
 * expired), or undefined: the token store's facts, asked again before an effect (the kernel's
 * enforcer, whatever authorizer decided).
 */
export type Lapsed = (grant: Grant, what: string) => string | undefined;

/** An answer smaller than this is not counted: maxInFlight of them are little, and most answers are. */
const SMALL_ANSWER = 4096;

/**
 * Step 10's end: the bytes of the answer a handler built, held against the budget of answers in
 * preparation (answer-budget.ts) beyond what the handler held itself before reading. Applied to
 * every op, so a listing page, an op's result or an embedder's op cannot be piled up by a
 * pipelined burst whatever its handler does. A read-only op past the budget is refused RESOURCE
 * (its answer is dropped; the retry reruns it); an op with effects has made them, so its answer
 * is only counted, never refused. A handler that held more than its answer takes gets the rest back.
 */
export function holdResult(ctx: RequestCtx, result: OpResult, answers: AnswerBudget): void {
  if (result.payload === undefined) return;
  const held = ctx.lease?.bytes ?? 0;
  const more = payloadBytes(result.payload) - held;
  // A handler that held an upper estimate (a listing's page) keeps what the answer takes.
  if (more <= -SMALL_ANSWER) return ctx.lease?.giveBack(-more);
  if (more < SMALL_ANSWER) return;
  ctx.lease ??= answers.lease(ctx.session.id, ctx.session);
  if ((ctx.decl as NonNullable<RequestCtx["decl"]>).effects) ctx.lease.count(more);
  else ctx.lease.hold(more);
}

/** About the bytes a payload takes encoded (and in memory): a byte string's length, a text's, a few per item. */
export function payloadBytes(v: CborValue): number {
  if (v === null || typeof v !== "object") return typeof v === "string" ? v.length + 1 : 9;
  if (v instanceof Uint8Array) return v.byteLength + 9;
  let n = 9;
  if (Array.isArray(v)) {
    for (const x of v) n += payloadBytes(x);
    return n;
  }
  for (const k in v) n += k.length + 1 + payloadBytes(v[k] as CborValue);
  return n;
}

/**
 * CAPABILITY when the grant that authorized the request was revoked or expired since the decision;
 * AUTH when the session's persona was removed (or re-keyed, or registered again) meanwhile, which
 * need not revoke that grant (a parent's token its sub-persona uses) — the registry asked now, so
 * a change the kernel takes in only at its next tick (the CLI beside it) stops the earlier
 * holder's effects at once: work it began then would be taken for the new holder's. `when`: what
 * that stopped.
 */
function refuseIfLapsed(ctx: RequestCtx, lapsed: Lapsed, when: string, askRegistry = true): void {
  const lost = ctx.session.identityLost ?? (askRegistry ? ctx.session.registrationLost?.() : undefined);
  if (lost !== undefined) throw new OpError("AUTH", `${lost} ${when}`);
  const grant = ctx.decision?.grant;
  const why = grant && lapsed(grant, "request");
  if (why) throw new OpError("CAPABILITY", `${why} ${when}`);
}

/** An op with effects' `atomically`: the effect commits in one transaction with the dedupe record of the answer it returns. */
function atomicallyFor(
  ctx: RequestCtx,
  dedupe: DedupeCache,
  lapsed: Lapsed,
  stopping: () => boolean,
  headSeq: () => number,
): OpContext["atomically"] {
  const a: AtomicAnswer = { recorded: false, committed: false, result: undefined, answer: undefined, detail: undefined };
  ctx.atomic = a;
  return <T extends OpResult>(effect: () => T): T => {
    // Its session was ended by the kernel's stop: the audit log closes next, so an effect now
    // would have no outcome record. Retryable: the retry runs afresh once the kernel is back.
    if (stopping()) throw new OpError("RESOURCE", "the kernel is stopping: nothing was changed; retry once it is back");
    // The answer names the intent record and where the log was, and keeps what its outcome record
    // says: a crash before that record leaves the effect findable by the next start, which writes
    // the record the request would have (audit/recover-outcomes.ts).
    const afterSeq = headSeq();
    const v = dedupe.commitWith(
      ctx.key as string,
      ctx.dhash as Buffer,
      // The decision was taken when the request arrived; a handler that awaited since (a body
      // written to the file store, an upload synced) must not commit past a revocation or expiry
      // answered meanwhile (PROTOCOL §13). Asked in the effect's transaction: the registry lookup
      // reads the snapshot the effect commits on (ordered against a removal committed beside the
      // kernel, which a lookup before it was not), and opens no read transaction of its own.
      () => {
        refuseIfLapsed(ctx, lapsed, "before its effect committed: nothing was changed");
        return effect();
      },
      (r) => {
        a.result = r;
        a.answer = answer(ctx, r);
        return a.answer;
      },
      ctx.intentSeq > 0
        ? (r) => {
            a.detail = statusDetail(r.status, r.audit);
            return { intentSeq: ctx.intentSeq, afterSeq, detail: a.detail, ...(r.revoked?.length ? { revoked: r.revoked } : {}) };
          }
        : undefined,
    );
    a.recorded = dedupe.durable;
    a.committed = true;
    return v;
  };
}

/** A finished run's answer: its refusal, the answer recorded with its atomic effect, or its result's. */
export function outcomeAnswer(ctx: RequestCtx, result: OpResult | undefined, refusal: Refusal | undefined): Response {
  if (refusal) return failure(ctx, refusal);
  const a = ctx.atomic;
  if (a?.recorded && a.answer !== undefined && result === a.result) return a.answer;
  return answer(ctx, result as OpResult);
}

const runNow = <T>(effect: () => T): T => effect();
