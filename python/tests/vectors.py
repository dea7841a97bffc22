"""Loads spec/vectors (JSON-ish: {"$bytes": hex} and {"$int": decimal})."""

from __future__ import annotations

import json
import os
from typing import Any

SPEC = os.environ.get("KPIP_SPEC_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "spec")


def load(name: str) -> dict[str, Any]:
    with open(os.path.join(SPEC, "vectors", name), encoding="utf-8") as f:
        return json.load(f)


def from_json(v: Any) -> Any:
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return bytes.fromhex(v["$bytes"])
        if set(v) == {"$int"}:
            return int(v["$int"])
        return {k: from_json(x) for k, x in v.items()}
    return v
