import { eventSubscribe, eventUnsubscribe, type KEvent, storageUnwatch, storageWatch } from "@kpip/protocol";
import { kernelNumber } from "./answer-fields.js";
import { type OpCall, opCall } from "./op-call.js";
import type { CallFn, CallOptions } from "./options.js";
import { DEFAULT_BUFFER_EVENTS, type SubscribeOptions, Subscription } from "./subscription.js";

/** Where the subscription set reports a reconnect's outcome (the client's events). */
export interface ResubscribeEvents {
  resubscribed(pattern: string): void;
  resubscribeFailed(info: { pattern: string; error: unknown }): void;
}

/** How a kind of subscription is made and ended: event topics, or storage watches. */
interface SubscribeOps {
  /** Makes one on `pattern`; resolves with the kernel's id for it. */
  subscribe(op: OpCall, pattern: string, opts?: CallOptions): Promise<number>;
  unsubscribe(op: OpCall, pattern: string, id: number): Promise<unknown>;
}

const EVENTS: SubscribeOps = {
  subscribe: async (op, pattern, opts) =>
    kernelNumber((await op(eventSubscribe, pattern, {}, opts)).payload?.subscription, "event.subscribe's subscription"),
  unsubscribe: (op, pattern, id) => op(eventUnsubscribe, pattern, { subscription: id }),
};
const WATCHES: SubscribeOps = {
  subscribe: async (op, pattern, opts) =>
    kernelNumber((await op(storageWatch, pattern, {}, opts)).payload?.subscription, "storage.watch's subscription"),
  unsubscribe: (op, pattern, id) => op(storageUnwatch, pattern, { subscription: id }),
};

/**
 * A client's event subscriptions and storage watches: EVENT frames go to the one the kernel's
 * id names, and after a reconnect every pattern is subscribed again (events emitted while away
 * are not replayed). A subscription or watch the kernel ended because the capability that
 * authorized it lapsed (revoked, or an expired token that was refreshed) is made again with the
 * tokens held now; when that is refused too, its iteration ends.
 */
export class Subscriptions {
  private readonly subs = new Map<Subscription, SubscribeOps>();
  private readonly op: OpCall;

  constructor(
    call: CallFn,
    /** Whether an unsubscribe can reach the kernel now. */
    private readonly ready: () => boolean,
    private readonly events: ResubscribeEvents,
  ) {
    this.op = opCall(call);
  }

  /** Subscribes to topic:// names matching `pattern`; see {@link KernelClient.subscribe}. */
  subscribe(pattern: string, opts: SubscribeOptions = {}): Promise<Subscription> {
    return this.open(EVENTS, pattern, opts);
  }

  /** Watches objects matching an obj:// pattern; see {@link KernelClient.watch}. */
  watch(pattern: string, opts: SubscribeOptions = {}): Promise<Subscription> {
    return this.open(WATCHES, pattern, opts);
  }

  private async open(ops: SubscribeOps, pattern: string, opts: SubscribeOptions): Promise<Subscription> {
    const { bufferSize, bufferBytes, ...callOpts } = opts;
    const sub = new Subscription(
      pattern,
      bufferSize ?? DEFAULT_BUFFER_EVENTS,
      async (s) => {
        this.subs.delete(s);
        if (this.ready()) await ops.unsubscribe(this.op, s.pattern, s.remoteId).catch(() => {});
      },
      bufferBytes,
    );
    sub.remoteId = await ops.subscribe(this.op, pattern, callOpts);
    this.subs.set(sub, ops);
    return sub;
  }

  /** An EVENT (`size`: its frame's body size): to its subscription (0 is a kernel notice no subscription asked for). */
  dispatch(e: KEvent, size = 0): void {
    if (e.subscription === 0) return;
    for (const [sub, ops] of this.subs) {
      if (sub.remoteId !== e.subscription) continue;
      // The kernel ended it (the capability that authorized it lapsed): make it again with the tokens held now.
      if (e.ended !== undefined) {
        sub.remoteId = 0;
        void this.again(sub, ops);
      } else sub.push(e, size);
    }
  }

  /** After a reconnect: subscribe again to every pattern. */
  async resubscribe(): Promise<void> {
    for (const [sub, ops] of this.subs) await this.again(sub, ops);
  }

  private async again(sub: Subscription, ops: SubscribeOps): Promise<void> {
    try {
      sub.remoteId = await ops.subscribe(this.op, sub.pattern);
      this.events.resubscribed(sub.pattern);
    } catch (e) {
      this.events.resubscribeFailed({ pattern: sub.pattern, error: e });
      // A subscription the kernel ended and will not make again is over: its reader learns it.
      if (sub.remoteId === 0) {
        this.subs.delete(sub);
        sub.end();
      }
    }
  }

  /** Ends every subscription's iteration (the client closed). */
  endAll(): void {
    for (const sub of this.subs.keys()) sub.end();
    this.subs.clear();
  }
}
