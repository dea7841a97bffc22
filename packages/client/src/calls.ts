import {
  type CapabilityRef,
  encodeIntent,
  framePieces,
  type Intent,
  MessageError,
  RETRYABLE_CLASSES,
  type RequestContext,
  type Response,
} from "@kpip/protocol";
import { backoffDelay } from "./backoff.js";
import { CancelledError, KernelUnavailableError, RequestTooLargeError, TimeoutError } from "./errors.js";
import type { Link } from "./link.js";
import type { CallOptions, ResolvedOptions } from "./options.js";

interface PendingCall {
  id: number;
  stream: number;
  intent: Uint8Array;
  context: RequestContext;
  caps: CapabilityRef[] | undefined;
  deadline: number | undefined;
  attempts: number;
  authRetried: boolean;
  /** Sent on the current link. */
  sent: boolean;
  /** The REQUEST body's size when last sent (to tell which request a TOO_LARGE refusal was about). */
  size: number;
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
}

/** What the call table needs from the client around it. */
export interface CallHost {
  readonly persona: string;
  /** The link requests go out on, when one is ready. */
  readyLink(): Link | undefined;
  /** Capability handles bound on the current session (a call's default caps). */
  handles(): number[];
  /** An AUTH failure: attest again on a fresh connection; unsent calls go out after it. */
  reattest(): void;
}

/**
 * Calls in flight, by stream: each is encoded once, so a retry (RESOURCE, INTERNAL, within the
 * deadline) or a resend after a reconnect carries the same bytes and request id, which lets
 * the kernel answer it from its dedupe record. Deadlines, aborts and the wait for a kernel
 * that is away end a call locally.
 */
export class CallTable {
  private nextId = 1;
  private readonly pending = new Map<number, PendingCall>();
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly o: ResolvedOptions,
    private readonly host: CallHost,
  ) {}

  /** Calls waiting for an answer (sent or queued). */
  get size(): number {
    return this.pending.size;
  }

  /** Resolves once no call is waiting. */
  drained(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  /** Starts a call; `waiting`: no session is ready, so a call without a deadline waits at most unavailableTimeoutMs. */
  start(intent: Intent, opts: CallOptions, waiting: boolean): Promise<Response> {
    if (opts.signal?.aborted) return Promise.reject(new CancelledError("call aborted before it was sent"));
    if (opts.execution !== undefined && opts.execution.length > 128) {
      return Promise.reject(new MessageError("BAD_FIELD", "context.execution is longer than 128 characters"));
    }
    const deadline = opts.deadlineMs !== undefined ? Date.now() + opts.deadlineMs : undefined;
    const full: Intent = deadline === undefined ? intent : { ...intent, constraints: { ...intent.constraints, deadline } };
    // Encoded once: a retry or a resend after reconnect carries the very same bytes and id.
    const bytes = encodeIntent(full);
    const id = this.nextId++;
    // Fields added in canonical key order (domain, persona, execution, workspace, traceparent): nothing to sort.
    const persona = this.host.persona;
    const context: RequestContext = opts.domain ? { domain: opts.domain, persona } : { persona };
    if (opts.execution) context.execution = opts.execution;
    const ws = opts.workspace ?? this.o.workspace;
    if (ws) context.workspace = ws;
    if (opts.traceparent) context.traceparent = opts.traceparent;
    return new Promise<Response>((resolve, reject) => {
      const p: PendingCall = {
        id,
        stream: id % 0x100000000,
        intent: bytes,
        context,
        caps: opts.caps,
        deadline,
        attempts: 1,
        authRetried: false,
        sent: false,
        size: 0,
        resolve,
        reject,
      };
      if (deadline !== undefined) {
        const ms = opts.deadlineMs;
        p.timer = setTimeout(
          () => this.settle(p, undefined, new TimeoutError(`no answer within ${ms} ms`)),
          deadline - Date.now(),
        );
      } else if (waiting) this.waitForKernel(p);
      const signal = opts.signal;
      if (signal) {
        const onAbort = () => this.settle(p, undefined, new CancelledError("call aborted"));
        signal.addEventListener("abort", onAbort, { once: true });
        p.resolve = (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        };
        p.reject = (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        };
      }
      this.pending.set(p.stream, p);
      this.send(p);
    });
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
          p.sent = false;
          setTimeout(() => this.send(p), delay).unref();
          return;
        }
      }
      if (r.error === "AUTH" && !p.authRetried) {
        // One fresh handshake and attestation, then the same request again.
        p.authRetried = true;
        p.sent = false;
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
      if (p.deadline === undefined && p.timer) {
        clearTimeout(p.timer);
        p.timer = undefined;
      }
      this.send(p);
    }
  }

  /** The link was lost: every call is unsent again, and one without a deadline waits a bounded time. */
  linkLost(): void {
    for (const p of this.pending.values()) {
      p.sent = false;
      if (p.deadline === undefined && !p.timer) this.waitForKernel(p);
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

  /** Fails every call with `err` (shutdown, or failFast while reconnecting). */
  failAll(err: Error): void {
    for (const p of [...this.pending.values()]) this.settle(p, undefined, err);
  }

  private waitForKernel(p: PendingCall): void {
    const ms = this.o.unavailableTimeoutMs;
    p.timer = setTimeout(() => this.settle(p, undefined, new KernelUnavailableError(`kernel unavailable for ${ms} ms`)), ms);
  }

  private send(p: PendingCall): void {
    const link = this.host.readyLink();
    if (!this.pending.has(p.stream) || p.sent || !link) return;
    // Large intents (bulk payloads) are referenced, not copied again, into the frame: the pieces
    // go to the socket as one vectored write, or straight into the shared-memory segment.
    const { pieces, bodySize } = framePieces(
      {
        type: "REQUEST",
        // Keys in canonical order (by length, then bytewise): the encoder has nothing to sort.
        body: {
          id: p.id,
          caps: p.caps ?? this.host.handles(),
          intent: p.intent,
          context: p.context,
          persona: this.host.persona,
          version: link.version,
        },
      },
      p.stream,
    );
    p.size = bodySize;
    if (bodySize > link.maxBody) {
      // The kernel would end the session over it (fatal TOO_LARGE): refused here, never sent.
      this.settle(p, undefined, new RequestTooLargeError(bodySize, link.maxBody));
      return;
    }
    p.sent = true;
    link.sendPieces(pieces);
  }

  private settle(p: PendingCall, r: Response | undefined, err?: Error): void {
    if (!this.pending.delete(p.stream)) return;
    clearTimeout(p.timer);
    if (r) p.resolve(r);
    else p.reject(err as Error);
    if (this.pending.size === 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}
