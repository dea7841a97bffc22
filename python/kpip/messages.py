"""Message bodies (§6): shapes, encoding and decoding of the eleven message types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from . import cbor
from .errors import ERROR_CLASSES, MessageError
from .frames import Frame, encode_frame
from .grammar import is_persona_id, is_workspace_id

STATUSES = ("SUCCESS", "FAILURE", "PARTIAL", "DEFERRED")
MAX_UINT = 2**53 - 1

Check = Callable[[Any, str], None]


def _fail(path: str, what: str) -> None:
    raise MessageError("BAD_FIELD", f"{path} must be {what}")


def _uint(v: Any, p: str) -> None:
    if type(v) is not int or not 0 <= v <= MAX_UINT:
        _fail(p, "an unsigned integer")


def _text(n: int) -> Check:
    def check(v: Any, p: str) -> None:
        # Counted in characters: never stricter than the spec's UTF-8 bytes (§6.2).
        if not isinstance(v, str) or len(v) > n:
            _fail(p, f"a text string of at most {n} characters")

    return check


# Control characters (C0, DEL, C1), bidirectional formatting characters, and what a terminal draws as
# nothing or as a line break: format characters (zero-width space and joiners, the BOM, soft hyphen, tag
# characters), default-ignorable code points (variation selectors, fillers) and the line and paragraph
# separators (§6.2 `label(N)`, listed there as code points): in text an operator later reads (the audit
# record, a terminal) they could forge lines, hide text or make one name look like another.
UNPRINTABLE = re.compile(
    "[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f"
    "\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def _label(n: int) -> Check:
    def check(v: Any, p: str) -> None:
        if not isinstance(v, str) or len(v) > n or UNPRINTABLE.search(v):
            _fail(p, f"a text string of at most {n} characters, none of them a control, format, invisible or bidirectional formatting character")

    return check


def _bytes(lo: int, hi: int = 1 << 62) -> Check:
    def check(v: Any, p: str) -> None:
        if not isinstance(v, bytes) or not lo <= len(v) <= hi:
            _fail(p, f"a byte string of {lo}..{hi} bytes")

    return check


def _bool(v: Any, p: str) -> None:
    if not isinstance(v, bool):
        _fail(p, "a boolean")


def _map(v: Any, p: str) -> None:
    if not isinstance(v, dict):
        _fail(p, "a map")


def _any(v: Any, p: str) -> None:
    pass


def _array(item: Check, n: int) -> Check:
    def check(v: Any, p: str) -> None:
        if not isinstance(v, list) or len(v) > n:
            _fail(p, f"an array of at most {n} items")
        for i, x in enumerate(v):
            item(x, f"{p}[{i}]")

    return check


def _persona(v: Any, p: str) -> None:
    if not isinstance(v, str) or not is_persona_id(v):
        _fail(p, "a persona id")


def _workspace(v: Any, p: str) -> None:
    if not isinstance(v, str) or not is_workspace_id(v):
        _fail(p, "a workspace id")


def _one_of(values: tuple[str, ...]) -> Check:
    def check(v: Any, p: str) -> None:
        if v not in values or not isinstance(v, str):
            _fail(p, "one of " + ", ".join(values))

    return check


def _cap_ref(v: Any, p: str) -> None:
    if isinstance(v, int) and not isinstance(v, bool):
        _uint(v, p)
    elif isinstance(v, bytes):
        _bytes(1, 8192)(v, p)
    else:
        _fail(p, "a handle (unsigned integer) or a token (byte string)")


def _shape(fields: dict[str, tuple[Check, bool]]) -> Check:
    def check(v: Any, p: str) -> None:
        _map(v, p)
        for name, (f, required) in fields.items():
            if name not in v:
                if required:
                    raise MessageError("MISSING_FIELD", f"{p}.{name} is required")
                continue
            f(v[name], f"{p}.{name}")

    return check


SHAPES: dict[str, Check] = {
    "HELLO": _shape(
        {
            "versions": (_array(_uint, 16), True),
            "persona": (_persona, True),
            "publicKey": (_bytes(32, 32), True),
            "instance": (_bytes(16, 16), True),
            "features": (_array(_text(64), 32), True),
            "client": (_label(256), False),
            "maxBody": (_uint, False),
        }
    ),
    "CHALLENGE": _shape(
        {
            "version": (_uint, True),
            "session": (_text(128), True),
            "nonce": (_bytes(32, 32), True),
            "kernel": (_text(128), True),
            "heartbeatMs": (_uint, True),
            "limits": (
                _shape({"maxBody": (_uint, True), "maxInFlight": (_uint, True), "dedupeWindowMs": (_uint, True)}),
                True,
            ),
            "features": (_array(_text(64), 32), True),
        }
    ),
    "ATTEST": _shape(
        {
            "signature": (_bytes(64, 64), True),
            "tokens": (_array(_bytes(1, 8192), 64), True),
            "measurements": (_map, False),
        }
    ),
    "WELCOME": _shape(
        {
            "persona": (_persona, True),
            "handles": (_array(_uint, 64), True),
            "refused": (
                _array(_shape({"index": (_uint, True), "code": (_text(64), True), "message": (_text(1024), True)}), 64),
                False,
            ),
        }
    ),
    "REQUEST": _shape(
        {
            "version": (_uint, True),
            "persona": (_persona, True),
            "id": (_uint, True),
            "intent": (_bytes(1), True),
            "context": (
                _shape(
                    {
                        "persona": (_persona, True),
                        "workspace": (_workspace, False),
                        "execution": (_label(128), False),
                        "domain": (_label(128), False),
                        "traceparent": (_label(128), False),
                    }
                ),
                True,
            ),
            "caps": (_array(_cap_ref, 64), True),
        }
    ),
    "RESPONSE": _shape(
        {
            "version": (_uint, True),
            "id": (_uint, True),
            "status": (_one_of(STATUSES), True),
            "error": (_one_of(ERROR_CLASSES), False),
            "message": (_text(65536), False),
            "payload": (_any, False),
        }
    ),
    "EVENT": _shape(
        {
            "subscription": (_uint, True),
            "topic": (_text(2048), True),
            "seq": (_uint, True),
            "data": (_any, False),
            "gap": (_uint, False),
            "ended": (_text(1024), False),
        }
    ),
    "PING": _shape({"seq": (_uint, True)}),
    "PONG": _shape({"seq": (_uint, True)}),
    "GOODBYE": _shape({"reason": (_text(1024), False)}),
    "ERROR": _shape(
        {
            "class": (_one_of(ERROR_CLASSES), True),
            "code": (_text(64), True),
            "message": (_text(65536), True),
            "id": (_uint, False),
            "fatal": (_bool, True),
        }
    ),
}


def validate(type_: str, body: Any) -> None:
    """Checks a decoded body against its type's shape; unknown fields are ignored (§6.2)."""
    SHAPES[type_](body, type_.lower())
    if type_ == "RESPONSE":
        failed = body["status"] == "FAILURE"
        if failed != ("error" in body):
            raise MessageError("BAD_FIELD", "response.error is present exactly when status is FAILURE")
        if failed and "message" not in body:
            raise MessageError("MISSING_FIELD", "response.message is required on FAILURE")


@dataclass(frozen=True)
class Message:
    type: str
    body: dict[str, Any]
    stream: int = 0
    size: int = 0  # the frame body's bytes (what a subscription's buffer counts)


def decode_message(f: Frame) -> Message:
    """Frame → validated message; raises CborError or MessageError (both PROTOCOL)."""
    body = cbor.decode(f.body)
    validate(f.type, body)
    assert isinstance(body, dict)
    return Message(f.type, body, f.stream, len(f.body))


def encode_body(type_: str, body: dict[str, Any]) -> bytes:
    validate(type_, body)
    return cbor.encode(body)


def encode_message(type_: str, body: dict[str, Any], stream: int = 0) -> bytes:
    return encode_frame(type_, encode_body(type_, body), stream)
