import {
  type CborValue,
  decodeIntent,
  type ErrorClass,
  type Intent,
  IntentError,
  intentHash,
  lastDecodedItems,
  type ParsedTarget,
  type Request,
  type Response,
  TokenError,
} from "@kpip/protocol";
import { PENDING_HASH } from "../audit/log.js";
import type { Decision } from "../auth/authorizer.js";
import type { StorageSpace } from "../kernel/storage-space.js";
import type { Logger } from "../log.js";
import { OpError, OpFailure, type OpResult, type PrimitiveDeclaration } from "../primitives/types.js";
import type { HandleTable } from "../session/handles.js";
import type { PeerLogLimiter } from "../session/log-limit.js";
import { HASH_SLICE, sha256InSlices } from "../sliced-hash.js";
import { isStorageFull } from "../store/storage-full.js";
import type { AuditRow } from "../store/types.js";
import type { AnswerLease } from "./answer-budget.js";
import type { RequestTrace } from "./tracing.js";

/** What the pipeline needs to know about the session a request arrived on. */
export interface SessionView {
  readonly id: string;
  readonly persona: string;
  readonly version: number;
  /** Hex of the client instance id from HELLO: with the request id it keys dedupe. */
  readonly instance: string;
  /** The persona tree the session counts in, set at attestation (absent: the persona itself is its tree). */
  readonly tree?: string;
  /** Aborts when the session ends. */
  readonly signal: AbortSignal;
  /** Tokens bound on this session. */
  readonly handles: HandleTable;
  /** Ends the session with a fatal ERROR (a refusal flood). */
  expel?(code: string, message: string, errorClass: ErrorClass): void;
  /** The negotiated maximum body of the session. */
  readonly maxBody: number;
  /** Bytes queued to the peer and not yet read (the answer budget counts them); absent: none known. */
  readonly buffered?: number;
  /** Requests of this session in flight, this one included (admission). */
  readonly inFlight: number;
  /** The session is closing (after GOODBYE): it takes no new request (admission). */
  readonly closing: boolean;
  /** It closes because the kernel is stopping (its drain), not because the peer said GOODBYE. */
  readonly stopping?: boolean;
  /**
   * Why the session's persona may no longer act (removed from the registry, or registered again
   * under another key), set as the kernel ends the session for it: a request of the session still
   * in flight commits no effect after it, whatever token authorized it.
   */
  readonly identityLost?: string;
  /**
   * Why the registration the session attested under no longer stands, asked of the registry now
   * (a change the kernel has not taken in yet: the CLI beside it, before its tick), or undefined.
   * `onlyIfChanged`: asked only when changes were made without the kernel since it last stood.
   */
  registrationLost?(onlyIfChanged?: boolean): string | undefined;
}

/** Why a request is not run: its class and message (the answer), and the record's message when it says more. */
export interface Refusal {
  errorClass: ErrorClass;
  message: string;
  /** The audit record's message, when it differs from the answer's. */
  audited?: string;
  /** An op's FAILURE payload ({@link OpFailure}): answered, never recorded. */
  payload?: CborValue;
}

/**
 * The columns every audit record of one request carries, all present from the start (null until
 * known), so the object keeps one shape as the stages fill it in; the phase and outcome are added per record.
 */
export interface RequestRecord {
  readonly session: string;
  readonly persona: string;
  readonly requestId: number;
  readonly traceparent: string | null;
  readonly execution: string | null;
  readonly domain: string | null;
  op: string | null;
  target: string | null;
  intentHash: Uint8Array | null;
  intent: Uint8Array | null;
  /** The capabilities the authorizer named (a refusal's, before the request was allowed). */
  caps: string | null;
}

/**
 * One audit record of a request: its columns, and its outcome columns null (the intent: the
 * request's, once known), which the caller fills in. Written as one object literal of the whole
 * row, which the log takes as its own ({@link AuditLog.appendRow}: it fills in seq, time, kernel
 * and the chain); no outcome object per record. A spread of the columns (`{ ...ctx.rec, phase }`)
 * went through V8's generic property copy on every record, ~8 % of the kernel's CPU at 256
 * requests in flight.
 */
export function requestEntry(ctx: RequestCtx, phase: AuditRow["phase"]): AuditRow {
  const r = ctx.rec;
  return {
    seq: 0,
    time: 0,
    kernel: "",
    session: r.session,
    persona: r.persona,
    phase,
    requestId: r.requestId,
    op: r.op,
    target: r.target,
    intentHash: r.intentHash,
    intent: r.intent,
    caps: r.caps,
    status: null,
    errorClass: null,
    message: null,
    durationUs: null,
    traceparent: r.traceparent,
    execution: r.execution,
    domain: r.domain,
    measurements: null,
    detail: null,
    prevHash: PENDING_HASH,
    hash: PENDING_HASH,
  };
}

