import {
  type CapabilityRef,
  type CborMap,
  type CborValue,
  decodeToken,
  encodeMeasurements,
  type Identity,
  MIN_MAX_BODY,
  type Status,
  type Token,
} from "@kpip/protocol";
import { type BackoffPolicy, DEFAULT_RECONNECT_BACKOFF, DEFAULT_RETRY_BACKOFF } from "./backoff.js";
import type { Connector } from "./connectors/connector.js";
import { FallbackConnector, GrpcConnector, type GrpcConnectorOptions } from "./connectors/grpc.js";
import { UdsConnector } from "./connectors/uds.js";
import { loadIdentity } from "./identity.js";

export type ClientState = "connecting" | "handshaking" | "attesting" | "ready" | "reconnecting" | "closing" | "closed";

export interface ConnectOptions {
  /** Unix socket path of the kernel (or give `connector`). */
  socket?: string;
  /**
   * The kernel's gRPC transport. With `socket` too, the Unix socket is tried first and gRPC
   * is the fallback; `client.transport` says which one is in use.
   */
  grpc?: GrpcConnectorOptions;
  connector?: Connector;
  /**
   * Shared memory for large bodies on a Unix-socket session (default on when the native
   * module is available): `false` to never offer it, or the body size above which it is used.
   */
  shm?: boolean | { threshold?: number };
  /**
   * The largest frame body this client accepts (HELLO.maxBody, at least 4096): the session's limit
   * is the smaller of it and the kernel's, and a kernel that answers more is a protocol violation.
   * Default: the kernel's maximum.
   */
  maxBody?: number;
  /** The persona's identity, or the path of its identity file. */
  identity: Identity | string;
  /** Tokens to hold and bind at every attestation: wire bytes, or the base64url text `kpip token mint` prints. */
  tokens?: (Uint8Array | string)[];
  /** Workspace put in every request's context unless a call names another. */
  workspace?: string;
  /**
   * Time allowed for the first connection, all attempts: a handshake the kernel refused with a
   * code that asks for another try (HANDSHAKE_SHED, SESSION_RATE_LIMITED) or closed before
   * WELCOME without a word (HandshakeClosedError) is tried again within it, as is a kernel not
   * up yet with `waitForKernel`. Default 10 s.
   */
  connectTimeoutMs?: number;
  /** If no kernel answers at first, keep trying until connectTimeoutMs instead of failing at once. */
  waitForKernel?: boolean;
  /**
   * Reconnect after the connection is lost (default true). The client stops, and its waiting calls
   * fail, on a refused attestation (AUTH) or a JavaScript error (TypeError, RangeError, …) from a
   * connector: a custom connector reports a kernel that is away as `KernelUnavailableError`.
   */
  reconnect?: boolean;
  reconnectBackoff?: BackoffPolicy;
  /** The attempt counter resets only after a connection stayed up this long (default 5 s). */
  healthyAfterMs?: number;
  /** While reconnecting: fail calls at once with KernelUnavailableError instead of waiting. */
  failFast?: boolean;
  /** Longest a call without a deadline waits for a reconnect (default 30 s). */
  unavailableTimeoutMs?: number;
  /** Attempts per call for RESOURCE and INTERNAL failures (default 4), within the deadline. */
  maxAttempts?: number;
  retryBackoff?: BackoffPolicy;
  /** Refresh a held token this long before it expires (default 60 s, at most half its lifetime). */
  refreshMarginMs?: number;
  /** Measurements of this persona's runtime (e.g. a binary hash), sent in ATTEST and recorded in the audit log. */
  measurements?: CborMap;
}

export interface CallOptions {
  /** Relative deadline; it travels in the intent so the kernel stops work after it. */
  deadlineMs?: number;
  signal?: AbortSignal;
  workspace?: string;
  /** Capability references for this call (handles or inline tokens); default: every bound handle. */
  caps?: CapabilityRef[];
  traceparent?: string;
  /** Execution-context id (text, at most 128 bytes: a task or run id, or which host asked), recorded in the request's audit records. */
  execution?: string;
  /** Security domain the request acts in (domain-scoped tokens decide on it); recorded. */
  domain?: string;
}

