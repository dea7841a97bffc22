import { PieceWriter } from "../cbor/encode.js";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  HEADER_SIZE,
  PEER_MESSAGE_MAX_ITEMS,
  PEER_OTHER_MESSAGE_MAX_ITEMS,
} from "../constants.js";
import { CodecError, FrameError } from "../errors.js";
import { type BodyAllocator, type Frame, FrameDecoder } from "../frame/decoder.js";
import { decodeMessage, encodeMessagePieces } from "../messages/codec.js";
import type { Message } from "../messages/types.js";
import type { ShmPeer } from "../shm/peer.js";
import type { ByteChannel } from "./channel.js";

/** Byte strings at least this long are referenced into a frame's pieces, not copied. */
export const PIECE_REF_MIN = 64 * 1024;
/** The shared writer's first buffer: room for any answer without a large payload. */
const SHARED_WRITER_BYTES = 4096;

/** Decode bounds by frame type (0–255), made once: {@link peerDecodeLimits} allocates nothing per frame. */
const PEER_LIMITS: readonly DecodeLimits[] = Array.from({ length: 256 }, (_, type) => ({
  maxDepth: DEFAULT_LIMITS.maxDepth,
  maxItems: PEER_MESSAGE_MAX_ITEMS[type] ?? PEER_OTHER_MESSAGE_MAX_ITEMS,
}));

/**
 * The bounds a kernel decodes a peer's message of `frameType` within: at most the items its type
 * can hold ({@link PEER_MESSAGE_MAX_ITEMS}), not the 100,000 of {@link DEFAULT_LIMITS} (PROTOCOL §8.8).
 */
export function peerDecodeLimits(frameType: number): DecodeLimits {
  return PEER_LIMITS[frameType & 0xff] as DecodeLimits;
}

/**
 * The receiving half of a session, the same on both sides: bytes in any chunking become
 * messages, with bodies that came through shared memory taken out of the peer's segment.
 */
export class FrameReader {
  private readonly decoder: FrameDecoder;
  /** The session's shared-memory channel, once "shm" was negotiated. */
  shm: ShmPeer | undefined;

  /**
   * `alloc`: where large frames are joined (see {@link BodyAllocator}); the shm channel takes its own.
   * `release`: takes back a body that did not decode (no message holds it; memory not `alloc`'s is ignored).
   */
  constructor(
    maxBody?: number,
    alloc?: BodyAllocator,
    private readonly release?: (body: Uint8Array) => void,
  ) {
    this.decoder = new FrameDecoder(maxBody, alloc);
  }

  /**
   * Lowers or raises the body limit, e.g. after the handshake negotiated one. It bounds bodies
   * through shared memory too: the kernel's ATTEST limit held inline only, and an ATTEST through
   * the segment could make it copy and checksum the negotiated maximum before any signature.
   */
  setMaxBody(n: number): void {
    this.decoder.setMaxBody(n);
  }

  /**
   * The bounds a message body of each frame type is decoded within (default
   * {@link DEFAULT_LIMITS} for all): the kernel holds what a peer sends to what its type can hold
   * ({@link peerDecodeLimits}), so that decoding costs no more than the message needs.
   */
  decodeLimits: (frameType: number) => DecodeLimits = () => DEFAULT_LIMITS;

  /** A partial frame: bytes received of it, and the memory held for them (see FrameDecoder.retainedBytes). */
  get partial(): { received: number; retained: number } {
    return { received: this.decoder.pending, retained: this.decoder.retainedBytes };
  }

