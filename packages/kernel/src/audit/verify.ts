import { Buffer } from "node:buffer";
import { publicKeyFromRaw, verifyBytes } from "@kpip/protocol";
import type { AuditStore } from "../store/types.js";
import { checkpointMessage, GENESIS_HASH, recordHash } from "./record.js";

export interface VerifyResult {
  ok: boolean;
  records: number;
  checkpoints: number;
  /** The first record found bad, and why. */
  firstBad?: { seq: number; reason: string };
}

/**
 * Walks the whole chain: sequence numbers contiguous from 1, each prevHash equal to the
 * previous record's hash, each hash recomputed from its fields; then every checkpoint's
 * signature, and its hash against the record it names. Detects modified, deleted, inserted
 * and reordered records; a truncated tail is detected back to the last checkpoint.
 * `trustedKey` (raw Ed25519) pins the kernel key checkpoints must be signed with.
 */
export function verifyAudit(
  store: AuditStore,
  opts: { trustedKey?: Uint8Array; onProgress?: (done: number, total: number) => void; batch?: number } = {},
): VerifyResult {
  const total = store.countAudit();
  const batch = opts.batch ?? 10_000;
  let expected = 1;
  let prev: Buffer = Buffer.from(GENESIS_HASH);
  const hashes = new Map<number, Uint8Array>();
  const cps = store.checkpoints();
  const cpSeqs = new Set(cps.map((c) => c.seq));
  const fail = (seq: number, reason: string): VerifyResult => ({
    ok: false,
    records: expected - 1,
    checkpoints: cps.length,
    firstBad: { seq, reason },
  });
  for (;;) {
    const rows = store.scanAudit(expected, batch);
    if (rows.length === 0) break;
    for (const r of rows) {
      if (r.seq !== expected) return fail(expected, `record ${expected} is missing (next is ${r.seq})`);
      // Blobs come out of SQLite as Buffers; anything else (another store) is wrapped once.
      const prevHash = Buffer.isBuffer(r.prevHash) ? r.prevHash : Buffer.from(r.prevHash);
      const hash = Buffer.isBuffer(r.hash) ? r.hash : Buffer.from(r.hash);
      if (!prevHash.equals(prev)) {
        return fail(r.seq, "previous-hash link is broken (a record before it was changed, removed or reordered)");
      }
      if (!recordHash(r).equals(hash)) return fail(r.seq, "record content does not match its hash");
      if (cpSeqs.has(r.seq)) hashes.set(r.seq, hash);
      prev = hash;
      expected++;
    }
    opts.onProgress?.(expected - 1, total);
  }
  const records = expected - 1;
  if (records !== total) return fail(expected, `record count ${total} disagrees with the chain length ${records}`);
  for (const c of cps) {
    const key = opts.trustedKey ?? c.publicKey;
    if (opts.trustedKey && !Buffer.from(c.publicKey).equals(Buffer.from(opts.trustedKey))) {
      return fail(c.seq, "checkpoint is signed by a key other than the kernel's");
    }
    if (!verifyBytes(publicKeyFromRaw(key), checkpointMessage(c), c.signature)) {
      return fail(c.seq, "checkpoint signature is invalid");
    }
    const h = hashes.get(c.seq);
    if (h === undefined) return fail(c.seq, `checkpoint names record ${c.seq}, which is missing (log truncated)`);
    if (!Buffer.from(h).equals(Buffer.from(c.hash))) return fail(c.seq, "checkpoint hash does not match the record");
  }
  return { ok: true, records, checkpoints: cps.length };
}
