import {
  type CborValue,
  encodeCanonical,
  encodeMessage,
  type Grant,
  HEADER_SIZE,
  headSize,
  MessageType,
  ownCopy,
  PIECE_REF_MIN,
  personaWithin,
  writeHead,
  writeHeader,
} from "@kpip/protocol";
import { coveringIds } from "../auth/revocations.js";
import { EVENT_HIGH_WATER_BYTES, LAPSE_SLICE, MAX_PATTERN_SEGMENTS, MAX_PATTERN_STARS } from "../limits.js";
import { OpError } from "../primitives/types.js";
import { type TreeRoots, treeBoundRefusal } from "../resources/lineage.js";
import { SliceSweep } from "../slice-sweep.js";
import { patternSegments, patternStars, TopicIndex } from "./topic-index.js";

/** Where a subscription's events go: a session's connection. */
export interface EventSink {
  readonly id: string;
  readonly persona: string;
  /**
   * When the registration its persona attested under was made (an agent's: its spawn): a kernel
   * event about work begun before it is an earlier holder's of the id, never its (undefined: any).
   */
  readonly registeredAt?: number;
  /** Bytes queued to the peer and not yet read. */
  readonly buffered: number;
  write(frame: Uint8Array): void;
  /** A frame as pieces, written in order without being joined (the pieces are not changed afterwards). */
  writePieces?(pieces: Uint8Array[]): void;
  /** The largest frame body the peer takes (the session's negotiated maxBody). */
  readonly maxBody?: number;
  /**
   * May an EVENT of about `bytes` be queued to the peer now, within what its persona tree (and the
   * kernel) may hold unread? False: it waits in the subscription's queue, within the bus's bounds.
   */
  room?(bytes: number): boolean;
}

interface Queued {
  topic: string;
  data: CborValue | undefined;
  bytes: number;
  /** At most the EVENT body's encoded size (any subscription's), worked out once per emit when a session's maxBody asks. */
  floor?: number;
  /**
   * The EVENT body's entries every subscription's frame shares (`data`, `topic`), canonical
   * CBOR encoded once per emit: only `seq`, `gap` and `subscription` differ between frames.
   */
  shared?: Buffer;
  /** Whether the event has data (`data` itself is let go once it is in `shared`). */
  hasData: boolean;
  /**
   * Whether `data` is an array, map or byte string: queued, such an event waits as its encoding,
   * in memory of its own ({@link hold}), never as the decoded value.
   */
  structured: boolean;
  /** How many subscriptions' queues it waits in: held ({@link hold}) after its emit only if any. */
  waiting: number;
}

/**
 * A subscription's waiting events, first in first out, each operation O(1) amortized: taking
 * from the front of an array moves every other element (Array.prototype.shift), so a queue of
 * ~220,000 small events cost ~0.3 ms per event dropped from it and ~25 s to drain or end.
 */
export class EventQueue<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(x: T): void {
    this.items.push(x);
  }

  /** The oldest, or undefined. */
  peek(): T | undefined {
    return this.items[this.head];
  }

  /** Takes the oldest (undefined when empty); the taken front is let go once it is half the array. */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  /** Takes every event at once (oldest first). */
  clear(): T[] {
    const all = this.items.slice(this.head) as T[];
    this.items = [];
    this.head = 0;
    return all;
  }
}

/** Canonical CBOR of the EVENT body's keys, in canonical order: gap, seq, data, topic, subscription. */
const KEY_GAP = encodeCanonical("gap");
const KEY_SEQ = encodeCanonical("seq");
const KEY_DATA = encodeCanonical("data");
const KEY_TOPIC = encodeCanonical("topic");
const KEY_SUBSCRIPTION = encodeCanonical("subscription");

/**
 * One subscription's EVENT frame (stream = its id), the bytes `encodeMessage` makes of
 * `{subscription, topic, seq, data?, gap?}`, around the event's `shared` entries encoded once:
 * an event reaching 1,024 subscriptions is encoded once, not 1,024 times (PROTOCOL §9.6). As
 * three pieces, the middle one `shared` itself (not copied); their concatenation is the frame.
 */