  /**
   * Decodes the chunk's complete messages and hands each to `onMessage`, in order, while it
   * returns true (false: the session ended, drop the rest). Each frame is checked against the
   * body limit in force when it is handled — after `onMessage` took every message before it —
   * never the one in force when the chunk arrived: a HELLO that lowers the limit bounds an ATTEST
   * read with it. A malformed frame, shared-memory descriptor or message goes to `onError` as a
   * {@link CodecError} and ends the chunk; the stream is unusable after it. Errors thrown by
   * `onMessage` propagate.
   */
  push(
    chunk: Uint8Array,
    onMessage: (m: Message, f: Frame) => boolean,
    onError: (e: CodecError, stage: "frame" | "message") => void,
  ): void {
    let failed: CodecError | undefined;
    let handlerThrew = false;
    try {
      this.decoder.pushEach(chunk, (raw) => {
        let f: Frame | undefined;
        let m: Message;
        try {
          // The header parser admits only the SHM flag; it is valid once "shm" was negotiated.
          if (raw.flags !== 0 && !this.shm)
            throw new CodecError("PROTOCOL", "SHM_NOT_NEGOTIATED", "frame flags set on a session without the shm feature");
          f = raw.flags !== 0 && this.shm ? this.shm.unwrap(raw, this.decoder.bodyLimit) : raw;
          m = decodeMessage(f, this.decodeLimits(f.type));
        } catch (e) {
          // The body's memory goes back (a slab of the kernel's pool): the stream ends here.
          this.release?.((f ?? raw).body);
          if (!(e instanceof CodecError)) throw e;
          failed = e;
          return false;
        }
        try {
          return onMessage(m, f);
        } catch (e) {
          handlerThrew = true;
          throw e;
        }
      });
    } catch (e) {
      // The decoder's own (a bad header) goes to onError; what a handler threw propagates.
      if (handlerThrew || !(e instanceof FrameError)) throw e;
      onError(e, "frame");
      return;
    }
    if (failed) onError(failed, "message");
  }
}

/** The writer shared by every {@link framePieces} call given `copiedBelow` (one thread encodes at a time). */
let shared: PieceWriter | undefined;

/**
 * A message as frame pieces (large byte strings referenced, not copied) and its body size.
 *
 * With `copiedBelow` (the channel's {@link ByteChannel.copiesWritesBelow}), the frame is encoded
 * into one writer shared by all such calls, with no allocation of its own: its pieces are valid
 * only until the next such call, so they must be written at once to a channel that copies
 * writes under that size. A frame whose own bytes reach `copiedBelow` would not be copied: it
 * keeps the writer's buffer, and the next call starts a new one.
 */
export function framePieces(msg: Message, stream = 0, copiedBelow = 0): { pieces: Uint8Array[]; bodySize: number } {
  let into: PieceWriter | undefined;
  if (copiedBelow > 0) into = shared ??= new PieceWriter(SHARED_WRITER_BYTES, HEADER_SIZE, PIECE_REF_MIN);
  const pieces = encodeMessagePieces(msg, stream, PIECE_REF_MIN, into);
  if (into !== undefined && into.ownLength >= copiedBelow) shared = undefined;
  let bodySize = -HEADER_SIZE;
  for (const p of pieces) bodySize += p.length;
  return { pieces, bodySize };
}

/**
 * Writes a frame given as pieces: copied once into the shared-memory segment when `shm` takes
 * it, else the pieces themselves (the channel sends the writes of one turn together).
 * `written`, if given, runs once the channel holds none of the pieces any more (at once when
 * the segment took a copy; see {@link ByteChannel.afterWrites}).
 */
export function writePieces(
  channel: Pick<ByteChannel, "write" | "afterWrites">,
  pieces: Uint8Array[],
  shm?: ShmPeer,
  written?: () => void,
): void {
  const viaShm = shm?.wrapPieces(pieces);
  if (viaShm) channel.write(viaShm);
  else for (const p of pieces) channel.write(p);
  if (written === undefined) return;
  if (viaShm || !channel.afterWrites) written();
  else channel.afterWrites(written);
}

/** Encodes and writes one message (see {@link writePieces}). */
export function writeMessage(channel: Pick<ByteChannel, "write">, msg: Message, stream = 0, shm?: ShmPeer): void {
  writePieces(channel, framePieces(msg, stream).pieces, shm);
}
