import {
  type CborMap,
  decodeIntent,
  parseTarget,
  RETRYABLE_CLASSES,
  type Request,
  type Response,
  sha256Latin1,
} from "@kpip/protocol";
import { statusDetail } from "../audit/detail.js";
import type { AuditLog } from "../audit/log.js";
import { type RefusalLimiter, suppressedMessage } from "../audit/refusals.js";
import type { Authorizer, Decision } from "../auth/authorizer.js";
import type { Logger } from "../log.js";
import type { KernelMetrics } from "../metrics/metrics.js";
import { checkArgs, type Router } from "../primitives/router.js";
import { type OpContext, OpError, type OpResult } from "../primitives/types.js";
import type { ResourceLedger } from "../resources/ledger.js";
import { HASH_SLICE, sha256InSlices } from "../sliced-hash.js";
import type { Admission } from "./admission.js";
import { AnswerBudget, type AnswerLease } from "./answer-budget.js";
import {
  answer,
  checkEnvelope,
  elapsedUs,
  failure,
  isThenable,
  type Refusal,
  type RequestCtx,
  recordIntentColumns,
  requestCtx,
  requestEntry,
  type SessionView,
  toRefusal,
} from "./context.js";
import { type DedupeCache, type DedupeTag, dedupeTag, encodedResponse } from "./dedupe.js";
import { checkOwnership } from "./ownership.js";
import { endRequestSpan, stage, startRequestSpan } from "./tracing.js";

export type { Refusal, RequestCtx, SessionView } from "./context.js";

/** What the pipeline is built from. */
export interface PipelineDeps {
  router: Router;
  authorizer: Authorizer;
  audit: AuditLog;
  dedupe: DedupeCache;
  ledger: ResourceLedger;
  log: Logger;
  /** The first stage: requests in flight per session, and the sessions limit the kernel asks at attestation. */
  admission: Admission;
  metrics?: KernelMetrics;
  /** The refusal rate (default: every refusal recorded one by one). */
  refusals?: RefusalLimiter;
  /** Answers in preparation (default: what suits the default 64 MiB write buffer). */
  answers?: AnswerBudget;
}

/**
 * The one straight path a request takes (PROTOCOL §9; docs/architecture.md "One request, one path"):
 * admit → validate version and identity → decode the intent → find its declaration → resolve
 * capabilities and authorize → dedupe → limits → audit the intent → check target, args and
 * ownership → execute → audit the outcome → respond. Every request leaves audit records, each
 * written from its {@link RequestCtx}; every refusal goes through {@link refuse}; nothing is
 * answered before its records are committed.
 */
export class Pipeline {
  readonly admission: Admission;
  private readonly answers: AnswerBudget;
  /**
   * Sessions whose latest request still waits before step 6 (a sliced hash, an authorizer's
   * promise): the settling of that wait. A later request of the session waits for it, so a
   * session's requests reach dedupe and their handlers in the order they arrived.
   */
  private readonly waiting = new Map<string, Promise<void>>();

  constructor(private readonly deps: PipelineDeps) {
    this.admission = deps.admission;
    this.answers = deps.answers ?? AnswerBudget.forWriteBuffer(64 * 1024 * 1024);
  }

  /**
   * The one way a request is refused: its record, then its answer. The record keeps the intent's
   * hash, op and target, its bytes only when small (refusals cost the refused nothing, so they
   * must not cost the disk much: no bulk bytes), and is written within the refusal rate only;
   * beyond it the refusal is counted into one aggregate record (see {@link flushSuppressed}).
   */
  private async refuse(ctx: RequestCtx, r: Refusal, last = true): Promise<Response> {
    const { refusals, audit } = this.deps;
    const intent = ctx.rec.intent;
    const entry = requestEntry(ctx, "refused", {
      intent: intent && intent.length > (refusals?.intentMaxBytes ?? 1024) ? null : intent,
      caps: ctx.decision?.capIds.join(","),
      status: "FAILURE",
      errorClass: r.errorClass,
      message: r.audited ?? r.message,
      durationUs: elapsedUs(ctx),
    });
    const s = ctx.session;
    if (!refusals || refusals.admit(s.id, s.persona, r.errorClass)) await audit.appendRow(entry);
    else if (refusals.flooding(s.id)) s.expel?.("REFUSAL_FLOOD", "too many refused requests on this session", "RESOURCE");
    const response = failure(ctx, r);
    return last ? this.answered(ctx, response) : response;
  }

