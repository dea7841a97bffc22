import type { KEvent } from "@kpip/protocol";
import type { CallOptions } from "./options.js";

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
  private waiter: ((r: IteratorResult<KEvent>) => void) | undefined;
  private ended = false;

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
      w({ value: this.withDrops(e), done: false });
      return;
    }
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

  /** Ends the iteration (client closed or unsubscribed). */
  end(): void {
    this.ended = true;
    this.buffer.length = 0;
    this.sizes.length = 0;
    this.bytes = 0;
    this.waiter?.({ value: undefined, done: true });
    this.waiter = undefined;
  }

  get closed(): boolean {
    return this.ended;
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
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }
}
