import { createHash } from "node:crypto";
import { type CborMap, encodeCanonical, sha256 } from "@kpip/protocol";
import type { AuditCheckpoint, AuditRow } from "../store/types.js";
import { CborWriter, textKey } from "./cbor-writer.js";

/** The previous-hash of the first record. */
export const GENESIS_HASH = new Uint8Array(32);

/**
 * A record's hash: SHA-256(prevHash || canonical CBOR of its fields), the fields being every
 * column but prevHash and hash, null columns left out. Any change to a field, or to the
 * order of records, changes every hash after it.
 */
export function recordHash(r: Omit<AuditRow, "hash">): Buffer {
  return sha256(RECORD_ENCODER.encode(r));
}

/**
 * The exact bytes a record's hash covers: prevHash || canonical CBOR of its fields. The store
 * keeps these bytes as the record (one blob), so `audit verify` hashes what is stored and every
 * reader shows what it decodes from them (record-decode.ts).
 */
export function recordBytes(r: Omit<AuditRow, "hash">): Buffer {
  return Buffer.from(RECORD_ENCODER.encode(r));
}

/** The generic definition: the canonical CBOR map of the non-null fields (tests pin the fast path to it). */
export function recordHashGeneric(r: Omit<AuditRow, "hash">): Buffer {
  return createHash("sha256").update(recordBytesGeneric(r)).digest();
}

/** {@link recordBytes} by the generic encoder. */
export function recordBytesGeneric(r: Omit<AuditRow, "hash">): Buffer {
  // Fields are added in canonical key order (shorter keys first, then bytewise), so the
  // encoder does not have to sort them.
  const fields: CborMap = {};
  if (r.op !== null) fields.op = r.op;
  fields.seq = r.seq;
  if (r.caps !== null) fields.caps = r.caps;
  fields.time = r.time;
  fields.phase = r.phase;
  if (r.detail != null) fields.detail = r.detail;
  if (r.domain != null) fields.domain = r.domain;
  if (r.intent !== null) fields.intent = r.intent;
  fields.kernel = r.kernel;
  if (r.status !== null) fields.status = r.status;
  if (r.target !== null) fields.target = r.target;
  if (r.message !== null) fields.message = r.message;
  fields.persona = r.persona;
  fields.session = r.session;
  if (r.execution != null) fields.execution = r.execution;
  if (r.requestId !== null) fields.requestId = r.requestId;
  if (r.durationUs !== null) fields.durationUs = r.durationUs;
  if (r.errorClass !== null) fields.errorClass = r.errorClass;
  if (r.intentHash !== null) fields.intentHash = r.intentHash;
  if (r.traceparent !== null) fields.traceparent = r.traceparent;
  if (r.measurements != null) fields.measurements = r.measurements;
  return Buffer.concat([r.prevHash, encodeCanonical(fields)]);
}

export type RecordField = keyof Omit<AuditRow, "hash" | "prevHash">;
type Field = RecordField;
/** Record fields in canonical key order, with their kind on the wire. */
export const FIELDS: [Field, "text" | "uint" | "bytes"][] = [
  ["op", "text"],
  ["seq", "uint"],
  ["caps", "text"],
  ["time", "uint"],
  ["phase", "text"],
  ["detail", "text"],
  ["domain", "text"],
  ["intent", "bytes"],
  ["kernel", "text"],
  ["status", "text"],
  ["target", "text"],
  ["message", "text"],
  ["persona", "text"],
  ["session", "text"],
  ["execution", "text"],
  ["requestId", "uint"],
  ["durationUs", "uint"],
  ["errorClass", "text"],
  ["intentHash", "bytes"],
  ["traceparent", "text"],
  ["measurements", "bytes"],
];
const KEY_BYTES = FIELDS.map(([k]) => textKey(k));

/**
 * The same bytes as {@link recordHashGeneric}, written straight into one reused buffer with
 * the keys pre-encoded: hashing records is on every request's path and is all of
 * `audit verify`. A field that is not what the schema says (a non-integer number) takes the
 * generic path, so the two never disagree.
 */
class RecordEncoder extends CborWriter {
  /** The record's bytes in the reused buffer (valid until the next call). */
  encode(r: Omit<AuditRow, "hash">): Buffer {
    let count = 0;
    for (const [k, kind] of FIELDS) {
      const v = r[k];
      if (v === null || v === undefined) continue;
      if (kind === "uint" && !(Number.isSafeInteger(v) && (v as number) >= 0)) return recordBytesGeneric(r);
      count++;
    }
    this.pos = 0;
    this.ensure(64);
    this.buf.set(r.prevHash, 0);
    this.pos = r.prevHash.length;
    this.head(5, count);
    for (let i = 0; i < FIELDS.length; i++) {
      const [k, kind] = FIELDS[i] as [Field, string];
      const v = r[k];
      if (v === null || v === undefined) continue;
      const key = KEY_BYTES[i] as Buffer;
      this.ensure(key.length);
      this.buf.set(key, this.pos);
      this.pos += key.length;
      if (kind === "uint") this.head(0, v as number);
      else if (kind === "text") {
        const s = v as string;
        const len = Buffer.byteLength(s, "utf8");
        this.head(3, len);
        this.ensure(len);
        this.pos += this.buf.write(s, this.pos, "utf8");
      } else {
        const b = v as Uint8Array;
        this.head(2, b.length);
        this.ensure(b.length);
        this.buf.set(b, this.pos);
        this.pos += b.length;
      }
    }
    return this.buf.subarray(0, this.pos);
  }
}

const RECORD_ENCODER = new RecordEncoder();

const CHECKPOINT_CONTEXT = Buffer.from("kpip-audit-checkpoint-v1\0", "latin1");

/** The bytes a checkpoint signature covers: context || canonical CBOR {kernel, seq, hash, time}. */
export function checkpointMessage(c: Pick<AuditCheckpoint, "kernel" | "seq" | "hash" | "time">): Buffer {
  return Buffer.concat([CHECKPOINT_CONTEXT, encodeCanonical({ kernel: c.kernel, seq: c.seq, hash: c.hash, time: c.time })]);
}
