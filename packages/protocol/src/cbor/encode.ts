import { CborError } from "../errors.js";
import type { CborValue } from "./value.js";
import { MAX_UINT64, MIN_NINT64 } from "./value.js";

/** Same nesting bound as the decoder's default (DEFAULT_LIMITS.maxDepth): never build what a peer must refuse. */
const MAX_ENCODE_DEPTH = 32;

/**
 * Writes KPIP canonical CBOR (RFC 8949 §4.2.1 deterministic encoding): shortest heads,
 * definite lengths, map keys sorted by their encoded bytes. Hand-written because cbor-x
 * cannot emit this form (it keeps map keys in insertion order and writes integers of
 * 2^32 and above as float64); decode.ts is its counterpart.
 */
export class CanonicalWriter {
  private buf: Buffer;
  private pos: number;
  /** Finished pieces when byte strings were referenced rather than copied (see `refMin`). */
  private readonly done: Uint8Array[] = [];
  private segStart = 0;

  /**
   * `headroom` bytes are left free at the start, e.g. for a frame header. Byte strings of
   * `refMin` bytes or more are referenced, not copied: {@link finishParts} then returns the
   * encoding as pieces for a vectored write (the caller must not change those bytes meanwhile).
   */
  constructor(
    initialSize = 256,
    headroom = 0,
    private readonly refMin = Number.POSITIVE_INFINITY,
  ) {
    this.buf = Buffer.allocUnsafe(Math.max(initialSize, headroom + 16));
    this.pos = headroom;
  }

  /** The bytes written so far, including any headroom (a view, not a copy, unless pieces were referenced). */
  finish(): Buffer {
    if (this.done.length === 0) return this.buf.subarray(0, this.pos);
    return Buffer.concat(this.finishParts());
  }

  /** Bytes written so far (headroom and referenced pieces included). */
  get length(): number {
    let n = this.pos - this.segStart;
    for (const d of this.done) n += d.length;
    return n;
  }

  /**
   * Starts again at the beginning of the same buffer, so one writer serves call after call
   * without allocating; views of what it wrote before are overwritten from here on.
   */
  reset(headroom = 0): void {
    this.pos = headroom;
    this.segStart = 0;
    this.done.length = 0;
  }

  /** Copies what was written into `out` at `at` (no intermediate buffer); returns the bytes copied. */
  copyTo(out: Uint8Array, at: number): number {
    let n = 0;
    for (const d of this.done) {
      out.set(d, at + n);
      n += d.length;
    }
    const buf = this.buf;
    const end = this.pos;
    let to = at + n;
    if (end - this.segStart > 64) return n + buf.copy(out, to, this.segStart, end);
    // A short tail byte by byte: Buffer.copy of part of a buffer allocates a view for it.
    for (let i = this.segStart; i < end; i++) out[to++] = buf[i] as number;
    return to - at;
  }

