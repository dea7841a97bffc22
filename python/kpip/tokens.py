"""Capability tokens (§13.1): decode, inspect, attenuate offline, and (with a root key) verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from typing import Any

from . import cbor
from .errors import CborError, TokenError
from .grammar import is_persona_id, is_workspace_id, target_error

TOKEN_VERSION = 1
SIG0_CONTEXT = b"kpip-token-v1\0"
CLAIMS = ("id", "kid", "sub", "rights", "limits", "nbf", "exp", "maxExp", "chain", "workspaces", "domains")
_ID = re.compile(r"[0-9a-f]{32}")
_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LIMIT = re.compile(r"[a-z][a-z0-9_.]*")
_OP_SEG = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Token:
    claims: dict[str, Any]
    claims_bytes: bytes
    caveats: tuple[dict[str, Any], ...]
    caveat_bytes: tuple[bytes, ...]
    sig: bytes

    @property
    def id(self) -> str:
        return str(self.claims["id"])

    def encode(self) -> bytes:
        return cbor.encode([TOKEN_VERSION, self.claims_bytes, list(self.caveat_bytes), self.sig])

    def to_text(self) -> str:
        return base64.urlsafe_b64encode(self.encode()).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    s = s.strip()
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _is_uint(x: Any) -> bool:
    return type(x) is int and 0 <= x <= 2**53 - 1


def _texts(x: Any, ok: Any, most: int = 64) -> bool:
    return isinstance(x, list) and len(x) <= most and all(isinstance(s, str) and ok(s) for s in x)


def is_op_pattern(p: str) -> bool:
    if p == "**":
        return True
    segs = p.split(".")
    last = len(segs) - 1
    return len(p) <= 128 and all(s == "*" or (s == "**" and i == last) or _OP_SEG.fullmatch(s) for i, s in enumerate(segs))


def is_target_pattern(p: str) -> bool:
    if p == "**":
        return True
    if target_error(p, pattern=True) is not None:
        return False
    rest = p.partition("://")[2]
    segs = rest.split("/") if rest else []
    return all(s != "**" or i == len(segs) - 1 for i, s in enumerate(segs))


def _is_limits(x: Any) -> bool:
    return isinstance(x, dict) and all(_LIMIT.fullmatch(k) and _is_uint(v) for k, v in x.items())


def validate_claims(c: Any) -> None:
    if not isinstance(c, dict):
        raise TokenError("MALFORMED", "claims must be a map")
    if not isinstance(c.get("id"), str) or not _ID.fullmatch(c["id"]):
        raise TokenError("MALFORMED", "claims.id must be 32 lowercase hex characters")
    if not isinstance(c.get("kid"), str) or not _KID.fullmatch(c["kid"]):
        raise TokenError("MALFORMED", "claims.kid is invalid")
    if not isinstance(c.get("sub"), str) or not is_persona_id(c["sub"]):
        raise TokenError("MALFORMED", "claims.sub must be a persona id")
    rights = c.get("rights")
    if not isinstance(rights, list) or len(rights) > 64:
        raise TokenError("MALFORMED", "rights must be an array of at most 64 grants")
    for r in rights:
        if not isinstance(r, dict) or not _texts(r.get("ops"), is_op_pattern) or not _texts(r.get("targets"), is_target_pattern):
            raise TokenError("MALFORMED", "each right needs ops (op patterns) and targets (target patterns)")
    if not _is_limits(c.get("limits")):
        raise TokenError("MALFORMED", "claims.limits must map limit names to unsigned integers")
    if not all(_is_uint(c.get(k)) for k in ("nbf", "exp", "maxExp")) or c["exp"] > c["maxExp"]:
        raise TokenError("MALFORMED", "claims need nbf, exp and maxExp (Unix ms) with exp <= maxExp")
    if not _texts(c.get("chain"), lambda s: _ID.fullmatch(s), 32):
        raise TokenError("MALFORMED", "claims.chain must list token ids")
    if "workspaces" in c and not _texts(c["workspaces"], is_workspace_id):
        raise TokenError("MALFORMED", "claims.workspaces is invalid")
    if "domains" in c and not _texts(c["domains"], lambda s: 0 < len(s) <= 128):
        raise TokenError("MALFORMED", "claims.domains is invalid")
    for k in c:
        if k not in CLAIMS:
            raise TokenError("UNKNOWN_CLAIM", f"unknown claim {k!r}")


def validate_caveat(c: Any) -> None:
    if not isinstance(c, dict) or set(c) != {"t", "v"}:
        raise TokenError("MALFORMED", "a caveat is a map {t, v}")
    t, v = c["t"], c["v"]
    checks = {
        "rights": lambda: isinstance(v, list)
        and 0 < len(v) <= 64
        and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and is_op_pattern(p[0]) and isinstance(p[1], str) and is_target_pattern(p[1])
            for p in v
        ),
        "ops": lambda: _texts(v, is_op_pattern) and len(v) > 0,
        "targets": lambda: _texts(v, is_target_pattern) and len(v) > 0,
        "exp": lambda: _is_uint(v),
        "sub": lambda: isinstance(v, str) and is_persona_id(v),
        "limits": lambda: _is_limits(v),
        "workspaces": lambda: _texts(v, is_workspace_id),
        "domains": lambda: _texts(v, lambda s: 0 < len(s) <= 128),
    }
    if not isinstance(t, str) or t not in checks:
        raise TokenError("UNKNOWN_CAVEAT", f"unknown caveat type {t!r}")
    if not checks[t]():
        raise TokenError("MALFORMED", f"caveat {t} has an invalid value")


def _part(data: bytes, what: str) -> dict[str, Any]:
    try:
        v = cbor.decode(data, cbor.Limits(max_depth=6, max_items=4096))
    except CborError as e:
        raise TokenError("MALFORMED", f"token {what} is not canonical CBOR: {e.message}") from None
    if not isinstance(v, dict):
        raise TokenError("MALFORMED", f"token {what} must be a map")
    return v


def decode_token(data: bytes | str) -> Token:
    """Parses a token (wire bytes or base64url text) and checks its structure, not its signature."""
    raw = b64url_decode(data) if isinstance(data, str) else data
    try:
        v = cbor.decode(raw, cbor.Limits(max_depth=8, max_items=4096))
    except CborError as e:
        raise TokenError("MALFORMED", f"token is not canonical CBOR: {e.message}") from None
    if not isinstance(v, list) or len(v) != 4:
        raise TokenError("MALFORMED", "a token is a 4-element array")
    ver, claims_bytes, caveat_bytes, sig = v
    if ver != TOKEN_VERSION or isinstance(ver, bool):
        raise TokenError("UNSUPPORTED_VERSION", f"token version {ver!r} is not supported")
    if not isinstance(claims_bytes, bytes):
        raise TokenError("MALFORMED", "token claims must be a byte string")
    if not isinstance(caveat_bytes, list) or len(caveat_bytes) > 64 or not all(isinstance(c, bytes) for c in caveat_bytes):
        raise TokenError("MALFORMED", "token caveats must be an array of at most 64 byte strings")
    if not isinstance(sig, bytes) or len(sig) != 32:
        raise TokenError("MALFORMED", "token signature must be 32 bytes")
    claims = _part(claims_bytes, "claims")
    validate_claims(claims)
    caveats = []
    for b in caveat_bytes:
        c = _part(b, "caveat")
        validate_caveat(c)
        caveats.append(c)
    return Token(claims, claims_bytes, tuple(caveats), tuple(caveat_bytes), sig)


def chain_step(sig: bytes, caveat_bytes: bytes) -> bytes:
    return hmac.new(sig, caveat_bytes, hashlib.sha256).digest()


def root_signature(root_key: bytes, claims_bytes: bytes) -> bytes:
    return hmac.new(root_key, SIG0_CONTEXT + claims_bytes, hashlib.sha256).digest()


def attenuate(token: Token, t: str, v: Any) -> Token:
    """Adds the caveat {t, v} offline: no key needed, and the result can only be narrower."""
    caveat = {"t": t, "v": v}
    validate_caveat(caveat)
    b = cbor.encode(caveat)
    return replace(token, caveats=(*token.caveats, caveat), caveat_bytes=(*token.caveat_bytes, b), sig=chain_step(token.sig, b))


DERIVED_CONTEXT = b"kpip-token-derived-v1\0"


def derived_id(token: Token) -> str:
    """The token's own id (§13.1): its minted id, or for a token with caveats a hash of its chain."""
    if not token.caveat_bytes:
        return token.claims["id"]
    h = hashlib.sha256(DERIVED_CONTEXT + token.claims["id"].encode("latin-1"))
    for b in token.caveat_bytes:
        h.update(len(b).to_bytes(4, "big") + b)
    return h.hexdigest()[:32]