  /** Writes one aggregate record per session for the refusals over the rate since the last call (the kernel's tick). */
  flushSuppressed(): void {
    for (const x of this.deps.refusals?.take() ?? []) {
      this.deps.audit
        .append({
          session: x.session,
          persona: x.persona,
          phase: "refused",
          op: "audit.suppressed",
          status: "FAILURE",
          message: suppressedMessage(x),
        })
        .catch(() => {});
    }
  }

  /** A session ended: its refusal bucket goes. */
  sessionEnded(id: string): void {
    this.deps.refusals?.forget(id);
  }

  /**
   * A request, to its answer. Not an async function: its stages run synchronously up to their
   * first real wait, and the last of them ({@link answered}) ends its span and counts it, so an
   * answer costs no promise and microtask turn of its own here.
   */
  handle(s: SessionView, req: Request): Promise<Response> {
    const started = process.hrtime.bigint();
    // An embedder's tracer that throws becomes this request's rejection (an INTERNAL answer), not the session's end.
    try {
      const t = startRequestSpan(req.context.traceparent, {
        "kpip.persona": s.persona,
        "kpip.session": s.id,
        "kpip.request_id": req.id,
      });
      return this.process(requestCtx(s, req, started, t));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** The request's answer is final (every way a request ends passes here once): its span ends, its metrics count it. */
  private answered(ctx: RequestCtx, r: Response): Response {
    endRequestSpan(ctx.trace, ctx.op, r.status, r.error);
    this.deps.metrics?.requests.answered(ctx.op, r.status, r.error, Number(process.hrtime.bigint() - ctx.started) / 1e9);
    return r;
  }

  /**
   * The intent's SHA-256 (latin1: a char per byte). A large one is hashed a slice per event-loop
   * turn, so other sessions' requests run meanwhile instead of waiting out the whole body (a
   * 16 MiB intent is ~10 ms of hashing here). Requests of one session still reach the stages
   * after this in the order they arrived (an upload's chunks must, PROTOCOL §9): a request that
   * arrives while an earlier one of its session is being hashed waits for it.
   */
  private hashInOrder(session: string, intent: Uint8Array): string | Promise<string> {
    const before = this.waiting.size === 0 ? undefined : this.waiting.get(session);
    if (before === undefined && intent.length <= HASH_SLICE) return sha256Latin1(intent);
    const hash = () => (intent.length > HASH_SLICE ? sha256InSlices(intent).then(latin1) : sha256Latin1(intent));
    const p = before === undefined ? sha256InSlices(intent).then(latin1) : before.then(hash);
    this.holdSession(session, p);
    return p;
  }

  /**
   * The session's later requests wait until `p` settles, and its own reactions registered before
   * this call (the request's next stage) run first: they are earlier in `p`'s reaction list.
   */
  private holdSession(session: string, p: Promise<unknown>): void {
    const gate = p.then(
      () => {},
      () => {},
    );
    this.waiting.set(session, gate);
    void gate.then(() => {
      if (this.waiting.get(session) === gate) this.waiting.delete(session);
    });
  }

  /**
   * Steps 1–6. Synchronous up to the first stage that truly waits (a sliced hash, an
   * authorizer or handler that returns a promise, an audit commit): a microtask turn per stage
   * was a promise and a reaction for every request that waits on nothing until its record commits.
   */
  private process(ctx: RequestCtx): Promise<Response> {
    const { session: s, req } = ctx;
    // 1. admission: the session takes this request (in flight, not closing).
    // 2. version and identity: a request may only speak for the attested persona.
    const early = this.admission.request(s) ?? checkEnvelope(s, req);
    if (early) return this.refuseUndecoded(ctx, early);

    // 3. the intent: canonical bytes, valid grammar; hashed exactly as sent.
    const h = this.hashInOrder(s.id, req.intent);
    return typeof h === "string" ? this.decode(ctx, h) : h.then((hash) => this.decode(ctx, hash));
  }

  /** A refusal before step 3: the record's intent columns from bytes the pipeline did not decode. */
  private async refuseUndecoded(ctx: RequestCtx, r: Refusal): Promise<Response> {
    const columns = recordIntentColumns(ctx.rec, ctx.req.intent);
    if (columns) await columns;
    return this.refuse(ctx, r);
  }

  /** Steps 3 (the hash known) to 5. */
  private decode(ctx: RequestCtx, hashLatin1: string): Promise<Response> {
    const req = ctx.req;
    const hash = Buffer.from(hashLatin1, "latin1");
    const rec = ctx.rec;
    ctx.hash = hash;
    rec.intent = req.intent;
    rec.intentHash = hash;
    try {
      ctx.intent = decodeIntent(req.intent);
    } catch (e) {
      return this.refuse(ctx, { errorClass: "SEMANTIC", message: (e as Error).message });
    }
    const intent = ctx.intent;
    rec.op = intent.op;
    rec.target = intent.target;
    // 4. an op the kernel does not have is SEMANTIC whatever the token (PROTOCOL §10.1): the class
    // must not depend on whether a grant happens to cover the name. Op names are public (system.describe).
    const decl = this.deps.router.get(intent.op);
    ctx.op = decl ? intent.op : "unknown";
    if (!decl) return this.refuse(ctx, { errorClass: "SEMANTIC", message: `unknown op ${intent.op} (see system.describe)` });
    ctx.decl = decl;

    // 5. capabilities and authorization, before dedupe (PROTOCOL §9.1): a request that could not
    // run learns nothing from the record — not an answer, not even that its ids were used.
    const decision = ctx.trace.recording ? stage(ctx.trace, "kpip.authorize", () => this.authorize(ctx)) : this.authorize(ctx);
    if (!isThenable(decision)) return this.admit(ctx, decision);
    // A decision that comes later: the session's later requests wait for it (after this one's
    // step 6), or a later request with a decision at hand would overtake this one.
    const later = Promise.resolve(decision);
    const admitted = later.then((d) => this.admit(ctx, d));
    this.holdSession(ctx.session.id, later);
    return admitted;
  }

  private authorize(ctx: RequestCtx): Decision {
    const { session: s, req } = ctx;
    return this.deps.authorizer.authorize({
      persona: s.persona,
      session: s.id,
      intent: ctx.intent as NonNullable<RequestCtx["intent"]>,
      context: req.context,
      caps: req.caps,
      handles: s.handles,
      declaration: ctx.decl,
    });
  }

  /** Step 6 (the decision known), then the run. */
  private admit(ctx: RequestCtx, decision: Decision): Promise<Response> {
    const { session: s, req } = ctx;
    if (!decision.allowed) {
      ctx.rec.caps = decision.capIds.join(",");
      return this.refuse(ctx, decision);
    }
    ctx.decision = decision;
    const decl = ctx.decl as NonNullable<RequestCtx["decl"]>;

    // 6. dedupe: a retry gets the recorded answer; the same ids with another intent get nothing of it.
    // Keyed by the attested persona too: another persona replaying the same ids gets nothing of it,
    // and remembered under the authority that allowed it: another capability never gets its answer.
    const key = `${s.persona}:${s.instance}:${req.id}`;
    const tag = dedupeTag(ctx.hash as Buffer, decision, decl.effects);
    ctx.key = key;
    ctx.dhash = tag.hash;
    const dedupe = this.deps.dedupe;
    const now = Date.now();
    const prior = dedupe.check(key, tag, now, decl.effects);
    if (prior.kind === "conflict") {
      return this.refuse(ctx, {
        errorClass: "SEMANTIC",
        message: `request id ${req.id} was already used for a different intent or under another capability: use a new id`,
      });
    }
    if (prior.kind === "answer") return this.replay(ctx, prior.response);
    const pending = this.run(ctx, this.answers.lease(s.id), tag);
    // Registered before any duplicate can arrive: run() answers only after a commit, never synchronously.
    dedupe.running(key, tag, pending, now);
    // A run that throws (a record that did not commit) is no answer: a retry with these ids runs again.
    pending.catch(() => dedupe.abandoned(key, pending));
    return pending;
  }

  /** A retry answered from the record: nothing runs again, but the retry itself is on the record. */
  private async replay(ctx: RequestCtx, recorded: Response | Promise<Response>): Promise<Response> {
    const response = await recorded;
    await this.deps.audit.appendRow(
      requestEntry(ctx, "replay", {
        intent: null,
        caps: ctx.decision?.capIds.join(","),
        status: response.status,
        errorClass: response.error ?? null,
        message: "answered from the record of the first attempt",
        durationUs: elapsedUs(ctx),
      }),
    );
    return this.answered(ctx, response);
  }

  /**
   * Steps 7–12 of an authorized, new request (its ctx has decl, decision, key and dhash), then
   * what dedupe keeps of its answer (`tag`: what the request is remembered by). One async
   * function whose only waits are the audit commits (and a handler that returns a promise).
   */
  private async run(ctx: RequestCtx, lease: AnswerLease, tag: DedupeTag): Promise<Response> {
    const { audit, dedupe } = this.deps;
    let response: Response;
    // The lease is given back however the request ends (in the body: a `.finally` was one more promise a request).
    try {
      const trace = ctx.trace;
      const decl = ctx.decl as NonNullable<RequestCtx["decl"]>;
      const decision = ctx.decision as NonNullable<RequestCtx["decision"]>;
      const caps = decision.capIds.join(",");
      // 7. limits on requests themselves (concurrent, rate) from the authorizing grant.
      let release: (() => void) | undefined;
      let refusal: Refusal | undefined;
      try {
        release = this.deps.ledger.admit(ctx.session.persona, decision.grant, decision.rateKey);
      } catch (e) {
        refusal = toRefusal(e, this.deps.log, ctx);
      }
      if (release === undefined) response = await this.refuse(ctx, refusal as Refusal, false);
      else {
        // 8. an op that changes state has its intent recorded, and committed, before it runs.
        const effects = decl.effects;
        if (effects) {
          const intentRecord = () => audit.appendRow(requestEntry(ctx, "intent", { caps }));
          try {
            await (trace.recording ? stage(trace, "kpip.audit.intent", intentRecord) : intentRecord());
          } catch (e) {
            release();
            throw e;
          }
        }

        // 9–10. check and execute; an effect made `atomically` commits with its dedupe record.
        let result: OpResult | undefined;
        let recorded = false;
        // The answer recorded with an atomic effect, already encoded: sent as it is when the handler returns that result.
        let atomicResult: OpResult | undefined;
        let atomicAnswer: Response | undefined;
        try {
          // A read-only op has no dedupe hash and keeps no record: its "effect" simply runs.
          const atomically =
            ctx.dhash === undefined
              ? runNow
              : <T extends OpResult>(effect: () => T): T => {
                  const v = dedupe.commitWith(ctx.key as string, ctx.dhash as Buffer, effect, (r) => {
                    atomicResult = r;
                    atomicAnswer = answer(ctx, r);
                    return atomicAnswer;
                  });
                  recorded = dedupe.durable;
                  return v;
                };
          const execute = () => this.execute(ctx, atomically, lease);
          const r = trace.recording ? stage(trace, "kpip.execute", execute) : execute();
          result = isThenable(r) ? await r : r;
        } catch (e) {
          refusal = toRefusal(e, this.deps.log, ctx);
        } finally {
          release();
        }

        // 11. audit the outcome, then answer. The response of an op with effects is stored with
        // its outcome record, so a retry after a kernel restart gets it instead of a second run.
        if (refusal) response = failure(ctx, refusal);
        else if (recorded && atomicAnswer !== undefined && result === atomicResult) response = atomicAnswer;
        else response = answer(ctx, result as OpResult);
        // An answer recorded with its effect stays the record: the effect happened, whatever follows.
        const keep = effects && !recorded && !(refusal && RETRYABLE_CLASSES.has(refusal.errorClass));
        // A read-only op leaves one "complete" record (intent and outcome, one commit); an op with
        // effects an "outcome" record that refers to its intent record by request id and hash.
        const outcome = audit.appendRow(
          requestEntry(ctx, effects ? "outcome" : "complete", {
            intent: effects ? null : ctx.req.intent,
            caps,
            status: response.status,
            errorClass: refusal?.errorClass ?? null,
            message: refusal?.message ?? null,
            durationUs: elapsedUs(ctx),
            detail: statusDetail(response.status, result?.audit),
          }),
          keep
            ? {
                key: ctx.key as string,
                hash: ctx.dhash as Buffer,
                // Encoded once: recorded, and sent as these bytes.
                response: encodedResponse(response),
                expires: Date.now() + dedupe.windowMs,
              }
            : undefined,
        );
        // Chained synchronously: the head is this record (a revocation notes where it is on the record).
        result?.recorded?.(audit.headSeq);
        await (trace.recording ? stage(trace, "kpip.audit.outcome", () => outcome) : outcome);
      }
    } finally {
      lease.release();
    }
    // A transient failure is not an answer to keep: the client's retry must run again.
    if (response.error !== undefined && RETRYABLE_CLASSES.has(response.error)) dedupe.forget(ctx.key as string);
    else dedupe.settled(ctx.key as string, tag, Date.now());
    return this.answered(ctx, response);
  }

  /**
   * Target, arguments, ownership and deadline, then the handler: a handler never checks rights.
   * Synchronous: a refusal here throws, and a synchronous handler's result is returned as it is.
   */
  private execute(ctx: RequestCtx, atomically: OpContext["atomically"], lease: AnswerLease): OpResult | Promise<OpResult> {
    const { session: s, req } = ctx;
    const intent = ctx.intent as NonNullable<RequestCtx["intent"]>;
    const decl = ctx.decl as NonNullable<RequestCtx["decl"]>;
    const target = parseTarget(intent.target);
    if (typeof target === "string") throw new OpError("SEMANTIC", target);
    if (!decl.targets.includes(target.scheme)) {
      throw new OpError("SEMANTIC", `${intent.op} takes a ${decl.targets.map((t) => `${t}://`).join(" or ")} target`);
    }
    checkArgs(decl, intent.args);
    const deadline = intent.constraints?.deadline;
    const signal =
      deadline === undefined ? s.signal : AbortSignal.any([s.signal, AbortSignal.timeout(Math.max(0, deadline - Date.now()))]);
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
      atomically,
      maxBody: s.maxBody,
      holdAnswerBytes: (bytes) => lease.hold(bytes),
    };
    checkOwnership(decl, op);
    if (deadline !== undefined && deadline <= Date.now()) throw new OpError("RESOURCE", "deadline exceeded before execution");
    return decl.handler(op);
  }
}

const latin1 = (b: Buffer): string => b.toString("latin1");

const runNow = <T>(effect: () => T): T => effect();
