"""The intent IR (§7): validation, canonical bytes, and the intent hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from . import cbor
from .errors import CborError, IntentError
from .grammar import is_op, target_error

INTENT_KEYS = ("op", "target", "args", "constraints")


@dataclass(frozen=True)
class Intent:
    op: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    deadline: int | None = None  # absolute, Unix ms (constraints.deadline)

    def to_value(self) -> dict[str, Any]:
        v: dict[str, Any] = {"op": self.op, "target": self.target, "args": self.args}
        if self.deadline is not None:
            v["constraints"] = {"deadline": self.deadline}
        return v


def validate_intent(v: Any) -> None:
    """Checks an intent value in the order of §7.6; raises IntentError (SEMANTIC)."""
    if not isinstance(v, dict):
        raise IntentError("NOT_A_MAP", "an intent must be a map")
    for k in v:
        if k not in INTENT_KEYS:
            raise IntentError("UNKNOWN_FIELD", f"unknown intent field {k!r}")
    op = v.get("op")
    if not isinstance(op, str) or not is_op(op):
        raise IntentError("BAD_OP", f'op must be a dotted lowercase name like "storage.write" (got {op!r})')
    target = v.get("target")
    if not isinstance(target, str):
        raise IntentError("BAD_TARGET", "target must be a text string")
    why = target_error(target)
    if why is not None:
        raise IntentError("BAD_TARGET", why)
    if not isinstance(v.get("args"), dict):
        raise IntentError("BAD_ARGS", "args must be a map")
    if "constraints" in v:
        c = v["constraints"]
        if not isinstance(c, dict):
            raise IntentError("BAD_CONSTRAINTS", "constraints must be a map")
        for k, x in c.items():
            if k != "deadline":
                raise IntentError("BAD_CONSTRAINTS", f"unknown constraint {k!r}")
            if type(x) is not int or not 0 <= x <= 2**53 - 1:
                raise IntentError("BAD_CONSTRAINTS", "deadline must be a non-negative integer (Unix ms)")


def encode_intent(intent: Intent | dict[str, Any]) -> bytes:
    v = intent.to_value() if isinstance(intent, Intent) else intent
    validate_intent(v)
    try:
        return cbor.encode(v)
    except CborError as e:
        raise IntentError(e.code or "MALFORMED", str(e.message)) from None


def decode_intent(data: bytes) -> dict[str, Any]:
    """Intent bytes as the kernel reads them: rejected, never re-encoded, when not canonical."""
    try:
        v = cbor.decode(data)
    except CborError as e:
        raise IntentError(e.code or "MALFORMED", f"intent is not canonical CBOR: {e.message}") from None
    validate_intent(v)
    assert isinstance(v, dict)
    return v


def intent_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
