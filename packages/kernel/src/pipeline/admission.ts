import { treeBoundRefusal } from "../resources/lineage.js";
import type { Refusal } from "./context.js";

/** The bounds admission applies (kernel settings). */
export interface AdmissionLimits {
  /** Requests one session may have in flight (PROTOCOL §9.1 step 1). */
  maxInFlight: number;
  /** Attested sessions of the kernel (PROTOCOL §8.8). */
  maxSessions: number;
  /** The last sessions of `maxSessions` only the admin persona may take. */
  adminReserve: number;
  adminPersona: string;
  /**
   * Attested sessions of one persona together with its sub-personas and agents (the tree under
   * its top-level id: `alice`, `alice/worker-1`, `alice/agent.w1`); the admin persona is not
   * bound by it. Absent: no such bound.
   */
  maxSessionsPerPersona?: number;
}

/** What admission sees of a session's requests. */
export interface InFlightView {
  /** Requests in flight, the one being admitted included. */
  readonly inFlight: number;
  /** After GOODBYE (PROTOCOL §8.6 rule 3). */
  readonly closing: boolean;
  /** Closing for the kernel's stop: the peer has had no GOODBYE yet (PROTOCOL §8.6). */
  readonly stopping?: boolean;
}

/**
 * Whether the kernel takes more work: a request on a session (the pipeline's first stage), a
 * session at attestation. Decisions only: the pipeline and the session audit and answer its
 * refusals, the kernel counts the sessions.
 */
export class Admission {
  constructor(readonly limits: AdmissionLimits) {}

  /** The first stage of every request: a closing session takes none, an open one at most maxInFlight. */
  request(s: InFlightView): Refusal | undefined {
    if (s.closing) {
      // The kernel's drain sends its GOODBYE only once the requests in flight are answered: a
      // peer told nothing yet broke no rule, and its request, not run, is for the next kernel.
      if (s.stopping)
        return { errorClass: "RESOURCE", message: "the kernel is stopping: this request was not run; retry once it is back" };
      return { errorClass: "PROTOCOL", message: "the session is closing: no new requests after GOODBYE" };
    }
    if (s.inFlight > this.limits.maxInFlight) {
      return {
        errorClass: "RESOURCE",
        message: `more than ${this.limits.maxInFlight} requests in flight on this session`,
        audited: "too many requests in flight",
      };
    }
    return undefined;
  }

  /**
   * A persona attested while `attested` sessions are open, `tree` of them its tree's (the tree
   * under `root`, resources/lineage.ts's PersonaRoots): may it have one more? maxSessions bounds attested sessions, the last
   * `adminReserve` of them the admin's alone; maxSessionsPerPersona bounds one tree's, so one
   * persona cannot take every slot but the admin's. A refusal is the fatal
   * RESOURCE/TOO_MANY_SESSIONS of the handshake (audited as `session.handshake`).
   */
  session(persona: string, attested: number, tree = 0, root = persona): Refusal | undefined {
    const { maxSessions, adminReserve, adminPersona, maxSessionsPerPersona } = this.limits;
    if (persona !== adminPersona && maxSessionsPerPersona !== undefined && tree >= maxSessionsPerPersona) {
      return {
        errorClass: "RESOURCE",
        message: treeBoundRefusal(root, persona, {
          held: (max, bound) => `already has ${tree} sessions (${bound} ${max})`,
          what: "sessions",
          bound: "maxSessionsPerPersona",
          limit: maxSessionsPerPersona,
        }),
      };
    }
    // At most maxSessions - 1 reserved: some persona other than the admin can always get in.
    const reserve = Math.min(adminReserve, maxSessions - 1);
    const limit = persona === adminPersona ? maxSessions : maxSessions - reserve;
    if (attested < limit) return undefined;
    return {
      errorClass: "RESOURCE",
      message:
        persona === adminPersona || reserve === 0
          ? `the kernel already has ${maxSessions} sessions`
          : `the kernel already has ${attested} sessions (the last ${reserve} of ${maxSessions} are reserved for the admin)`,
    };
  }
}
