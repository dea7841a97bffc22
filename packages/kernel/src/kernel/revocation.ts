import type { Grant } from "@kpip/protocol";
import type { EventBus } from "../events/bus.js";
import type { Session } from "../session/session.js";

/** What runs under a capability: agents (by their own token) and DEFERRED ops (by the grant that submitted them). */
export interface RevocationReach {
  /** `ids`: the token ids revoked, when known (the record names the one that ended each agent). */
  agents: { killRevoked(isRevoked: (t: Pick<Grant, "id" | "chain">) => boolean, ids?: readonly string[]): number };
  compute: { cancelRevoked(isRevoked: (g: Grant) => boolean): number };
  /** Uploads in progress, by the grant that began each (none: no file store). */
  uploads?: { dropRevoked(isRevoked: (g: Grant) => boolean): number };
}

/**
 * The revocation fan-out: after tokens are revoked (token.revoke, a persona's removal, the CLI
 * while no kernel answered), every session holding a handle on a revoked grant is told, on its
 * own notice channel (`topic://kernel/tokens/<id>/revoked`), every subscription a revoked
 * capability authorized ends, every running agent whose token is covered is killed, every
 * op queued or running under a covered grant is cancelled, and every upload begun under one is
 * dropped (PROTOCOL §13.1). `ids`: the token ids revoked since the last fan-out (undefined: not
 * known, everything is checked).
 */
export function notifyRevoked(
  sessions: Iterable<Session>,
  isRevoked: (g: Pick<Grant, "id" | "chain">) => boolean,
  events: EventBus,
  reach?: RevocationReach,
  ids?: readonly string[],
): void {
  // Subscriptions and watches the revoked capabilities authorized end now, each with a last EVENT
  // saying why. With the ids revoked, only what names one is visited (a revocation covers nothing
  // else): a persona revoking its own tokens in a loop made every one visit every subscription
  // and handle in the kernel.
  events.endRevoked(ids);
  for (const sess of sessions) {
    for (const h of ids === undefined ? sess.handles.all() : sess.handles.naming(ids)) {
      if (isRevoked(h.grant)) {
        events.notify(sess, `topic://kernel/tokens/${h.grant.id}/revoked`, { token: h.grant.id, handle: h.handle });
      }
    }
  }
  // What was started under a revoked capability ends with it: an agent keeps no CPU, network or
  // scratch past its authority, nor a command or task its run.
  reach?.agents.killRevoked(isRevoked, ids);
  reach?.compute.cancelRevoked(isRevoked);
  reach?.uploads?.dropRevoked(isRevoked);
}

/**
 * A root key's retirement (or removal from the key file) ends every token it signed, as a
 * revocation does, but nothing told the sessions holding handles on them: they learned at their
 * next use. Each such handle's session is told on the same notice channel as a revocation's
 * (`topic://kernel/tokens/<id>/revoked`), with `reason: "key retired"`. Runs once per change of
 * the key file that retires or removes a key (a pass over the sessions' handles then, never per request).
 */
export function notifyRetired(
  sessions: Iterable<Session>,
  kids: ReadonlySet<string>,
  kidOf: (g: Grant) => string | undefined,
  events: EventBus,
): number {
  let told = 0;
  for (const sess of sessions) {
    for (const h of sess.handles.all()) {
      const kid = kidOf(h.grant);
      if (kid === undefined || !kids.has(kid)) continue;
      events.notify(sess, `topic://kernel/tokens/${h.grant.id}/revoked`, {
        token: h.grant.id,
        handle: h.handle,
        reason: "key retired",
      });
      told++;
    }
  }
  return told;
}
