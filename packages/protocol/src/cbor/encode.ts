import { CborError } from "../errors.js";
import type { CborValue } from "./value.js";
import { MAX_UINT64, MIN_NINT64 } from "./value.js";

/** Same nesting bound as the decoder's default (DEFAULT_LIMITS.maxDepth): never build what a peer must refuse. */
const MAX_ENCODE_DEPTH = 32;

/**
 * Writes KPIP canonical CBOR (RFC 8949 §4.2.1 deterministic encoding): shortest heads,
 * definite lengths, map keys sorted by their encoded bytes. Hand-written because cbor-x
 * cannot emit this form (it keeps map keys in insertion order and writes integers of
 * 2^32 and above as float64); decode.ts is its counterpart. The encoding only: how the bytes
 * are handed out is the subclass's ({@link CanonicalWriter}: one buffer; {@link PieceWriter}: pieces).
 */
export abstract class CborEncoder {
  protected buf: Buffer;
  protected pos: number;
  /**
   * Refuse text that is not well-formed UTF-16 (a lone surrogate) with CborError(INVALID_UTF8)
   * instead of writing U+FFFD for it. Set for what a caller asks (intents): writing U+FFFD
   * changed the request (`"x\uD800"` sent as `"x\uFFFD"`) and made two keys one (a duplicate key
   * the kernel refused, its record naming no op).
   */
  wellFormedText = false;

  /** `headroom` bytes are left free at the start, e.g. for a frame header. */
  constructor(initialSize = 256, headroom = 0) {
    this.buf = Buffer.allocUnsafe(Math.max(initialSize, headroom + 16));
    this.pos = headroom;
  }

  protected ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** Copies the buffer's bytes written so far into `out` at `at`; returns the bytes copied. */
  protected copyBufferTo(out: Uint8Array, at: number): number {
    const end = this.pos;
    if (end > 64) return this.buf.copy(out, at, 0, end);
    // A short run byte by byte: Buffer.copy of part of a buffer allocates a view for it.
    const buf = this.buf;
    for (let i = 0; i < end; i++) out[at + i] = buf[i] as number;
    return end;
  }

