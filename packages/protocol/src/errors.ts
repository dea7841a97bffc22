/** Response status codes (KPIP §11). */
export const Status = {
  SUCCESS: "SUCCESS",
  FAILURE: "FAILURE",
  PARTIAL: "PARTIAL",
  DEFERRED: "DEFERRED",
} as const;
export type Status = (typeof Status)[keyof typeof Status];
export const STATUSES: readonly Status[] = Object.values(Status);

/**
 * Error classes (KPIP §12 plus AUTH and PROTOCOL).
 * - SEMANTIC: the intent is malformed or makes no sense for the op (bad args, CAS conflict, non-canonical intent).
 * - PERMISSION: a valid capability that does not grant this op on this target.
 * - RESOURCE: a limit or quota is exhausted; transient, may be retried.
 * - CAPABILITY: the capability is missing, malformed, expired, revoked, or not usable by this persona.
 * - INTERNAL: the kernel failed; transient, may be retried.
 * - AUTH: identity or session not established, attestation failed, persona mismatch.
 * - PROTOCOL: malformed frame or message, unsupported version, out-of-order message.
 */
export const ErrorClass = {
  SEMANTIC: "SEMANTIC",
  PERMISSION: "PERMISSION",
  RESOURCE: "RESOURCE",
  CAPABILITY: "CAPABILITY",
  INTERNAL: "INTERNAL",
  AUTH: "AUTH",
  PROTOCOL: "PROTOCOL",
} as const;
export type ErrorClass = (typeof ErrorClass)[keyof typeof ErrorClass];
export const ERROR_CLASSES: readonly ErrorClass[] = Object.values(ErrorClass);

/** Classes a client may retry with the same request id (the kernel dedupes). */
export const RETRYABLE_CLASSES: ReadonlySet<ErrorClass> = new Set([ErrorClass.RESOURCE, ErrorClass.INTERNAL]);

/**
 * Fatal handshake ERROR codes (RESOURCE) a client SHOULD try again with backoff within its
 * connect timeout (PROTOCOL §8.8): the handshake was shed under a connection flood, or the
 * persona's tree opened sessions faster than the kernel's rate. Both pass in moments.
 */
export const HANDSHAKE_RETRY_CODES: ReadonlySet<string> = new Set(["HANDSHAKE_SHED", "SESSION_RATE_LIMITED"]);

/** The error shape carried on the wire, in RESPONSE and ERROR bodies. */
export interface WireError {
  class: ErrorClass;
  message: string;
}

/**
 * An error reported by the peer over the wire (a FAILURE response or an ERROR frame).
 * Local problems detected while decoding are {@link CodecError}s instead.
 */
export class KpipError extends Error {
  override name = "KpipError";
  readonly errorClass: ErrorClass;
  readonly requestId: number | undefined;
  readonly code: string | undefined;
  /** A FAILURE's payload, where the op gives one (op.result: the failed op's status and result). */
  readonly payload: unknown;
  constructor(
    errorClass: ErrorClass,
    message: string,
    opts: { requestId?: number; code?: string; cause?: unknown; payload?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.errorClass = errorClass;
    this.requestId = opts.requestId;
    this.code = opts.code;
    this.payload = opts.payload;
  }
  get retryable(): boolean {
    return RETRYABLE_CLASSES.has(this.errorClass);
  }
}

/**
 * Input that failed local decoding or validation. `errorClass` says which wire class a
 * receiver answers with; `code` names the exact rule that was broken.
 */
export class CodecError extends Error {
  override name = "CodecError";
  readonly errorClass: ErrorClass;
  readonly code: string;
  constructor(errorClass: ErrorClass, code: string, message: string) {
    super(message);
    this.errorClass = errorClass;
    this.code = code;
  }
}

/** A frame header or framing rule was broken (always PROTOCOL; the stream is unusable afterwards). */
export class FrameError extends CodecError {
  override name = "FrameError";
  constructor(code: FrameErrorCode, message: string) {
    super(ErrorClass.PROTOCOL, code, message);
  }
}
export type FrameErrorCode =
  | "BAD_MAGIC"
  | "UNSUPPORTED_VERSION"
  | "UNKNOWN_TYPE"
  | "UNKNOWN_FLAGS"
  | "RESERVED_NONZERO"
  | "TOO_LARGE"
  | "TRUNCATED"
  | "DECODER_FAILED";

/** The bytes are not KPIP canonical CBOR. */
export class CborError extends CodecError {
  override name = "CborError";
  constructor(code: CborErrorCode, message: string, errorClass: ErrorClass = ErrorClass.PROTOCOL) {
    super(errorClass, code, message);
  }
}
export type CborErrorCode =
  | "MALFORMED"
  | "TRUNCATED"
  | "TRAILING_BYTES"
  | "NON_CANONICAL"
  | "UNSORTED_KEYS"
  | "DUPLICATE_KEY"
  | "INDEFINITE_LENGTH"
  | "UNSUPPORTED_TYPE"
  | "UNSUPPORTED_TAG"
  | "BAD_KEY"
  | "INVALID_UTF8"
  | "TOO_DEEP"
  | "TOO_MANY_ITEMS";

/** An intent broke the intent grammar (always SEMANTIC). */
export class IntentError extends CodecError {
  override name = "IntentError";
  constructor(code: string, message: string) {
    super(ErrorClass.SEMANTIC, code, message);
  }
}

/** A message body does not have the shape its type requires (always PROTOCOL). */
export class MessageError extends CodecError {
  override name = "MessageError";
  constructor(code: string, message: string) {
    super(ErrorClass.PROTOCOL, code, message);
  }
}

export function isErrorClass(v: unknown): v is ErrorClass {
  return typeof v === "string" && (ERROR_CLASSES as readonly string[]).includes(v);
}
export function isStatus(v: unknown): v is Status {
  return typeof v === "string" && (STATUSES as readonly string[]).includes(v);
}
