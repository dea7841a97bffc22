/**
 * Local errors: raised by the client itself, never sent by the kernel. Errors the kernel
 * reports arrive as {@link KpipError} (with the wire error class and the request id), so
 * `instanceof` tells the two apart.
 */
export class LocalError extends Error {
  override name = "LocalError";
}

/** No kernel could be reached, or the session is gone and the call could not wait. */
export class KernelUnavailableError extends LocalError {
  override name = "KernelUnavailableError";
}

/**
 * The connection reached a kernel and closed before the session was established, without a
 * refusal: a kernel shedding connections that have not attested (a gRPC listener at its
 * connection bound, PROTOCOL §8.8) or stopping. The first connect tries again within its timeout.
 */
export class HandshakeClosedError extends KernelUnavailableError {
  override name = "HandshakeClosedError";
}

/**
 * The Unix socket to connect to belongs to another user, or lies where another user could swap
 * it (a directory on its path they may change). A kernel's socket is its own user's (0600 in a
 * 0700 directory, PROTOCOL §3.4), so only that user can reach it: a socket of another user's at
 * the path was put there by them — a fake kernel that would receive the identity's signature
 * and every token (and could relay them to the real one). Nothing is sent to it. Likewise a
 * plaintext loopback gRPC port held by another user (any local user may listen on one).
 */
export class UntrustedSocketError extends LocalError {
  override name = "UntrustedSocketError";
}

/**
 * gRPC in plaintext (`insecure`) to an address that is not loopback: TLS is required there
 * (PROTOCOL §3.6). KPIP has no integrity of its own under the transport, so whoever is on the
 * path could read every request and answer and, once the persona attested, send requests in its
 * session. Nothing is sent.
 */
export class InsecureTransportError extends LocalError {
  override name = "InsecureTransportError";
}

/** The call's deadline passed before an answer arrived. */
export class TimeoutError extends LocalError {
  override name = "TimeoutError";
}

/** The caller aborted the call, or closed the client under it. */
export class CancelledError extends LocalError {
  override name = "CancelledError";
}

/** The kernel broke the protocol (malformed frame, unexpected message). */
export class ProtocolViolationError extends LocalError {
  override name = "ProtocolViolationError";
}

/** A held token could not be refreshed before expiry. */
export class TokenRefreshError extends LocalError {
  override name = "TokenRefreshError";
}

/**
 * Input refused before anything was sent (a malformed intent, token, identity or frame):
 * each carries the error class and code the kernel would have answered with.
 */
export {
  CborError,
  CodecError,
  FrameError,
  IdentityError,
  IntentError,
  KpipError,
  MessageError,
  TokenError,
} from "@kpip/protocol";

/**
 * A request larger than the session's negotiated maximum body (CHALLENGE.limits.maxBody):
 * refused before it is sent, or refused by the kernel as too large. Never retried or resent.
 */
export class RequestTooLargeError extends LocalError {
  override name = "RequestTooLargeError";
  constructor(
    /** The REQUEST body's size, in bytes. */
    readonly size: number,
    /** The largest body the kernel accepts on this session, in bytes. */
    readonly limit: number,
    message = `request of ${size} bytes exceeds the kernel's limit of ${limit} bytes per message (maxBody)`,
  ) {
    super(message);
  }
}

/**
 * A chunked upload (`storage.putLarge`) the kernel no longer has after the client reconnected
 * mid-upload: the kernel restarted, and uploads do not outlive it (PROTOCOL §9.7) — a `begin`
 * answered before the restart and resent after it is answered from its dedupe record with the
 * old upload's id, which the new kernel never had. A buffer source is uploaded again from a fresh
 * `begin` (a few times) before this is thrown; an iterable one was consumed, so the caller starts
 * again with a fresh source. `cause`: the kernel's answer that showed it.
 */
export class UploadLostError extends LocalError {
  override name = "UploadLostError";
}
