import { createRequire } from "node:module";

import { decodeCanonical } from "../cbor/decode.js";
import { encodeCanonical } from "../cbor/encode.js";
import { FrameFlag, HEADER_SIZE } from "../constants.js";
import { CodecError, ErrorClass } from "../errors.js";
import type { BodyAllocator, Frame } from "../frame/decoder.js";
import { readHeader, writeHeader } from "../frame/header.js";

type Crc32 = (data: Uint8Array, value?: number) => number;
let zlibCrc32: Crc32 | undefined;
/** node:zlib's CRC-32, loaded on first use: a process that never uses shared memory (most
 * one-shot `kpip` commands) does not pay for initialising zlib. */
function crc32(data: Uint8Array, value?: number): number {
  zlibCrc32 ??= (createRequire(import.meta.url)("node:zlib") as { crc32: Crc32 }).crc32;
  return zlibCrc32(data, value);
}

/** The feature name both peers offer to carry large bodies through shared memory (PROTOCOL §3.7). */
export const SHM_FEATURE = "shm";
/** Bytes at the start of a segment reserved for control: bytes 0–3 = the last sequence number the receiver consumed. */
export const SHM_CONTROL_BYTES = 64;
/** Bodies above this travel through the segment by default. */
export const SHM_DEFAULT_THRESHOLD = 64 * 1024;

/**
 * One shared-memory segment, as this side reaches it. Every access copies, and an access past
 * the segment's current end is short, never a fault: a peer can shrink its segment (ftruncate)
 * at any moment (the kernel empties its own at a session's end), and neither side may die of it
 * (both read and write through the file descriptor, never through a mapping).
 */
export interface ShmSegment {
  /**
   * A copy of up to `len` bytes at `off`: fewer (possibly none) where the segment ends now.
   * `into` (at least `len` bytes), if given, is where the copy goes: the result is a view of it.
   */
  read(off: number, len: number, into?: Buffer): Buffer;
  /** Copies `data` into the segment at `off`. */
  write(data: Uint8Array, off: number): void;
}

/**
 * Opens named shared-memory segments. The protocol package's main entry does no I/O: both sides
 * supply this over the segments' files (`@kpip/protocol/shm-files`: pread/pwrite, never a mapping).
 */
export interface ShmNative {
  /** Creates a segment of `size` bytes, 0600; null if one with that name exists. */
  create(name: string, size: number): ShmSegment | null;
  /** Opens an existing segment; null if there is none (or it is not a regular segment). */
  open(name: string): ShmSegment | null;
  /** Lets go of a segment this side opened (the segment itself stays). */
  detach(name: string): void;
  /** Lets go of and removes a segment (emptied first, so that no peer still holding it keeps its pages). */
  destroy(name: string): void;
}

/** A descriptor that does not name a valid region of this session's peer segment. */
export class ShmError extends CodecError {
  override name = "ShmError";
  constructor(code: string, message: string) {
    super(ErrorClass.PROTOCOL, code, message);
  }
}

/**
 * The segment names of one session: `/kpip.<kernel>.<session>.<k|p>` (k: kernel → persona), every
 * character outside `[A-Za-z0-9._-]` of the ids (a `/` too) replaced by `_`: a kernel-side peer
 * names its kernel and session in CHALLENGE, and a `/` kept there (with `..`) placed the client's
 * segment, and its bodies, outside /dev/shm at a path of the peer's choosing.
 */
export function shmSegmentName(kernel: string, session: string, side: "k" | "p"): string {
  return `/${`kpip.${kernel}.${session}.${side}`.replace(/[^A-Za-z0-9._-]/g, "_")}`;
}

export interface ShmDescriptor {
  seg: string;
  off: number;
  len: number;
  seq: number;
  crc: number;
}

const uint = (v: unknown, max: number) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && v <= max;

