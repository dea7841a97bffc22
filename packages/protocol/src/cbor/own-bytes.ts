/**
 * Byte strings kept past the read they were decoded from. A decoded byte string is a view of its
 * frame (or of the socket's read chunk), and a small Buffer is a view of Node's shared 8 KiB pool:
 * kept, one holds all of that alive while counted at its own length.
 */

/** `b` in memory of its own: a copy when it is a view of a larger buffer, else `b` itself. */
export function ownCopy(b: Uint8Array): Uint8Array {
  return b.byteLength < b.buffer.byteLength ? copyOwn(b) : b;
}

/** A copy of `b` in memory of its own (never the shared pool); a Buffer when `b` is one or `asBuffer`. */
export function copyOwn(b: Uint8Array, asBuffer = Buffer.isBuffer(b)): Uint8Array {
  const c = asBuffer ? Buffer.allocUnsafeSlow(b.byteLength) : new Uint8Array(b.byteLength);
  c.set(b);
  return c;
}

/** `v` with each byte string in it made {@link ownCopy}, in place (arrays and maps walked). */
export function ownBytes<T>(v: T): T {
  if (v instanceof Uint8Array) return ownCopy(v) as T;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = ownBytes(v[i]);
  } else if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) o[k] = ownBytes(o[k]);
  }
  return v;
}
