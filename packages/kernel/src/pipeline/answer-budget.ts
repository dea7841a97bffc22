import { OpError } from "../primitives/types.js";

/**
 * Bytes of answers being prepared: an op about to read a large body into memory (storage.read)
 * holds its size here until its request is answered. Requests decoded from one socket read all
 * run before any is answered (their outcome records commit together), so without this a
 * persona pipelining reads of a large object made the kernel hold maxInFlight × maxBody bytes
 * at once — gigabytes, for everyone. Past a session's or the kernel's budget the op is refused
 * RESOURCE before it reads, and the client's retry comes once earlier answers have gone out.
 */
export class AnswerBudget {
  private readonly bySession = new Map<string, number>();
  private total = 0;
  constructor(
    /** Most bytes one session's answers in preparation may hold (the kernel's write buffer per peer). */
    readonly perSession: number,
    /** Most bytes all sessions' answers in preparation may hold. */
    readonly kernel: number,
    /**
     * Answers already queued to peers that have not read them, across a persona tree's sessions
     * and the kernel (the session registry's count), with their bounds. Per session alone, a
     * persona with 64 sessions each holding half its write buffer unread held gigabytes.
     */
    readonly queued?: QueuedBounds,
  ) {}

  /**
   * The budget for a kernel whose peers may each have `maxWriteBuffer` bytes queued: half of it
   * per session (answers are written into that buffer, and a peer overflowing it is dropped),
   * twice it in the kernel.
   */
  static forWriteBuffer(maxWriteBuffer: number, queued?: QueuedBounds): AnswerBudget {
    return new AnswerBudget(Math.floor(maxWriteBuffer / 2), 2 * maxWriteBuffer, queued);
  }

  /** Bytes held now, in the kernel. */
  get held(): number {
    return this.total;
  }

  /**
   * A lease for one request: `hold` adds to it, `release` gives all of it back (once). `peer`:
   * the session's connection, whose bytes queued but not yet read count against its budget.
   */
  lease(session: string, peer?: QueuedBytes): AnswerLease {
    return new AnswerLease(this, session, peer);
  }

  /**
   * @internal {@link AnswerLease.hold}: throws RESOURCE past a budget, else takes the bytes.
   * `always`: taken whatever the budget (an answer that must go out is still counted).
   */
  take(session: string, bytes: number, always = false, queued = 0): void {
    const s = this.bySession.get(session) ?? 0;
    // One answer alone is always allowed (the op's own limits bound it): a session is never starved.
    // Answers released to the connection but not yet read by the peer still count: a lease ends
    // when its answer is queued, and a burst answered batch after batch would pile up there
    // until the peer is dropped for not reading (SLOW_CONSUMER) instead of being refused.
    if (!always && (s > 0 || queued > 0) && s + queued + bytes > this.perSession) throw sessionFull(s, queued);
    if (!always && this.total > 0 && this.total + bytes > this.kernel)
      throw new OpError("RESOURCE", "the kernel holds its budget of answers in preparation; retry shortly");
    if (!always) {
      const full = this.queuedRoom(session, bytes);
      if (full !== undefined) throw queuedFull(full, this.queued as QueuedBounds, session);
    }
    this.bySession.set(session, s + bytes);
    this.total += bytes;
  }

  /**
   * Throws RESOURCE when `session` already holds its whole budget (answers in preparation and
   * queued to the peer): a read-only op is then refused before it builds an answer the budget
   * would refuse anyway. Per session only: another session's burst never refuses this one's.
   */
  checkRoom(session: string, queued = 0): void {
    const s = this.bySession.get(session) ?? 0;
    if (s + queued >= this.perSession && (s > 0 || queued > 0)) throw sessionFull(s, queued);
  }

  /**
   * Would `bytes` more for `session`'s peer (an answer, or an EVENT: kernel/compose.ts eventRoom)
   * pass the bounds on what is queued unread? "tree": its persona tree's; "kernel": the kernel's;
   * undefined: neither. Answers in preparation count as queued (the session's against its tree,
   * all against the kernel): they are on their way there. A tree with nothing queued unread always
   * has room: another tree's unread answers must not stop one that reads its own.
   */
  queuedRoom(session: string, bytes: number): "tree" | "kernel" | undefined {
    const q = this.queued;
    if (q === undefined) return undefined;
    const tree = q.totals.tree(session);
    if (tree === 0) return undefined;
    if (tree + (this.bySession.get(session) ?? 0) + bytes > q.perTree) return "tree";
    if (q.totals.kernel() + this.total + bytes > q.kernel) return "kernel";
    return undefined;
  }

  /** @internal {@link AnswerLease.release}. */
  give(session: string, bytes: number): void {
    const s = (this.bySession.get(session) ?? 0) - bytes;
    if (s > 0) this.bySession.set(session, s);
    else this.bySession.delete(session);
    this.total -= bytes;
  }
}

/** The refusal of a session whose answers in preparation (`held`) and queued to its peer fill its budget. */
function sessionFull(held: number, queued: number): OpError {
  return new OpError(
    "RESOURCE",
    `this session's answers in preparation hold ${held} bytes (${queued} more queued to the peer); retry once they are sent`,
  );
}

/** The refusal of an answer {@link AnswerBudget.queuedRoom} has no room for. */
function queuedFull(full: "tree" | "kernel", q: QueuedBounds, session: string): OpError {
  const tree = q.totals.tree(session);
  return new OpError(
    "RESOURCE",
    full === "tree"
      ? `answers queued unread to this persona tree's sessions hold ${tree} bytes (at most ${q.perTree}, maxQueuedBytesPerPersona); read them, then retry`
      : `the kernel's answers queued to peers that have not read them hold ${q.totals.kernel()} bytes (at most ${q.kernel}), ${tree} of them this persona tree's; read them, then retry`,
  );
}

/** Bytes queued to peers and not yet read: over a session's persona tree, and over the kernel. */
export interface QueuedTotals {
  tree(session: string): number;
  kernel(): number;
}

/** Bytes queued unread to peers, and their bounds over a persona tree and over the kernel. */
export interface QueuedBounds {
  totals: QueuedTotals;
  perTree: number;
  kernel: number;
}

/** A session's connection: the bytes of answers queued to the peer and not yet read. */
export interface QueuedBytes {
  readonly buffered?: number;
}

/** One request's share of the budget (an object with methods: no closures per request). */
export class AnswerLease {
  private mine = 0;

  constructor(
    private readonly budget: AnswerBudget,
    private readonly session: string,
    private readonly peer?: QueuedBytes,
  ) {}

  /** Bytes this request holds. */
  get bytes(): number {
    return this.mine;
  }

  /** Takes `bytes` more, or throws RESOURCE past the session's or the kernel's budget. */
  hold(bytes: number): void {
    if (bytes <= 0) return;
    this.budget.take(this.session, bytes, false, this.peer?.buffered ?? 0);
    this.mine += bytes;
  }

  /** Takes `bytes` more whatever the budget: an answer that cannot be refused any more is still counted. */
  count(bytes: number): void {
    if (bytes <= 0) return;
    this.budget.take(this.session, bytes, true);
    this.mine += bytes;
  }

  /** Gives back `bytes` of what this request holds (it held an upper estimate of its answer). */
  giveBack(bytes: number): void {
    const n = Math.min(bytes, this.mine);
    if (n <= 0) return;
    this.budget.give(this.session, n);
    this.mine -= n;
  }

  release(): void {
    if (this.mine === 0) return;
    this.budget.give(this.session, this.mine);
    this.mine = 0;
  }
}
