import { randomFillSync } from "node:crypto";

/** The bytes a request is remembered by: a SHA-256 (an intent hash, or an op with effects' dedupe hash). */
export const TAG_BYTES = 32;

/** A 32-bit hash of a key's three words: (client id, request id's low and high 32 bits). */
export type KeyHash = (client: number, lo: number, hi: number) => number;

const rotl = (x: number, b: number): number => (x << b) | (x >>> (32 - b));

/**
 * HalfSipHash-1-3 (Aumasson and Bernstein; the Linux kernel's `hsiphash` for hash tables fed by
 * the network) of three 32-bit words under a 64-bit key: a keyed function, so the peer choosing
 * request ids, not knowing the key, cannot choose ids that share a slot. ~20 ns here.
 */
export function halfSipHash13(k0: number, k1: number, a: number, b: number, c: number): number {
  let v0 = k0 | 0;
  let v1 = k1 | 0;
  let v2 = (0x6c796765 ^ k0) | 0;
  let v3 = (0x74656462 ^ k1) | 0;
  // Three message words, then the length word (12 bytes), one round each; three final rounds.
  for (let w = 0; w < 7; w++) {
    const m = w === 0 ? a : w === 1 ? b : w === 2 ? c : w === 3 ? 0x0c000000 : 0;
    if (w === 4) v2 ^= 0xff;
    v3 ^= m;
    v0 = (v0 + v1) | 0;
    v1 = rotl(v1, 5) ^ v0;
    v0 = rotl(v0, 16);
    v2 = (v2 + v3) | 0;
    v3 = rotl(v3, 8) ^ v2;
    v0 = (v0 + v3) | 0;
    v3 = rotl(v3, 7) ^ v0;
    v2 = (v2 + v1) | 0;
    v1 = rotl(v1, 13) ^ v2;
    v2 = rotl(v2, 16);
    v0 ^= m;
  }
  return (v1 ^ v3) | 0;
}

/** {@link halfSipHash13} under a random key of this process. */
export function keyedHash(): KeyHash {
  const k = randomFillSync(new Uint32Array(2));
  const k0 = k[0] as number;
  const k1 = k[1] as number;
  return (client, lo, hi) => halfSipHash13(k0, k1, client, lo, hi);
}

/**
 * Strings to small integers while something refers to them: an id is freed with its last
 * reference and reused, so a client instance or a grant seen once does not stay forever.
 */
class Interner {
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [];
  private readonly refs: number[] = [];
  private readonly free: number[] = [];

  get size(): number {
    return this.ids.size;
  }

  /** The id of `s`, or -1: nothing refers to it. */
  idOf(s: string): number {
    return this.ids.get(s) ?? -1;
  }

  /** The id of `s`, with one more reference to it. */
  acquire(s: string): number {
    let id = this.ids.get(s);
    if (id === undefined) {
      id = this.free.pop() ?? this.names.length;
      this.ids.set(s, id);
      this.names[id] = s;
      this.refs[id] = 0;
    }
    this.refs[id] = (this.refs[id] as number) + 1;
    return id;
  }

  release(id: number): void {
    const n = (this.refs[id] as number) - 1;
    this.refs[id] = n;
    if (n === 0) {
      this.ids.delete(this.names[id] as string);
      this.names[id] = "";
      this.free.push(id);
    }
  }
}

const NONE = -1;
/** Request ids are safe integers; a key not of the form `<client>:<id>` gets this one. */
const NO_ID = -1;
const TWO_32 = 2 ** 32;

/**
 * The dedupe cache's memory: a record per remembered request in typed arrays, not a Map entry,
 * an object and strings per request. Why: 100,000 remembered requests as JS objects were most of
 * the kernel's old generation, marked by every major GC, and the Map churned and rehashed; here
 * they are a few megabytes of array buffers the collector does not look into.
 *
 * - A key `persona:instance:id` is a client (the part before the last colon, interned to a
 *   small integer) and a request id (a number); any other key string is a client of its own
 *   with no id. The record keeps both, so a lookup compares the whole key, never a fingerprint:
 *   two keys sharing a slot of the index are only slower, never confused.
 * - The index is open addressing with linear probing over an Int32Array (record + 1 per slot,
 *   at most ~40 % full), deletion by backward shift (no tombstones). Its hash is keyed
 *   ({@link keyedHash}, a random key per table), so ids chosen by a peer land in slots it
 *   cannot predict (hash flooding would otherwise make every lookup walk one long run).
 * - A record's tag is its 32 bytes in one slab and its authority interned; the records form a
 *   doubly linked list in insertion order, so eviction of the oldest and the expiry sweep take
 *   records from its head, O(records removed).
 * - A promise is kept only while the first attempt runs, in a small Map by record.
 */
