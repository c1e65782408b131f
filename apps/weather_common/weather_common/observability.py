"""Logs, metrics, health endpoints and error handlers shared by the Flask apps.

One call wires a Flask app::

    metrics = init_app(app, service="weather-producer", ready_check=my_ready)

which gives:

* one JSON log line per request on stdout (method, path WITHOUT query string, status,
  duration_ms, remote_addr); every log line goes through :func:`redact` (registered
  secrets and ``appid=...`` / token patterns are masked);
* Prometheus metrics in a per-app registry (:class:`Metrics`), served at ``/metrics``;
* ``/health`` (liveness) and ``/ready`` (``ready_check() -> (ok, details)``; 200/503 JSON);
* JSON error handlers: HTTP errors keep their status with ``{"error": "<reason>"}``;
  any unexpected exception becomes ``503 {"error": "service temporarily unavailable"}``
  and is logged - never a 500 HTML page or a stack trace to the client;
* strict JSON (:class:`StrictJSONProvider`): ``jsonify``/returned dicts are encoded with
  ``allow_nan=False`` and request bodies with NaN/Infinity are refused (400). A view that
  tries to answer a NaN or an Infinity therefore gets the generic 503 above (logged as an
  error), never a body with ``NaN`` in it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from typing import Any, Callable

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from werkzeug.exceptions import HTTPException

from . import strictjson
from .breaker import STATE_VALUES, CircuitBreaker

__all__ = [
    "Metrics",
    "init_app",
    "configure_logging",
    "register_secret",
    "redact",
    "JsonFormatter",
    "ReadyCheck",
    "EXTENSION_KEY",
    "StrictJSONProvider",
]

EXTENSION_KEY = "weather_metrics"
ACCESS_LOGGER = "weather.access"

#: ``ready_check() -> (ok, details)``; details is merged into the /ready JSON body
#: (give it a "reason" when not ok).
ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]

# ----------------------------------------------------------------------- redaction
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_PATTERNS = [
    (re.compile(r"(?i)(appid=)[^&\s'\"]+"), r"\1***"),
    (re.compile(r"(?i)(api[_-]?key=)[^&\s'\"]+"), r"\1***"),
    (re.compile(r"(?i)(x-consul-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1***"),
    (re.compile(r"(?i)(token=)[^&\s'\"]+"), r"\1***"),
]


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log line (ignored if shorter than 4)."""
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """Mask registered secrets and secret-looking URL parameters in ``text``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


# ------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra ``fields``, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        try:
            line = json.dumps(data, default=str, allow_nan=False)
        except ValueError:  # a NaN/Infinity in the fields: log it as a string, stay JSON
            line = json.dumps(_finite_or_str(data), default=str, allow_nan=False)
        return redact(line)


def _finite_or_str(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_or_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_str(v) for v in obj]
    return obj


_LOGGING_CONFIGURED = False
_LOGGING_LOCK = threading.Lock()


def configure_logging(level: str | int = "INFO", stream=None) -> None:
    """Send every log record to stdout as JSON (idempotent per process)."""
    global _LOGGING_CONFIGURED
    with _LOGGING_LOCK:
        root = logging.getLogger()
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
            if not isinstance(level, int):
                level = logging.INFO
        root.setLevel(level)
        if _LOGGING_CONFIGURED:
            return
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._weather_json = True  # type: ignore[attr-defined]
        for h in list(root.handlers):
            if not getattr(h, "_weather_json", False):
                h.setFormatter(JsonFormatter())
        root.addHandler(handler)
        _LOGGING_CONFIGURED = True


# ------------------------------------------------------------------------- metrics
class Metrics:
    """The Prometheus metrics of one app, in their own registry.

    Attributes (all prefixed ``weather_``):
        requests: Counter ``http_requests_total{endpoint,method,status}``
        latency: Histogram ``http_request_duration_seconds{endpoint,status}``
        breaker_state: Gauge ``circuit_breaker_state{breaker}`` (0 closed, 1 half_open, 2 open)
        breaker_events: Counter ``circuit_breaker_events_total{breaker,event}``
        cache_hits / cache_misses: Counter ``cache_hits_total{cache}`` / ``cache_misses_total{cache}``
        fallbacks: Counter ``fallbacks_total{reason}`` (stale answers served, by cause)
        upstream: Counter ``upstream_requests_total{upstream,outcome}``
    """

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "weather") -> None:
        self.registry = registry or CollectorRegistry()
        ns, r = namespace, self.registry
        self.requests = Counter("http_requests_total", "HTTP requests", ["endpoint", "method", "status"], namespace=ns, registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["endpoint", "status"], namespace=ns, registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.breaker_state = Gauge("circuit_breaker_state", "0 closed, 1 half_open, 2 open", ["breaker"], namespace=ns, registry=r)
        self.breaker_events = Counter("circuit_breaker_events_total", "Breaker events", ["breaker", "event"], namespace=ns, registry=r)
        self.cache_hits = Counter("cache_hits_total", "Fresh-cache hits", ["cache"], namespace=ns, registry=r)
        self.cache_misses = Counter("cache_misses_total", "Fresh-cache misses", ["cache"], namespace=ns, registry=r)
        self.fallbacks = Counter("fallbacks_total", "Stale/fallback answers served", ["reason"], namespace=ns, registry=r)
        self.upstream = Counter("upstream_requests_total", "Calls to upstreams", ["upstream", "outcome"], namespace=ns, registry=r)

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        """Export ``breaker``'s state as a gauge and its events as a counter."""
        name = breaker.name or "unnamed"
        self.breaker_state.labels(breaker=name).set_function(lambda: STATE_VALUES.get(breaker.state, -1))

        def listener(b: CircuitBreaker, event: str, old: str, new: str) -> None:
            self.breaker_events.labels(breaker=name, event=event).inc()

        breaker.add_listener(listener)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --------------------------------------------------------------------------- Flask
