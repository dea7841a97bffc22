import type { Grant } from "@kpip/protocol";
import {
  type CborMap,
  decodeIntent,
  type ErrorClass,
  encodeCanonical,
  type Intent,
  IntentError,
  intentHash,
  parseTarget,
  RETRYABLE_CLASSES,
  type Request,
  type Response,
} from "@kpip/protocol";
import { statusDetail } from "../audit/detail.js";
import type { AuditEntry, AuditLog } from "../audit/log.js";
import { type RefusalLimiter, suppressedMessage } from "../audit/refusals.js";
import type { Authorizer, Decision } from "../auth/authorizer.js";
import type { HandleTable } from "../auth/handles.js";
import type { Logger } from "../log.js";
import type { KernelMetrics } from "../metrics/metrics.js";
import { checkArgs, type Router } from "../primitives/router.js";
import { type OpContext, OpError, type OpResult, type PrimitiveDeclaration } from "../primitives/types.js";
import type { ResourceLedger } from "../resources/ledger.js";
import { AnswerBudget } from "./answer-budget.js";
import { type DedupeCache, dedupeHash } from "./dedupe.js";
import { endRequestSpan, type RequestTrace, stage, startRequestSpan } from "./tracing.js";

/** What the pipeline needs to know about the session a request arrived on. */
export interface SessionView {
  readonly id: string;
  readonly persona: string;
  readonly version: number;
  /** Hex of the client instance id from HELLO: with the request id it keys dedupe. */
  readonly instance: string;
  /** Aborts when the session ends. */
  readonly signal: AbortSignal;
  /** Tokens bound on this session. */
  readonly handles: HandleTable;
  /** Ends the session with a fatal ERROR (a refusal flood). */
  expel?(code: string, message: string, errorClass: ErrorClass): void;
  /** The negotiated maximum body of the session. */
  readonly maxBody: number;
}

/** What one request carries through the stages: its trace, and its op for metric labels (unknown ops grouped). */
interface RequestState {
  trace: RequestTrace;
  op: string;
}

interface Refusal {
  errorClass: ErrorClass;
  message: string;
}

/**
 * The one straight path a request takes (PROTOCOL §9; docs/architecture.md "One request, one path"):
 * validate version and structure → decode the intent → resolve capabilities and authorize →
 * dedupe → audit the intent → route → execute → audit the outcome → respond.
 * Every request leaves audit records; nothing is answered before its records are committed.
 */
export class Pipeline {
  constructor(
    private readonly ledger: ResourceLedger,
    private readonly router: Router,
    private readonly authorizer: Authorizer,
    private readonly audit: AuditLog,
    private readonly dedupe: DedupeCache,
    private readonly log: Logger,
    private readonly metrics?: KernelMetrics,
    private readonly refusals?: RefusalLimiter,
    // The default suits the default 64 MiB write buffer; the kernel passes its own setting.
    private readonly answers = AnswerBudget.forWriteBuffer(64 * 1024 * 1024),
  ) {}

  /**
   * A refusal's record: the intent's hash, op and target, its bytes only when small (refusals cost
   * the refused nothing, so they must not cost the disk much: no bulk bytes), and within the
   * refusal rate only; beyond it the refusal is counted into one aggregate record (see
   * {@link flushSuppressed}).
   */
  async refuse(s: SessionView, entry: AuditEntry): Promise<void> {
    if (entry.intent && entry.intent.length > (this.refusals?.intentMaxBytes ?? 1024)) entry.intent = null;
    if (!this.refusals || this.refusals.admit(s.id, s.persona, entry.errorClass ?? "-")) {
      await this.audit.append(entry);
      return;
    }
    if (this.refusals.flooding(s.id)) {
      s.expel?.("REFUSAL_FLOOD", "too many refused requests on this session", "RESOURCE");
    }
  }

