"""A small synchronous wrapper for scripts: the asyncio client on a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from .client import Client, Result
from .errors import KernelUnavailable
from .identity import Identity

T = TypeVar("T")


class SyncClient:
    """``with SyncClient.connect(socket, identity, [token]) as k: k.call("system.health", "kernel://")``"""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kpip-client", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._stopped = False
        self.client: Client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._stopped:
                coro.close()
                # As the asyncio client answers a call after close, not "Event loop is closed".
                raise KernelUnavailable("client is closed")
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    @classmethod
    def connect(cls, socket: str, identity: Identity | str, tokens: Sequence[bytes | str] = (), **kw: Any) -> SyncClient:
        s = cls()
        try:
            s.client = s._run(Client.connect(socket, identity, tokens, **kw))
        except BaseException:
            s._stop()
            raise
        return s

    def call(self, op: str, target: str, args: dict[str, Any] | None = None, **kw: Any) -> Result:
        return self._run(self.client.call(op, target, args, **kw))

    def request(self, op: str, target: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self._run(self.client.request(op, target, args, **kw))

    def wait_op(self, op: str, **kw: Any) -> Result:
        return self._run(self.client.wait_op(op, **kw))

    def close(self) -> None:
        """Closes the client and its thread; closing again does nothing."""
        if self._stopped:
            return
        try:
            self._run(self.client.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
