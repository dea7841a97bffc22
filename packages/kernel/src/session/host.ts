import type { ShmNative } from "@kpip/protocol";
import type { HandshakeRecordLimiter } from "../audit/handshake-limit.js";
import type { LiveSessions } from "../audit/live-sessions.js";
import type { AuditLog } from "../audit/log.js";
import type { AttestedToken } from "../audit/session-records.js";
import type { StorageSpace } from "../kernel/storage-space.js";
import type { Logger } from "../log.js";
import type { Pipeline } from "../pipeline/pipeline.js";
import type { BodyPool } from "./body-pool.js";
import type { HandleTable } from "./handles.js";
import type { PeerLogLimiter } from "./log-limit.js";
import type { PersonaKeys } from "./persona-keys.js";

/** The bounds of a session (kernel settings). */
export interface SessionLimitsConfig {
  heartbeatMs: number;
  handshakeTimeoutMs: number;
  maxInFlight: number;
  maxBodyBytes: number;
  dedupeWindowMs: number;
  /** Bytes queued to a peer that does not read before the session is dropped. */
  maxWriteBuffer: number;
  /** How long a connection's reads stop for a read past its frame's allowance (ReadGauge); 0: never. Default READ_HOLD_MS. */
  readHoldMs?: number;
  /** Control frames (PING, PONG, GOODBYE, non-fatal ERROR) a session may send per second, bursts 5×; 0: no bound. Default CONTROL_FRAME_RATE. */
  controlFrameRate?: number;
}

/** Why an attested persona gets no session (PROTOCOL §8.8): the code of its fatal RESOURCE error, and the message. */
export interface SessionRefusal {
  code: "TOO_MANY_SESSIONS" | "SESSION_RATE_LIMITED";
  message: string;
}

/**
 * What a session needs from the kernel that owns it; `S` is the session (session.ts names it
 * `SessionHost`, so this file need not import the session).
 */
export interface SessionHostOf<S> {
  readonly kernelId: string;
  readonly limits: SessionLimitsConfig;
  readonly pipeline: Pipeline;
  readonly audit: AuditLog;
  /** The sessions open, kept beside the log so that the start after a kill ends them on the record. */
  readonly liveSessions?: LiveSessions;
  readonly personaKeys: PersonaKeys;
  /** Verifies a token and binds it to the session's table; a refusal names the token (`id`) when it decoded. */
  bindToken(table: HandleTable, persona: string, token: Uint8Array, session: string): AttestedToken;
  readonly log: Logger;
  /** Told of each request whose record could not be committed for lack of room (none: only the answer's class changes). */
  readonly space?: Pick<StorageSpace, "failed">;
  /** Failed handshakes' records go through here: a bounded rate per transport and peer address, the rest counted. */
  readonly handshakeRecords: HandshakeRecordLimiter;
  /** Every failed handshake, by its code (the kernel's own: a bounded set), for the metrics. */
  handshakeFailed?(transport: string, code: string): void;
  /** Log lines a peer causes go through here: a bounded number per peer and window. */
  readonly peerLog: PeerLogLimiter;
  /**
   * A persona attested: may it have a session? A refusal — sessions full (the admin's reserve
   * excepted), or its tree opening them too fast — is a fatal RESOURCE error of the handshake.
   */
  admitSession(s: S, persona: string): SessionRefusal | undefined;
  /**
   * The agent running as `persona` and its spawn (its token id), for the session's open record:
   * an agent's persona id is reused by later agents of its name, and the record says which spawn.
   */
  agentSpawn?(persona: string): { agent: string; spawn: string } | undefined;
  sessionClosed(s: S): void;
  /** The session's connection drained: queued events may flow again. */
  sessionDrained(s: S): void;
  /**
   * Bytes were queued to the session's peer (a send): the kernel counts what is queued unread.
   * True: the session's persona tree holds more unread than it may, and this session is dropped.
   */
  sessionQueued?(s: S): boolean;
  /**
   * May an EVENT of `bytes` be queued to the session's peer now? False while its persona tree
   * (or the kernel, when the tree holds some) has as much queued unread as it may.
   */
  eventRoom?(s: S, bytes: number): boolean;
  /** Shared memory for bulk bodies, when the native part loaded and it is not turned off. */
  readonly shm?: {
    native: ShmNative;
    threshold: number;
    /** May the session's own segment grow by `bytes` (the memory it holds)? False: the body goes inline. */
    grow?(s: S, bytes: number): boolean;
    /** The session's own segment was removed: what it held is free. */
    freed?(s: S): void;
    /** May the ended session's segment, holding a body not yet taken, be kept for its grace? False: removed at once. */
    linger?(s: S): boolean;
  };
  /** Where an attested session's large bodies are received (none: fresh memory). */
  readonly bodies?: BodyPool;
}
