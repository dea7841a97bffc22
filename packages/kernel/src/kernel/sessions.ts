import { TICK_SLICE_SESSIONS } from "../limits.js";
import type { QueuedTotals } from "../pipeline/answer-budget.js";
import { FIRST_SEGMENT, forEachInLineage, type TreeRoots } from "../resources/lineage.js";
import type { Connection } from "../session/connection.js";
import type { SessionCounts } from "../session/counts.js";
import type { SessionRefusal } from "../session/host.js";
import { PreauthBudget, type PreauthLimits } from "../session/preauth.js";
import { Session, type SessionHost } from "../session/session.js";
import { SliceSweep } from "../slice-sweep.js";
import { HEAVY_QUEUED_BYTES, UnreadTotals } from "./unread-totals.js";

/** The registry's bounds: the pre-authentication budget's, and the persona tree's hard bound on bytes queued unread. */
export interface SessionLimits extends PreauthLimits {
  /**
   * Most bytes queued unread to one persona tree's sessions before the one sent to is dropped
   * (SLOW_CONSUMER): what no read refusal bounds (PONGs, small answers, events) stops here.
   * Unbounded when absent.
   */
  treeQueuedHardBytes?: number;
}

/** What the registry tells its owner of: a connection shed from the pre-authentication budget. */
export interface SessionEvents {
  shed?(): void;
  /** A session ended (after the registry forgot it). */
  ended?(s: Session): void;
}

/**
 * Every open session of the kernel: accepted from any transport into the pre-authentication
 * budget, counted as a session once it attests, forgotten when it closes.
 */
export class SessionRegistry implements SessionCounts {
  private readonly sessions = new Set<Session>();
  private readonly byId = new Map<string, Session>();
  private readonly preauth: PreauthBudget<Session>;
  /** Attested sessions per persona tree (by its root): the per-persona bound's count. */
  private readonly trees = new Map<string, number>();
  /** The tree each attested session was counted in: released there, whatever the registry became since. */
  private readonly treeOf = new Map<Session, string>();
  /**
   * Attested sessions at or under each persona id: a session counts at its persona and at every
   * id above it (its depth is bounded), so system.info's count is a lookup, not a walk of every session.
   */
  private readonly within = new Map<string, number>();
  /** The persona each attested session was counted under in {@link within}. */
  private readonly personaOf = new Map<Session, string>();
  private host: SessionHost | undefined;
  /**
   * Bytes queued unread to sessions with at least HEAVY_QUEUED_BYTES queued, per persona tree
   * and in all: what the answer budget reads at each hold (those below it are bounded by
   * maxSessions × that many bytes, and are not counted).
   */
  private readonly unread = new UnreadTotals<Session>();
  private readonly treeQueuedHardBytes: number;
  /** The heartbeat sweep: a slice of sessions a turn, skipping any that closed meanwhile. */
  private readonly sweep = new SliceSweep<Session>(TICK_SLICE_SESSIONS, (s) => this.sessions.has(s));

  constructor(
    limits: SessionLimits,
    /**
     * The admission decision (the pipeline's admission stage, then the tree's open rate): a
     * refusal, given the attested sessions, all and the persona tree's. Undefined admits the session.
     */
    private readonly decide: (
      persona: string,
      attested: number,
      tree: number,
      root: string,
      transport: string,
    ) => SessionRefusal | undefined,
    private readonly on: SessionEvents = {},
    /** The top of each persona's tree. */
    private readonly roots: TreeRoots = FIRST_SEGMENT,
  ) {
    this.preauth = new PreauthBudget(limits);
    this.treeQueuedHardBytes = limits.treeQueuedHardBytes ?? Number.POSITIVE_INFINITY;
  }

  /** From now on accepted connections become sessions served by `host`; until then they are refused. */
  open(host: SessionHost): void {
    this.host = host;
  }

  /** No more connections are accepted (the kernel is stopping). */
  close(): void {
    this.host = undefined;
  }

  /**
   * Accepts a connection into the pre-authentication budget: it counts as a session only once
   * it attests. A full budget sheds an older half-open connection, never a session.
   */
  accept(conn: Connection): void {
    const host = this.host;
    if (!host) {
      conn.destroy();
      return;
    }
    const s = new Session(conn, host);
    this.sessions.add(s);
    this.byId.set(s.id, s);
    for (const old of this.preauth.admit(s)) {
      this.on.shed?.();
      old.shed();
    }
  }

