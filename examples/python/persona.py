"""A small Python persona: the same walk as examples/persona.ts. It connects to the kernel
that `npm start` runs, writes and reads storage, subscribes to an event topic, and keeps going
across a kernel restart.

    python3 examples/python/persona.py              # runs until Ctrl-C
    python3 examples/python/persona.py --ticks 5    # stops after 5 ticks

Identity and token default to the admin's in ./.kpip; set KPIP_IDENTITY and KPIP_TOKEN (a file
holding a token from `kpip token mint`) to act as another persona. Without `pip install
./python`, run it from the repository root with PYTHONPATH=python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

import kpip


async def main(ticks: float) -> int:
    home = os.environ.get("KPIP_HOME", ".kpip")
    socket = os.environ.get("KPIP_SOCKET", os.path.join(home, "kernel.sock"))
    try:
        with open(os.environ.get("KPIP_TOKEN", os.path.join(home, "admin.token")), encoding="utf-8") as f:
            token = f.read().strip()
        client = await kpip.Client.connect(
            socket,
            os.environ.get("KPIP_IDENTITY", os.path.join(home, "admin.identity")),
            [token],
            workspace="demo",
            wait_for_kernel=True,
            connect_timeout=30,
        )
    except (kpip.KernelUnavailable, kpip.IdentityError, FileNotFoundError) as e:
        # A missing kernel or identity is the usual first-run mistake: say it plainly.
        print(f"[persona] {e}\n[persona] start a kernel with `npm start` (home {home}) and run this again", file=sys.stderr)
        return 1
    print(f"[persona] connected as {client.persona} (session {client.session_id})")

    # Events arrive on their own; the subscription is renewed after every reconnect.
    events = await client.subscribe("topic://demo/**")

    async def show_events() -> None:
        async for e in events:
            missed = f" (missed {e.gap})" if e.gap else ""
            print(f"[persona] event {e.topic} #{e.seq}{missed}: {e.data}")

    printer = asyncio.create_task(show_events())
    tick = 1
    try:
        while tick <= ticks:
            try:
                # Each call waits through a kernel restart (up to its deadline) instead of failing.
                w = await client.call("storage.write", "obj://demo/counter", {"data": str(tick).encode()}, timeout=20)
                back = await client.call("storage.read", "obj://demo/counter", timeout=20)
                data = back.payload["data"].decode()
                print(f'[persona] tick {tick}: wrote generation {w.payload["generation"]}, read back "{data}"')
                await client.call("event.emit", "topic://demo/ticks", {"data": {"tick": tick}}, timeout=20)
            except kpip.KpipError as e:
                print(f"[persona] the kernel refused tick {tick}: {e.error_class} {e.message}")
            except kpip.LocalError as e:
                print(f"[persona] tick {tick} failed locally: {type(e).__name__}: {e}")
            tick += 1
            await asyncio.sleep(1)
    finally:
        await events.unsubscribe()
        await client.close()
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
    print("[persona] done")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=0, help="stop after this many ticks (default: run until Ctrl-C)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(args.ticks or float("inf"))))
