"""Frames (§4): a 16-byte header, then one canonical CBOR body."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import FrameError

MAGIC = b"KP"
FRAME_VERSION = 1
HEADER_SIZE = 16
DEFAULT_MAX_BODY = 16 * 1024 * 1024
FLAG_SHM = 0x01

TYPES = {
    1: "HELLO",
    2: "CHALLENGE",
    3: "ATTEST",
    4: "WELCOME",
    5: "REQUEST",
    6: "RESPONSE",
    7: "EVENT",
    8: "PING",
    9: "PONG",
    10: "GOODBYE",
    11: "ERROR",
}
TYPE_CODES = {name: code for code, name in TYPES.items()}

_HEADER = struct.Struct(">2sBBB3sII")


@dataclass(frozen=True)
class Frame:
    type: str
    stream: int
    flags: int
    body: bytes


def encode_frame(type_: str, body: bytes, stream: int = 0, flags: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, FRAME_VERSION, TYPE_CODES[type_], flags, b"\0\0\0", stream, len(body)) + body


def parse_header(h: bytes, max_body: int) -> tuple[str, int, int, int]:
    """Checks a header in the order of §4.6; returns (type, flags, stream, length)."""
    magic, version, type_code, flags, reserved, stream, length = _HEADER.unpack(h)
    if magic != MAGIC:
        raise FrameError("BAD_MAGIC", "frame does not start with the KPIP magic")
    if version != FRAME_VERSION:
        raise FrameError("UNSUPPORTED_VERSION", f"frame-layout version {version} is not supported")
    if type_code not in TYPES:
        raise FrameError("UNKNOWN_TYPE", f"unknown message type {type_code}")
    if flags & ~FLAG_SHM:
        raise FrameError("UNKNOWN_FLAGS", f"unassigned flag bits set: {flags:#04x}")
    if reserved != b"\0\0\0":
        raise FrameError("RESERVED_NONZERO", "reserved header bytes are not zero")
    if length > max_body:
        raise FrameError("TOO_LARGE", f"body of {length} bytes exceeds the maximum of {max_body}")
    return TYPES[type_code], flags, stream, length


class FrameDecoder:
    """Reassembles frames from arbitrary chunks. After an error it accepts nothing more."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY):
        self.max_body = max_body
        self._buf = bytearray()
        self._failed = False

    def push(self, chunk: bytes) -> list[Frame]:
        if self._failed:
            return []
        self._buf += chunk
        out: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            try:
                type_, flags, stream, length = parse_header(bytes(self._buf[:HEADER_SIZE]), self.max_body)
            except FrameError:
                self._failed = True
                raise
            if len(self._buf) < HEADER_SIZE + length:
                break
            body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
            del self._buf[: HEADER_SIZE + length]
            out.append(Frame(type_, stream, flags, body))
        return out

    def end(self) -> None:
        """The stream ended: anything left is a frame cut short."""
        if self._buf and not self._failed:
            raise FrameError("TRUNCATED", f"stream ended inside a frame ({len(self._buf)} bytes left)")
