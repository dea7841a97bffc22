import type { Grant } from "@kpip/protocol";

/**
 * Why the capability that authorized a subscription or watch no longer holds — revoked (itself
 * or an ancestor), or past its expiry — or undefined while it holds.
 */
export function capabilityLapsed(
  revocations: { isRevoked(g: Grant): boolean } | undefined,
  g: Grant,
  now: number,
): string | undefined {
  if (revocations?.isRevoked(g)) return `the capability ${g.id} that authorized this subscription was revoked`;
  if (now >= g.exp) return `the capability ${g.id} that authorized this subscription expired`;
  return undefined;
}
