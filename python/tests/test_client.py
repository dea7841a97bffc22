"""Client behaviour against a scripted kernel: retries, reconnects, heartbeats, refusals."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import unittest
from collections.abc import Callable
from typing import Any
from unittest import mock

import kpip
import kpip.link
from kpip import cbor
from kpip.client import Backoff
from kpip.intent import decode_intent
from kpip.tokens import root_signature

from .fake_kernel import Conn, FakeKernel

FAST = {"retry_backoff": Backoff(0.001, 0.01), "reconnect_backoff": Backoff(0.001, 0.05)}


async def until(f, what: str, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + seconds
    while not f():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def alice_tokens() -> Callable[[int], bytes]:
    """Alice's n-th token, under a root no kernel knows (a fake kernel never checks it)."""
    now = int(time.time() * 1000)
    root = os.urandom(32)

    def token(n: int) -> bytes:
        claims = cbor.encode(
            {
                "id": f"{n:032x}",
                "kid": "k",
                "sub": "alice",
                "rights": [{"ops": ["system.health"], "targets": ["kernel://"]}],
                "limits": {},
                "nbf": now - 1000,
                "exp": now + 3_600_000,
                "maxExp": now + 3_600_000,
                "chain": [],
            }
        )
        return cbor.encode([1, claims, [], root_signature(root, claims)])

    return token