export function eventFramePieces(
  subscription: number,
  seq: number,
  gap: number | undefined,
  hasData: boolean,
  shared: Buffer,
): [Buffer, Buffer, Buffer] {
  const entries = (gap !== undefined ? 1 : 0) + 3 + (hasData ? 1 : 0);
  const headLength =
    headSize(entries) + (gap !== undefined ? KEY_GAP.length + headSize(gap) : 0) + KEY_SEQ.length + headSize(seq);
  const tail = Buffer.allocUnsafe(KEY_SUBSCRIPTION.length + headSize(subscription));
  writeHead(tail, KEY_SUBSCRIPTION.copy(tail, 0), 0, subscription);
  const head = Buffer.allocUnsafe(HEADER_SIZE + headLength);
  const length = headLength + shared.length + tail.length;
  writeHeader(head, 0, { type: MessageType.EVENT, flags: 0, stream: subscription, length });
  let at = writeHead(head, HEADER_SIZE, 5, entries);
  if (gap !== undefined) {
    at += KEY_GAP.copy(head, at);
    at = writeHead(head, at, 0, gap);
  }
  at += KEY_SEQ.copy(head, at);
  writeHead(head, at, 0, seq);
  return [head, shared, tail];
}

interface Subscription {
  /** Its id on its session (the EVENT frames' stream): counted per session, so it tells nothing of others'. */
  id: number;
  /** When it was made among all the bus's subscriptions (the order a revocation ends them in): never sent. */
  order: number;
  sink: EventSink;
  pattern: string;
  seq: number;
  /** Events waiting for the peer to read (bounded in bytes). */
  queue: EventQueue<Queued>;
  bytes: number;
  /** Events dropped since the last one delivered. */
  dropped: number;
  /** The capability that authorized it: checked before each delivery, a reason (it lapsed) ends the subscription. */
  grant?: Grant;
  /** The persona tree it was counted in (released there, whatever the registry became since). */
  tree: string;
}

export interface EventBusLimits {
  /** Bytes queued on a connection above which events wait in the subscription queue. */
  highWaterBytes: number;
  /** Event bytes waiting per subscription, per session (sink) and in the whole bus. */
  queueBytes: number;
  sessionBytes: number;
  kernelBytes: number;
  /** Subscriptions per session, per persona and in the whole bus. */
  perSession: number;
  perPersona: number;
  total: number;
}

export const DEFAULT_EVENT_LIMITS: EventBusLimits = {
  highWaterBytes: EVENT_HIGH_WATER_BYTES,
  queueBytes: 16 << 20,
  sessionBytes: 32 << 20,
  kernelBytes: 128 << 20,
  perSession: 256,
  perPersona: 1024,
  total: 65_536,
};

/**
 * Who holds part of a shared event-byte bound (a session's, the kernel's): its size now, the
 * subscriber's own side in the same measure, and the subscriptions whose queues it is made of.
 */
interface Holder {
  size(): number;
  readonly mine: number;
  readonly subs: Iterable<Subscription>;
}

/** What one queued event is counted as: its payload's encoded size, its topic, and the frame around them. */
const ENTRY_OVERHEAD = 64;
/**
 * What a queued event's own copy of its encoding costs besides its bytes (a Buffer and its
 * ArrayBuffer: ~300 bytes of heap and allocation measured), counted for events that keep one.
 */
const HELD_COPY_OVERHEAD = 384;

/** The bus's roots before the kernel gave it the registry's: a use is a wiring fault, never a silent other grouping. */
const NO_ROOTS: TreeRoots = {
  of: () => {
    throw new Error("the event bus has no persona roots: the kernel gives it the registry's (useRoots) when it opens the store");
  },
};

/** A session's subscriptions, by their id on it, and the id its next one gets (ids are never reused on a session). */
interface SinkSubs {
  next: number;
  readonly subs: Map<number, Subscription>;
}

