import { PRUNE_INTERVAL_MS } from "../limits.js";
import type { Logger } from "../log.js";

/** The pruners the housekeeping tick runs, by the name their failures are logged and counted under. */
export type PrunerName = "agents" | "ops" | "dedupe" | "tokens" | "bodies";

/**
 * A pruner that throws (the store busy, locked or closing) gives up its pass and the next tick
 * starts again; its failure is not swallowed: it is counted (`kpip_pruner_failures_total`, by
 * pruner) and logged at warn with the pruner's name and the error — at most once per pruner per
 * `everyMs`, with how many went unlogged since, so a store that stays locked does not write a
 * line every tick.
 */
export class PrunerFailures {
  private readonly logged = new Map<PrunerName, { at: number; unlogged: number }>();

  constructor(
    private readonly log: Pick<Logger, "warn">,
    private readonly counter?: { inc(labels: { pruner: PrunerName }): void },
    private readonly clock: () => number = Date.now,
    private readonly everyMs = PRUNE_INTERVAL_MS,
  ) {}

  failed(pruner: PrunerName, err: unknown): void {
    this.counter?.inc({ pruner });
    const now = this.clock();
    const last = this.logged.get(pruner);
    if (last && now - last.at < this.everyMs) {
      last.unlogged++;
      return;
    }
    this.log.warn(
      { pruner, err, ...(last?.unlogged ? { unlogged: last.unlogged } : {}) },
      `the ${pruner} pruner failed; the next tick starts it again`,
    );
    this.logged.set(pruner, { at: now, unlogged: 0 });
  }
}
