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

/**
 * Records up to this size are read in a batch of rows; a larger one alone, when its turn comes,
 * so a batch holds at most rows × this many record bytes.
 */
export const BATCH_RECORD_BYTES = 16 * 1024;

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
