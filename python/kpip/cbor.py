"""The KPIP canonical CBOR profile (spec §5): one value, one encoding.

Data model: int (−2⁶⁴ … 2⁶⁴−1), bytes, str, list, dict with str keys, bool, None.
Decoding verifies the profile in one left-to-right pass (first failure wins, §5.5) and never
repairs anything; a body that decodes re-encodes to the identical bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Union

from .errors import CborError

CborValue = Union[int, bytes, str, bool, None, list[Any], dict[str, Any]]

MAX_DEPTH = 32
MAX_ITEMS = 100_000
_U64 = 1 << 64


@dataclass(frozen=True)
class Limits:
    max_depth: int = MAX_DEPTH
    max_items: int = MAX_ITEMS


DEFAULT_LIMITS = Limits()


def _head(major: int, n: int) -> bytes:
    m = major << 5
    if n < 24:
        return bytes([m | n])
    if n < 0x100:
        return bytes([m | 24, n])
    if n < 0x10000:
        return bytes([m | 25]) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes([m | 26]) + struct.pack(">I", n)
    return bytes([m | 27]) + struct.pack(">Q", n)


def _key_order(k: bytes) -> tuple[int, bytes]:
    return (len(k), k)


def _utf8(s: str) -> bytes:
    """`s` as UTF-8; a lone surrogate (what os.fsdecode and surrogateescape make of bytes that are
    not UTF-8) is CborError INVALID_UTF8, the client's typed error, not a bare UnicodeEncodeError."""
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CborError("INVALID_UTF8", f"text holds a lone surrogate at {e.start} (no Unicode character): it has no UTF-8 encoding") from None


def encode(value: CborValue) -> bytes:
    """Canonical CBOR of `value`; raises CborError for anything outside the data model."""
    out: list[bytes] = []
    _enc(value, out, 0)
    return b"".join(out)


def _container_at(depth: int) -> None:
    """As the decoder (and the TypeScript encoder): a container at depth 32 or more is TOO_DEEP, even
    an empty one, which only the check of its elements' depth let through (a body no decoder takes)."""
    if depth >= MAX_DEPTH:
        raise CborError("TOO_DEEP", f"nesting deeper than {MAX_DEPTH}")


