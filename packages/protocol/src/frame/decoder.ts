import { DEFAULT_LIMITS, HEADER_SIZE } from "../constants.js";
import { FrameError } from "../errors.js";
import { type FrameHeader, readHeader } from "./header.js";

/** One complete frame: its header fields and its body bytes. */
export interface Frame extends FrameHeader {
  body: Uint8Array;
}

/**
 * Gives the buffer a large body is assembled in: exactly `n` bytes, e.g. a view of memory kept
 * for reuse (fresh memory costs a page fault per 4 KiB on first touch, far more than the copy).
 */
export type BodyAllocator = (n: number) => Buffer;

/**
 * Streaming frame decoder: feed it bytes in any chunking, get whole frames back.
 *
 * The declared body length is checked against `maxBody` as soon as the header is complete,
 * before anything is allocated for the body; the body is then gathered from the chunks that
 * actually arrive, so a peer that declares a large body and sends nothing costs nothing.
 * Whatever the chunking, the memory held for a partial frame stays within a small multiple of
 * the bytes received ({@link FrameDecoder.retainedBytes}): a peer that trickles a large frame a
 * byte per read holds what it sent, not an object per read.
 * A frame that lies entirely inside one chunk is returned as a view of that chunk (no copy).
 *
 * After a {@link FrameError} the decoder is poisoned: the stream has lost framing and every
 * later `push` throws the same error.
 */
export class FrameDecoder {
  /** Bytes of an incomplete frame, in acc[0, accLen); grown geometrically, never past one frame. */
  private acc: Buffer = EMPTY;
  private accLen = 0;
  private header: FrameHeader | undefined;
  /** The pieces of a large frame being received, in order, before `stage` (see gather). */
  private parts: Uint8Array[] | undefined;
  /** Where a large frame's small chunks are copied together: stage[0, stageLen), after `parts`. */
  private stage: Buffer = EMPTY;
  private stageLen = 0;
  private failed: FrameError | undefined;

  constructor(
    private maxBody: number = DEFAULT_LIMITS.maxBodyBytes,
    /** Where a large frame is joined (by default fresh memory). */
    private readonly alloc?: BodyAllocator,
  ) {}

  /** The body limit now. */
  get bodyLimit(): number {
    return this.maxBody;
  }

  /** Lowers or raises the body limit, e.g. after the handshake negotiated one. */
  setMaxBody(n: number): void {
    this.maxBody = n;
  }

  /** Bytes received but not yet returned as frames. */
  get pending(): number {
    return this.accLen;
  }

  /**
   * Memory held for the partial frame, in bytes: the buffers its pieces lie in (a piece kept as
   * a view of a chunk keeps the whole chunk) and an estimate of each piece's own objects. At most
   * a small multiple of {@link pending}, however the bytes were chunked (tests; the kernel's `partialFrames`).
   */
  get retainedBytes(): number {
    if (this.parts === undefined) return this.acc.length;
    let n = this.stage.length + (this.stage.length > 0 ? PIECE_COST : 0);
    for (const p of this.parts) n += p.buffer.byteLength + PIECE_COST;
    return n;
  }

  /** How many pieces the partial frame is held in (tests: bounded by bytes received, not by reads). */
  get retainedPieces(): number {
    if (this.parts === undefined) return this.acc.length > 0 ? 1 : 0;
    return this.parts.length + (this.stage.length > 0 ? 1 : 0);
  }

  /** True when a partial frame is buffered (used to detect truncation at end of stream). */
  get midFrame(): boolean {
    return this.accLen > 0;
  }

  /**
   * Feeds a chunk; returns the frames it completed, in order. Throws {@link FrameError}. Every
   * header is checked against the limit when the chunk is fed: a reader whose limit changes with
   * what a frame says (a handshake) hands each frame over with {@link pushEach} instead.
   */
  push(chunk: Uint8Array): Frame[] {
    const out: Frame[] = [];
    this.pushEach(chunk, (f) => {
      out.push(f);
      return true;
    });
    return out;
  }