  /** At attestation: may `persona` have a session? A refusal is a fatal RESOURCE error's code and message. */
  admit(s: Session, persona: string): SessionRefusal | undefined {
    const tree = this.roots.of(persona);
    const refused = this.decide(persona, this.treeOf.size, this.trees.get(tree) ?? 0, tree, s.transport);
    if (refused !== undefined) return refused;
    this.preauth.release(s);
    this.trees.set(tree, (this.trees.get(tree) ?? 0) + 1);
    this.treeOf.set(s, tree);
    s.tree = tree;
    this.personaOf.set(s, persona);
    forEachInLineage(persona, (p) => this.within.set(p, (this.within.get(p) ?? 0) + 1));
    return undefined;
  }

  /** The persona tree an attested session counts in (undefined before it attested or after it closed). */
  treeOfSession(s: Session): string | undefined {
    return this.treeOf.get(s);
  }

  /**
   * After a send to `s`'s peer, and when its connection drained: is much queued to it, unread?
   * True when its tree's sessions hold more than {@link SessionLimits.treeQueuedHardBytes}.
   */
  queuedTo(s: Session): boolean {
    const tree = this.count(s);
    return tree !== undefined && this.unread.tree(tree) > this.treeQueuedHardBytes;
  }

  /** Counts what is queued unread to `s` now (when it is HEAVY_QUEUED_BYTES or more); its tree, when counted there. */
  private count(s: Session): string | undefined {
    const bytes = s.buffered;
    if (bytes < HEAVY_QUEUED_BYTES) {
      if (this.unread.size > 0) this.unread.remove(s);
      return undefined;
    }
    if (!this.sessions.has(s)) return undefined;
    const tree = this.treeOf.get(s);
    this.unread.set(s, bytes, tree);
    return tree;
  }

  /**
   * What is queued unread to peers, as the answer budget asks for it: running totals, each
   * session counted as of its last send or drain (its peer may have read some since: an
   * over-count until then) — the asking session's own counted afresh.
   */
  readonly queued: QueuedTotals = {
    kernel: () => this.unread.kernel,
    tree: (session) => {
      if (this.unread.size === 0) return 0;
      const s = this.byId.get(session);
      if (s === undefined) return 0;
      this.count(s);
      const tree = this.treeOf.get(s);
      return tree === undefined ? 0 : this.unread.tree(tree);
    },
  };

  /** A session closed: it is forgotten (a no-op for one already forgotten). */
  closed(s: Session): void {
    this.unread.remove(s);
    if (!this.sessions.has(s)) return;
    this.preauth.release(s);
    const tree = this.treeOf.get(s);
    if (tree !== undefined) {
      this.treeOf.delete(s);
      const n = (this.trees.get(tree) ?? 1) - 1;
      if (n > 0) this.trees.set(tree, n);
      else this.trees.delete(tree);
    }
    const persona = this.personaOf.get(s);
    if (persona !== undefined) {
      this.personaOf.delete(s);
      forEachInLineage(persona, (p) => {
        const n = (this.within.get(p) ?? 1) - 1;
        if (n > 0) this.within.set(p, n);
        else this.within.delete(p);
      });
    }
    this.sessions.delete(s);
    this.byId.delete(s.id);
    this.on.ended?.(s);
  }

  get(id: string): Session | undefined {
    return this.byId.get(id);
  }

  /** Every open session (a snapshot: safe to end sessions while iterating it). */
  all(): Session[] {
    return [...this.sessions];
  }

  /** Heartbeats, dead peers and handshake timeouts of every session; `now` is performance.now() (monotonic). */
  tick(now: number): void {
    this.sweep.run(this.sessions, (s) => s.tick(now));
  }

  /** No more heartbeat sweeps (the kernel is stopping). */
  stopTicks(): void {
    this.sweep.stop();
  }

  sessionCount(): number {
    return this.sessions.size;
  }
  /** Open sessions of `persona` and of the personas under it: what system.info counts for a persona. */
  sessionCountWithin(persona: string): number {
    // Kept at admission and close, for every persona: one lookup per call, whatever the sessions.
    return this.within.get(persona) ?? 0;
  }
  attestedCount(): number {
    return this.treeOf.size;
  }
  handshakingCount(): number {
    return this.preauth.count;
  }

  /** Frames being received by every session: their bytes so far, and the memory held for them. */
  partialFrames(): { received: number; retained: number } {
    let received = 0;
    let retained = 0;
    for (const s of this.sessions) {
      const p = s.partialFrame;
      received += p.received;
      retained += p.retained;
    }
    return { received, retained };
  }

  /** Open sessions per transport (the metrics' gauge). */
  byTransport(): Record<string, number> {
    const by: Record<string, number> = {};
    for (const s of this.sessions) by[s.transport] = (by[s.transport] ?? 0) + 1;
    return by;
  }

  /** Requests in flight over every session. */
  inFlight(): number {
    let n = 0;
    for (const s of this.sessions) n += s.inFlight;
    return n;
  }
}