class AgainstAFakeKernel(unittest.IsolatedAsyncioTestCase):
    ident = kpip.Identity.generate("alice")

    async def connect(self, k: FakeKernel, **kw: object) -> kpip.Client:
        return await kpip.Client.connect(k.path, self.ident, **{**FAST, **kw})  # type: ignore[arg-type]

    async def refuses_welcome(self, handler: Any, welcome: tuple[str, dict[str, Any]], tokens: list[bytes]) -> None:
        """A kernel answering ATTEST with `welcome` fails the connect, and the client tells it BAD_FIELD."""
        async with FakeKernel(handler, instead={"WELCOME": welcome}) as k:
            with self.assertRaises(kpip.ProtocolViolation) as cm:
                await self.connect(k, reconnect=False, tokens=tokens)
            self.assertEqual(cm.exception.code, "BAD_FIELD")
            await until(lambda: k.errors, "the client's ERROR")
            e = k.errors[0].body
            self.assertEqual((e["class"], e["code"], e["fatal"]), ("PROTOCOL", "BAD_FIELD", True))

    async def test_resource_and_internal_are_retried_with_the_same_id_and_bytes(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            n = len(k.requests)
            if n == 1:
                c.answer(m, "FAILURE", error="RESOURCE", message="busy")
            elif n == 2:
                c.answer(m, "FAILURE", error="INTERNAL", message="oops")
            else:
                c.answer(m, payload={"n": n})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            r = await c.call("system.health", "kernel://")
            self.assertEqual(r.payload, {"n": 3})
            self.assertEqual(len({(m.body["id"], m.body["intent"], m.stream) for m in k.requests}), 1)
            await c.close()

    async def test_a_handshake_refused_with_a_retry_code_is_tried_again_within_the_connect_timeout(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload={"ok": True})

        async with FakeKernel(handler, refuse=["SESSION_RATE_LIMITED", "HANDSHAKE_SHED"]) as k:
            c = await self.connect(k)
            self.assertEqual(k.sessions, 3)
            self.assertEqual((await c.call("system.health", "kernel://")).payload, {"ok": True})
            await c.close()
        # Any other refusal is final at once; a retry code past the timeout is the kernel's refusal.
        async with FakeKernel(handler, refuse=["TOO_MANY_SESSIONS"]) as k:
            with self.assertRaises(kpip.ResourceExhausted) as e:
                await self.connect(k)
            self.assertEqual((e.exception.code, k.sessions), ("TOO_MANY_SESSIONS", 1))
        async with FakeKernel(handler, refuse=["SESSION_RATE_LIMITED"] * 1000) as k:
            with self.assertRaises(kpip.ResourceExhausted) as e:
                await self.connect(k, connect_timeout=0.3)
            self.assertEqual(e.exception.code, "SESSION_RATE_LIMITED")
            self.assertGreater(k.sessions, 1)

    async def test_non_retryable_failures_are_not_retried(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, "FAILURE", error="PERMISSION", message="no")

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.PermissionDenied):
                await c.call("system.health", "kernel://")
            self.assertEqual(len(k.requests), 1)
            await c.close()

    async def test_a_failure_with_a_payload_raises_it_on_the_error(self) -> None:
        # op.result of a failed command: FAILURE, its payload the op's status and output.
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, "FAILURE", error="SEMANTIC", message="op failed: sh exited with 3", payload={"state": "failed"})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.SemanticError) as e:
                await c.call("op.result", "op://" + "0" * 32)
            self.assertEqual(e.exception.payload, {"state": "failed"})
            await c.close()

    async def test_a_lost_connection_reconnects_reattests_and_resends_the_same_id(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            if k.sessions == 1:
                c.writer.close()  # the kernel dies with the request in flight
            else:
                c.answer(m, payload={"session": k.sessions})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            r = await c.call("system.health", "kernel://", timeout=30)
            self.assertEqual(r.payload, {"session": 2})
            self.assertEqual(k.attested, [True, True])
            self.assertEqual([m.body["id"] for m in k.requests], [1, 1])
            await c.close()

    async def test_a_bug_while_reconnecting_ends_the_client_with_it_instead_of_reconnecting_for_ever(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.writer.close()  # the kernel dies with the request in flight

        class Bug(Exception):
            pass

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            # A failure that is no connection's, transport's nor protocol's: a programming error.
            with mock.patch.object(kpip.link.Link, "handshake", side_effect=Bug("a bug in the handshake")):
                with self.assertRaises(Bug):
                    await c.call("system.health", "kernel://", timeout=30)
            self.assertEqual(c.state, "closed")
            self.assertIsInstance(c.last_error, Bug)
            with self.assertRaises(kpip.KernelUnavailable):
                await c.call("system.health", "kernel://")
        # A connection, transport or protocol failure is still retried: another user's socket,
        # a connection reset, a kernel breaking the protocol, then the kernel is back.
        async def dies_once(c: Conn, m: kpip.Message) -> None:
            if k.sessions == 1:
                c.writer.close()
            else:
                c.answer(m, payload=1)

        async with FakeKernel(dies_once) as k:
            c = await self.connect(k)
            failures = iter(
                [kpip.UntrustedSocket("another user's"), ConnectionResetError(), kpip.ProtocolViolation("bad", "BAD_FIELD")]
            )
            real = kpip.link.Link.handshake

            async def flaky(self: kpip.link.Link, *a: Any, **kw: Any) -> kpip.link.Session:
                e = next(failures, None)
                if e is not None:
                    raise e
                return await real(self, *a, **kw)

            with mock.patch.object(kpip.link.Link, "handshake", flaky):
                self.assertEqual((await c.call("system.health", "kernel://", timeout=30)).payload, 1)
            self.assertIsNone(next(failures, None), "each failure was met, and retried")
            self.assertEqual(c.state, "ready")
            await c.close()

    async def test_after_the_kernels_goodbye_calls_sent_are_answered_there_and_new_ones_wait_for_the_next_session(self) -> None:
        release = asyncio.Event()
        on_session: dict[int, list[int]] = {}

        async def handler(c: Conn, m: kpip.Message) -> None:
            on_session.setdefault(k.sessions, []).append(m.body["id"])
            if k.sessions > 1:
                c.answer(m, payload={"session": k.sessions})
                return
            if len(on_session[1]) > 1:
                c.answer(m, "FAILURE", error="PROTOCOL", message="sent after the kernel's GOODBYE")
                return
            # The kernel's stop (§8.6): GOODBYE as its drain begins, the request in flight answered later.
            c.send("GOODBYE", {"reason": "the kernel is stopping"})

            async def answer_then_close() -> None:
                await release.wait()
                c.answer(m, payload={"session": 1})
                await c.writer.drain()
                c.writer.close()

            asyncio.ensure_future(answer_then_close())

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            first = asyncio.ensure_future(c.call("system.health", "kernel://", timeout=30))
            for _ in range(3000):
                if c._link is not None and c._link.closing:
                    break
                await asyncio.sleep(0.01)
            self.assertTrue(c._link is not None and c._link.closing, "the client saw the GOODBYE")
            second = asyncio.ensure_future(c.call("system.health", "kernel://", timeout=30))
            await asyncio.sleep(0.05)
            release.set()
            self.assertEqual((await first).payload, {"session": 1}, "answered by the session it was sent on, not resent")
            self.assertEqual((await second).payload, {"session": 2}, "sent on the next session only")
            self.assertEqual(on_session, {1: [1], 2: [2]})
            await c.close()

    async def test_auth_on_a_response_reattests_once_then_raises(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, "FAILURE", error="AUTH", message="who are you")

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.AuthError):
                await c.call("system.health", "kernel://", timeout=30)
            self.assertEqual(k.sessions, 2)
            self.assertEqual(len(k.requests), 2)
            await c.close()

    async def test_a_silent_kernel_is_declared_dead_and_replaced(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m)

        async with FakeKernel(handler, heartbeat_ms=100) as k:  # never pings, never pongs
            c = await self.connect(k)
            await until(lambda: k.sessions >= 2, "a second session after the silence")
            await until(lambda: c.state == "ready", "ready again")
            self.assertEqual((await c.call("system.health", "kernel://", timeout=30)).status, "SUCCESS")
            await c.close()

    async def test_a_subscription_refused_at_its_renewal_ends_with_the_refusal_and_hears_no_other_ones_events(self) -> None:
        # Session 1 gives a and b ids 1 and 2; after the reconnect a is refused and b is given 1.
        async def handler(c: Conn, m: kpip.Message) -> None:
            intent = decode_intent(m.body["intent"])
            if intent["op"] != "event.subscribe":
                c.answer(m, payload={})
            elif k.sessions == 1:
                c.answer(m, payload={"subscription": 1 if intent["target"] == "topic://a/**" else 2})
            elif intent["target"] == "topic://a/**":
                c.answer(m, "FAILURE", error="PERMISSION", message="no")
            else:
                c.answer(m, payload={"subscription": 1})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            a = await c.subscribe("topic://a/**")
            b = await c.subscribe("topic://b/**")
            k.conns[0].writer.close()
            await until(lambda: k.sessions == 2 and b.remote_id == 1 and a.closed, "b made again, a refused")
            k.conns[-1].send("EVENT", {"subscription": 1, "topic": "topic://b/x", "seq": 1, "data": 7})
            self.assertEqual((await b.get(timeout=30)).topic, "topic://b/x")
            # a was not made again: its reader gets the refusal, then the end — never b's event.
            with self.assertRaises(kpip.PermissionDenied):
                await a.get(timeout=30)
            self.assertIsInstance(a.error, kpip.PermissionDenied)
            with self.assertRaises(StopAsyncIteration):
                await a.get(timeout=30)
            await c.close()

    async def test_a_fatal_auth_error_closes_the_client_without_reconnecting(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.send("ERROR", {"class": "AUTH", "code": "PERSONA_REMOVED", "message": "gone", "fatal": True})

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            with self.assertRaises(kpip.AuthError) as cm:
                await c.call("system.health", "kernel://", timeout=30)
            self.assertEqual(cm.exception.code, "PERSONA_REMOVED")
            self.assertEqual((c.state, k.sessions), ("closed", 1))
            with self.assertRaises(kpip.KernelUnavailable):
                await c.call("system.health", "kernel://")

    async def test_a_response_for_no_call_is_ignored_and_no_call_is_answered_twice(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)
            c.answer(m, payload=2)  # a duplicate answer
            c.send("RESPONSE", {"version": 1, "id": 999, "status": "SUCCESS"}, 999)

        async with FakeKernel(handler) as k:
            c = await self.connect(k)
            self.assertEqual((await c.call("system.health", "kernel://")).payload, 1)
            self.assertEqual((await c.call("system.health", "kernel://")).payload, 1)
            self.assertEqual(c.in_flight, 0)
            await c.close()

    async def test_out_of_order_handshake_message_is_a_protocol_violation(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.send("WELCOME", {"persona": "alice", "handles": []})

        async with FakeKernel(handler) as k:
            c = await self.connect(k, reconnect=False)
            with self.assertRaises(kpip.ProtocolViolation):
                await c.call("system.health", "kernel://", timeout=30)

    async def test_a_message_out_of_order_is_refused_in_a_fatal_protocol_error_unexpected_message(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.send("WELCOME", {"persona": "alice", "handles": []})  # a second WELCOME, once ready

        response = ("RESPONSE", {"version": 1, "id": 1, "status": "SUCCESS"})
        # §8.1, as the TypeScript client and the kernel do: the kernel is told why before the close.
        for instead in ({"CHALLENGE": ("PING", {"seq": 1})}, {"WELCOME": response}, {}):
            with self.subTest(instead=next(iter(instead), "a second WELCOME")):
                async with FakeKernel(handler, instead=instead) as k:
                    with self.assertRaises(kpip.ProtocolViolation) as cm:
                        c = await self.connect(k, reconnect=False)
                        await c.call("system.health", "kernel://", timeout=30)
                    self.assertEqual(cm.exception.code, "UNEXPECTED_MESSAGE")
                    await until(lambda: k.errors, "the client's ERROR")
                    e = k.errors[0].body
                    self.assertEqual((e["class"], e["code"], e["fatal"]), ("PROTOCOL", "UNEXPECTED_MESSAGE", True))

    async def test_a_welcome_whose_handles_are_not_one_per_token_presented_is_a_protocol_violation(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)

        token = alice_tokens()

        # §6.6: one handle per token ATTEST presented (two here), in order.
        for handles in ([1], [], [1, 2, 3]):
            with self.subTest(handles=handles):
                welcome = ("WELCOME", {"persona": "alice", "handles": handles})
                await self.refuses_welcome(handler, welcome, [token(1), token(2)])
        async with FakeKernel(handler) as k:  # one per token: the session opens
            c = await self.connect(k, reconnect=False, tokens=[token(1), token(2)])
            self.assertEqual((await c.call("system.health", "kernel://")).payload, 1)
            await c.close()

    async def test_a_welcome_for_another_persona_with_a_handle_twice_or_a_refusal_of_no_unbound_token_is_a_protocol_violation(
        self,
    ) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)

        token = alice_tokens()

        def why(index: int) -> dict[str, Any]:
            return {"index": index, "code": "EXPIRED", "message": "expired"}

        # §6.6, for the two tokens ATTEST presents.
        cases: list[tuple[str, dict[str, Any]]] = [
            ("another persona", {"persona": "mallory", "handles": [1, 2]}),
            ("one handle for two tokens", {"persona": "alice", "handles": [3, 3]}),
            ("a refusal of a token not presented", {"persona": "alice", "handles": [1, 0], "refused": [why(1), why(2)]}),
            ("a refusal of a token it bound", {"persona": "alice", "handles": [1, 0], "refused": [why(0)]}),
            ("a token refused twice", {"persona": "alice", "handles": [1, 0], "refused": [why(1), why(1)]}),
        ]
        for name, body in cases:
            with self.subTest(name):
                await self.refuses_welcome(handler, ("WELCOME", body), [token(1), token(2)])
        # HELLO's persona, distinct handles, a refusal of the one token left unbound: the session opens.
        ok = ("WELCOME", {"persona": "alice", "handles": [0, 7], "refused": [why(0)]})
        async with FakeKernel(handler, instead={"WELCOME": ok}) as k:
            c = await self.connect(k, reconnect=False, tokens=[token(1), token(2)])
            self.assertEqual(c.refused_tokens, [why(0)])
            self.assertEqual(k.errors, [])
            await c.close()

    async def test_a_max_body_above_the_offer_or_below_the_minimum_is_a_protocol_violation(self) -> None:
        async def handler(c: Conn, m: kpip.Message) -> None:
            c.answer(m, payload=1)

        # Offered 64 KiB, granted 1 GiB: the client would buffer (and with shm reserve) 16,000 times what it agreed to.
        for granted, offered in ((1 << 30, 65536), (1000, None)):
            with self.subTest(granted=granted, offered=offered):
                async with FakeKernel(handler) as k:
                    k.max_body = granted
                    with self.assertRaises(kpip.ProtocolViolation):
                        await self.connect(k, reconnect=False, max_body=offered)
                    await until(lambda: k.errors, "the client's ERROR")
                    self.assertEqual((k.errors[0].body["class"], k.errors[0].body["code"]), ("PROTOCOL", "BAD_FIELD"))

    async def test_no_kernel_is_kernel_unavailable(self) -> None:
        with self.assertRaises(kpip.KernelUnavailable):
            await kpip.Client.connect("/nonexistent/kpip.sock", self.ident)


if __name__ == "__main__":
    unittest.main()


class SocketOwner(unittest.IsolatedAsyncioTestCase):
    """A kernel's socket is its own user's (PROTOCOL §3.4): one served by another user is never spoken to."""

    async def test_a_socket_of_another_user_is_refused_before_anything_is_sent(self) -> None:
        heard: list[int] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            heard.append(len(await reader.read()))  # all the client sent before it closed
            writer.close()

        root = os.geteuid() == 0
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "kernel.sock")
            if root:
                # The listener as uid 65534 (SO_PEERCRED names who called listen()), its socket file
                # then given to the client's uid, 65533: as if swapped in after a check of the file.
                os.chmod(d, 0o777)
                os.seteuid(65534)
                try:
                    server = await asyncio.start_unix_server(on_connect, path)
                finally:
                    os.seteuid(0)
                listener, me = 65534, 65533
                os.chown(path, me, me)
            else:
                server = await asyncio.start_unix_server(on_connect, path)
                listener, me = os.geteuid(), os.geteuid() + 1
            try:
                with mock.patch("kpip.link.os.geteuid", return_value=me):
                    with self.assertRaises(kpip.UntrustedSocket) as caught:
                        await kpip.Client.connect(path, kpip.Identity.generate("alice"), **FAST)  # type: ignore[arg-type]
                self.assertIn(f"runs as uid {listener}, not as this user (uid {me})", str(caught.exception))
                await until(lambda: len(heard) == 1, "the listener to see the client go")
                self.assertEqual(heard, [0], "nothing was sent to it")
                # The listener's own user, and root, are let through to the handshake.
                for uid in (listener, 0):
                    with socket.socket(socket.AF_UNIX) as s, mock.patch("kpip.link.os.geteuid", return_value=uid):
                        s.connect(path)
                        self.assertIsNone(kpip.link.untrusted_peer(s, path))
            finally:
                server.close()
                await server.wait_closed()
