import {
  type CborMap,
  framePieces,
  HEADER_SIZE,
  type Intent,
  KpipError,
  MessageError,
  PIECE_REF_MIN,
  RETRYABLE_CLASSES,
  type RequestContext,
  type Response,
  UNPRINTABLE,
} from "@kpip/protocol";
import { backoffDelay } from "./backoff.js";
import { DeadlineQueue } from "./deadlines.js";
import { CancelledError, KernelUnavailableError, RequestTooLargeError, TimeoutError } from "./errors.js";
import type { Link } from "./link.js";
import type { CallOptions, CallResult, ResolvedOptions } from "./options.js";
import { PendingCall } from "./pending-call.js";
import { RequestEncoder, type RequestFrame } from "./request-frame.js";

/** What the call table needs from the client around it. */
export interface CallHost {
  readonly persona: string;
  /** The link requests go out on, when one is ready. */
  readyLink(): Link | undefined;
  /** Capability handles bound on the current session (a call's default caps); the same array until they change. */
  handles(): readonly number[];
  /** An AUTH failure: attest again on a fresh connection; unsent calls go out after it. */
  reattest(): void;
}

// The promise's resolving functions, captured without a closure per call (see start).
type Settled = CallResult | Response;
let capturedResolve: (v: Settled) => void = () => {};
let capturedReject: (e: Error) => void = () => {};
function capture(resolve: (v: Settled) => void, reject: (e: Error) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

/**
 * Calls in flight, by stream: each is encoded once, so a retry (RESOURCE, INTERNAL, within the
 * deadline) or a resend after a reconnect carries the same bytes and request id, which lets
 * the kernel answer it from its dedupe record. Deadlines, aborts and the wait for a kernel
 * that is away end a call locally. A call is one promise from `call` to its answer, a record
 * without closures, and at most one entry in a shared deadline queue (one timer for all).
 */
export class CallTable {
  private nextId = 1;
  private readonly pending = new Map<number, PendingCall>();
  /** Of {@link pending}, those sent on the current link: kept where `sent` flips ({@link setSent}), read at each answer on a closing link. */
  private sentCalls = 0;
  private drainWaiters: (() => void)[] = [];
  private readonly encoder: RequestEncoder;
  private readonly defaultContext: RequestContext;
  private readonly expiries = new DeadlineQueue<PendingCall>((p) => this.expired(p));

  constructor(
    private readonly o: ResolvedOptions,
    private readonly host: CallHost,
  ) {
    const persona = host.persona;
    this.defaultContext = o.workspace ? { persona, workspace: o.workspace } : { persona };
    this.encoder = new RequestEncoder(persona, this.defaultContext);
  }

  /** Calls waiting for an answer (sent or queued). */
  get size(): number {
    return this.pending.size;
  }

  /** Resolves once no call is waiting. */
  drained(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  /**
   * Starts `call(op, target, args)`: the promise gives its {@link CallResult} and rejects with a
   * {@link KpipError} on FAILURE. `waiting`: no session is ready, so a call without a deadline
   * waits at most unavailableTimeoutMs.
   */
  call(op: string, target: string, args: CborMap, opts: CallOptions, waiting: boolean): Promise<CallResult> {
    const refused = refusedBeforeEncoding(opts);
    if (refused) return refused;
    const deadline = opts.deadlineMs !== undefined ? Date.now() + opts.deadlineMs : undefined;
    let intentLength: number;
    try {
      intentLength = this.encoder.encodeCall(op, target, args, deadline);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.begin(intentLength, opts, deadline, waiting, true) as Promise<CallResult>;
  }

  /** Starts a request whose promise gives the response, FAILURE included (see {@link call}). */
  request(intent: Intent, opts: CallOptions, waiting: boolean): Promise<Response> {
    const refused = refusedBeforeEncoding(opts);
    if (refused) return refused;
    const deadline = opts.deadlineMs !== undefined ? Date.now() + opts.deadlineMs : undefined;
    const full: Intent = deadline === undefined ? intent : { ...intent, constraints: { ...intent.constraints, deadline } };
    let intentLength: number;
    try {
      intentLength = this.encoder.encodeIntent(full);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.begin(intentLength, opts, deadline, waiting, false) as Promise<Response>;
  }

  /** The intent is encoded (in the encoder's scratch writer): the call gets its id, record and first frame. */
  private begin(
    intentLength: number,
    opts: CallOptions,
    deadline: number | undefined,
    waiting: boolean,
    result: boolean,
  ): Promise<Settled> {
    const enc = this.encoder;
    const link = this.host.readyLink();
    const id = this.nextId;
    const stream = id % 0x100000000;
    const context = contextOf(opts, this.host.persona, this.o.workspace);
    let frame: RequestFrame | undefined;
    try {
      // The first frame is built now, around the intent, when a session is ready for it.
      frame = link ? enc.frame(id, stream, opts.caps ?? this.host.handles(), context, link.version) : undefined;
    } catch (e) {
      return Promise.reject(e);
    }
    // Encoded once: a retry or a resend after reconnect carries the very same bytes and id.
    this.nextId++;
    const promise = new Promise<Settled>(capture);
    const p = new PendingCall(id, stream, context, opts.caps, deadline, result, capturedResolve, capturedReject);
    if (frame) p.setFrame(frame);
    else p.setIntent(intentLength >= PIECE_REF_MIN ? enc.takeIntent() : enc.copyIntent());
    if (deadline !== undefined) {
      p.expiry = "deadline";
      p.deadlineMs = opts.deadlineMs as number;
      this.expiries.add(p, deadline - Date.now());
    } else if (waiting) this.waitForKernel(p);
    const signal = opts.signal;
    if (signal) p.listen(signal, () => this.settle(p, undefined, new CancelledError("call aborted")));
    this.pending.set(stream, p);
    if (link && frame) this.sendFrame(p, link, frame.frame);
    else this.send(p);
    return promise;
  }

  /** An answer from the kernel: a retryable failure is sent again; AUTH re-attests once. */
  onResponse(stream: number, r: Response): void {
    const p = this.pending.get(stream);
    if (!p || p.id !== r.id) return;
    if (r.status === "FAILURE" && r.error !== undefined) {
      if (RETRYABLE_CLASSES.has(r.error) && p.attempts < this.o.maxAttempts) {
        const delay = backoffDelay(this.o.retryBackoff, p.attempts);
        if (p.deadline === undefined || Date.now() + delay < p.deadline) {
          p.attempts++;
          this.setSent(p, false);
          setTimeout(() => this.send(p), delay).unref();
          return;
        }
      }
      if (r.error === "AUTH" && !p.authRetried) {
        // One fresh handshake and attestation, then the same request again.
        p.authRetried = true;
        this.setSent(p, false);
        this.host.reattest();
        return;
      }
    }
    this.settle(p, r);
  }

  /** (Re)sends everything not yet sent on the current link, with the same ids. */
  flush(): void {
    for (const p of this.pending.values()) {
      if (p.sent) continue;
      if (p.expiry === "unavailable") this.stopWaiting(p);
      this.send(p);
    }
  }

  /** The link was lost: every call is unsent again, and one without a deadline waits a bounded time. */
  linkLost(): void {
    for (const p of this.pending.values()) {
      this.setSent(p, false);
      if (p.expiry === "none") this.waitForKernel(p);
    }
  }

  /**
   * The kernel ended the session because a frame was too large: that was the largest request
   * sent on this link. It fails now and is never resent; the others are resent after reconnect.
   */
  refuseLargest(link: Link): void {
    let largest: PendingCall | undefined;
    for (const p of this.pending.values()) if (p.sent && (!largest || p.size > largest.size)) largest = p;
    if (!largest) return;
    const limit = link.maxBody === Number.MAX_SAFE_INTEGER ? largest.size - 1 : link.maxBody;
    const msg = `the kernel refused a request of ${largest.size} bytes as too large (its limit is ${limit} bytes per message)`;
    this.settle(largest, undefined, new RequestTooLargeError(largest.size, limit, msg));
  }

  /** Calls sent on the current link and not yet answered (a closing link waits for them). */
  sentCount(): number {
    return this.sentCalls;
  }

  /** The one place a call's `sent` changes: {@link sentCount} follows it. */
  private setSent(p: PendingCall, sent: boolean): void {
    if (p.sent === sent) return;
    p.sent = sent;
    this.sentCalls += sent ? 1 : -1;
  }

  /** Fails every call with `err` (shutdown, or failFast while reconnecting). */
  failAll(err: Error): void {
    for (const p of [...this.pending.values()]) this.settle(p, undefined, err);
  }

  private waitForKernel(p: PendingCall): void {
    p.expiry = "unavailable";
    this.expiries.add(p, this.o.unavailableTimeoutMs);
  }

  private stopWaiting(p: PendingCall): void {
    p.expiry = "none";
    this.expiries.remove(p);
  }

  /** A call's local expiry came: its deadline, or the longest it may wait for a kernel. */
  private expired(p: PendingCall): void {
    if (p.expiry === "deadline") this.settle(p, undefined, new TimeoutError(`no answer within ${p.deadlineMs} ms`));
    else {
      const ms = this.o.unavailableTimeoutMs;
      this.settle(p, undefined, new KernelUnavailableError(`kernel unavailable for ${ms} ms`));
    }
  }

  /** Sends (again) with the frame built afresh around the call's intent bytes. */
  private send(p: PendingCall): void {
    const link = this.host.readyLink();
    if (!this.pending.has(p.stream) || p.sent || !link) return;
    if (p.intentPieces !== undefined) {
      const caps = p.caps ?? this.host.handles();
      const { pieces, bodySize } = this.encoder.framePieces(p.id, p.stream, caps, p.context, link.version, p.intentPieces);
      if (!this.fitsOn(p, link, bodySize)) return;
      // The pieces are the caller's own bytes: until the connection has let go of them, a call
      // ended locally (abort, deadline) does not reject, so the caller cannot change them too soon.
      p.unwritten++;
      link.sendPieces(pieces, () => this.written(p));
      return;
    }
    // Large intents (bulk payloads) are referenced, not copied again, into the frame: the pieces
    // go to the socket as one vectored write, or straight into the shared-memory segment.
    const { pieces, bodySize } = framePieces(
      {
        type: "REQUEST",
        // Keys in canonical order (by length, then bytewise): the encoder has nothing to sort.
        body: {
          id: p.id,
          caps: p.caps ?? (this.host.handles() as number[]),
          intent: p.intent,
          context: p.context ?? this.defaultContext,
          persona: this.host.persona,
          version: link.version,
        },
      },
      p.stream,
    );
    if (this.fitsOn(p, link, bodySize)) link.sendPieces(pieces);
  }

  private sendFrame(p: PendingCall, link: Link, frame: Buffer): void {
    if (this.fitsOn(p, link, frame.length - HEADER_SIZE)) link.sendFrame(frame);
  }

  /** Marks the call sent if its body fits the session's limit; else it fails here, never sent. */
  private fitsOn(p: PendingCall, link: Link, bodySize: number): boolean {
    p.size = bodySize;
    if (bodySize > link.maxBody) {
      // The kernel would end the session over it (fatal TOO_LARGE): refused here, never sent.
      this.settle(p, undefined, new RequestTooLargeError(bodySize, link.maxBody));
      return false;
    }
    this.setSent(p, true);
    return true;
  }

  /** One send of a call's pieces has left the connection: a local end held back until then rejects now. */
  private written(p: PendingCall): void {
    if (--p.unwritten > 0 || p.held === undefined) return;
    const err = p.held;
    p.held = undefined;
    p.reject(err);
  }

  private settle(p: PendingCall, r: Response | undefined, err?: Error): void {
    if (!this.pending.delete(p.stream)) return;
    this.setSent(p, false);
    if (p.heapIndex >= 0) this.expiries.remove(p);
    p.unlisten();
    // Ended locally with the caller's bytes still queued: the rejection waits for them to leave
    // (an answer needs no wait: the kernel read the whole request before it).
    if (r === undefined && p.unwritten > 0) p.held = err as Error;
    else if (r === undefined) p.reject(err as Error);
    else if (!p.result) p.resolve(r);
    else if (r.status === "FAILURE") {
      p.reject(
        new KpipError(r.error ?? "INTERNAL", r.message ?? "request failed", {
          requestId: r.id,
          ...(r.payload !== undefined ? { payload: r.payload } : {}),
        }),
      );
    } else p.resolve({ status: r.status, payload: r.payload });
    if (this.pending.size === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}

/**
 * A call refused before anything is encoded: aborted already, or a context field the kernel would
 * refuse (a `label(128)`, PROTOCOL §6.2: too long, or holding a control, invisible or bidirectional
 * formatting character). Sent, such a field is a fatal BAD_FIELD that ends the whole session, every
 * other call on it with it.
 */
function refusedBeforeEncoding(opts: CallOptions): Promise<never> | undefined {
  if (opts.signal?.aborted) return Promise.reject(new CancelledError("call aborted before it was sent"));
  if (opts.execution === undefined && !opts.domain && !opts.traceparent) return undefined;
  for (const field of LABELS) {
    const v = opts[field];
    if (v === undefined || v === "") continue;
    if (v.length > 128) return Promise.reject(new MessageError("BAD_FIELD", `context.${field} is longer than 128 characters`));
    if (UNPRINTABLE.test(v))
      return Promise.reject(
        new MessageError(
          "BAD_FIELD",
          `context.${field} holds a control, format, invisible or bidirectional formatting character`,
        ),
      );
  }
  return undefined;
}

/** The context's text fields a call may set, each a `label(128)`. */
const LABELS = ["execution", "domain", "traceparent"] as const;

/** The call's own context, or undefined when it names none of its fields (the default context then). */
function contextOf(opts: CallOptions, persona: string, workspace: string | undefined): RequestContext | undefined {
  if (!opts.domain && !opts.execution && opts.workspace === undefined && !opts.traceparent) return undefined;
  // Fields added in canonical key order (domain, persona, execution, workspace, traceparent): nothing to sort.
  const context: RequestContext = opts.domain ? { domain: opts.domain, persona } : { persona };
  if (opts.execution) context.execution = opts.execution;
  const ws = opts.workspace ?? workspace;
  if (ws) context.workspace = ws;
  if (opts.traceparent) context.traceparent = opts.traceparent;
  return context;
}
