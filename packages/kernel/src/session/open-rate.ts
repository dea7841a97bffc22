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
    // Keys are of registered personas (it attested): the table sweeps its idle buckets when full.
    const b = this.trees.take(this.bucketOf(persona, root), this.clock());
    if (b.tokens >= 1) {
      b.tokens--;
      return undefined;
    }
    const waitMs = Math.max(1, Math.ceil(((1 - b.tokens) / rate) * 1000));
    return `${treeName(root, persona)} opens sessions faster than sessionOpenPersonaRate ${rate}/s (bursts ${rate * BURST_SECONDS}); try again in ${waitMs} ms`;
  }

  /**
   * The bucket a persona's opens take from. A tree's root has its own, which its sub-personas
   * and agents cannot empty (they share the tree's): a compromised member must not lock the
   * tree's owner out. The operator's personas under the admin (`admin/x`, registered by the
   * admin) are trees of their own here, as their registrations are: one of them must not lock
   * out the others. So a tree opens at most twice the rate: its root, and the rest of it.
   */
  private bucketOf(persona: string, root: string): string {
    let tree = root;
    if (root === this.limits.adminPersona) {
      const next = persona.indexOf("/", root.length + 1);
      tree = next < 0 ? persona : persona.slice(0, next);
    }
    return persona === tree ? `${tree}\u0000root` : tree;
  }
}
