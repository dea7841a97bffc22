import { closeSync, constants, existsSync, fstatSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { sha256 } from "@kpip/protocol";
import { PREV_HASH_BYTES, recordSeq } from "../audit/record-seq.js";
import type { AuditCheckpoint, DedupeRow } from "./types.js";

/**
 * The audit batch format, and the audit journal of homes before segment files. A batch is one
 * commit of the audit log: its records as the bytes their hashes cover and what commits with
 * them, framed by a head and a tail that show a torn write. The kernel appends batches to its
 * segment files (audit-segments.ts: the chain's only copy, SQLite indexing where each span is);
 * a kpip before segments appended them to `audit.journal` in front of SQLite's `audit` table,
 * which the first start of this kernel indexes into that table and then moves to segments
 * (store/sqlite/audit.ts). Docs: docs/architecture.md, "The audit chain in segment files".
 */

/** The journal's name in a kernel home (beside the database). */
export const AUDIT_JOURNAL_FILE = "audit.journal";

/** A record as the journal keeps it: what SQLite's audit table stores. */
export interface JournalRecord {
  seq: number;
  hash: Uint8Array;
  record: Uint8Array;
}

/** One commit of the audit log: its records and what commits with them (audit-append.ts). */
export interface JournalBatch {
  rows: readonly JournalRecord[];
  dedupe: readonly DedupeRow[];
  /** The offline journal's entries these records replace, through this id (0: none). */
  journalUpTo: number;
  checkpoints: readonly AuditCheckpoint[];
}

/** The journal holds bytes that are not batches this kernel wrote, or records that do not continue the chain. */
export class AuditJournalError extends Error {
  override name = "AuditJournalError";
}

export const MAGIC = 0x4b504a31; // "KPJ1"
/**
 * magic, body length, its complement (a changed length is damage, never mistaken for a torn
 * write); after the body, the body length again xor the magic (a torn tail shows).
 */
export const HEAD = 12;
export const TAIL = 4;

/** Bytes of a batch's body (what {@link encodeBatch} writes between the head and the tail). */
function bodyBytes(b: JournalBatch): number {
  let n = 4 + 4 + 4 + 8;
  for (const r of b.rows) n += 8 + 4 + r.hash.length + 4 + r.record.length;
  for (const d of b.dedupe) n += 4 + Buffer.byteLength(d.key) + 4 + d.hash.length + 4 + d.response.length + 8;
  for (const c of b.checkpoints)
    n += 8 + 4 + c.hash.length + 8 + 4 + Buffer.byteLength(c.kernel) + 4 + c.publicKey.length + 4 + c.signature.length;
  return n;
}

/** A batch's bytes: head, body, tail. */
export function encodeBatch(b: JournalBatch, into?: Buffer): { buf: Buffer; length: number } {
  const body = bodyBytes(b);
  const length = HEAD + body + TAIL;
  const buf = into && into.length >= length ? into : Buffer.allocUnsafe(Math.max(length, 4096));
  let p = 0;
  const u32 = (v: number) => {
    p = buf.writeUInt32LE(v, p);
  };
  const f64 = (v: number) => {
    p = buf.writeDoubleLE(v, p);
  };
  const bytes = (v: Uint8Array) => {
    u32(v.length);
    buf.set(v, p);
    p += v.length;
  };
  const text = (v: string) => {
    const n = buf.write(v, p + 4, "utf8");
    u32(n);
    p += n;
  };
  u32(MAGIC);
  u32(body);
  u32(~body >>> 0);
  u32(b.rows.length);
  u32(b.dedupe.length);
  u32(b.checkpoints.length);
  f64(b.journalUpTo);
  for (const r of b.rows) {
    f64(r.seq);
    bytes(r.hash);
    bytes(r.record);
  }
  for (const d of b.dedupe) {
    text(d.key);
    bytes(d.hash);
    bytes(d.response);
    f64(d.expires);
  }
  for (const c of b.checkpoints) {
    f64(c.seq);
    bytes(c.hash);
    f64(c.time);
    text(c.kernel);
    bytes(c.publicKey);
    bytes(c.signature);
  }
  u32((body ^ MAGIC) >>> 0);
  return { buf, length };
}

/**
 * The batches of a journal's bytes, oldest first. A last batch cut short (a write a power cut
 * tore; never acknowledged) ends the list; anything else that is not a batch throws
 * {@link AuditJournalError}, as does a record whose bytes do not hash to its hash or carry
 * another sequence number.
 */
export function decodeBatches(data: Uint8Array): JournalBatch[] {
  const out: JournalBatch[] = [];
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  while (at < buf.length) {
    if (buf.length - at < HEAD) break;
    const magic = buf.readUInt32LE(at);
    const body = buf.readUInt32LE(at + 4);
    if (magic !== MAGIC) throw new AuditJournalError(`not an audit journal batch at byte ${at}`);
    if (buf.readUInt32LE(at + 8) !== ~body >>> 0)
      throw new AuditJournalError(`the batch at byte ${at} is damaged (its length does not match its check)`);
    // Only the last append can be cut short (a head whose length runs past the end of the file).
    const end = at + HEAD + body + TAIL;
    if (end > buf.length) break;
    if (buf.readUInt32LE(end - TAIL) !== (body ^ MAGIC) >>> 0) {
      if (end === buf.length) break;
      throw new AuditJournalError(`the batch at byte ${at} is damaged (its tail does not match its head)`);
    }
    out.push(readBody(buf.subarray(at + HEAD, end - TAIL), at));
    at = end;
  }
  return out;
}

function readBody(b: Buffer, at: number): JournalBatch {
  let p = 0;
  const need = (n: number) => {
    if (p + n > b.length) throw new AuditJournalError(`the batch at byte ${at} is shorter than its fields`);
  };
  const u32 = () => {
    need(4);
    const v = b.readUInt32LE(p);
    p += 4;
    return v;
  };
  const f64 = () => {
    need(8);
    const v = b.readDoubleLE(p);
    p += 8;
    return v;
  };
  const bytes = () => {
    const n = u32();
    need(n);
    // A copy: the batch outlives the file's buffer only as small pieces.
    const v = Uint8Array.prototype.slice.call(b, p, p + n);
    p += n;
    return v;
  };
  const text = () => Buffer.from(bytes()).toString("utf8");
  const nRows = u32();
  const nDedupe = u32();
  const nCps = u32();
  const journalUpTo = f64();
  const rows: JournalRecord[] = [];
  for (let i = 0; i < nRows; i++) {
    const seq = f64();
    const hash = bytes();
    const record = bytes();
    if (!Number.isSafeInteger(seq) || seq < 1 || recordSeq(record) !== seq || record.length <= PREV_HASH_BYTES)
      throw new AuditJournalError(`record ${seq} of the batch at byte ${at} is not a record of that sequence number`);
    if (Buffer.compare(sha256(record), hash) !== 0)
      throw new AuditJournalError(`record ${seq} of the batch at byte ${at} does not hash to its hash`);
    rows.push({ seq, hash, record });
  }
  const dedupe: DedupeRow[] = [];
  for (let i = 0; i < nDedupe; i++) dedupe.push({ key: text(), hash: bytes(), response: bytes(), expires: f64() });
  const checkpoints: AuditCheckpoint[] = [];
  for (let i = 0; i < nCps; i++)
    checkpoints.push({ seq: f64(), hash: bytes(), time: f64(), kernel: text(), publicKey: bytes(), signature: bytes() });
  if (p !== b.length) throw new AuditJournalError(`the batch at byte ${at} has bytes past its fields`);
  return { rows, dedupe, journalUpTo, checkpoints };
}

/** Where the index stands: the newest record SQLite holds. */
export interface IndexHead {
  seq: number;
  hash: Uint8Array;
}

/**
 * The batches of `data` that SQLite (whose newest record is `head`) does not hold yet, checked
 * to continue its chain: each record's previous hash is the hash before it.
 */
export function unindexedBatches(data: Uint8Array, head: IndexHead | undefined): JournalBatch[] {
  let seq = head?.seq ?? 0;
  let hash = head?.hash;
  const out: JournalBatch[] = [];
  for (const b of decodeBatches(data)) {
    const last = b.rows.at(-1);
    if (!last || last.seq <= seq) continue;
    const rows = b.rows.filter((r) => r.seq > seq);
    for (const r of rows) {
      if (r.seq !== seq + 1) throw new AuditJournalError(`the journal skips from record ${seq} to ${r.seq}`);
      if (hash && Buffer.compare(r.record.subarray(0, PREV_HASH_BYTES), hash) !== 0)
        throw new AuditJournalError(`record ${r.seq} in the journal does not continue the chain of the database`);
      seq = r.seq;
      hash = r.hash;
    }
    out.push(rows.length === b.rows.length ? b : { ...b, rows });
  }
  return out;
}

/**
 * Opens `path` never through a link, and only as a regular file: a FIFO or device would block or
 * never end (O_NONBLOCK keeps the open of a FIFO from waiting for its other end; on a regular
 * file it changes nothing).
 */
export function openRegular(path: string, flags: number): number {
  const fd = openSync(path, flags | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw new AuditJournalError(`${path} is not a regular file`);
  }
  return fd;
}

/** The open journal file: appends batches, empties itself once they are all indexed. */
export class AuditJournal {
  private readonly fd: number;
  /** Bytes in the file: a failed write is cut back to here. */
  private size: number;
  /** Set when a failed write's bytes could not be cut back: every later append is refused. */
  private broken = false;
  /** Reused for batches up to 1 MiB (a batch at one in flight is a few hundred bytes). */
  private scratch: Buffer | undefined;

  /**
   * Opens (creating, 0600) the journal at `path`. `emptyAbove`: bytes past which
   * {@link indexed} empties the file.
   */
  constructor(
    readonly path: string,
    private readonly emptyAbove = 64 * 1024 * 1024,
  ) {
    this.fd = openRegular(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT);
    this.size = fstatSync(this.fd).size;
  }

  /** The journal's bytes now (read at start, before anything is appended); none when there is no file. */
  static read(path: string): Uint8Array {
    if (!existsSync(path)) return new Uint8Array(0);
    const fd = openRegular(path, constants.O_RDONLY);
    try {
      return readFileSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Appends one batch in one write and answers its bytes; throws (and leaves the file as it was) when it cannot. */
  append(b: JournalBatch): number {
    const { buf, length } = encodeBatch(b, this.scratch);
    if (buf.length <= 1024 * 1024) this.scratch = buf;
    if (this.broken) throw new AuditJournalError(`${this.path}: a torn write could not be cut back; the journal takes no more`);
    let done = 0;
    try {
      while (done < length) done += writeSync(this.fd, buf, done, length - done);
    } catch (e) {
      if (done > 0) {
        try {
          ftruncateSync(this.fd, this.size);
        } catch {
          // An append after the torn bytes would make the journal unreadable past them.
          this.broken = true;
        }
      }
      throw e;
    }
    this.size += length;
    return length;
  }

  /** Whether the file has grown past its bound: emptied (by the store) once everything in it is indexed. */
  get full(): boolean {
    return this.size >= this.emptyAbove;
  }

  /** The file's bytes now. */
  get bytes(): number {
    return this.size;
  }

  /** Empties the file (everything in it is indexed). */
  empty(): void {
    ftruncateSync(this.fd, 0);
    this.size = 0;
  }

  close(): void {
    closeSync(this.fd);
  }
}
