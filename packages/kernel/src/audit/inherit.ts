import { Buffer } from "node:buffer";
import { publicKeyFromRaw, verifyBytes } from "@kpip/protocol";
import type { AuditStore } from "../store/types.js";
import { checkpointMessage } from "./record.js";
import { chainStart, unsignedRun, verifyRange } from "./verify.js";

/** The audit chain a kernel found in its home does not verify: it will not append to it nor sign over it. */
export class AuditChainError extends Error {
  override name = "AuditChainError";
}

/**
 * What a kernel checks of the chain it inherits before it appends a record (and so before it
 * signs anything): its last signed checkpoint is this kernel's, names a record with that hash,
 * the records after it chain from it and recompute, and there are at most `maxUnsigned` of them.
 * Without the key, rewriting records means removing every checkpoint after the first change,
 * so the rewrite would be that unsigned tail: refused unless it is within the bound any crash
 * may leave. The cost is bounded by `maxUnsigned` records and one signature, whatever the
 * log's length; the whole chain is `kpip audit verify`'s.
 */
export function checkInheritedChain(
  store: AuditStore,
  publicKey: Uint8Array,
  maxUnsigned: number,
): { head: number; from: number } {
  const fail = (seq: number, reason: string): never => {
    throw new AuditChainError(
      `the audit chain in this home does not verify at record ${seq}: ${reason}; the kernel will not append to it nor sign over it (run kpip audit verify; restore the database from a backup or move it aside)`,
    );
  };
  const last = store.lastAudit();
  if (!last) return { head: 0, from: 0 };
  const cps = store.checkpoints();
  const start = chainStart(store.firstAuditSeq(), cps);
  if (!("hash" in start)) return fail(start.seq, start.reason);
  const cp = cps.at(-1);
  let from = start;
  if (cp && cp.seq > start.seq) {
    if (!Buffer.from(cp.publicKey).equals(Buffer.from(publicKey))) fail(cp.seq, "the last checkpoint is signed by another key");
    if (!verifyBytes(publicKeyFromRaw(publicKey), checkpointMessage(cp), cp.signature))
      fail(cp.seq, "the last checkpoint's signature is invalid");
    const h = store.auditHashAt(cp.seq);
    if (!h) fail(cp.seq, "the record the last checkpoint names is missing");
    else if (!Buffer.from(h).equals(Buffer.from(cp.hash))) fail(cp.seq, "the record differs from the last checkpoint");
    from = { seq: cp.seq, hash: cp.hash };
  }
  const gap = unsignedRun(from.seq, last.seq, [], maxUnsigned);
  if (gap) fail(gap.seq, gap.reason);
  // The tail: each record recomputes and links to the one before, from the checkpoint's hash.
  // A head the checkpoint names is checked too (its size: the kernel reads it to go on).
  if (last.seq === from.seq) {
    const head = verifyRange(store, last.seq, last.seq, new Set());
    if (head.firstBad) fail(head.firstBad.seq, head.firstBad.reason);
  }
  const r = verifyRange(store, from.seq + 1, last.seq, new Set());
  if (r.firstBad) fail(r.firstBad.seq, r.firstBad.reason);
  if (r.firstPrev && !Buffer.from(r.firstPrev).equals(Buffer.from(from.hash)))
    fail(from.seq + 1, "the first record after the last checkpoint does not link to it");
  if (r.lastSeq !== last.seq) fail(r.lastSeq + 1, "records are missing before the head");
  return { head: last.seq, from: from.seq };
}
