import { decodeCanonical } from "@kpip/protocol";
import type { AuditRow } from "../store/types.js";
import { FIELDS, type RecordField } from "./record.js";
import { PREV_HASH_BYTES } from "./record-seq.js";

export { PREV_HASH_BYTES, recordSeq } from "./record-seq.js";

/**
 * Reading a record back from its stored bytes (prevHash || canonical CBOR of its fields, see
 * recordBytes): the only way any reader gets a record's fields, so what is shown is what
 * `audit verify` hashed. Bytes that are not a record the kernel writes decode to a placeholder
 * that says so (verify reports that record: its bytes do not hash to the stored hash).
 */

const KIND = new Map<string, "text" | "uint" | "bytes">(FIELDS.map(([k, kind]) => [k, kind]));
const REQUIRED: RecordField[] = ["seq", "time", "kernel", "session", "persona", "phase"];

/** Thrown for stored bytes that are not a record. */
export class RecordDecodeError extends Error {
  override name = "RecordDecodeError";
}

/** The record stored as `bytes` under sequence number `seq` with hash `hash`; throws RecordDecodeError. */
export function decodeRecordStrict(seq: number, hash: Uint8Array, bytes: Uint8Array): AuditRow {
  if (!(bytes instanceof Uint8Array) || bytes.length <= PREV_HASH_BYTES) throw new RecordDecodeError("too short to be a record");
  let map: unknown;
  try {
    map = decodeCanonical(bytes.subarray(PREV_HASH_BYTES));
  } catch (e) {
    throw new RecordDecodeError(`not canonical CBOR: ${(e as Error).message}`);
  }
  if (typeof map !== "object" || map === null || Array.isArray(map) || map instanceof Uint8Array)
    throw new RecordDecodeError("not a map");
  const out: Record<string, unknown> = {
    requestId: null,
    op: null,
    target: null,
    intentHash: null,
    intent: null,
    caps: null,
    status: null,
    errorClass: null,
    message: null,
    durationUs: null,
    traceparent: null,
    execution: null,
    domain: null,
    measurements: null,
    detail: null,
  };
  for (const [k, v] of Object.entries(map)) {
    const kind = KIND.get(k);
    if (kind === undefined) throw new RecordDecodeError(`unknown field ${JSON.stringify(k)}`);
    const ok =
      kind === "text"
        ? typeof v === "string"
        : kind === "uint"
          ? typeof v === "number" // any number the encoder can write (the kernel's are safe and non-negative)
          : v instanceof Uint8Array;
    if (!ok) throw new RecordDecodeError(`field ${k} is not a ${kind}`);
    out[k] = v;
  }
  for (const k of REQUIRED) if (!(k in map)) throw new RecordDecodeError(`field ${k} is missing`);
  if (out.seq !== seq) throw new RecordDecodeError(`it is record ${out.seq as number}, stored as ${seq}`);
  out.prevHash = bytes.subarray(0, PREV_HASH_BYTES);
  out.hash = hash;
  return out as unknown as AuditRow;
}

/**
 * The record for showing: {@link decodeRecordStrict}, or for bytes that are not a record a
 * placeholder (phase `kernel`, persona `?`) whose message says why — such a record fails verify.
 */
export function decodeRecord(seq: number, hash: Uint8Array, bytes: Uint8Array): AuditRow {
  try {
    return decodeRecordStrict(seq, hash, bytes);
  } catch (e) {
    if (!(e instanceof RecordDecodeError)) throw e;
    return {
      seq,
      time: 0,
      kernel: "?",
      session: "?",
      persona: "?",
      phase: "kernel",
      requestId: null,
      op: null,
      target: null,
      intentHash: null,
      intent: null,
      caps: null,
      status: null,
      errorClass: null,
      message: `the stored record does not decode (${e.message}); kpip audit verify reports it`,
      durationUs: null,
      traceparent: null,
      execution: null,
      domain: null,
      measurements: null,
      detail: null,
      prevHash: bytes instanceof Uint8Array ? bytes.subarray(0, Math.min(PREV_HASH_BYTES, bytes.length)) : new Uint8Array(0),
      hash,
    };
  }
}
