/** The longest delay a Node timer holds (2^31 − 1 ms, ~24.8 days); a longer one fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** An entry of a {@link DeadlineQueue}: the queue keeps its position in the entry itself. */
export interface Expiring {
  /** When it expires, on the monotonic clock (`performance.now()`, ms). */
  expiresAt: number;
  /** Its index in the queue's heap; -1 while not queued. */
  heapIndex: number;
}

/**
 * Local expiries of calls in flight (a call's deadline, or how long it may wait for a kernel)
 * under one timer: a binary min-heap by expiry, the entries holding their own index so a call
 * that settles leaves in O(log n) with nothing allocated. The timer is armed for the earliest
 * entry only, and never fires before it is due.
 */
export class DeadlineQueue<T extends Expiring> {
  private readonly heap: T[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** When the armed timer fires (monotonic ms); +∞ when none is armed. */
  private armedFor = Number.POSITIVE_INFINITY;

  constructor(
    /** Called with each entry once it is due, after it left the queue. */
    private readonly expire: (entry: T) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get size(): number {
    return this.heap.length;
  }

  /** A timer is set (only while something is queued). */
  get armed(): boolean {
    return this.timer !== undefined;
  }

  /** Queues `entry` to expire `ms` from now (moving it if it was queued already). */
  add(entry: T, ms: number): void {
    if (entry.heapIndex >= 0) this.remove(entry);
    entry.expiresAt = this.now() + ms;
    entry.heapIndex = this.heap.length;
    this.heap.push(entry);
    this.up(entry.heapIndex);
    if (entry.expiresAt < this.armedFor) this.arm();
  }

  /** Takes `entry` out of the queue; nothing if it is not queued. */
  remove(entry: T): void {
    const i = entry.heapIndex;
    if (i < 0) return;
    entry.heapIndex = -1;
    const last = this.heap.pop() as T;
    if (last !== entry) {
      this.heap[i] = last;
      last.heapIndex = i;
      this.down(i);
      this.up(last.heapIndex);
    }
    // An armed timer for an earlier entry just fires, finds nothing due and re-arms; only an
    // empty queue clears it, so a closed client leaves no timer keeping the process alive.
    if (this.heap.length === 0) this.disarm();
  }

  private arm(): void {
    const first = this.heap[0];
    this.disarm();
    if (!first) return;
    this.armedFor = first.expiresAt;
    // setTimeout rounds to whole milliseconds: at least 1 ms, and never early (see fire). It holds
    // at most 2^31 − 1 ms: a call's deadline farther away armed a 1 ms timer, found nothing due and
    // armed it again, a timer (and a TimeoutOverflowWarning) a millisecond for the call's life.
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(first.expiresAt - this.now()))));
  }

  private disarm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
  }

  private fire(): void {
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
    const now = this.now();
    for (let first = this.heap[0]; first !== undefined && first.expiresAt <= now; first = this.heap[0]) {
      this.remove(first);
      this.expire(first);
    }
    if (this.timer === undefined) this.arm();
  }

  private up(i: number): void {
    const h = this.heap;
    const e = h[i] as T;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = h[parent] as T;
      if (p.expiresAt <= e.expiresAt) break;
      h[i] = p;
      p.heapIndex = i;
      i = parent;
    }
    h[i] = e;
    e.heapIndex = i;
  }

  private down(i: number): void {
    const h = this.heap;
    const n = h.length;
    const e = h[i] as T;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && (h[c + 1] as T).expiresAt < (h[c] as T).expiresAt) c++;
      const child = h[c] as T;
      if (child.expiresAt >= e.expiresAt) break;
      h[i] = child;
      child.heapIndex = i;
      i = c;
    }
    h[i] = e;
    e.heapIndex = i;
  }
}
