import { type CborValue, encodeCanonical, isOpPattern, isTargetPattern, type Limits, type Right } from "@kpip/protocol";
import { OpError } from "../primitives/types.js";

/** What a mint request asks for. */
export interface MintSpec {
  sub: string;
  rights: Right[];
  limits?: Limits;
  ttlMs: number;
  maxLifetimeMs?: number;
  workspaces?: string[];
  domains?: string[];
}

/**
 * Sizes before work (SEMANTIC): the escalation check's cost grows with the rights asked for,
 * so a spec must first fit the token format (64 rights of 64 op and 64 target patterns,
 * valid patterns) and, encoded, the largest token the kernel accepts.
 */
export function checkMintSpecSize(spec: MintSpec, maxTokenBytes: number): void {
  const patterns = (v: unknown, ok: (p: string) => boolean) =>
    Array.isArray(v) && v.length <= 64 && v.every((p) => typeof p === "string" && ok(p));
  if (!Array.isArray(spec.rights) || spec.rights.length > 64)
    throw new OpError("SEMANTIC", "rights must be an array of at most 64 grants");
  for (const r of spec.rights) {
    if (!r || typeof r !== "object" || !patterns(r.ops, isOpPattern) || !patterns(r.targets, isTargetPattern))
      throw new OpError("SEMANTIC", "each right needs ops (at most 64 op patterns) and targets (at most 64 target patterns)");
  }
  const bytes = encodeCanonical(spec.rights as unknown as CborValue).length;
  if (bytes > maxTokenBytes)
    throw new OpError(
      "SEMANTIC",
      `the rights take ${bytes} bytes; a token may be at most ${maxTokenBytes} bytes (maxTokenBytes)`,
    );
}
