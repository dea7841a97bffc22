"""Event subscriptions that outlive the session they were made on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    topic: str
    seq: int
    data: Any = None
    gap: int = 0  # events dropped for this subscription since the last delivered one


_END = object()


class Subscription:
    """An async iterator of :class:`Event`; renewed by the client after every reconnect.

    The buffer is bounded: when the reader falls behind, the oldest events are dropped and the
    next event's ``gap`` counts them (events emitted while disconnected are not replayed)."""

    def __init__(self, pattern: str, buffer: int, unsubscribe: Callable[[Subscription], Awaitable[None]]):
        self.pattern = pattern
        self.remote_id = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._buffer = buffer
        self._dropped = 0
        self._unsubscribe = unsubscribe
        self.closed = False

    def push(self, body: dict[str, Any]) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._buffer:
            self._queue.get_nowait()
            self._dropped += 1
        gap = body.get("gap", 0) + self._dropped
        self._dropped = 0
        self._queue.put_nowait(Event(body["topic"], body["seq"], body.get("data"), gap))

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    async def get(self, timeout: float | None = None) -> Event:
        """The next event; raises StopAsyncIteration once unsubscribed or the client closed."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    async def unsubscribe(self) -> None:
        if not self.closed:
            self.end()
            await self._unsubscribe(self)
