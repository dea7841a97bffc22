import type { CapabilityRef, RequestContext, Response } from "@kpip/protocol";
import type { Expiring } from "./deadlines.js";
import type { CallResult } from "./options.js";
import type { RequestFrame } from "./request-frame.js";

/** What ends a call locally if no answer comes: nothing, its deadline, or the wait for a kernel. */
export type Expiry = "none" | "deadline" | "unavailable";

/**
 * One call in flight: a plain record of fixed shape (no closures but the promise's own
 * resolving functions), also an entry of the call table's deadline queue.
 */
export class PendingCall implements Expiring {
  expiresAt = 0;
  heapIndex = -1;
  expiry: Expiry = "none";
  /** The relative deadline the caller gave (for the timeout's message). */
  deadlineMs = 0;
  attempts = 1;
  authRetried = false;
  /** Sent on the current link (changed only by the call table, which counts them). */
  sent = false;
  /** The REQUEST body's size when last sent (to tell which request a TOO_LARGE refusal was about). */
  size = 0;
  /** The first frame, when it was built around the intent (the intent's bytes are a view of it). */
  private frame: Buffer | undefined = undefined;
  private intentAt = 0;
  private intentEnd = 0;
  private intentBytes: Uint8Array | undefined = undefined;
  /** A large intent, as the pieces it was encoded in (its bulk byte strings the caller's own, not copied). */
  intentPieces: Uint8Array[] | undefined = undefined;
  /** Sends of `intentPieces` a connection may still hold (queued, not yet handed to the OS). */
  unwritten = 0;
  /** A local end (abort, deadline, ...) that came while `unwritten`: the promise rejects with it once the pieces left. */
  held: Error | undefined = undefined;
  private signal: AbortSignal | undefined = undefined;
  private onAbort: (() => void) | undefined = undefined;

  constructor(
    readonly id: number,
    readonly stream: number,
    /** undefined: the client's default context. */
    readonly context: RequestContext | undefined,
    readonly caps: CapabilityRef[] | undefined,
    /** Absolute deadline (Unix ms), carried in the intent. */
    readonly deadline: number | undefined,
    /** Settles with `call`'s result (FAILURE rejected) rather than the raw response. */
    readonly result: boolean,
    readonly resolve: (v: CallResult | Response) => void,
    readonly reject: (e: Error) => void,
  ) {}

  /** The canonical intent bytes, the same on every send. */
  get intent(): Uint8Array {
    if (this.intentBytes === undefined) {
      this.intentBytes = (this.frame as Buffer).subarray(this.intentAt, this.intentEnd);
    }
    return this.intentBytes;
  }

  setFrame(f: RequestFrame): void {
    this.frame = f.frame;
    this.intentAt = f.intentAt;
    this.intentEnd = f.intentEnd;
  }

  setIntent(bytes: Uint8Array | Uint8Array[]): void {
    if (Array.isArray(bytes)) this.intentPieces = bytes;
    else this.intentBytes = bytes;
  }

  /** Aborting `signal` runs `onAbort` (until the call settles). */
  listen(signal: AbortSignal, onAbort: () => void): void {
    this.signal = signal;
    this.onAbort = onAbort;
    signal.addEventListener("abort", onAbort, { once: true });
  }

  unlisten(): void {
    if (this.signal === undefined) return;
    this.signal.removeEventListener("abort", this.onAbort as () => void);
    this.signal = undefined;
    this.onAbort = undefined;
  }
}