  /** A head: major type and argument (a length, a count or an unsigned integer), shortest form. */
  head(major: number, n: number): void {
    this.ensure(9);
    this.pos = writeHead(this.buf, this.pos, major, n);
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
          this.bytes(v);
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

  /**
   * A RESPONSE body (PROTOCOL §8.5) field by field in canonical key order, the bytes {@link write}
   * gives, without its key listing and sorting (every request's answer takes this path). Answers
   * false, having written nothing, for a value that is not exactly that shape (a field of another
   * name, a number that is not a safe non-negative integer, a non-string text): the generic path
   * then encodes or refuses it.
   */
  writeResponse(v: object): boolean {
    if (Object.getPrototypeOf(v) !== Object.prototype) return false;
    const r = v as { version?: unknown; id?: unknown; status?: unknown; error?: unknown; message?: unknown; payload?: unknown };
    let count = 0;
    // for…in: no array of keys (a plain object's enumerable keys are its own).
    for (const k in r) {
      switch (k) {
        case "version":
        case "id":
        case "status":
        case "error":
        case "message":
        case "payload":
          if (r[k] !== undefined) count++;
          break;
        default:
          return false;
      }
    }
    const { version, id, status, error, message, payload } = r;
    if (!isUint(version) || !isUint(id) || typeof status !== "string") return false;
    if ((error !== undefined && typeof error !== "string") || (message !== undefined && typeof message !== "string"))
      return false;
    // Canonical order (length, then bytes): id, error, status, message, payload, version.
    this.head(5, count);
    this.writeKey(KEY_ID);
    this.head(0, id);
    if (error !== undefined) {
      this.writeKey(KEY_ERROR);
      this.writeText(error);
    }
    this.writeKey(KEY_STATUS);
    this.writeText(status);
    if (message !== undefined) {
      this.writeKey(KEY_MESSAGE);
      this.writeText(message);
    }
    if (payload !== undefined) {
      this.writeKey(KEY_PAYLOAD);
      this.write(payload as CborValue, 1);
    }
    this.writeKey(KEY_VERSION);
    this.head(0, version);
    return true;
  }

  private writeKey(k: Uint8Array): void {
    this.ensure(k.length);
    // Byte by byte: TypedArray.set costs more than the copy for eight bytes.
    const buf = this.buf;
    let at = this.pos;
    for (let i = 0; i < k.length; i++) buf[at++] = k[i] as number;
    this.pos = at;
  }

  /** A byte string: copied into the buffer (PieceWriter references large ones instead). */
  protected bytes(v: Uint8Array): void {
    this.head(2, v.length);
    this.ensure(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
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
    if (this.wellFormedText && !wellFormed(s)) {
      throw new CborError("INVALID_UTF8", "text holds a lone surrogate (no Unicode character): it has no UTF-8 encoding");
    }
    if (n > ONE_PASS_TEXT) {
      // Long text: its UTF-8 length first (native), so the buffer grows to what it needs, not 3×.
      const len = Buffer.byteLength(s);
      this.head(3, len);
      this.ensure(len);
      this.pos += this.buf.write(s, this.pos, "utf8");
      return;
    }
    // One pass: UTF-8 written after room for the shortest head it can have (n bytes), moved up
    // when its real length needs a longer one; at most 3 bytes per UTF-16 code unit.
    this.ensure(9 + n * 3);
    const lo = headSize(n);
    const at = this.pos;
    const len = this.buf.write(s, at + lo, "utf8");
    const h = headSize(len);
    if (h !== lo) this.buf.copyWithin(at + h, at + lo, at + lo + len);
    this.pos = writeHead(this.buf, at, 3, len) + len;
  }

  private writeMap(obj: Record<string, CborValue>, depth: number): void {
    const proto = Object.getPrototypeOf(obj);
    if (proto !== Object.prototype && proto !== null) {
      throw new CborError("UNSUPPORTED_TYPE", `cannot encode an instance of ${proto?.constructor?.name ?? "unknown"}`);
    }
    // for…in first (own keys only: Object.keys's keys in its order): a map built in canonical
    // order — every answer's payload, the hot paths' maps — is written without an array of keys.
    let count = 0;
    let sorted = true;
    let prev: string | undefined;
    for (const k in obj) {
      if (!Object.hasOwn(obj, k) || obj[k] === undefined) continue;
      if (prev !== undefined && compareKeys(prev, k) > 0) {
        sorted = false;
        break;
      }
      prev = k;
      count++;
    }
    if (sorted) {
      this.head(5, count);
      for (const k in obj) {
        if (!Object.hasOwn(obj, k)) continue;
        const x = obj[k];
        if (x === undefined) continue;
        this.writeText(k);
        this.write(x, depth + 1);
      }
      return;
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

/** The canonical encoding in one buffer (see {@link CborEncoder}). */
export class CanonicalWriter extends CborEncoder {
  /** The bytes written so far, including any headroom (a view, not a copy). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  /** Bytes written so far (headroom included). */
  get length(): number {
    return this.pos;
  }

  /**
   * Starts again at the beginning of the same buffer, so one writer serves call after call
   * without allocating; views of what it wrote before are overwritten from here on.
   */
  reset(): void {
    this.pos = 0;
  }

  /** Copies what was written into `out` at `at` (no intermediate buffer); returns the bytes copied. */
  copyTo(out: Uint8Array, at: number): number {
    return this.copyBufferTo(out, at);
  }
}

/**
 * A writer whose byte strings of `refMin` bytes or more are referenced, not copied: the
 * encoding comes back as pieces from {@link finishParts} for a vectored write (the caller must
 * not change those bytes meanwhile). It has no `finish` or `copyTo`: its own buffer is not the
 * whole encoding (`copyWholeTo` copies it only when nothing was referenced).
 */
export class PieceWriter extends CborEncoder {
  /** Finished pieces: the buffer up to a referenced byte string, and the string. */
  private readonly done: Uint8Array[] = [];
  private segStart = 0;
  /** Bytes of the referenced strings. */
  private referenced = 0;

  constructor(
    initialSize: number,
    headroom: number,
    private readonly refMin: number,
  ) {
    super(initialSize, headroom);
  }

  protected override bytes(v: Uint8Array): void {
    if (v.length < this.refMin) {
      super.bytes(v);
      return;
    }
    this.head(2, v.length);
    this.done.push(this.buf.subarray(this.segStart, this.pos), v);
    this.segStart = this.pos;
    this.referenced += v.length;
  }

  /** Bytes of the encoding so far (headroom and referenced strings included). */
  get length(): number {
    return this.pos + this.referenced;
  }

  /** Bytes in the writer's own buffer (headroom included): the encoding without its referenced strings. */
  get ownLength(): number {
    return this.pos;
  }

  /**
   * Copies the encoding into `out` at `at` when no byte string was referenced (then its buffer is
   * the whole encoding); returns the bytes copied. Throws otherwise: use {@link finishParts}.
   */
  copyWholeTo(out: Uint8Array, at: number): number {
    if (this.done.length > 0) throw new Error("this encoding references byte strings: take it with finishParts");
    return this.copyBufferTo(out, at);
  }

  /**
   * Starts again at the beginning of the same buffer, `headroom` bytes left free (views of earlier
   * pieces are overwritten from here on).
   */
  reset(headroom = 0): void {
    this.pos = headroom;
    this.segStart = 0;
    this.referenced = 0;
    this.done.length = 0;
  }

  /** The encoding as pieces in order: views of the writer's buffer and the referenced byte strings. */
  finishParts(): Uint8Array[] {
    const tail = this.buf.subarray(this.segStart, this.pos);
    // Most frames reference nothing: one piece, no copy of the list.
    if (this.done.length === 0) return [tail];
    return tail.length > 0 ? [...this.done, tail] : [...this.done];
  }
}

const isUint = (n: unknown): n is number => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
/** A short ASCII key as its CBOR text string. */
const textKey = (k: string): Uint8Array => Uint8Array.from([0x60 | k.length, ...Buffer.from(k, "latin1")]);
const KEY_ID = textKey("id");
const KEY_ERROR = textKey("error");
const KEY_STATUS = textKey("status");
const KEY_MESSAGE = textKey("message");
const KEY_PAYLOAD = textKey("payload");
const KEY_VERSION = textKey("version");

/** A surrogate not part of a pair (with the u flag a pair is one code point, outside the range). */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * Whether `s` is well-formed UTF-16 (no lone surrogate): String.prototype.isWellFormed (Node 20+),
 * a native scan with no regex match per text; else the regex (in `u` mode a pair is one code point).
 */
export const wellFormed: (s: string) => boolean =
  typeof (String.prototype as { isWellFormed?: unknown }).isWellFormed === "function"
    ? (s) => (s as unknown as { isWellFormed(): boolean }).isWellFormed()
    : (s) => !LONE_SURROGATE.test(s);

/** Text up to this many UTF-16 units is tried as ASCII, written byte by byte. */
const SHORT_TEXT = 48;
/** Text up to this many UTF-16 units is encoded in one pass into room for 3 bytes per unit. */
const ONE_PASS_TEXT = 4096;

/** Bytes of the canonical head for argument `n` (a non-negative safe integer). */
export function headSize(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n < 0x100000000 ? 5 : 9;
}

/**
 * Writes the canonical (shortest) head of major type `major` with argument `n` (a non-negative
 * safe integer) into `out` at `at`, which has room for it; returns the position after it.
 */
export function writeHead(out: Buffer, at: number, major: number, n: number): number {
  const m = major << 5;
  if (n < 24) {
    out[at] = m | n;
    return at + 1;
  }
  if (n < 0x100) {
    out[at] = m | 24;
    out[at + 1] = n;
    return at + 2;
  }
  if (n < 0x10000) {
    out[at] = m | 25;
    out.writeUInt16BE(n, at + 1);
    return at + 3;
  }
  if (n < 0x100000000) {
    out[at] = m | 26;
    out.writeUInt32BE(n, at + 1);
    return at + 5;
  }
  out[at] = m | 27;
  out.writeUInt32BE(Math.floor(n / 0x100000000), at + 1);
  out.writeUInt32BE(n >>> 0, at + 5);
  return at + 9;
}

/**
 * `keys.sort(compareKeys)`, in place: an insertion sort for the few keys of a protocol map, where
 * Array.prototype.sort copies into a work array every call (a tenth of the kernel's allocation
 * under load, each response and record encoded).
 */
export function sortKeys(keys: string[], compare: (a: string, b: string) => number = compareKeys): void {
  if (keys.length > 16) {
    keys.sort(compare);
    return;
  }
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i] as string;
    let j = i - 1;
    while (j >= 0 && compare(keys[j] as string, k) > 0) {
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
export function encodeCanonical(v: CborValue, opts: { wellFormedText?: boolean } = {}): Buffer {
  const w = new CanonicalWriter();
  w.wellFormedText = opts.wellFormedText === true;
  w.write(v);
  return w.finish();
}