/** An upper bound of a value's canonical CBOR size, without encoding it (an 8 MiB payload is not copied to be measured). */
export function cborSizeBound(v: CborValue | undefined, depth = 0): number {
  if (v === null || v === undefined || typeof v === "boolean") return 1;
  if (typeof v === "number" || typeof v === "bigint") return 9;
  if (typeof v === "string") return 9 + Buffer.byteLength(v);
  if (v instanceof Uint8Array) return 9 + v.length;
  if (depth > 64) return 9;
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + cborSizeBound(x, depth + 1), 9);
  let n = 9;
  for (const [k, x] of Object.entries(v)) n += 9 + Buffer.byteLength(k) + cborSizeBound(x, depth + 1);
  return n;
}

/**
 * A lower bound of a value's canonical CBOR size, without encoding it: each item's head is at
 * least one byte, a string or byte string at least its length more.
 */
export function cborSizeFloor(v: CborValue | undefined): number {
  if (v === null || v === undefined || typeof v !== "object") return typeof v === "string" ? 1 + Buffer.byteLength(v) : 1;
  if (v instanceof Uint8Array) return 1 + v.length;
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + cborSizeFloor(x), 1);
  let n = 1;
  for (const [k, x] of Object.entries(v)) n += 1 + Buffer.byteLength(k) + cborSizeFloor(x);
  return n;
}

/**
 * Topic routing. Subscriptions are indexed by pattern, so an emit costs the subscriptions it
 * matches, not all of them. While a session's connection has more than `highWaterBytes`
 * unread, its events wait in the subscription's queue, bounded in bytes per subscription, per
 * session and kernel-wide: past a bound the oldest waiting events of that subscription are
 * dropped (or the new one, when it alone does not fit) and the next delivered event carries
 * `gap` = how many were missed. A subscriber that never reads costs at most those bytes.
 */
export class EventBus {
  /**
   * The order of the next subscription made. Not its id: ids kernel-wide told a persona how many
   * subscriptions and watches every other persona made between two of its own.
   */
  private nextOrder = 1;
  private readonly subs = new Set<Subscription>();
  private readonly bySink = new Map<string, SinkSubs>();
  private readonly byPersona = new Map<string, number>();
  private readonly sinkBytes = new Map<string, number>();
  private readonly index = new TopicIndex<Subscription>();
  /**
   * Subscriptions whose peer reads but whose events wait for room in the persona tree's unread
   * bytes (another session of the tree does not read): by tree, pumped when one of its sessions
   * drains or ends.
   */
  private readonly held = new Map<string, Set<Subscription>>();
  /**
   * Subscriptions by each token id their grant names (its own and its chain's): a revocation
   * covers a grant only through one of them, so it visits these, not every subscription.
   */
  private readonly byToken = new Map<string, Set<Subscription>>();
  /**
   * Event bytes waiting, by persona tree, and the tree's subscriptions with events waiting: when
   * the kernel's bound is full, the tree holding the most gives way ({@link evictLarger}).
   */
  private readonly treeBytes = new Map<string, number>();
  private readonly treeQueued = new Map<string, Set<Subscription>>();
  /** Event bytes waiting in every queue. */
  queuedBytes = 0;
  dropped = 0;
  delivered = 0;
  /** Bytes of EVENT frames encoded (one per subscription an event is delivered to, or found too large for). */
  encodedBytes = 0;
  /** Times an event's data was encoded (a work count, tests): once per emit, not per subscription. */
  dataEncodings = 0;
  /** The operator persona: it sees every persona's kernel events. */
  operator = "";
  /** The top of each persona's tree (maxSubscriptionsPerPersona counts it): {@link useRoots}. */
  private roots: TreeRoots = NO_ROOTS;
  /** Why a capability no longer authorizes anything (revoked, expired), or undefined: set by the kernel. */
  lapsed: ((g: Grant) => string | undefined) | undefined;
  /** Subscriptions a revocation fan-out ({@link endRevoked}) checked: a work count (tests), not a time. */
  revocationVisits = 0;

  /** The housekeeping's lapse sweep: a subscription ended before its turn is skipped. */
  private readonly lapseSweep = new SliceSweep<Subscription>(LAPSE_SLICE, (s) => s.grant !== undefined && this.subs.has(s));

  constructor(private readonly limits: EventBusLimits = DEFAULT_EVENT_LIMITS) {}