/** Decodes and checks the shape of a descriptor body; PROTOCOL/SHM_BAD_DESCRIPTOR otherwise. */
export function decodeShmDescriptor(body: Uint8Array): ShmDescriptor {
  let v: unknown;
  try {
    v = decodeCanonical(body, { maxDepth: 2, maxItems: 16 });
  } catch (e) {
    throw new ShmError("SHM_BAD_DESCRIPTOR", `shared-memory descriptor is not canonical CBOR: ${(e as Error).message}`);
  }
  const d = v as Record<string, unknown>;
  if (
    d === null ||
    typeof d !== "object" ||
    Array.isArray(d) ||
    Object.keys(d).length !== 5 ||
    typeof d.seg !== "string" ||
    d.seg.length > 255 ||
    !uint(d.off, 2 ** 40) ||
    !uint(d.len, 2 ** 40) ||
    !uint(d.seq, 0xffffffff) ||
    !uint(d.crc, 0xffffffff)
  ) {
    throw new ShmError("SHM_BAD_DESCRIPTOR", "shared-memory descriptor must be {seg, off, len, seq, crc}");
  }
  return d as unknown as ShmDescriptor;
}

const outOfBounds = () => new ShmError("SHM_OUT_OF_BOUNDS", "the descriptor points outside its segment");
const badChecksum = () => new ShmError("SHM_BAD_CHECKSUM", "the shared-memory body does not match its CRC-32");

/**
 * One side of a session's shared-memory channel. Each side writes large bodies into its own
 * segment (created on its first large body, so sessions that never send bulk never hold one;
 * sized for one maximum body) and sends a descriptor frame
 * instead; the receiver copies the body out, checks its CRC-32, and records the sequence
 * number in the segment's control word, which frees the region. One body is outstanding per
 * direction: while the previous one is not consumed, the next large frame goes inline.
 */
/** The control word: the last sequence number the receiver consumed (-1 if the segment lost it). */
function control(seg: ShmSegment): number {
  const b = seg.read(0, 4);
  return b.length === 4 ? b.readUInt32LE(0) : -1;
}

export class ShmPeer {
  private own: ShmSegment | undefined;
  private peer: ShmSegment | undefined;
  private seq = 0;
  private peerSeq = 0;
  /** Frames sent through the segment / received from it (observability, tests). */
  sent = 0;
  received = 0;

  constructor(
    private readonly native: ShmNative,
    private readonly o: {
      ownName: string;
      peerName: string;
      maxBody: number;
      threshold: number;
      /** Where a body read out of the peer's segment goes (by default fresh memory). */
      alloc?: BodyAllocator;
      /** Takes back memory `alloc` gave for a body that failed its checks (nothing else holds it). */
      release?: (body: Uint8Array) => void;
      /**
       * Asked before a body takes this side's segment past the bytes it has held so far (a
       * segment's pages stay in memory until it is removed): false sends the body inline.
       */
      grow?: (bytes: number) => boolean;
      /** This side's segment was removed: the bytes it held (every `grow` it was given) are free. */
      freed?: () => void;
    },
  ) {}

  /** Bytes of this side's segment written so far (its pages in memory): the largest body it carried. */
  private held = 0;

  /** The frame to write: the frame itself, or a descriptor frame once its body is in the segment. */
  wrap(frame: Uint8Array): Uint8Array {
    return this.wrapPieces([frame]) ?? frame;
  }

  /**
   * A frame given as pieces (header and body start in the first, see encodeFramePieces): the
   * descriptor frame once the body is copied into the segment, or undefined when it goes
   * inline (small, too large, or the previous body not yet consumed).
   */
  wrapPieces(pieces: Uint8Array[]): Uint8Array | undefined {
    const first = pieces[0] as Uint8Array;
    let len = -HEADER_SIZE;
    for (const p of pieces) len += p.length;
    if (len <= this.o.threshold || len > this.o.maxBody) return undefined;
    if (!this.own) {
      this.own = this.native.create(this.o.ownName, SHM_CONTROL_BYTES + this.o.maxBody) ?? undefined;
      if (!this.own) return undefined;
    }
    const seg = this.own;
    let crc = 0;
    try {
      // The receiver has not consumed the previous body yet: this one goes inline.
      if (control(seg) !== this.seq) return undefined;
      if (len > this.held) {
        if (this.o.grow && !this.o.grow(len - this.held)) return undefined;
        this.held = len;
      }
      let at = SHM_CONTROL_BYTES;
      for (let i = 0; i < pieces.length; i++) {
        const p = i === 0 ? first.subarray(HEADER_SIZE) : (pieces[i] as Uint8Array);
        seg.write(p, at);
        at += p.length;
        crc = crc32(p, crc);
      }
    } catch {
      // The segment could not be written (e.g. no room left in /dev/shm): the frame goes inline.
      return undefined;
    }
    this.seq = (this.seq + 1) >>> 0;
    const h = readHeader(first, 0, Number.MAX_SAFE_INTEGER);
    const desc = encodeCanonical({ off: SHM_CONTROL_BYTES, len, seg: this.o.ownName, seq: this.seq, crc });
    const out = Buffer.allocUnsafe(HEADER_SIZE + desc.length);
    writeHeader(out, 0, { type: h.type, flags: h.flags | FrameFlag.SHM, stream: h.stream, length: desc.length });
    out.set(desc, HEADER_SIZE);
    this.sent++;
    return out;
  }

