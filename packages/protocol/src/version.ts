import { SUPPORTED_VERSIONS } from "./constants.js";

/**
 * Picks the protocol version for a session: the highest version both sides support, or
 * undefined when there is none (the kernel then answers ERROR PROTOCOL/UNSUPPORTED_VERSION
 * listing its versions, and closes).
 */
export function negotiateVersion(
  offered: readonly number[],
  supported: readonly number[] = SUPPORTED_VERSIONS,
): number | undefined {
  let best: number | undefined;
  for (const v of offered) if (supported.includes(v) && (best === undefined || v > best)) best = v;
  return best;
}
