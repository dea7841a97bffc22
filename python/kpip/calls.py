"""The bookkeeping of calls and held tokens, and the backoff policy."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

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
    sent: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Held:
    raw: bytes
    token: Token
    handle: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
