/** The bounds of a session (kernel settings). */
export interface SessionLimitsConfig {
  heartbeatMs: number;
  handshakeTimeoutMs: number;
  maxInFlight: number;
  maxBodyBytes: number;
  dedupeWindowMs: number;
  /** Bytes queued to a peer that does not read before the session is dropped. */
  maxWriteBuffer: number;
}

/**
 * Largest frame bodies before WELCOME (PROTOCOL §8.8): a HELLO is a few hundred bytes, an
 * ATTEST at most 64 tokens of 8 KiB and its measurements. An unauthenticated peer can make
 * the kernel buffer this much, not the session's maxBody.
 */
export const HANDSHAKE_MAX_BODY = { hello: 16 * 1024, attest: 1024 * 1024 } as const;
