import type { AuditReader, AuditRecord } from "@kpip/kernel";
import {
  type AuditIndex,
  type Chunk,
  type ChunkSummary,
  type Dict,
  IndexStaleError,
  NULL_ID,
  SMALL_UNKNOWN,
  SUMMARY_BITS,
  type SummaryCol,
  summaryBit,
  UNKNOWN,
} from "./index-store.js";

/** A decision from the index's columns: the record surely does not match, surely does, or must be decoded to tell. */
export const NO = 0;
export const YES = 1;
export const MAYBE = 2;
export type Decision = typeof NO | typeof YES | typeof MAYBE;

/** The index named a record the log does not hold (changed under it): the caller answers by the full scan. */
export { IndexStaleError };

/**
 * Records by seq for the indexed answers: one at a time, or a run of them when the records asked
 * for are close together (a run of candidates costs one read, not one a record).
 */
export class Decoder {
  private cache = new Map<number, AuditRecord>();
  private lastMiss = Number.NEGATIVE_INFINITY;
  /** Records decoded (for the tests and the benchmark). */
  decoded = 0;
  constructor(private readonly reader: AuditReader) {}
  get(seq: number): AuditRecord {
    let r = this.cache.get(seq);
    if (r) return r;
    if (seq - this.lastMiss <= 64) {
      this.cache.clear();
      const run = this.reader.scanAudit(seq, 256) as AuditRecord[];
      this.decoded += run.length;
      for (const x of run) this.cache.set(x.seq, x);
      r = this.cache.get(seq);
    }
    this.lastMiss = seq;
    if (!r) {
      r = this.reader.record(seq);
      this.decoded++;
    }
    if (!r) throw new IndexStaleError(`record ${seq} is in the audit index but not in the log`);
    return r;
  }
}

/** A test of a string column, decided once per distinct value. */
export function memo(dict: Dict, test: (s: string) => boolean): (id: number) => Decision {
  const seen = new Int8Array(dict.values.length).fill(-1);
  return (id) => {
    if (id === UNKNOWN || id === NULL_ID) return MAYBE;
    let d = seen[id] as number;
    if (d === -1) {
      d = test(dict.values[id] as string) ? YES : NO;
      seen[id] = d;
    }
    return d as Decision;
  };
}

/** A one-byte column's value: null, the string, or undefined (not in the table: decode). */
export function smallValue(dict: Dict, id: number): string | null | undefined {
  if (id === NULL_ID) return null;
  if (id === SMALL_UNKNOWN) return undefined;
  return dict.values[id];
}

/** A four-byte column's value: null, the string, or undefined (not in the table: decode). */
export function wideValue(dict: Dict, id: number): string | null | undefined {
  if (id === NULL_ID) return null;
  if (id === UNKNOWN) return undefined;
  return dict.values[id];
}

/**
 * The summary bits of the ids of `dict` (with null and UNKNOWN) a column test does not rule out:
 * a chunk whose bitmap shares none of them holds no record the test lets through.
 */
export function bitsOf(dict: Dict, test: (id: number) => Decision): Uint8Array {
  const bits = new Uint8Array(SUMMARY_BITS / 8);
  const set = (id: number) => {
    if (test(id) === NO) return;
    const b = summaryBit(id);
    bits[b >> 3] = (bits[b >> 3] as number) | (1 << (b & 7));
  };
  for (let id = 0; id < dict.values.length; id++) set(id);
  set(UNKNOWN);
  return bits;
}

/** Whether chunk summary `s`'s column `col` may hold an id of `bits`. */
export function mayHold(s: ChunkSummary, col: SummaryCol, bits: Uint8Array): boolean {
  const have = s.bits[col];
  for (let j = 0; j < bits.length; j++) if (((have[j] as number) & (bits[j] as number)) !== 0) return true;
  return false;
}

/**
 * Each record of the index from `from` on (chunks wholly before it are not read), oldest first;
 * `fn` false stops. `skip(ci)` true: chunk `ci` is passed over unread (its summary shows no record the caller needs).
 */
export function eachEntry(
  idx: AuditIndex,
  from: number,
  fn: (c: Chunk, i: number) => boolean,
  skip?: (ci: number) => boolean,
): void {
  for (let ci = 0; ci < idx.chunkCount; ci++) {
    if (ci + 1 < idx.chunkCount && idx.chunkFirst(ci + 1) <= from) continue;
    if (skip?.(ci)) continue;
    const c = idx.chunk(ci);
    for (let i = 0; i < c.n; i++) {
      if ((c.seq[i] as number) < from) continue;
      if (!fn(c, i)) return;
    }
  }
}
