"""Python client p50 latency and throughput against a running kernel (informational).

    python3 python/bench.py --home .kpip [--n 2000] [--inflight 64]
    python3 python/bench.py --home .kpip --bulk 20     # 3 MiB reads, shared memory on and off

Sequential `system.health` calls for the p50, then `--inflight` calls kept in flight for the
throughput. bench-ts.mjs measures the TypeScript client the same way, for BENCHMARKS.md.
`--bulk N` instead times N sequential 3 MiB `storage.read`s with and without shared memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kpip  # noqa: E402


async def main(home: str, n: int, inflight: int) -> None:
    with open(os.path.join(home, "admin.token"), encoding="utf-8") as f:
        token = f.read().strip()
    c = await kpip.Client.connect(os.path.join(home, "kernel.sock"), os.path.join(home, "admin.identity"), [token])
    try:
        for _ in range(200):  # warm-up
            await c.call("system.health", "kernel://")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.call("system.health", "kernel://")
            lat.append(time.perf_counter() - t0)
        done = 0
        end = time.perf_counter() + 3.0

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await c.call("system.health", "kernel://")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(inflight)))
        rps = done / (time.perf_counter() - t0)
        print(f"python.uds.p50_us {statistics.median(lat) * 1e6:.0f}")
        print(f"python.uds.rps_{inflight} {rps:.0f}")
    finally:
        await c.close()


async def bulk(home: str, n: int) -> None:
    with open(os.path.join(home, "admin.token"), encoding="utf-8") as f:
        token = f.read().strip()
    data = os.urandom(3 * 1024 * 1024)
    for shm in (True, False):
        c = await kpip.Client.connect(
            os.path.join(home, "kernel.sock"), os.path.join(home, "admin.identity"), [token], workspace="bench", shm=shm
        )
        try:
            await c.call("storage.write", "obj://bench/bulk", {"data": data})
            lat = []
            for _ in range(n + 2):
                t0 = time.perf_counter()
                r = await c.call("storage.read", "obj://bench/bulk")
                lat.append(time.perf_counter() - t0)
                assert r.payload["data"] == data
            name = "shm" if "shm" in c.features else "inline"
            print(f"python.uds.{name}.read_3MiB_p50_ms {statistics.median(lat[2:]) * 1e3:.1f} (frames via shm: {c.shm_frames})")
        finally:
            await c.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--home", default=".kpip")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--bulk", type=int, default=0)
    a = p.parse_args()
    asyncio.run(bulk(a.home, a.bulk) if a.bulk else main(a.home, a.n, a.inflight))
