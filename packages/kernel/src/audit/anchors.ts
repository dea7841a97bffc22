import { closeSync, constants, fdatasync, fstatSync, ftruncateSync, openSync, readSync, write, writeSync } from "node:fs";
import { publicKeyFromRaw, verifyBytes } from "@kpip/protocol";
import { unsafeDirectoryAbove } from "../secure-files.js";
import type { AuditCheckpoint, AuditStore } from "../store/types.js";
import { checkpointMessage } from "./record.js";

/**
 * Audit anchors: every signed checkpoint, also appended as one JSON line to a file the
 * operator keeps away from the kernel's home (another disk, an append-only or remote mount).
 * The chain alone cannot show that its tail was cut off together with its last checkpoints;
 * an anchor names a record that must still be there, with the same hash.
 */
export type AuditAnchor = AuditCheckpoint;

/** A malformed anchor file; `line` is 1-based. */
export class AnchorFileError extends Error {
  override name = "AnchorFileError";
  constructor(
    message: string,
    readonly line: number,
  ) {
    super(`anchor file line ${line}: ${message}`);
  }
}

/** The JSON line for one checkpoint (hashes, keys and signatures in hex). */
export function anchorLine(c: AuditCheckpoint): string {
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  return `${JSON.stringify({
    kernel: c.kernel,
    seq: c.seq,
    hash: hex(c.hash),
    time: c.time,
    publicKey: hex(c.publicKey),
    signature: hex(c.signature),
  })}\n`;
}

/**
 * Parses an anchor file; blank lines are skipped, anything else malformed is an
 * AnchorFileError. A last line without its newline that does not parse is a write the machine
 * did not finish (a crash mid-append): it is left out and `tornTail` says so.
 */
export function parseAnchors(text: string): { anchors: AuditAnchor[]; tornTail: boolean } {
  const out: AuditAnchor[] = [];
  const lines = text.split("\n");
  let tornTail = false;
  lines.forEach((l, i) => {
    const line = i + 1;
    if (l.trim() === "" || tornTail) return;
    try {
      out.push(parseLine(l, line));
    } catch (e) {
      if (i === lines.length - 1 && e instanceof AnchorFileError) tornTail = true;
      else throw e;
    }
  });
  return { anchors: out, tornTail };
}

function hexOf(v: unknown, bytes: number, what: string, line: number): Buffer {
  if (typeof v !== "string" || v.length !== bytes * 2 || !/^[0-9a-f]+$/.test(v)) {
    throw new AnchorFileError(`${what} must be ${bytes} bytes of lowercase hex`, line);
  }
  return Buffer.from(v, "hex");
}

function parseLine(l: string, line: number): AuditAnchor {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(l) as Record<string, unknown>;
  } catch {
    throw new AnchorFileError("not a JSON object", line);
  }
  if (o === null || typeof o !== "object" || Array.isArray(o)) throw new AnchorFileError("not a JSON object", line);
  if (typeof o.kernel !== "string" || o.kernel === "") throw new AnchorFileError("kernel must be a kernel id", line);
  for (const k of ["seq", "time"] as const) {
    const v = o[k];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < (k === "seq" ? 1 : 0)) {
      throw new AnchorFileError(`${k} must be ${k === "seq" ? "a positive" : "an unsigned"} integer`, line);
    }
  }
  return {
    kernel: o.kernel,
    seq: o.seq as number,
    time: o.time as number,
    hash: hexOf(o.hash, 32, "hash", line),
    publicKey: hexOf(o.publicKey, 32, "publicKey", line),
    signature: hexOf(o.signature, 64, "signature", line),
  };
}

/** The anchor file's path holds a link, something other than a regular file, or another user's file: the kernel does not start. */
export class UnsafeAnchorFileError extends Error {
  override name = "UnsafeAnchorFileError";
}

/**
 * The kernel's side: appends each checkpoint durably, off the event loop (the file may sit on
 * a slow or remote mount; a stalled append must not stall requests). Opened at start, so a bad
 * path stops the kernel there; a torn last line from a crash is closed off with a newline.
 */
export class AnchorFile {
  private fd: number;
  private queue: Promise<void> = Promise.resolve();
  /** Called when an append fails (the kernel logs it; the checkpoint itself is in the database). */
  onError: ((e: Error, seq: number) => void) | undefined;

