"""Event subscriptions that outlive the session they were made on."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DeadlineExceeded, KernelUnavailable, KpipError, ProtocolViolation

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class Event:
    topic: str
    seq: int
    data: Any = None
    gap: int = 0  # events dropped for this subscription since the last delivered one


_END = object()


@dataclass(frozen=True)
class _Failed:
    """Queued before _END when the kernel refused to make the subscription again: raised once."""

    error: BaseException

# Bytes of events a subscription keeps for a reader that falls behind, by default: the kernel's own
# bound per subscription (eventQueueBytes). Counted besides events, since one event may be as large
# as a frame: another persona's large events on a shared topic must not fill a slow reader's process.
DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024


class Subscription:
    """An async iterator of :class:`Event`; renewed by the client after every reconnect.

    The buffer is bounded in events and in bytes: when the reader falls behind, the oldest events
    are dropped and the next event's ``gap`` counts them (events emitted while disconnected are
    not replayed). The newest event is always kept, whatever its size."""

    def __init__(
        self,
        pattern: str,
        buffer: int,
        unsubscribe: Callable[[Subscription], Awaitable[None]],
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ):
        self.pattern = pattern
        self.remote_id = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes
        # The size of each queued event (its frame's body), in the queue's order, and their sum.
        self._sizes: deque[int] = deque()
        self.buffered_bytes = 0
        self._dropped = 0
        self._unsubscribe = unsubscribe
        self.closed = False
        # Why it ended, when the kernel refused to make it again after a reconnect (a KpipError).
        self.error: BaseException | None = None
        # A re-subscription is under way (another would leave one of the two in the kernel, heard by
        # no one); a reconnect came meanwhile (if it fails, it is tried once more on the new connection).
        self._busy = False
        self._redo = False

    def push(self, body: dict[str, Any], size: int = 0) -> None:
        if self.closed:
            return
        while self._sizes and (len(self._sizes) >= self._buffer or self.buffered_bytes + size > self._buffer_bytes):
            lost = self._queue.get_nowait()
            self.buffered_bytes -= self._sizes.popleft()
            # What it carried (the kernel's drops, and ours before it) is missed too.
            self._dropped += 1 + lost.gap
        gap = body.get("gap", 0) + self._dropped
        self._dropped = 0
        self._queue.put_nowait(Event(body["topic"], body["seq"], body.get("data"), gap))
        self._sizes.append(size)
        self.buffered_bytes += size

    def end(self, error: BaseException | None = None) -> None:
        """Ends the iteration after the events queued; with ``error``, the reader's next get raises it once."""
        if not self.closed:
            self.closed = True
            self.error = error
            if error is not None:
                self._queue.put_nowait(_Failed(error))
            self._queue.put_nowait(_END)

    async def get(self, timeout: float | None = None) -> Event:
        """The next event; raises StopAsyncIteration once unsubscribed or the client closed, and the
        kernel's refusal (once, then StopAsyncIteration) when it refused to make it again after a reconnect."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            raise item.error
        self.buffered_bytes -= self._sizes.popleft()
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    async def unsubscribe(self) -> None:
        if not self.closed:
            self.end()
            await self._unsubscribe(self)


# Most EVENTs held for subscription ids not known yet (as the TypeScript client's EARLY_EVENTS);
# past it the oldest held are dropped (the kernel's seq shows the hole).
EARLY_EVENTS = 1000
# And at most this many of their bytes (a kernel, or one posing as it, may send frames of up to maxBody).
EARLY_BYTES = DEFAULT_BUFFER_BYTES


class Subscriptions:
    """A client's subscriptions: made with event.subscribe, renewed after every reconnect."""

    def __init__(self, client: Client):
        self.client = client
        self._subs: set[Subscription] = set()
        self._pending: set[asyncio.Future[None]] = set()
        # Subscribe calls under way, and the EVENTs meanwhile for ids no subscription has yet
        # (PROTOCOL §6.9): the kernel makes a subscription live when its op runs and answers once
        # its record commits, so an event emitted in between comes before the answer naming its id.
        self._opening = 0
        # (body, size, connection), oldest first.
        self._early: deque[tuple[dict[str, Any], int, int]] = deque()
        self._early_bytes = 0

    async def subscribe(
        self, pattern: str, buffer: int, timeout: float | None, buffer_bytes: int = DEFAULT_BUFFER_BYTES
    ) -> Subscription:
        sub = Subscription(pattern, buffer, self._unsubscribe, buffer_bytes)
        self._opening += 1
        try:
            r = await self.client.call("event.subscribe", pattern, timeout=timeout)
            sub.remote_id = r.field("event.subscribe", "subscription", "handle")
            self._subs.add(sub)
            self._deliver_early(sub.remote_id)
        finally:
            self._settled()
        return sub

    def _deliver_early(self, handle: int) -> None:
        """The EVENTs that came for `handle` before its subscribe call answered, now that a subscription has it."""
        held = [x for x in self._early if x[0]["subscription"] == handle]
        if not held:
            return
        self._early = deque(x for x in self._early if x[0]["subscription"] != handle)
        self._early_bytes -= sum(size for _, size, _ in held)
        conn = self.client.connections
        for body, size, on in held:
            if on == conn:
                self.deliver(body, size)

    def _settled(self) -> None:
        """A subscribe call ended: with none under way, no EVENT of an unknown id is held any more."""
        self._opening -= 1
        if self._opening == 0:
            self._early.clear()
            self._early_bytes = 0

    async def _unsubscribe(self, s: Subscription) -> None:
        self._subs.discard(s)
        if self.client.state == "ready":
            try:
                await self.client.call("event.unsubscribe", s.pattern, {"subscription": s.remote_id})
            except (KpipError, KernelUnavailable, DeadlineExceeded):
                pass

    async def renew(self) -> None:
        """After a reconnect: subscribe again (the kernel forgot the old session's subscriptions)."""
        # An id of the old session names nothing now: the new session may give it to another
        # subscription, whose events a subscription still holding it would receive too.
        for sub in self._subs:
            sub.remote_id = 0
        conn = self.client.connections
        for sub in list(self._subs):
            # A newer connection's renewal makes the rest (both would, each on the new connection).
            if conn != self.client.connections:
                return
            if sub not in self._subs:
                continue  # unsubscribed meanwhile: nothing to make again
            # One under way (its call, sent on a lost link, is sent again on the new connection)
            # makes it there: a second would leave one of the two in the kernel, heard by no one.
            if sub._busy:
                sub._redo = True
            else:
                await self._again(sub, ended=False)

    def deliver(self, body: dict[str, Any], size: int = 0) -> None:
        # Subscription 0 carries the kernel's notices to the session (a token revoked), not to a
        # subscription; 0 is also the id of one being made again, which must not take them.
        if body["subscription"] == 0:
            return
        known = False
        for sub in list(self._subs):
            if sub.remote_id != body["subscription"]:
                continue
            known = True
            if "ended" in body:
                # The kernel ended it (the capability that authorized it lapsed): subscribe again
                # with the tokens held now; if that is refused too, the iteration ends.
                sub.remote_id = 0
                task = asyncio.ensure_future(self._again(sub, ended=True))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            else:
                sub.push(body, size)
        if known or self._opening == 0 or size > EARLY_BYTES:
            return
        # Perhaps the id a subscribe call under way is about to learn: held until it does. Full,
        # the oldest held go first: with subscribes overlapping (the hold is cleared only once
        # none is under way), late events of an id just unsubscribed filled it, and the first
        # events of the subscription being made were the ones dropped.
        while len(self._early) >= EARLY_EVENTS or self._early_bytes + size > EARLY_BYTES:
            _, old, _ = self._early.popleft()
            self._early_bytes -= old
        self._early.append((body, size, self.client.connections))
        self._early_bytes += size

    async def _again(self, sub: Subscription, ended: bool) -> None:
        """Makes `sub` again (after a reconnect, or `ended` by the kernel), as the TypeScript client
        does: tried once more when a reconnect came meanwhile; otherwise a failure ends it — a
        refusal or any other (a malformed answer, the kernel away past `unavailable`), since kept,
        it would wait for events no kernel sends, for good. One the kernel ended (its EVENT said
        why) ends quietly; one lost with the connection ends with the error, raised to its reader."""
        if sub._busy:
            return
        sub._busy = True
        self._opening += 1
        try:
            while True:
                sub._redo = False
                conn = self.client.connections
                try:
                    r = await self.client.call("event.subscribe", sub.pattern)
                    handle = r.field("event.subscribe", "subscription", "handle")
                except (KpipError, KernelUnavailable, DeadlineExceeded, ProtocolViolation) as e:
                    if sub not in self._subs:
                        return
                    if sub._redo and conn != self.client.connections:
                        continue
                    self._subs.discard(sub)
                    sub.end(None if ended else e)
                    return
                if sub not in self._subs:
                    # Unsubscribed meanwhile: the kernel's new subscription would be held for no one.
                    if self.client.state == "ready":
                        try:
                            await self.client.call("event.unsubscribe", sub.pattern, {"subscription": handle})
                        except (KpipError, KernelUnavailable, DeadlineExceeded, ProtocolViolation):
                            pass
                    return
                sub.remote_id = handle
                self._deliver_early(handle)
                return
        finally:
            sub._busy = False
            self._settled()

    def end_all(self) -> None:
        for s in list(self._subs):
            s.end()
        self._subs.clear()
