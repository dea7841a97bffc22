import { decodeCanonical } from "@kpip/protocol";
import type { AuditRow } from "../store/types.js";
import { FIELDS, type RecordField, recordBytes } from "./record.js";
import { PREV_HASH_BYTES, uintAt } from "./record-seq.js";
import { oversizeReason } from "./record-size.js";

export { PREV_HASH_BYTES, recordSeq } from "./record-seq.js";

/**
 * Reading a record back from its stored bytes (prevHash || canonical CBOR of its fields, see
 * recordBytes): the only way any reader gets a record's fields, so what is shown is what
 * `audit verify` hashed. Bytes that are not a record the kernel writes decode to a placeholder
 * that says so (verify reports that record: its bytes do not hash to the stored hash).
 */

const KIND = new Map<string, "text" | "uint" | "bytes">(FIELDS.map(([k, kind]) => [k, kind]));
const REQUIRED = ["seq", "time", "kernel", "session", "persona", "phase"] as const satisfies readonly RecordField[];
/** Every field a record may leave out, absent (null): where a decoded record starts. */
const ABSENT = Object.fromEntries(
  FIELDS.filter(([k]) => !(REQUIRED as readonly string[]).includes(k)).map(([k]) => [k, null]),
) as { readonly [K in Exclude<RecordField, (typeof REQUIRED)[number]>]: null };

/** Thrown for stored bytes that are not a record. */
export class RecordDecodeError extends Error {
  override name = "RecordDecodeError";
}

/** The record stored as `bytes` under sequence number `seq` with hash `hash`; throws RecordDecodeError. */
export function decodeRecordStrict(seq: number, hash: Uint8Array, bytes: Uint8Array): AuditRow {
  if (!(bytes instanceof Uint8Array) || bytes.length <= PREV_HASH_BYTES) throw new RecordDecodeError("too short to be a record");
  const quick = decodeQuick(seq, hash, bytes);
  if (quick) return quick;
  let map: unknown;
  try {
    map = decodeCanonical(bytes.subarray(PREV_HASH_BYTES));
  } catch (e) {
    throw new RecordDecodeError(`not canonical CBOR: ${(e as Error).message}`);
  }
  if (typeof map !== "object" || map === null || Array.isArray(map) || map instanceof Uint8Array)
    throw new RecordDecodeError("not a map");
  const out: Record<string, unknown> = { ...ABSENT };
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
 * placeholder (phase `kernel`, persona `?`) whose message says why.
 */
export function decodeRecord(seq: number, hash: Uint8Array, bytes: Uint8Array): AuditRow {
  try {
    return decodeRecordStrict(seq, hash, bytes);
  } catch (e) {
    if (!(e instanceof RecordDecodeError)) throw e;
    const prevHash = bytes instanceof Uint8Array ? bytes.subarray(0, Math.min(PREV_HASH_BYTES, bytes.length)) : new Uint8Array(0);
    return placeholder(
      seq,
      hash,
      prevHash,
      `the stored record does not decode (${e.message}): it is not a record the kernel wrote`,
    );
  }
}

/** The record shown for stored bytes over MAX_RECORD_BYTES, which are not read (`size` bytes). */
export function oversizeRecord(seq: number, hash: Uint8Array, size: number): AuditRow {
  return placeholder(seq, hash, new Uint8Array(0), oversizeReason(size));
}

/** A record that is not one the kernel wrote: phase `kernel`, persona `?`, the reason as its message. */
function placeholder(seq: number, hash: Uint8Array, prevHash: Uint8Array, message: string): AuditRow {
  return { ...ABSENT, seq, time: 0, kernel: "?", session: "?", persona: "?", phase: "kernel", message, prevHash, hash };
}

/**
 * The records the kernel writes, read straight off their bytes (texts, unsigned integers and
 * byte strings under the known keys): a few µs, where the generic decoder takes several times
 * that. Accepted only if the record it reads encodes to exactly `bytes` again — so it is the
 * record the bytes are, whatever the parse let through (order, UTF-8, duplicates). Anything
 * else (undefined) goes through the strict decoder.
 */
const QUICK_ORDER =
  "op,seq,caps,time,phase,detail,domain,intent,kernel,status,target,message,persona,session,execution,requestId,durationUs,errorClass,intentHash,traceparent,measurements";

function decodeQuick(seq: number, hash: Uint8Array, bytes: Uint8Array): AuditRow | undefined {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  let p = PREV_HASH_BYTES;
  const head = b[p++] as number;
  if (head < 0xa6 || head > 0xb7) return undefined;
  // One slot per field in canonical order (FIELDS), filled as the keys come.
  const v: (string | number | Buffer | null)[] = new Array(FIELDS.length).fill(null);
  for (let i = head & 31; i > 0; i--) {
    const k = uintAt(b, p, 3);
    if (k === undefined || k.value > 16) return undefined;
    const at = SLOT.get(b.toString("latin1", k.next, k.next + k.value));
    p = k.next + k.value;
    if (at === undefined) return undefined;
    const kind = KINDS[at];
    const h = uintAt(b, p, kind === "uint" ? 0 : kind === "text" ? 3 : 2);
    if (h === undefined) return undefined;
    if (kind === "uint") {
      v[at] = h.value;
      p = h.next;
    } else {
      const end = h.next + h.value;
      if (end > b.length) return undefined;
      v[at] = kind === "text" ? b.toString("utf8", h.next, end) : b.subarray(h.next, end);
      p = end;
    }
  }
  if (p !== b.length) return undefined;
  const row: AuditRow = {
    op: v[0] as string | null,
    seq: v[1] as number,
    caps: v[2] as string | null,
    time: v[3] as number,
    phase: v[4] as AuditRow["phase"],
    detail: v[5] as string | null,
    domain: v[6] as string | null,
    intent: v[7] as Buffer | null,
    kernel: v[8] as string,
    status: v[9] as string | null,
    target: v[10] as string | null,
    message: v[11] as string | null,
    persona: v[12] as string,
    session: v[13] as string,
    execution: v[14] as string | null,
    requestId: v[15] as number | null,
    durationUs: v[16] as number | null,
    errorClass: v[17] as string | null,
    intentHash: v[18] as Buffer | null,
    traceparent: v[19] as string | null,
    measurements: v[20] as Buffer | null,
    prevHash: b.subarray(0, PREV_HASH_BYTES),
    hash,
  };
  if (row.seq !== seq || row.time === null || row.phase === null || row.kernel === null) return undefined;
  if (row.persona === null || row.session === null) return undefined;
  return recordBytes(row).equals(b) ? row : undefined;
}

const SLOT = new Map(FIELDS.map(([k], i) => [k as string, i]));
// decodeQuick names the slots by position: FIELDS must be in this order.
if (FIELDS.map(([k]) => k).join() !== QUICK_ORDER) throw new Error("record-decode.ts: FIELDS changed order; update decodeQuick");
const KINDS = FIELDS.map(([, kind]) => kind);
