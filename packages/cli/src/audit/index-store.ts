import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { homedir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import type { AuditReader, AuditRecord } from "@kpip/kernel";
import { UsageError } from "../util.js";
import { recordTokenIds, traceId } from "./filters.js";
import { detailValue, fromRecord, pairKey } from "./timeline.js";

/**
 * The side index of `kpip audit`: a few fixed-size columns per record (ids into string tables,
 * times, the intent an outcome pairs with), so the common filters are answered without decoding
 * the records they rule out. It lives in the CLI's private cache, never in the evidence home, and
 * is keyed to the chain: the stored hash of the last record it covers (and of each chunk's first)
 * must be the evidence's, or it is discarded and built again. It is a cache of what the records
 * say: an answer from it is the answer of the full scan (indexed-timeline.ts decides only what the
 * columns decide exactly, and decodes the record for anything else).
 */

/** Bump when the columns or their meaning change: an index of another version is built again. */
const VERSION = 2;

/** Records a chunk file holds: ~3.6 MB of columns, the most a query holds in memory at once. */
export const CHUNK = 65_536;

/** An id a string table holds for null. */
export const NULL_ID = 0;
/** An id for a value the table had no room for: the record is decoded to decide. */
export const UNKNOWN = 0xffff_ffff;

/**
 * Each string table's bounds (entries, characters): a persona chooses its targets, sessions are
 * many; past a bound a value is UNKNOWN (decoded when a filter asks), never kept. Personas, ops,
 * outcomes and token lists are few on a real record.
 */
const DICT_BOUNDS: Record<DictName, [number, number]> = {
  phase: [250, 4096],
  status: [250, 4096],
  persona: [65_536, 8 << 20],
  op: [65_536, 8 << 20],
  errorClass: [65_536, 4 << 20],
  session: [262_144, 16 << 20],
  scope: [131_072, 16 << 20],
  tokens: [131_072, 16 << 20],
};
type DictName = "phase" | "status" | "persona" | "op" | "errorClass" | "session" | "scope" | "tokens";
const DICTS = Object.keys(DICT_BOUNDS) as DictName[];

/** Intents still waiting for their outcome past which the index is not kept (a tampered record's flood of them). */
const MAX_PENDING = 1_000_000;

/**
 * A chunk's summary (summaries.bin, one after another, oldest first): for each of its columns
 * persona, op, session and scope, a bitmap of the ids its records hold (id modulo SUMMARY_BITS - 1,
 * UNKNOWN the last bit: bloom-like, a bit may stand for several ids), then the least and greatest
 * start and the greatest time. A filter that matches none of a chunk's ids (or times) skips the
 * chunk without reading it; a bit set by another id only costs a read.
 */
export const SUMMARY_BITS = 4096;
export const SUMMARY_COLS = ["persona", "op", "session", "scope"] as const;
export type SummaryCol = (typeof SUMMARY_COLS)[number];
const SUMMARY_BYTES = SUMMARY_COLS.length * (SUMMARY_BITS / 8) + 3 * 8;
/** The bit of `id` in a summary's bitmap. */
export const summaryBit = (id: number) => (id === UNKNOWN ? SUMMARY_BITS - 1 : id % (SUMMARY_BITS - 1));

/** A chunk's summary as read: the bitmaps and times (a view of summaries.bin's bytes). */
export interface ChunkSummary {
  bits: Record<SummaryCol, Uint8Array>;
  minStart: number;
  maxStart: number;
  maxTime: number;
}

function summaryView(buf: Buffer, i: number): ChunkSummary {
  const at = i * SUMMARY_BYTES;
  const bits = {} as Record<SummaryCol, Uint8Array>;
  SUMMARY_COLS.forEach((k, j) => {
    bits[k] = buf.subarray(at + j * (SUMMARY_BITS / 8), at + (j + 1) * (SUMMARY_BITS / 8));
  });
  const t = at + SUMMARY_COLS.length * (SUMMARY_BITS / 8);
  return { bits, minStart: buf.readDoubleLE(t), maxStart: buf.readDoubleLE(t + 8), maxTime: buf.readDoubleLE(t + 16) };
}

/** Flag bits. */
export const FLAG_WHOLE_TARGET = 1; // the scope column holds the whole target
export const FLAG_DETAIL_ID = 2; // the detail holds a string of 32 characters (a token id it may name)
export const FLAG_TRACE = 4; // the trace column holds the first 8 hex digits of the trace id
export const FLAG_TRACE_ODD = 8; // a traceparent that is not of the W3C shape (the filter decodes the record)

export class Dict {
  readonly values: string[] = [""]; // id 0: null
  private readonly ids = new Map<string, number>();
  private chars = 0;
  constructor(private readonly bound: [number, number]) {}
  static from(values: string[], bound: [number, number]): Dict {
    const d = new Dict(bound);
    for (let i = 1; i < values.length; i++) d.add(values[i] as string);
    return d;
  }
  private add(v: string): number {
    const id = this.values.length;
    this.values.push(v);
    this.ids.set(v, id);
    this.chars += v.length;
    return id;
  }
  id(v: string | null): number {
    if (v === null) return NULL_ID;
    const id = this.ids.get(v);
    if (id !== undefined) return id;
    if (this.values.length > this.bound[0] || this.chars + v.length > this.bound[1]) return UNKNOWN;
    return this.add(v);
  }
  /** The value of `id` (undefined: null or unknown). */
  value(id: number): string | undefined {
    return id === NULL_ID || id === UNKNOWN ? undefined : this.values[id];
  }
}

/** One chunk's columns, record i at index i. */
export interface Chunk {
  n: number;
  seq: Float64Array;
  time: Float64Array;
  /** The row's start as the timeline shows it (a single record's time less its duration). */
  start: Float64Array;
  /** An outcome: the intent it pairs with (0: none); an intent: the one it took the place of while waiting (0: none). */
  pair: Float64Array;
  persona: Uint32Array;
  op: Uint32Array;
  session: Uint32Array;
  /** The target up to its first segment (see scopeOf), or whole (FLAG_WHOLE_TARGET). */
  scope: Uint32Array;
  tokens: Uint32Array;
  errorClass: Uint32Array;
  /** The trace id's first 8 hex digits (FLAG_TRACE: a well-formed traceparent's; FLAG_TRACE_ODD: another text, decoded when --trace asks). */
  trace: Uint32Array;
  phase: Uint8Array;
  status: Uint8Array;
  flags: Uint8Array;
}

const F64 = ["seq", "time", "start", "pair"] as const;
const U32 = ["persona", "op", "session", "scope", "tokens", "errorClass", "trace"] as const;
const U8 = ["phase", "status", "flags"] as const;
/** Bytes of columns per record. */
export const RECORD_BYTES = F64.length * 8 + U32.length * 4 + U8.length;

function newChunk(cap: number): Chunk {
  const c = { n: 0 } as Chunk;
  for (const k of F64) c[k] = new Float64Array(cap);
  for (const k of U32) c[k] = new Uint32Array(cap);
  for (const k of U8) c[k] = new Uint8Array(cap);
  return c;
}

function chunkBytes(c: Chunk): Buffer {
  const parts: Buffer[] = [];
  for (const k of [...F64, ...U32, ...U8]) {
    const a = c[k];
    parts.push(Buffer.from(a.buffer, a.byteOffset, c.n * a.BYTES_PER_ELEMENT));
  }
  return Buffer.concat(parts);
}

/** The index is not the log's (a chunk file another run rewrote, a record gone): the caller answers by the full scan. */
export class IndexStaleError extends Error {
  override name = "IndexStaleError";
}

/**
 * A chunk file's first `n` records. The columns are laid out by the records the file holds, which
 * may be more than the meta counts: a run killed (or outrun by another) after writing its chunks
 * and before its meta leaves a file longer than the meta says, read at the file's own offsets.
 */
function chunkFrom(bytes: Buffer, n: number): Chunk {
  const held = bytes.length / RECORD_BYTES;
  if (!Number.isInteger(held) || held < n)
    throw new IndexStaleError(`an audit index chunk file holds ${held} records, not the ${n} its meta counts`);
  // The typed arrays are views of the file's bytes (a copy only where they are not 8-aligned).
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : Buffer.from(new Uint8Array(bytes));
  const buf = aligned.buffer;
  const c = { n } as Chunk;
  let at = aligned.byteOffset;
  for (const k of F64) {
    c[k] = new Float64Array(buf, at, n);
    at += held * 8;
  }
  for (const k of U32) {
    c[k] = new Uint32Array(buf, at, n);
    at += held * 4;
  }
  for (const k of U8) {
    c[k] = new Uint8Array(buf, at, n);
    at += held;
  }
  return c;
}

/** What meta.json holds. */
interface Meta {
  version: number;
  home: string;
  /** Records a chunk holds when full. */
  chunkRecords: number;
  /** Entries each string table holds at most, when fewer than DICT_BOUNDS's. */
  dictEntries?: number;
  /** Records per chunk file, oldest first, and the hash of each chunk's first record. */
  chunks: { n: number; firstSeq: number; firstHash: string }[];
  /** Chunks, from the first, whose records were all pruned from the log: their files are removed. */
  dropped?: number;
  last: { seq: number; hash: string } | null;
  dicts: Record<DictName, string[]>;
  /** The full scan's intents waiting for their outcome: pair key, intent seq. */
  pending: [string, number][];
}

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** A record's target as the scope column keeps it: up to its first segment, or whole (with the flag) when that is all of it. */
export function targetHead(target: string): { head: string; whole: boolean } {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/]*)(\/?)/.exec(target);
  const head = m ? m[0] : target.slice(0, 64);
  return { head, whole: head.length === target.length };
}

