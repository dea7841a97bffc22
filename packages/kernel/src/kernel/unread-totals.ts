/** Bytes queued unread to one peer from which its session counts in the tree's and the kernel's queued answers. */
export const HEAVY_QUEUED_BYTES = 64 * 1024;

/**
 * Bytes queued unread to the peers of sessions with at least {@link HEAVY_QUEUED_BYTES} queued,
 * as running totals per persona tree and over the kernel: each session counts its bytes as of
 * the last time it was {@link set} (after each send to it and when its connection drained), and
 * the totals move by the difference, so asking costs nothing whatever the number of sessions.
 * (Summing each heavy session's bytes at every hold was O(maxSessions) a hold, under attack.)
 */
export class UnreadTotals<S> {
  private readonly counted = new Map<S, { bytes: number; tree: string | undefined }>();
  private readonly trees = new Map<string, number>();
  private all = 0;

  /** `s` (in `tree`, if it attested) has `bytes` queued unread: counted from {@link HEAVY_QUEUED_BYTES}, else not. */
  set(s: S, bytes: number, tree: string | undefined): void {
    const c = this.counted.get(s);
    if (bytes < HEAVY_QUEUED_BYTES) {
      if (c) this.remove(s);
      return;
    }
    if (c && c.tree === tree) {
      this.all += bytes - c.bytes;
      if (tree !== undefined) this.addTo(tree, bytes - c.bytes);
      c.bytes = bytes;
      return;
    }
    if (c) this.remove(s);
    this.counted.set(s, { bytes, tree });
    this.all += bytes;
    if (tree !== undefined) this.addTo(tree, bytes);
  }

  /** `s` no longer counts (it closed, or its peer read what was queued). */
  remove(s: S): void {
    const c = this.counted.get(s);
    if (!c) return;
    this.counted.delete(s);
    this.all -= c.bytes;
    if (c.tree !== undefined) this.addTo(c.tree, -c.bytes);
  }

  /** Bytes counted over `tree`'s sessions. */
  tree(tree: string): number {
    return this.trees.get(tree) ?? 0;
  }

  /** Bytes counted over every session. */
  get kernel(): number {
    return this.all;
  }

  /** Sessions counted. */
  get size(): number {
    return this.counted.size;
  }

  private addTo(tree: string, delta: number): void {
    const n = (this.trees.get(tree) ?? 0) + delta;
    if (n > 0) this.trees.set(tree, n);
    else this.trees.delete(tree);
  }
}
