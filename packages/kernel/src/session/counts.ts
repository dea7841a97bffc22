/**
 * What a stage that admits work needs to know of the kernel's sessions. Declared apart (no imports) so any part can depend on it without a cycle; the
 * session registry (kernel/sessions.ts) implements it.
 */

/** How many sessions there are: all a stage that admits work needs to know of the registry. */
export interface SessionCounts {
  /** Sessions open now, attested or still handshaking. */
  sessionCount(): number;
  /** Sessions that attested (the ones maxSessions bounds). */
  attestedCount(): number;
  /** Connections still handshaking (the pre-authentication budget). */
  handshakingCount(): number;
}