/** Whether a parsed detail has a string of 32 characters anywhere (a token id the timeline's --token may find there). */
function detailHasId(d: string | null | undefined): boolean {
  if (d === null || d === undefined || d.length < 34) return false;
  const v = detailValue(d);
  const stack: unknown[] = [v];
  while (stack.length) {
    const x = stack.pop();
    if (typeof x === "string") {
      if (x.length === 32) return true;
    } else if (x !== null && typeof x === "object") for (const y of Object.values(x)) stack.push(y);
  }
  return false;
}

/** The index directory for `home`: under `root` (--index-dir) or the user's cache, never inside the home. */
export function indexDir(home: string, root: string | undefined): string | undefined {
  const base =
    root ??
    join(
      process.env.XDG_CACHE_HOME && process.env.XDG_CACHE_HOME !== "" ? process.env.XDG_CACHE_HOME : join(homedir(), ".cache"),
      "kpip",
      "audit-index",
    );
  const realHome = realpathSync(home);
  // The nearest existing directory of the index's path, resolved: a link into the home counts as in it.
  let probe = resolve(base);
  const rest: string[] = [];
  while (!existsSync(probe)) {
    rest.unshift(probe.slice(probe.lastIndexOf(sep) + 1));
    const up = resolve(probe, "..");
    if (up === probe) break;
    probe = up;
  }
  const realBase = join(realpathSync(probe), ...rest);
  const rel = relative(realHome, realBase);
  if (rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !rel.startsWith(sep))) {
    if (root !== undefined)
      throw new UsageError(`--index-dir ${root} is inside the home ${home}: the evidence is only read, never written`);
    return undefined;
  }
  return join(realBase, createHash("sha256").update(realHome).digest("hex").slice(0, 32));
}

