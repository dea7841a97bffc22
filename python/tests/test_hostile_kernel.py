"""The client against a faulty or hostile kernel, and against misuse by its own caller."""

from __future__ import annotations

import asyncio
import os
import time
import unittest
from typing import Any

import kpip
import kpip.messages
from kpip import cbor
from kpip.tokens import root_signature

from .fake_kernel import Conn, FakeKernel
from .test_client import FAST, alice_tokens, until


class AgainstAHostileKernel(unittest.IsolatedAsyncioTestCase):
    ident = kpip.Identity.generate("alice")

    async def connect(self, k: FakeKernel, **kw: object) -> kpip.Client:
        return await kpip.Client.connect(k.path, self.ident, **{**FAST, **kw})  # type: ignore[arg-type]

    async def test_a_request_the_kernel_ended_the_session_over_as_too_large_fails_and_is_never_resent(self) -> None:
        # §12: the largest request in flight on a session the kernel ended with TOO_LARGE fails at its
        # caller and is never resent; the others are resent on the next session.
        sent: dict[int, list[int]] = {}

        async def handler(c: Conn, m: kpip.Message) -> None:
            sent.setdefault(k.sessions, []).append(m.body["id"])
            if k.sessions > 1:
                c.answer(m, payload=k.sessions)
            elif len(sent[1]) == 2:
                c.send("ERROR", {"class": "PROTOCOL", "code": "TOO_LARGE", "message": "frame too large", "fatal": True})
                c.writer.close()

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            big = asyncio.ensure_future(c.call("system.health", "kernel://", {"pad": b"x" * 3000}))
            await until(lambda: len(k.requests) == 1, "the large request at the kernel")
            small = asyncio.ensure_future(c.call("system.health", "kernel://"))
            with self.assertRaises(kpip.FrameError) as cm:
                await asyncio.wait_for(big, 10)
            self.assertEqual(cm.exception.code, "TOO_LARGE")
            self.assertEqual((await asyncio.wait_for(small, 10)).payload, 2)
            self.assertEqual(sent, {1: [1, 2], 2: [2]}, "the large request was never sent again")
            self.assertEqual(c.in_flight, 0)
            await c.close()

    async def test_a_request_refused_before_sending_leaves_nothing_behind_and_the_next_session_opens(self) -> None:
        # Input refused when the REQUEST is encoded (a traceparent with a newline, a negative handle)
        # raised to the caller but stayed in the call table: counted in flight, waited for by close,
        # and resent at each reconnect, where it raised again and broke the reconnect.
        async def handler(c: Conn, m: kpip.Message) -> None:
            if k.sessions == 1:
                c.writer.close()
            else:
                c.answer(m, payload=k.sessions)

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.MessageError):
                await c.call("system.health", "kernel://", traceparent="00-a\nstatus SUCCESS")
            with self.assertRaises(kpip.MessageError):
                await c.call("system.health", "kernel://", caps=[-1])
            self.assertEqual(c.in_flight, 0)
            self.assertEqual(k.requests, [], "nothing was sent")
            self.assertEqual((await c.call("system.health", "kernel://", timeout=10)).payload, 2)
            self.assertEqual(k.sessions, 2)
            await c.close()

    async def test_text_with_a_lone_surrogate_is_refused_typed_leaves_nothing_behind_and_the_next_session_opens(self) -> None:
        # What os.fsdecode (or surrogateescape) makes of bytes that are not UTF-8: a traceparent taken
        # from the environment, an argument from a file name. It raised a bare UnicodeEncodeError; the
        # traceparent's call stayed in the table, and at the next reconnect its resend ended the client.
        async def handler(c: Conn, m: kpip.Message) -> None:
            if k.sessions == 1:
                c.writer.close()
            else:
                c.answer(m, payload=k.sessions)

        bad = os.fsdecode(b"00-\xff")
        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.CborError) as ctx:
                await c.call("system.health", "kernel://", traceparent=bad)
            self.assertEqual(ctx.exception.code, "INVALID_UTF8")
            for args in ({"note": bad}, {bad: 1}, {"list": ["ok", bad]}):
                with self.subTest(args=args), self.assertRaises(kpip.IntentError) as intent:
                    await c.call("system.health", "kernel://", args)
                self.assertEqual(intent.exception.code, "INVALID_UTF8")
            for op, target in (("system.health", f"obj://ws/{bad}"), (f"system.{bad}", "kernel://")):
                with self.subTest(op=op, target=target), self.assertRaises(kpip.IntentError):
                    await c.call(op, target)
            self.assertEqual(c.in_flight, 0)
            self.assertEqual(k.requests, [], "nothing was sent")
            self.assertEqual((await c.call("system.health", "kernel://", timeout=10)).payload, 2)
            self.assertEqual((k.sessions, c.state), (2, "ready"))
            await c.close()

    async def test_answers_whose_payload_the_client_acts_on_are_checked_before_it_does(self) -> None:
        # token.bind's handle goes into the caps of every later call, event.subscribe's id picks the
        # events a subscription takes, token.refresh's token is decoded: a handle of the wrong type
        # made every later call fail to encode, a payload without the field raised a bare KeyError
        # (in the refresher's task: lost, the token left to expire unsaid), and an integer for the
        # token had the client allocate that many bytes (bytes(n)).
        answers: dict[str, Any] = {
            "token.bind": {"handle": "h1"},
            "event.subscribe": {"subscription": -3},
            "token.refresh": {"token": 1 << 40},
        }

        async def handler(c: Conn, m: kpip.Message) -> None:
            op = cbor.decode(m.body["intent"])["op"]  # type: ignore[index]
            if op in answers:
                c.answer(m, payload=answers[op])
            else:
                c.answer(m, payload={"caps": m.body["caps"]})

        now = int(time.time() * 1000)
        root = os.urandom(32)
        claims = cbor.encode(
            {
                "id": "ab" * 16,
                "kid": "k",
                "sub": "alice",
                "rights": [{"ops": ["system.health"], "targets": ["kernel://"]}],
                "limits": {},
                "nbf": now - 1000,
                "exp": now + 100,  # due for refresh at once
                "maxExp": now + 3_600_000,
                "chain": [],
            }
        )
        expiring = cbor.encode([1, claims, [], root_signature(root, claims)])
        async with FakeKernel(handler) as k:
            c = await self.connect(k, tokens=[expiring])
            await until(lambda: c.refresh_error is not None, "the refresh to fail")
            self.assertIsInstance(c.refresh_error, kpip.TokenRefreshFailed)
            self.assertIn("token.refresh", str(c.refresh_error))
            c.refresh_error = None
            with self.assertRaises(kpip.ProtocolViolation):
                await c.bind(alice_tokens()(2))
            with self.assertRaises(kpip.ProtocolViolation):
                await c.subscribe("topic://x/**")
            self.assertEqual(c.handles, [1], "no handle taken from a malformed answer")
            self.assertEqual((await c.call("system.health", "kernel://")).payload, {"caps": [1]})
            await c.close()

    async def test_a_kernel_refreshing_tokens_into_ones_already_expiring_gets_a_few_tries_then_a_typed_error(self) -> None:
        # token.refresh answered with a token at its expiry (due for refresh at once): the refresher
        # asked again with no delay, for ever (a hostile or broken kernel kept the client busy).
        root = os.urandom(32)
        made = [0]

        def token(exp_in: int) -> bytes:
            now = int(time.time() * 1000)
            made[0] += 1
            claims = cbor.encode(
                {
                    "id": f"{made[0]:032x}",
                    "kid": "k",
                    "sub": "alice",
                    "rights": [{"ops": ["system.health"], "targets": ["kernel://"]}],
                    "limits": {},
                    "nbf": now - 1000,
                    "exp": now + exp_in,
                    "maxExp": now + 3_600_000,
                    "chain": [],
                }
            )
            return cbor.encode([1, claims, [], root_signature(root, claims)])

        refreshes = [0]

        async def handler(c: Conn, m: kpip.Message) -> None:
            op = cbor.decode(m.body["intent"])["op"]  # type: ignore[index]
            if op == "token.refresh":
                refreshes[0] += 1
                c.answer(m, payload={"token": token(0)})
            elif op == "token.bind":
                c.answer(m, payload={"handle": 1})
            else:
                c.answer(m, payload={"caps": m.body["caps"]})

        async with FakeKernel(handler) as k:
            c = await self.connect(k, tokens=[token(100)])
            await until(lambda: c.refresh_error is not None or refreshes[0] > 10, "the refresher to give up")
            self.assertIsInstance(c.refresh_error, kpip.TokenRefreshFailed)
            self.assertIn("already due for refresh", str(c.refresh_error))
            self.assertEqual(refreshes[0], 3)
            # Reported on the next call, once; the refresher asks no more.
            with self.assertRaises(kpip.TokenRefreshFailed):
                await c.call("system.health", "kernel://")
            await c.call("system.health", "kernel://")
            self.assertEqual(refreshes[0], 3)
            await c.close()

    async def test_a_kernel_refreshing_tokens_into_ones_due_again_within_a_few_hundred_ms_gets_a_few_tries_then_a_typed_error(
        self,
    ) -> None:
        # token.refresh answered with a token of 400 ms from now: due for refresh 200 ms after it is
        # held, never at once, so only a token due at once counted: the refresher asked five times a second, for ever.
        root = os.urandom(32)
        made = [0]

        def token(exp_in: int, nbf_ago: int = 0) -> bytes:
            now = int(time.time() * 1000)
            made[0] += 1
            claims = cbor.encode(
                {
                    "id": f"{made[0]:032x}",
                    "kid": "k",
                    "sub": "alice",
                    "rights": [{"ops": ["system.health"], "targets": ["kernel://"]}],
                    "limits": {},
                    "nbf": now - nbf_ago,
                    "exp": now + exp_in,
                    "maxExp": now + 7_200_000,
                    "chain": [],
                }
            )
            return cbor.encode([1, claims, [], root_signature(root, claims)])

        refreshes = [0]

        async def handler(c: Conn, m: kpip.Message) -> None:
            op = cbor.decode(m.body["intent"])["op"]  # type: ignore[index]
            if op == "token.refresh":
                refreshes[0] += 1
                c.answer(m, payload={"token": token(400)})
            elif op == "token.bind":
                c.answer(m, payload={"handle": 1})
            else:
                c.answer(m, payload={"caps": m.body["caps"]})

        async with FakeKernel(handler) as k:
            # The token it was given lives an hour (from an hour ago): due for refresh now.
            c = await self.connect(k, tokens=[token(100, 3_600_000)])
            await until(lambda: c.refresh_error is not None or refreshes[0] > 10, "the refresher to give up", 60)
            self.assertIsInstance(c.refresh_error, kpip.TokenRefreshFailed, f"{refreshes[0]} refreshes")
            self.assertIn("due for refresh", str(c.refresh_error))
            self.assertEqual(refreshes[0], 3)
            await c.close()

    async def test_a_handshake_frame_larger_than_a_handshake_needs_is_too_large_at_its_header(self) -> None:
        # §8.8: before CHALLENGE a kernel's frame body is at most 16 KiB (and HELLO's maxBody), as the
        # kernel bounds its peers'; the client read it with the default 16 MiB limit (case 520).
        for name, kw in (("no maxBody offered", {}), ("maxBody 4096 offered", {"max_body": 4096})):
            size = 20_000 if not kw else 6_000
            err = {"class": "PROTOCOL", "code": "X", "message": "x" * size, "fatal": True}
            async with FakeKernel(lambda c, m: asyncio.sleep(0), instead={"CHALLENGE": ("ERROR", err)}) as k:
                with self.assertRaises(kpip.KpipError, msg=name) as cm:
                    await asyncio.wait_for(self.connect(k, reconnect=False, **kw), 10)
                self.assertEqual(cm.exception.code, "TOO_LARGE", f"{name}: {type(cm.exception).__name__} {cm.exception.code}")

    async def test_a_frame_past_the_handshakes_limit_in_the_read_that_holds_welcome_is_held_to_the_sessions_maxbody(
        self,
    ) -> None:
        # The handshake reads frames of at most 1 MiB; after WELCOME the session's maxBody (4 MiB
        # here) is in force. A 2 MiB frame whose header came in the same read as WELCOME was
        # checked against the handshake's limit and the session refused as TOO_LARGE.
        ping = kpip.messages.encode_message("PING", {"seq": 7, "pad": b"x" * (2 << 20)})

        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=k.sessions)

        async with FakeKernel(handler, after_welcome=ping) as k:
            k.max_body = 4 << 20
            c = await asyncio.wait_for(self.connect(k, reconnect=False), 10)
            self.assertEqual((await asyncio.wait_for(c.call("system.health", "kernel://"), 10)).payload, 1)
            self.assertEqual(k.errors, [], "the client refused nothing")
            await c.close()

    async def test_a_kernel_that_pings_and_never_reads_does_not_grow_the_clients_unsent_bytes(self) -> None:
        # Each PING was answered with a PONG queued behind what the kernel had not read: a kernel
        # sending PINGs and reading nothing grew the client's memory as fast as it sent them (the
        # kernel drops a persona that does this, SLOW_CONSUMER). No PONG is queued behind a backlog.
        ping = kpip.messages.encode_message("PING", {"seq": 1})
        flood = ping * ((1 << 20) // len(ping))

        async def handler(c: Conn, m: kpip.Message) -> None:
            c.writer.write(flood)  # then the answer: the client has taken every PING once it has it
            c.answer(m, payload=1)
            await c.writer.drain()
            await asyncio.Event().wait()  # and never reads again

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            self.assertEqual((await c.call("system.health", "kernel://")).payload, 1)
            assert c._link is not None
            unsent = c._link.writer.transport.get_write_buffer_size()
            self.assertLess(unsent, 256 << 10, f"{unsent} bytes of PONGs queued")
            await c.close(drain=0)


class HeartbeatTheKernelSets(unittest.TestCase):
    def test_a_heartbeat_of_one_millisecond_does_not_make_the_client_ping_2000_times_a_second(self) -> None:
        from kpip.link import MIN_PING_INTERVAL, ping_interval

        self.assertEqual(ping_interval(5000), 2.5)
        self.assertEqual(ping_interval(1), MIN_PING_INTERVAL)
        self.assertEqual(MIN_PING_INTERVAL, 0.05, "as the TypeScript client's tick")


class HeartbeatOfZeroOrOne(unittest.IsolatedAsyncioTestCase):
    async def test_0_is_no_heartbeat_and_1_is_100_ms_not_a_dead_kernel_every_50_ms(self) -> None:
        from kpip.link import MIN_HEARTBEAT_MS

        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)

        for announced, kept in ((0, 0), (1, MIN_HEARTBEAT_MS)):
            # A kernel that never PINGs (nor PONGs): at 0 the client called it dead after 50 ms
            # of quiet (3 x 0) and reconnected, again and again.
            async with FakeKernel(handler, heartbeat_ms=announced) as k:
                c = await kpip.Client.connect(k.path, kpip.Identity.generate("alice"), **FAST)  # type: ignore[arg-type]
                try:
                    link = c._link
                    assert link is not None and link.session is not None
                    self.assertEqual(link.session.heartbeat_ms, kept)
                    if announced == 0:
                        # No heartbeat: the loop ends at once, having sent nothing and judged nothing
                        # (it ended only once this link, or the client's own loop, called the kernel dead).
                        await asyncio.wait_for(link.heartbeat(lambda e: self.fail(f"called dead: {e}")), 5)
                        self.assertFalse(link.dead, "the link was called dead")
                        self.assertIs(c._link, link)
                        self.assertEqual(k.sessions, 1)
                        self.assertEqual([f.type for conn in k.conns for f in conn.frames if f.type == "PING"], [])
                finally:
                    await c.close(drain=0)


