import { randomFillSync } from "node:crypto";

/** The bytes a request is remembered by: a SHA-256 (an intent hash, or an op with effects' dedupe hash). */
const TAG_BYTES = 32;

/** A 32-bit hash of a key's three words: (client id, request id's low and high 32 bits). */
export type KeyHash = (client: number, lo: number, hi: number) => number;

const rotl = (x: number, b: number): number => (x << b) | (x >>> (32 - b));

/**
 * HalfSipHash-1-3 (Aumasson and Bernstein; the Linux kernel's `hsiphash` for hash tables fed by
 * the network) of three 32-bit words under a 64-bit key: a keyed function, so the peer choosing
 * request ids, not knowing the key, cannot choose ids that share a slot. ~20 ns here.
 */
function halfSipHash13(k0: number, k1: number, a: number, b: number, c: number): number {
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
function keyedHash(): KeyHash {
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
  private readonly names: (string | undefined)[] = [];
  private readonly refs: number[] = [];
  private readonly free: number[] = [];
  /** Strings kept with no reference (see `keepIdle`). */
  private idle = 0;

  /**
   * `keepIdle`: while it holds at most this many strings, one whose last reference goes is kept
   * (a string referenced and released around every request, a persona tree's one running
   * request, would otherwise add and delete a Map entry each time: churn that rehashes it).
   */
  constructor(private readonly keepIdle = 0) {}

  /** Strings referred to now. */
  get size(): number {
    return this.ids.size - this.idle;
  }

  // The last string looked up (one session's requests come in runs): no Map lookup for it.
  private lastName = "";
  private lastId = -1;

  /** The id of `s`, or -1: nothing refers to it. */
  idOf(s: string): number {
    if (s === this.lastName && this.names[this.lastId] === s) return this.lastId;
    const id = this.ids.get(s);
    if (id === undefined) return -1;
    this.lastName = s;
    this.lastId = id;
    return id;
  }

  /** Whether `id` stands for `s` now. */
  is(id: number, s: string): boolean {
    return this.names[id] === s;
  }

  addRef(id: number): void {
    const n = this.refs[id] as number;
    if (n === 0) this.idle--;
    this.refs[id] = n + 1;
  }

  /** The id of `s`, with one more reference to it. */
  acquire(s: string): number {
    let id = this.idOf(s);
    if (id === -1) {
      id = this.free.pop() ?? this.names.length;
      this.ids.set(s, id);
      this.names[id] = s;
      this.refs[id] = 1;
      return id;
    }
    this.addRef(id);
    return id;
  }

  /** References to `id` now (for the trees: that tree's running requests). */
  refsOf(id: number): number {
    return this.refs[id] as number;
  }

  release(id: number): void {
    const n = (this.refs[id] as number) - 1;
    this.refs[id] = n;
    if (n === 0 && this.ids.size <= this.keepIdle) this.idle++;
    else if (n === 0) {
      this.ids.delete(this.names[id] as string);
      this.names[id] = undefined;
      this.free.push(id);
    }
  }
}

const NONE = -1;
/** Persona trees kept interned with no request running (most kernels have fewer). */
const IDLE_TREES_KEPT = 1024;
/** Request ids are safe integers; a key not of the form `<client>:<id>` gets this one. */
const NO_ID = -1;
const TWO_32 = 2 ** 32;

// A record is 72 bytes in one buffer (its fields side by side: a lookup touches one or two cache
// lines, not one per array): expiry and request id as float64, five int32, then the tag's bytes.
const STRIDE = 72;
const F64 = STRIDE / 8;
const I32 = STRIDE / 4;
const EXPIRES = 0; // float64 slots
const ID = 1;
const HASH = 4; // int32 slots
const CLIENT = 5;
const AUTH = 6;
const NEXT = 7;
const PREV = 8;
const TAG = 36; // byte offset
const PENDING = 17; // int32: the running attempt's slot in `pendings`, or -1

/**
 * The dedupe cache's memory: a record per remembered request in one typed array, not a Map
 * entry, an object and strings per request. Why: 100,000 remembered requests as JS objects were
 * most of the kernel's old generation, marked by every major GC, and the Map churned and
 * rehashed; here they are ~8 MB of array buffers (records and index) the collector does not look into.
 *
 * - A key `persona:instance:id` is a client (the part before the last colon, interned to a
 *   small integer while it has records) and a request id (a number); any other key string is a
 *   client of its own with no id. The record keeps both, so a lookup compares the whole key,
 *   never a fingerprint: two keys sharing a slot of the index are only slower, never confused.
 * - The index is open addressing with linear probing over an Int32Array (record + 1 and its
 *   hash per slot, at most ~40 % full; a probe compares hashes before it reads a record), deletion by backward shift (no tombstones). Its hash is keyed
 *   ({@link keyedHash}, a random key per table), so ids chosen by a peer land in slots it
 *   cannot predict (hash flooding would otherwise make every lookup walk one long run).
 * - A record's tag is its 32 bytes and its authority interned. The answered records form a
 *   doubly linked list in the order they were answered (so of expiry), which eviction of the
 *   oldest and the expiry sweep take from the head, O(records removed). A running record is never evicted nor expired (a duplicate
 *   of its request must wait for it, not run the effect again): it leaves only when its
 *   attempt settles (to the answered list's tail), fails or is replaced.
 * - A promise is kept only while the first attempt runs, in a small array of slots (as many
 *   as ever ran at once) that its record points to, beside the persona tree it counts in:
 *   running records are bounded by `maxEntries` in all and `perTree` per tree ({@link admits}).
 */
export class DedupeTable<P> {
  readonly capacity: number;
  private readonly mask: number;
  private readonly slots: Int32Array;
  private readonly f64: Float64Array;
  private readonly i32: Int32Array;
  private readonly u8: Uint8Array;
  /** The running attempts' promises (as many slots as ever ran at once), and the free slots. */
  private readonly pendings: (P | undefined)[] = [];
  private readonly pendingFree: number[] = [];
  /** Each pending slot's tree (its id in `trees`). */
  private readonly pendingTrees: number[] = [];
  private readonly clientNames = new Interner();
  private readonly authorities = new Interner();
  /** Persona trees with running records: an id's references are its tree's running records. */
  private readonly trees = new Interner(IDLE_TREES_KEPT);
  /** The answered records, oldest answer first (running ones are in no list: nothing walks them). */
  private head = NONE;
  private tail = NONE;
  private count = 0;
  private runCount = 0;
  /** The running records kept for the admin persona, and the bound for everyone else. */
  readonly adminReserve: number;
  private readonly open: number;
  /** Records handed out so far; past them, `free` (linked by NEXT) holds the removed ones. */
  private used = 0;
  private free = NONE;
  /** Bumped by every change to the index: a `find` of the same key string before the next one stands. */
  private version = 0;
  // The key last looked up by `find`, and what it found (no object per lookup).
  private kKey = "";
  private kVersion = -1;
  private kFound = NONE;
  private kClient = NONE;
  private kPrefix = "";
  private kId = NO_ID;
  private kHash = 0;
  // Recent clients by slot (a miss only costs the Map lookup; a peer's chosen instance ids can only cause misses).
  private readonly prefixes: string[] = new Array<string>(PREFIX_SLOTS).fill("");
  private readonly prefixIds = new Int32Array(PREFIX_SLOTS).fill(NONE);

  /**
   * `maxEntries`: the bound (one record more exists for a moment, before the eviction), of
   * running records too; `perTree`: the running records one persona tree may have;
   * `hash`: the index's (a test's weak one forces collisions); `admin`: the persona that alone
   * may take the last `adminReserve` running records, and is exempt from its tree's share.
   */
  constructor(
    readonly maxEntries: number,
    private readonly evictBatch: number,
    private readonly hash: KeyHash = keyedHash(),
    readonly perTree = maxEntries,
    private readonly admin?: string,
    adminReserve = 0,
  ) {
    this.capacity = maxEntries + 1;
    this.adminReserve = admin === undefined ? 0 : Math.max(0, Math.min(adminReserve, maxEntries - 1));
    this.open = maxEntries - this.adminReserve;
    let size = 8;
    while (size < this.capacity * 2.5) size *= 2;
    this.mask = size - 1;
    // Pairs: record + 1, then its hash (a probe past another key never touches its record).
    this.slots = new Int32Array(size * 2);
    const buffer = new ArrayBuffer(this.capacity * STRIDE);
    this.f64 = new Float64Array(buffer);
    this.i32 = new Int32Array(buffer);
    this.u8 = new Uint8Array(buffer);
  }

  get size(): number {
    return this.count;
  }

  /** Records of attempts still running. */
  get running(): number {
    return this.runCount;
  }

  /**
   * Whether an attempt of persona tree `tree` may begin now (be {@link put} with its promise):
   * fewer than `maxEntries` running in all (but the last `adminReserve`, the admin persona's),
   * and fewer than `perTree` of its tree (the admin persona exempt: four trees at their share,
   * the admin's tree among them, left the admin no room to act). O(1): the last tree asked is
   * compared first, and `persona` only near a bound.
   */
  admits(tree: string, persona: string = tree): boolean {
    if (this.runCount >= this.open) return this.runCount < this.maxEntries && persona === this.admin;
    const id = this.trees.idOf(tree);
    return id === NONE || this.trees.refsOf(id) < this.perTree || persona === this.admin;
  }

  /** Whether the table's running records leave only the admin's reserve (what {@link admits} refused `persona` then). */
  reservedFull(persona: string): boolean {
    return this.runCount >= this.open && this.runCount < this.maxEntries && persona !== this.admin;
  }

  /** Whether persona tree `tree` has its share running (what {@link admits} refused, if not the whole table). */
  treeFull(tree: string): boolean {
    const id = this.trees.idOf(tree);
    return id !== NONE && this.trees.refsOf(id) >= this.perTree;
  }

  /** Interned strings held (clients and authorities): for tests that check nothing stays behind. */
  get interned(): number {
    return this.clientNames.size + this.authorities.size + this.trees.size;
  }

  /** The record of `key`, or -1. */
  find(key: string): number {
    // The same key again with nothing changed (the pipeline's check, then running): the same answer.
    // (Last chars first: two keys of one client differ there, and `===` would compare from the start.)
    const last = this.kKey;
    const n = key.length;
    if (this.kVersion === this.version && n === last.length && key.charCodeAt(n - 1) === last.charCodeAt(n - 1) && key === last) {
      return this.kFound;
    }
    this.kKey = key;
    this.kVersion = this.version;
    this.kFound = NONE;
    const client = this.parse(key);
    this.kClient = client;
    if (client === NONE) return NONE;
    const id = this.kId;
    const h = this.hash(client, id >>> 0, Math.floor(id / TWO_32) | 0);
    this.kHash = h;
    const { slots, mask, i32, f64 } = this;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const r = slots[2 * i]! - 1;
      if (r === NONE) return NONE;
      if (slots[2 * i + 1] === h && i32[r * I32 + CLIENT] === client && f64[r * F64 + ID] === id) {
        this.kFound = r;
        return r;
      }
    }
  }

  /** Whether record `r` was remembered by these tag bytes under this authority. */
  sameTag(r: number, bytes: Uint8Array, authority: string): boolean {
    if (bytes.length !== TAG_BYTES || !this.authorities.is(this.i32[r * I32 + AUTH]!, authority)) return false;
    const u8 = this.u8;
    const o = r * STRIDE + TAG;
    for (let i = 0; i < TAG_BYTES; i++) if (u8[o + i] !== bytes[i]) return false;
    return true;
  }

  expires(r: number): number {
    return this.f64[r * F64 + EXPIRES]!;
  }

  pending(r: number): P | undefined {
    const slot = this.i32[r * I32 + PENDING]!;
    return slot === NONE ? undefined : this.pendings[slot];
  }

  /** Record `r` has its answer: no promise, a new expiry, and it is the newest answered record. */
  settle(r: number, expires: number): void {
    this.unlink(r);
    this.dropPending(r);
    this.f64[r * F64 + EXPIRES] = expires;
    this.link(r);
  }

  /**
   * Remembers `key` as the newest record (replacing its record, if any): running, with its
   * `pending` promise, counted in persona tree `tree`; else answered. Past `maxEntries` the
   * oldest `evictBatch` answered records go at once, never a running one (ask {@link admits}
   * before an attempt begins: a running record with no room throws). The tag's bytes are
   * copied. Answers the record (for {@link pending} checks later; records are reused once removed).
   */
  put(key: string, bytes: Uint8Array, authority: string, expires: number, pending: P | undefined, tree = ""): number {
    if (bytes.length !== TAG_BYTES) throw new RangeError(`a dedupe tag is ${TAG_BYTES} bytes, not ${bytes.length}`);
    const old = this.find(key);
    if (pending !== undefined && this.runCount - (old !== NONE && this.isRunning(old) ? 1 : 0) >= this.maxEntries)
      throw new RangeError(`the dedupe table holds ${this.runCount} running requests, its bound: none may begin`);
    // References taken before the old record goes: its client and authority must stay interned.
    let client = this.kClient;
    let h = this.kHash;
    const id = this.kId;
    if (client === NONE) {
      client = this.clientNames.acquire(this.kPrefix);
      this.kClient = client;
      if (id !== NO_ID) this.cachePrefix(this.kPrefix, client);
      h = this.hash(client, id >>> 0, Math.floor(id / TWO_32) | 0);
    } else this.clientNames.addRef(client);
    const auth = this.authorities.acquire(authority);
    if (old !== NONE) this.remove(old);
    let r = this.free;
    if (r !== NONE) this.free = this.i32[r * I32 + NEXT]!;
    else r = this.used++;
    const { i32, f64 } = this;
    const o = r * I32;
    f64[r * F64 + EXPIRES] = expires;
    f64[r * F64 + ID] = id;
    i32[o + HASH] = h;
    i32[o + CLIENT] = client;
    i32[o + AUTH] = auth;
    const u8 = this.u8;
    const t = r * STRIDE + TAG;
    for (let i = 0; i < TAG_BYTES; i++) u8[t + i] = bytes[i]!;
    if (pending !== undefined) {
      const slot = this.pendingFree.pop() ?? this.pendings.length;
      this.pendings[slot] = pending;
      this.pendingTrees[slot] = this.trees.acquire(tree);
      this.runCount++;
      i32[o + PENDING] = slot;
    } else i32[o + PENDING] = NONE;
    this.link(r);
    this.count++;
    const { slots, mask } = this;
    let i = h & mask;
    while (slots[2 * i] !== 0) i = (i + 1) & mask;
    slots[2 * i] = r + 1;
    slots[2 * i + 1] = h;
    this.version++;
    if (this.count > this.maxEntries) this.evictOldest(this.evictBatch);
    // Its record (the oldest answered go first: a running one stays; an answered one is still
    // this key's unless the table holds no other answered record).
    return r;
  }

  /** Removes the oldest `n` answered records (fewer if there are fewer); running ones stay. */
  evictOldest(n: number): void {
    while (n-- > 0 && this.head !== NONE) this.remove(this.head);
  }

  /** Removes answered records from the oldest while they expired before `now` (stops at the first that did not). */
  sweep(now: number): void {
    while (this.head !== NONE && this.f64[this.head * F64 + EXPIRES]! < now) this.remove(this.head);
  }

  private isRunning(r: number): boolean {
    return this.i32[r * I32 + PENDING] !== NONE;
  }

  /** An answered `r` becomes the newest in the answered list; a running one is in none. */
  private link(r: number): void {
    if (this.isRunning(r)) return;
    const i32 = this.i32;
    const o = r * I32;
    const tail = this.tail;
    i32[o + PREV] = tail;
    i32[o + NEXT] = NONE;
    if (tail !== NONE) i32[tail * I32 + NEXT] = r;
    else this.head = r;
    this.tail = r;
  }

  /** Takes an answered `r` out of the answered list (before a promise is dropped: it says which `r` is). */
  private unlink(r: number): void {
    if (this.isRunning(r)) return;
    const i32 = this.i32;
    const o = r * I32;
    const p = i32[o + PREV]!;
    const n = i32[o + NEXT]!;
    if (p !== NONE) i32[p * I32 + NEXT] = n;
    else this.head = n;
    if (n !== NONE) i32[n * I32 + PREV] = p;
    else this.tail = p;
  }

  remove(r: number): void {
    this.version++;
    const { slots, mask, i32 } = this;
    const o = r * I32;
    // Out of the index: find its slot, then shift the run behind it back (no tombstones).
    let i = i32[o + HASH]! & mask;
    while (slots[2 * i] !== r + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; slots[2 * j] !== 0; j = (j + 1) & mask) {
      const home = slots[2 * j + 1]! & mask;
      // The entry at j may move to i unless its home slot lies cyclically in (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        slots[2 * i] = slots[2 * j]!;
        slots[2 * i + 1] = slots[2 * j + 1]!;
        i = j;
      }
    }
    slots[2 * i] = 0;
    this.unlink(r);
    this.clientNames.release(i32[o + CLIENT]!);
    this.authorities.release(i32[o + AUTH]!);
    this.dropPending(r);
    i32[o + NEXT] = this.free;
    this.free = r;
    this.count--;
  }

  private dropPending(r: number): void {
    const o = r * I32 + PENDING;
    const slot = this.i32[o]!;
    if (slot === NONE) return;
    this.pendings[slot] = undefined;
    this.trees.release(this.pendingTrees[slot] as number);
    this.runCount--;
    this.pendingFree.push(slot);
    this.i32[o] = NONE;
  }

  /** The longest run of occupied index slots: what one lookup may walk at worst (for tests). */
  longestRun(): number {
    let longest = 0;
    let run = 0;
    // Twice around, so a run that wraps past the end is counted whole.
    for (let k = 0; k <= this.mask * 2 + 1; k++) {
      if (this.slots[2 * (k & this.mask)] === 0) run = 0;
      else if (++run > longest) longest = run;
    }
    return Math.min(longest, this.count);
  }

  /**
   * Splits a key into client and request id (see the class comment): the request id into
   * `kId`, the client part into `kPrefix`; returns the client's id, or -1 if it has no record.
   * No `lastIndexOf` (a runtime call, ~10× a scan of the digits from the end) and, for a client
   * in the small cache, no Map lookup (hashing the new substring was most of a lookup).
   */
  private parse(key: string): number {
    // A safe integer in canonical decimal after the last colon: 1–16 digits, no leading zero.
    let j = key.length - 1;
    let v = 0;
    let scale = 1;
    for (; j >= 0; j--) {
      const d = key.charCodeAt(j) - 48;
      if (d < 0 || d > 9) break;
      v += d * scale;
      scale *= 10;
    }
    const digits = key.length - 1 - j;
    if (
      j >= 0 &&
      key.charCodeAt(j) === 58 &&
      digits >= 1 &&
      digits <= 16 &&
      (digits === 1 || key.charCodeAt(j + 1) !== 48) &&
      v <= Number.MAX_SAFE_INTEGER
    ) {
      this.kId = v;
      // (A slice compared with `===` is ~4× faster here than `startsWith` with a string not known when compiled.)
      const prefix = key.slice(0, j);
      const slot = prefixSlot(key, j);
      const cached = this.prefixes[slot] as string;
      const cachedId = this.prefixIds[slot] as number;
      if (cachedId !== NONE && prefix === cached && this.clientNames.is(cachedId, cached)) {
        this.kPrefix = cached;
        return cachedId;
      }
      this.kPrefix = prefix;
      const id = this.clientNames.idOf(prefix);
      if (id !== NONE) this.cachePrefix(prefix, id);
      return id;
    }
    this.kPrefix = key;
    this.kId = NO_ID;
    return this.clientNames.idOf(key);
  }

  private cachePrefix(prefix: string, id: number): void {
    const slot = prefixSlot(prefix, prefix.length);
    this.prefixes[slot] = prefix;
    this.prefixIds[slot] = id;
  }
}

const PREFIX_SLOTS = 64;
/** A client's slot in the prefix cache: from the two chars before the colon (an instance id's hex digits). */
const prefixSlot = (s: string, colon: number): number =>
  ((s.charCodeAt(colon - 1) | 0) ^ ((s.charCodeAt(colon - 2) | 0) << 3)) & (PREFIX_SLOTS - 1);
