import { createHash } from "node:crypto";
import { decodeCanonical } from "@kpip/protocol";
import type { OpRecord } from "../store/types.js";
import type { DetailValue } from "./detail.js";

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** A captured output stream on the record: its SHA-256 and size, never its bytes. */
export function streamDigest(b: Uint8Array): { sha256: string; size: number } {
  return { sha256: sha256(b), size: b.byteLength };
}

/**
 * What an ended op left, for its `op.state` record: the result's SHA-256 and size (its canonical
 * CBOR, as `op.result` hands it out) and, for a command, its exit code, signal and each stream's
 * SHA-256 and size. The result itself is kept only until its TTL or the tree's trim; these name
 * what the op printed or returned long after, so a copy found elsewhere can be matched. Once per
 * op end (a result is at most 2 × maxOutputBytes), never per request.
 */
export function opResultDetail(op: Pick<OpRecord, "kind" | "result">): { [k: string]: DetailValue } | undefined {
  const bytes = op.result;
  if (!bytes) return undefined;
  const out: { [k: string]: DetailValue } = { sha256: sha256(bytes), size: bytes.byteLength };
  if (op.kind !== "command") return out;
  let r: unknown;
  try {
    r = decodeCanonical(bytes);
  } catch {
    return out; // The hash of the whole still names it.
  }
  if (r === null || typeof r !== "object" || Array.isArray(r) || r instanceof Uint8Array) return out;
  const m = r as Record<string, unknown>;
  if (typeof m.exitCode === "number" || m.exitCode === null) out.exitCode = m.exitCode as number | null;
  if (typeof m.signal === "string" || m.signal === null) out.signal = m.signal as string | null;
  if (typeof m.truncated === "boolean") out.truncated = m.truncated;
  for (const s of ["stdout", "stderr"] as const) {
    const v = m[s];
    if (v instanceof Uint8Array) out[s] = streamDigest(v);
  }
  return out;
}