  /** Writes one aggregate record per session for the refusals over the rate since the last call (the kernel's tick). */
  flushSuppressed(): void {
    for (const x of this.refusals?.take() ?? []) {
      this.audit
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
    this.refusals?.forget(id);
  }

  async handle(s: SessionView, req: Request): Promise<Response> {
    const started = process.hrtime.bigint();
    const t = startRequestSpan(req.context.traceparent, {
      "kpip.persona": s.persona,
      "kpip.session": s.id,
      "kpip.request_id": req.id,
    });
    // Per-request state travels as an argument: WeakMaps keyed by request cost 2–4 µs a
    // request in ephemeron GC work.
    const st: RequestState = { trace: t, op: "-" };
    const r = await this.process(s, req, started, st);
    const op = st.op;
    endRequestSpan(t, op, r.status, r.error);
    if (this.metrics) {
      this.metrics.requests.inc({ op, status: r.status, error_class: r.error ?? "" });
      this.metrics.latency.observe({ op }, Number(process.hrtime.bigint() - started) / 1e9);
    }
    return r;
  }

  private async process(s: SessionView, req: Request, started: bigint, st: RequestState): Promise<Response> {
    // The context the persona claimed goes into every record of the request (PROTOCOL §6.7).
    const base = {
      session: s.id,
      persona: s.persona,
      requestId: req.id,
      traceparent: req.context.traceparent ?? null,
      execution: req.context.execution ?? null,
      domain: req.context.domain ?? null,
    };

    // 1. version and identity: a request may only speak for the attested persona.
    const early = this.checkEnvelope(s, req);
    if (early) {
      await this.refuse(s, { ...base, phase: "refused", ...intentColumns(req.intent), ...failureCols(early, started) });
      return failure(s, req, early);
    }

    // 2. the intent: canonical bytes, valid grammar; hashed exactly as sent.
    const hash = intentHash(req.intent);
    let intent: Intent;
    try {
      intent = decodeIntent(req.intent);
    } catch (e) {
      const r = { errorClass: "SEMANTIC" as const, message: (e as Error).message };
      await this.refuse(s, { ...base, phase: "refused", intent: req.intent, intentHash: hash, ...failureCols(r, started) });
      return failure(s, req, r);
    }
    const rec = { ...base, op: intent.op, target: intent.target, intentHash: hash, intent: req.intent };
    const decl = this.router.get(intent.op);
    st.op = decl ? intent.op : "unknown";
    // 3. an op the kernel does not have is SEMANTIC whatever the token (PROTOCOL §10.1): the class
    // must not depend on whether a grant happens to cover the name. Op names are public (system.describe).
    if (!decl) {
      const r = { errorClass: "SEMANTIC" as const, message: `unknown op ${intent.op} (see system.describe)` };
      await this.refuse(s, { ...rec, phase: "refused", ...failureCols(r, started) });
      return failure(s, req, r);
    }

    // 4. capabilities and authorization, before dedupe (PROTOCOL §9.1): a request that could not
    // run learns nothing from the record — not an answer, not even that its ids were used.
    const decision = await stage(st.trace, "kpip.authorize", () =>
      this.authorizer.authorize({
        persona: s.persona,
        session: s.id,
        intent,
        context: req.context,
        caps: req.caps,
        handles: s.handles,
        declaration: decl,
      }),
    );
    const caps = decision.capIds.join(",");
    if (!decision.allowed) {
      await this.refuse(s, { ...rec, phase: "refused", caps, ...failureCols(decision, started) });
      return failure(s, req, decision);
    }

    // 5. dedupe: a retry gets the recorded answer; the same ids with another intent get nothing of it.
    // Keyed by the attested persona too: another persona replaying the same ids gets nothing of it.
    const key = `${s.persona}:${s.instance}:${req.id}`;
    const now = Date.now();
    // Remembered under the authority that allowed it: another capability never gets its answer.
    const dhash = dedupeHash(hash, decision);
    const prior = this.dedupe.check(key, dhash, now, decl.effects);
    if (prior.kind === "conflict") {
      const r = {
        errorClass: "SEMANTIC" as const,
        message: `request id ${req.id} was already used for a different intent or under another capability: use a new id`,
      };
      await this.refuse(s, { ...rec, phase: "refused", caps, ...failureCols(r, started) });
      return failure(s, req, r);
    }
    if (prior.kind === "answer") {
      // Nothing runs again, but the retry itself is on the record.
      const response = await prior.response;
      await this.audit.append({
        ...rec,
        intent: null,
        phase: "replay",
        caps,
        status: response.status,
        errorClass: response.error ?? null,
        message: "answered from the record of the first attempt",
        durationUs: elapsedUs(started),
      });
      return response;
    }
    const lease = this.answers.lease(s.id);
    const pending = this.run(s, req, intent, decl, decision, rec, started, key, dhash, st.trace, lease.hold).finally(
      lease.release,
    );
    this.dedupe.running(key, dhash, pending, now);
    const response = await pending;
    // A transient failure is not an answer to keep: the client's retry must run again.
    if (response.error !== undefined && RETRYABLE_CLASSES.has(response.error)) this.dedupe.forget(key);
    else this.dedupe.settled(key, dhash, Date.now());
    return response;
  }

  private checkEnvelope(s: SessionView, req: Request): Refusal | undefined {
    if (req.version !== s.version) {
      return {
        errorClass: "PROTOCOL",
        message: `request version ${req.version} differs from the session's version ${s.version}`,
      };
    }
    if (req.persona !== s.persona || req.context.persona !== s.persona) {
      return {
        errorClass: "AUTH",
        message: `this session is attested as ${s.persona}; it cannot act as ${req.persona !== s.persona ? req.persona : req.context.persona}`,
      };
    }
    return undefined;
  }

  private async run(
    s: SessionView,
    req: Request,
    intent: Intent,
    decl: PrimitiveDeclaration,
    decision: Extract<Decision, { allowed: true }>,
    rec: Record<string, unknown> & { session: string; persona: string },
    started: bigint,
    key: string,
    /** The request's dedupe hash: its intent bound to its authority (dedupeHash). */
    dhash: Buffer,
    tr: RequestTrace,
    holdAnswerBytes: (bytes: number) => void,
  ): Promise<Response> {
    const caps = decision.capIds.join(",");
    // 6. limits on requests themselves (concurrent, rate) from the authorizing grant.
    let release: () => void;
    try {
      release = this.ledger.admit(s.persona, decision.grant, decision.rateKey);
    } catch (e) {
      const r = toRefusal(e, this.log, intent.op);
      await this.refuse(s, { ...rec, phase: "refused", caps, ...failureCols(r, started) });
      return failure(s, req, r);
    }

    // 7. an op that changes state has its intent recorded, and committed, before it runs.
    const effects = decl.effects;
    if (effects) await stage(tr, "kpip.audit.intent", () => this.audit.append({ ...rec, phase: "intent", caps }));

    // 8. route and execute; an effect made `atomically` commits with its dedupe record.
    let result: OpResult | undefined;
    let refusal: Refusal | undefined;
    let recorded = false;
    try {
      const atomically = <T extends OpResult>(effect: () => T): T => {
        const v = this.dedupe.commitWith(key, dhash, effect, (r) => answer(s, req, r));
        recorded = this.dedupe.durable;
        return v;
      };
      result = await stage(tr, "kpip.execute", () =>
        this.execute(s, req, intent, decl, decision.grant, atomically, holdAnswerBytes),
      );
    } catch (e) {
      refusal = toRefusal(e, this.log, intent.op, req.context.traceparent);
    } finally {
      release();
    }

    // 9. audit the outcome, then answer. The response of an op with effects is stored with
    // its outcome record, so a retry after a kernel restart gets it instead of a second run.
    let response: Response;
    if (refusal) response = failure(s, req, refusal);
    else response = answer(s, req, result as OpResult);
    // An answer recorded with its effect stays the record: the effect happened, whatever follows.
    const keep = effects && !recorded && !(refusal && RETRYABLE_CLASSES.has(refusal.errorClass));
    // A read-only op leaves one "complete" record (intent and outcome, one commit); an op with
    // effects an "outcome" record that refers to its intent record by request id and hash.
    const outcome = this.audit.append(
      {
        ...rec,
        intent: effects ? null : req.intent,
        phase: effects ? "outcome" : "complete",
        caps,
        status: response.status,
        errorClass: refusal?.errorClass ?? null,
        message: refusal?.message ?? null,
        durationUs: elapsedUs(started),
        detail: statusDetail(response.status, result?.audit),
      },
      keep
        ? {
            key,
            hash: dhash,
            response: encodeCanonical(response as unknown as CborMap),
            expires: Date.now() + this.dedupe.windowMs,
          }
        : undefined,
    );
    // Chained synchronously: the head is this record (a revocation notes where it is on the record).
    result?.recorded?.(this.audit.headSeq);
    await stage(tr, "kpip.audit.outcome", () => outcome);
    return response;
  }

  private async execute(
    s: SessionView,
    req: Request,
    intent: Intent,
    decl: PrimitiveDeclaration,
    grant: Grant | undefined,
    atomically: OpContext["atomically"],
    holdAnswerBytes: OpContext["holdAnswerBytes"],
  ): Promise<OpResult> {
    const target = parseTarget(intent.target);
    if (typeof target === "string") throw new OpError("SEMANTIC", target);
    if (!decl.targets.includes(target.scheme)) {
      throw new OpError("SEMANTIC", `${intent.op} takes a ${decl.targets.map((t) => `${t}://`).join(" or ")} target`);
    }
    if (target.scheme === "obj" && req.context.workspace !== undefined && req.context.workspace !== target.segments[0]) {
      throw new OpError("PERMISSION", `the request's workspace ${req.context.workspace} does not contain ${intent.target}`);
    }
    checkArgs(decl, intent.args);
    const deadline = intent.constraints?.deadline;
    if (deadline !== undefined && deadline <= Date.now()) throw new OpError("RESOURCE", "deadline exceeded before execution");
    const signal =
      deadline === undefined ? s.signal : AbortSignal.any([s.signal, AbortSignal.timeout(Math.max(0, deadline - Date.now()))]);
    return await decl.handler({
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
      grant,
      handles: s.handles,
      atomically,
      maxBody: s.maxBody,
      holdAnswerBytes,
    });
  }
}

function toRefusal(e: unknown, log: Logger, op: string, traceparent?: string | null): Refusal {
  if (e instanceof OpError) return { errorClass: e.errorClass, message: e.message };
  if (e instanceof IntentError) return { errorClass: "SEMANTIC", message: e.message };
  log.error({ err: e, op, traceparent: traceparent ?? undefined }, "primitive failed");
  return { errorClass: "INTERNAL", message: `${op} failed inside the kernel` };
}

function answer(s: SessionView, req: Request, r: OpResult): Response {
  const response: Response = { version: s.version, id: req.id, status: r.status };
  if (r.payload !== undefined) response.payload = r.payload;
  return response;
}

function failure(s: SessionView, req: Request, r: Refusal): Response {
  return { version: s.version, id: req.id, status: "FAILURE", error: r.errorClass, message: r.message };
}

function failureCols(r: Refusal, started: bigint) {
  return { status: "FAILURE", errorClass: r.errorClass, message: r.message, durationUs: elapsedUs(started) };
}

function elapsedUs(started: bigint): number {
  return Number((process.hrtime.bigint() - started) / 1000n);
}

/**
 * The audit columns for intent bytes refused before the pipeline decoded them: always the bytes
 * and their SHA-256 (what was sent is what is recorded), and the op and target when they decode.
 */
export function intentColumns(bytes: Uint8Array): { intent: Uint8Array; intentHash: Buffer; op?: string; target?: string } {
  const cols: { intent: Uint8Array; intentHash: Buffer; op?: string; target?: string } = {
    intent: bytes,
    intentHash: intentHash(bytes),
  };
  try {
    const i = decodeIntent(bytes);
    cols.op = i.op;
    cols.target = i.target;
  } catch {
    // undecodable: the bytes and hash are the record
  }
  return cols;
}
