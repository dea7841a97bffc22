import {
  DEFAULT_LIMITS,
  decodeIntent,
  type ErrorClass,
  type Grant,
  lastDecodedItems,
  RETRYABLE_CLASSES,
  type Request,
  type Response,
  sha256,
} from "@kpip/protocol";
import { statusDetail } from "../audit/detail.js";
import type { AuditLog } from "../audit/log.js";
import { DECODED_ITEMS_PER_SECOND, OWED_INTENT_BYTES, REFUSED_DECODE_WEIGHT, type RefusalLimiter } from "../audit/refusals.js";
import { suppressedRefusalsRecord } from "../audit/suppressed-records.js";
import type { Authorizer, Decision } from "../auth/authorizer.js";
import type { StorageSpace } from "../kernel/storage-space.js";
import { SUPPRESSED_FLUSH_MS } from "../limits.js";
import type { Logger } from "../log.js";
import type { KernelMetrics } from "../metrics/metrics.js";
import type { Router } from "../primitives/router.js";
import { OpError, type OpResult } from "../primitives/types.js";
import { type ResourceLedger, rateRefusal } from "../resources/ledger.js";
import type { BodyPool } from "../session/body-pool.js";
import type { PeerLogLimiter } from "../session/log-limit.js";
import { HASH_SLICE, sha256InSlices } from "../sliced-hash.js";
import type { Admission } from "./admission.js";
import { AnswerBudget } from "./answer-budget.js";
import {
  boundedMessage,
  checkEnvelope,
  elapsedUs,
  FAILED_EARLY,
  failure,
  intentNames,
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
import { execute, holdResult, type Lapsed, outcomeAnswer } from "./execute.js";
import { endRequestSpan, stage, startRequestSpan } from "./tracing.js";

/** Classes a request is refused with before anything of it runs: its intent was decoded for nothing. */
const PRE_EXECUTION: ReadonlySet<ErrorClass> = new Set<ErrorClass>(["SEMANTIC", "CAPABILITY", "AUTH"]);

export type { Refusal, RequestCtx, SessionView } from "./context.js";

/** What the pipeline is built from. */
export interface PipelineDeps {
  router: Router;
  authorizer: Authorizer;
  /**
   * Whether a decision's grant still holds, asked again before an op's effect (execute.ts). The
   * kernel passes its enforcer's, so a custom authorizer cannot drop the re-check; default: the
   * authorizer's own `lapsed`, if it has one.
   */
  lapsed?: Lapsed;
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
  /** Large bodies' memory, given back once an op that `releasesArgs` has run (none: nothing is given back). */
  bodies?: BodyPool;
  /** Where an op's INTERNAL failure is logged, within its persona's budget (none: the kernel's log, unbounded). */
  peerLog?: PeerLogLimiter;
  /**
   * Told of each write refused room (the disk full): health, metrics and a rate-limited log; and
   * keeps the outcome record of an effect that committed while its record could not be, for later.
   */
  space?: Pick<StorageSpace, "failed" | "lateOutcome">;
  /** Notes the outcome record of an effect that revoked tokens ({@link OpResult.revoked}): the refusals they cause name it. */
  revocationRecorded?: (ids: readonly string[], seq: number) => void;
}

/**
 * The one straight path a request takes (PROTOCOL §9; docs/architecture.md "One request, one path"):
 * admit → validate version and identity → decode the intent → find its declaration → resolve
 * capabilities and authorize → dedupe → limits → audit the intent → check target, args and
 * ownership → execute → audit the outcome → respond. Every request leaves audit records, each
 * written from its {@link RequestCtx}; every refusal is counted against the refusal rate
 * ({@link admitRefusal}) and recorded within it ({@link recordRefusal}), most through
 * {@link refuse}; nothing is answered before its records are committed.
 */
export class Pipeline {
  readonly admission: Admission;
  private readonly answers: AnswerBudget;
  /** Whether a decision's grant still holds, asked before an op's effect (execute.ts). */
  private readonly lapsed: Lapsed;
  /**
   * Sessions whose latest request waits before step 6 (behind an earlier one of its session, on
   * its sliced hash, on an authorizer's promise): what settles once it has passed step 6 (its
   * dedupe claim, its limits, its handler begun) or was refused before. A later request of the
   * session waits for it, so a session's requests reach dedupe, the rate and their handlers in the
   * order they arrived, however many waits each has before step 6.
   */
  private readonly waiting = new Map<string, Promise<void>>();

  constructor(private readonly deps: PipelineDeps) {
    this.admission = deps.admission;
    this.answers = deps.answers ?? AnswerBudget.forWriteBuffer(64 * 1024 * 1024);
    // Resolved once: the kernel's enforcer, else the authorizer's own (a pipeline built without the kernel), else none.
    const a = deps.authorizer;
    this.lapsed = deps.lapsed ?? (a.lapsed ? (g, what) => a.lapsed?.(g, what) : () => undefined);
  }

  /**
   * The one way a request is refused: its record, then its answer. The record keeps the intent's
   * hash, op and target, its bytes only when small (refusals cost the refused nothing, so they
   * must not cost the disk much: no bulk bytes), and is written within the refusal rate only;
   * beyond it the refusal is counted into one aggregate record (see {@link flushSuppressed}).
   * Counting it ({@link admitRefusal}) may end a flooding session.
   */
  private async refuse(ctx: RequestCtx, r: Refusal): Promise<Response> {
    if (ctx.decodedItems > 0 && PRE_EXECUTION.has(r.errorClass)) this.chargeRefusedDecode(ctx, ctx.decodedItems, true);
    const admitted = this.admitRefusal(ctx, r);
    if (admitted) await this.recordRefusal(ctx, r);
    return this.answered(ctx, failure(ctx, r));
  }

  /**
   * A refused request's intent was decoded for nothing: its `items` count REFUSED_DECODE_WEIGHT
   * times in all ({@link owedDecoding}). When the pipeline decoded it (`atStep3`), a large intent's
   * were counted once already ({@link decoded}), a small one's not; an intent decoded only for a
   * refusal's record (before step 3) was counted nowhere.
   */
  private chargeRefusedDecode(ctx: RequestCtx, items: number, atStep3: boolean): void {
    const counted = atStep3 && ctx.req.intent.length >= OWED_INTENT_BYTES ? 1 : 0;
    this.deps.refusals?.decodedItems(ctx.session.persona, items * (REFUSED_DECODE_WEIGHT - counted));
  }

  /**
   * Whether the refusal rate lets this refusal have its own record; if not, it is counted for
   * the aggregate record, and a session flooding past the bound is ended.
   */
  private admitRefusal(ctx: RequestCtx, r: Refusal): boolean {
    const refusals = this.deps.refusals;
    const s = ctx.session;
    if (!refusals || refusals.admit(s.id, s.persona, r.errorClass, ctx.rec.op, ctx.rec.target)) return true;
    // Counted, answered at once, recorded soon: not at the next tick, which a kill may never reach.
    this.suppressedTimer ??= setTimeout(this.flushSuppressedSoon, SUPPRESSED_FLUSH_MS).unref();
    if (refusals.flooding(s.id)) s.expel?.("REFUSAL_FLOOD", "too many refused requests on this session", "RESOURCE");
    return false;
  }

  /** {@link refuse}'s record, within the refusal rate: the commit to wait for. */
  private recordRefusal(ctx: RequestCtx, r: Refusal): Promise<void> {
    const intent = ctx.rec.intent;
    const entry = requestEntry(ctx, "refused");
    if (intent && intent.length > (this.deps.refusals?.intentMaxBytes ?? 1024)) entry.intent = null;
    entry.status = "FAILURE";
    entry.errorClass = r.errorClass;
    entry.message = boundedMessage(r.audited ?? r.message);
    entry.durationUs = elapsedUs(ctx);
    return this.deps.audit.appendRow(entry);
  }

  /** Armed by the first refusal counted since the last flush ({@link SUPPRESSED_FLUSH_MS}). */
  private suppressedTimer: NodeJS.Timeout | undefined;
  private readonly flushSuppressedSoon = (): void => {
    this.suppressedTimer = undefined;
    this.flushSuppressed();
  };

  /**
   * Writes one aggregate record per session for the refusals over the rate since the last call:
   * {@link SUPPRESSED_FLUSH_MS} after the first of them, the kernel's tick, or its stop.
   */
  flushSuppressed(): void {
    if (this.suppressedTimer !== undefined) clearTimeout(this.suppressedTimer);
    this.suppressedTimer = undefined;
    for (const x of this.deps.refusals?.take() ?? []) {
      this.deps.audit.append(suppressedRefusalsRecord(x)).catch(() => {});
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
    const started = performance.now();
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
    this.deps.metrics?.requests.answered(ctx.op, r.status, r.error, (performance.now() - ctx.started) / 1000);
    return r;
  }

  /**
   * The session's later requests wait from now until the returned release is called (this
   * request has passed step 6, or ended before it). Released by {@link pass}.
   */
  private holdSession(session: string): () => void {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    this.waiting.set(session, gate);
    return () => {
      // Still the latest: no request waits on it, so the session has none waiting any more.
      if (this.waiting.get(session) === gate) this.waiting.delete(session);
      release();
    };
  }

  /** The request is past step 6 (or ended before it): its session's next request may go on. */
  private pass(ctx: RequestCtx): void {
    const release = ctx.release;
    if (release === undefined) return;
    ctx.release = undefined;
    release();
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
    const early = this.admission.request(s) ?? checkEnvelope(s, req) ?? this.owedDecoding(ctx);
    if (early) return this.refuseUndecoded(ctx, early);

    // 3. the intent: canonical bytes, valid grammar; hashed exactly as sent.
    const intent = req.intent;
    const before = this.waiting.size === 0 ? undefined : this.waiting.get(s.id);
    if (before === undefined && intent.length <= HASH_SLICE) return this.decode(ctx, sha256(intent));
    // It waits before step 6: behind an earlier request of its session, or for its own hash, a
    // large intent's a slice per event-loop turn (other sessions' requests run meanwhile instead
    // of waiting out the whole body: a 16 MiB intent is ~10 ms of hashing here). Its session's
    // later requests wait until it has passed step 6 (an upload's chunks must keep their order, PROTOCOL §9.7).
    ctx.release = this.holdSession(s.id);
    const hash = () => (intent.length > HASH_SLICE ? sha256InSlices(intent) : sha256(intent));
    const h = before === undefined ? sha256InSlices(intent) : before.then(hash);
    return h.then(
      (x) => {
        try {
          return this.decode(ctx, x);
        } finally {
          // Past step 6 or refused, unless its decision comes later: decode took the release then.
          this.pass(ctx);
        }
      },
      (e: unknown) => {
        this.pass(ctx);
        throw e;
      },
    );
  }

  /**
   * A large intent (at least {@link OWED_INTENT_BYTES}) of a persona tree whose requests had the
   * kernel decode more items than {@link DECODED_ITEMS_PER_SECOND} allows lately (refused ones
   * counting {@link REFUSED_DECODE_WEIGHT} times) is refused before it is decoded: RESOURCE,
   * retryable once the allowance has refilled. Small intents never wait, nor touch the bucket.
   */
  private owedDecoding(ctx: RequestCtx): Refusal | undefined {
    if (ctx.req.intent.length < OWED_INTENT_BYTES || !this.deps.refusals?.owesDecoding(ctx.session.persona)) return undefined;
    return {
      errorClass: "RESOURCE",
      message: `requests of this persona's tree had the kernel decode more than ${DECODED_ITEMS_PER_SECOND} intent items a second lately (a refused request's counting ${REFUSED_DECODE_WEIGHT} times): intents of ${OWED_INTENT_BYTES} bytes or more wait; retry later`,
    };
  }

  /**
   * A refusal before step 3: the record's intent columns from bytes the pipeline did not decode,
   * only when the refusal rate lets it have a record. One over the rate is counted and answered
   * without hashing or decoding its intent (up to a frame's bytes) for a record never written.
   * Its op and target cost a whole decode, charged as a refused request's ({@link owedDecoding});
   * a large intent's are read only while its tree owes no decoding, else the record has the hash
   * and no names (an intent refused for the debt is never decoded).
   */
  private async refuseUndecoded(ctx: RequestCtx, r: Refusal): Promise<Response> {
    if (this.admitRefusal(ctx, r)) {
      const bytes = ctx.req.intent;
      const columns = recordIntentColumns(ctx.rec, bytes);
      if (columns) await columns;
      const persona = ctx.session.persona;
      if (bytes.length < OWED_INTENT_BYTES || !this.deps.refusals?.owesDecoding(persona))
        this.chargeRefusedDecode(ctx, intentNames(ctx.rec, bytes), false);
      await this.recordRefusal(ctx, r);
    }
    return this.answered(ctx, failure(ctx, r));
  }

  /**
   * What the intent's decoding read: a large intent's items are charged to its tree at once,
   * allowed or not ({@link owedDecoding}); a small one's (bench.noop's) touch no bucket.
   */
  private decoded(ctx: RequestCtx): void {
    ctx.decodedItems = lastDecodedItems();
    if (ctx.req.intent.length >= OWED_INTENT_BYTES) this.deps.refusals?.decodedItems(ctx.session.persona, ctx.decodedItems);
  }

  /** Steps 3 (the hash known) to 5. */
  private decode(ctx: RequestCtx, hash: Buffer): Promise<Response> {
    const req = ctx.req;
    const rec = ctx.rec;
    ctx.hash = hash;
    rec.intent = req.intent;
    rec.intentHash = hash;
    try {
      // The target its grammar check parses goes to ctx.target, for step 9.
      ctx.intent = decodeIntent(req.intent, DEFAULT_LIMITS, ctx);
    } catch (e) {
      this.decoded(ctx);
      return this.refuse(ctx, { errorClass: "SEMANTIC", message: (e as Error).message });
    }
    this.decoded(ctx);
    const intent = ctx.intent;
    rec.op = intent.op;
    rec.target = intent.target;
    // 4. an op the kernel does not have is SEMANTIC whatever the token (PROTOCOL §10.1): the class
    // must not depend on whether a grant happens to cover the name. Op names are public (system.describe).
    const decl = this.deps.router.get(intent.op);
    ctx.op = decl ? intent.op : "unknown";
    if (!decl) return this.refuse(ctx, { errorClass: "SEMANTIC", message: `unknown op ${intent.op} (see system.describe)` });
    ctx.decl = decl;

    // A request naming only handles whose token families are over their `rate` would be refused
    // RESOURCE whichever allowed it: refused before a check that may cost far more than the
    // request (a token of hundreds of caveat pairs, a target nothing cached), as its refusals,
    // which draw on the rate too (admit), do not stop a persona asking.
    const spent = this.rateSpent(ctx);
    if (spent) return this.refuse(ctx, { errorClass: "RESOURCE", message: rateRefusal(spent).message });

    // 5. capabilities and authorization, before dedupe (PROTOCOL §9.1): a request that could not
    // run learns nothing from the record — not an answer, not even that its ids were used.
    const decision = stage(ctx.trace, "kpip.authorize", this.authorize, ctx);
    if (!isThenable(decision)) return this.admit(ctx, decision);
    // A decision that comes later: the session's later requests wait until this one has passed
    // step 6, or a later request with a decision at hand would overtake it. The release is this
    // branch's to call (a request that already held the session hands it over).
    const release = ctx.release ?? this.holdSession(ctx.session.id);
    ctx.release = undefined;
    return Promise.resolve(decision).then(
      (d) => {
        try {
          return this.admit(ctx, d);
        } finally {
          release();
        }
      },
      (e: unknown) => {
        release();
        throw e;
      },
    );
  }

  /**
   * The grant of a handle the request names when every capability it names is a bound handle
   * whose token family has no request left under its `rate`; else undefined (an inline token, a
   * handle without a rate or with room: the authorizer decides). A request names one handle as a rule.
   */
  private rateSpent(ctx: RequestCtx): Grant | undefined {
    const handles = ctx.session.handles;
    let spent: Grant | undefined;
    for (const c of ctx.req.caps) {
      const b = typeof c === "number" ? handles?.get(c) : undefined;
      if (b === undefined || !this.deps.ledger.rateSpent(b.grant)) return undefined;
      spent ??= b.grant;
    }
    return spent;
  }

  // The stages run through `stage`: functions made once per pipeline, given the request's ctx.

  private readonly authorize = (ctx: RequestCtx): Decision | Promise<Decision> => {
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
  };

  private readonly execute = (ctx: RequestCtx): OpResult | Promise<OpResult> =>
    execute(ctx, this.deps.dedupe, this.answers, this.lapsed, this.stopping, this.headSeq);

  /** The log's newest record, appended or not: an effect's outcome record comes after it. */
  private readonly headSeq = (): number => this.deps.audit.headSeq;

  /** Set by the kernel's stop as it ends the sessions left after the drain ({@link stopEffects}). */
  private effectsStopped = false;
  private readonly stopping = (): boolean => this.effectsStopped;

  /**
   * From now on no request's effect commits (`atomically` refuses RESOURCE): the kernel's stop
   * calls it as it ends the sessions whose requests outlasted the drain. Their handlers may still
   * be awaiting (a body's file, an upload's sync); one that then committed did so while the stop
   * closed the audit log, an effect with no outcome record, after the kernel.stop record.
   */
  stopEffects(): void {
    this.effectsStopped = true;
  }

  private readonly recordIntent = (ctx: RequestCtx): Promise<void> => {
    const row = requestEntry(ctx, "intent");
    const committed = this.deps.audit.appendRow(row);
    // Chained synchronously: an answer committed with the effect names it (audit/recover-outcomes.ts).
    ctx.intentSeq = row.seq;
    return committed;
  };

  /** Step 6 (the decision known), then the run. */
  private admit(ctx: RequestCtx, decision: Decision): Promise<Response> {
    const { session: s, req } = ctx;
    // Every record of the request names the capabilities the authorizer named, refused or not.
    const ids = decision.capIds;
    ctx.rec.caps = ids.length === 1 ? (ids[0] as string) : ids.join(",");
    if (!decision.allowed) {
      // A capability that holds but does not grant this draws on its family's rate as if it did.
      const g = decision.grant;
      if (g !== undefined && decision.rateKey !== undefined && !this.deps.ledger.spendRefused(g, decision.rateKey))
        return this.refuse(ctx, { errorClass: "RESOURCE", message: rateRefusal(g).message });
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
    // A running request's record is never evicted (a duplicate would run its effect again): with
    // the table's running bound reached, in all or for this tree, the request does not begin.
    const tree = s.tree ?? s.persona;
    if (!dedupe.admits(tree, s.persona))
      return this.refuse(ctx, { errorClass: "RESOURCE", message: dedupe.refusal(tree, s.persona) });
    const pending = this.run(ctx, tag);
    // Registered before any duplicate can arrive: run() answers only after a commit, never synchronously.
    ctx.dslot = dedupe.running(key, tag, pending, now, tree);
    // A run that fails (a record that did not commit) is no answer: a retry with these ids runs
    // again. The run forgets itself ({@link abandon}); one that failed before this point left a mark.
    if (ctx.pending === FAILED_EARLY) dedupe.abandoned(key, pending);
    else ctx.pending = pending;
    return pending;
  }

  /** A retry answered from the record: nothing runs again, but the retry itself is on the record. */
  private async replay(ctx: RequestCtx, recorded: Response | Promise<Response>): Promise<Response> {
    const response = await recorded;
    const entry = requestEntry(ctx, "replay");
    entry.intent = null;
    entry.status = response.status;
    entry.errorClass = response.error ?? null;
    entry.message = "answered from the record of the first attempt";
    entry.durationUs = elapsedUs(ctx);
    await this.deps.audit.appendRow(entry);
    return this.answered(ctx, response);
  }

  /**
   * Step 7, limits on requests themselves (concurrent, rate) from the authorizing grant, then the
   * rest of an authorized, new request (its ctx has decl, decision, key and dhash). `tag`: what
   * dedupe remembers the request by.
   */
  private run(ctx: RequestCtx, tag: DedupeTag): Promise<Response> {
    const decision = ctx.decision as NonNullable<RequestCtx["decision"]>;
    try {
      const control = (ctx.decl as NonNullable<RequestCtx["decl"]>).control === true;
      ctx.pastLimit = this.deps.ledger.admit(ctx.session.persona, decision.grant, decision.rateKey, control);
    } catch (e) {
      return this.refuseLimited(ctx, tag, e);
    }
    return this.runAdmitted(ctx, tag);
  }

  /** A request over its grant's limits: refused on the record, and settled with dedupe as any run. */
  private async refuseLimited(ctx: RequestCtx, tag: DedupeTag, e: unknown): Promise<Response> {
    let r: Refusal;
    try {
      r = toRefusal(e, this.deps.log, ctx, this.deps.peerLog, this.deps.space);
      // Awaited even when the record was suppressed (undefined): the run must not settle before
      // admit() has registered it, or its forget() finds nothing and the settled run stays
      // remembered, answering every retry with this refusal for the dedupe window.
      await (this.admitRefusal(ctx, r) ? this.recordRefusal(ctx, r) : undefined);
    } catch (err) {
      this.abandon(ctx);
      throw err;
    }
    return this.settle(ctx, tag, failure(ctx, r));
  }

  /**
   * Steps 8–11 of a request within its limits (it leaves them once executed), then what dedupe
   * keeps of its answer. The request's one async function: its only waits are the audit commits
   * (and a handler that returns a promise).
   */
  private async runAdmitted(ctx: RequestCtx, tag: DedupeTag): Promise<Response> {
    const trace = ctx.trace;
    const effects = (ctx.decl as NonNullable<RequestCtx["decl"]>).effects;
    let response: Response;
    try {
      let result: OpResult | undefined;
      let refusal: Refusal | undefined;
      /** What failed after the op's effect committed with its answer (the outcome record says so). */
      let failedAfter: string | undefined;
      try {
        // 8. an op that changes state has its intent recorded, and committed, before it runs.
        if (effects) await stage(trace, "kpip.audit.intent", this.recordIntent, ctx);
        // 9–10. check and execute; an effect made `atomically` commits with its dedupe record.
        try {
          const r = stage(trace, "kpip.execute", this.execute, ctx);
          const v = isThenable(r) ? await r : r;
          // Held until the request is answered: a burst of large answers cannot pile up in memory.
          holdResult(ctx, v, this.answers);
          result = v;
        } catch (e) {
          const a = ctx.atomic;
          // The effect and the answer recorded with it committed: what failed after it (a
          // clean-up, a fan-out) is logged, never the answer — a retry gets that record.
          if (a?.committed) {
            this.afterCommitFailed(ctx, e);
            // As a refusal would name it: an OpError's own message, never a bug's text (it is logged).
            failedAfter = e instanceof OpError ? e.message : `${ctx.op} failed inside the kernel`;
            result = a.result;
          } else refusal = toRefusal(e, this.deps.log, ctx, this.deps.peerLog, this.deps.space);
        }
      } finally {
        this.deps.ledger.leave(ctx.session.persona, ctx.pastLimit);
      }
      // 11. audit the outcome, then answer.
      response = outcomeAnswer(ctx, result, refusal);
      const outcome = this.recordOutcome(ctx, response, result, refusal, failedAfter);
      // Chained synchronously: the head is this record. A revocation notes it once committed, never
      // a number a failed commit (or a kill before it) leaves to another record.
      const seq = this.deps.audit.headSeq;
      await stage(trace, "kpip.audit.outcome", passOn, outcome);
      try {
        if (result?.revoked?.length) this.deps.revocationRecorded?.(result.revoked, seq);
      } catch (e) {
        this.afterCommitFailed(ctx, e);
      }
    } catch (e) {
      this.abandon(ctx);
      throw e;
    } finally {
      ctx.lease?.release();
      // The handler has settled and both records are encoded (each a copy): the body is done with.
      if ((ctx.decl as NonNullable<RequestCtx["decl"]>).releasesArgs) this.giveBack(ctx);
    }
    return this.settle(ctx, tag, response);
  }

  /**
   * Work after an op's effect committed failed: logged (within the persona's log budget), and
   * the answer stays the committed one. What such work leaves behind is caught up later (a body
   * nothing names is removed at the next start's sweep).
   */
  private afterCommitFailed(ctx: RequestCtx, e: unknown): void {
    const line = { err: e, op: ctx.op, traceparent: ctx.req.context.traceparent ?? undefined };
    const msg = "work after a committed effect failed; the committed answer stands";
    if (this.deps.peerLog) this.deps.peerLog.write(ctx.session.persona, "error", line, msg);
    else this.deps.log.error(line, msg);
  }

  /** The body's memory back to the pool; a failure there costs the memory, never the answer. */
  private giveBack(ctx: RequestCtx): void {
    try {
      this.deps.bodies?.giveBack(ctx.req.intent);
    } catch (e) {
      this.deps.log.warn({ err: e, op: ctx.op }, "a request body's memory could not be given back to the pool");
    }
  }

  /**
   * The outcome's record. A read-only op leaves one "complete" record (intent and outcome, one
   * commit); an op with effects an "outcome" record that refers to its intent record by request id
   * and hash, stored with its answer, so a retry after a kernel restart gets it instead of a second run.
   */
  private recordOutcome(
    ctx: RequestCtx,
    response: Response,
    result: OpResult | undefined,
    refusal: Refusal | undefined,
    /** The handler's failure after its effect committed (the record says so; the status is the effect's). */
    failedAfter?: string,
  ): Promise<void> {
    const { audit, dedupe } = this.deps;
    const effects = (ctx.decl as NonNullable<RequestCtx["decl"]>).effects;
    // An answer recorded with its effect stays the record: the effect happened, whatever follows.
    const keep = effects && ctx.atomic?.recorded !== true && !(refusal && RETRYABLE_CLASSES.has(refusal.errorClass));
    const entry = requestEntry(ctx, effects ? "outcome" : "complete");
    if (effects) entry.intent = null;
    entry.status = response.status;
    entry.errorClass = refusal?.errorClass ?? null;
    entry.message = refusal
      ? boundedMessage(refusal.message)
      : failedAfter !== undefined
        ? boundedMessage(`${AFTER_COMMIT}${failedAfter}`)
        : null;
    entry.durationUs = elapsedUs(ctx);
    // The detail committed with the effect's answer, when this is its result: encoded once.
    const a = ctx.atomic;
    entry.detail = a?.detail !== undefined && result === a.result ? a.detail : statusDetail(response.status, result?.audit);
    const committed = audit.appendRow(
      entry,
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
    const space = this.deps.space;
    if (!effects || a?.recorded !== true || !space) return committed;
    // The effect and its answer are committed (a retry gets that answer): its outcome record,
    // refused room, is written once there is — not left off the record (kernel/storage-space.ts).
    return committed.catch((e: unknown) => {
      space.lateOutcome(entry, e);
      throw e;
    });
  }

  /** A run's answer, final: what dedupe keeps of it, then the answer. */
  private settle(ctx: RequestCtx, tag: DedupeTag, response: Response): Response {
    const p = ctx.pending === FAILED_EARLY ? undefined : ctx.pending;
    // A transient failure is not an answer to keep: the client's retry must run again. Only this
    // attempt's record is forgotten, never another's registered under the same ids since.
    if (response.error !== undefined && RETRYABLE_CLASSES.has(response.error)) {
      if (p !== undefined) this.deps.dedupe.forget(ctx.key as string, p, ctx.dslot);
    } else this.deps.dedupe.settled(ctx.key as string, tag, Date.now(), ctx.dslot, p);
    return this.answered(ctx, response);
  }

  /** A run failed (a record did not commit): it is no answer, so dedupe forgets it and a retry runs again. */
  private abandon(ctx: RequestCtx): void {
    const p = ctx.pending;
    // Not registered yet (failed before its first wait): admit drops the registration it makes next.
    if (p === undefined) ctx.pending = FAILED_EARLY;
    else if (p !== FAILED_EARLY) this.deps.dedupe.abandoned(ctx.key as string, p);
  }
}

/** How an outcome record begins whose handler failed after its effect committed. */
export const AFTER_COMMIT = "the effect committed with this answer; the handler then failed: ";

/** The outcome's stage: its commit, already under way, is what the span times. */
const passOn = <T>(x: T): T => x;