export class DedupeTable<P> {
  readonly capacity: number;
  private readonly mask: number;
  private readonly slots: Int32Array;
  private readonly hashes: Int32Array;
  private readonly clients: Int32Array;
  private readonly ids: Float64Array;
  private readonly auths: Int32Array;
  private readonly expiry: Float64Array;
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly tags: Uint8Array;
  private readonly pendings = new Map<number, P>();
  private readonly clientNames = new Interner();
  private readonly authorities = new Interner();
  private head = NONE;
  private tail = NONE;
  private count = 0;
  /** Records handed out so far; past them, `free` (linked by `next`) holds the removed ones. */
  private used = 0;
  private free = NONE;
  // The key last parsed by `find` (no object per lookup).
  private kClient = NONE;
  private kPrefix = "";
  private kId = NO_ID;
  private kHash = 0;

  /**
   * `maxEntries`: the bound (one record more exists for a moment, before the eviction);
   * `hash`: the index's (a test's weak one forces collisions).
   */
  constructor(
    readonly maxEntries: number,
    private readonly evictBatch: number,
    private readonly hash: KeyHash = keyedHash(),
  ) {
    this.capacity = maxEntries + 1;
    let size = 8;
    while (size < this.capacity * 2.5) size *= 2;
    this.mask = size - 1;
    this.slots = new Int32Array(size);
    const n = this.capacity;
    this.hashes = new Int32Array(n);
    this.clients = new Int32Array(n);
    this.ids = new Float64Array(n);
    this.auths = new Int32Array(n);
    this.expiry = new Float64Array(n);
    this.next = new Int32Array(n);
    this.prev = new Int32Array(n);
    this.tags = new Uint8Array(n * TAG_BYTES);
  }

  get size(): number {
    return this.count;
  }

  /** Interned strings held (clients and authorities): for tests that check nothing stays behind. */
  get interned(): number {
    return this.clientNames.size + this.authorities.size;
  }

