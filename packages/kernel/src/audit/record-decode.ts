import { isUtf8 } from "node:buffer";
import { decodeCanonical } from "@kpip/protocol";
import type { AuditPhase, AuditRow, RecordHead } from "../store/types.js";
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

/**
 * The head of the record stored as `bytes` (seq, phase, session, persona, request id): what
 * {@link decodeRecord} gives for those fields, without making the rest. A start after a kill reads
 * a window of the log for its effects' intent and outcome records (recover-outcomes.ts), and
 * decoding every record whole was most of that start's time. The record's bytes are checked as
 * the kernel writes them (every field known, in canonical order, of its kind, minimal heads,
 * texts UTF-8, nothing after): anything else takes the whole decoder, so a record that is not
 * the kernel's gives the placeholder's head, as it reads everywhere else.
 */
export function decodeRecordHead(seq: number, hash: Uint8Array, bytes: Uint8Array): RecordHead {
  return (bytes instanceof Uint8Array && headQuick(seq, bytes)) || headOf(decodeRecord(seq, hash, bytes));
}

/** The head of a decoded record. */
export function headOf(r: AuditRow): RecordHead {
  return { seq: r.seq, phase: r.phase, session: r.session, persona: r.persona, requestId: r.requestId };
}

/** Each field's name as its key's bytes (ASCII), in canonical order. */
const KEY_BYTES = FIELDS.map(([k]) => Buffer.from(k, "latin1"));
/** Each field's CBOR major type. */
const MAJOR = KINDS.map((kind) => (kind === "uint" ? 0 : kind === "bytes" ? 2 : 3));
const SEQ = SLOT.get("seq") as number;
const PHASE = SLOT.get("phase") as number;
const PERSONA = SLOT.get("persona") as number;
const SESSION = SLOT.get("session") as number;
const REQUEST_ID = SLOT.get("requestId") as number;
/** The fields every record has, as a mask of their slots. */
const REQUIRED_MASK = REQUIRED.reduce((m, k) => m | (1 << (SLOT.get(k) as number)), 0);
/** The phases as they are spelt, so the common ones are not made anew per record. */
const PHASES = new Map<string, string>(
  (["intent", "outcome", "complete", "refused", "replay", "session", "offline", "kernel"] satisfies AuditPhase[]).map((p) => [
    p,
    p,
  ]),
);

/** {@link decodeRecordHead} for the bytes the kernel writes; undefined for anything else. */
function headQuick(seq: number, bytes: Uint8Array): RecordHead | undefined {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const n = b.length;
  let p = PREV_HASH_BYTES;
  if (n <= p) return undefined;
  const count = (b[p++] as number) - 0xa0;
  // 6 to 21 entries: the required fields, each field at most once.
  if (count < 6 || count > FIELDS.length) return undefined;
  let next = 0;
  let seen = 0;
  let seqValue = -1;
  let requestId: number | null = null;
  let phase = "";
  let persona = "";
  let session = "";
  for (let i = 0; i < count; i++) {
    // The key: a short text, a field after the last one (canonical order, no duplicates).
    if (p >= n) return undefined;
    const kh = b[p++] as number;
    const klen = kh - 0x60;
    if (klen < 1 || klen > 23 || p + klen > n) return undefined;
    let f = next;
    for (; f < FIELDS.length; f++) if (keyAt(b, p, klen, KEY_BYTES[f] as Buffer)) break;
    if (f === FIELDS.length) return undefined;
    next = f + 1;
    seen |= 1 << f;
    p += klen;
    // The value's head: its kind's major type, the shortest encoding of its argument.
    if (p >= n) return undefined;
    const ib = b[p++] as number;
    if (ib >> 5 !== MAJOR[f]) return undefined;
    const ai = ib & 31;
    let v: number;
    if (ai < 24) v = ai;
    else if (ai === 24) {
      if (p + 1 > n) return undefined;
      v = b[p] as number;
      if (v < 24) return undefined;
      p += 1;
    } else if (ai === 25) {
      if (p + 2 > n) return undefined;
      v = b.readUInt16BE(p);
      if (v < 0x100) return undefined;
      p += 2;
    } else if (ai === 26) {
      if (p + 4 > n) return undefined;
      v = b.readUInt32BE(p);
      if (v < 0x10000) return undefined;
      p += 4;
    } else if (ai === 27) {
      if (p + 8 > n) return undefined;
      const hi = b.readUInt32BE(p);
      v = hi * 0x1_0000_0000 + b.readUInt32BE(p + 4);
      if (hi === 0 || !Number.isSafeInteger(v)) return undefined;
      p += 8;
    } else return undefined;
    if (MAJOR[f] === 0) {
      if (f === SEQ) seqValue = v;
      else if (f === REQUEST_ID) requestId = v;
      continue;
    }
    const end = p + v;
    if (end > n) return undefined;
    if (MAJOR[f] === 3) {
      let ascii = true;
      for (let j = p; j < end; j++)
        if ((b[j] as number) >= 0x80) {
          ascii = false;
          break;
        }
      if (!ascii && !isUtf8(b.subarray(p, end))) return undefined;
      if (f === PHASE) {
        const t = b.toString("utf8", p, end);
        phase = PHASES.get(t) ?? t;
      } else if (f === PERSONA) persona = b.toString(ascii ? "latin1" : "utf8", p, end);
      else if (f === SESSION) session = b.toString(ascii ? "latin1" : "utf8", p, end);
    }
    p = end;
  }
  if (p !== n || seqValue !== seq || (seen & REQUIRED_MASK) !== REQUIRED_MASK) return undefined;
  return { seq, phase: phase as AuditRow["phase"], session, persona, requestId };
}

/** Whether the `len` bytes at `p` are `key` (byte by byte: Buffer.compare's checks cost more than these few bytes). */
function keyAt(b: Buffer, p: number, len: number, key: Buffer): boolean {
  if (key.length !== len) return false;
  for (let i = 0; i < len; i++) if (b[p + i] !== key[i]) return false;
  return true;
}
