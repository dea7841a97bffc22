import { createHash } from "node:crypto";
import { type CborMap, encodeCanonical, headSize, sha256 } from "@kpip/protocol";
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
  return RECORD_ENCODER.encodeKept(r);
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

export type RecordField = keyof Omit<AuditRow, "hash" | "prevHash" | "record">;
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

/**
 * The same bytes as {@link recordHashGeneric}, written straight into one reused buffer with
 * the keys pre-encoded: hashing records is on every request's path and is all of
 * `audit verify`. A field that is not what the schema says (a non-integer number) takes the
 * generic path, so the two never disagree.
 */
class RecordEncoder extends CborWriter {
  /**
   * Where the next record starts in the buffer, a slab: the records kept before it
   * ({@link encodeKept}) are views of the bytes below, which are never written again.
   */
  private start = 0;

  protected override restart(): void {
    // A slab an unusually large record grew is let go (its kept records keep it while they live).
    if (this.buf.length > SLAB_KEEP_BYTES) {
      this.buf = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.start = 0;
    }
    this.pos = this.start;
  }

  /** Past the slab's end a new slab, the record so far moved to its start (the old one stays the kept records'). */
  protected override ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const used = this.pos - this.start;
    const next = Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, 2 * (used + n)));
    this.buf.copy(next, 0, this.start, this.pos);
    this.buf = next;
    this.start = 0;
    this.pos = used;
  }

  /**
   * The record's bytes, kept: a view of the slab that nothing writes over. One copy less than
   * copying the reused buffer's bytes out (each copy took its own slice of Buffer's shared pool,
   * a new 8 KiB pool every ~15 requests), on every record of every request.
   */
  encodeKept(r: Omit<AuditRow, "hash">): Buffer {
    const b = this.encode(r);
    this.start = this.pos;
    return b;
  }

  /**
   * The record's bytes (valid until the next call, unless kept). Field by field in canonical key
   * order, each by name (a loop over field names made every read a keyed lookup).
   */
  encode(r: Omit<AuditRow, "hash">): Buffer {
    if (
      !isUint(r.seq) ||
      !isUint(r.time) ||
      !(r.requestId == null || isUint(r.requestId)) ||
      !(r.durationUs == null || isUint(r.durationUs))
    ) {
      // Bytes of their own: nothing of the slab is kept for them.
      this.pos = this.start;
      return recordBytesGeneric(r);
    }
    const count =
      (r.op != null ? 1 : 0) +
      (r.seq != null ? 1 : 0) +
      (r.caps != null ? 1 : 0) +
      (r.time != null ? 1 : 0) +
      (r.phase != null ? 1 : 0) +
      (r.detail != null ? 1 : 0) +
      (r.domain != null ? 1 : 0) +
      (r.intent != null ? 1 : 0) +
      (r.kernel != null ? 1 : 0) +
      (r.status != null ? 1 : 0) +
      (r.target != null ? 1 : 0) +
      (r.message != null ? 1 : 0) +
      (r.persona != null ? 1 : 0) +
      (r.session != null ? 1 : 0) +
      (r.execution != null ? 1 : 0) +
      (r.requestId != null ? 1 : 0) +
      (r.durationUs != null ? 1 : 0) +
      (r.errorClass != null ? 1 : 0) +
      (r.intentHash != null ? 1 : 0) +
      (r.traceparent != null ? 1 : 0) +
      (r.measurements != null ? 1 : 0);
    this.restart();
    this.ensure(64 + r.prevHash.length);
    this.buf.set(r.prevHash, this.pos);
    this.pos += r.prevHash.length;
    this.head(5, count);
    this.textField(K.op, r.op);
    this.uintField(K.seq, r.seq);
    this.textField(K.caps, r.caps);
    this.uintField(K.time, r.time);
    this.textField(K.phase, r.phase);
    this.textField(K.detail, r.detail);
    this.textField(K.domain, r.domain);
    this.bytesField(K.intent, r.intent);
    this.textField(K.kernel, r.kernel);
    this.textField(K.status, r.status);
    this.textField(K.target, r.target);
    this.textField(K.message, r.message);
    this.textField(K.persona, r.persona);
    this.textField(K.session, r.session);
    this.textField(K.execution, r.execution);
    this.uintField(K.requestId, r.requestId);
    this.uintField(K.durationUs, r.durationUs);
    this.textField(K.errorClass, r.errorClass);
    this.bytesField(K.intentHash, r.intentHash);
    this.textField(K.traceparent, r.traceparent);
    this.bytesField(K.measurements, r.measurements);
    return this.buf.subarray(this.start, this.pos);
  }

  private key(key: Buffer): void {
    this.ensure(key.length);
    this.buf.set(key, this.pos);
    this.pos += key.length;
  }

  private textField(key: Buffer, v: string | null | undefined): void {
    if (v == null) return;
    this.key(key);
    this.text(v);
  }

  private uintField(key: Buffer, v: number | null | undefined): void {
    if (v == null) return;
    this.key(key);
    this.head(0, v);
  }

  private bytesField(key: Buffer, v: Uint8Array | null | undefined): void {
    if (v == null) return;
    this.key(key);
    this.head(2, v.length);
    this.ensure(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
  }

  /**
   * A text string. Most of a record's texts are short ASCII (ids, op names, targets): written
   * byte by byte here, no call into Buffer's UTF-8 writer; anything else is written as UTF-8
   * after a one-byte head, moved up when its head is longer.
   */
  private text(s: string): void {
    const n = s.length;
    this.ensure(n * 3 + 9);
    const b = this.buf;
    const at = this.pos;
    if (n < 0x100) {
      const h = n < 24 ? 1 : 2;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        b[at + h + i] = c;
      }
      if (i === n) {
        if (h === 1) b[at] = 0x60 | n;
        else {
          b[at] = 0x78;
          b[at + 1] = n;
        }
        this.pos = at + h + n;
        return;
      }
    }
    const len = b.write(s, at + 1, "utf8");
    if (len < 24) {
      b[at] = 0x60 | len;
      this.pos = at + 1 + len;
      return;
    }
    const headLen = headSize(len);
    b.copyWithin(at + headLen, at + 1, at + 1 + len);
    // No reallocation in head(): the room for the longest head was ensured above.
    this.pos = at;
    this.head(3, len);
    this.pos = at + headLen + len;
  }
}

const isUint = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
/** Each field's key, CBOR-encoded once. */
const K = Object.fromEntries(FIELDS.map(([k]) => [k, textKey(k)])) as Record<Field, Buffer>;
/** A slab of kept records (~70 of a `bench.noop` request's), and the largest one kept for more. */
const SLAB_BYTES = 32 * 1024;
const SLAB_KEEP_BYTES = 1024 * 1024;
const RECORD_ENCODER = new RecordEncoder();

const CHECKPOINT_CONTEXT = Buffer.from("kpip-audit-checkpoint-v1\0", "latin1");

/** The bytes a checkpoint signature covers: context || canonical CBOR {kernel, seq, hash, time}. */
export function checkpointMessage(c: Pick<AuditCheckpoint, "kernel" | "seq" | "hash" | "time">): Buffer {
  return Buffer.concat([CHECKPOINT_CONTEXT, encodeCanonical({ kernel: c.kernel, seq: c.seq, hash: c.hash, time: c.time })]);
}
