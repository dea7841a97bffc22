/**
 * @kpip/protocol — the KPIP wire format, shared by kernel and clients.
 * No sockets, no files, no timers: bytes in, typed values or typed errors out.
 */

export { ATTEST_CONTEXT, attestationTranscript } from "./attest.js";
export { decodeCanonical, lastDecodedItems } from "./cbor/decode.js";
export { CanonicalWriter, compareKeys, encodeCanonical, headSize, PieceWriter, sortKeys, writeHead } from "./cbor/encode.js";
export { copyOwn, ownBytes, ownCopy } from "./cbor/own-bytes.js";
export type { CborMap, CborValue } from "./cbor/value.js";
export {
  type ByteChannel,
  COPY_BELOW,
  type CorkableStream,
  coalesce,
  joinChunks,
  socketTurnBatcher,
  TurnBatcher,
  writeMessages,
} from "./channel/channel.js";
export { FrameReader, framePieces, PIECE_REF_MIN, peerDecodeLimits, writeMessage, writePieces } from "./channel/frames.js";
export * from "./constants.js";
export * from "./errors.js";
export { type BodyAllocator, type Frame, FrameDecoder } from "./frame/decoder.js";
export { encodeFrame, encodeFrameParts, encodeFramePieces, type FrameOptions } from "./frame/encoder.js";
export { type FrameHeader, readHeader, writeHeader } from "./frame/header.js";
export * from "./identity.js";
export * from "./intent/grammar.js";
export * from "./intent/intent.js";
export { decodeMessage, encodeMessage, encodeMessagePieces } from "./messages/codec.js";
export { encodedBody, withEncodedBody } from "./messages/encoded-body.js";
export { encodeMeasurements } from "./messages/measurements.js";
export type * from "./messages/types.js";
export { escapeUnprintable, replaceUnprintable, UNPRINTABLE, validateMessage } from "./messages/validate.js";
export * from "./ops/index.js";
export { sha256, sha256Latin1 } from "./sha256.js";
export {
  decodeShmDescriptor,
  SHM_CONTROL_BYTES,
  SHM_DEFAULT_THRESHOLD,
  SHM_FEATURE,
  type ShmDescriptor,
  ShmError,
  type ShmNative,
  ShmPeer,
  type ShmSegment,
  shmSegmentName,
} from "./shm/peer.js";
export * from "./token/compiled.js";
export * from "./token/pattern.js";
export * from "./token/token.js";
export { negotiateVersion } from "./version.js";
