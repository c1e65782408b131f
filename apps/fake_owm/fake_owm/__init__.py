"""A fake OpenWeatherMap for tests and the lab.

``GET /data/2.5/weather?zip=<zip>,<cc>&appid=<key>&units=metric`` answers OWM-shaped JSON,
deterministic per zip. Unknown zips (config ``UNKNOWN_ZIPS``, default ``["00000"]``, plus
any zip starting with ``"000"``) give 404 ``{"cod": "404", "message": "city not found"}``;
a key not in the valid keys gives 401.

Runtime control (no auth: it is a test double):

* ``POST /_control`` JSON ``{"mode": "<mode>", "delay": seconds}``, modes:

  - ``ok``: normal answers;
  - ``error``: 500; ``429``: rate limited; ``401``: every key rejected;
  - ``slow``: wait ``delay`` (default 2 s) then answer normally;
  - ``timeout``: hang ``delay`` (default 60 s, longer than any client timeout) then 504;
  - ``drip``: 200 and the headers at once (``Content-Length`` of the real answer), then
    the body one byte every ``delay`` seconds (default 0.8): a per-read socket timeout
    never fires, only a deadline on the whole call ends it;
  - ``hang``: accept the request and send nothing until the mode changes (or 300 s, or
    ``delay``), then 504; ``hang`` and ``timeout`` let go when the client hangs up;
  - ``garbage``: 200 ``application/json`` whose body is not JSON (an HTML error page);
  - ``nan``: 200, OWM-shaped JSON with the literal ``NaN`` as ``main.temp`` (what
    Python's ``json.dumps`` writes by default; not valid JSON);
  - ``huge``: 200, a valid OWM-shaped JSON body of about ``delay`` MB (default 4),
    streamed in 64 KiB chunks with its ``Content-Length`` declared.

  Switching the mode wakes hung requests and ends drips. ``GET /_control`` shows the
  current mode.
* ``GET /_stats`` -> ``{"total", "by_mode", "by_status", "last_60s", "by_zip", "by_key",
  "by_minute", "mode"}``: ``by_key`` counts calls per API key, keyed by the first 12 hex
  digits of the key's sha256 (never the key); ``by_minute`` counts calls per epoch minute
  (``{"<int(epoch_seconds // 60)>": count}``, the last 60 minutes with calls). ``GET /_stats?window=<s>``
  adds ``max_in_window``: the most calls in any ``s``-second sliding window over the
  last 10 minutes (how a quota test checks a rate limit). ``POST /_stats/reset`` zeroes
  them.

Configuration (``create_app(test_config)`` / env ``FAKE_OWM_*``): ``API_KEYS`` (list),
``API_KEYS_FILE`` (one key per line), ``UNKNOWN_ZIPS``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import socket
import threading
import time
from typing import Any, Iterator

from flask import Flask, Response, jsonify, request

from weather_common.observability import init_app

MODES = ("ok", "error", "slow", "429", "401", "timeout", "drip", "hang", "garbage", "nan", "huge")
#: seconds of call timestamps kept for ``/_stats?window=``
HISTORY_SECONDS = 600
#: longest a ``hang`` request is held when nobody changes the mode
HANG_MAX_SECONDS = 300.0
HUGE_CHUNK = 64 * 1024
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
            self.by_key: collections.Counter[str] = collections.Counter()
            self.by_minute: collections.Counter[str] = collections.Counter()
            self.times: collections.deque[float] = collections.deque()

    def set_mode(self, mode: str, delay: float | None) -> None:
        with self.lock:
            self.mode, self.delay = mode, delay
            old, self.wake = self.wake, threading.Event()
        old.set()

    def record(self, mode: str, zip_code: str, key: str) -> None:
        now = time.monotonic()
        minute = str(int(time.time() // 60))  # the epoch minute
        with self.lock:
            self.total += 1
            self.by_mode[mode] += 1
            self.by_zip[zip_code] += 1
            self.by_key[key_id(key)] += 1
            self.by_minute[minute] += 1
            if len(self.by_minute) > 60:
                for old in sorted(self.by_minute, key=int)[:-60]:
                    del self.by_minute[old]
            self.times.append(now)
            while self.times and now - self.times[0] > HISTORY_SECONDS:
                self.times.popleft()

    def record_status(self, status: int) -> None:
        with self.lock:
            self.by_status[str(status)] += 1

    def stats(self, window: float | None = None) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            out: dict[str, Any] = {
                "total": self.total,
                "by_mode": dict(self.by_mode),
                "by_status": dict(self.by_status),
                "last_60s": sum(1 for t in self.times if now - t <= 60),
                "by_zip": dict(self.by_zip),
                "by_key": dict(self.by_key),
                "by_minute": dict(sorted(self.by_minute.items())),
                "mode": self.mode,
            }
            times = list(self.times)
        if window is not None:
            out["window"] = window
            out["max_in_window"] = max_in_window(times, window)
        return out


def key_id(key: str) -> str:
    """How ``/_stats`` names an API key: the first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps (sorted ascending) within any ``window``-second span."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


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
        state.record(mode, zip_code, request.args.get("appid", ""))
        status, body = _answer(app, mode, delay, wake, zip_code, country)
        state.record_status(status)
        if status != 200 or mode not in ("drip", "garbage", "nan", "huge"):
            return jsonify(body), status
        return _broken_answer(mode, delay, wake, body)

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
        window = request.args.get("window")
        try:
            seconds = None if window is None else float(window)
        except ValueError:
            seconds = None
        if seconds is not None and not 0 < seconds <= HISTORY_SECONDS:
            return jsonify({"error": f"window must be a number of seconds in (0, {HISTORY_SECONDS}]"}), 400
        if window is not None and seconds is None:
            return jsonify({"error": "window must be a number of seconds"}), 400
        return jsonify(state.stats(seconds))

    @app.post("/_stats/reset")
    def stats_reset():
        state.reset_stats()
        return jsonify(state.stats())

    return app


