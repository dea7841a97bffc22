import { PRUNE_INTERVAL_MS } from "../limits.js";
import type { Logger } from "../log.js";

/** The pruners the housekeeping tick runs, by the name their failures are logged and counted under. */
export type PrunerName = "agents" | "ops" | "dedupe" | "tokens" | "bodies";

/**
 * What becomes of a failed pass, as its line says. A failed bodies flush has already taken its
 * batch off the queue (a second sync could pass with the WAL's pages lost: BlobStore.flushReleased),
 * so no tick retries those bodies: they stay unnamed until the next start's sweep.
 */
const THEN: Record<PrunerName, string> = {
  agents: "the next tick starts it again",
  ops: "the next tick starts it again",
  dedupe: "the next tick starts it again",
  tokens: "the next tick starts it again",
  bodies: "the bodies it was removing stay until the next start's sweep",
};

/** The warn line of a pruner's failure. */
export const prunerFailedMessage = (pruner: PrunerName): string => `the ${pruner} pruner failed; ${THEN[pruner]}`;

/**
 * A pruner that throws (the store busy, locked or closing) gives up its pass and the next tick
 * starts again (the bodies flush excepted: {@link THEN}); its failure is not swallowed: it is counted (`kpip_pruner_failures_total`, by
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
    this.log.warn({ pruner, err, ...(last?.unlogged ? { unlogged: last.unlogged } : {}) }, prunerFailedMessage(pruner));
    this.logged.set(pruner, { at: now, unlogged: 0 });
  }
}
