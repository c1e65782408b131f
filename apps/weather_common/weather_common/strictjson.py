"""Strict JSON: NaN, Infinity and -Infinity are neither read nor written.

Python's ``json`` accepts and emits the non-standard literals ``NaN``/``Infinity`` by default
and parses an overflowing number such as ``1e999`` to ``inf``. Data from outside (OWM,
Consul KV, a producer) goes through :func:`loads`; everything we emit goes through
:func:`dumps` (and the Flask provider installed by ``observability.init_app``), so a
non-finite float becomes an error on our side instead of invalid JSON on the wire.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads", "dumps", "NonFiniteNumber"]


class NonFiniteNumber(ValueError):
    """A JSON document held NaN, Infinity, -Infinity or a number that overflows a float."""


def _reject_constant(name: str) -> Any:
    raise NonFiniteNumber(f"non-finite number {name} in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber("number out of float range in JSON")
    return value


def loads(data: bytes | bytearray | str) -> Any:
    """Decode JSON; raise ``ValueError`` on bad JSON and on non-finite numbers."""
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)


def dumps(obj: Any, **kw: Any) -> str:
    """Encode JSON with ``allow_nan=False`` (``ValueError`` on NaN/Infinity)."""
    kw["allow_nan"] = False
    return json.dumps(obj, **kw)
