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


# A refresh that gives a token already due for refresh (at or past its expiry, or due again within
# its floor: a broken or hostile kernel) is tried again after that floor (1 s, less only for a token
# given with under 4 s of life), then twice it, and reported after the third in a row: without a
# floor the refresher would ask again at once, without end — or, for a token due again 200 ms after
# each refresh, five times a second.
FUTILE_DELAY = 1.0
MAX_FUTILE = 3


class TokenRefresher:
    def __init__(self, client: Client, margin: float):
        self.client = client
        self.margin = margin

    def _due_in(self, h: Held) -> float | None:
        """Seconds until `h` is due for refresh (0 when it is already), None when it cannot be extended."""
        g = inspect(h.token)
        if g.exp >= g.max_exp:
            return None
        margin = min(self.margin * 1000, (g.exp - g.nbf) / 2)
        return max(0.0, (g.exp - margin) / 1000 - time.time())

    def _floor(self, h: Held) -> float:
        """Seconds: a refresh leaving `h` due again sooner is futile. The smaller of FUTILE_DELAY and half
        the time from nbf to due of the token the client was given (not the kernel's, which chooses the
        lifetimes of the tokens it gives: an honest one keeps the lifetime)."""
        if h.floor is None:
            g = inspect(h.token)
            life = g.exp - g.nbf
            h.floor = max(0.0, min(FUTILE_DELAY, (life - min(self.margin * 1000, life / 2)) / 2000))
        return h.floor

    def schedule(self, h: Held) -> None:
        """Refreshes `h` `margin` seconds (at most half its lifetime) before it expires."""
        floor = self._floor(h)
        delay = self._due_in(h)
        if delay is None:
            return  # cannot be extended
        if h.futile > 0:
            delay = max(delay, floor * 2 ** (h.futile - 1))
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
            due, floor = self._due_in(h), self._floor(h)
            h.futile = h.futile + 1 if due is not None and (due == 0 or due < floor) else 0
            if h.futile >= MAX_FUTILE:
                h.futile = 0
                c.refresh_error = TokenRefreshFailed(
                    f"could not refresh token {h.token.id}: token.refresh gave a token already due for refresh "
                    f"(at or past its expiry, or due again within {round(floor * 1000)} ms) {MAX_FUTILE} times in a row"
                )
                return
            self.schedule(h)
        except (KpipError, KernelUnavailable, DeadlineExceeded, ProtocolViolation) as e:
            c.refresh_error = TokenRefreshFailed(f"could not refresh token {h.token.id}: {e}")
