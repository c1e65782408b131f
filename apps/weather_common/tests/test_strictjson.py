"""Strict JSON: NaN / Infinity never read, never written."""

from __future__ import annotations

import math

import pytest

from weather_common import strictjson


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"t": NaN}', "[1, Infinity]",
                                  '{"t": 1e999}', "-1e400", b'{"t": -Infinity}'])
def test_loads_rejects_non_finite(text):
    with pytest.raises(ValueError):
        strictjson.loads(text)


def test_loads_accepts_normal_json_bytes_and_str():
    assert strictjson.loads(b'{"t": 21.5, "n": 3, "s": "K\\u00f6ln", "z": null}') == {"t": 21.5, "n": 3, "s": "Köln", "z": None}
    assert strictjson.loads("1e308") == 1e308
    with pytest.raises(ValueError):
        strictjson.loads(b"\xff\xfe garbage")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"a": [1.0, math.nan]}])
def test_dumps_rejects_non_finite(value):
    with pytest.raises(ValueError):
        strictjson.dumps(value)
    with pytest.raises(ValueError):
        strictjson.dumps(value, allow_nan=True)  # cannot be switched back on


def test_dumps_roundtrip():
    obj = {"temperature_c": -3.25, "city": "Zürich", "stale": False}
    assert strictjson.loads(strictjson.dumps(obj)) == obj
