import { DEFAULT_LIMITS, type DecodeLimits } from "../constants.js";
import { CborError } from "../errors.js";
import type { CborMap, CborValue } from "./value.js";

/**
 * Decodes one KPIP canonical CBOR item in a single pass: every rule of the two-pass validator it replaced (test/canonical-validate.ts) is checked
 * at the byte where that validator checks it, in the same order with the same error, while the
 * value is built. So it accepts exactly what validateCanonical accepts and fails with the same
 * {@link CborError} (code and message); the property tests hold it to test/reference.ts,
 * the two-pass validator + cbor-x it replaces.
 *
 * Nothing is allocated for a declared length before its bytes are present: strings are read
 * after their length was checked against the input, byte strings are views of it, arrays and
 * maps grow by the items actually decoded (each counted against maxItems before it is read).
 * Throws {@link CborError}; never anything else.
 */
export function decodeCanonical(bytes: Uint8Array, limits: DecodeLimits = DEFAULT_LIMITS): CborValue {
  // First, before anything that can throw: a failed call must not leave the last call's count.
  items = 0;
  src = bytes;
  pos = 0;
  end = bytes.length;
  maxItems = limits.maxItems;
  maxDepth = limits.maxDepth;
  try {
    const v = item(0);
    if (pos !== end) throw new CborError("TRAILING_BYTES", `${end - pos} bytes after the data item`);
    return v;
  } finally {
    // Hold no reference to the caller's frame between calls.
    src = EMPTY;
  }
}

/**
 * Data items the last {@link decodeCanonical} read, also when it failed (0 when it failed before
 * reading any): what the decode cost (the kernel charges refused requests' intents by it). Read it
 * right after the call: the next decode of anything resets it.
 */
export function lastDecodedItems(): number {
  return items;
}

const EMPTY = new Uint8Array(0);
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

// The decoder's state for the one item being decoded (decoding never re-enters).
let src: Uint8Array = EMPTY;
let pos = 0;
let end = 0;
let items = 0;
let maxItems = 0;
let maxDepth = 0;
/** The last head's argument (for an 8-byte head, hi·2^32 + lo, exact below 2^53). */
let arg = 0;
/** The high and low words of the last 8-byte head, for integers that need a bigint. */
let argHi = 0;
let argLo = 0;

function need(n: number): void {
  if (pos + n > end) throw new CborError("TRUNCATED", "data item runs past the end of the input");
}

function u32(p: number): number {
  return (
    (((src[p] as number) << 24) >>> 0) + ((src[p + 1] as number) << 16) + ((src[p + 2] as number) << 8) + (src[p + 3] as number)
  );
}

/** Reads a head; returns the major type and leaves the argument in `arg` (validate.ts's head()). */
function head(): number {
  need(1);
  const ib = src[pos++] as number;
  const major = ib >> 5;
  const ai = ib & 31;
  if (major === 7 || ai < 24) {
    arg = ai;
    return major;
  }
  if (ai === 24) {
    need(1);
    arg = src[pos++] as number;
    if (arg < 24) throw nonCanonical();
  } else if (ai === 25) {
    need(2);
    arg = ((src[pos] as number) << 8) | (src[pos + 1] as number);
    pos += 2;
    if (arg < 0x100) throw nonCanonical();
  } else if (ai === 26) {
    need(4);
    arg = u32(pos);
    pos += 4;
    if (arg < 0x10000) throw nonCanonical();
  } else if (ai === 27) {
    need(8);
    argHi = u32(pos);
    argLo = u32(pos + 4);
    pos += 8;
    if (argHi === 0) throw nonCanonical();
    // Lengths and tags use `arg` as validate.ts does; bit 3 tells item() an integer may need a bigint.
    arg = argHi * 0x100000000 + argLo;
    return major | 8;
  } else if (ai === 31) {
    throw new CborError("INDEFINITE_LENGTH", "indefinite-length items are not canonical");
  } else {
    throw new CborError("MALFORMED", `reserved additional information ${ai}`);
  }
  return major;
}

function item(depth: number): CborValue {
  if (++items > maxItems) throw tooManyItems();
  let major = head();
  if (major >= 8) {
    major &= 7;
    if (major < 2) return wideInteger(major);
  }
  switch (major) {
    case 0:
      return arg;
    case 1:
      return -1 - arg;
    case 2: {
      need(arg);
      // A view of the input, as cbor-x returned (a Buffer's subarray is a Buffer).
      const b = src.subarray(pos, pos + arg);
      pos += arg;
      return b;
    }
    case 3:
      return text();
    case 4: {
      if (depth >= maxDepth) throw tooDeep();
      const n = arg;
      // Every element takes at least one byte: a count the input cannot hold is a lie.
      need(n);
      // Grown per element, not sized from the head: the count is not yet checked against maxItems.
      const a: CborValue[] = [];
      for (let i = 0; i < n; i++) a.push(item(depth + 1));
      return a;
    }
    case 5:
      if (depth >= maxDepth) throw tooDeep();
      return map(depth);
    case 6:
      throw new CborError("UNSUPPORTED_TAG", `tag ${arg} is not allowed`);
    default:
      switch (arg) {
        case 20:
          return false;
        case 21:
          return true;
        case 22:
          return null;
        case 23:
          throw new CborError("UNSUPPORTED_TYPE", "undefined is not allowed");
        case 25:
        case 26:
        case 27:
          throw new CborError("UNSUPPORTED_TYPE", "floating-point numbers are not allowed");
        case 31:
          throw new CborError("MALFORMED", "unexpected break");
        default:
          throw new CborError("UNSUPPORTED_TYPE", `simple value ${arg} is not allowed`);
      }
  }
}

