import { createHash } from "node:crypto";
import { type CborMap, encodeCanonical } from "@kpip/protocol";
import type { AuditCheckpoint, AuditRow } from "../store/types.js";

/** The previous-hash of the first record. */
export const GENESIS_HASH = new Uint8Array(32);

/**
 * A record's hash: SHA-256(prevHash || canonical CBOR of its fields), the fields being every
 * column but prevHash and hash, null columns left out. Any change to a field, or to the
 * order of records, changes every hash after it.
 */
export function recordHash(r: Omit<AuditRow, "hash">): Buffer {
  // Fields are added in canonical key order (shorter keys first, then bytewise), so the
  // encoder does not have to sort them.
  const fields: CborMap = {};
  if (r.op !== null) fields.op = r.op;
  fields.seq = r.seq;
  if (r.caps !== null) fields.caps = r.caps;
  fields.time = r.time;
  fields.phase = r.phase;
  if (r.intent !== null) fields.intent = r.intent;
  fields.kernel = r.kernel;
  if (r.status !== null) fields.status = r.status;
  if (r.target !== null) fields.target = r.target;
  if (r.message !== null) fields.message = r.message;
  fields.persona = r.persona;
  fields.session = r.session;
  if (r.requestId !== null) fields.requestId = r.requestId;
  if (r.durationUs !== null) fields.durationUs = r.durationUs;
  if (r.errorClass !== null) fields.errorClass = r.errorClass;
  if (r.intentHash !== null) fields.intentHash = r.intentHash;
  if (r.traceparent !== null) fields.traceparent = r.traceparent;
  return createHash("sha256").update(r.prevHash).update(encodeCanonical(fields)).digest();
}

const CHECKPOINT_CONTEXT = Buffer.from("kpip-audit-checkpoint-v1\0", "latin1");

/** The bytes a checkpoint signature covers: context || canonical CBOR {kernel, seq, hash, time}. */
export function checkpointMessage(c: Pick<AuditCheckpoint, "kernel" | "seq" | "hash" | "time">): Buffer {
  return Buffer.concat([CHECKPOINT_CONTEXT, encodeCanonical({ kernel: c.kernel, seq: c.seq, hash: c.hash, time: c.time })]);
}