  /**
   * The roots subscriptions are counted by: the registry's, which the kernel has once its store is
   * open (the bus is built before). Until then a subscription is refused, never counted by another grouping.
   */
  useRoots(roots: TreeRoots): void {
    this.roots = roots;
  }

  /**
   * A new subscription; RESOURCE past the per-session, per-persona or kernel-wide count. With the
   * `grant` that authorized it, it lives as long as that capability: each matching emit first asks
   * {@link lapsed} whether it may still receive, and a reason (text) ends the subscription
   * instead, with a last EVENT whose `ended` field is that reason.
   * SEMANTIC for a pattern of more than MAX_PATTERN_SEGMENTS segments or MAX_PATTERN_STARS `*`
   * segments: checked here, so every op that subscribes has the bounds.
   */
  subscribe(sink: EventSink, pattern: string, grant?: Grant): number {
    const L = this.limits;
    // A segment is an index node and a step of every emit that reaches it: the bound keeps both small.
    const segs = patternSegments(pattern);
    if (segs > MAX_PATTERN_SEGMENTS)
      throw new OpError(
        "SEMANTIC",
        `a subscription pattern has at most ${MAX_PATTERN_SEGMENTS} segments after scheme://; this one has ${segs}`,
      );
    // Each `*` may double the index nodes an emit reaches at a depth: a few, so the walk is bounded whatever the count.
    const stars = patternStars(pattern);
    if (stars > MAX_PATTERN_STARS)
      throw new OpError(
        "SEMANTIC",
        `a subscription pattern has at most ${MAX_PATTERN_STARS} '*' segments; this one has ${stars} (use '**' for any depth)`,
      );
    const mine = this.bySink.get(sink.id)?.subs.size ?? 0;
    if (mine >= L.perSession)
      throw new OpError("RESOURCE", `this session already has ${mine} subscriptions (maxSubscriptionsPerSession)`);
    // Counted over the persona's whole tree: its agents and sub-personas hold no subscriptions of their own.
    const tree = this.roots.of(sink.persona);
    const persona = this.byPersona.get(tree) ?? 0;
    if (persona >= L.perPersona)
      throw new OpError(
        "RESOURCE",
        treeBoundRefusal(tree, sink.persona, {
          held: (max, bound) => `already has ${persona} subscriptions (${bound} ${max})`,
          what: "subscriptions",
          bound: "maxSubscriptionsPerPersona",
          limit: L.perPersona,
        }),
      );
    if (this.subs.size >= L.total)
      throw new OpError("RESOURCE", `the kernel already holds ${this.subs.size} subscriptions (maxSubscriptions)`);
    let own = this.bySink.get(sink.id);
    if (!own) {
      own = { next: 1, subs: new Map() };
      this.bySink.set(sink.id, own);
    }
    const id = own.next++;
    const order = this.nextOrder++;
    const s: Subscription = { id, order, sink, pattern, seq: 0, queue: new EventQueue(), bytes: 0, dropped: 0, tree };
    this.subs.add(s);
    this.index.add(s);
    if (grant) {
      s.grant = grant;
      coveringIds(grant, (t) => {
        let subs = this.byToken.get(t);
        if (!subs) {
          subs = new Set();
          this.byToken.set(t, subs);
        }
        subs.add(s);
        return false;
      });
    }
    own.subs.set(id, s);
    this.byPersona.set(tree, persona + 1);
    return id;
  }

  /** The pattern of one of this session's subscriptions (undefined: none with that id). */
  patternOf(sink: EventSink, id: number): string | undefined {
    return this.bySink.get(sink.id)?.subs.get(id)?.pattern;
  }

  /** Ends a subscription; only its own session may end it. */
  unsubscribe(sink: EventSink, id: number): boolean {
    const own = this.bySink.get(sink.id);
    const s = own?.subs.get(id);
    if (!s) return false;
    this.end(s);
    own?.subs.delete(id);
    return true;
  }

  /** Ends every subscription of a session (it closed). */
  dropSink(sinkId: string): void {
    for (const s of this.bySink.get(sinkId)?.subs.values() ?? []) this.end(s);
    this.bySink.delete(sinkId);
    this.sinkBytes.delete(sinkId);
  }

