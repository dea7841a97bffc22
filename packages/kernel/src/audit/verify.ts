import { Buffer } from "node:buffer";
import { publicKeyFromRaw, verifyBytes } from "@kpip/protocol";
import type { AuditCheckpoint, AuditStore } from "../store/types.js";
import { checkpointMessage, GENESIS_HASH, recordHash } from "./record.js";

export interface VerifyResult {
  ok: boolean;
  records: number;
  checkpoints: number;
  /** The first record found bad, and why. */
  firstBad?: { seq: number; reason: string };
  /** Set when records were pruned by retention: the log starts after the signed checkpoint at `prunedThrough`. */
  prunedThrough?: number;
}

export interface VerifyOptions {
  /** Raw Ed25519 key the checkpoints must be signed with (the kernel's). */
  trustedKey?: Uint8Array;
  onProgress?: (done: number, total: number) => void;
  batch?: number;
  /**
   * Most records in a row without a signed checkpoint (the kernel's auditCheckpointEvery): a
   * longer run, or a longer unsigned tail, means checkpoints were removed — what rewriting
   * records without the key needs.
   */
  maxUnsigned?: number;
}

/** Where the chain starts: genesis (seq 0), or the signed checkpoint a pruned log keeps as its base. */
export interface ChainStart {
  seq: number;
  hash: Uint8Array;
}

export const GENESIS_START: ChainStart = { seq: 0, hash: GENESIS_HASH };

/** The start of the chain given its first record: genesis, or the checkpoint just below a pruned log. */
export function chainStart(first: number | undefined, cps: AuditCheckpoint[]): ChainStart | { seq: number; reason: string } {
  if (first === undefined || first === 1) return GENESIS_START;
  const base = cps.find((c) => c.seq === first - 1);
  if (!base) {
    return {
      seq: 1,
      reason: `records 1..${first - 1} are missing and no signed checkpoint at ${first - 1} anchors the rest (retention keeps one)`,
    };
  }
  return { seq: base.seq, hash: base.hash };
}

/**
 * Walks the whole chain: sequence numbers contiguous from 1, each prevHash equal to the
 * previous record's hash, each hash recomputed from its fields; then every checkpoint's
 * signature, and its hash against the record it names. Detects modified, deleted, inserted
 * and reordered records; a truncated tail is detected back to the last checkpoint.
 * `trustedKey` (raw Ed25519) pins the kernel key checkpoints must be signed with.
 */
export function verifyAudit(
  store: Pick<AuditStore, "countAudit" | "checkpoints" | "firstAuditSeq" | "scanAudit"> &
    Partial<RangeVerifier> & { transaction?: <T>(fn: () => T) => T; settleAudit?: () => void },
  opts: VerifyOptions = {},
): VerifyResult {
  // One read snapshot where the store has transactions: a live kernel committing meanwhile (from
  // another connection) would otherwise add records between the count and the walk. The kernel's
  // own store indexes its journal first (inside a transaction it reads SQLite as it is).
  if (typeof store.transaction === "function") {
    store.settleAudit?.();
    return store.transaction(() => verifyOnce(store, opts));
  }
  return verifyOnce(store, opts);
}

function verifyOnce(
  store: Pick<AuditStore, "countAudit" | "checkpoints" | "firstAuditSeq" | "scanAudit"> & Partial<RangeVerifier>,
  opts: VerifyOptions,
): VerifyResult {
  const total = store.countAudit();
  const cps = store.checkpoints();
  const start = chainStart(store.firstAuditSeq(), cps);
  if (!("hash" in start)) return { ok: false, records: 0, checkpoints: cps.length, firstBad: start };
  const r = verifyRange(store, start.seq + 1, Number.POSITIVE_INFINITY, new Set(cps.map((c) => c.seq)), opts.batch, (done) =>
    opts.onProgress?.(done, total),
  );
  return finish(total, cps, [r], opts.trustedKey, start, opts.maxUnsigned);
}

/** What one pass over a range of sequence numbers found (a worker's answer, in the parallel verify). */
export interface RangeResult {
  from: number;
  /** The last sequence number checked, and its hash (the next range's first prevHash must equal it). */
  lastSeq: number;
  lastHash: Uint8Array | null;
  /** The stored prevHash of the range's first record. */
  firstPrev: Uint8Array | null;
  /** Hashes of the records checkpoints name. */
  checkpointHashes: [number, Uint8Array][];
  firstBad?: { seq: number; reason: string };
}

/** A store that checks a range itself, faster than record by record through scanAudit (the read-only reader). */
export interface RangeVerifier {
  verifyRecords(from: number, to: number, cpSeqs: Set<number>, onProgress?: (done: number) => void): RangeResult;
}

/**
 * Checks records `from`..`to`: sequence numbers contiguous, each hash recomputed from its
 * fields, each prevHash equal to the previous record's hash (within the range; the seams
 * between ranges are checked by {@link finish}).
 */