  /**
   * Feeds a chunk, handing each frame it completes to `each` as soon as it is cut, in order, while
   * `each` returns true. A frame's header is read only after every frame before it was handed
   * over, so it is checked against the limit `each` left in force ({@link setMaxBody}): a HELLO
   * that lowers the limit bounds the ATTEST that follows it in the same read. Returning false
   * stops: the rest of the chunk is dropped and the decoder takes nothing more (the stream is
   * done with). Throws {@link FrameError}; what `each` throws is thrown as it is, and the decoder
   * is unusable after it (the chunk's rest is lost).
   */
  pushEach(chunk: Uint8Array, each: (f: Frame) => boolean): void {
    if (this.failed) throw this.failed;
    let thrown: { e: unknown } | undefined;
    const handOver = (f: Frame): boolean => {
      try {
        return each(f);
      } catch (e) {
        thrown = { e };
        throw e;
      }
    };
    let stopped = false;
    try {
      stopped = !this.drain(chunk, handOver);
    } catch (e) {
      this.failed =
        thrown !== undefined
          ? new FrameError("DECODER_FAILED", "the reader failed on a frame; the stream's framing is lost")
          : e instanceof FrameError
            ? e
            : new FrameError("DECODER_FAILED", String(e));
      this.reset();
      throw thrown !== undefined ? thrown.e : this.failed;
    }
    if (stopped) {
      this.failed = new FrameError("DECODER_FAILED", "the reader stopped taking frames");
      this.reset();
    }
  }

  /** Lets go of a partial frame. */
  private reset(): void {
    this.acc = EMPTY;
    this.accLen = 0;
    this.header = undefined;
    this.parts = undefined;
    this.stage = EMPTY;
    this.stageLen = 0;
  }

  /** Call at end of stream: throws TRUNCATED if a frame was cut off. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.midFrame) {
      this.failed = new FrameError("TRUNCATED", "stream ended in the middle of a frame");
      throw this.failed;
    }
  }

  /** Cuts the chunk's frames, handing each to `each`; false when `each` said stop. */
  private drain(chunk: Uint8Array, each: (f: Frame) => boolean): boolean {
    let pos = 0;
    // Complete a partial frame first, taking only the bytes it still needs.
    while (this.accLen > 0 && pos < chunk.length) {
      const want = this.header === undefined ? HEADER_SIZE : HEADER_SIZE + this.header.length;
      const k = Math.min(want - this.accLen, chunk.length - pos);
      this.append(chunk, pos, k);
      pos += k;
      if (this.header === undefined && this.accLen === HEADER_SIZE) {
        this.header = readHeader(this.acc, 0, this.maxBody);
      }
      if (this.header !== undefined && this.accLen === HEADER_SIZE + this.header.length) {
        // Hand the buffer over as the body: it is never written again.
        const whole = this.parts ? join(this.pieces(), this.accLen, this.alloc) : this.acc;
        const f = frameOf(this.header, whole.subarray(HEADER_SIZE, this.accLen));
        this.acc = EMPTY;
        this.accLen = 0;
        this.parts = undefined;
        this.header = undefined;
        if (!each(f)) return false;
      }
    }
    // Whole frames straight out of the chunk, as views.
    while (chunk.length - pos >= HEADER_SIZE) {
      const h = readHeader(chunk, pos, this.maxBody);
      const start = pos + HEADER_SIZE;
      if (chunk.length - start < h.length) break;
      pos = start + h.length;
      if (!each(frameOf(h, chunk.subarray(start, pos)))) return false;
    }
    if (pos < chunk.length) {
      // The tail starts a frame; its header, if complete, was checked by readHeader above.
      const rest = chunk.length - pos;
      if (rest >= HEADER_SIZE) this.header = readHeader(chunk, pos, this.maxBody);
      this.append(chunk, pos, rest);
    }
    return true;
  }

  private append(src: Uint8Array, pos: number, n: number): void {
    const h = this.header;
    if (
      h !== undefined &&
      this.alloc !== undefined &&
      h.length > LARGE_FRAME &&
      this.accLen + n >= Math.max(ALLOC_AFTER, h.length / 2)
    ) {
      // A large frame with an allocator goes straight into the buffer it is handed over in, as
      // it arrives: the chunks it came in are let go at once, so their memory serves the next
      // ones (64 MiB of chunks kept until the frame was whole grew the heap anew each time).
      // Only once half the body (and ALLOC_AFTER bytes) came: a peer that declares a large body
      // and sends little holds what it sent, never more than twice that.
      if (this.acc.length < HEADER_SIZE + h.length) {
        const into = this.alloc(HEADER_SIZE + h.length);
        if (this.parts) copyParts(this.pieces(), into);
        else if (this.accLen > 0) this.acc.copy(into, 0, 0, this.accLen);
        this.parts = undefined;
        this.acc = into;
      }
      this.acc.set(src.subarray(pos, pos + n), this.accLen);
      this.accLen += n;
      return;
    }
    if (h !== undefined && h.length > LARGE_FRAME) {
      this.gather(h, src, pos, n);
      return;
    }
    const need = this.accLen + n;
    if (need > this.acc.length) {
      const frameSize = this.header === undefined ? need : HEADER_SIZE + this.header.length;
      const cap = Math.min(Math.max(need, this.acc.length * 2, 256), Math.max(frameSize, need));
      const next = Buffer.allocUnsafe(cap);
      if (this.accLen > 0) this.acc.copy(next, 0, 0, this.accLen);
      this.acc = next;
    }
    this.acc.set(src.subarray(pos, pos + n), this.accLen);
    this.accLen = need;
  }

