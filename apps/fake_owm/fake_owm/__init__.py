"""A fake OpenWeatherMap for tests and the lab.

``GET /data/2.5/weather?zip=<zip>,<cc>&appid=<key>&units=metric`` answers OWM-shaped JSON,
deterministic per zip. Unknown zips (config ``UNKNOWN_ZIPS``, default ``["00000"]``, plus
any zip starting with ``"000"``) give 404 ``{"cod": "404", "message": "city not found"}``;
a key not in the valid keys gives 401.

Runtime control (no auth: it is a test double):

* ``POST /_control`` JSON ``{"mode": "ok|error|slow|429|401|timeout", "delay": seconds}``
  - ``error``: 500; ``slow``: sleep ``delay`` (default 2) then answer normally;
  ``429``: rate limited; ``401``: every key rejected; ``timeout``: hang ``delay``
  (default 60 s, longer than any client timeout) then 504. Switching mode wakes hung
  requests. ``GET /_control`` shows the current mode.
* ``GET /_stats`` -> ``{"total", "by_mode", "by_status", "last_60s", "by_zip"}``;
  ``POST /_stats/reset`` zeroes them.

Configuration (``create_app(test_config)`` / env ``FAKE_OWM_*``): ``API_KEYS`` (list),
``API_KEYS_FILE`` (one key per line), ``UNKNOWN_ZIPS``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from typing import Any

from flask import Flask, jsonify, request

from weather_common.observability import init_app

MODES = ("ok", "error", "slow", "429", "401", "timeout")
DESCRIPTIONS = ("clear sky", "few clouds", "scattered clouds", "broken clouds", "light rain",
                "moderate rain", "thunderstorm", "snow", "mist", "overcast clouds")


class FakeState:
    """Mode and call statistics, shared by the request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "ok"
        self.delay: float | None = None
        self.wake = threading.Event()  # set when the mode changes: hung requests return
        self.reset_stats()

    def reset_stats(self) -> None:
        with self.lock:
            self.total = 0
            self.by_mode: collections.Counter[str] = collections.Counter()
            self.by_status: collections.Counter[str] = collections.Counter()
            self.by_zip: collections.Counter[str] = collections.Counter()
            self.times: collections.deque[float] = collections.deque()

    def set_mode(self, mode: str, delay: float | None) -> None:
        with self.lock:
            self.mode, self.delay = mode, delay
            old, self.wake = self.wake, threading.Event()
        old.set()

    def record(self, mode: str, zip_code: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.total += 1
            self.by_mode[mode] += 1
            self.by_zip[zip_code] += 1
            self.times.append(now)
            while self.times and now - self.times[0] > 60:
                self.times.popleft()

    def record_status(self, status: int) -> None:
        with self.lock:
            self.by_status[str(status)] += 1

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            return {
                "total": self.total,
                "by_mode": dict(self.by_mode),
                "by_status": dict(self.by_status),
                "last_60s": sum(1 for t in self.times if now - t <= 60),
                "by_zip": dict(self.by_zip),
                "mode": self.mode,
            }


def weather_for(zip_code: str, country: str) -> dict[str, Any]:
    """Deterministic OWM-shaped weather for a zip."""
    h = int(hashlib.sha256(f"{zip_code},{country}".encode()).hexdigest(), 16)
    temp = round(-10 + (h % 4000) / 100, 2)  # -10.00 .. 29.99
    desc = DESCRIPTIONS[(h >> 16) % len(DESCRIPTIONS)]
    now = int(time.time())
    return {
        "coord": {"lon": round((h >> 32) % 36000 / 100 - 180, 2), "lat": round((h >> 48) % 18000 / 100 - 90, 2)},
        "weather": [{"id": 800, "main": desc.split()[-1].title(), "description": desc, "icon": "01d"}],
        "main": {"temp": temp, "feels_like": temp, "pressure": 1013, "humidity": (h >> 8) % 100},
        "dt": now - now % 600,  # observation time: on a 10-minute grid
        "sys": {"country": country.upper()},
        "name": f"City {zip_code}",
        "cod": 200,
    }


def _load_keys(app: Flask) -> set[str]:
    keys = set(app.config.get("API_KEYS") or [])
    path = app.config.get("API_KEYS_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                keys.update(line.strip() for line in fh if line.strip())
        except OSError as exc:
            app.logger.error("cannot read API_KEYS_FILE: %s", exc.strerror)
    return keys


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Flask app factory: defaults -> env ``FAKE_OWM_*`` -> ``test_config``."""
    app = Flask(__name__)
    app.config.from_mapping(API_KEYS=[], API_KEYS_FILE=None, UNKNOWN_ZIPS=["00000"])
    app.config.from_prefixed_env("FAKE_OWM")
    if test_config:
        app.config.from_mapping(test_config)
    state = FakeState()
    app.extensions["fake_owm"] = state
    init_app(app, service="fake-owm")

    @app.get("/data/2.5/weather")
    def weather():
        raw = request.args.get("zip", "")
        zip_code, _, country = raw.partition(",")
        zip_code, country = zip_code.strip(), (country.strip() or "us").lower()
        with state.lock:
            mode, delay, wake = state.mode, state.delay, state.wake
        state.record(mode, zip_code)
        status, body = _answer(app, mode, delay, wake, zip_code, country)
        state.record_status(status)
        return jsonify(body), status

    @app.route("/_control", methods=["GET", "POST"])
    def control():
        if request.method == "POST":
            data = request.get_json(silent=True) or {}
            mode = str(data.get("mode", "ok"))
            if mode not in MODES:
                return jsonify({"error": f"mode must be one of {', '.join(MODES)}"}), 400
            delay = data.get("delay")
            try:
                delay = None if delay is None else float(delay)
            except (TypeError, ValueError):
                return jsonify({"error": "delay must be a number"}), 400
            state.set_mode(mode, delay)
        return jsonify({"mode": state.mode, "delay": state.delay})

    @app.get("/_stats")
    def stats():
        return jsonify(state.stats())

    @app.post("/_stats/reset")
    def stats_reset():
        state.reset_stats()
        return jsonify(state.stats())

    return app


def _answer(app: Flask, mode: str, delay: float | None, wake: threading.Event,
            zip_code: str, country: str) -> tuple[int, dict[str, Any]]:
    if mode == "timeout":
        wake.wait(60.0 if delay is None else delay)
        return 504, {"cod": 504, "message": "gateway timeout"}
    if mode == "slow":
        wake.wait(2.0 if delay is None else delay)
    if mode == "error":
        return 500, {"cod": 500, "message": "internal error"}
    if mode == "429":
        return 429, {"cod": 429, "message": "Your account is temporary blocked due to exceeding of requests limitation"}
    key = request.args.get("appid", "")
    if mode == "401" or key not in _load_keys(app):
        return 401, {"cod": 401, "message": "Invalid API key. Please see https://openweathermap.org/faq#error401 for more info."}
    if not zip_code:
        return 400, {"cod": "400", "message": "invalid zip code"}
    unknown = set(app.config.get("UNKNOWN_ZIPS") or [])
    if zip_code in unknown or zip_code.startswith("000"):
        return 404, {"cod": "404", "message": "city not found"}
    return 200, weather_for(zip_code, country)
