import type { KEvent } from "@kpip/protocol";

/**
 * One event subscription as an async iterable. Events wait in a bounded buffer until the
 * consumer takes them; past `bufferSize` the oldest are dropped and the next event handed
 * out carries `gap` (kernel-side drops plus local ones), so a slow consumer costs bounded
 * memory and learns exactly how much it missed.
 */
export class Subscription implements AsyncIterable<KEvent> {
  /** The kernel's id for this subscription on the current session (changes after a reconnect). */
  remoteId = 0;
  private readonly buffer: KEvent[] = [];
  private localDrops = 0;
  private waiter: ((r: IteratorResult<KEvent>) => void) | undefined;
  private ended = false;

  constructor(
    readonly pattern: string,
    private readonly bufferSize: number,
    private readonly onEnd: (s: Subscription) => Promise<void>,
  ) {}

  /** Called by the client for each EVENT of this subscription. */
  push(e: KEvent): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: this.withDrops(e), done: false });
      return;
    }
    this.buffer.push(e);
    if (this.buffer.length > this.bufferSize) {
      const lost = this.buffer.shift() as KEvent;
      this.localDrops += 1 + (lost.gap ?? 0);
    }
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
        const e = this.buffer.shift();
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
