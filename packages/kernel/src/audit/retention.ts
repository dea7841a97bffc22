import type { Logger } from "../log.js";
import { SliceLoop } from "../slice-loop.js";
import type { DetailValue } from "./detail.js";
import type { AuditLog } from "./log.js";
import { PrunedSpan } from "./pruned-span.js";

/**
 * Audit retention (`auditRetainRecords`) in slices, yielding to requests between them, like the
 * dedupe pruner: the pass deleted up to 50,000 records in one statement once a minute on the
 * request thread, a stall every request in flight waited out. Each slice is one transaction
 * ending at a signed checkpoint ({@link AuditLog.pruneSlice}), so the log verifies after any of
 * them, and a kernel killed mid-pass simply leaves the rest to the next one.
 */
/** Acts younger than this that a pass prunes are the operator's to hear of: retention is meant for old records. */
export const RECENT_PRUNED_MS = 3_600_000;

export class AuditRetention {
  private readonly loop = new SliceLoop();
  /** Records removed so far (logs, tests). */
  removed = 0;
  /** Called when a slice throws, after its log line (the kernel counts it). */
  onError: ((e: unknown) => void) | undefined;
  /** Called after a pass that pruned records (the kernel puts it on the record: `audit.pruned`). */
  onPruned: ((records: number, span: { [k: string]: DetailValue } | undefined) => void) | undefined;

  constructor(
    private readonly audit: Pick<AuditLog, "pruneSlice">,
    private readonly retain: number,
    private readonly log: Pick<Logger, "info" | "warn" | "error">,
    private readonly slice = 1024,
    /** The clock the records' times come from. */
    private readonly now: () => number = Date.now,
  ) {}

  /** Starts a pass that prunes everything retention allows, a slice a turn, unless one is under way. */
  run(): void {
    if (this.retain <= 0) return;
    let pass = 0;
    const span = new PrunedSpan();
    this.loop.run(
      () => {
        let n = 0;
        try {
          n = this.audit.pruneSlice(this.retain, this.slice, span);
        } catch (e) {
          this.log.error({ err: e }, "could not prune the audit log; retrying on the next pass");
          this.onError?.(e);
        }
        pass += n;
        this.removed += n;
        return n > 0;
      },
      () => {
        if (!pass) return;
        const summary = span.detail();
        this.log.info(
          { records: pass, span: summary },
          "pruned old audit records behind a signed checkpoint (auditRetainRecords)",
        );
        // A flood that pushes a persona's own recent act out of the record is what this warns of:
        // the span on the record says whose; the operator may raise auditRetainRecords.
        const recent = span.recentActs(this.now() - RECENT_PRUNED_MS);
        if (recent.length)
          this.log.warn(
            { personas: recent, records: pass },
            "retention pruned acts with effects less than an hour old: a persona's flood may be pushing evidence out (audit.pruned's detail.span names whose; raise auditRetainRecords)",
          );
        this.onPruned?.(pass, summary);
      },
    );
  }

  stop(): void {
    this.loop.stop();
  }
}
