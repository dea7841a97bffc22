import type { CborValue } from "@kpip/protocol";

/**
 * `v` with each byte string that is a view into a larger buffer (the socket read it was decoded
 * from, 64 KiB, or a whole frame) copied to memory of its own, in place. An event kept unread is
 * counted at its frame's size: a one-byte byte string holding its read's 64 KiB would let an
 * emitter make a subscriber keep 64 times what its `bufferBytes` counts.
 */
export function ownBytes(v: CborValue): CborValue {
  if (v instanceof Uint8Array) return v.byteLength < v.buffer.byteLength ? copy(v) : v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = ownBytes(v[i] as CborValue);
  } else if (v !== null && typeof v === "object") {
    for (const k of Object.keys(v)) v[k] = ownBytes(v[k] as CborValue);
  }
  return v;
}

function copy(b: Uint8Array): Uint8Array {
  // A Buffer stays one (callers may use its methods), in memory of its own, not Buffer's shared pool.
  const c = Buffer.isBuffer(b) ? Buffer.allocUnsafeSlow(b.byteLength) : new Uint8Array(b.byteLength);
  c.set(b);
  return c;
}
