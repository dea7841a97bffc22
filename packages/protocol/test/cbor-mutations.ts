/**
 * Targeted mutations of canonical CBOR, each breaking one rule of the canonical subset at a
 * chosen item: the decoders must agree on every result (decode-equivalence.test.ts).
 */

/** One data item of a canonical encoding: where its head and the whole item lie. */
interface Node {
  start: number;
  headLen: number;
  end: number;
  major: number;
  arg: number;
  /** Map entries as [keyStart, valueEnd). */
  entries: [number, number][];
}

/**
 * Lists the items of `b` in pre-order. Made for canonical bytes, it also walks what an earlier
 * mutation broke, as far as the bytes go (no lengths trusted past the end).
 */
export function walk(b: Uint8Array): Node[] {
  const out: Node[] = [];
  const at = (p: number): number => {
    if (p >= b.length || out.length > 10_000) throw stop;
    const ib = b[p] as number;
    const major = ib >> 5;
    const ai = ib & 31;
    const size = major === 7 || ai < 24 || ai > 27 ? 0 : ai === 24 ? 1 : ai === 25 ? 2 : ai === 26 ? 4 : 8;
    let arg = major === 7 || ai < 24 ? ai : 0;
    for (let i = 1; i <= size; i++) arg = arg * 256 + (b[p + i] as number);
    const node: Node = { start: p, headLen: 1 + size, end: 0, major, arg, entries: [] };
    out.push(node);
    let q = p + 1 + size;
    if (major === 2 || major === 3) q += arg;
    else if (major === 4) for (let i = 0; i < arg && q < b.length; i++) q = at(q);
    else if (major === 5)
      for (let i = 0; i < arg && q < b.length; i++) {
        const k = q;
        q = at(at(q));
        node.entries.push([k, q]);
      }
    node.end = Math.min(q, b.length);
    if (q > b.length) throw stop;
    return q;
  };
  try {
    at(0);
  } catch (e) {
    if (e !== stop) throw e;
    for (const n of out) if (n.end === 0) n.end = b.length;
  }
  return out;
}
const stop = new Error("end of input");

