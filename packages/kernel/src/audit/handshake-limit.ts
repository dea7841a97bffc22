import { RateBuckets } from "./rate-buckets.js";

/** How fast failed handshakes are written to the audit log (kernel settings). */
export interface HandshakeRecordLimits {
  /** `session.handshake` records per second per transport; bursts up to 5× this. */
  transportRate: number;
  /** Records per second per peer key (transports that know one: gRPC; an IPv6 address by its /64); bursts up to 5× this. */
  peerRate: number;
}

/** Failed handshakes of one transport not written one by one, for one aggregate record. */
export interface SuppressedHandshakes {
  transport: string;
  count: number;
  /** Count by error code (a handful of codes exist: bounded). */
  codes: Record<string, number>;
  /** Count by peer key (session/peer-key.ts), the first {@link MAX_NAMED} only (gRPC; none on the Unix socket). */
  peers: Record<string, number>;
  /** Distinct peer addresses not named in `peers`, and their count. */
  otherPeers: number;
  since: number;
}

/** Peer addresses an aggregate names one by one; the rest are counted together. */
const MAX_NAMED = 16;

/**
 * A failed handshake costs an unauthenticated peer a connection and a few bytes, the kernel a
 * durable record: without a rate, garbage on the socket grows the chain as fast as the peer can
 * connect. Within the rate (per transport, and per peer address where the transport knows one)
 * every failure gets its record; beyond it the failure is counted, and the counts are written as
 * one aggregate record per transport at the next tick (`audit.suppressed`, phase `session`) —
 * never silence. Aggregates per transport, not per peer: a peer with many addresses still costs
 * one record per tick.
 */
export class HandshakeRecordLimiter {
  private readonly transports: RateBuckets;
  private readonly peers: RateBuckets;
  private readonly pending = new Map<string, SuppressedHandshakes & { named: number }>();
  /** Told of the first failure counted since the last {@link take}: the kernel records the counts soon after (case 714). */
  onCounted: (() => void) | undefined;

  constructor(
    private readonly limits: HandshakeRecordLimits,
    private readonly clock: () => number = Date.now,
  ) {
    this.transports = new RateBuckets(() => this.limits.transportRate);
    this.peers = new RateBuckets(() => this.limits.peerRate);
  }

  /** True: write this failure's record. False: it was counted for the transport's aggregate record. */
  admit(transport: string, peer: string, code: string): boolean {
    const now = this.clock();
    const t = this.transports.take(transport, now);
    // Past the table's cap a new peer key has no bucket (the transport's rate still bounds it): many
    // addresses cannot make this table, or its sweep, large. An IPv6 /64 is one key: rotating
    // addresses in it does not fill the table.
    const p = peer === "" ? undefined : this.peers.takeIfRoom(`${transport} ${peer}`, now);
    if (t.tokens >= 1 && (!p || p.tokens >= 1)) {
      t.tokens--;
      if (p) p.tokens--;
      return true;
    }
    let agg = this.pending.get(transport);
    if (!agg) {
      agg = { transport, count: 0, codes: {}, peers: {}, otherPeers: 0, since: now, named: 0 };
      this.pending.set(transport, agg);
      this.onCounted?.();
    }
    agg.count++;
    agg.codes[code] = (Object.hasOwn(agg.codes, code) ? (agg.codes[code] as number) : 0) + 1;
    if (peer !== "") {
      if (Object.hasOwn(agg.peers, peer)) agg.peers[peer] = (agg.peers[peer] as number) + 1;
      else if (agg.named < MAX_NAMED) {
        agg.named++;
        agg.peers[peer] = 1;
      } else agg.otherPeers++;
    }
    return false;
  }

  /** The counts to write now (one per transport), forgotten once taken; idle peers' buckets go too (the kernel's tick). */
  take(): SuppressedHandshakes[] {
    const out = [...this.pending.values()].map(({ named: _, ...s }) => s);
    this.pending.clear();
    const now = this.clock();
    this.peers.sweep(now);
    return out;
  }
}

/** The aggregate record's message. */
export function suppressedHandshakesMessage(s: SuppressedHandshakes): string {
  const codes = Object.entries(s.codes)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return `${s.count} failed handshakes on ${s.transport} over the audit handshake rate, recorded as this one record (${codes}) since ${new Date(s.since).toISOString()}`;
}
