import type { KEvent } from "@kpip/protocol";
import type { CallFn, CallOptions } from "./options.js";
import { Subscription } from "./subscription.js";

/** Where the subscription set reports a reconnect's outcome (the client's events). */
export interface ResubscribeEvents {
  resubscribed(pattern: string): void;
  resubscribeFailed(info: { pattern: string; error: unknown }): void;
}

/**
 * A client's event subscriptions: EVENT frames go to the one the kernel's id names, and after
 * a reconnect every pattern is subscribed again (events emitted while away are not replayed).
 */
export class Subscriptions {
  private readonly subs = new Set<Subscription>();

  constructor(
    private readonly call: CallFn,
    /** Whether an unsubscribe can reach the kernel now. */
    private readonly ready: () => boolean,
    private readonly events: ResubscribeEvents,
  ) {}

  /** Subscribes to topic:// names matching `pattern`; see {@link KernelClient.subscribe}. */
  async subscribe(pattern: string, opts: CallOptions & { bufferSize?: number } = {}): Promise<Subscription> {
    const { bufferSize, ...callOpts } = opts;
    const sub = new Subscription(pattern, bufferSize ?? 1000, async (s) => {
      this.subs.delete(s);
      if (this.ready()) await this.call("event.unsubscribe", s.pattern, { subscription: s.remoteId }).catch(() => {});
    });
    const r = await this.call("event.subscribe", pattern, {}, callOpts);
    sub.remoteId = (r.payload as { subscription: number }).subscription;
    this.subs.add(sub);
    return sub;
  }

  /** An EVENT: to its subscription (0 is a kernel notice no subscription asked for). */
  dispatch(e: KEvent): void {
    if (e.subscription === 0) return;
    for (const sub of this.subs) if (sub.remoteId === e.subscription) sub.push(e);
  }

  /** After a reconnect: subscribe again to every pattern. */
  async resubscribe(): Promise<void> {
    for (const sub of this.subs) {
      try {
        const r = await this.call("event.subscribe", sub.pattern);
        sub.remoteId = (r.payload as { subscription: number }).subscription;
        this.events.resubscribed(sub.pattern);
      } catch (e) {
        this.events.resubscribeFailed({ pattern: sub.pattern, error: e });
      }
    }
  }

  /** Ends every subscription's iteration (the client closed). */
  endAll(): void {
    for (const sub of this.subs) sub.end();
    this.subs.clear();
  }
}
