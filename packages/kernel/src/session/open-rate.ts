import { BURST_SECONDS, RateBuckets } from "../audit/rate-buckets.js";
import { treeName } from "../resources/lineage.js";

/** How fast persona trees may open sessions (kernel settings). */
export interface SessionOpenLimits {
  /** Sessions per second one persona tree may open; bursts up to 5× this. 0: no bound. */
  rate: number;
  /** Not bound by it: the operator can always connect, as the admin reserve ensures. */
  adminPersona: string;
}

/**
 * Every session that opens leaves a durable `session.open` record (its origin, tokens and up
 * to 4 KiB of ATTEST measurements): a persona with a key that loops connect → attest → close
 * would grow the log as fast as it can handshake. A token bucket per persona tree (keyed by its
 * root, as the refusal rate is) bounds the opens, so the records; an attestation past it is
 * refused with a retryable error, whose `session.handshake` record goes through the failed-
 * handshake record rate. Refusing rather than opening unrecorded keeps every open session on
 * the record, one by one. A token is taken only by a session that opens.
 */
export class SessionOpenRate {
  private readonly trees: RateBuckets;

  constructor(
    private readonly limits: SessionOpenLimits,
    private readonly clock: () => number = Date.now,
  ) {
    this.trees = new RateBuckets(() => this.limits.rate);
  }

  /** `persona` (of the tree under `root`) attested: undefined if it may open a session now (counted), else the refusal's message. */
  take(persona: string, root: string): string | undefined {
    const rate = this.limits.rate;
    if (rate === 0 || persona === this.limits.adminPersona) return undefined;
    // Roots are of registered personas (it attested): the table sweeps its idle buckets when full.
    const b = this.trees.take(root, this.clock());
    if (b.tokens >= 1) {
      b.tokens--;
      return undefined;
    }
    const waitMs = Math.max(1, Math.ceil(((1 - b.tokens) / rate) * 1000));
    return `${treeName(root, persona)} opens sessions faster than sessionOpenPersonaRate ${rate}/s (bursts ${rate * BURST_SECONDS}); try again in ${waitMs} ms`;
  }
}