/** An integer from an 8-byte head: a number when it is a safe integer, else a bigint. */
function wideInteger(major: number): number | bigint {
  if (argHi < 0x200000) {
    // arg < 2^53, exact
    if (major === 0) return arg;
    const v = -1 - arg;
    if (v >= -MAX_SAFE) return v;
  }
  const n = (BigInt(argHi) << 32n) | BigInt(argLo);
  return major === 0 ? n : -1n - n;
}

function map(depth: number): CborMap {
  const n = arg;
  need(n * 2);
  // Keys are never "__proto__" (refused below), so a plain object holds them as data, as cbor-x's did.
  const o: CborMap = {};
  let prevStart = -1;
  let prevEnd = -1;
  for (let i = 0; i < n; i++) {
    if (++items > maxItems) throw tooManyItems();
    const keyStart = pos;
    if ((head() & 7) !== 3) throw new CborError("BAD_KEY", "map keys must be text strings");
    const k = text();
    if (k === "__proto__") throw new CborError("BAD_KEY", 'the map key "__proto__" is not allowed');
    const keyEnd = pos;
    if (prevStart >= 0) {
      const c = compareBytes(prevStart, prevEnd, keyStart, keyEnd);
      if (c === 0) throw new CborError("DUPLICATE_KEY", `duplicate map key ${JSON.stringify(k)}`);
      if (c > 0) throw new CborError("UNSORTED_KEYS", `map key ${JSON.stringify(k)} is out of canonical order`);
    }
    prevStart = keyStart;
    prevEnd = keyEnd;
    o[k] = item(depth + 1);
  }
  return o;
}

/** The text string whose head was just read: checked present and valid UTF-8, then decoded. */
function text(): string {
  const n = arg;
  need(n);
  const start = pos;
  pos += n;
  if (n === 0) return "";
  if (n <= SHORT) {
    let ascii = true;
    for (let i = start; i < pos; i++) {
      if ((src[i] as number) > 0x7f) {
        ascii = false;
        break;
      }
    }
    if (ascii) return shortAscii(start, n);
  }
  try {
    return utf8.decode(src.subarray(start, pos));
  } catch {
    throw new CborError("INVALID_UTF8", "text string is not valid UTF-8");
  }
}

/** ASCII strings up to this many bytes are built in JS (through a cache), longer ones natively. */
const SHORT = 32;
/**
 * Recently seen short ASCII strings, by a hash of their bytes: map keys and enum-like values
 * (status, op, persona) repeat in every frame, so most are found here instead of allocated.
 * A hit is compared byte for byte, so a collision only costs a miss. The cache is shared by all
 * sessions: a string is returned only for the very bytes that made it, and a hit saves tens of
 * nanoseconds, far below one request's jitter, so it tells no session what another sent.
 * (Measured: without it a REQUEST body decodes ~2× slower, and longer strings built by `+=`
 * were cons strings that the intent grammar's regexes then had to flatten.)
 */
const cache: string[] = new Array(1024).fill("");

function shortAscii(start: number, n: number): string {
  const last = src[start + n - 1] as number;
  const h = (n * 0x1f + (src[start] as number) * 0x3b + last * 0x95 + (src[start + (n >> 1)] as number) * 0x0b) & 1023;
  const hit = cache[h] as string;
  if (hit.length === n) {
    let i = 0;
    while (i < n && hit.charCodeAt(i) === src[start + i]) i++;
    if (i === n) return hit;
  }
  let s = "";
  for (let i = start; i < start + n; i++) s += String.fromCharCode(src[i] as number);
  cache[h] = s;
  return s;
}

function compareBytes(as: number, ae: number, bs: number, be: number): number {
  const la = ae - as;
  const lb = be - bs;
  const n = Math.min(la, lb);
  for (let i = 0; i < n; i++) {
    const d = (src[as + i] as number) - (src[bs + i] as number);
    if (d !== 0) return d;
  }
  return la - lb;
}

function nonCanonical(): CborError {
  return new CborError("NON_CANONICAL", "integer or length not in its shortest form");
}
function tooManyItems(): CborError {
  return new CborError("TOO_MANY_ITEMS", `more than ${maxItems} data items`);
}
function tooDeep(): CborError {
  return new CborError("TOO_DEEP", `nesting deeper than ${maxDepth}`);
}