def _answer(app: Flask, mode: str, delay: float | None, wake: threading.Event,
            zip_code: str, country: str) -> tuple[int, dict[str, Any]]:
    if mode == "timeout":
        _hold(wake, 60.0 if delay is None else delay)
        return 504, {"cod": 504, "message": "gateway timeout"}
    if mode == "hang":
        _hold(wake, HANG_MAX_SECONDS if delay is None else delay)
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


def _hold(wake: threading.Event, seconds: float) -> None:
    """Send nothing for ``seconds``, until the mode changes, or until the client hangs up.

    A held request keeps one of gunicorn's threads: held until the mode changed, every
    call a producer gave up on would keep its thread, and once they were all taken the
    control API itself could not be reached to end the outage (seen in the cluster
    tests: 16 threads). The client's socket tells when it left (gunicorn only).
    """
    sock = request.environ.get("gunicorn.socket")
    deadline = time.monotonic() + seconds
    while not wake.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or (sock is not None and client_gone(sock)):
            return


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed the connection (an orderly FIN or a reset), without
    reading anything the request may still carry."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _broken_answer(mode: str, delay: float | None, wake: threading.Event, body: dict[str, Any]) -> Response:
    """The 200 answers that are not what they seem (``drip``, ``garbage``, ``nan``, ``huge``).

    The body is built by hand (``json.dumps``), not by the app's JSON provider: ``nan``
    needs the ``NaN`` literal that a strict provider refuses to write.
    """
    if mode == "garbage":
        page = b"<html><body><h1>502 Bad Gateway</h1><p>upstream hiccup</p></body></html>\n"
        return Response(page, status=200, content_type="application/json; charset=utf-8")
    if mode == "nan":
        body["main"]["temp"] = float("nan")
        body["main"]["feels_like"] = float("nan")
        return Response(json.dumps(body, allow_nan=True), status=200, content_type="application/json; charset=utf-8")
    if mode == "drip":
        data = json.dumps(body).encode()
        step = 0.8 if delay is None else delay
        return Response(_drip(data, step, wake), status=200, content_type="application/json; charset=utf-8",
                        headers={"Content-Length": str(len(data))}, direct_passthrough=True)
    # huge: valid JSON, several MB (a padding list of station records), streamed
    megabytes = 4.0 if delay is None else delay
    data = _huge_body(body, int(megabytes * 1024 * 1024))
    return Response(_chunks(data, wake), status=200, content_type="application/json; charset=utf-8",
                    headers={"Content-Length": str(len(data))}, direct_passthrough=True)


def _drip(data: bytes, step: float, wake: threading.Event) -> Iterator[bytes]:
    """The first byte at once (with the headers), then one byte every ``step`` seconds;
    stops early when the mode changes (the client then sees a short body)."""
    for i in range(len(data)):
        if i and wake.wait(step):
            return
        yield data[i:i + 1]


def _chunks(data: bytes, wake: threading.Event) -> Iterator[bytes]:
    for i in range(0, len(data), HUGE_CHUNK):
        if wake.is_set():
            return
        yield data[i:i + HUGE_CHUNK]


def _huge_body(body: dict[str, Any], size: int) -> bytes:
    record = '{"id": 1234567, "name": "station", "temp": 1.5},'
    count = max(1, size // len(record))
    stations = "[" + record * count
    stations = stations[:-1] + "]"
    head = json.dumps(body)
    return (head[:-1] + ', "stations": ' + stations + "}").encode()
