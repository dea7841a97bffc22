import type { KEvent } from "@kpip/protocol";
import type { CallOptions } from "./options.js";
import { ownBytes } from "./own-bytes.js";

/** Events a subscription keeps for a consumer that has not taken them, by default. */
export const DEFAULT_BUFFER_EVENTS = 1000;
/**
 * Bytes of events a subscription keeps for a consumer that has not taken them, by default: the
 * kernel's own bound per subscription (`eventQueueBytes`). Counted as well as events, since one
 * event may be as large as a frame: another persona emitting large events on a shared topic
 * must not fill a slow subscriber's process.
 */
export const DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024;

/** How a subscription or watch is made, and how much it keeps for a consumer that falls behind. */
export interface SubscribeOptions extends CallOptions {
  /** Most events kept unread (default {@link DEFAULT_BUFFER_EVENTS}); past it the oldest are dropped into `gap`. */
  bufferSize?: number;
  /**
   * Most bytes of events kept unread, as they came in their frames (default
   * {@link DEFAULT_BUFFER_BYTES}); past it the oldest are dropped into `gap`. The newest event is
   * always kept, whatever its size.
   */
  bufferBytes?: number;
}

/**
 * One event subscription as an async iterable. Events wait in a buffer bounded in events and in
 * bytes until the consumer takes them; past either the oldest are dropped and the next event
 * handed out carries `gap` (kernel-side drops plus local ones), so a slow consumer costs bounded
 * memory however large the events others emit, and learns exactly how much it missed.
 */
export class Subscription implements AsyncIterable<KEvent> {
  /** The kernel's id for this subscription on the current session (changes after a reconnect). */
  remoteId = 0;
  private readonly buffer: KEvent[] = [];
  /** The size of each buffered event (its frame's body), in the buffer's order. */
  private readonly sizes: number[] = [];
  private bytes = 0;
  private localDrops = 0;
  private waiter: { resolve: (r: IteratorResult<KEvent>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  /** Why it ended, when the kernel refused it (see {@link error}); thrown to the consumer once. */
  private failure: unknown;
  private failureOwed = false;

  constructor(
    readonly pattern: string,
    private readonly bufferSize: number,
    private readonly onEnd: (s: Subscription) => Promise<void>,
    private readonly bufferBytes = DEFAULT_BUFFER_BYTES,
  ) {}

  /** Events and bytes waiting for the consumer (for tests and diagnostics). */
  get buffered(): { events: number; bytes: number } {
    return { events: this.buffer.length, bytes: this.bytes };
  }

  /** Called by the client for each EVENT of this subscription; `size` is its frame's body size. */
  push(e: KEvent, size = 0): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: this.withDrops(e), done: false });
      return;
    }
    // Kept unread: its byte strings must not keep the socket reads they came in.
    if (e.data !== undefined) e.data = ownBytes(e.data);
    this.buffer.push(e);
    this.sizes.push(size);
    this.bytes += size;
    while (this.buffer.length > this.bufferSize || (this.bytes > this.bufferBytes && this.buffer.length > 1)) {
      const lost = this.take() as KEvent;
      this.localDrops += 1 + (lost.gap ?? 0);
    }
  }

  /** The oldest buffered event, out of the buffer and its bytes. */
  private take(): KEvent | undefined {
    const e = this.buffer.shift();
    if (e !== undefined) this.bytes -= this.sizes.shift() as number;
    return e;
  }

  private withDrops(e: KEvent): KEvent {
    if (this.localDrops === 0) return e;
    const out = { ...e, gap: (e.gap ?? 0) + this.localDrops };
    this.localDrops = 0;
    return out;
  }

  /**
   * Ends the iteration (client closed or unsubscribed). With `error` (the kernel refused to make
   * it again after a reconnect): the events already received are still handed out, then the
   * consumer's next call throws `error` once, and {@link error} keeps it.
   */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    if (error !== undefined) {
      this.failure = error;
      this.failureOwed = true;
    } else {
      this.buffer.length = 0;
      this.sizes.length = 0;
      this.bytes = 0;
    }
    const w = this.waiter;
    this.waiter = undefined;
    if (w === undefined) return;
    if (this.failureOwed) {
      this.failureOwed = false;
      w.reject(error);
    } else w.resolve({ value: undefined, done: true });
  }

  get closed(): boolean {
    return this.ended;
  }

  /** Why the subscription ended, when the kernel refused to make it again after a reconnect (a KpipError); else undefined. */
  get error(): unknown {
    return this.failure;
  }

  /** Unsubscribes from the kernel and ends the iteration. */
  async unsubscribe(): Promise<void> {
    if (this.ended) return;
    this.end();
    await this.onEnd(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<KEvent> {
    return {
      next: () => {
        const e = this.take();
        if (e) return Promise.resolve({ value: this.withDrops(e), done: false });
        if (this.failureOwed) {
          this.failureOwed = false;
          return Promise.reject(this.failure);
        }
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }
}
