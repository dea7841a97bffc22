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
}

/**
 * Gathers the writes of one event-loop turn and hands them to `flush` together: one syscall
 * for a socket (corked), one message for a gRPC stream. The transport supplies the scheduler
 * (`process.nextTick`), so this module keeps no timers of its own.
 */
export class TurnBatcher {
  private chunks: Uint8Array[] = [];
  private bytes = 0;
  private scheduled = false;
  private stopped = false;

  constructor(
    /** The turn's chunks and their total size. */
    private readonly flush: (chunks: Uint8Array[], bytes: number) => void,
    private readonly schedule: (fn: () => void) => void,
  ) {}

  /** Bytes queued this turn and not yet handed to `flush`. */
  get pending(): number {
    return this.bytes;
  }

  write(data: Uint8Array): void {
    if (this.stopped) return;
    this.chunks.push(data);
    this.bytes += data.length;
    if (this.scheduled) return;
    this.scheduled = true;
    this.schedule(() => this.flushNow());
  }

  /** Hands what is queued to `flush` now (e.g. before ending the stream). */
  flushNow(): void {
    this.scheduled = false;
    if (this.chunks.length === 0 || this.stopped) return;
    const chunks = this.chunks;
    const bytes = this.bytes;
    this.chunks = [];
    this.bytes = 0;
    this.flush(chunks, bytes);
  }

  /** Drops what is queued; later writes are ignored (the stream is gone). */
  stop(): void {
    this.stopped = true;
    this.chunks = [];
    this.bytes = 0;
  }
}

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
  write(data: Uint8Array): unknown;
  cork(): void;
  uncork(): void;
}

/** The turn batcher of a socket, either side's: each turn's frames coalesced, then written corked. */
export function socketTurnBatcher(sock: CorkableStream): TurnBatcher {
  return new TurnBatcher(
    (chunks, bytes) => {
      if (sock.destroyed) return;
      const out = coalesce(chunks, bytes);
      if (out.length === 1) {
        sock.write(out[0] as Uint8Array);
        return;
      }
      sock.cork();
      for (const c of out) sock.write(c);
      sock.uncork();
    },
    (fn) => process.nextTick(fn),
  );
}
