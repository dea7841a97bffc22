/**
 * How large a stored audit record may be. Every variable part of a record the kernel writes
 * comes from one request frame or from the kernel's own text: the intent's bytes are kept only
 * up to auditIntentMaxBytes (larger intents keep their hash alone, audit/log.ts) and never
 * exceed the frame body (maxBodyBytes); a token's caveats in `detail` come from one frame too;
 * op, target and persona are bounded by the protocol (128, 2048, 255 bytes); messages, ids and
 * the rest are the kernel's own, a few KiB at most. So a record is under
 * intent + frame + {@link RECORD_OVERHEAD_BYTES}, and the config refuses settings whose sum
 * could pass {@link MAX_RECORD_BYTES} (checkValues). A stored record larger than it was not
 * written by a kernel: readers do not read it (SQLite gives its size without reading it), verify
 * reports it, and a kernel refuses to start on such a tail.
 */

/** Largest record any reader reads: larger is tampering, reported, never allocated. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;

/** What a record holds besides the intent and one frame's detail (ids, op, target, message, …). */
const RECORD_OVERHEAD_BYTES = 1024 * 1024;

/** auditIntentMaxBytes by default (config.ts): records keep intents up to this many bytes. */
export const DEFAULT_INTENT_MAX_BYTES = 65_536;

/** What a record keeping an intent holds besides it: ids, op, target (up to 2 KiB), caps, message. */
const KEPT_RECORD_SLACK = 8 * 1024;

/** The record bytes one batch of rows may hold (1,000 rows of 16 KiB, the bound before it was chosen from the config). */
export const BATCH_BYTES = 16 * 1024 * 1024;

/** Rows one batch reads at most. */
const BATCH_MAX_ROWS = 1000;

/** How the scans read records in batches: records up to `recordBytes` in batches of `rows`; larger ones alone. */
export interface BatchShape {
  recordBytes: number;
  rows: number;
}

/**
 * The batches for a home whose records keep intents up to `intentMaxBytes` (its
 * auditIntentMaxBytes): such a record comes in its batch, not in a second read of its own (with
 * a bound below the kept intents, every record between the two cost one); the rows of a batch
 * are as many as fit in {@link BATCH_BYTES}, so rows × recordBytes never passes it.
 */
export function batchShape(intentMaxBytes = DEFAULT_INTENT_MAX_BYTES): BatchShape {
  const recordBytes = Math.min(BATCH_BYTES, Math.max(0, intentMaxBytes) + KEPT_RECORD_SLACK);
  return { recordBytes, rows: Math.max(1, Math.min(BATCH_MAX_ROWS, Math.floor(BATCH_BYTES / recordBytes))) };
}

/**
 * The largest record a kernel with these settings can write: the kept intent (either kind of
 * record's limit, at most one frame), one frame's worth of detail, and the overhead.
 */
export function largestRecordBytes(c: {
  maxBodyBytes: number;
  auditIntentMaxBytes: number;
  auditRefusalIntentMaxBytes: number;
}): number {
  const intent = Math.min(Math.max(c.auditIntentMaxBytes, c.auditRefusalIntentMaxBytes), c.maxBodyBytes);
  return intent + c.maxBodyBytes + RECORD_OVERHEAD_BYTES;
}

/** The reason a record over the bound is refused, for verify and the readers. */
export function oversizeReason(bytes: number): string {
  return `the stored record is ${bytes} bytes, more than the ${MAX_RECORD_BYTES} any kernel writes: it was not read`;
}

/** How a reader gets a row's record bytes and their size, in SQL over the table `audit`. */
export interface RecordSource {
  /** The record's bytes. */
  bytes: string;
  /** Its size in bytes, read without reading the bytes (NULL for a NULL record). */
  size: string;
  /**
   * The bytes where the size is known to be small (a batch of rows): cheaper than `bytes`, and
   * any value it gives that is not a blob the readers take as no bytes.
   */
  batchBytes?: string;
}

/**
 * The record layout: the stored bytes (here, in a file with no imports, because the verify
 * workers load only verify-records.ts and what it imports).
 */
export const STORED_RECORD: RecordSource = {
  // A value of another type (tampering) reads as no bytes, never as a large text.
  bytes: "CASE WHEN typeof(record) = 'blob' THEN record ELSE x'' END",
  size: "octet_length(record)",
  batchBytes: "record",
};

/** The hash column only when it is a hash-sized blob (tampering: never a large value); else `otherwise`. */
export function boundedHashSql(value = "hash", otherwise = "NULL"): string {
  return `CASE WHEN typeof(hash) = 'blob' AND length(hash) <= 64 THEN ${value} ELSE ${otherwise} END`;
}

/** A row's record bytes in a batch: only when SQLite says (without reading them) they are at most `recordBytes`. */
export function batchRecordSql(src: RecordSource, recordBytes: number): string {
  return `CASE WHEN ${src.size} <= ${recordBytes} THEN ${src.batchBytes ?? src.bytes} END`;
}

/** One record read alone: its size, and its bytes unless over {@link MAX_RECORD_BYTES} (never read then). */
export function aloneRecordSql(src: RecordSource): string {
  return `SELECT ${src.size}, CASE WHEN ${src.size} <= ${MAX_RECORD_BYTES} THEN ${src.bytes} END FROM audit WHERE seq = ?`;
}
