/** Which bound a refused connection met: its peer's own, or the listener's total. */
export type ConnectionRefusal = "peer" | "total";

export interface ConnectionLimits {
  /** Most open connections per peer key (session/peer-key.ts: an IPv6 address by its /64). */
  perPeer: number;
  /** Most open connections in all. */
  total: number;
}

/**
 * Open TCP connections of one listener, per peer key and in all. Unlike the pre-authentication
 * budget (which sheds an older half-open stream to let a new one in), a connection over a bound
 * is refused: a connection is a descriptor before it is anything else, and the old ones may
 * carry sessions.
 */
export class ConnectionCaps {
  private readonly perPeer = new Map<string, number>();
  private open = 0;

  constructor(private readonly limits: ConnectionLimits) {}

  /** Counts a new connection from `key` in, or says which bound refuses it (then nothing is counted). */
  admit(key: string): ConnectionRefusal | undefined {
    const own = this.perPeer.get(key) ?? 0;
    // "" is a peer the transport could not name (the socket already gone): only the total counts it.
    if (key !== "" && own >= this.limits.perPeer) return "peer";
    if (this.open >= this.limits.total) return "total";
    if (key !== "") this.perPeer.set(key, own + 1);
    this.open++;
    return undefined;
  }

  /** A connection counted by {@link admit} closed. */
  release(key: string): void {
    this.open--;
    if (key === "") return;
    const n = (this.perPeer.get(key) ?? 1) - 1;
    if (n > 0) this.perPeer.set(key, n);
    else this.perPeer.delete(key);
  }

  /** Open connections now. */
  get count(): number {
    return this.open;
  }

  /** Open connections of one peer key now. */
  of(key: string): number {
    return this.perPeer.get(key) ?? 0;
  }
}
