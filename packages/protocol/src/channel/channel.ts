/**
 * A byte stream carrying KPIP frames, as both sides see their transport: the kernel's
 * connections (which add flow-control fields) and the client's channels are this interface.
 */
export interface ByteChannel {
  /** "uds", "grpc", "memory", "agent", ... */
  readonly transport: string;
  /** Queues bytes; writes made in one event-loop turn go out together. */
  write(data: Uint8Array): void;
  /** Ends the stream after queued bytes are flushed; `destroy` drops them. */
  end(): void;
  destroy(): void;
  onData(cb: (chunk: Uint8Array) => void): void;
  onClose(cb: (err?: Error) => void): void;
  /** The largest transport message to send from now on (gRPC: one frame at the session's maxBody). */
  limitMessages?(bytes: number): void;
  /**
   * Writes shorter than this are copied before `write` returns, so the caller may reuse their
   * bytes at once (a socket's {@link TurnBatcher}); absent or 0: every write is kept by reference.
   */
  readonly copiesWritesBelow?: number;
  /**
   * Runs `cb` once the channel no longer holds any byte written so far: handed to the OS or the
   * transport, copied, or dropped with the stream (at once when nothing is queued). Without it,
   * a writer must assume the channel may hold its buffers until the stream ends.
   */
  afterWrites?(cb: () => void): void;
  /**
   * Bytes written and not yet handed to the OS or the transport (this turn's, and what a peer
   * that does not read left queued). Without it, a writer cannot tell a peer that stopped reading.
   */
  unsent?(): number;
}

/**
 * Gathers the writes of one event-loop turn and hands them to `flush` together: one syscall
 * for a socket (corked), one message for a gRPC stream. The transport supplies the scheduler
 * (`process.nextTick`), so this module keeps no timers of its own.
 *
 * With `copyBelow` > 0, a write shorter than that is copied into a buffer of the batcher's own
 * before `write` returns (the caller may reuse its bytes at once: the kernel encodes every
 * answer into one shared buffer), and the turn's small writes go out as one piece of it. When
 * `flush` reports that the transport took the bytes before returning (a socket write that
 * completed at once), that buffer is written into again next turn: no allocation per answer or
 * per turn. Otherwise the transport keeps it and the next turn starts a new one.
 */
export class TurnBatcher {
  private chunks: Uint8Array[] = [];
  private bytes = 0;
  private scheduled = false;
  private stopped = false;
  /** The copy buffer, where its open segment (not yet in `chunks`) starts, and its end. */
  private buf: Buffer | undefined;
  private start = 0;
  private pos = 0;
  /** What waits for this turn's chunks to leave (see {@link afterWrites}); none on the fast path. */
  private waiters: (() => void)[] | undefined;

  constructor(
    /**
     * The turn's chunks and their total size; returns true when the transport no longer needs
     * them. `done`, when given, must run once the transport holds none of them (written, copied,
     * or dropped).
     */
    private readonly flush: (chunks: Uint8Array[], bytes: number, done: (() => void) | undefined) => boolean,
    private readonly schedule: (fn: () => void) => void,
    /** Writes shorter than this are copied at once (0: every write is kept by reference until the flush). */
    readonly copyBelow = 0,
  ) {}

  /** Bytes queued this turn and not yet handed to `flush`. */
  get pending(): number {
    return this.bytes;
  }

  /** Runs `cb` once this turn's chunks have left (at once if none is queued: earlier turns are the flush's). */
  afterWrites(cb: () => void): void {
    if (this.bytes === 0) return cb();
    if (this.waiters) this.waiters.push(cb);
    else this.waiters = [cb];
  }

  write(data: Uint8Array): void {
    if (this.stopped) return;
    if (data.length < this.copyBelow) this.copyIn(data);
    else {
      this.closeSegment();
      this.chunks.push(data);
    }
    this.bytes += data.length;
    if (this.scheduled) return;
    this.scheduled = true;
    this.schedule(() => this.flushNow());
  }

  private copyIn(data: Uint8Array): void {
    let buf = this.buf;
    if (buf === undefined || this.pos + data.length > buf.length) {
      this.closeSegment();
      // The first from Buffer's shared pool (an idle connection keeps only that), larger ones owned.
      const size = Math.min(COPY_BUFFER_MAX, Math.max(COPY_BUFFER_MIN, (buf?.length ?? 0) * 2));
      buf = Buffer.allocUnsafe(Math.max(size, data.length));
      this.buf = buf;
      this.start = 0;
      this.pos = 0;
    }
    buf.set(data, this.pos);
    this.pos += data.length;
  }