  subscriptionCount(): number {
    return this.subs.size;
  }

  /**
   * Delivers an event to every matching subscription; returns how many got it. With `owner`
   * (a kernel event about that persona) only subscribers it is within, and the operator, get it;
   * with `began` (when the work it is about began), only those registered no later than that.
   */
  emit(topic: string, data: CborValue | undefined, owner?: string, began?: number, reached?: (sink: EventSink) => void): number {
    const matched = this.index.match(topic);
    if (matched.length === 0) return 0;
    const structured = typeof data === "object" && data !== null;
    const bytes = cborSizeBound(data) + topic.length + ENTRY_OVERHEAD + (structured ? HELD_COPY_OVERHEAD : 0);
    // One entry for every subscription it reaches: what is worked out about it is worked out once.
    const entry: Queued = { topic, data, bytes, hasData: data !== undefined, structured, waiting: 0 };
    let n = 0;
    try {
      n = this.deliver(matched, entry, owner, began, reached);
    } finally {
      // What still waits after the pumps is held (copied once); what every subscriber got at
      // once is not: a copy per structured event delivered was the emit's largest cost.
      if (entry.waiting > 0) this.hold(entry);
    }
    return n;
  }

  /** {@link emit}'s delivery of `entry` to each matching subscription: how many it reached. */
  private deliver(
    matched: Iterable<Subscription>,
    entry: Queued,
    owner: string | undefined,
    began: number | undefined,
    reached: ((sink: EventSink) => void) | undefined,
  ): number {
    let n = 0;
    for (const s of matched) {
      // Ended during this emit (a write before it dropped its session): nothing is queued to it.
      if (!this.subs.has(s)) continue;
      if (owner !== undefined && s.sink.persona !== this.operator) {
        if (!personaWithin(owner, s.sink.persona)) continue;
        // A persona id removed and registered again (an agent's name spawned again): the end of
        // work the earlier holder began, killed at its removal, comes after; it is not the new holder's.
        if (began !== undefined && s.sink.registeredAt !== undefined && s.sink.registeredAt > began) continue;
      }
      const lapsed = this.lapsedOf(s);
      if (lapsed !== undefined) {
        this.lapse(s, lapsed);
        continue;
      }
      n++;
      reached?.(s.sink);
      this.enqueue(s, entry);
      this.pump(s);
    }
    return n;
  }

  /**
   * Starts ending every subscription whose capability lapsed (expired, its key retired, or
   * revoked), {@link LAPSE_SLICE} a turn of the event loop (each housekeeping tick): one pass
   * over 60,000 subscriptions held the kernel's thread 11–15 ms at every tick, at a persona's
   * will. False if the last sweep is still under way (the next tick asks again).
   */
  sweepLapsed(): boolean {
    return this.lapseSweep.run(this.subs.values(), (s) => {
      const lapsed = this.lapsedOf(s);
      if (lapsed !== undefined) this.lapse(s, lapsed);
    });
  }

  /** No more lapse sweeps (the kernel is stopping). */
  stopSweeps(): void {
    this.lapseSweep.stop();
  }

  /**
   * Ends, at once, every subscription a revocation of `ids` ended: revocation takes effect on
   * subscriptions when it is made, not at their next event. Only those whose grant names one of
   * the ids are visited (one revocation visited all 60,000 subscriptions: 11 ms of the kernel's
   * thread, at will); undefined ids (not known) visit every subscription.
   */
  endRevoked(ids: readonly string[] | undefined): number {
    if (ids === undefined) return this.endWhere(this.subs.values(), true);
    const reached = new Set<Subscription>();
    for (const id of ids) for (const s of this.byToken.get(id) ?? []) reached.add(s);
    // In subscription order, as a visit of them all ends them.
    return this.endWhere(
      [...reached].sort((a, b) => a.order - b.order),
      true,
    );
  }

  private endWhere(subs: Iterable<Subscription>, revocation: boolean): number {
    let n = 0;
    for (const s of [...subs]) {
      if (s.grant === undefined) continue;
      // Ended by an earlier lapse in this pass (its session's write failed, say): not ended twice.
      if (!this.subs.has(s)) continue;
      if (revocation) this.revocationVisits++;
      const lapsed = this.lapsedOf(s);
      if (lapsed === undefined) continue;
      this.lapse(s, lapsed);
      n++;
    }
    return n;
  }