  /** The encoding as pieces in order: views of the writer's buffer and the referenced byte strings. */
  finishParts(): Uint8Array[] {
    const tail = this.buf.subarray(this.segStart, this.pos);
    return tail.length > 0 ? [...this.done, tail] : [...this.done];
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** A head: major type and argument (a length, a count or an unsigned integer), shortest form. */
  head(major: number, n: number): void {
    const m = major << 5;
    if (n < 24) {
      this.ensure(1);
      this.buf[this.pos++] = m | n;
    } else if (n < 0x100) {
      this.ensure(2);
      this.buf[this.pos++] = m | 24;
      this.buf[this.pos++] = n;
    } else if (n < 0x10000) {
      this.ensure(3);
      this.buf[this.pos++] = m | 25;
      this.buf.writeUInt16BE(n, this.pos);
      this.pos += 2;
    } else if (n < 0x100000000) {
      this.ensure(5);
      this.buf[this.pos++] = m | 26;
      this.buf.writeUInt32BE(n, this.pos);
      this.pos += 4;
    } else {
      this.ensure(9);
      this.buf[this.pos++] = m | 27;
      this.buf.writeUInt32BE(Math.floor(n / 0x100000000), this.pos);
      this.buf.writeUInt32BE(n >>> 0, this.pos + 4);
      this.pos += 8;
    }
  }

  private headBig(major: number, n: bigint): void {
    if (n < 0x100000000n) {
      this.head(major, Number(n));
      return;
    }
    this.ensure(9);
    this.buf[this.pos++] = (major << 5) | 27;
    this.buf.writeBigUInt64BE(n, this.pos);
    this.pos += 8;
  }

  /** Writes one value. Throws CborError(UNSUPPORTED_TYPE) for anything outside the data model. */
  write(v: CborValue, depth = 0): void {
    if (depth > MAX_ENCODE_DEPTH) throw new CborError("TOO_DEEP", `value nests deeper than ${MAX_ENCODE_DEPTH}`);
    // Containers at depth ≥ MAX are refused below (as the validator does); scalars may sit at depth MAX.
    switch (typeof v) {
      case "number":
        if (!Number.isSafeInteger(v)) {
          throw new CborError(
            "UNSUPPORTED_TYPE",
            `only safe integers are encodable as numbers (got ${v}); use a bigint or a string`,
          );
        }
        if (v >= 0) this.head(0, v);
        else this.head(1, -1 - v);
        return;
      case "string":
        this.writeText(v);
        return;
      case "boolean":
        this.ensure(1);
        this.buf[this.pos++] = v ? 0xf5 : 0xf4;
        return;
      case "bigint":
        if (v > MAX_UINT64 || v < MIN_NINT64) throw new CborError("UNSUPPORTED_TYPE", "integer outside the 64-bit CBOR range");
        if (v >= 0n) this.headBig(0, v);
        else this.headBig(1, -1n - v);
        return;
      case "object":
        if (v === null) {
          this.ensure(1);
          this.buf[this.pos++] = 0xf6;
          return;
        }
        if (v instanceof Uint8Array) {
          this.head(2, v.length);
          if (v.length >= this.refMin) {
            this.done.push(this.buf.subarray(this.segStart, this.pos), v);
            this.segStart = this.pos;
            return;
          }
          this.ensure(v.length);
          this.buf.set(v, this.pos);
          this.pos += v.length;
          return;
        }
        if (depth >= MAX_ENCODE_DEPTH) {
          throw new CborError("TOO_DEEP", `value nests deeper than ${MAX_ENCODE_DEPTH}`);
        }
        if (Array.isArray(v)) {
          this.head(4, v.length);
          for (const item of v) this.write(item, depth + 1);
          return;
        }
        this.writeMap(v as Record<string, CborValue>, depth);
        return;
      default:
        throw new CborError("UNSUPPORTED_TYPE", `cannot encode a value of type ${typeof v}`);
    }
  }

  private writeText(s: string): void {
    const n = s.length;
    if (n <= SHORT_TEXT) {
      // Short ASCII text (keys, ops, targets, names) byte by byte: cheaper than a call into
      // Buffer.write. Any other character: back to the start and the general path below.
      const start = this.pos;
      this.head(3, n);
      this.ensure(n);
      const buf = this.buf;
      let at = this.pos;
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c > 0x7f) {
          at = -1;
          break;
        }
        buf[at++] = c;
      }
      if (at >= 0) {
        this.pos = at;
        return;
      }
      this.pos = start;
    }
    // At most 3 bytes per UTF-16 code unit; write the head for the real length afterwards.
    const max = n * 3;
    if (max < 24 || isAscii(s)) {
      const len = max < 24 ? Buffer.byteLength(s) : s.length;
      this.head(3, len);
      this.ensure(len);
      this.pos += this.buf.write(s, this.pos, "utf8");
      return;
    }
    const len = Buffer.byteLength(s);
    this.head(3, len);
    this.ensure(len);
    this.pos += this.buf.write(s, this.pos, "utf8");
  }

  private writeMap(obj: Record<string, CborValue>, depth: number): void {
    const proto = Object.getPrototypeOf(obj);
    if (proto !== Object.prototype && proto !== null) {
      throw new CborError("UNSUPPORTED_TYPE", `cannot encode an instance of ${proto?.constructor?.name ?? "unknown"}`);
    }
    let keys = Object.keys(obj);
    let defined = 0;
    for (let i = 0; i < keys.length; i++) if (obj[keys[i] as string] !== undefined) defined++;
    if (defined !== keys.length) keys = keys.filter((k) => obj[k] !== undefined);
    // Objects built in canonical order (the hot paths build them so) need no sort.
    if (keys.length > 1 && !isSorted(keys)) sortKeys(keys);
    this.head(5, keys.length);
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i] as string;
      this.writeText(k);
      this.write(obj[k] as CborValue, depth + 1);
    }
  }
}

/** Text up to this many UTF-16 units is tried as ASCII, written byte by byte. */
const SHORT_TEXT = 48;

/**
 * `keys.sort(compareKeys)`, in place: an insertion sort for the few keys of a protocol map, where
 * Array.prototype.sort copies into a work array every call (a tenth of the kernel's allocation
 * under load, each response and record encoded).
 */
export function sortKeys(keys: string[]): void {
  if (keys.length > 16) {
    keys.sort(compareKeys);
    return;
  }
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i] as string;
    let j = i - 1;
    while (j >= 0 && compareKeys(keys[j] as string, k) > 0) {
      keys[j + 1] = keys[j] as string;
      j--;
    }
    keys[j + 1] = k;
  }
}

function isSorted(keys: string[]): boolean {
  for (let i = 1; i < keys.length; i++) if (compareKeys(keys[i - 1] as string, keys[i] as string) > 0) return false;
  return true;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** Canonical key order: by encoded length, then bytewise (RFC 8949 §4.2.1). */
export function compareKeys(a: string, b: string): number {
  if (isAscii(a) && isAscii(b)) {
    if (a.length !== b.length) return a.length - b.length;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  const ba = Buffer.from(a, "utf8");
  const bb = Buffer.from(b, "utf8");
  if (ba.length !== bb.length) return ba.length - bb.length;
  return Buffer.compare(ba, bb);
}

/** Encodes a value as KPIP canonical CBOR. Map entries whose value is `undefined` are omitted. */
export function encodeCanonical(v: CborValue): Buffer {
  const w = new CanonicalWriter();
  w.write(v);
  return w.finish();
}