class MisusedByItsCaller(unittest.IsolatedAsyncioTestCase):
    async def test_closing_twice_or_calling_after_close_is_kernel_unavailable_with_one_goodbye(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)

        ident = kpip.Identity.generate("alice")
        async with FakeKernel(handler) as k:
            c = await kpip.Client.connect(k.path, ident, **FAST)  # type: ignore[arg-type]
            await asyncio.gather(c.close(), c.close())
            await c.close()
            self.assertEqual(c.state, "closed")
            goodbyes = [f for conn in k.conns for f in conn.frames if f.type == "GOODBYE"]
            self.assertEqual(len(goodbyes), 1, "two closes at once say GOODBYE once")
            with self.assertRaises(kpip.KernelUnavailable):
                await c.call("system.health", "kernel://")
            # The synchronous wrapper (its own loop on a thread) raised RuntimeError("Event loop is
            # closed") on a second close (so `with` after close() raised on exit) and on a call after it.
            s = await asyncio.to_thread(kpip.SyncClient.connect, k.path, ident)
            self.assertEqual((await asyncio.to_thread(s.call, "system.health", "kernel://")).payload, 1)
            await asyncio.to_thread(s.close)
            await asyncio.to_thread(s.close)
            with self.assertRaises(kpip.KernelUnavailable):
                await asyncio.to_thread(s.call, "system.health", "kernel://")


if __name__ == "__main__":
    unittest.main()
