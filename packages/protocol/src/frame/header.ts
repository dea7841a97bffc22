import { FRAME_VERSION, HEADER_SIZE, KNOWN_FLAGS, MAGIC, messageTypeName } from "../constants.js";
import { FrameError } from "../errors.js";

/**
 * The fixed 16-byte frame header, all integers big-endian:
 *
 * | offset | size | field    |                                                      |
 * |--------|------|----------|------------------------------------------------------|
 * | 0      | 2    | magic    | 0x4B 0x50 ("KP")                                     |
 * | 2      | 1    | version  | frame-layout version, 1                              |
 * | 3      | 1    | type     | message type                                         |
 * | 4      | 1    | flags    | bit 0 = SHM descriptor body; other bits must be 0    |
 * | 5      | 3    | reserved | must be 0                                            |
 * | 8      | 4    | stream   | correlation id: a RESPONSE echoes its REQUEST's      |
 * | 12     | 4    | length   | body length in bytes                                 |
 */
export interface FrameHeader {
  type: number;
  flags: number;
  stream: number;
  length: number;
}

/** Writes a header into `buf` at `offset`. */
export function writeHeader(buf: Uint8Array, offset: number, h: FrameHeader): void {
  buf[offset] = MAGIC >> 8;
  buf[offset + 1] = MAGIC & 0xff;
  buf[offset + 2] = FRAME_VERSION;
  buf[offset + 3] = h.type;
  buf[offset + 4] = h.flags;
  buf[offset + 5] = 0;
  buf[offset + 6] = 0;
  buf[offset + 7] = 0;
  writeU32(buf, offset + 8, h.stream);
  writeU32(buf, offset + 12, h.length);
}

/**
 * Reads and checks a header at `offset` (the caller guarantees HEADER_SIZE bytes).
 * Throws {@link FrameError} for bad magic, an unsupported version, an unknown type, unknown
 * flags, non-zero reserved bytes, or a body longer than `maxBody`.
 */
export function readHeader(buf: Uint8Array, offset: number, maxBody: number): FrameHeader {
  if (buf[offset] !== MAGIC >> 8 || buf[offset + 1] !== (MAGIC & 0xff)) {
    throw new FrameError("BAD_MAGIC", "frame does not start with the KPIP magic");
  }
  if (buf[offset + 2] !== FRAME_VERSION) {
    throw new FrameError(
      "UNSUPPORTED_VERSION",
      `frame version ${buf[offset + 2]} is not supported (supported: ${FRAME_VERSION})`,
    );
  }
  const type = buf[offset + 3] as number;
  if (messageTypeName(type) === undefined) throw new FrameError("UNKNOWN_TYPE", `unknown message type ${type}`);
  const flags = buf[offset + 4] as number;
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new FrameError("UNKNOWN_FLAGS", `unknown flag bits 0x${flags.toString(16)}`);
  if (buf[offset + 5] !== 0 || buf[offset + 6] !== 0 || buf[offset + 7] !== 0) {
    throw new FrameError("RESERVED_NONZERO", "reserved header bytes must be zero");
  }
  const stream = readU32(buf, offset + 8);
  const length = readU32(buf, offset + 12);
  if (length > maxBody) throw new FrameError("TOO_LARGE", `frame body of ${length} bytes exceeds the limit of ${maxBody}`);
  return { type, flags, stream, length };
}

function writeU32(b: Uint8Array, p: number, v: number): void {
  b[p] = v >>> 24;
  b[p + 1] = (v >>> 16) & 0xff;
  b[p + 2] = (v >>> 8) & 0xff;
  b[p + 3] = v & 0xff;
}

function readU32(b: Uint8Array, p: number): number {
  return (((b[p] as number) << 24) >>> 0) + ((b[p + 1] as number) << 16) + ((b[p + 2] as number) << 8) + (b[p + 3] as number);
}

export { HEADER_SIZE };