  /**
   * A large frame is kept as pieces and joined once when complete: one copy instead of a growing
   * buffer's many, and memory in proportion to the bytes received. A chunk of KEEP_MIN bytes or
   * more, that is at least half the memory it lies in, is kept as it came (bulk transfers: no
   * copy). Smaller chunks are copied together into a stage, so a peer that trickles a frame a
   * byte per read holds those bytes, not a chunk and a view per read (each ~160 bytes of
   * objects: 1 M one-byte reads held 160 MB). A stage is as large as what came before it (from
   * STAGE_MIN up to STAGE_MAX), so its unused end never exceeds what was received; it becomes a
   * piece once full.
   */
  private gather(h: FrameHeader, src: Uint8Array, pos: number, n: number): void {
    if (this.parts === undefined) {
      // The bytes so far (the header, perhaps more) are the first stage.
      this.parts = [];
      this.stage = this.acc;
      this.stageLen = this.accLen;
      this.acc = EMPTY;
    }
    const end = pos + n;
    let got = this.accLen;
    this.accLen += n;
    while (pos < end) {
      if (this.stageLen === this.stage.length) {
        if (this.stageLen > 0) this.parts.push(this.stage);
        this.stage = EMPTY;
        this.stageLen = 0;
        const rest = end - pos;
        if (rest >= KEEP_MIN && 2 * rest >= src.buffer.byteLength) {
          this.parts.push(src.subarray(pos, end));
          return;
        }
        // Memory of its own (a slice of Buffer's shared pool would keep the whole pool).
        const left = HEADER_SIZE + h.length - got;
        this.stage = Buffer.allocUnsafeSlow(Math.min(STAGE_MAX, left, Math.max(STAGE_MIN, got)));
      }
      const k = Math.min(this.stage.length - this.stageLen, end - pos);
      this.stage.set(src.subarray(pos, pos + k), this.stageLen);
      this.stageLen += k;
      got += k;
      pos += k;
    }
  }

  /** The partial large frame's pieces, the stage's bytes last; the stage is given up. */
  private pieces(): Uint8Array[] {
    const parts = this.parts ?? [];
    if (this.stageLen > 0) parts.push(this.stage.subarray(0, this.stageLen));
    this.stage = EMPTY;
    this.stageLen = 0;
    return parts;
  }
}

/** A frame from its checked header: a literal of one shape, not a spread (cheaper, one hidden class). */
function frameOf(h: FrameHeader, body: Uint8Array): Frame {
  return { type: h.type, flags: h.flags, stream: h.stream, length: h.length, body };
}

/** The chunks of a large frame in one buffer: `alloc`'s, or fresh memory. */
function join(parts: Uint8Array[], n: number, alloc: BodyAllocator | undefined): Buffer {
  if (alloc === undefined) return Buffer.concat(parts, n);
  const out = alloc(n);
  copyParts(parts, out);
  return out;
}

/** Copies `parts`, in order, to the start of `out`. */
function copyParts(parts: Uint8Array[], out: Uint8Array): void {
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
}

const EMPTY = Buffer.alloc(0);
/** Bodies above this are assembled from their chunks in one copy. */
const LARGE_FRAME = 256 * 1024;
/** Bytes of a large frame received before its whole buffer is taken from the allocator. */
const ALLOC_AFTER = 1024 * 1024;
/** A large frame's chunks this long (and at least half of their memory) are kept, not copied. */
const KEEP_MIN = 4 * 1024;
/** A large frame's first stage for small chunks, and the size stages grow to. */
const STAGE_MIN = 1024;
const STAGE_MAX = 64 * 1024;
/** An estimate of the objects one held piece costs besides its bytes (a view, its buffer's record). */
const PIECE_COST = 160;