  /** Why the subscription's capability no longer authorizes it, or undefined. */
  private lapsedOf(s: Subscription): string | undefined {
    return s.grant && this.lapsed ? this.lapsed(s.grant) : undefined;
  }

  /** Sends a notice straight to one session (e.g. "your token was revoked"), on subscription 0. */
  notify(sink: EventSink, topic: string, data: CborValue): void {
    sink.write(encodeMessage({ type: "EVENT", body: { subscription: 0, topic, seq: 0, data } }, 0));
  }

  /** A session's connection drained: deliver what waited. */
  drained(sinkId: string): void {
    for (const s of this.bySink.get(sinkId)?.subs.values() ?? []) this.pump(s);
  }

  /**
   * What `persona`'s tree holds unread went down (one of its sessions drained or ended): its
   * subscriptions that waited for room are pumped.
   */
  roomIn(persona: string): void {
    if (this.held.size === 0 || persona === "") return;
    const tree = this.roots.of(persona);
    const subs = this.held.get(tree);
    if (!subs) return;
    this.held.delete(tree);
    for (const s of subs) if (this.subs.has(s)) this.pump(s);
  }

  /** Ends a subscription whose guard refused, telling its session why on the subscription itself. */
  private lapse(s: Subscription, reason: string): void {
    this.end(s);
    this.bySink.get(s.sink.id)?.subs.delete(s.id);
    const body = { subscription: s.id, topic: s.pattern, seq: s.seq + s.dropped + 1, ended: reason.slice(0, 1024) };
    s.sink.write(encodeMessage({ type: "EVENT", body }, s.id));
  }

  private end(s: Subscription): void {
    this.subs.delete(s);
    this.index.remove(s);
    if (s.grant)
      coveringIds(s.grant, (t) => {
        const subs = this.byToken.get(t);
        if (subs?.delete(s) && subs.size === 0) this.byToken.delete(t);
        return false;
      });
    this.unhold(s);
    // All at once: its bytes leave every count together.
    if (s.queue.length) {
      s.queue.clear();
      this.count(s, -s.bytes);
    }
    const tree = s.tree;
    const n = (this.byPersona.get(tree) ?? 1) - 1;
    if (n <= 0) this.byPersona.delete(tree);
    else this.byPersona.set(tree, n);
  }

  /**
   * Queues an event within the byte bounds: past its subscription's, that subscription's oldest
   * are dropped; the session's and the kernel's are shared, so there the session's subscription
   * (then the persona tree) holding the most gives way first, while it holds more than this one
   * would with the event: another persona flooding a topic cannot take them from the rest.
   */
  private enqueue(s: Subscription, e: Queued): void {
    const L = this.limits;
    const fitsOwn = () => s.bytes + e.bytes <= L.queueBytes;
    const fitsSession = () => (this.sinkBytes.get(s.sink.id) ?? 0) + e.bytes <= L.sessionBytes;
    const fitsKernel = () => this.queuedBytes + e.bytes <= L.kernelBytes;
    // A reading peer with nothing waiting gets the event whatever its size, if its tree has room for
    // it: written at once, never counted as waiting.
    if (s.queue.length === 0 && this.ready(s, e.bytes)) {
      this.send(s, e);
      return;
    }
    const dropOwn = (fits: () => boolean) => {
      while (!fits() && s.queue.length) {
        this.take(s);
        this.miss(s);
      }
    };
    dropOwn(fitsOwn);
    // Only a holder below its even share looks for a larger one: subscriptions of a session flooded
    // alike each drop their own oldest without a scan of the session (0.4 → 2.3 ms an emit to 256).
    const sinkBytes = this.sinkBytes.get(s.sink.id) ?? 0;
    const subsOfSink = this.bySink.get(s.sink.id)?.subs.size ?? 1;
    if (fitsOwn() && !fitsSession() && (s.bytes + e.bytes) * subsOfSink < sinkBytes)
      this.evictLarger(e.bytes, fitsSession, (b) => this.largestInSession(s, b));
    dropOwn(fitsSession);
    const treeBytes = this.treeBytes.get(s.tree) ?? 0;
    if (
      fitsOwn() &&
      fitsSession() &&
      !fitsKernel() &&
      (treeBytes + e.bytes) * Math.max(1, this.treeBytes.size) < this.queuedBytes
    )
      this.evictLarger(e.bytes, fitsKernel, (b) => this.largestTree(s, b));
    dropOwn(fitsKernel);
    if (!fitsOwn() || !fitsSession() || !fitsKernel()) {
      this.miss(s);
      return;
    }
    // Held at the end of its emit if it still waits then (the pump after this may send it at once).
    e.waiting++;
    s.queue.push(e);
    this.count(s, e.bytes);
  }

