import { ProtocolViolationError } from "./errors.js";

/**
 * A number the kernel answered that the client keeps and sends back or matches on (a token
 * handle, a subscription id): an integer from 1 to 2^53 − 1, else ProtocolViolationError. A
 * kernel that answered anything else would break every later call that names it, silently.
 */
export function kernelNumber(v: unknown, what: string): number {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 1) return v;
  throw new ProtocolViolationError(`kernel answered ${what} ${describe(v)}, not an integer from 1 to 2^53 - 1`);
}

/** Bytes the kernel answered that the client keeps (a refreshed token), else ProtocolViolationError. */
export function kernelBytes(v: unknown, what: string): Uint8Array {
  if (v instanceof Uint8Array) return v;
  throw new ProtocolViolationError(`kernel answered ${what} ${describe(v)}, not bytes`);
}

function describe(v: unknown): string {
  if (typeof v === "number" || typeof v === "bigint") return `as the number ${String(v).slice(0, 24)}`;
  return v === null ? "as null" : Array.isArray(v) ? "as an array" : `as a ${typeof v}`;
}
