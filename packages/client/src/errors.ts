import { KpipError } from "@kpip/protocol";

/**
 * Local errors: raised by the client itself, never sent by the kernel. Errors the kernel
 * reports arrive as {@link KpipError} (with the wire error class and the request id).
 */
export class LocalError extends Error {
  override name = "LocalError";
}

/** No kernel could be reached (or the session is gone and the call cannot wait). */
export class KernelUnavailableError extends LocalError {
  override name = "KernelUnavailableError";
}

/** The call's deadline passed before an answer arrived. */
export class TimeoutError extends LocalError {
  override name = "TimeoutError";
}

/** The caller aborted the call. */
export class CancelledError extends LocalError {
  override name = "CancelledError";
}

/** The kernel broke the protocol (malformed frame, unexpected message). */
export class ProtocolViolationError extends LocalError {
  override name = "ProtocolViolationError";
}

export { KpipError };
