"""Identifier and target grammars (§7.2–§7.4)."""

from __future__ import annotations

import re

OP_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
PCHAR_RE = re.compile(r"[A-Za-z0-9\-_.~!$&'()+,;=:@*]+")
SCHEMES = ("obj", "agent", "topic", "op", "token", "persona", "kernel")
MAX_OP = 128
MAX_TARGET = 2048


def _size(s: str) -> int:
    """UTF-8 bytes of `s`, a lone surrogate counted as its three bytes: never a UnicodeEncodeError
    (the patterns that follow refuse any text that is not ASCII)."""
    return len(s.encode("utf-8", "surrogatepass"))


def is_op(op: str) -> bool:
    return _size(op) <= MAX_OP and OP_RE.fullmatch(op) is not None


def is_name(s: str) -> bool:
    return NAME_RE.fullmatch(s) is not None and ".." not in s


def is_persona_id(s: str) -> bool:
    parts = s.split("/")
    return 0 < _size(s) <= 255 and len(parts) <= 8 and all(is_name(p) for p in parts)


def is_workspace_id(s: str) -> bool:
    return is_name(s)


def target_error(target: str, pattern: bool = False) -> str | None:
    """Why `target` breaks the grammar, or None when it is valid."""
    if _size(target) > MAX_TARGET:
        return f"target longer than {MAX_TARGET} bytes"
    scheme, sep, rest = target.partition("://")
    if not sep:
        return "target must look like scheme://rest"
    if scheme not in SCHEMES:
        return f"unknown target scheme {scheme!r}"
    if rest == "":
        return None if scheme == "kernel" else f"target {scheme}:// needs a resource name"
    segs = rest.split("/")
    for seg in segs:
        if seg == "":
            return "empty path segment (leading, trailing or doubled '/')"
        if seg in (".", ".."):
            return f"path segment {seg!r} is not allowed"
        if PCHAR_RE.fullmatch(seg) is None:
            return f"path segment {seg!r} has a character outside the target alphabet"
        if "*" in seg and seg not in ("*", "**"):
            return "'*' may only form a whole segment ('*' or '**')"
    wild = pattern and segs[0] in ("*", "**")
    if scheme in ("obj", "agent", "persona") and not wild and not is_name(segs[0]):
        return f"{scheme}:// must start with a lowercase name"
    return None


def is_target(target: str) -> bool:
    return target_error(target) is None