/**
 * The first directory above `dir` another user could rename or replace entries of: writable by
 * others (or by a group not the user's) without the sticky bit, or owned by another user than
 * this one or root. Under it the index's directory could be swapped between its check and its
 * reads for one holding another user's meta and chunks: an index that answers what they chose.
 */
function sharedAncestor(dir: string): string | undefined {
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  if (uid === undefined) return undefined;
  for (let at = dirname(dir); ; at = dirname(at)) {
    const st = lstatSync(at, { throwIfNoEntry: false });
    if (st === undefined) continue; // made by this run, mode 0700
    const sticky = (st.mode & 0o1000) !== 0;
    const others = (st.mode & 0o002) !== 0 || ((st.mode & 0o020) !== 0 && st.gid !== gid);
    if ((st.uid !== uid && st.uid !== 0) || (others && !sticky)) return at;
    if (dirname(at) === at) return undefined;
  }
}

/** Index directories looked at per run for a home that is gone: a bounded cost, the cache emptied over runs. */
const SWEEP = 64;

/**
 * Removes the indexes (beside `dir`, in the same cache) of homes that no longer exist: a temporary
 * copy of evidence, a test's home. Only this user's directories of the index's name shape.
 */
export function sweepIndexes(dir: string): void {
  const root = dirname(dir);
  // Where another user can rename entries, what was checked need not be what is removed.
  if (sharedAncestor(dir) !== undefined) return;
  let names: string[];
  try {
    names = readdirSync(root).filter((n) => /^[0-9a-f]{32}$/.test(n));
  } catch {
    return;
  }
  const uid = process.getuid?.();
  for (const name of names.sort(() => Math.random() - 0.5).slice(0, SWEEP)) {
    const path = join(root, name);
    if (path === dir) continue;
    try {
      const st = lstatSync(path);
      if (!st.isDirectory() || (uid !== undefined && st.uid !== uid)) continue;
      const home = readFileSync(join(path, "home"), "utf8");
      if (home !== "" && !existsSync(home)) rmSync(path, { recursive: true, force: true });
    } catch {
      // no home file (being made), or gone meanwhile: left
    }
  }
}

