import { eventSubscribe, eventUnsubscribe, type KEvent, storageUnwatch, storageWatch } from "@kpip/protocol";
import { kernelNumber } from "./answer-fields.js";
import { EarlyHold } from "./early-hold.js";
import { type OpCall, opCall } from "./op-call.js";
import type { CallFn, CallOptions } from "./options.js";
import { ownBytes } from "./own-bytes.js";
import { DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_EVENTS, type SubscribeOptions, Subscription } from "./subscription.js";

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
 * Most EVENTs held for subscription ids not known yet ({@link Subscriptions.dispatch}); past it
 * the oldest held are dropped (the kernel's `seq` shows the hole).
 */
export const EARLY_EVENTS = DEFAULT_BUFFER_EVENTS;
/** And at most this many of their bytes (a kernel, or one posing as it, may send frames of up to maxBody). */
export const EARLY_BYTES = DEFAULT_BUFFER_BYTES;

/** An EVENT held until the subscribe call under way that made its id answers. */
interface Early {
  e: KEvent;
  size: number;
  /** The connection it came on: an id names a subscription of one session only. */
  conn: number;
}

/** What the set knows of one subscription besides the reader's side. */
interface Held {
  ops: SubscribeOps;
  /** The connection (its number) on which the kernel made the subscription `remoteId` names. */
  conn: number;
  /** A re-subscription is under way: another would leave one of the two in the kernel, heard by no one. */
  busy: boolean;
  /** A reconnect came while it was under way (if it fails, it is tried once more on the new connection). */
  redo: boolean;
}

/**
 * A client's event subscriptions and storage watches: EVENT frames go to the one the kernel's
 * id names, and after a reconnect every pattern is subscribed again (events emitted while away
 * are not replayed). A subscription or watch the kernel ended because the capability that
 * authorized it lapsed (revoked, or an expired token that was refreshed) is made again with the
 * tokens held now; when that is refused too, its iteration ends. A re-subscription after a
 * reconnect that is refused ends its iteration with the refusal (the reader's next call throws
 * it, `Subscription.error` keeps it). One re-subscription at a time
 * per subscription: an end and a reconnect that overlap make one, not two.
 */
export class Subscriptions {
  private readonly subs = new Map<Subscription, Held>();
  private readonly op: OpCall;
  /** Subscribe calls under way (first ones and re-subscriptions). */
  private opening = 0;
  /**
   * EVENTs for ids no subscription has yet, while subscribe calls are under way: the kernel makes
   * a subscription live when its op runs and answers after its record commits, so an event
   * emitted meanwhile comes first; and one right behind the answer, in the same read, comes
   * before the call's awaiting code has learnt the id. Dropped, a subscriber's first events were
   * lost while the emitter was told they were delivered.
   */
  private readonly early = new EarlyHold<Early>();

  constructor(
    call: CallFn,
    /** Whether an unsubscribe can reach the kernel now. */
    private readonly ready: () => boolean,
    private readonly events: ResubscribeEvents,
    /**
     * The number of the connection now (it grows by one at each). An answer is handled in the
     * turn it arrives in, before any later connection is made: read then, it names the connection
     * that answered.
     */
    private readonly connection: () => number,
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
    this.opening++;
    try {
      sub.remoteId = await ops.subscribe(this.op, pattern, callOpts);
      this.subs.set(sub, { ops, conn: this.connection(), busy: false, redo: false });
      this.deliverEarly(sub.remoteId);
    } finally {
      this.settled();
    }
    return sub;
  }

  /** The EVENTs that came for `id` before its subscribe call answered, now that a subscription has it. */
  private deliverEarly(id: number): void {
    if (!this.early.some((x) => x.e.subscription === id)) return;
    const held = this.early.take((x) => x.e.subscription === id);
    const conn = this.connection();
    for (const x of held) if (x.conn === conn) this.dispatch(x.e, x.size);
  }

  /** A subscribe call ended: with none under way, no EVENT of an unknown id is held any more (its subscription is gone). */
  private settled(): void {
    if (--this.opening > 0) return;
    this.early.clear();
  }

  /** An EVENT (`size`: its frame's body size): to its subscription (0 is a kernel notice no subscription asked for). */
  dispatch(e: KEvent, size = 0): void {
    if (e.subscription === 0) return;
    const conn = this.connection();
    let known = false;
    for (const [sub, held] of this.subs) {
      // An id from an earlier session names nothing now (the kernel may have given it to another).
      if (sub.remoteId !== e.subscription || held.conn !== conn) continue;
      known = true;
      // The kernel ended it (the capability that authorized it lapsed): make it again with the tokens held now.
      if (e.ended !== undefined) {
        sub.remoteId = 0;
        void this.again(sub, held);
      } else sub.push(e, size);
    }
    if (known || this.opening === 0 || size > EARLY_BYTES) return;
    // Perhaps the id a subscribe call under way is about to learn: held until it does. Full, the
    // oldest held go first: with subscribes overlapping (the hold is cleared only once none is
    // under way), late events of an id just unsubscribed filled it, and the first events of the
    // subscription being made were the ones dropped.
    while (this.early.length > 0 && (this.early.length >= EARLY_EVENTS || this.early.bytes + size > EARLY_BYTES))
      this.early.dropOldest();
    if (e.data !== undefined) e.data = ownBytes(e.data);
    this.early.push({ e, size, conn });
  }

  /** After a reconnect: subscribe again to every pattern. */
  async resubscribe(): Promise<void> {
    const conn = this.connection();
    for (const [sub, held] of this.subs) {
      // A newer connection came while this loop awaited: its own loop makes what is left there.
      // Went on, this one made a subscription that loop had already made again: a second one in
      // the kernel, counted against the persona's bound, its events delivered to no one.
      if (this.connection() !== conn) return;
      // Made on this connection already (another path made it again first).
      if (held.conn === conn) continue;
      // One under way (a lost link's call is sent again on the new connection) makes it there.
      if (held.busy) held.redo = true;
      else await this.again(sub, held);
    }
  }

  private async again(sub: Subscription, held: Held): Promise<void> {
    if (held.busy) return;
    held.busy = true;
    this.opening++;
    try {
      for (;;) {
        held.redo = false;
        try {
          const id = await held.ops.subscribe(this.op, sub.pattern);
          const conn = this.connection();
          // Closed meanwhile: the kernel's new subscription would be held for no one.
          if (this.subs.get(sub) !== held) {
            if (this.ready()) await held.ops.unsubscribe(this.op, sub.pattern, id).catch(() => {});
            return;
          }
          sub.remoteId = id;
          held.conn = conn;
          this.deliverEarly(id);
          this.events.resubscribed(sub.pattern);
          return;
        } catch (e) {
          if (this.subs.get(sub) !== held) return;
          // It failed with the link it was sent on: try once on the connection made since.
          if (held.redo && held.conn !== this.connection()) continue;
          this.events.resubscribeFailed({ pattern: sub.pattern, error: e });
          // Not made again, it is over: its reader learns it. Kept (as it once was after a refused
          // re-subscription at a reconnect), it waited for events no kernel would send, for good.
          // One the kernel ended (its EVENT said why) ends as its `ended` said; one lost with
          // the connection ends with the refusal, thrown to its reader.
          this.subs.delete(sub);
          if (sub.remoteId === 0) sub.end();
          else sub.end(e);
          return;
        }
      }
    } finally {
      held.busy = false;
      this.settled();
    }
  }

  /** Ends every subscription's iteration (the client closed). */
  endAll(): void {
    for (const sub of this.subs.keys()) sub.end();
    this.subs.clear();
  }
}
