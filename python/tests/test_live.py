"""Against a real kernel (npm test starts one and passes KPIP_SOCKET, KPIP_IDENTITY, KPIP_TOKEN)."""

from __future__ import annotations

import asyncio
import os
import time
import unittest

import kpip
from kpip.tokens import attenuate, decode_token

from .live import require_kernel


class Live(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.socket, self.identity, self.token = require_kernel()
        self.c = await kpip.Client.connect(self.socket, self.identity, [self.token], workspace="pyws")

    async def asyncTearDown(self) -> None:
        await self.c.close()

    async def test_handshake_binds_the_token_as_a_handle(self) -> None:
        self.assertEqual(self.c.handles, [1])
        self.assertEqual(self.c.refused_tokens, [])
        r = await self.c.call("system.health", "kernel://")
        self.assertEqual((r.status, r.payload["status"]), ("SUCCESS", "ok"))

    async def test_storage_round_trip_with_a_large_body(self) -> None:
        data = os.urandom(3 * 1024 * 1024)
        w = await self.c.call("storage.write", "obj://pyws/big", {"data": data})
        r = await self.c.call("storage.read", "obj://pyws/big")
        self.assertEqual((r.payload["data"], r.payload["generation"]), (data, w.payload["generation"]))

    async def test_refusals_raise_the_typed_error_of_their_class(self) -> None:
        with self.assertRaises(kpip.SemanticError) as cm:
            await self.c.call("storage.read", "obj://pyws/never-written")
        self.assertEqual(cm.exception.error_class, "SEMANTIC")
        self.assertIsInstance(cm.exception.request_id, int)
        read_only = attenuate(decode_token(self.token), "ops", ["storage.read"]).encode()
        with self.assertRaises(kpip.PermissionDenied):
            await self.c.call("storage.write", "obj://pyws/x", {"data": b"no"}, caps=[read_only])
        with self.assertRaises(kpip.CapabilityError):
            await self.c.call("system.health", "kernel://", caps=[99])
        with self.assertRaises(kpip.CapabilityError):
            await self.c.call("system.health", "kernel://", caps=[])
        # Refused before sending: the class the kernel would answer, but nothing went out.
        with self.assertRaises(kpip.IntentError) as local:
            await self.c.call("Storage.read", "obj://pyws/x")
        self.assertEqual((local.exception.error_class, local.exception.code), ("SEMANTIC", "BAD_OP"))
        self.assertNotIsInstance(local.exception, kpip.LocalError)

    async def test_deadline_and_cancellation_are_local_errors(self) -> None:
        with self.assertRaises(kpip.DeadlineExceeded):
            await self.c.call("system.health", "kernel://", timeout=0)
        task = asyncio.ensure_future(self.c.call("system.health", "kernel://"))
        await asyncio.sleep(0)
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        self.assertEqual(self.c.in_flight, 0)
        self.assertEqual((await self.c.call("system.health", "kernel://")).status, "SUCCESS")

    async def test_subscription_receives_events(self) -> None:
        sub = await self.c.subscribe("topic://pyws/**")
        await self.c.call("event.emit", "topic://pyws/a/b", {"data": {"n": 7}})
        e = await sub.get(timeout=30)
        self.assertEqual((e.topic, e.data, e.gap), ("topic://pyws/a/b", {"n": 7}, 0))
        await sub.unsubscribe()
        with self.assertRaises(StopAsyncIteration):
            await sub.get(timeout=30)

    async def test_an_event_emitted_while_event_subscribe_awaits_its_answer_reaches_the_new_subscription(self) -> None:
        # Sent together: the kernel makes the subscription live when its op runs and answers once its
        # record commits, so the emit runs in between and its EVENT comes before the answer naming the id.
        sub, emitted = await asyncio.gather(
            self.c.subscribe("topic://pyws/early/**"),
            self.c.call("event.emit", "topic://pyws/early/x", {"data": {"n": 1}}),
        )
        self.assertEqual(emitted.payload["subscribers"], 1, "the kernel counted the subscription as reached")
        e = await sub.get(timeout=30)
        self.assertEqual((e.topic, e.data), ("topic://pyws/early/x", {"n": 1}))
        await sub.unsubscribe()

    async def test_a_reader_that_falls_behind_keeps_at_most_its_buffer_bytes_of_large_events(self) -> None:
        # Bounded by count only, 100 events of 8 MiB from another persona on a shared topic were
        # all kept (~800 MB) for a subscriber that had not read them yet.
        small = await self.c.subscribe("topic://pybig/**", buffer_bytes=2 * 1024 * 1024)
        by_default = await self.c.subscribe("topic://pybig/**")
        data = b"\x09" * (512 * 1024)
        n = 40
        for i in range(n):
            await self.c.call("event.emit", "topic://pybig/x", {"data": {"i": i, "data": data}})
        await self.c.call("event.emit", "topic://pybig/end")

        async def drain(sub: kpip.Subscription) -> tuple[int, int, int]:
            events = kept = missed = 0
            while True:
                e = await sub.get(timeout=30)
                missed += e.gap
                if e.topic == "topic://pybig/end":
                    return events, kept, missed
                events += 1
                kept += len(e.data["data"])

        for sub, bound in ((small, 2 * 1024 * 1024), (by_default, 16 * 1024 * 1024)):
            events, kept, missed = await drain(sub)
            self.assertLessEqual(kept, bound)
            self.assertGreater(missed, 0)
            self.assertEqual(events + missed, n)  # nothing vanished unannounced
            self.assertEqual(sub.buffered_bytes, 0)
            await sub.unsubscribe()

    async def test_a_subscription_ends_when_its_token_is_revoked(self) -> None:
        persona = kpip.Identity.load(self.identity).persona
        m = await self.c.call(
            "token.mint",
            f"persona://{persona}",
            {"rights": [{"ops": ["event.subscribe"], "targets": ["topic://pyrev/**"]}], "ttlMs": 600_000},
        )
        c = await kpip.Client.connect(self.socket, self.identity, [m.payload["token"]])
        try:
            sub = await c.subscribe("topic://pyrev/**")
            sent = await self.c.call("event.emit", "topic://pyrev/a", {"data": 1})
            self.assertEqual(sent.payload["subscribers"], 1)
            self.assertEqual((await sub.get(timeout=30)).data, 1)
            await self.c.call("token.revoke", f"token://{m.payload['id']}")
            # The kernel ended it at the revocation; subscribing again with the revoked token is
            # refused, so the iteration ends, and nothing emitted later reaches this client.
            with self.assertRaises(StopAsyncIteration):
                await sub.get(timeout=30)
            after = await self.c.call("event.emit", "topic://pyrev/a", {"data": 2})
            self.assertEqual(after.payload["subscribers"], 0)
        finally:
            await c.close()

    async def test_deferred_ops_are_awaited_and_a_cancelled_one_raises(self) -> None:
        r = await self.c.call("compute.submit", "op://command/true")
        self.assertEqual(r.status, "DEFERRED")
        done = await self.c.wait_op(r.payload["op"], timeout=60)
        self.assertEqual((done.status, done.payload["result"]["exitCode"]), ("SUCCESS", 0))
        slow = await self.c.call("compute.submit", "op://command/sleep", {"args": ["60"]})
        await self.c.call("op.cancel", slow.payload["op"])
        with self.assertRaises(kpip.KpipError) as cm:
            await self.c.wait_op(slow.payload["op"], timeout=60)
        self.assertEqual(cm.exception.error_class, "SEMANTIC")

    async def test_hello_max_body_is_negotiated_and_respected(self) -> None:
        c = await kpip.Client.connect(self.socket, self.identity, [self.token], workspace="pyws", max_body=4096)
        try:
            assert c.session is not None
            self.assertEqual(c.session.max_body, 4096)
            with self.assertRaises(kpip.FrameError) as cm:
                await c.call("storage.write", "obj://pyws/y", {"data": bytes(5000)})
            self.assertEqual(cm.exception.code, "TOO_LARGE")
            self.assertEqual((await c.call("system.health", "kernel://")).status, "SUCCESS")
        finally:
            await c.close()

    async def test_a_short_lived_token_is_refreshed_before_it_expires(self) -> None:
        persona = kpip.Identity.load(self.identity).persona
        m = await self.c.call(
            "token.mint",
            f"persona://{persona}",
            {"rights": [{"ops": ["system.**"], "targets": ["**"]}], "ttlMs": 10_000, "maxLifetimeMs": 600_000},
        )
        short = m.payload["token"]
        c = await kpip.Client.connect(self.socket, self.identity, [short], refresh_margin=5.0)
        try:
            first = c.held_tokens[0].id
            end = time.monotonic() + 60
            while c.held_tokens[0].id == first and time.monotonic() < end:
                await asyncio.sleep(0.05)
            self.assertNotEqual(c.held_tokens[0].id, first)
            # The original token has expired by now; the refreshed handle still works.
            while time.time() * 1000 < decode_token(short).claims["exp"]:
                await asyncio.sleep(0.1)
            self.assertEqual((await c.call("system.health", "kernel://")).status, "SUCCESS")
        finally:
            await c.close()


class Sync(unittest.TestCase):
    def test_sync_wrapper(self) -> None:
        socket, identity, token = require_kernel()
        with kpip.SyncClient.connect(socket, identity, [token]) as k:
            self.assertEqual(k.call("system.health", "kernel://").payload["status"], "ok")
            with self.assertRaises(kpip.SemanticError):
                k.call("storage.read", "obj://pyws/never-written")


if __name__ == "__main__":
    unittest.main()
