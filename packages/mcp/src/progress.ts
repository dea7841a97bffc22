import type { ServerNotification } from "@modelcontextprotocol/sdk/types.js";
import type { NoticeOutlet } from "./watches.js";

/** The stream that carries a call's answer, by the call's request id, when the transport can back up (HTTP's POST). */
export type CallStreams = (id: string | number) => NoticeOutlet | undefined;

/**
 * A call's progress notices, coalesced: while the stream carrying the call is not read, only the
 * newest waits (in the gateway), sent when the host reads again. The transport queues whatever it
 * is given: a call following a long op sends one a second, which a host that never reads would
 * otherwise pile up without bound (~0.7 MB a call an hour, outside the unread bounds).
 */
export class CoalescedProgress {
  private newest: ServerNotification | undefined;
  private waiting = false;
  private ended = false;

  constructor(
    private readonly send: (n: ServerNotification) => Promise<void>,
    private readonly outlet: () => NoticeOutlet | undefined,
  ) {}

  async notify(n: ServerNotification): Promise<void> {
    if (this.ended) return;
    const o = this.outlet();
    if (!o?.blocked()) return this.send(n);
    this.newest = n;
    if (this.waiting) return;
    this.waiting = true;
    o.ready()
      .then(() => {
        this.waiting = false;
        const m = this.newest;
        this.newest = undefined;
        if (m && !this.ended) return this.notify(m);
      })
      // No caller awaits this send: a transport that fails now (the host gone) would be an
      // unhandled rejection, which ends the gateway and every host's session. The notice is lost,
      // as the call's answer will be.
      .catch(() => {
        this.waiting = false;
      });
  }

  /** The call has answered: a notice still waiting is stale, and is dropped. */
  end(): void {
    this.ended = true;
    this.newest = undefined;
  }
}