  /**
   * The frame with its body taken out of the peer's segment; {@link ShmError} for a bad descriptor
   * or a body over `limit` (default and at most the negotiated maxBody).
   */
  unwrap(f: Frame, limit = this.o.maxBody): Frame {
    if ((f.flags & FrameFlag.SHM) === 0) return f;
    const d = decodeShmDescriptor(f.body);
    if (d.seg !== this.o.peerName) {
      throw new ShmError("SHM_FOREIGN_SEGMENT", "the descriptor names a segment that is not this session's peer segment");
    }
    if (!this.peer) {
      this.peer = this.native.open(d.seg) ?? undefined;
      if (!this.peer) throw new ShmError("SHM_NO_SEGMENT", "the descriptor names a segment that does not exist");
    }
    const seg = this.peer;
    const max = Math.min(limit, this.o.maxBody);
    if (d.len > max) throw new ShmError("SHM_TOO_LARGE", `descriptor length ${d.len} exceeds the maximum body of ${max} bytes`);
    if (d.off < SHM_CONTROL_BYTES) throw new ShmError("SHM_OUT_OF_BOUNDS", "the descriptor points into the control bytes");
    if (d.seq !== (this.peerSeq + 1) >>> 0) {
      throw new ShmError("SHM_BAD_SEQUENCE", `descriptor sequence ${d.seq} does not follow ${this.peerSeq}`);
    }
    // The region's last byte first: a descriptor past the segment's end takes no memory from
    // `alloc` (the kernel's body pool: a hostile peer must not drain it with bad descriptors).
    if (d.len > 0 && seg.read(d.off + d.len - 1, 1).length !== 1) throw outOfBounds();
    // Copy first, then check: the sender cannot change what was checked. A segment shrunk since
    // the probe gives a short copy; memory taken for a body that fails a check goes back.
    const into = this.o.alloc?.(d.len);
    const body = seg.read(d.off, d.len, into);
    const bad = body.length !== d.len ? outOfBounds() : crc32(body) !== d.crc ? badChecksum() : undefined;
    if (bad) {
      if (into) this.o.release?.(into);
      throw bad;
    }
    this.peerSeq = d.seq;
    const word = Buffer.allocUnsafe(4);
    word.writeUInt32LE(d.seq, 0);
    seg.write(word, 0);
    this.received++;
    return { type: f.type, flags: f.flags & ~FrameFlag.SHM, stream: f.stream, length: d.len, body };
  }

  /** This side's segment holds a body the peer has not taken yet: {@link close} would keep it for its grace. */
  get lingers(): boolean {
    return this.own !== undefined && control(this.own) !== this.seq;
  }

  /**
   * Removes this side's segment and unmaps the peer's (the session ended). A body the peer has
   * not taken yet (e.g. the last response before GOODBYE) keeps the segment for a grace period
   * (none when `graceMs` is 0: removed at once).
   */
  close(graceMs = 2000): void {
    const own = this.own;
    if (own) {
      const name = this.o.ownName;
      const destroy = () => {
        try {
          this.native.destroy(name);
        } finally {
          // The bytes are given back even if the removal failed: a budget that only leaked would
          // in the end send every large body inline.
          this.o.freed?.();
        }
      };
      if (graceMs <= 0 || control(own) === this.seq) destroy();
      else setTimeout(destroy, graceMs).unref();
    }
    if (this.peer) this.native.detach(this.o.peerName);
    this.own = undefined;
    this.peer = undefined;
  }
}
