/** A connection that has not finished its handshake, as the budget sees it. */
export interface HalfOpen {
  readonly transport: string;
  /** Who is connecting, as far as the transport can tell: its address as peerKey (session/peer-key.ts) counts it (an IPv6 /64), or "" when it cannot. */
  readonly peerKey: string;
  /** "hello" until a HELLO arrived; then "attest" (further along: shed last). */
  readonly state: string;
}

export interface PreauthLimits {
  /** Most half-open connections per transport. */
  perTransport: number;
  /** Most half-open connections per peer address (transports that know one: TCP/gRPC; IPv6 by its /64). */
  perPeer: number;
}

/**
 * The pre-authentication budget (sshd's MaxStartups, without its randomness): half-open
 * connections are counted apart from sessions, per transport and per peer address. A new
 * connection over a bound is let in and an older half-open one is shed instead — the same
 * peer's, or on a full transport one of the peer holding the most; of those the oldest that
 * has not sent HELLO yet, else the oldest — so a peer that floods the handshake displaces its
 * own connections first, handshakes under way go last, and no connection holds a slot past
 * the handshake timeout. Authenticated sessions are never shed here.
 */
export class PreauthBudget<T extends HalfOpen> {
  /** transport → peer key → its half-open connections, oldest first (Set keeps insertion order). */
  private readonly table = new Map<string, Map<string, Set<T>>>();
  private readonly perTransport = new Map<string, number>();
  private total = 0;

  constructor(private readonly limits: PreauthLimits) {}

  /** Counts `c` in; returns the half-open connections to shed to make room (already uncounted). */
  admit(c: T): T[] {
    const shed: T[] = [];
    const peers = this.table.get(c.transport) ?? new Map<string, Set<T>>();
    this.table.set(c.transport, peers);
    const own = peers.get(c.peerKey);
    if (c.peerKey !== "" && own && own.size >= this.limits.perPeer) {
      shed.push(this.shedOldest(own));
    }
    if ((this.perTransport.get(c.transport) ?? 0) >= this.limits.perTransport) {
      let largest: Set<T> | undefined;
      for (const set of peers.values()) if (!largest || set.size > largest.size) largest = set;
      if (largest && largest.size > 0) shed.push(this.shedOldest(largest));
    }
    const set = peers.get(c.peerKey) ?? new Set<T>();
    peers.set(c.peerKey, set);
    set.add(c);
    this.perTransport.set(c.transport, (this.perTransport.get(c.transport) ?? 0) + 1);
    this.total++;
    return shed;
  }

  /** `c` is no longer half-open (it attested, or it closed); a no-op if it was not counted. */
  release(c: T): void {
    const peers = this.table.get(c.transport);
    const set = peers?.get(c.peerKey);
    if (!peers || !set?.delete(c)) return;
    if (set.size === 0) peers.delete(c.peerKey);
    this.perTransport.set(c.transport, (this.perTransport.get(c.transport) ?? 1) - 1);
    this.total--;
  }

  /** Half-open connections now, on every transport. */
  get count(): number {
    return this.total;
  }

  private shedOldest(set: Set<T>): T {
    let victim: T | undefined;
    for (const c of set) {
      if (c.state === "hello") {
        victim = c;
        break;
      }
    }
    victim ??= set.values().next().value as T;
    this.release(victim);
    return victim;
  }
}