  constructor(readonly path: string) {
    // Never through a link, and only a regular file of the kernel's user: the file lies outside
    // the home, often in a directory others can write (a shared disk, /tmp). A link planted at
    // the path made the kernel cut (the torn-tail repair) and append to whatever file it named —
    // any file, for a kernel run as root; a file of another user's holds anchors they could
    // edit or cut; a FIFO would stall every append. O_NONBLOCK: a FIFO's open does not wait.
    // Nor in a directory another user could rename it out of (and theirs into) while the kernel
    // runs, or between runs: as the home's directories (security.md cases 518, 541).
    const unsafe = unsafeDirectoryAbove(path, `the anchor file ${path}`, "file");
    if (unsafe) throw new UnsafeAnchorFileError(unsafe);
    try {
      this.fd = openSync(
        path,
        constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK,
        0o600,
      );
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ELOOP")
        throw new UnsafeAnchorFileError(`${path} is a symbolic link; name the file itself`);
      throw e;
    }
    try {
      const st = fstatSync(this.fd);
      if (!st.isFile()) throw new UnsafeAnchorFileError(`${path} is not a regular file`);
      const me = process.getuid?.();
      if (me !== undefined && st.uid !== me)
        throw new UnsafeAnchorFileError(`${path} belongs to uid ${st.uid}, not to the kernel's user (uid ${me})`);
      this.repairTornTail();
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  /** A crash mid-append leaves a last line without its newline: cut it off (it was never an anchor). */
  private repairTornTail(): void {
    const size = fstatSync(this.fd).size;
    if (size === 0) return;
    const tail = Buffer.alloc(Math.min(size, 4096));
    readSync(this.fd, tail, 0, tail.length, size - tail.length);
    if (tail[tail.length - 1] === 0x0a) return;
    const nl = tail.lastIndexOf(0x0a);
    try {
      ftruncateSync(this.fd, nl < 0 ? (size > tail.length ? size : 0) : size - tail.length + nl + 1);
    } catch {
      // An append-only file cannot be cut: end the torn line so the next anchor starts clean.
      writeSync(this.fd, "\n");
    }
  }

  append(c: AuditCheckpoint): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    const line = anchorLine(c);
    this.queue = this.queue.then(
      () =>
        new Promise<void>((resolve) => {
          write(fd, line, (err) => {
            if (err) {
              this.onError?.(err, c.seq);
              resolve();
            } else
              fdatasync(fd, (e) => {
                if (e) this.onError?.(e, c.seq);
                resolve();
              });
          });
        }),
    );
  }

  /** Waits for queued appends, then closes the file. */
  async close(): Promise<void> {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    await this.queue;
    closeSync(fd);
  }
}

export interface AnchorResult {
  ok: boolean;
  /** Anchors checked. */
  anchors: number;
  /** Anchors naming records retention pruned (below the log's first record): not checked. */
  pruned?: number;
  /** The first anchor the log fails, and why. */
  firstBad?: { seq: number; reason: string };
}

/**
 * Checks a log against anchors: each anchor must be signed by the kernel key (the trusted key
 * when given, else the key the log's own checkpoints carry) and name a record that is in the
 * log with the same hash. Run after the chain itself verified, so the records' hashes are the
 * chain's.
 */
export function verifyAnchors(
  store: Pick<AuditStore, "auditHashAt" | "checkpoints" | "firstAuditSeq">,
  anchors: AuditAnchor[],
  trustedKey?: Uint8Array,
): AnchorResult {
  const key = trustedKey ?? store.checkpoints().at(-1)?.publicKey;
  const fail = (seq: number, reason: string): AnchorResult => ({ ok: false, anchors: anchors.length, firstBad: { seq, reason } });
  const first = store.firstAuditSeq() ?? 1;
  let pruned = 0;
  for (const a of [...anchors].sort((x, y) => x.seq - y.seq)) {
    if (key === undefined) return fail(a.seq, "the log has no checkpoint to take the kernel key from (pass a trusted key)");
    if (!Buffer.from(a.publicKey).equals(Buffer.from(key)))
      return fail(a.seq, "anchor is signed by a key other than the kernel's");
    if (!verifyBytes(publicKeyFromRaw(a.publicKey), checkpointMessage(a), a.signature)) {
      return fail(a.seq, "anchor signature is invalid");
    }
    const h = store.auditHashAt(a.seq);
    if (h === undefined && a.seq < first) {
      pruned++;
      continue;
    }
    if (h === undefined) return fail(a.seq, `record ${a.seq} named by an anchor is missing (log truncated)`);
    if (!Buffer.from(h).equals(Buffer.from(a.hash)))
      return fail(a.seq, `record ${a.seq} differs from its anchor (log rewritten)`);
  }
  return { ok: true, anchors: anchors.length, ...(pruned ? { pruned } : {}) };
}