/** Bytes a record's columns take on disk and, for the chunk being read, in memory. */
export class AuditIndex {
  private constructor(
    readonly dir: string,
    private meta: Meta,
    readonly dicts: Record<DictName, Dict>,
    /** The last chunk, kept in memory while appending. */
    private tail: Chunk | undefined,
    /** Each chunk's summary, SUMMARY_BYTES each. */
    private sums: Buffer,
  ) {}

  /** Chunks read (for the tests and the benchmark). */
  chunkReads = 0;

  /** Chunk `i`'s summary (what its records hold, to skip it unread). */
  summary(i: number): ChunkSummary {
    return summaryView(this.sums, i);
  }

  /** Records the index covers. */
  get count(): number {
    return this.meta.chunks.reduce((n, c) => n + c.n, 0);
  }
  get lastSeq(): number {
    return this.meta.last?.seq ?? 0;
  }
  get chunkCount(): number {
    return this.meta.chunks.length;
  }
  /** The first and last seq chunk `i` holds. */
  chunkFirst(i: number): number {
    return this.meta.chunks[i]?.firstSeq ?? 0;
  }

  /** Removes the index (it named a record the log does not hold): the next run builds it anew. */
  discard(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Chunk `i`'s columns (the last one from memory after an update). */
  chunk(i: number): Chunk {
    this.chunkReads++;
    const m = this.meta.chunks[i];
    if (!m) throw new Error(`no chunk ${i}`);
    if (i === this.meta.chunks.length - 1 && this.tail && this.tail.n === m.n) return this.tail;
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(this.dir, chunkName(i)));
    } catch (e) {
      // Removed under this run (another run's rebuild, the user clearing the cache): answered by the scan.
      throw new IndexStaleError(`an audit index chunk file cannot be read (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    return chunkFrom(bytes, m.n);
  }

  /**
   * The index of `reader`'s home at `dir`, brought up to the log's head: loaded when its key
   * holds, else built anew; only records past the last one it covers are decoded. `note`: why an
   * index was discarded, for stderr.
   */
  static open(
    reader: AuditReader,
    home: string,
    dir: string,
    note: (s: string) => void,
    /** Smaller chunks and string tables (tests: several chunks, values past the tables on a short record). */
    shape: { chunkRecords?: number; dictEntries?: number } = {},
  ): AuditIndex | undefined {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    if (!st.isDirectory() || (process.getuid && st.uid !== process.getuid()) || (st.mode & 0o077) !== 0) {
      note(`the index directory ${dir} is not a private directory of this user: not used`);
      return undefined;
    }
    const shared = sharedAncestor(dir);
    if (shared !== undefined) {
      note(
        `${shared}, above the index directory, can be changed by other users (who could put their own index in its place): not used`,
      );
      return undefined;
    }
    let idx = AuditIndex.load(reader, home, dir, note);
    if (!idx) {
      // Anew: nothing of the old index is kept (its chunk files past the new ones' would linger).
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const meta = emptyMeta(home, shape.chunkRecords ?? CHUNK, shape.dictEntries);
      idx = new AuditIndex(dir, meta, emptyDicts(meta.dictEntries), undefined, Buffer.alloc(0));
      writeFileSync(join(dir, "home"), idx.meta.home, { mode: 0o600 });
    }
    return idx.update(reader) ? idx : undefined;
  }

  private static load(reader: AuditReader, home: string, dir: string, note: (s: string) => void): AuditIndex | undefined {
    const path = join(dir, "meta.json");
    if (!existsSync(path)) return undefined;
    let meta: Meta;
    try {
      meta = JSON.parse(readFileSync(path, "utf8")) as Meta;
    } catch {
      note("the audit index's meta.json does not parse: built again");
      return undefined;
    }
    if (meta.version !== VERSION || meta.home !== realpathSync(home) || !(meta.chunkRecords > 0)) return undefined;
    if (meta.last) {
      const h = reader.auditHashAt(meta.last.seq);
      if (!h || hex(h) !== meta.last.hash) {
        note(
          `the evidence's record ${meta.last.seq} is not the one the audit index was built on (another hash, or gone): built again`,
        );
        return undefined;
      }
    }
    const first = reader.firstAuditSeq() ?? 0;
    for (const c of meta.chunks) {
      if (c.firstSeq < first) continue; // pruned since
      const h = reader.auditHashAt(c.firstSeq);
      if (!h || hex(h) !== c.firstHash) {
        note(`the evidence's record ${c.firstSeq} is not the one the audit index was built on: built again`);
        return undefined;
      }
    }
    const dicts = {} as Record<DictName, Dict>;
    for (const k of DICTS) dicts[k] = Dict.from(meta.dicts[k] ?? [""], bounds(k, meta.dictEntries));
    let sums: Buffer;
    try {
      // Written before the meta: it may hold a summary more (or a tail's of more records), never fewer.
      sums = meta.chunks.length > 0 ? readFileSync(join(dir, SUMMARIES)) : Buffer.alloc(0);
    } catch {
      sums = Buffer.alloc(0);
    }
    if (sums.length < meta.chunks.length * SUMMARY_BYTES) {
      note("the audit index's chunk summaries are missing or short: built again");
      return undefined;
    }
    const idx = new AuditIndex(dir, meta, dicts, undefined, Buffer.from(sums.subarray(0, meta.chunks.length * SUMMARY_BYTES)));
    const lastChunk = meta.chunks.length - 1;
    if (lastChunk >= 0) {
      try {
        idx.tail = grow(idx.chunk(lastChunk), meta.chunkRecords);
      } catch {
        note("an audit index chunk file is missing or short: built again");
        return undefined;
      }
    }
    return idx;
  }

  /** Appends the records past the last covered; false when the index cannot be kept (then the caller scans). */
  private update(reader: AuditReader): boolean {
    const pending = new Map(this.meta.pending);
    const from = this.meta.last ? this.meta.last.seq + 1 : undefined;
    let last: AuditRecord | undefined;
    // Chunks first, then the meta that counts their records (a crash between leaves the old meta: it reads the first of them, chunkFrom).
    for (const r of reader.records(from !== undefined ? { from } : undefined)) {
      if (this.meta.last && r.seq <= this.meta.last.seq) continue;
      if (!this.tail || this.tail.n >= this.meta.chunkRecords) {
        // A full chunk is written as it fills: one chunk's columns in memory however long the log.
        if (this.tail && last) writeAtomic(join(this.dir, chunkName(this.meta.chunks.length - 1)), chunkBytes(this.tail));
        this.tail = newChunk(this.meta.chunkRecords);
        this.meta.chunks.push({ n: 0, firstSeq: r.seq, firstHash: hex(r.hash) });
        const fresh = Buffer.alloc(SUMMARY_BYTES);
        const t = SUMMARY_COLS.length * (SUMMARY_BITS / 8);
        fresh.writeDoubleLE(Number.POSITIVE_INFINITY, t);
        fresh.writeDoubleLE(Number.NEGATIVE_INFINITY, t + 8);
        fresh.writeDoubleLE(Number.NEGATIVE_INFINITY, t + 16);
        this.sums = Buffer.concat([this.sums, fresh]);
      }
      this.add(this.tail, r, pending);
      (this.meta.chunks.at(-1) as { n: number }).n = this.tail.n;
      last = r;
      if (pending.size > MAX_PENDING) return false;
    }
    const dropped = this.dropPruned(reader.firstAuditSeq());
    if (!last || !this.tail) {
      if (dropped) writeAtomic(join(this.dir, "meta.json"), Buffer.from(JSON.stringify(this.meta)));
      return true;
    }
    this.meta.last = { seq: last.seq, hash: hex(last.hash) };
    this.meta.pending = [...pending];
    writeAtomic(join(this.dir, chunkName(this.meta.chunks.length - 1)), chunkBytes(this.tail));
    writeAtomic(join(this.dir, SUMMARIES), this.sums);
    for (const k of DICTS) this.meta.dicts[k] = this.dicts[k].values;
    writeAtomic(join(this.dir, "meta.json"), Buffer.from(JSON.stringify(this.meta)));
    return true;
  }

  /**
   * Removes the files of the chunks whose records were all pruned from the log (retention): no
   * answer reads them again (eachEntry starts at the log's first record), and kept they grew the
   * cache without bound under a log that retention keeps bounded. True when one was removed.
   */
  private dropPruned(first: number | undefined): boolean {
    const m = this.meta;
    const was = m.dropped ?? 0;
    let at = was;
    if (first === undefined) return false;
    while (at + 1 < m.chunks.length && (m.chunks[at + 1] as { firstSeq: number }).firstSeq <= first) {
      rmSync(join(this.dir, chunkName(at)), { force: true });
      at++;
    }
    m.dropped = at;
    return at > was;
  }

  private add(c: Chunk, r: AuditRecord, pending: Map<string, number>): void {
    const i = c.n++;
    const d = this.dicts;
    c.seq[i] = r.seq;
    c.time[i] = r.time;
    c.start[i] = fromRecord(r).start;
    let pair = 0;
    if (r.phase === "outcome" || r.phase === "intent") {
      // The full scan's pairing (timeline.ts): an outcome takes its intent off the waiting list; an intent replaces one waiting under its key.
      const key = pairKey(r);
      pair = pending.get(key) ?? 0;
      pending.delete(key);
      if (r.phase === "intent") pending.set(key, r.seq);
    }
    c.pair[i] = pair;
    c.persona[i] = d.persona.id(r.persona);
    c.op[i] = d.op.id(r.op);
    c.session[i] = d.session.id(r.session);
    let flags = 0;
    if (r.target === null) c.scope[i] = NULL_ID;
    else {
      const t = targetHead(r.target);
      c.scope[i] = d.scope.id(t.head);
      if (t.whole) flags |= FLAG_WHOLE_TARGET;
    }
    c.tokens[i] = d.tokens.id(recordTokenIds(r.phase, r.caps).join(","));
    c.errorClass[i] = d.errorClass.id(r.errorClass);
    c.phase[i] = small(d.phase.id(r.phase));
    c.status[i] = small(d.status.id(r.status));
    if (detailHasId(r.detail)) flags |= FLAG_DETAIL_ID;
    if (r.traceparent !== null) {
      const id = traceId(r.traceparent) as string;
      if (id !== r.traceparent) {
        c.trace[i] = Number.parseInt(id.slice(0, 8), 16) >>> 0;
        flags |= FLAG_TRACE;
      } else flags |= FLAG_TRACE_ODD;
    }
    c.flags[i] = flags;
    this.summarize(i);
  }

  /** Adds record `i` of the tail to the last chunk's summary. */
  private summarize(i: number): void {
    const c = this.tail as Chunk;
    const at = (this.meta.chunks.length - 1) * SUMMARY_BYTES;
    SUMMARY_COLS.forEach((k, j) => {
      const b = summaryBit(c[k][i] as number);
      const byte = at + j * (SUMMARY_BITS / 8) + (b >> 3);
      this.sums[byte] = (this.sums[byte] as number) | (1 << (b & 7));
    });
    // Math.min/max keep a NaN: a comparison with it never skips the chunk.
    const t = at + SUMMARY_COLS.length * (SUMMARY_BITS / 8);
    const start = c.start[i] as number;
    this.sums.writeDoubleLE(Math.min(this.sums.readDoubleLE(t), start), t);
    this.sums.writeDoubleLE(Math.max(this.sums.readDoubleLE(t + 8), start), t + 8);
    this.sums.writeDoubleLE(Math.max(this.sums.readDoubleLE(t + 16), c.time[i] as number), t + 16);
  }
}