/** A non-failure answer. FAILURE is thrown as {@link KpipError}. */
export interface CallResult {
  status: Exclude<Status, "FAILURE">;
  payload: CborValue | undefined;
}

/** One call into the kernel, as the typed families make it. */
export type CallFn = (op: string, target: string, args?: CborMap, opts?: CallOptions) => Promise<CallResult>;

/** {@link ConnectOptions} resolved once: defaults filled in, identity loaded, tokens decoded, connector chosen. */
export interface ResolvedOptions {
  readonly connector: Connector;
  readonly identity: Identity;
  readonly tokens: { bytes: Uint8Array; token: Token }[];
  readonly workspace: string | undefined;
  readonly measurements: CborMap | undefined;
  /** Shared memory: false, or the body size above which it is used (undefined: the protocol's default). */
  readonly shm: false | { threshold?: number };
  readonly maxBody: number | undefined;
  readonly connectTimeoutMs: number;
  readonly waitForKernel: boolean;
  readonly reconnect: boolean;
  readonly reconnectBackoff: BackoffPolicy;
  readonly healthyAfterMs: number;
  readonly failFast: boolean;
  readonly unavailableTimeoutMs: number;
  readonly maxAttempts: number;
  readonly retryBackoff: BackoffPolicy;
  readonly refreshMarginMs: number;
}

/** The connector `opts` name: the given one, the Unix socket, gRPC, or the socket falling back to gRPC. */
function chooseConnector(opts: ConnectOptions): Connector {
  if (opts.connector) return opts.connector;
  const chain: Connector[] = [];
  if (opts.socket) chain.push(new UdsConnector(opts.socket));
  if (opts.grpc) chain.push(new GrpcConnector(opts.grpc));
  const connector = chain.length > 1 ? new FallbackConnector(chain) : chain[0];
  if (!connector) throw new TypeError("KernelClient.connect needs a socket path, gRPC options or a connector");
  return connector;
}

/** Measurements the kernel takes (at most MAX_MEASUREMENTS_BYTES encoded): refused here, not by ending the session. */
function checkMeasurements(m: CborMap | undefined): CborMap | undefined {
  if (m !== undefined) encodeMeasurements(m);
  return m;
}

export function resolveOptions(opts: ConnectOptions): ResolvedOptions {
  const shm = opts.shm ?? true;
  return {
    connector: chooseConnector(opts),
    identity: typeof opts.identity === "string" ? loadIdentity(opts.identity) : opts.identity,
    tokens: (opts.tokens ?? []).map((t) => {
      const bytes = typeof t === "string" ? Buffer.from(t.trim(), "base64url") : t;
      return { bytes, token: decodeToken(bytes) };
    }),
    workspace: opts.workspace,
    measurements: checkMeasurements(opts.measurements),
    shm: shm === false ? false : shm === true ? {} : shm,
    maxBody: checkMaxBody(opts.maxBody),
    connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
    waitForKernel: opts.waitForKernel ?? false,
    reconnect: opts.reconnect ?? true,
    reconnectBackoff: opts.reconnectBackoff ?? DEFAULT_RECONNECT_BACKOFF,
    healthyAfterMs: opts.healthyAfterMs ?? 5_000,
    failFast: opts.failFast ?? false,
    unavailableTimeoutMs: opts.unavailableTimeoutMs ?? 30_000,
    maxAttempts: opts.maxAttempts ?? 4,
    retryBackoff: opts.retryBackoff ?? DEFAULT_RETRY_BACKOFF,
    refreshMarginMs: opts.refreshMarginMs ?? 60_000,
  };
}

/** HELLO.maxBody as the protocol allows it (§8.3: an integer, at least MIN_MAX_BODY, within the frame's 32-bit length). */
function checkMaxBody(v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < MIN_MAX_BODY || v > 0xffff_ffff)
    throw new TypeError(`maxBody must be an integer from ${MIN_MAX_BODY} to ${0xffff_ffff}, got ${v}`);
  return v;
}
