"""The bookkeeping of calls and held tokens, and the backoff policy."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, ProtocolViolation
from .messages import MAX_UINT
from .tokens import Token


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: a delay drawn from [0, min(max, initial·2^attempt))."""

    initial: float
    max: float

    def delay(self, attempt: int) -> float:
        return random.random() * min(self.max, self.initial * 2 ** min(attempt, 30))


@dataclass(frozen=True)
class Result:
    """A non-failure answer (SUCCESS, PARTIAL or DEFERRED); FAILURE is raised instead."""

    status: str
    payload: Any = None

    def field(self, op: str, name: str, kind: str) -> Any:
        """``payload[name]`` of an answer the client itself acts on, checked first: ``kind`` is
        "handle" (an unsigned integer ≥ 1, at most 2^53 − 1) or "bytes". A kernel's answer
        without it, or of another type, is a ProtocolViolation: such a handle would go into the
        caps of every later call, such a "token" (an integer n) be decoded as n zero bytes."""
        v = self.payload.get(name) if isinstance(self.payload, dict) else None
        if kind == "handle":
            ok = type(v) is int and 1 <= v <= MAX_UINT
        else:
            ok = isinstance(v, bytes)
        if not ok:
            shown = type(v).__name__ if v is not None else "nothing"
            raise ProtocolViolation(f"the kernel answered {op} with {shown} as payload.{name}, not a {kind}")
        return v


@dataclass(eq=False)
class Pending:
    id: int
    stream: int
    intent: bytes
    context: dict[str, Any]
    caps: list[Any] | None
    deadline: float | None  # monotonic seconds
    future: asyncio.Future[dict[str, Any]]
    attempts: int = 1
    auth_retried: bool = False
    sent: bool = False  # on the current link; changed only by CallTable.mark_sent, which counts them
    size: int = 0  # the REQUEST body's bytes, when last sent
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Held:
    raw: bytes
    token: Token
    handle: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Refreshes in a row that gave a token already due for refresh, or due again within `floor` (see TokenRefresher).
    futile: int = 0
    # Seconds: taken from the token the client was given, at its first schedule (TokenRefresher._floor).
    floor: float | None = None


class CallTable:
    """The calls not yet answered, by stream; each is settled or dropped exactly once."""

    def __init__(self) -> None:
        self._by_stream: dict[int, Pending] = {}
        self._next_id = 1
        # Of those, the calls sent on the current link: kept where `sent` flips, read at each
        # answer on a closing link (not a scan of every call per answer).
        self._sent = 0

    def open(
        self, intent: bytes, context: dict[str, Any], caps: list[Any] | None, deadline: float | None
    ) -> Pending:
        """A new call with the next request id (its stream is the id modulo 2^32)."""
        rid = self._next_id
        self._next_id += 1
        p = Pending(rid, rid % 2**32, intent, context, caps, deadline, asyncio.get_running_loop().create_future())
        self._by_stream[p.stream] = p
        return p

    def get(self, stream: int) -> Pending | None:
        return self._by_stream.get(stream)

    def holds(self, p: Pending) -> bool:
        return self._by_stream.get(p.stream) is p

    def __len__(self) -> int:
        return len(self._by_stream)

    def all(self) -> list[Pending]:
        return list(self._by_stream.values())

    @property
    def sent_count(self) -> int:
        """Calls sent on the current link and not yet answered (a closing link waits for them)."""
        return self._sent

    def mark_sent(self, p: Pending, sent: bool) -> None:
        """The one place a call's `sent` changes: :attr:`sent_count` follows it."""
        if p.sent == sent:
            return
        p.sent = sent
        self._sent += 1 if sent else -1

    def _remove(self, p: Pending) -> None:
        del self._by_stream[p.stream]
        self.mark_sent(p, False)

    def settle(self, p: Pending, r: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        """Answers the call's awaiter with the RESPONSE body `r`, or raises `error` in it."""
        if not self.holds(p):
            return
        self._remove(p)
        if p.timer is not None:
            p.timer.cancel()
        if not p.future.done():
            if r is not None:
                p.future.set_result(r)
            else:
                p.future.set_exception(error or Cancelled("call abandoned"))

    def largest_sent(self) -> Pending | None:
        """The largest call sent on the current link: the one a TOO_LARGE that ended it was about (§12)."""
        sent = [p for p in self._by_stream.values() if p.sent]
        return max(sent, key=lambda p: p.size) if sent else None

    def drop(self, p: Pending) -> None:
        """The caller stopped waiting (answer, deadline or cancellation): forget the call."""
        if self.holds(p):
            self._remove(p)
        if p.timer is not None:
            p.timer.cancel()
        p.future.cancel()