class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with NaN/Infinity refused both ways (``allow_nan=False``;
    ``loads`` via :func:`weather_common.strictjson.loads`)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs["allow_nan"] = False
        return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strictjson.loads(s)


def _error(status: int, reason: str, **extra: Any) -> tuple[Response, int]:
    body = {"error": reason}
    body.update(extra)
    return jsonify(body), status


def _make_ops_blueprint(service: str, ready_check: ReadyCheck | None) -> Blueprint:
    bp = Blueprint("weather_ops", __name__)

    @bp.get("/health")
    def health():
        return jsonify({"status": "ok", "service": service})

    @bp.get("/ready")
    def ready():
        ok, details = (True, {}) if ready_check is None else ready_check()
        body = {"status": "ready" if ok else "not ready", "service": service}
        body.update(details)
        if not ok:
            body.setdefault("reason", "not ready")
        return jsonify(body), 200 if ok else 503

    @bp.get("/metrics")
    def metrics():
        m: Metrics = current_app.extensions[EXTENSION_KEY]
        return Response(m.render(), mimetype=CONTENT_TYPE_LATEST)

    return bp


def init_app(
    app: Flask,
    service: str,
    ready_check: ReadyCheck | None = None,
    metrics: Metrics | None = None,
    log_level: str = "INFO",
) -> Metrics:
    """Wire JSON request logs, metrics, /health, /ready, /metrics and JSON errors."""
    configure_logging(log_level)
    if not isinstance(app.json, StrictJSONProvider):
        old, strict = app.json, StrictJSONProvider(app)
        for attr in ("ensure_ascii", "sort_keys", "compact", "mimetype"):
            if hasattr(old, attr):
                setattr(strict, attr, getattr(old, attr))
        app.json = strict
    metrics = metrics or Metrics()
    app.extensions[EXTENSION_KEY] = metrics
    access_log = logging.getLogger(ACCESS_LOGGER)
    app_log = logging.getLogger(f"{service}.errors")

    @app.before_request
    def _start_timer() -> None:
        g._weather_t0 = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        t0 = g.pop("_weather_t0", None)
        duration = time.perf_counter() - t0 if t0 is not None else 0.0
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = str(response.status_code)
        metrics.requests.labels(endpoint=endpoint, method=request.method, status=status).inc()
        metrics.latency.labels(endpoint=endpoint, status=status).observe(duration)
        access_log.info(
            "request",
            extra={"fields": {
                "service": service,
                "method": request.method,
                "path": request.path,  # never the query string
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "remote_addr": request.remote_addr,
            }},
        )
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = exc.code or 500
        if code >= 500:
            app_log.error("HTTP %s while serving %s %s", code, request.method, request.path)
            return _error(503, "service temporarily unavailable")
        return _error(code, (exc.name or "error").lower())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app_log.error(
            "unexpected error while serving %s %s: %s", request.method, request.path, type(exc).__name__,
            exc_info=exc,
        )
        return _error(503, "service temporarily unavailable")

    app.register_blueprint(_make_ops_blueprint(service, ready_check))
    return metrics
