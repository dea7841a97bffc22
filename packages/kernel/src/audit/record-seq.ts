/**
 * What `audit verify` reads of a record's stored bytes without decoding them (no import of the
 * CBOR decoder: the verify workers load only this, verify-records.ts and SQLite).
 */

/** Length of the previous-hash prefix of a record's bytes. */
export const PREV_HASH_BYTES = 32;

/**
 * The sequence number a record's bytes carry, read without decoding the rest: the map's first
 * fields in canonical order are `op` (optional) and `seq`. Undefined when the bytes do not start
 * that way (then they are not the kernel's record; verify compares this with the row's key).
 */
export function recordSeq(b: Uint8Array): number | undefined {
  let p = PREV_HASH_BYTES;
  const head = b[p++];
  if (head === undefined || head < 0xa6 || head > 0xb7) return undefined;
  // "op": 0x62 'o' 'p', then a text string.
  if (b[p] === 0x62 && b[p + 1] === 0x6f && b[p + 2] === 0x70) {
    p += 3;
    const t = uintAt(b, p, 3);
    if (t === undefined) return undefined;
    p = t.next + t.value;
  }
  // "seq": 0x63 's' 'e' 'q', then an unsigned integer.
  if (b[p] !== 0x63 || b[p + 1] !== 0x73 || b[p + 2] !== 0x65 || b[p + 3] !== 0x71) return undefined;
  const s = uintAt(b, p + 4, 0);
  return s?.value;
}

/** A CBOR head of major type `major` at `p`: its argument and where what follows starts. */
export function uintAt(b: Uint8Array, p: number, major: number): { value: number; next: number } | undefined {
  const ib = b[p];
  if (ib === undefined || ib >> 5 !== major) return undefined;
  const ai = ib & 31;
  if (ai < 24) return { value: ai, next: p + 1 };
  const n = ai === 24 ? 1 : ai === 25 ? 2 : ai === 26 ? 4 : ai === 27 ? 8 : 0;
  if (n === 0 || p + 1 + n > b.length) return undefined;
  let v = 0;
  for (let i = 1; i <= n; i++) v = v * 256 + (b[p + i] as number);
  if (!Number.isSafeInteger(v)) return undefined;
  return { value: v, next: p + 1 + n };
}
