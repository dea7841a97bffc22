import { type CborValue, ownBytes as ownProtocolBytes } from "@kpip/protocol";

/**
 * `v` with each byte string that is a view into a larger buffer (the socket read it was decoded
 * from, 64 KiB, or a whole frame) copied to memory of its own, in place. An event kept unread is
 * counted at its frame's size: a one-byte byte string holding its read's 64 KiB would let an
 * emitter make a subscriber keep 64 times what its `bufferBytes` counts.
 */
export const ownBytes = (v: CborValue): CborValue => ownProtocolBytes(v);