def verify(token: Token, root_keys: dict[str, bytes]) -> None:
    """Kernel-side check of the chain; raises TokenError UNKNOWN_KEY or BAD_SIGNATURE."""
    key = root_keys.get(token.claims["kid"])
    if key is None:
        raise TokenError("UNKNOWN_KEY", f"unknown key id {token.claims['kid']!r}")
    sig = root_signature(key, token.claims_bytes)
    for b in token.caveat_bytes:
        sig = chain_step(sig, b)
    if not hmac.compare_digest(sig, token.sig):
        raise TokenError("BAD_SIGNATURE", "token signature does not verify")


@dataclass(frozen=True)
class Grant:
    """The effective grant (§13.1): claims intersected with every caveat."""

    id: str
    subject: str
    usable: bool
    nbf: int
    exp: int
    max_exp: int
    rights: list[dict[str, Any]]
    pair_filters: list[list[list[str]]]
    op_filters: list[list[str]]
    target_filters: list[list[str]]
    limits: dict[str, int]
    workspaces: list[str] | None
    domains: list[str] | None


def _within(p: str, sub: str) -> bool:
    return p == sub or p.startswith(sub + "/")


def inspect(token: Token) -> Grant:
    c = token.claims
    sub, usable, exp, max_exp = c["sub"], True, c["exp"], c["maxExp"]
    limits = dict(c["limits"])
    ws, dom = c.get("workspaces"), c.get("domains")
    pair_f: list[list[list[str]]] = []
    op_f: list[list[str]] = []
    tg_f: list[list[str]] = []
    for cv in token.caveats:
        t, v = cv["t"], cv["v"]
        if t == "rights":
            pair_f.append(v)
        elif t == "ops":
            op_f.append(v)
        elif t == "targets":
            tg_f.append(v)
        elif t == "exp":
            exp, max_exp = min(exp, v), min(max_exp, v)
        elif t == "sub":
            if _within(v, sub):
                sub = v
            else:
                usable = False
        elif t == "limits":
            for k, n in v.items():
                limits[k] = min(limits.get(k, n), n)
        elif t == "workspaces":
            ws = [w for w in ws if w in v] if ws is not None else list(v)
        elif t == "domains":
            dom = [d for d in dom if d in v] if dom is not None else list(v)
    return Grant(c["id"], sub, usable, c["nbf"], exp, max_exp, c["rights"], pair_f, op_f, tg_f, limits, ws, dom)


def _match(pattern: list[str], segs: list[str]) -> bool:
    for i, p in enumerate(pattern):
        if p == "**":
            return i == len(pattern) - 1
        if i >= len(segs) or (p != "*" and p != segs[i]):
            return False
    return len(pattern) == len(segs)


def match_op(pattern: str, op: str) -> bool:
    return pattern == "**" or _match(pattern.split("."), op.split("."))


def match_target(pattern: str, target: str) -> bool:
    if pattern == "**":
        return True
    ps, _, pr = pattern.partition("://")
    ts, _, tr = target.partition("://")
    return ps == ts and _match(pr.split("/") if pr else [], tr.split("/") if tr else [])


def allows(g: Grant, op: str, target: str) -> bool:
    """Would the grant allow `op` on `target`? (Rights and filters; time and subject aside.)"""
    if not any(any(match_op(p, op) for p in r["ops"]) and any(match_target(p, target) for p in r["targets"]) for r in g.rights):
        return False
    if not all(any(match_op(o, op) and match_target(x, target) for o, x in f) for f in g.pair_filters):
        return False
    return all(any(match_op(p, op) for p in f) for f in g.op_filters) and all(
        any(match_target(p, target) for p in f) for f in g.target_filters
    )