export function verifyRange(
  store: Pick<AuditStore, "scanAudit"> & Partial<RangeVerifier>,
  from: number,
  to: number,
  cpSeqs: Set<number>,
  batch = 10_000,
  onProgress?: (done: number) => void,
): RangeResult {
  if (store.verifyRecords) return store.verifyRecords(from, to, cpSeqs, onProgress);
  const out: RangeResult = { from, lastSeq: from - 1, lastHash: null, firstPrev: null, checkpointHashes: [] };
  let expected = from;
  let prev: Buffer | undefined;
  while (expected <= to) {
    const rows = store.scanAudit(expected, Math.min(batch, to - expected + 1));
    if (rows.length === 0) break;
    for (const r of rows) {
      if (r.seq !== expected) {
        out.firstBad = { seq: expected, reason: `record ${expected} is missing (next is ${r.seq})` };
        return out;
      }
      // Blobs come out of SQLite as Buffers; anything else (another store) is wrapped once.
      const prevHash = Buffer.isBuffer(r.prevHash) ? r.prevHash : Buffer.from(r.prevHash);
      const hash = Buffer.isBuffer(r.hash) ? r.hash : Buffer.from(r.hash);
      if (prev === undefined) out.firstPrev = prevHash;
      else if (!prevHash.equals(prev)) {
        out.firstBad = {
          seq: r.seq,
          reason: "previous-hash link is broken (a record before it was changed, removed or reordered)",
        };
        return out;
      }
      if (!recordHash(r).equals(hash)) {
        out.firstBad = { seq: r.seq, reason: "record content does not match its hash" };
        return out;
      }
      if (cpSeqs.has(r.seq)) out.checkpointHashes.push([r.seq, hash]);
      prev = hash;
      out.lastSeq = r.seq;
      out.lastHash = hash;
      expected++;
    }
    onProgress?.(expected - from);
  }
  return out;
}

/** Joins range results in order: the seams, the count, then every checkpoint's signature and hash. */
export function finish(
  total: number,
  cps: AuditCheckpoint[],
  ranges: RangeResult[],
  trustedKey: Uint8Array | undefined,
  start: ChainStart = GENESIS_START,
  maxUnsigned?: number,
): VerifyResult {
  const bad: { seq: number; reason: string }[] = [];
  let prev: Uint8Array = start.hash;
  let records = start.seq;
  for (const r of ranges) {
    if (r.firstPrev && !Buffer.from(r.firstPrev).equals(Buffer.from(prev))) {
      bad.push({ seq: r.from, reason: "previous-hash link is broken (a record before it was changed, removed or reordered)" });
    }
    if (r.firstBad) bad.push(r.firstBad);
    if (bad.length) break;
    if (r.lastHash) prev = r.lastHash;
    records = r.lastSeq;
  }
  const pruned = start.seq > 0 ? { prunedThrough: start.seq } : {};
  const fail = (seq: number, reason: string): VerifyResult => ({
    ok: false,
    records: seq - 1,
    checkpoints: cps.length,
    firstBad: { seq, reason },
    ...pruned,
  });
  if (bad.length) {
    const first = bad.reduce((a, b) => (b.seq < a.seq ? b : a));
    return fail(first.seq, first.reason);
  }
  if (records - start.seq !== total)
    return fail(records + 1, `record count ${total} disagrees with the chain length ${records - start.seq}`);
  const hashes = new Map(ranges.flatMap((r) => r.checkpointHashes));
  // Without a trusted key, the log's first checkpoint's: a home keeps one kernel key for its life,
  // so a later checkpoint under another key is one re-signed after a rewrite (by whoever removed
  // kernel.key from the copy, or left it out of the evidence).
  const key = trustedKey ?? cps[0]?.publicKey;
  for (const c of cps) {
    if (key && !Buffer.from(c.publicKey).equals(Buffer.from(key))) {
      return fail(
        c.seq,
        trustedKey
          ? "checkpoint is signed by a key other than the kernel's"
          : "checkpoint is signed by a key other than the log's first checkpoint's (re-signed after a rewrite?)",
      );
    }
    if (!verifyBytes(publicKeyFromRaw(c.publicKey), checkpointMessage(c), c.signature)) {
      return fail(c.seq, "checkpoint signature is invalid");
    }
    // At or below a pruned log's start: the records are gone by retention; the start's hash was the first link.
    if (c.seq <= start.seq) continue;
    const h = hashes.get(c.seq);
    if (h === undefined) return fail(c.seq, `checkpoint names record ${c.seq}, which is missing (log truncated)`);
    if (!Buffer.from(h).equals(Buffer.from(c.hash))) return fail(c.seq, "checkpoint hash does not match the record");
  }
  if (maxUnsigned !== undefined) {
    const gap = unsignedRun(start.seq, records, cps, maxUnsigned);
    if (gap) return fail(gap.seq, gap.reason);
  }
  return { ok: true, records, checkpoints: cps.length, ...pruned };
}

/**
 * The first run of more than `max` records without a signed checkpoint, from `from` (the chain's
 * start) to `head`. The kernel signs at least every `max` records, so a longer run means
 * checkpoints were deleted: what rewriting records without the key takes.
 */
export function unsignedRun(
  from: number,
  head: number,
  cps: Pick<AuditCheckpoint, "seq">[],
  max: number,
): { seq: number; reason: string } | undefined {
  let last = from;
  for (const c of cps) {
    if (c.seq <= from) continue;
    if (c.seq - last > max) {
      return {
        seq: last + 1,
        reason: `records ${last + 1}..${c.seq} are ${c.seq - last} in a row without a signed checkpoint (at most ${max}): checkpoints were removed`,
      };
    }
    last = c.seq;
  }
  if (head - last > max) {
    return {
      seq: last + 1,
      reason: `the ${head - last} records after the last signed checkpoint (${last}) are more than the ${max} the kernel leaves unsigned: checkpoints were removed or the chain rewritten`,
    };
  }
  return undefined;
}
