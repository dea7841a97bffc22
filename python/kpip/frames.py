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
    """Reassembles frames from arbitrary chunks. After an error it accepts nothing more.

    A frame's header is checked against `max_body` when that frame is taken (`next`), not when
    its bytes arrive: a reader whose limit changes with what a frame says (the handshake) feeds
    a read and takes its frames one by one, so a frame following WELCOME in the same read is
    held to the session's maxBody, not the handshake's (as the TypeScript FrameDecoder.pushEach).
    """

    def __init__(self, max_body: int = DEFAULT_MAX_BODY):
        self.max_body = max_body
        self._buf = bytearray()
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        """Buffers a read; its frames are taken with `next`."""
        if not self._failed:
            self._buf += chunk

    def next(self) -> Frame | None:
        """The next complete frame, checked against the limit in force now; None until more is fed."""
        if self._failed or len(self._buf) < HEADER_SIZE:
            return None
        try:
            type_, flags, stream, length = parse_header(bytes(self._buf[:HEADER_SIZE]), self.max_body)
        except FrameError:
            self._failed = True
            self._buf = bytearray()
            raise
        if len(self._buf) < HEADER_SIZE + length:
            return None
        body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
        del self._buf[: HEADER_SIZE + length]
        return Frame(type_, stream, flags, body)

    def push(self, chunk: bytes) -> list[Frame]:
        """Feeds a chunk; returns the frames it completed, each checked against the present limit.
        A reader that changes the limit between frames uses `feed` and `next` instead."""
        self.feed(chunk)
        out: list[Frame] = []
        while (f := self.next()) is not None:
            out.append(f)
        return out

    def end(self) -> None:
        """The stream ended: anything left is a frame cut short."""
        if self._buf and not self._failed:
            raise FrameError("TRUNCATED", f"stream ended inside a frame ({len(self._buf)} bytes left)")
