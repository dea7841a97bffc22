import { FIRST_SEGMENT, GrantBounds, type TreeRoots } from "../resources/lineage.js";
import type { TokenStore } from "../store/types.js";
import { CapEnforcer, DEFAULT_ENFORCER_LIMITS, type EnforcerLimits } from "./enforcer.js";
import type { RootKeys } from "./keys.js";
import { Revocations } from "./revocations.js";
import { TokenService } from "./tokens.js";

/** The two sides of capabilities over one key set, store and revocation list: the decision and the token service. */
export interface Capabilities {
  /** Verifies, binds and authorizes (a custom Authorizer replaces its `authorize` only). */
  enforcer: CapEnforcer;
  /** Mints, refreshes, revokes and prunes. */
  tokens: TokenService;
}

export function capabilities(
  keys: RootKeys,
  store: TokenStore,
  clock: () => number = Date.now,
  limits: EnforcerLimits = DEFAULT_ENFORCER_LIMITS,
  /** Each grant's token row, read once: shared with the ledger, the process table and the token service. */
  grantBounds: GrantBounds = new GrantBounds(store),
  /** The top of each persona's tree, for the token service's live-token bound: the kernel passes the registry's. */
  roots: TreeRoots = FIRST_SEGMENT,
): Capabilities {
  // Shared: a revocation by the token service takes effect at once for every decision.
  const revoked = new Revocations(store);
  return {
    enforcer: new CapEnforcer(keys, store, revoked, clock, limits, grantBounds, roots),
    tokens: new TokenService(keys, store, revoked, clock, limits, roots, grantBounds),
  };
}
