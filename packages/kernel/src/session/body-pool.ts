/**
 * Memory for large request bodies, kept for reuse.
 *
 * A large body (an inline frame joined from its chunks, or one read out of a shared-memory
 * segment) used to land in fresh memory. The OS maps fresh memory page by page on first touch.
 * On a virtual machine each of those faults can cost ~10 µs: ~190 ms for 64 MiB, against ~4 ms
 * for the same copy into memory already touched. The pool keeps a few such buffers (slabs) and
 * hands them out again.
 *
 * Reuse must never show one request's bytes to another. So a slab goes back to the pool only
 * when the pipeline gives it back (`giveBack`). It does that only for an op whose handler keeps
 * no reference to its arguments once its promise settles, with every read and write of them done
 * (the op's `releasesArgs`). Every other body is left to the garbage collector, as before.
 * Giving back also detaches the slab's ArrayBuffer: the memory moves, without a copy, to a new
 * ArrayBuffer kept by the pool. Every view still held anywhere (the decoded arguments, the audit
 * entry's intent, a closure) then reads as empty: a stale view can never see the next body.
 */
export class BodyPool {
  /** Slabs ready for reuse, smallest first. */
  private readonly free: ArrayBuffer[] = [];
  private freeBytes = 0;
  /** Slabs handed out and not given back (weak: one never given back is simply collected). */
  private readonly lent = new WeakSet<ArrayBuffer>();
  /** Slabs made, and bodies served from a kept slab (for tests and the bench). */
  made = 0;
  reused = 0;

  /**
   * @param maxBytes the most the pool keeps while no body uses it (0: no pool, fresh memory as before)
   * @param minBytes bodies smaller than this get fresh memory (cheap enough, and not worth keeping)
   */
  constructor(
    private readonly maxBytes: number,
    private readonly minBytes = MIN_POOLED,
  ) {}

  /** A buffer of exactly `n` bytes: a view of a kept slab, a new slab, or (small, or no pool) fresh memory. */
  take(n: number): Buffer {
    if (n < this.minBytes || this.maxBytes === 0) return Buffer.allocUnsafe(n);
    // The smallest kept slab that fits, if it is not more than twice the size (a small body
    // would otherwise pin a large slab while a large body waits for one).
    let slab: ArrayBuffer | undefined;
    for (let i = 0; i < this.free.length; i++) {
      const s = this.free[i] as ArrayBuffer;
      if (s.byteLength >= n) {
        if (s.byteLength <= 2 * n) {
          slab = s;
          this.free.splice(i, 1);
          this.freeBytes -= s.byteLength;
          this.reused++;
        }
        break;
      }
    }
    if (slab === undefined) {
      slab = new ArrayBuffer(Math.ceil(n / SLAB_STEP) * SLAB_STEP);
      this.made++;
    }
    this.lent.add(slab);
    return Buffer.from(slab, 0, n);
  }

  /**
   * The body `view` lies in is done with: its slab is kept for reuse, and every view of it is
   * detached. A view of anything else (fresh memory, a slab given back already) is ignored.
   */
  giveBack(view: Uint8Array): void {
    const slab = view.buffer;
    if (!(slab instanceof ArrayBuffer) || !this.lent.has(slab)) return;
    this.lent.delete(slab);
    // Moves the memory to a new ArrayBuffer without copying it; `slab` and its views are empty from here on.
    const moved = structuredClone(slab, { transfer: [slab] });
    if (this.freeBytes + moved.byteLength > this.maxBytes) return;
    let i = 0;
    while (i < this.free.length && (this.free[i] as ArrayBuffer).byteLength < moved.byteLength) i++;
    this.free.splice(i, 0, moved);
    this.freeBytes += moved.byteLength;
  }

  /** Bytes kept for reuse now. */
  get keptBytes(): number {
    return this.freeBytes;
  }
}

/** Bodies below this get fresh memory. */
const MIN_POOLED = 1024 * 1024;
/** Slabs are made in multiples of this, so bodies of nearly the same size share them. */
const SLAB_STEP = 1024 * 1024;
