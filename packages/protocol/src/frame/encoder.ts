import { CanonicalWriter, PieceWriter } from "../cbor/encode.js";
import type { CborValue } from "../cbor/value.js";
import { HEADER_SIZE } from "../constants.js";
import { writeHeader } from "./header.js";

export interface FrameOptions {
  type: number;
  stream?: number;
  flags?: number;
}

/**
 * Encodes `body` as canonical CBOR straight after room for the header and fills the header
 * in: one allocation, no copy of the body.
 */
export function encodeFrame(opts: FrameOptions, body: CborValue): Buffer {
  const w = new CanonicalWriter(256, HEADER_SIZE);
  w.write(body);
  const out = w.finish();
  writeHeader(out, 0, { type: opts.type, flags: opts.flags ?? 0, stream: opts.stream ?? 0, length: out.length - HEADER_SIZE });
  return out;
}

/**
 * Frames an already-encoded body as an iovec pair `[header, body]` for a vectored write:
 * the body is referenced, not copied (e.g. for large storage payloads).
 */
export function encodeFrameParts(opts: FrameOptions, body: Uint8Array): [Buffer, Uint8Array] {
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  writeHeader(header, 0, { type: opts.type, flags: opts.flags ?? 0, stream: opts.stream ?? 0, length: body.length });
  return [header, body];
}

/**
 * Like {@link encodeFrame}, but byte strings of `refMin` bytes or more are referenced, not
 * copied: the frame comes back as pieces (header and body start in the first) for a vectored
 * write or a copy straight into shared memory. `response`: the body is a RESPONSE's, tried on
 * the encoder's fast path for that shape first (the same bytes).
 */
export function encodeFramePieces(
  opts: FrameOptions,
  body: CborValue,
  refMin: number,
  response = false,
  /** A writer to encode into (reset here), e.g. one reused from frame to frame; else a new one. */
  into?: PieceWriter,
): Uint8Array[] {
  const w = into ?? new PieceWriter(256, HEADER_SIZE, refMin);
  if (into) w.reset(HEADER_SIZE);
  if (!(response && typeof body === "object" && body !== null && w.writeResponse(body))) w.write(body);
  const parts = w.finishParts();
  let total = 0;
  for (let i = 0; i < parts.length; i++) total += (parts[i] as Uint8Array).length;
  writeHeader(parts[0] as Uint8Array, 0, {
    type: opts.type,
    flags: opts.flags ?? 0,
    stream: opts.stream ?? 0,
    length: total - HEADER_SIZE,
  });
  return parts;
}
