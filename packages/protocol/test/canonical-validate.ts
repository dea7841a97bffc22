import { DEFAULT_LIMITS, type DecodeLimits } from "../src/constants.js";
import { CborError } from "../src/errors.js";

/** What a validation pass learned about the bytes, used to finish decoding. */
export interface ValidationInfo {
  /** True if an 8-byte integer head occurred (the decoder must normalise bigints). */
  wideIntegers: boolean;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Checks that `bytes` hold exactly one data item of KPIP canonical CBOR (see `value.ts`),
 * within the given depth and item limits. Runs before any decoder allocates, so a lying
 * length, a nesting bomb or a huge declared array fails here cheaply.
 * Throws {@link CborError}; never anything else.
 */
export function validateCanonical(
  bytes: Uint8Array,
  limits: DecodeLimits = DEFAULT_LIMITS,
  start = 0,
  end = bytes.length,
): ValidationInfo {
  const v = new Validator(bytes, limits, start, end);
  v.item(0);
  if (v.pos !== end) throw new CborError("TRAILING_BYTES", `${end - v.pos} bytes after the data item`);
  return { wideIntegers: v.wide };
}

class Validator {
  pos: number;
  items = 0;
  wide = false;
  /** Length of the last head's argument, filled by head(). */
  arg = 0;
  constructor(
    private readonly b: Uint8Array,
    private readonly limits: DecodeLimits,
    start: number,
    private readonly end: number,
  ) {
    this.pos = start;
  }

  private need(n: number): void {
    if (this.pos + n > this.end) throw new CborError("TRUNCATED", "data item runs past the end of the input");
  }

  /** Reads a head; returns the major type and leaves the argument in `this.arg`. */
  private head(): number {
    this.need(1);
    const ib = this.b[this.pos++] as number;
    const major = ib >> 5;
    const ai = ib & 31;
    if (major === 7) {
      this.arg = ai;
      return 7;
    }
    if (ai < 24) {
      this.arg = ai;
    } else if (ai === 24) {
      this.need(1);
      this.arg = this.b[this.pos++] as number;
      if (this.arg < 24) throw nonCanonical();
    } else if (ai === 25) {
      this.need(2);
      this.arg = ((this.b[this.pos] as number) << 8) | (this.b[this.pos + 1] as number);
      this.pos += 2;
      if (this.arg < 0x100) throw nonCanonical();
    } else if (ai === 26) {
      this.need(4);
      this.arg = this.u32(this.pos);
      this.pos += 4;
      if (this.arg < 0x10000) throw nonCanonical();
    } else if (ai === 27) {
      this.need(8);
      const hi = this.u32(this.pos);
      const lo = this.u32(this.pos + 4);
      this.pos += 8;
      if (hi === 0) throw nonCanonical();
      // Lengths this large can never be satisfied by the input; integers keep their value in bigint.
      this.arg = hi * 0x100000000 + lo;
      this.wide = true;
    } else if (ai === 31) {
      throw new CborError("INDEFINITE_LENGTH", "indefinite-length items are not canonical");
    } else {
      throw new CborError("MALFORMED", `reserved additional information ${ai}`);
    }
    return major;
  }

  private u32(p: number): number {
    const b = this.b;
    return (((b[p] as number) << 24) >>> 0) + ((b[p + 1] as number) << 16) + ((b[p + 2] as number) << 8) + (b[p + 3] as number);
  }

  item(depth: number): void {
    if (++this.items > this.limits.maxItems) {
      throw new CborError("TOO_MANY_ITEMS", `more than ${this.limits.maxItems} data items`);
    }
    const major = this.head();
    switch (major) {
      case 0:
      case 1:
        return;
      case 2:
        this.need(this.arg);
        this.pos += this.arg;
        return;
      case 3:
        this.text();
        return;
      case 4: {
        if (depth >= this.limits.maxDepth) throw new CborError("TOO_DEEP", `nesting deeper than ${this.limits.maxDepth}`);
        const n = this.arg;
        // Every element takes at least one byte: a count the input cannot hold is a lie.
        this.need(n);
        for (let i = 0; i < n; i++) this.item(depth + 1);
        return;
      }
      case 5: {
        if (depth >= this.limits.maxDepth) throw new CborError("TOO_DEEP", `nesting deeper than ${this.limits.maxDepth}`);
        const n = this.arg;
        this.need(n * 2);
        let prevStart = -1;
        let prevEnd = -1;
        for (let i = 0; i < n; i++) {
          if (++this.items > this.limits.maxItems) {
            throw new CborError("TOO_MANY_ITEMS", `more than ${this.limits.maxItems} data items`);
          }
          const keyStart = this.pos;
          if (this.head() !== 3) throw new CborError("BAD_KEY", "map keys must be text strings");
          const s = this.text(true) as string;
          if (s === "__proto__") throw new CborError("BAD_KEY", 'the map key "__proto__" is not allowed');
          const keyEnd = this.pos;
          if (prevStart >= 0) {
            const c = compareBytes(this.b, prevStart, prevEnd, keyStart, keyEnd);
            if (c === 0) throw new CborError("DUPLICATE_KEY", `duplicate map key ${JSON.stringify(s)}`);
            if (c > 0) throw new CborError("UNSORTED_KEYS", `map key ${JSON.stringify(s)} is out of canonical order`);
          }
          prevStart = keyStart;
          prevEnd = keyEnd;
          this.item(depth + 1);
        }
        return;
      }
      case 6:
        throw new CborError("UNSUPPORTED_TAG", `tag ${this.arg} is not allowed`);
      default:
        // major 7
        switch (this.arg) {
          case 20:
          case 21:
          case 22:
            return;
          case 23:
            throw new CborError("UNSUPPORTED_TYPE", "undefined is not allowed");
          case 25:
          case 26:
          case 27:
            throw new CborError("UNSUPPORTED_TYPE", "floating-point numbers are not allowed");
          case 31:
            throw new CborError("MALFORMED", "unexpected break");
          default:
            throw new CborError("UNSUPPORTED_TYPE", `simple value ${this.arg} is not allowed`);
        }
    }
  }

  /** Validates the text string whose head was just read; returns it when asked (map keys). */
  private text(want = false): string | undefined {
    const n = this.arg;
    this.need(n);
    const start = this.pos;
    this.pos += n;
    let ascii = true;
    for (let i = start; i < this.pos; i++) {
      if ((this.b[i] as number) > 0x7f) {
        ascii = false;
        break;
      }
    }
    if (!ascii) {
      try {
        utf8.decode(this.b.subarray(start, this.pos));
      } catch {
        throw new CborError("INVALID_UTF8", "text string is not valid UTF-8");
      }
    }
    return want ? Buffer.from(this.b.buffer, this.b.byteOffset + start, n).toString("utf8") : undefined;
  }
}

function nonCanonical(): CborError {
  return new CborError("NON_CANONICAL", "integer or length not in its shortest form");
}

function compareBytes(b: Uint8Array, as: number, ae: number, bs: number, be: number): number {
  const la = ae - as;
  const lb = be - bs;
  const n = Math.min(la, lb);
  for (let i = 0; i < n; i++) {
    const d = (b[as + i] as number) - (b[bs + i] as number);
    if (d !== 0) return d;
  }
  return la - lb;
}
