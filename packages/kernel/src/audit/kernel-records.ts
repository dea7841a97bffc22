import { createHash } from "node:crypto";
import type { Grant, Token } from "@kpip/protocol";
import type { OpAuditState } from "../compute/engine.js";
import type { StorageSpace } from "../kernel/storage-space.js";
import type { OpRecord } from "../store/types.js";
import { type DetailValue, detailJson, tokenDetail } from "./detail.js";
import type { AuditLog } from "./log.js";
import { opResultDetail } from "./op-result-detail.js";

/** One act of the kernel itself: what it did, to what, on whose behalf, with its detail. */
export interface KernelAct {
  op: string;
  target: string;
  /** The persona the act concerns ("-" for the kernel as a whole). */
  persona?: string;
  /** The session it happened on, when one did. */
  session?: string;
  message?: string;
  detail: { [k: string]: DetailValue | undefined };
}

/**
 * The kernel's own acts on the audit record (phase "kernel"): start and stop, op state changes,
 * agent lifecycle, revocations it makes, derived tokens first used. Each returns the record's
 * sequence number. Appends are fire-and-forget: the act already happened. A record refused room
 * (a full disk) is kept by `space` and written once there is, its message saying when the act
 * happened; a closed log (the kernel stopping) refuses them quietly.
 */
export class KernelRecords {
  constructor(
    private readonly audit: AuditLog,
    private readonly space?: Pick<StorageSpace, "lateAct" | "queueBehindLate">,
  ) {}

  /**
   * `written`: told the record's sequence number once it is committed (a failed batch's numbers
   * are given again to later records, so the number this returns is only where it goes if it commits).
   * `lost`: told if the record is never written (dropped: no room to keep it, or another failure).
   */
  record(a: KernelAct, written?: (seq: number) => void, lost?: () => void): number {
    const row = this.audit.rowOf({
      session: a.session ?? "kernel",
      persona: a.persona ?? "-",
      phase: "kernel",
      op: a.op,
      target: a.target,
      status: "SUCCESS",
      message: a.message ?? null,
      detail: detailJson(a.detail),
    });
    row.time = Date.now();
    // Older acts still wait for room: this one goes behind them, so the record keeps their order.
    if (this.space?.queueBehindLate(row, written, lost)) return this.audit.headSeq;
    void this.audit.appendRow(row).then(
      () => written?.(row.seq),
      (e: unknown) => {
        if (!this.space?.lateAct(row, e, written, lost) && lost) queueMicrotask(lost);
      },
    );
    return this.audit.headSeq;
  }

  /** An op's state change: `op.state` on op://<id>. */
  opState(
    op: OpRecord,
    state: OpAuditState,
    from: OpAuditState | null,
    written?: () => void,
    recovered = false,
    /** An interrupted command whose processes ran on after the kernel died: this start killed them. */
    outlived = false,
  ): void {
    const ended = op.message && (state === "failed" || state === "interrupted" || state === "cancelled") ? op.message : undefined;
    const why = outlived
      ? `${ended ?? "interrupted"}; its processes outlived the previous kernel and were killed at this start`
      : ended;
    this.record(
      {
        op: "op.state",
        target: `op://${op.id}`,
        persona: op.persona,
        session: op.session,
        // Why it ended, when not by itself: a cancelled op's message says who (the persona, or a revocation of its authority).
        ...(recovered
          ? {
              message: `recorded at the next start: the op ended and the kernel was killed before its record${why ? `; ${why}` : ""}`,
            }
          : why
            ? { message: why }
            : {}),
        // An agent's op names its spawn: the agent persona's id is reused by later agents of its name.
        detail: {
          op: op.id,
          state,
          from,
          ...(op.errorClass ? { errorClass: op.errorClass } : {}),
          ...(op.spawn ? { spawn: op.spawn } : {}),
          // What it printed or returned, by hash: its result outlives neither its TTL nor the trim.
          ...((state === "succeeded" || state === "failed" || state === "cancelled") && op.result
            ? { result: opResultDetail(op) }
            : {}),
          ...(recovered ? { recovered: true } : {}),
          ...(outlived ? { outlived: true } : {}),
        },
      },
      written,
    );
  }

  /**
   * An upload ended without its commit (`storage.upload.ended`): by the kernel while it ran (idle,
   * revoked, …: `reason`), or by this start for one the previous run left (`message` says how).
   */
  uploadEnded(
    u: { id: string; target?: string; persona?: string; received: number; size?: number; began?: number },
    reason: string,
    message?: string,
  ): void {
    this.record({
      op: "storage.upload.ended",
      target: u.target ?? "-",
      persona: u.persona ?? "-",
      ...(message ? { message } : {}),
      detail: {
        upload: u.id,
        reason,
        received: u.received,
        ...(u.size !== undefined ? { size: u.size } : {}),
        ...(u.began !== undefined ? { began: u.began } : {}),
      },
    });
  }

  /** A token attenuated offline, used for the first time in this run: `token.derived`. */
  derived(t: Token, g: Grant, persona: string, session: string | undefined): void {
    this.record({
      op: "token.derived",
      target: `token://${g.derived ?? g.id}`,
      persona,
      ...(session ? { session } : {}),
      detail: { token: tokenDetail(t, g) },
    });
  }
}

/** A digest of the settings a kernel runs with (kernel.start), so two runs can be told apart by configuration. */
export function configDigest(config: object): string {
  return createHash("sha256")
    .update(detailJson(config as { [k: string]: DetailValue }))
    .digest("hex");
}
