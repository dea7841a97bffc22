/**
 * Segments the kernel keeps past their session's end, for the peer to take the last body (a
 * segment's grace, PROTOCOL §3.7), at most: each holds a descriptor no session counts any more,
 * so past this a segment is removed at once (the descriptor budget counts these, fd-budget.ts).
 */
export const SHM_LINGER_MAX = 64;

/** The bounds of {@link ShmBudget}: bytes in all, and per persona tree. */
export interface ShmBudgetLimits {
  total: number;
  perTree: number;
}

/**
 * The memory the kernel's own shared-memory segments hold. A segment keeps the pages of the
 * largest body it carried until its session ends (it lives in /dev/shm, the host's RAM), so
 * without a bound one persona reading a 16 MiB object once on each of its sessions held
 * 16 MiB of host memory per session. Past either bound a body goes inline instead (bounded
 * like every answer queued to a peer); a segment's bytes come back when it is removed.
 */
export class ShmBudget {
  private used = 0;
  private readonly byTree = new Map<string, number>();
  /** What each segment holds, and in which tree: given back there whatever the registry says since. */
  private readonly held = new Map<object, { tree: string; bytes: number }>();

  constructor(private readonly limits: ShmBudgetLimits) {}

  /** Bytes the kernel's segments hold now. */
  get bytes(): number {
    return this.used;
  }

  /** `owner`'s segment (a session of `tree`) grows by `n` bytes, if both bounds have room. */
  take(owner: object, tree: string, n: number): boolean {
    const entry = this.held.get(owner);
    const inTree = this.byTree.get(entry?.tree ?? tree) ?? 0;
    if (this.used + n > this.limits.total || inTree + n > this.limits.perTree) return false;
    this.used += n;
    if (entry) entry.bytes += n;
    else this.held.set(owner, { tree, bytes: n });
    this.byTree.set(entry?.tree ?? tree, inTree + n);
    return true;
  }

  /** Sessions whose segment is kept for its grace after they ended (each a descriptor). */
  private readonly lingering = new Set<object>();

  /** May `owner`'s segment be kept for its grace after its session ended? At most {@link SHM_LINGER_MAX} are. */
  linger(owner: object): boolean {
    if (this.lingering.size >= SHM_LINGER_MAX) return false;
    this.lingering.add(owner);
    return true;
  }

  /** Segments kept for their grace now. */
  get lingeringCount(): number {
    return this.lingering.size;
  }

  /** `owner`'s segment was removed: its bytes are free (a no-op for one holding none). */
  release(owner: object): void {
    this.lingering.delete(owner);
    const entry = this.held.get(owner);
    if (!entry) return;
    this.held.delete(owner);
    this.used -= entry.bytes;
    const left = (this.byTree.get(entry.tree) ?? 0) - entry.bytes;
    if (left > 0) this.byTree.set(entry.tree, left);
    else this.byTree.delete(entry.tree);
  }
}
