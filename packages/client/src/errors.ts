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