/**
 * One request as it travels the stages: what is known of it so far. Each stage fills in what it
 * learns (the intent, the declaration, the authority, the dedupe key), and every record of the
 * request, refusal or outcome, is written from it. Passed as an argument, never kept in a map:
 * WeakMaps keyed by request cost 2–4 µs a request in ephemeron GC work.
 */
export interface RequestCtx {
  readonly session: SessionView;
  readonly req: Request;
  /** performance.now() at arrival (ms): each record's duration and the latency metric count from here (a number: no BigInts per request). */
  readonly started: number;
  readonly trace: RequestTrace;
  /** The request's audit columns (PROTOCOL §6.7): the claimed context first, then op, target and hash once decoded. */
  readonly rec: RequestRecord;
  /** The op for metric labels: "-" before the intent decodes, "unknown" for an op the kernel does not have. */
  op: string;
  intent?: Intent;
  /** The intent's target as its grammar check parsed it (step 9 uses it: parsed once). */
  target?: ParsedTarget;
  /** The intent's SHA-256 over the bytes as sent. */
  hash?: Buffer;
  /** Data items decoding the intent read (0 until it is decoded): charged to the tree if the request is refused. */
  decodedItems: number;
  decl?: PrimitiveDeclaration;
  /** The authorizer's decision, once it allowed the request. */
  decision?: Extract<Decision, { allowed: true }>;
  /** Dedupe key (persona, client instance, request id) and, for an op with effects, hash (the intent bound to its authority). */
  key?: string;
  dhash?: Buffer;
  /** The request's share of the answers budget, taken when its handler first holds answer bytes. */
  lease?: AnswerLease;
  /** What an effect made `atomically` recorded with its dedupe record (an op with effects only). */
  atomic?: AtomicAnswer;
  /**
   * The run dedupe remembers while it goes on (set once registered), or {@link FAILED_EARLY}: the
   * run failed before it was registered, so its registration is to be dropped at once.
   */
  pending?: Promise<Response> | typeof FAILED_EARLY;
  /**
   * Set while the request waits before step 6 (Pipeline.holdSession): lets its session's later
   * requests go on once it has passed step 6 or ended before it.
   */
  release: (() => void) | undefined;
  /** The dedupe record that remembers the run (-1 before it is registered): settling it needs no second lookup. */
  dslot: number;
  /** The seq of its intent record (an op with effects; 0 before it is appended): kept with an answer committed with its effect. */
  intentSeq: number;
  /** A control request admitted past its grant's `concurrent`, within its persona's allowance (ResourceLedger.admit). */
  pastLimit: boolean;
}

/** {@link RequestCtx.pending} of a run that failed before dedupe registered it. */
export const FAILED_EARLY = 0;

/** The answer recorded with an atomic effect, encoded: sent as it is when the handler returns that result. */
export interface AtomicAnswer {
  /** The effect and its dedupe record committed (in a durable store). */
  recorded: boolean;
  /**
   * The effect committed (in any store): from then on the request's answer is the one it
   * returned, whatever the handler's work after the commit (a clean-up) does.
   */
  committed: boolean;
  result: OpResult | undefined;
  answer: Response | undefined;
  /** The outcome record's detail for `result`, committed with the answer (for a start's recovery of the record). */
  detail: string | undefined;
}

/** A context for a request that has arrived: only its claimed context is known. */
export function requestCtx(session: SessionView, req: Request, started: number, trace: RequestTrace): RequestCtx {
  return {
    session,
    req,
    started,
    trace,
    op: "-",
    // Every field from the start: one shape, and no property store grown as the stages fill them in.
    intent: undefined,
    target: undefined,
    hash: undefined,
    decodedItems: 0,
    decl: undefined,
    decision: undefined,
    key: undefined,
    dhash: undefined,
    lease: undefined,
    atomic: undefined,
    pending: undefined,
    release: undefined,
    dslot: -1,
    intentSeq: 0,
    pastLimit: false,
    rec: {
      session: session.id,
      persona: session.persona,
      requestId: req.id,
      traceparent: req.context.traceparent ?? null,
      execution: req.context.execution ?? null,
      domain: req.context.domain ?? null,
      op: null,
      target: null,
      intentHash: null,
      intent: null,
      caps: null,
    },
  };
}

/**
 * The audit columns of intent bytes not decoded by the pipeline (a refusal before step 4): always
 * the bytes and their SHA-256 (what was sent is what is recorded); the op and target are the
 * caller's to add ({@link intentNames}), after it asked whether the decoding is affordable. A
 * large intent is hashed a slice per turn, as step 3 does: a refusal (a persona past its in-flight
 * limit sending maximum bodies) must not hold every session while it is hashed.
 */
export function recordIntentColumns(rec: RequestRecord, bytes: Uint8Array): void | Promise<void> {
  rec.intent = bytes;
  if (bytes.length > HASH_SLICE) {
    return sha256InSlices(bytes).then((h) => {
      rec.intentHash = h;
    });
  }
  rec.intentHash = intentHash(bytes);
}

