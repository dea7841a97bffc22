"""Errors. Two families, kept apart so a caller can tell who spoke:

* :class:`KpipError` — an error class and code the protocol defines: refusals the kernel sent
  (a FAILURE response or an ERROR frame) and input this library refused before sending, with
  the class the kernel would have answered with (CBOR, frame, message, intent, token, identity).
* :class:`LocalError` — the client itself gave up: no kernel, deadline passed, cancelled,
  the kernel broke the protocol, a token could not be refreshed.
"""

from __future__ import annotations

from typing import Any

ERROR_CLASSES = ("SEMANTIC", "PERMISSION", "RESOURCE", "CAPABILITY", "INTERNAL", "AUTH", "PROTOCOL")
RETRYABLE = frozenset({"RESOURCE", "INTERNAL"})


#: Codes of a refused handshake that ask the persona to try again (§8.8): the kernel shed the
#: half-open handshake, or the persona's tree opens sessions faster than the kernel allows.
HANDSHAKE_RETRY_CODES = frozenset({"HANDSHAKE_SHED", "SESSION_RATE_LIMITED"})


class KpipError(Exception):
    """An error with a KPIP error class (§10) and, when known, a code and request id."""

    error_class: str = "INTERNAL"

    def __init__(
        self,
        error_class: str,
        message: str,
        code: str | None = None,
        request_id: int | None = None,
        payload: Any = None,
    ):
        super().__init__(message)
        self.error_class = error_class
        self.code = code
        self.request_id = request_id
        self.message = message
        # A FAILURE's payload, where the op gives one (op.result: the failed op's status and result).
        self.payload = payload

    @property
    def retryable(self) -> bool:
        return self.error_class in RETRYABLE

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.error_class}{code}: {self.message}"


class CborError(KpipError):
    """Bytes outside the canonical CBOR profile (§5.5); PROTOCOL in an envelope."""

    def __init__(self, code: str, message: str):
        super().__init__("PROTOCOL", message, code)


class FrameError(KpipError):
    """A framing error (§4.6): always PROTOCOL and fatal."""

    def __init__(self, code: str, message: str):
        super().__init__("PROTOCOL", message, code)


class MessageError(KpipError):
    """A body of the wrong shape (§6.2): MISSING_FIELD or BAD_FIELD."""

    def __init__(self, code: str, message: str):
        super().__init__("PROTOCOL", message, code)


class IntentError(KpipError):
    """An intent the kernel would refuse (§7.6): always SEMANTIC."""

    def __init__(self, code: str, message: str):
        super().__init__("SEMANTIC", message, code)


class TokenError(KpipError):
    """A malformed or failing capability token (§13.1): always CAPABILITY."""

    def __init__(self, code: str, message: str):
        super().__init__("CAPABILITY", message, code)


class IdentityError(KpipError):
    """An identity file that cannot be used."""

    def __init__(self, message: str):
        super().__init__("AUTH", message, "BAD_IDENTITY")


# Errors by class, so `except PermissionDenied` reads naturally; raised for FAILURE responses
# and fatal ERROR frames. Each is also a KpipError.
class SemanticError(KpipError):
    pass


class PermissionDenied(KpipError):
    pass


class ResourceExhausted(KpipError):
    pass


class CapabilityError(KpipError):
    pass


class InternalError(KpipError):
    pass


class AuthError(KpipError):
    pass


class ProtocolError(KpipError):
    pass


_BY_CLASS: dict[str, type[KpipError]] = {
    "SEMANTIC": SemanticError,
    "PERMISSION": PermissionDenied,
    "RESOURCE": ResourceExhausted,
    "CAPABILITY": CapabilityError,
    "INTERNAL": InternalError,
    "AUTH": AuthError,
    "PROTOCOL": ProtocolError,
}


def wire_error(
    error_class: str, message: str, code: str | None = None, request_id: int | None = None, payload: Any = None
) -> KpipError:
    """The typed exception for an error the kernel sent."""
    return _BY_CLASS.get(error_class, KpipError)(error_class, message, code, request_id, payload)


class LocalError(Exception):
    """Raised by the client itself; the kernel never sent it."""


class KernelUnavailable(LocalError):
    """No kernel could be reached, or the session is gone and the call could not wait."""


class UntrustedSocket(LocalError):
    """The kernel at the Unix socket runs as another user (SO_PEERCRED; where there is none, the
    socket file belongs to another user). A kernel's socket is its own user's (0600 in a 0700
    directory, PROTOCOL §3.4): one of another user's at the path was put there by them, a fake
    kernel that would get the identity's signature and every token. Nothing is sent."""


class DeadlineExceeded(LocalError):
    """The call's deadline passed before an answer arrived."""


class Cancelled(LocalError):
    """The call was cancelled, or the client closed under it."""


class ProtocolViolation(LocalError):
    """The kernel broke the protocol (malformed frame, message out of order); `code` names the
    PROTOCOL code this client sent in its ERROR (e.g. ``SHM_BAD_CHECKSUM``), when it sent one."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class TokenRefreshFailed(LocalError):
    """A held token could not be refreshed before it expires."""
