"""Subscriptions made again after a reconnect: ended when that fails, made once per connection."""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Awaitable, Callable

import kpip
from kpip.intent import decode_intent

from .fake_kernel import Conn, FakeKernel
from .test_client import FAST, until


def counting_subscribes(
    kernel: Callable[[], FakeKernel], subscribes: dict[int, int], answer: Callable[[int, int], int | None]
) -> Callable[[Conn, kpip.Message], Awaitable[None]]:
    """A handler counting event.subscribe per session; `answer(session, n)` gives the id for the
    session's n-th, or None to leave it unanswered. Every other call is answered empty."""

    async def handler(c: Conn, m: kpip.Message) -> None:
        intent = decode_intent(m.body["intent"])
        if intent["op"] != "event.subscribe":
            c.answer(m, payload={})
            return
        session = kernel().conns.index(c) + 1
        subscribes[session] = subscribes.get(session, 0) + 1
        sub = answer(session, subscribes[session])
        if sub is not None:
            c.answer(m, payload={"subscription": sub})

    return handler


class Resubscribing(unittest.IsolatedAsyncioTestCase):
    ident = kpip.Identity.generate("alice")

    async def connect(self, k: FakeKernel) -> kpip.Client:
        return await kpip.Client.connect(k.path, self.ident, **FAST)  # type: ignore[arg-type]

    async def made_once(self, c: kpip.Client, k: FakeKernel, a: kpip.Subscription, subscribes: dict[int, int], session: int) -> None:
        """a was made exactly once on `session` (the newest) and gets that session's events."""
        # A call answered after it: whatever the client sent for a came before.
        await c.call("system.health", "kernel://", timeout=30)
        await asyncio.sleep(0)
        self.assertEqual(subscribes.get(session), 1, f"a single event.subscribe on session {session}")
        k.conns[session - 1].send("EVENT", {"subscription": a.remote_id, "topic": "topic://a/x", "seq": 1, "data": 7})
        self.assertEqual((await a.get(timeout=30)).topic, "topic://a/x")
        await c.close()

    async def test_a_renewal_that_fails_other_than_by_a_refusal_ends_the_subscription_with_the_error(self) -> None:
        # After the reconnect the kernel answers a's event.subscribe without an id (a malformed
        # answer, not a refusal) while the link stays up: kept, a waited for good for events no
        # kernel would send; it ends with the error, as the TypeScript client ends it.
        async def handler(c: Conn, m: kpip.Message) -> None:
            intent = decode_intent(m.body["intent"])
            if intent["op"] != "event.subscribe":
                c.answer(m, payload={})
            elif k.sessions == 1 or intent["target"] == "topic://b/**":
                c.answer(m, payload={"subscription": 1 if intent["target"] == "topic://a/**" else 2})
            else:
                c.answer(m, payload={})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            a = await c.subscribe("topic://a/**")
            b = await c.subscribe("topic://b/**")
            k.conns[0].writer.close()
            await until(lambda: k.sessions == 2 and b.remote_id == 2, "b made again")
            with self.assertRaises(kpip.ProtocolViolation):
                await a.get(timeout=30)
            self.assertIsInstance(a.error, kpip.ProtocolViolation)
            with self.assertRaises(StopAsyncIteration):
                await a.get(timeout=30)
            self.assertFalse(b.closed)
            await c.close()

    async def test_a_reconnect_during_a_renewal_makes_the_subscription_once_on_the_new_connection(self) -> None:
        # Session 2 never answers the renewal; its link is cut, and on session 3 the call is sent
        # again: the renewal of session 3 must not make the subscription a second time (one of the
        # two would stay in the kernel, held for no one, counted against the persona's bound).
        subscribes: dict[int, int] = {}
        handler = counting_subscribes(lambda: k, subscribes, lambda session, n: None if session == 2 else n)

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            a = await c.subscribe("topic://a/**")
            k.conns[0].writer.close()
            await until(lambda: subscribes.get(2) == 1, "the renewal sent on session 2")
            k.conns[1].writer.close()
            await until(lambda: k.sessions == 3 and a.remote_id != 0, "a made again on session 3")
            await self.made_once(c, k, a, subscribes, 3)

    async def test_a_subscription_the_kernel_ended_while_the_link_is_lost_is_made_again_once_on_the_new_connection(self) -> None:
        # As the TypeScript client's test of that name: the kernel ends a (its capability lapsed),
        # its re-subscription goes unanswered on session 1 and the link is lost with it in flight;
        # on session 2 the call is sent again, and the renewal must not make a a second time.
        subscribes: dict[int, int] = {}
        # The re-subscription after the end is never answered on session 1.
        handler = counting_subscribes(lambda: k, subscribes, lambda session, n: None if session == 1 and n > 1 else n + 1)

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            a = await c.subscribe("topic://a/**")
            self.assertEqual(a.remote_id, 2)
            k.conns[0].send("EVENT", {"subscription": 2, "topic": "topic://a/x", "seq": 1, "ended": "revoked"})
            await until(lambda: subscribes.get(1) == 2, "the re-subscription sent on session 1")
            k.conns[0].writer.close()
            await until(lambda: k.sessions == 2 and a.remote_id != 0, "a made again on session 2")
            await self.made_once(c, k, a, subscribes, 2)


if __name__ == "__main__":
    unittest.main()
