/**
 * Which bound a refused connection met: its peer's own, the listener's total, or (the gRPC
 * listener's own check, never {@link ConnectionCaps.admit}'s) its peer's new-stream rate.
 */
export type ConnectionRefusal = "peer" | "total" | "rate";

export interface ConnectionLimits {
  /** Most open connections per peer key (session/peer-key.ts: an IPv6 address by its /64). */
  perPeer: number;
  /** Most open connections in all. */
  total: number;
}

/** What {@link ConnectionCaps.admit} did with a new connection. */
export type ConnectionAdmission<C> =
  /** Not counted: over its peer's bound, or the total is full of connections carrying attested sessions. */
  | { refused: ConnectionRefusal; shed?: undefined; bound?: undefined }
  /**
   * Counted; at its peer's bound or the total, `shed` is the older connection that made room
   * (uncounted now: the caller closes it), and `bound` which bound it was.
   */
  | { refused?: undefined; shed?: C; bound?: "peer" | "total" };

/**
 * Open TCP connections of one listener, per peer key and in all.
 *
 * Over its peer's bound a new connection sheds the oldest connection of the same peer key that
 * carries no attested session (none of its streams reached WELCOME, or those that did have
 * ended), and is refused only when every one of that key carries one: a peer never displaces
 * another key's connections. Refusing at the peer's bound let one local process (a sandboxed
 * command with the network, any local user: every loopback address is one key) or one host
 * behind a NAT hold the key's slots with idle connections, and every other client of that key
 * was refused. At the total it sheds the oldest connection that carries no attested session,
 * whatever its key, and is refused only when every open one carries one. Refusing at the total instead let anyone with enough addresses hold every slot
 * with connections that never attest (each for up to handshakeTimeoutMs, then again), and no
 * legitimate client could connect. A connection without an attested session competes only with
 * others without one: a flood sheds its own first, and a client's connection is shed only if
 * as many newer ones as there are unattested slots arrive while it handshakes (it retries).
 */
export class ConnectionCaps<C = object> {
  private readonly perPeer = new Map<string, number>();
  /** Counted connections, with their peer key. */
  private readonly keys = new Map<C, string>();
  /** Attested sessions each counted connection carries now (absent: none). */
  private readonly attestedOn = new Map<C, number>();
  /** Counted connections carrying no attested session, oldest first (a Set iterates in insertion order). */
  private readonly unattested = new Set<C>();

  constructor(private readonly limits: ConnectionLimits) {}

  /**
   * Counts a new connection `conn` from `key` in, shedding the oldest one without an attested
   * session at the total; or says which bound refuses it (then nothing is counted or shed).
   */
  admit(key: string, conn: C): ConnectionAdmission<C> {
    const own = this.perPeer.get(key) ?? 0;
    let shed: C | undefined;
    let bound: "peer" | "total" | undefined;
    // "" is a peer the transport could not name (the socket already gone): only the total counts it.
    if (key !== "" && own >= this.limits.perPeer) {
      // The key's oldest without an attested session (a walk of those without one, only at the bound).
      for (const c of this.unattested) {
        if (this.keys.get(c) !== key) continue;
        shed = c;
        break;
      }
      if (shed === undefined) return { refused: "peer" };
      bound = "peer";
      this.release(shed);
    } else if (this.keys.size >= this.limits.total) {
      const oldest = this.unattested.values().next();
      if (oldest.done) return { refused: "total" };
      shed = oldest.value;
      bound = "total";
      this.release(shed);
    }
    this.keys.set(conn, key);
    this.unattested.add(conn);
    if (key !== "") this.perPeer.set(key, (this.perPeer.get(key) ?? 0) + 1);
    return shed === undefined ? {} : { shed, bound };
  }

  /** A session on `conn` attested: while it lasts `conn` is never shed. */
  attested(conn: C): void {
    if (!this.keys.has(conn)) return;
    this.attestedOn.set(conn, (this.attestedOn.get(conn) ?? 0) + 1);
    this.unattested.delete(conn);
  }

  /** An attested session on `conn` ended: with none left, `conn` may be shed again (as the newest). */
  sessionEnded(conn: C): void {
    const n = this.attestedOn.get(conn);
    if (n === undefined) return;
    if (n > 1) {
      this.attestedOn.set(conn, n - 1);
      return;
    }
    this.attestedOn.delete(conn);
    if (this.keys.has(conn)) this.unattested.add(conn);
  }

  /** A connection counted by {@link admit} closed (a no-op if it is not counted: shed, or released already). */
  release(conn: C): void {
    const key = this.keys.get(conn);
    if (key === undefined) return;
    this.keys.delete(conn);
    this.attestedOn.delete(conn);
    this.unattested.delete(conn);
    if (key === "") return;
    const n = (this.perPeer.get(key) ?? 1) - 1;
    if (n > 0) this.perPeer.set(key, n);
    else this.perPeer.delete(key);
  }

  /** `conn` carries an attested session now. */
  carriesSession(conn: C): boolean {
    return this.attestedOn.has(conn);
  }

  /** Open connections now. */
  get count(): number {
    return this.keys.size;
  }

  /** Open connections of one peer key now. */
  of(key: string): number {
    return this.perPeer.get(key) ?? 0;
  }
}