  /** Ends the copy buffer's open segment as a chunk (before a chunk kept by reference, and at the flush). */
  private closeSegment(): void {
    if (this.pos === this.start || this.buf === undefined) return;
    this.chunks.push(this.buf.subarray(this.start, this.pos));
    this.start = this.pos;
  }

  /** Hands what is queued to `flush` now (e.g. before ending the stream). */
  flushNow(): void {
    this.scheduled = false;
    this.closeSegment();
    if (this.chunks.length === 0 || this.stopped) return;
    const chunks = this.chunks;
    const bytes = this.bytes;
    const waiters = this.waiters;
    this.chunks = [];
    this.bytes = 0;
    this.waiters = undefined;
    const released = this.flush(chunks, bytes, waiters && (() => runAll(waiters)));
    // The copy buffer is written into again only when nothing refers to its bytes any more, and
    // not kept at a size the turns no longer need (a connection gone quiet after a burst).
    const buf = this.buf;
    if (!released || (buf !== undefined && buf.length > COPY_BUFFER_MIN && bytes * 8 < buf.length)) this.buf = undefined;
    this.start = 0;
    this.pos = 0;
  }

  /** Drops what is queued; later writes are ignored (the stream is gone). */
  stop(): void {
    this.stopped = true;
    this.chunks = [];
    this.bytes = 0;
    this.buf = undefined;
    const waiters = this.waiters;
    this.waiters = undefined;
    if (waiters) runAll(waiters);
  }
}

function runAll(fns: (() => void)[]): void {
  for (const f of fns) f();
}

/**
 * A socket batcher copies writes under this size (a frame without a large byte string; answers
 * are ~100 bytes) into its own buffer, which starts at {@link COPY_BUFFER_MIN} (what each of
 * 10,000 idle sessions keeps) and grows to {@link COPY_BUFFER_MAX} (a turn's small writes beyond
 * it continue in a new buffer).
 */
export const COPY_BELOW = 16 * 1024;
const COPY_BUFFER_MIN = 1024;
const COPY_BUFFER_MAX = 64 * 1024;

/** The chunks as one buffer, copying only when there is more than one. */
export function joinChunks(chunks: Uint8Array[]): Buffer {
  const one = chunks[0] as Uint8Array;
  if (chunks.length > 1) return Buffer.concat(chunks);
  return Buffer.isBuffer(one) ? one : Buffer.from(one.buffer, one.byteOffset, one.byteLength);
}

/**
 * A turn's chunks as transport messages of at most `max` bytes each (gRPC, PROTOCOL §3.6: no
 * message over 16 + maxBody; boundaries carry no meaning, so a frame may be cut anywhere).
 */
export function writeMessages(chunks: Uint8Array[], max: number, write: (message: Buffer) => void): void {
  const all = joinChunks(chunks);
  if (all.length <= max) return write(all);
  for (let at = 0; at < all.length; at += max) write(all.subarray(at, at + max));
}

/** Turns whose frames add up to at most this many bytes are written as one joined buffer. */
export const JOIN_MAX = 64 * 1024;

/**
 * A turn's chunks for a socket write: one buffer when they are small together (one copy of a
 * few frames costs less than a corked vectored write, where a Node stream keeps a request per
 * chunk), else the chunks as they are (large bodies are not copied).
 */
export function coalesce(chunks: Uint8Array[], bytes: number): Uint8Array[] {
  if (chunks.length < 2 || bytes > JOIN_MAX) return chunks;
  return [Buffer.concat(chunks, bytes)];
}

/** What a socket's writer needs of a Node stream (structural: the protocol imports no sockets). */
export interface CorkableStream {
  readonly destroyed: boolean;
  /** Bytes the stream still holds to write. */
  readonly writableLength: number;
  /** `cb` runs once the chunk was handed to the OS, or with an error once it never will be (Node's contract). */
  write(data: Uint8Array, cb?: (err?: Error | null) => void): unknown;
  cork(): void;
  uncork(): void;
}

/** The turn batcher of a socket, either side's: each turn's frames coalesced, then written corked. */
export function socketTurnBatcher(sock: CorkableStream): TurnBatcher {
  return new TurnBatcher(
    (chunks, bytes, done) => {
      if (sock.destroyed) {
        done?.();
        return true;
      }
      const out = coalesce(chunks, bytes);
      if (out.length === 1) sock.write(out[0] as Uint8Array, done);
      else {
        sock.cork();
        // A stream's write callbacks run in order: the last chunk's says every chunk has left.
        for (let i = 0; i < out.length; i++) sock.write(out[i] as Uint8Array, i === out.length - 1 ? done : undefined);
        sock.uncork();
      }
      // Nothing left queued: the socket wrote every byte before returning, and keeps none.
      return sock.writableLength === 0;
    },
    (fn) => process.nextTick(fn),
    COPY_BELOW,
  );
}