/**
 * The op and target of intent bytes, when they decode: the intent is decoded whole (up to
 * `maxItems`), so it returns the items read, for the caller to charge.
 */
export function intentNames(rec: RequestRecord, bytes: Uint8Array): number {
  try {
    const i = decodeIntent(bytes);
    rec.op = i.op;
    rec.target = i.target;
  } catch {
    // undecodable: the bytes and hash are the record
  }
  return lastDecodedItems();
}

/**
 * The refusal a handler's throw becomes: its own class, or INTERNAL (logged) for a bug. A token
 * the request would make that the token format refuses (a chain past its depth, a token past its
 * size) is the request's fault wherever it is made (token.mint, token.refresh, agent.spawn): SEMANTIC.
 * An INTERNAL failure is logged within the persona's log budget when there is one: a persona
 * that can make an op fail must not be able to fill the kernel's log with stacks.
 */
export function toRefusal(
  e: unknown,
  log: Logger,
  ctx: RequestCtx,
  peerLog?: PeerLogLimiter,
  space?: Pick<StorageSpace, "failed">,
): Refusal {
  if (e instanceof OpFailure) return { errorClass: e.errorClass, message: e.message, payload: e.payload };
  if (e instanceof OpError) return { errorClass: e.errorClass, message: e.message };
  if (e instanceof IntentError || e instanceof TokenError) return { errorClass: "SEMANTIC", message: e.message };
  // No room for what the op writes (ENOSPC, SQLITE_FULL): nothing of it was kept, and a retry
  // once there is room can succeed (never an I/O error: that stays INTERNAL). Logged by `space`, rate-limited.
  if (space ? space.failed(e, true) : isStorageFull(e)) return { errorClass: "RESOURCE", message: storageFullMessage(ctx.op) };
  const line = { err: e, op: ctx.op, traceparent: ctx.req.context.traceparent ?? undefined };
  if (peerLog) peerLog.write(ctx.session.persona, "error", line, "primitive failed");
  else log.error(line, "primitive failed");
  return { errorClass: "INTERNAL", message: `${ctx.op} failed inside the kernel` };
}

/** What an op refused for lack of room is answered (its intent is on the record; nothing of its effect is). */
export function storageFullMessage(op: string | null): string {
  return `the kernel's storage is full: ${op ?? "the request"} could not be stored; retry once space is freed`;
}

export function answer(ctx: RequestCtx, r: OpResult): Response {
  const response: Response = { version: ctx.session.version, id: ctx.req.id, status: r.status };
  if (r.payload !== undefined) response.payload = r.payload;
  return response;
}

export function failure(ctx: RequestCtx, r: Refusal): Response {
  return {
    version: ctx.session.version,
    id: ctx.req.id,
    status: "FAILURE",
    error: r.errorClass,
    message: boundedMessage(r.message),
    ...(r.payload !== undefined ? { payload: r.payload } : {}),
  };
}

/** The most UTF-8 bytes of a FAILURE message, in its answer and its record (PROTOCOL §6.8). */
export const FAILURE_MESSAGE_MAX_BYTES = 4096;

/**
 * A FAILURE message cut to {@link FAILURE_MESSAGE_MAX_BYTES}, ending in `…` when cut. Messages
 * quote what a request chose (an argument's or a limit's name, up to a frame's size): uncut, one
 * refusal wrote that much into its audit record, past the refusal's intent bound, and its
 * answer broke `text(65536)`, which a peer refuses as a protocol violation.
 */
export function boundedMessage(m: string): string {
  // Three UTF-8 bytes at most per UTF-16 unit: most messages are measured by their length alone.
  if (m.length * 3 <= FAILURE_MESSAGE_MAX_BYTES || Buffer.byteLength(m) <= FAILURE_MESSAGE_MAX_BYTES) return m;
  const b = Buffer.from(m.slice(0, FAILURE_MESSAGE_MAX_BYTES));
  let end = FAILURE_MESSAGE_MAX_BYTES - 3; // room for "…"
  // Never inside a character: back to the first byte of the one that would be split.
  while (end > 0 && ((b[end] as number) & 0xc0) === 0x80) end--;
  return `${b.subarray(0, end).toString()}…`;
}

export function elapsedUs(ctx: RequestCtx): number {
  return Math.trunc((performance.now() - ctx.started) * 1000);
}

/** A promise, or any thenable a handler or an embedder's authorizer may return (what `await` would adopt). */
export function isThenable<T>(v: T | PromiseLike<T>): v is PromiseLike<T> {
  return typeof v === "object" && v !== null && typeof (v as { then?: unknown }).then === "function";
}

/** Step 2: the request speaks the session's version, for the session's attested persona. */
export function checkEnvelope(s: SessionView, req: Request): Refusal | undefined {
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
