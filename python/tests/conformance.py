"""The transport conformance features with this client as the client (KPIP §4).

packages/kernel/test/conformance/python.ts starts one kernel with the conformance limits and
the "square" task, and runs ``python -m tests.conformance`` with KPIP_SOCKET, KPIP_IDENTITY,
KPIP_TOKEN, KPIP_CONFORMANCE_MAX_BODY and KPIP_CONFORMANCE_LARGE set. Each suite below is one
Python column of the README's conformance table and each test one row (``test_<feature>``,
the keys of FEATURES in packages/kernel/test/conformance/transports.ts). Every outcome is
printed as one ``KPIP-CONFORMANCE {json}`` line: that test checks the README against them.
The suites run one after the other on the same kernel, each in its own namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
import unittest
from typing import Any

import kpip
from kpip.link import Link, new_instance_id
from kpip.messages import Message, encode_message
from kpip.tokens import b64url_decode

from .live import require_kernel

REPORT = "KPIP-CONFORMANCE "


def _env_int(name: str) -> int:
    v = os.environ.get(name)
    if not v:
        raise unittest.SkipTest(f"{name} is not set: run by packages/kernel/test/conformance.test.ts")
    return int(v)


class UnixSocket(unittest.IsolatedAsyncioTestCase):
    """Column "Python, Unix socket": every body inline."""

    shm = False
    ns = "pyconf"

    async def asyncSetUp(self) -> None:
        self.socket, self.identity, self.token = require_kernel()
        self.max_body = _env_int("KPIP_CONFORMANCE_MAX_BODY")
        self.large = _env_int("KPIP_CONFORMANCE_LARGE")
        self.clients: list[kpip.Client] = []
        self.admin = await self.connect(self.identity, [self.token])
        self.obj = f"obj://{self.ns}"

    async def asyncTearDown(self) -> None:
        for c in self.clients:
            await c.close()

    async def connect(self, identity: kpip.Identity | str, tokens: list[bytes | str]) -> kpip.Client:
        c = await kpip.Client.connect(self.socket, identity, tokens, reconnect=False, shm=self.shm)
        self.clients.append(c)
        return c

    async def persona(
        self, name: str, rights: list[dict[str, Any]], limits: dict[str, int] | None = None
    ) -> tuple[kpip.Identity, bytes, str]:
        """A persona registered through the door (persona.register) and a token minted for it."""
        identity = kpip.Identity.generate(name)
        await self.admin.call("persona.register", f"persona://{name}", {"publicKey": identity.public_key})
        spec: dict[str, Any] = {"rights": rights, "ttlMs": 3_600_000}
        if limits:
            spec["limits"] = limits
        m = await self.admin.call("token.mint", f"persona://{name}", spec)
        return identity, m.payload["token"], m.payload["id"]

    async def test_handshake(self) -> None:
        self.assertEqual((self.admin.handles, self.admin.refused_tokens), ([1], []))
        self.assertEqual(self.admin.features, ["shm"] if self.shm else [])
        self.assertEqual((await self.admin.call("system.health", "kernel://")).payload["status"], "ok")

    async def test_system(self) -> None:
        d = await self.admin.call("system.describe", "kernel://")
        self.assertTrue(any(o["op"] == "storage.write" for o in d.payload["ops"]))
        self.assertIsInstance((await self.admin.call("system.info", "kernel://")).payload["kernel"], str)

    async def test_storage(self) -> None:
        a, b = f"{self.obj}/a", f"{self.obj}/b"
        await self.admin.call("storage.write", a, {"data": b"alpha"})
        await self.admin.call("storage.write", b, {"data": bytes([0, 1, 2, 255])})
        self.assertEqual((await self.admin.call("storage.read", a)).payload["data"], b"alpha")
        self.assertEqual((await self.admin.call("storage.read", b)).payload["data"], bytes([0, 1, 2, 255]))
        self.assertEqual((await self.admin.call("storage.stat", a)).payload["size"], 5)
        self.assertEqual((await self.admin.call("storage.list", self.obj, {"limit": 1})).status, "PARTIAL")
        await self.admin.call("storage.delete", a)
        with self.assertRaises(kpip.SemanticError):
            await self.admin.call("storage.read", a)

    async def test_tokens(self) -> None:
        t = f"{self.obj}/t"
        await self.admin.call("storage.write", t, {"data": b"for bob"})
        rights = [{"ops": ["storage.read"], "targets": [f"{self.obj}/**"]}]
        bob, token, token_id = await self.persona(f"bob-{self.ns}", rights)
        c = await self.connect(bob, [token])
        self.assertEqual((await c.call("storage.read", t)).payload["data"], b"for bob")
        ins = await self.admin.call("token.inspect", f"token://{token_id}", {"token": token})
        self.assertEqual(ins.payload["status"], "valid")
        await self.admin.call("token.revoke", f"token://{token_id}")
        with self.assertRaises(kpip.CapabilityError):
            await c.call("storage.read", t)

    async def test_events(self) -> None:
        sub = await self.admin.subscribe(f"topic://{self.ns}/*")
        await self.admin.call("event.emit", f"topic://{self.ns}/x", {"data": {"n": 42}})
        e = await sub.get(timeout=60)
        self.assertEqual((e.topic, e.data), (f"topic://{self.ns}/x", {"n": 42}))

    async def test_deferred(self) -> None:
        d = await self.admin.call("compute.submit", "op://task/square", {"args": 9})
        self.assertEqual(d.status, "DEFERRED")
        self.assertIsInstance(d.payload["id"], str)
        done = await self.admin.wait_op(d.payload["op"], timeout=120)
        self.assertEqual(done.payload["result"], 81)
        self.assertEqual((await self.admin.call("op.status", d.payload["op"])).payload["state"], "succeeded")

    async def test_resources(self) -> None:
        me = f"persona://{self.admin.persona}"
        a = await self.admin.call("resource.alloc", me, {"resource": "gpu", "amount": 2})
        self.assertEqual((await self.admin.call("resource.query", me)).payload["usage"]["gpu"], 2)
        await self.admin.call("resource.free", me, {"allocation": a.payload["allocation"]})
        self.assertEqual((await self.admin.call("resource.query", me)).payload["usage"].get("gpu", 0), 0)

    async def test_agents(self) -> None:
        if os.environ.get("KPIP_CONFORMANCE_NO_SANDBOX"):
            self.skipTest(os.environ["KPIP_CONFORMANCE_NO_SANDBOX"])
        agent = f"agent://sleep/conf-{self.ns}"
        await self.admin.call("agent.spawn", agent, {"args": ["20"], "rights": [], "lifetimeMs": 20_000})
        self.assertEqual((await self.admin.call("agent.status", agent)).payload["state"], "running")
        await self.admin.call("agent.kill", agent)

    async def test_errors(self) -> None:
        with self.assertRaises(kpip.SemanticError):
            await self.admin.call("no.such.op", "kernel://")
        eve_id = f"eve-{self.ns}"
        rights = [{"ops": ["system.health", "resource.alloc"], "targets": ["kernel://", f"persona://{eve_id}"]}]
        eve, token, _ = await self.persona(eve_id, rights, {"gpu": 1})
        c = await self.connect(eve, [token])
        with self.assertRaises(kpip.ResourceExhausted):
            await c.call("resource.alloc", f"persona://{eve_id}", {"resource": "gpu", "amount": 2})
        with self.assertRaises(kpip.PermissionDenied):
            await c.call("storage.read", f"{self.obj}/anything")
        with self.assertRaises(kpip.CapabilityError):
            await c.call("storage.read", f"{self.obj}/anything", caps=[])
        with self.assertRaises(kpip.AuthError):
            await self.connect(kpip.Identity.generate("nobody"), [])

    async def test_limits(self) -> None:
        huge = f"{self.obj}/huge"
        body = bytes(self.max_body + 1024)
        with self.assertRaises(kpip.FrameError) as local:
            await self.admin.call("storage.write", huge, {"data": body})
        self.assertEqual(local.exception.code, "TOO_LARGE")
        # Sent anyway, the kernel refuses it at the frame header and ends only that session.
        answer = await self._raw_request("storage.write", huge, {"data": body})
        self.assertEqual(answer.type, "ERROR")
        self.assertEqual((answer.body["class"], answer.body["code"], answer.body["fatal"]), ("PROTOCOL", "TOO_LARGE", True))
        fresh = await self.connect(self.identity, [self.token])
        self.assertEqual((await fresh.call("system.health", "kernel://")).payload["status"], "ok")
        with self.assertRaises(kpip.SemanticError):
            await fresh.call("storage.read", huge)

    async def _raw_request(self, op: str, target: str, args: dict[str, Any]) -> Message:
        """One REQUEST on a session of its own, past the client's size check; the first answer."""
        link = await Link.open(self.socket)
        try:
            identity = kpip.Identity.load(self.identity)
            session = await link.handshake(identity, new_instance_id(), [b64url_decode(self.token)], None)
            got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            link.start(lambda m: got.done() or got.set_result(m), lambda e: got.done() or got.set_exception(e))
            intent = kpip.encode_intent({"op": op, "target": target, "args": args})
            me = identity.persona
            body = {"version": session.version, "persona": me, "id": 1, "intent": intent, "context": {"persona": me}, "caps": [1]}
            link.write(encode_message("REQUEST", body, 1))
            return await asyncio.wait_for(got, 60)
        finally:
            link.close()

    async def test_large(self) -> None:
        big = b"".join(i.to_bytes(4, "big") for i in range(0, self.large, 4))
        await self.admin.call("storage.write", f"{self.obj}/big", {"data": big})
        self.assertEqual((await self.admin.call("storage.read", f"{self.obj}/big")).payload["data"], big)
        frames = self.admin.shm_frames
        if self.shm:
            self.assertTrue(frames["sent"] > 0 and frames["received"] > 0, f"not through shared memory both ways: {frames}")
        else:
            self.assertEqual(frames, {"sent": 0, "received": 0})

    async def test_audit(self) -> None:
        # The kernel's side (chain verifies, this write's outcome record) is checked by the TS test.
        w = await self.admin.call("storage.write", f"{self.obj}/audited", {"data": b"x"})
        self.assertEqual(w.status, "SUCCESS")


class UnixSocketShm(UnixSocket):
    """Column "Python, Unix socket + shm": bodies over 64 KiB through shared memory (§3.7)."""

    shm = True
    ns = "pyconfshm"


class Report(unittest.TestResult):
    """Prints each outcome as a JSON line the TS test reads: suite, feature, outcome, detail."""

    def _emit(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        suite, feature = type(test).__name__, test._testMethodName.removeprefix("test_")
        line = {"suite": suite, "feature": feature, "ns": getattr(test, "ns", ""), "outcome": outcome, "detail": detail}
        print(REPORT + json.dumps(line), flush=True)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._emit(test, "ok")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._emit(test, "failed", "".join(traceback.format_exception(*err)))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._emit(test, "failed", "".join(traceback.format_exception(*err)))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._emit(test, "skipped", reason)


if __name__ == "__main__":
    result = Report()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(cls) for cls in (UnixSocket, UnixSocketShm))
    suite.run(result)
    sys.exit(0 if result.wasSuccessful() else 1)
