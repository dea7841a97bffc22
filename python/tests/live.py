"""The kernel a live test talks to, from the environment the npm test sets (or skip)."""

from __future__ import annotations

import os
import unittest

SOCKET = os.environ.get("KPIP_SOCKET", "")
IDENTITY = os.environ.get("KPIP_IDENTITY", "")
TOKEN_FILE = os.environ.get("KPIP_TOKEN", "")


def require_kernel() -> tuple[str, str, str]:
    """(socket, identity file, token text); skips when no kernel was given."""
    if not (SOCKET and IDENTITY and TOKEN_FILE):
        raise unittest.SkipTest("no kernel: set KPIP_SOCKET, KPIP_IDENTITY and KPIP_TOKEN (npm test does)")
    with open(TOKEN_FILE, encoding="utf-8") as f:
        return SOCKET, IDENTITY, f.read().strip()