  /**
   * An event about to wait in a queue keeps its encoding, in memory of its own, and lets go of its
   * decoded value (once per event, whatever the subscriptions it waits for). Kept decoded, it was
   * counted at its encoded size but held more: a byte string in it is a view of the frame the
   * emit came in — a one-byte one held a whole 1 MiB REQUEST (padded with an unknown field),
   * ~20,000× its count, a kernel's memory gone in a few hundred emits — and an array of 3,900
   * nulls ~9× its count in heap. A small encoding is copied out of the shared allocation pool,
   * whose 8 KiB slab one queued event would otherwise keep.
   */
  private hold(e: Queued): void {
    if (!e.structured) return;
    e.structured = false;
    e.shared = ownCopy(this.sharedOf(e)) as Buffer;
  }

  /**
   * Until `fits`, drops the oldest waiting events of the holder `largest` names (each told of it
   * as a gap on its subscription) while it holds more than `s`'s side would with `bytes` more, so
   * two never take turns evicting each other; then the next such holder. A holder is drained down
   * to that mark at once and not named again: a scan per holder, not per event dropped.
   */
  private evictLarger(bytes: number, fits: () => boolean, largest: (bytes: number) => Holder | undefined): void {
    for (let top = largest(bytes); top !== undefined && !fits(); top = largest(bytes)) {
      const over = (h: Holder) => h.size() > h.mine + bytes;
      for (const v of top.subs) {
        while (!fits() && v.queue.length && over(top)) {
          this.take(v);
          this.miss(v);
        }
        if (fits() || !over(top)) break;
      }
      // Everything it holds is in its subscriptions' queues: it cannot still be over the mark.
      if (!fits() && over(top)) return;
    }
  }

  /** The subscription of `s`'s session holding the most waiting bytes, if more than `s` would with `bytes` more. */
  private largestInSession(s: Subscription, bytes: number): Holder | undefined {
    let top: Subscription | undefined;
    for (const v of this.bySink.get(s.sink.id)?.subs.values() ?? [])
      if (v !== s && v.bytes > (top?.bytes ?? s.bytes + bytes)) top = v;
    if (top === undefined) return undefined;
    const v = top;
    return { size: () => v.bytes, mine: s.bytes, subs: [v] };
  }

  /** The persona tree holding the most waiting bytes, if another than `s`'s holding more than it would with `bytes` more. */
  private largestTree(s: Subscription, bytes: number): Holder | undefined {
    const mine = this.treeBytes.get(s.tree) ?? 0;
    let top: string | undefined;
    let most = mine + bytes;
    for (const [t, n] of this.treeBytes)
      if (n > most) {
        top = t;
        most = n;
      }
    if (top === undefined) return undefined;
    const t = top;
    return { size: () => this.treeBytes.get(t) ?? 0, mine, subs: this.treeQueued.get(t) ?? [] };
  }

  private miss(s: Subscription): void {
    s.dropped++;
    this.dropped++;
  }

  private count(s: Subscription, bytes: number): void {
    const had = s.bytes > 0;
    s.bytes += bytes;
    this.queuedBytes += bytes;
    this.sinkBytes.set(s.sink.id, (this.sinkBytes.get(s.sink.id) ?? 0) + bytes);
    const tree = (this.treeBytes.get(s.tree) ?? 0) + bytes;
    if (tree > 0) this.treeBytes.set(s.tree, tree);
    else this.treeBytes.delete(s.tree);
    if (had === s.bytes > 0) return;
    let queued = this.treeQueued.get(s.tree);
    if (s.bytes > 0) {
      if (!queued) {
        queued = new Set();
        this.treeQueued.set(s.tree, queued);
      }
      queued.add(s);
    } else if (queued?.delete(s) && queued.size === 0) this.treeQueued.delete(s.tree);
  }

