import type { Socket } from "node:net";

/**
 * The HTTP listener's connections, at most `max` at once. A connection is *trusted* once one of
 * its requests carried the bearer secret. Past the bound a new connection sheds the oldest one
 * not trusted, or is closed itself when every slot is trusted.
 *
 * Why not Node's `server.maxConnections`: it counts connections before anything is known of
 * them, so any local process, with no secret, could hold every slot with idle sockets (Node
 * closes one that sends no headers only after `headersTimeout`) and lock the hosts out. Here a
 * peer without the secret only competes with other peers without it: a host's new connection
 * sends its headers at once and is trusted before a flood of new sockets reaches it.
 */
export class ConnectionSlots {
  /** Counted connections not trusted yet, oldest first (a Set iterates in insertion order). */
  private readonly untrusted = new Set<Socket>();
  private readonly counted = new WeakSet<Socket>();
  private open = 0;
  /** Untrusted connections closed to make room for newer ones. */
  shed = 0;
  /** New connections closed because every slot was trusted. */
  refused = 0;

  constructor(private readonly max: number) {}

  /** Counts `sock` in, shedding the oldest untrusted one at the bound; false (and `sock` destroyed) if none can go. */
  admit(sock: Socket): boolean {
    if (this.open >= this.max) {
      const oldest = this.untrusted.values().next();
      if (oldest.done) {
        this.refused++;
        sock.destroy();
        return false;
      }
      this.shed++;
      this.release(oldest.value);
      oldest.value.destroy();
    }
    this.open++;
    this.counted.add(sock);
    this.untrusted.add(sock);
    sock.once("close", () => this.release(sock));
    return true;
  }

  /** A request on `sock` carried the secret: it is never shed for a newer connection. */
  trust(sock: Socket): void {
    this.untrusted.delete(sock);
  }

  /** Connections counted now. */
  get count(): number {
    return this.open;
  }

  private release(sock: Socket): void {
    if (!this.counted.has(sock)) return;
    this.counted.delete(sock);
    this.untrusted.delete(sock);
    this.open--;
  }
}
