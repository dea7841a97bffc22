import { detailJson } from "./detail.js";
import { type SuppressedHandshakes, suppressedHandshakesMessage } from "./handshake-limit.js";
import type { AuditEntry } from "./log.js";
import { type Suppressed, suppressedMessage } from "./refusals.js";

/**
 * The aggregate `audit.suppressed` records: what the rate limiters counted instead of writing
 * one by one, written at the kernel's tick. Built here, with the rest of the audit records;
 * the pipeline and the housekeeping tick only append them.
 */

/** One session's refusals over the refusal rate since the last tick (phase `refused`). */
export function suppressedRefusalsRecord(x: Suppressed): AuditEntry {
  return {
    session: x.session,
    persona: x.persona,
    phase: "refused",
    op: "audit.suppressed",
    status: "FAILURE",
    message: suppressedMessage(x),
    // What was refused: the ops (counted) and the first distinct targets (docs/audit.md).
    detail: detailJson({
      of: "refused",
      count: x.count,
      classes: x.classes,
      ops: x.ops,
      ...(x.otherOps ? { otherOps: x.otherOps } : {}),
      targets: x.targets,
      ...(x.otherTargets ? { otherTargets: x.otherTargets } : {}),
      since: new Date(x.since).toISOString(),
    }),
  };
}

/** One transport's failed handshakes over the handshake record rate since the last tick (phase `session`). */
export function suppressedHandshakesRecord(x: SuppressedHandshakes): AuditEntry {
  return {
    session: "-",
    persona: "-",
    phase: "session",
    op: "audit.suppressed",
    status: "FAILURE",
    message: suppressedHandshakesMessage(x),
    detail: detailJson({
      of: "session.handshake",
      transport: x.transport,
      count: x.count,
      codes: x.codes,
      peers: x.peers,
      otherPeers: x.otherPeers,
      since: new Date(x.since).toISOString(),
    }),
  };
}
