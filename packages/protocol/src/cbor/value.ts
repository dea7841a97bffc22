/**
 * The KPIP data model: what a canonical CBOR body may hold. Deliberately small so that
 * every value has exactly one encoding (RFC 8949 §4.2.1) in every language:
 * - integers (major types 0/1) from -2^64 to 2^64-1: a JS number when it is a safe integer, else a bigint;
 * - byte strings (Uint8Array) and UTF-8 text strings;
 * - arrays, and maps whose keys are text strings (decoded as plain objects);
 * - true, false, null.
 * No floating point (a value needing a fraction travels as a string or as scaled integers),
 * no tags, no undefined, no indefinite lengths.
 */
export type CborValue = null | boolean | number | bigint | string | Uint8Array | CborValue[] | CborMap;
export interface CborMap {
  [key: string]: CborValue;
}

export const MAX_UINT64 = (1n << 64n) - 1n;
export const MIN_NINT64 = -(1n << 64n);
