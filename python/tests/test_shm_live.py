"""Shared memory (§3.7) against a real kernel (npm test starts one; see live.py)."""

from __future__ import annotations

import asyncio
import os
import unittest

import kpip

from .live import require_kernel
from .test_client import until


def segment_files(c: kpip.Client) -> tuple[str, str]:
    """The files of the session's segments: the persona's (.p) and the kernel's (.k)."""
    assert c.session is not None
    base = f"/dev/shm/kpip.{c.session.kernel_id}.{c.session.session_id}"
    return f"{base}.p", f"{base}.k"


class LiveSharedMemory(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.socket, self.identity, self.token = require_kernel()

    async def test_a_large_write_and_read_travel_through_shared_memory_and_leave_nothing(self) -> None:
        c = await kpip.Client.connect(self.socket, self.identity, [self.token], workspace="pyws")
        try:
            self.assertEqual(c.features, ["shm"])
            own, kernels = segment_files(c)
            data = os.urandom(3 * 1024 * 1024)
            w = await c.call("storage.write", "obj://pyws/shm-big", {"data": data})
            r = await c.call("storage.read", "obj://pyws/shm-big")
            self.assertEqual((r.payload["data"], r.payload["generation"]), (data, w.payload["generation"]))
            self.assertEqual(c.shm_frames, {"sent": 1, "received": 1})
            self.assertTrue(os.path.exists(own) and os.path.exists(kernels))
        finally:
            await c.close()
        self.assertFalse(os.path.exists(own), "the persona's segment outlived the session")
        await until(lambda: not os.path.exists(kernels), "the kernel to remove its segment")

    async def test_pipelined_large_writes_all_arrive_through_the_segment_or_inline(self) -> None:
        c = await kpip.Client.connect(self.socket, self.identity, [self.token], workspace="pyws")
        try:
            blobs = [os.urandom(512 * 1024) for _ in range(6)]
            await asyncio.gather(*(c.call("storage.write", f"obj://pyws/shm-{i}", {"data": b}) for i, b in enumerate(blobs)))
            reads = await asyncio.gather(*(c.call("storage.read", f"obj://pyws/shm-{i}") for i in range(6)))
            self.assertEqual([r.payload["data"] for r in reads], blobs)
            frames = c.shm_frames
            # One body outstanding per direction: the rest went inline, all arrived intact.
            self.assertTrue(1 <= frames["sent"] <= 6 and 1 <= frames["received"] <= 6, frames)
        finally:
            await c.close()

    async def test_shm_false_keeps_every_body_inline(self) -> None:
        c = await kpip.Client.connect(self.socket, self.identity, [self.token], workspace="pyws", shm=False)
        try:
            self.assertEqual(c.features, [])
            data = os.urandom(1024 * 1024)
            await c.call("storage.write", "obj://pyws/inline-big", {"data": data})
            self.assertEqual((await c.call("storage.read", "obj://pyws/inline-big")).payload["data"], data)
            self.assertEqual(c.shm_frames, {"sent": 0, "received": 0})
            self.assertFalse(any(os.path.exists(p) for p in segment_files(c)))
        finally:
            await c.close()
