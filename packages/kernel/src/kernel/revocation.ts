import type { Grant } from "@kpip/protocol";
import type { EventBus } from "../events/bus.js";
import type { Session } from "../session/session.js";

/**
 * The revocation fan-out: after tokens are revoked (token.revoke, a persona's removal, the CLI
 * while no kernel answered), every session holding a handle on a revoked grant is told, on its
 * own notice channel (`topic://kernel/tokens/<id>/revoked`), and every subscription a revoked
 * capability authorized ends.
 */
export function notifyRevoked(sessions: Iterable<Session>, isRevoked: (g: Grant) => boolean, events: EventBus): void {
  // Subscriptions and watches the revoked capabilities authorized end now, each with a last EVENT saying why.
  events.endLapsed();
  for (const sess of sessions) {
    for (const h of sess.handles.all()) {
      if (isRevoked(h.grant)) {
        events.notify(sess, `topic://kernel/tokens/${h.grant.id}/revoked`, { token: h.grant.id, handle: h.handle });
      }
    }
  }
}
