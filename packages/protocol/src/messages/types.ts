import type { CborMap, CborValue } from "../cbor/value.js";
import type { ErrorClass, Status } from "../errors.js";

/** HELLO, persona → kernel: opens the handshake. */
export interface Hello {
  /** Protocol versions the persona speaks. */
  versions: number[];
  /** The persona id this session will act as. */
  persona: string;
  /** The persona's Ed25519 public key, 32 raw bytes. */
  publicKey: Uint8Array;
  /** 16 random bytes naming this client instance; with the request id it keys dedupe. */
  instance: Uint8Array;
  /** Optional features the persona supports (e.g. "shm"). */
  features: string[];
  /** Free-form client name and version, for logs. */
  client?: string;
  /** The largest body the persona accepts; the kernel uses min(this, its own). */
  maxBody?: number;
}

/** Limits the kernel announces in CHALLENGE. */
export interface SessionLimits {
  maxBody: number;
  maxInFlight: number;
  dedupeWindowMs: number;
}

/** CHALLENGE, kernel → persona. */
export interface Challenge {
  /** The chosen protocol version. */
  version: number;
  /** Session id (globally unique). */
  session: string;
  /** 32 random bytes the persona must sign. */
  nonce: Uint8Array;
  /** The kernel's id. */
  kernel: string;
  /** Heartbeat interval both sides use; a peer silent for 3 intervals is dead. */
  heartbeatMs: number;
  limits: SessionLimits;
  /** Features enabled for this session (the intersection). */
  features: string[];
}

/** ATTEST, persona → kernel. */
export interface Attest {
  /** Ed25519 signature over the attestation transcript (see attest.ts). */
  signature: Uint8Array;
  /** Capability tokens to bind as session handles, in order. */
  tokens: Uint8Array[];
  /** Optional measurements of the persona runtime, recorded in the audit log. */
  measurements?: CborMap;
}

/** WELCOME, kernel → persona: the session is ready. */
export interface Welcome {
  persona: string;
  /** One handle per token, in the order they were sent; 0 where the token was refused. */
  handles: number[];
  /** Why each refused token was refused. */
  refused?: { index: number; code: string; message: string }[];
}

/** The execution context of a request (KPIP §7). */
export interface RequestContext {
  persona: string;
  workspace?: string;
  execution?: string;
  domain?: string;
  /** W3C trace context, carried into logs and the audit record. */
  traceparent?: string;
}

/** A capability reference: a session handle (integer) or an inline token (bytes). */
export type CapabilityRef = number | Uint8Array;

/** REQUEST, persona → kernel (KPIP §5). */
export interface Request {
  version: number;
  persona: string;
  /** Unique per client instance; retries keep it. */
  id: number;
  /** The intent's canonical CBOR bytes, hashed as they are. */
  intent: Uint8Array;
  context: RequestContext;
  caps: CapabilityRef[];
}

/** RESPONSE, kernel → persona (KPIP §10). */
export interface Response {
  version: number;
  id: number;
  status: Status;
  /** Present exactly when status is FAILURE. */
  error?: ErrorClass;
  message?: string;
  payload?: CborValue;
}

/** EVENT, kernel → persona. */
export interface KEvent {
  subscription: number;
  topic: string;
  seq: number;
  data?: CborValue;
  /** Events dropped for this subscription since the last delivered one. */
  gap?: number;
  /**
   * Present on the last EVENT of a subscription the kernel ended (the capability that
   * authorized it was revoked or expired): why. It carries no `data`. Only the kernel sets it,
   * so no emitter can end another's subscription by what it emits.
   */
  ended?: string;
}

export interface Ping {
  seq: number;
}
export interface Pong {
  seq: number;
}

/** GOODBYE, either side: no new requests; in-flight ones are answered, then the stream closes. */
export interface Goodbye {
  reason?: string;
}

/** ERROR, either side: a session-level failure not tied to one response. */
export interface ErrorMessage {
  class: ErrorClass;
  code: string;
  message: string;
  /** The request this error concerns, when there is one. */
  id?: number;
  /** True when the sender closes the session after this frame. */
  fatal: boolean;
}

/** A decoded message, discriminated by `type`. */
export type Message =
  | { type: "HELLO"; body: Hello }
  | { type: "CHALLENGE"; body: Challenge }
  | { type: "ATTEST"; body: Attest }
  | { type: "WELCOME"; body: Welcome }
  | { type: "REQUEST"; body: Request }
  | { type: "RESPONSE"; body: Response }
  | { type: "EVENT"; body: KEvent }
  | { type: "PING"; body: Ping }
  | { type: "PONG"; body: Pong }
  | { type: "GOODBYE"; body: Goodbye }
  | { type: "ERROR"; body: ErrorMessage };

export type MessageOf<T extends Message["type"]> = Extract<Message, { type: T }>["body"];