  private take(s: Subscription): Queued {
    const e = s.queue.shift() as Queued;
    e.waiting--;
    this.count(s, -e.bytes);
    return e;
  }

  /**
   * May the next event (of `bytes`) be written to the subscription's peer now? Not while its
   * connection holds more than the high-water mark; nor while its persona tree's sessions hold
   * what they may unread: one frame to each of a tree's 64 sessions that stopped reading held
   * up to 64 × maxBody (1 GiB) per emit, counted nowhere. Held, it is pumped when the tree has room.
   */
  private ready(s: Subscription, bytes: number): boolean {
    if (s.sink.buffered > this.limits.highWaterBytes) return false;
    if (s.sink.room === undefined || s.sink.room(bytes)) return true;
    let set = this.held.get(s.tree);
    if (!set) {
      set = new Set();
      this.held.set(s.tree, set);
    }
    set.add(s);
    return false;
  }

  /** At most the EVENT body's encoded size: worked out once per event, whatever the subscriptions it reaches. */
  private floorOf(e: Queued): number {
    if (e.floor === undefined) e.floor = e.shared ? e.shared.length : cborSizeFloor(e.data) + Buffer.byteLength(e.topic);
    return e.floor;
  }

  /** The entries every subscription's frame of this event shares, encoded at the first frame made of it. */
  private sharedOf(e: Queued): Buffer {
    if (e.shared === undefined) {
      const topic = encodeCanonical(e.topic);
      if (!e.hasData) e.shared = Buffer.concat([KEY_TOPIC, topic]);
      else {
        this.dataEncodings++;
        e.shared = Buffer.concat([KEY_DATA, encodeCanonical(e.data as CborValue), KEY_TOPIC, topic]);
      }
      // Held once, as bytes: the decoded value is no longer needed by any frame.
      e.data = undefined;
    }
    return e.shared;
  }

  private unhold(s: Subscription): void {
    const set = this.held.get(s.tree);
    if (set?.delete(s) && set.size === 0) this.held.delete(s.tree);
  }

  private pump(s: Subscription): void {
    while (s.queue.length && this.ready(s, (s.queue.peek() as Queued).bytes)) this.send(s, this.take(s));
  }

  /** Writes one event to the subscription's peer (or counts it missed when the session cannot take it). */
  private send(s: Subscription, e: Queued): void {
    const max = s.sink.maxBody;
    // Surely larger than the session takes (PROTOCOL §4.5): missed without being encoded. Encoded
    // only to be dropped, one 15 MiB event to 1,024 subscriptions of sessions with a small
    // maxBody held the kernel's thread for 18 s.
    if (max !== undefined && this.floorOf(e) > max) {
      this.miss(s);
      return;
    }
    const [seqBefore, droppedBefore] = [s.seq, s.dropped];
    let gap: number | undefined;
    s.seq++;
    if (s.dropped) {
      gap = s.dropped;
      s.seq += s.dropped;
      s.dropped = 0;
    }
    const pieces = eventFramePieces(s.id, s.seq, gap, e.hasData, this.sharedOf(e));
    const length = pieces[0].length + pieces[1].length + pieces[2].length;
    this.encodedBytes += length;
    if (max !== undefined && length - HEADER_SIZE > max) {
      // Larger than the session takes (PROTOCOL §4.5): missed, and told as a gap with the next one.
      [s.seq, s.dropped] = [seqBefore, droppedBefore];
      this.miss(s);
      return;
    }
    // A large event's bytes go out by reference, not copied into each subscription's frame.
    if (s.sink.writePieces && pieces[1].length >= PIECE_REF_MIN) s.sink.writePieces(pieces);
    else s.sink.write(Buffer.concat(pieces, length));
    this.delivered++;
  }
}
