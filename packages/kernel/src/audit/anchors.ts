import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import { publicKeyFromRaw, verifyBytes } from "@kpip/protocol";
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

/** Parses an anchor file; blank lines are skipped, anything else malformed is an AnchorFileError. */
export function parseAnchors(text: string): AuditAnchor[] {
  const out: AuditAnchor[] = [];
  const lines = text.split("\n");
  const hexOf = (v: unknown, bytes: number, what: string, line: number): Buffer => {
    if (typeof v !== "string" || v.length !== bytes * 2 || !/^[0-9a-f]+$/.test(v)) {
      throw new AnchorFileError(`${what} must be ${bytes} bytes of lowercase hex`, line);
    }
    return Buffer.from(v, "hex");
  };
  lines.forEach((l, i) => {
    const line = i + 1;
    if (l.trim() === "") return;
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
    out.push({
      kernel: o.kernel,
      seq: o.seq as number,
      time: o.time as number,
      hash: hexOf(o.hash, 32, "hash", line),
      publicKey: hexOf(o.publicKey, 32, "publicKey", line),
      signature: hexOf(o.signature, 64, "signature", line),
    });
  });
  return out;
}

/** The kernel's side: appends each checkpoint durably (opened at start, so a bad path stops the kernel there). */
export class AnchorFile {
  private fd: number;

  constructor(readonly path: string) {
    this.fd = openSync(path, "a", 0o600);
  }

  append(c: AuditCheckpoint): void {
    if (this.fd < 0) return;
    writeSync(this.fd, anchorLine(c));
    fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
  }
}

export interface AnchorResult {
  ok: boolean;
  /** Anchors checked. */
  anchors: number;
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
  store: Pick<AuditStore, "auditHashAt" | "checkpoints">,
  anchors: AuditAnchor[],
  trustedKey?: Uint8Array,
): AnchorResult {
  const key = trustedKey ?? store.checkpoints().at(-1)?.publicKey;
  const fail = (seq: number, reason: string): AnchorResult => ({ ok: false, anchors: anchors.length, firstBad: { seq, reason } });
  for (const a of [...anchors].sort((x, y) => x.seq - y.seq)) {
    if (key === undefined) return fail(a.seq, "the log has no checkpoint to take the kernel key from (pass a trusted key)");
    if (!Buffer.from(a.publicKey).equals(Buffer.from(key)))
      return fail(a.seq, "anchor is signed by a key other than the kernel's");
    if (!verifyBytes(publicKeyFromRaw(a.publicKey), checkpointMessage(a), a.signature)) {
      return fail(a.seq, "anchor signature is invalid");
    }
    const h = store.auditHashAt(a.seq);
    if (h === undefined) return fail(a.seq, `record ${a.seq} named by an anchor is missing (log truncated)`);
    if (!Buffer.from(h).equals(Buffer.from(a.hash)))
      return fail(a.seq, `record ${a.seq} differs from its anchor (log rewritten)`);
  }
  return { ok: true, anchors: anchors.length };
}
