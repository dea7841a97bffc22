import { type CborValue, encodeMessage, matchTarget, personaWithin } from "@kpip/protocol";

/** Where a subscription's events go: a session's connection. */
export interface EventSink {
  readonly id: string;
  readonly persona: string;
  /** Bytes queued to the peer and not yet read. */
  readonly buffered: number;
  write(frame: Uint8Array): void;
}

interface Subscription {
  id: number;
  sink: EventSink;
  pattern: string;
  seq: number;
  /** Events waiting for the peer to read (bounded). */
  queue: { topic: string; data: CborValue | undefined }[];
  /** Events dropped since the last one delivered. */
  dropped: number;
}

export interface EventBusLimits {
  /** Events held per subscription while its peer is not reading; older ones are dropped past this. */
  queueMax: number;
  /** Bytes queued on a connection above which events wait in the subscription queue. */
  highWaterBytes: number;
}

/**
 * Topic routing. Each subscription has a bounded queue: while its session's connection has
 * more than `highWaterBytes` unread, events wait there; past `queueMax` the oldest are dropped
 * and the next delivered event carries `gap` = how many were missed. A subscriber that never
 * reads therefore costs at most queueMax events, and others keep receiving.
 */
export class EventBus {
  private nextId = 1;
  private readonly subs = new Map<number, Subscription>();
  private readonly bySink = new Map<string, Set<number>>();
  dropped = 0;
  delivered = 0;
  /** The operator persona: it sees every persona's kernel events. */
  operator = "";

  constructor(private readonly limits: EventBusLimits = { queueMax: 1000, highWaterBytes: 1 << 20 }) {}

  subscribe(sink: EventSink, pattern: string): number {
    const id = this.nextId++;
    this.subs.set(id, { id, sink, pattern, seq: 0, queue: [], dropped: 0 });
    let set = this.bySink.get(sink.id);
    if (!set) {
      set = new Set();
      this.bySink.set(sink.id, set);
    }
    set.add(id);
    return id;
  }

  /** Ends a subscription; only its own session may end it. */
  unsubscribe(sink: EventSink, id: number): boolean {
    const s = this.subs.get(id);
    if (!s || s.sink.id !== sink.id) return false;
    this.subs.delete(id);
    this.bySink.get(sink.id)?.delete(id);
    return true;
  }

  /** Ends every subscription of a session (it closed). */
  dropSink(sinkId: string): void {
    for (const id of this.bySink.get(sinkId) ?? []) this.subs.delete(id);
    this.bySink.delete(sinkId);
  }

  subscriptionCount(): number {
    return this.subs.size;
  }

  /**
   * Delivers an event to every matching subscription; returns how many matched. With `owner`
   * (a kernel event about that persona) only subscribers it is within, and the operator, get it.
   */
  emit(topic: string, data: CborValue | undefined, owner?: string): number {
    let n = 0;
    for (const s of this.subs.values()) {
      if (!matchTarget(s.pattern, topic)) continue;
      if (owner !== undefined && s.sink.persona !== this.operator && !personaWithin(owner, s.sink.persona)) continue;
      n++;
      s.queue.push({ topic, data });
      if (s.queue.length > this.limits.queueMax) {
        s.queue.shift();
        s.dropped++;
        this.dropped++;
      }
      this.pump(s);
    }
    return n;
  }

  /** Sends a notice straight to one session (e.g. "your token was revoked"), on subscription 0. */
  notify(sink: EventSink, topic: string, data: CborValue): void {
    sink.write(encodeMessage({ type: "EVENT", body: { subscription: 0, topic, seq: 0, data } }, 0));
  }

  /** A session's connection drained: deliver what waited. */
  drained(sinkId: string): void {
    for (const id of this.bySink.get(sinkId) ?? []) {
      const s = this.subs.get(id);
      if (s) this.pump(s);
    }
  }

  private pump(s: Subscription): void {
    while (s.queue.length && s.sink.buffered <= this.limits.highWaterBytes) {
      const e = s.queue.shift() as { topic: string; data: CborValue | undefined };
      const body: { subscription: number; topic: string; seq: number; data?: CborValue; gap?: number } = {
        subscription: s.id,
        topic: e.topic,
        seq: ++s.seq,
      };
      if (e.data !== undefined) body.data = e.data;
      if (s.dropped) {
        body.gap = s.dropped;
        s.seq += s.dropped;
        body.seq = s.seq;
        s.dropped = 0;
      }
      s.sink.write(encodeMessage({ type: "EVENT", body }, s.id));
      this.delivered++;
    }
  }
}