  /** The record of `key`, or -1. */
  find(key: string): number {
    this.parse(key);
    const client = this.clientNames.idOf(this.kPrefix);
    this.kClient = client;
    if (client === NONE) return NONE;
    const id = this.kId;
    const h = this.hash(client, id >>> 0, Math.floor(id / TWO_32) | 0);
    this.kHash = h;
    const slots = this.slots;
    const mask = this.mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const r = slots[i]! - 1;
      if (r === NONE) return NONE;
      if (this.hashes[r] === h && this.clients[r] === client && this.ids[r] === id) return r;
    }
  }

  /** Whether record `r` was remembered by these tag bytes under this authority. */
  sameTag(r: number, bytes: Uint8Array, authority: string): boolean {
    if (this.auths[r] !== this.authorities.idOf(authority) || bytes.length !== TAG_BYTES) return false;
    const tags = this.tags;
    const o = r * TAG_BYTES;
    for (let i = 0; i < TAG_BYTES; i++) if (tags[o + i] !== bytes[i]) return false;
    return true;
  }

  expires(r: number): number {
    return this.expiry[r]!;
  }

  pending(r: number): P | undefined {
    return this.pendings.size === 0 ? undefined : this.pendings.get(r);
  }

  /** Record `r` has its answer: no promise, and a new expiry (its place in the order stays). */
  settle(r: number, expires: number): void {
    if (this.pendings.size !== 0) this.pendings.delete(r);
    this.expiry[r] = expires;
  }

  /**
   * Remembers `key` as the newest record (replacing its record, if any); past `maxEntries` the
   * oldest `evictBatch` records go at once. The tag's bytes are copied.
   */
  put(key: string, bytes: Uint8Array, authority: string, expires: number, pending: P | undefined): void {
    if (bytes.length !== TAG_BYTES) throw new RangeError(`a dedupe tag is ${TAG_BYTES} bytes, not ${bytes.length}`);
    const old = this.find(key);
    // References taken before the old record goes: its client and authority must not be freed in between.
    const known = this.kClient !== NONE;
    const client = this.clientNames.acquire(this.kPrefix);
    const auth = this.authorities.acquire(authority);
    const id = this.kId;
    const h = known ? this.kHash : this.hash(client, id >>> 0, Math.floor(id / TWO_32) | 0);
    if (old !== NONE) this.remove(old);
    let r: number;
    if (this.free !== NONE) {
      r = this.free;
      this.free = this.next[r]!;
    } else r = this.used++;
    this.clients[r] = client;
    this.ids[r] = id;
    this.hashes[r] = h;
    this.auths[r] = auth;
    this.expiry[r] = expires;
    this.tags.set(bytes, r * TAG_BYTES);
    if (pending !== undefined) this.pendings.set(r, pending);
    // Newest at the tail.
    this.prev[r] = this.tail;
    this.next[r] = NONE;
    if (this.tail === NONE) this.head = r;
    else this.next[this.tail] = r;
    this.tail = r;
    this.count++;
    const slots = this.slots;
    const mask = this.mask;
    let i = h & mask;
    while (slots[i] !== 0) i = (i + 1) & mask;
    slots[i] = r + 1;
    if (this.count > this.maxEntries) this.evictOldest(this.evictBatch);
  }

  /** Removes the oldest `n` records (fewer if there are fewer). */
  evictOldest(n: number): void {
    while (n-- > 0 && this.head !== NONE) this.remove(this.head);
  }

  /** Removes records from the oldest while they expired before `now` (stops at the first that did not). */
  sweep(now: number): void {
    while (this.head !== NONE && this.expiry[this.head]! < now) this.remove(this.head);
  }

  remove(r: number): void {
    // Out of the index: find its slot, then shift the run behind it back (no tombstones).
    const slots = this.slots;
    const mask = this.mask;
    let i = this.hashes[r]! & mask;
    while (slots[i] !== r + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; slots[j] !== 0; j = (j + 1) & mask) {
      const home = this.hashes[slots[j]! - 1]! & mask;
      // The entry at j may move to i unless its home slot lies cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        slots[i] = slots[j]!;
        i = j;
      }
    }
    slots[i] = 0;
    // Out of the order.
    const p = this.prev[r]!;
    const n = this.next[r]!;
    if (p === NONE) this.head = n;
    else this.next[p] = n;
    if (n === NONE) this.tail = p;
    else this.prev[n] = p;
    this.clientNames.release(this.clients[r]!);
    this.authorities.release(this.auths[r]!);
    if (this.pendings.size !== 0) this.pendings.delete(r);
    this.next[r] = this.free;
    this.free = r;
    this.count--;
  }

  /** The longest run of occupied index slots: what one lookup may walk at worst (for tests). */
  longestRun(): number {
    let longest = 0;
    let run = 0;
    // Twice around, so a run that wraps past the end is counted whole.
    for (let k = 0; k < this.slots.length * 2; k++) {
      if (this.slots[k & this.mask] === 0) run = 0;
      else if (++run > longest) longest = run;
    }
    return Math.min(longest, this.count);
  }

  /** Splits a key into client and request id (see the class comment), into the parse fields. */
  private parse(key: string): void {
    const colon = key.lastIndexOf(":");
    const digits = key.length - colon - 1;
    // A safe integer in canonical decimal: 1–16 digits, no leading zero; else the key is its own client.
    if (colon >= 0 && digits >= 1 && digits <= 16 && (digits === 1 || key.charCodeAt(colon + 1) !== 48)) {
      let v = 0;
      let j = colon + 1;
      for (; j < key.length; j++) {
        const d = key.charCodeAt(j) - 48;
        if (d < 0 || d > 9) break;
        v = v * 10 + d;
      }
      if (j === key.length && v <= Number.MAX_SAFE_INTEGER) {
        this.kPrefix = key.slice(0, colon);
        this.kId = v;
        return;
      }
    }
    this.kPrefix = key;
    this.kId = NO_ID;
  }
}