/** A one-byte column's id: 255 stands for UNKNOWN. */
const small = (id: number) => (id === UNKNOWN || id > 254 ? 255 : id);
export const SMALL_UNKNOWN = 255;

function grow(c: Chunk, cap: number): Chunk {
  const g = newChunk(cap);
  for (const k of [...F64, ...U32, ...U8]) (g[k] as Float64Array).set(c[k] as Float64Array);
  g.n = c.n;
  return g;
}

const SUMMARIES = "summaries.bin";
const chunkName = (i: number) => `chunk-${String(i).padStart(6, "0")}.bin`;

function emptyMeta(home: string, chunkRecords: number, dictEntries: number | undefined): Meta {
  return {
    version: VERSION,
    home: realpathSync(home),
    chunkRecords,
    ...(dictEntries !== undefined ? { dictEntries } : {}),
    chunks: [],
    last: null,
    dicts: {} as Record<DictName, string[]>,
    pending: [],
  };
}

function emptyDicts(entries: number | undefined): Record<DictName, Dict> {
  const d = {} as Record<DictName, Dict>;
  for (const k of DICTS) d[k] = new Dict(bounds(k, entries));
  return d;
}

/** A table's bounds, its entries at most `entries` when given. */
function bounds(k: DictName, entries: number | undefined): [number, number] {
  const [n, chars] = DICT_BOUNDS[k];
  return [entries === undefined ? n : Math.min(n, entries), chars];
}

function writeAtomic(path: string, bytes: Buffer): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, bytes, { mode: 0o600 });
  renameSync(tmp, path);
}
