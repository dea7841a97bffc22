"""Token refresh: each held token is renewed (token.refresh, then token.bind) before it expires."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .calls import Held
from .errors import DeadlineExceeded, KernelUnavailable, KpipError, ProtocolViolation, TokenRefreshFailed
from .tokens import decode_token, inspect

if TYPE_CHECKING:
    from .client import Client


class TokenRefresher:
    def __init__(self, client: Client, margin: float):
        self.client = client
        self.margin = margin

    def schedule(self, h: Held) -> None:
        """Refreshes `h` `margin` seconds (at most half its lifetime) before it expires."""
        g = inspect(h.token)
        if g.exp >= g.max_exp:
            return  # cannot be extended
        margin = min(self.margin * 1000, (g.exp - g.nbf) / 2)
        delay = max(0.0, (g.exp - margin) / 1000 - time.time())
        if h.task is not None:
            h.task.cancel()
        h.task = self.client.spawn(self._refresh_later(h, delay))

    async def _refresh_later(self, h: Held, delay: float) -> None:
        await asyncio.sleep(delay)
        c = self.client
        try:
            r = await c.call("token.refresh", f"token://{h.token.id}", {"token": h.raw}, caps=[h.raw])
            fresh = r.field("token.refresh", "token", "bytes")
            t = decode_token(fresh)
            b = await c.call("token.bind", f"token://{t.id}", {"token": fresh}, caps=[fresh])
            h.raw, h.token, h.handle, h.task = fresh, t, b.field("token.bind", "handle", "handle"), None
            self.schedule(h)
        except (KpipError, KernelUnavailable, DeadlineExceeded, ProtocolViolation) as e:
            c.refresh_error = TokenRefreshFailed(f"could not refresh token {h.token.id}: {e}")