def _enc(v: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError("TOO_DEEP", f"nesting deeper than {MAX_DEPTH}")
    if v is None:
        out.append(b"\xf6")
    elif v is True:
        out.append(b"\xf5")
    elif v is False:
        out.append(b"\xf4")
    elif isinstance(v, int):
        if 0 <= v < _U64:
            out.append(_head(0, v))
        elif -_U64 <= v < 0:
            out.append(_head(1, -1 - v))
        else:
            raise CborError("UNSUPPORTED_TYPE", f"integer {v} is outside −2^64 … 2^64−1")
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out.append(_head(2, len(b)))
        out.append(b)
    elif isinstance(v, str):
        b = _utf8(v)
        out.append(_head(3, len(b)))
        out.append(b)
    elif isinstance(v, (list, tuple)):
        _container_at(depth)
        out.append(_head(4, len(v)))
        for x in v:
            _enc(x, out, depth + 1)
    elif isinstance(v, dict):
        _container_at(depth)
        entries: list[tuple[bytes, Any]] = []
        for k, x in v.items():
            if not isinstance(k, str) or k == "__proto__":
                raise CborError("BAD_KEY", f"map key {k!r} is not allowed (text only, never __proto__)")
            kb = _utf8(k)
            entries.append((_head(3, len(kb)) + kb, x))
        entries.sort(key=lambda e: _key_order(e[0]))
        out.append(_head(5, len(entries)))
        for kb, x in entries:
            out.append(kb)
            _enc(x, out, depth + 1)
    else:
        raise CborError("UNSUPPORTED_TYPE", f"{type(v).__name__} is not in the KPIP data model (no floats)")


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> CborValue:
    """Decodes exactly one canonical item; raises CborError with the §5.5 code on any failure."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        # bytes(n) of an integer n would be n zero bytes, allocated here.
        raise TypeError(f"CBOR input must be bytes, not {type(data).__name__}")
    d = _Decoder(bytes(data), limits)
    v = d.item(0)
    if d.pos != len(d.b):
        raise CborError("TRAILING_BYTES", f"{len(d.b) - d.pos} bytes after the data item")
    return v


class _Decoder:
    def __init__(self, b: bytes, limits: Limits):
        self.b = b
        self.pos = 0
        self.items = 0
        self.limits = limits

    def need(self, n: int) -> None:
        if self.pos + n > len(self.b):
            raise CborError("TRUNCATED", "data item runs past the end of the input")

    def count(self) -> None:
        self.items += 1
        if self.items > self.limits.max_items:
            raise CborError("TOO_MANY_ITEMS", f"more than {self.limits.max_items} data items")

    def head(self) -> tuple[int, int]:
        """Reads a head: (major type, argument). For major 7 the argument is the additional info."""
        self.need(1)
        ib = self.b[self.pos]
        self.pos += 1
        major, ai = ib >> 5, ib & 31
        if major == 7:
            return 7, ai
        if ai < 24:
            return major, ai
        if ai in (24, 25, 26, 27):
            size = 1 << (ai - 24)
            self.need(size)
            arg = int.from_bytes(self.b[self.pos : self.pos + size], "big")
            self.pos += size
            if arg < (24 if ai == 24 else 1 << (8 * (size // 2))):
                raise CborError("NON_CANONICAL", "integer or length not in its shortest form")
            return major, arg
        if ai == 31:
            raise CborError("INDEFINITE_LENGTH", "indefinite-length items are not canonical")
        raise CborError("MALFORMED", f"reserved additional information {ai}")

    def text(self, n: int) -> str:
        self.need(n)
        raw = self.b[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")  # strict: rejects overlong forms, surrogates, truncation
        except UnicodeDecodeError:
            raise CborError("INVALID_UTF8", "text string is not valid UTF-8") from None

    def item(self, depth: int) -> CborValue:
        self.count()
        major, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            self.need(arg)
            v = self.b[self.pos : self.pos + arg]
            self.pos += arg
            return v
        if major == 3:
            return self.text(arg)
        if major == 4:
            if depth >= self.limits.max_depth:
                raise CborError("TOO_DEEP", f"nesting deeper than {self.limits.max_depth}")
            self.need(arg)  # every element takes at least one byte
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            if depth >= self.limits.max_depth:
                raise CborError("TOO_DEEP", f"nesting deeper than {self.limits.max_depth}")
            self.need(arg * 2)
            out: dict[str, Any] = {}
            prev: bytes | None = None
            for _ in range(arg):
                self.count()
                start = self.pos
                kmajor, klen = self.head()
                if kmajor != 3:
                    raise CborError("BAD_KEY", "map keys must be text strings")
                key = self.text(klen)
                if key == "__proto__":
                    raise CborError("BAD_KEY", 'the map key "__proto__" is not allowed')
                kb = self.b[start : self.pos]
                if prev is not None:
                    if kb == prev:
                        raise CborError("DUPLICATE_KEY", f"duplicate map key {key!r}")
                    if kb < prev:  # bytewise order of the encoded key = length first, then bytes
                        raise CborError("UNSORTED_KEYS", f"map key {key!r} is out of canonical order")
                prev = kb
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            raise CborError("UNSUPPORTED_TAG", f"tag {arg} is not allowed")
        if arg == 20:
            return False
        if arg == 21:
            return True
        if arg == 22:
            return None
        if arg == 23:
            raise CborError("UNSUPPORTED_TYPE", "undefined is not allowed")
        if arg in (25, 26, 27):
            raise CborError("UNSUPPORTED_TYPE", "floating-point numbers are not allowed")
        if arg == 31:
            raise CborError("MALFORMED", "unexpected break")
        raise CborError("UNSUPPORTED_TYPE", f"simple value {arg} is not allowed")