/** The canonical head for `major` and `n`, or the head one size wider than canonical when `widen`. */
export function head(major: number, n: number, widen = 0): Buffer {
  const sizes = [0, 1, 2, 4, 8];
  let s = n < 24 ? 0 : n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x100000000 ? 3 : 4;
  s = Math.min(4, s + widen);
  const out = Buffer.alloc(1 + (sizes[s] as number));
  out[0] = (major << 5) | (s === 0 ? n : 23 + s);
  let v = BigInt(n);
  for (let i = out.length - 1; i >= 1; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

const cat = (...parts: Uint8Array[]) => Buffer.concat(parts);
const replace = (b: Uint8Array, s: number, e: number, w: Uint8Array) => cat(b.subarray(0, s), w, b.subarray(e));

export const MUTATIONS = [
  "widen",
  "lengthen",
  "shorten",
  "indefinite",
  "reorder",
  "duplicate",
  "proto",
  "utf8",
  "deep",
  "huge",
  "flip",
  "truncate",
] as const;
export type Mutation = (typeof MUTATIONS)[number];

/**
 * Applies `m` to canonical `b` at the item chosen by `pick` (a number in [0, 1)); returns the
 * bytes unchanged when no item suits the mutation.
 */
export function mutateCbor(b: Uint8Array, m: Mutation, pick: number, pick2: number): Buffer {
  const nodes = walk(b);
  const choose = (f: (n: Node) => boolean) => {
    const fit = nodes.filter((n) => n.start + n.headLen <= n.end && f(n));
    return fit.length ? (fit[Math.floor(pick * fit.length)] as Node) : undefined;
  };
  const buf = Buffer.from(b);
  switch (m) {
    case "widen": {
      // The same item with a longer head than needed (NON_CANONICAL).
      const n = choose((x) => x.major !== 7 && x.major !== 6);
      return n ? replace(buf, n.start, n.start + n.headLen, head(n.major, n.arg, 1 + Math.floor(pick2 * 3))) : buf;
    }
    case "lengthen":
    case "shorten": {
      // A string that declares more (or fewer) bytes than it has, or an array/map miscounted.
      const n = choose((x) => x.major >= 2 && x.major <= 5 && (m === "lengthen" || x.arg > 0));
      if (!n) return buf;
      const by = 1 + Math.floor(pick2 * 3);
      return replace(buf, n.start, n.start + n.headLen, head(n.major, m === "lengthen" ? n.arg + by : Math.max(0, n.arg - by)));
    }
    case "indefinite": {
      // An indefinite-length form of an item (a string as one chunk).
      const n = choose((x) => x.major >= 2 && x.major <= 5);
      if (!n) return buf;
      const inner = n.major <= 3 ? buf.subarray(n.start, n.end) : buf.subarray(n.start + n.headLen, n.end);
      return replace(buf, n.start, n.end, cat(Buffer.from([(n.major << 5) | 31]), inner, Buffer.from([0xff])));
    }
    case "reorder": {
      // Two neighbouring map entries swapped (UNSORTED_KEYS).
      const n = choose((x) => x.entries.length >= 2);
      if (!n) return buf;
      const i = Math.floor(pick2 * (n.entries.length - 1));
      const [a0, a1] = n.entries[i] as [number, number];
      const [, b1] = n.entries[i + 1] as [number, number];
      return replace(buf, a0, b1, cat(buf.subarray(a1, b1), buf.subarray(a0, a1)));
    }
    case "duplicate": {
      // A map entry repeated, the count raised to match (DUPLICATE_KEY).
      const n = choose((x) => x.entries.length >= 1);
      if (!n) return buf;
      const [s, e] = n.entries[Math.floor(pick2 * n.entries.length)] as [number, number];
      const body = cat(buf.subarray(n.start + n.headLen, e), buf.subarray(s, e), buf.subarray(e, n.end));
      return replace(buf, n.start, n.end, cat(head(5, n.arg + 1), body));
    }
    case "proto": {
      // A "__proto__" entry inserted in a map at any position (BAD_KEY, or an order error first).
      const n = choose((x) => x.major === 5);
      if (!n) return buf;
      const cut = n.entries.length ? (n.entries[Math.floor(pick2 * n.entries.length)] as [number, number])[0] : n.end;
      const entry = cat(head(3, 9), Buffer.from("__proto__"), Buffer.from([0x01]));
      const body = cat(buf.subarray(n.start + n.headLen, cut), entry, buf.subarray(cut, n.end));
      return replace(buf, n.start, n.end, cat(head(5, n.arg + 1), body));
    }
    case "utf8": {
      // Bytes inside a text string that are not UTF-8: stray continuation, overlong, surrogate, 0xff.
      const n = choose((x) => x.major === 3 && x.arg > 0);
      if (!n) return buf;
      const bad = [[0x80], [0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]][
        Math.floor(pick2 * 6)
      ] as number[];
      const s = n.start + n.headLen;
      const at = s + Math.floor(pick2 * n.arg);
      const text = cat(buf.subarray(s, at), Buffer.from(bad), buf.subarray(at, n.end)).subarray(0, n.arg);
      return replace(buf, s, n.end, text);
    }
    case "deep": {
      // The item nested 28..40 levels deeper, in arrays or one-entry maps.
      const n = choose(() => true);
      if (!n) return buf;
      const levels = 28 + Math.floor(pick2 * 13);
      const wrap = pick2 < 0.5 ? Buffer.from([0x81]) : Buffer.from([0xa1, 0x61, 0x6b]);
      return replace(buf, n.start, n.end, cat(...Array.from({ length: levels }, () => wrap), buf.subarray(n.start, n.end)));
    }
    case "huge": {
      // A head declaring 2^31..2^64-1 elements or bytes.
      const n = choose(() => true);
      if (!n) return buf;
      const major = [2, 3, 4, 5][Math.floor(pick2 * 4)] as number;
      const lie =
        pick2 < 0.5
          ? cat(Buffer.from([(major << 5) | 26]), Buffer.from([0x7f, 0xff, 0xff, 0xff]))
          : cat(Buffer.from([(major << 5) | 27]), Buffer.alloc(8, 0xff));
      return replace(buf, n.start, n.start + n.headLen, lie);
    }
    case "flip": {
      if (buf.length === 0) return buf;
      const i = Math.floor(pick * buf.length);
      buf[i] = (buf[i] as number) ^ (1 << Math.floor(pick2 * 8));
      return buf;
    }
    default:
      return buf.subarray(0, Math.floor(pick * buf.length));
  }
}
