"""kpip: a Python persona runtime for the Kernel–Persona IPC Protocol (spec/PROTOCOL.md)."""

from . import cbor
from .client import Backoff, Client, Result
from .errors import (
    AuthError,
    Cancelled,
    CapabilityError,
    CborError,
    DeadlineExceeded,
    FrameError,
    IdentityError,
    IntentError,
    InternalError,
    KernelUnavailable,
    KpipError,
    LocalError,
    MessageError,
    PermissionDenied,
    ProtocolError,
    ProtocolViolation,
    ResourceExhausted,
    SemanticError,
    TokenError,
    TokenRefreshFailed,
    UntrustedSocket,
)
from .frames import Frame, FrameDecoder, encode_frame
from .identity import Identity, attestation_transcript
from .intent import Intent, decode_intent, encode_intent, intent_hash
from .messages import Message, decode_message, encode_message
from .subscription import Event, Subscription
from .sync import SyncClient
from .tokens import Token, attenuate, decode_token, inspect

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Client",
    "Event",
    "Result",
    "Subscription",
    "SyncClient",
    "AuthError",
    "Cancelled",
    "CapabilityError",
    "CborError",
    "DeadlineExceeded",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Identity",
    "IdentityError",
    "Intent",
    "IntentError",
    "InternalError",
    "KernelUnavailable",
    "UntrustedSocket",
    "KpipError",
    "LocalError",
    "Message",
    "MessageError",
    "PermissionDenied",
    "ProtocolError",
    "ProtocolViolation",
    "ResourceExhausted",
    "SemanticError",
    "Token",
    "TokenError",
    "TokenRefreshFailed",
    "attenuate",
    "attestation_transcript",
    "cbor",
    "decode_intent",
    "decode_message",
    "decode_token",
    "encode_frame",
    "encode_intent",
    "encode_message",
    "inspect",
]
