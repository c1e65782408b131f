"""Request plumbing.

weather_common's ``init_app`` gives the JSON access log (one line per request),
the metrics registry, ``/health``, ``/ready``, ``/metrics`` and JSON error handlers.
The consumer then replaces the error handlers with ones that answer HTML on its pages
and JSON everywhere else - still never a 500 and never a stack trace.

Two listeners, one app: the public port (8080) and the operator port (``OPERATOR_PORT``,
9080). The operator endpoints (``/status``, ``/api/status``, ``/metrics``: instance
addresses, the places users looked up, metrics) answer 404 unless the request arrived on
the operator port. That is decided by the LOCAL port of the accepted socket (gunicorn
hands it to the app as ``environ["gunicorn.socket"]``, werkzeug's server as
``environ["werkzeug.socket"]``), never by the Host header or SERVER_NAME. Only Flask's
test client, which has no socket, is judged by ``SERVER_PORT`` (set it with
``environ_overrides``), and only in TESTING mode.
"""

from __future__ import annotations

import logging

from flask import Flask, abort, current_app, jsonify, render_template, request
from weather_common.observability import init_app as init_observability
from werkzeug.exceptions import HTTPException

JSON_PREFIXES = ("/api/", "/health", "/ready", "/metrics")
TITLES = {
    400: "Please check your input",
    404: "Page not found",
    405: "Method not allowed",
    503: "Weather unavailable",
}
#: Pages use no scripts, only our stylesheet.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
log = logging.getLogger("weather-consumer.errors")
#: endpoints served on the operator listener only
OPERATOR_ENDPOINTS = frozenset({"pages.status", "api.status", "weather_ops.metrics"})
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
_ENVIRON_FLAG = "weather_consumer.operator"


def local_port(environ) -> int | None:
    """The local port of the socket the request arrived on (None: no TCP socket)."""
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if sock is None:
            continue
        try:
            name = sock.getsockname()
        except (OSError, AttributeError, TypeError):
            return None
        if isinstance(name, tuple) and len(name) >= 2 and isinstance(name[1], int):
            return name[1]
        return None  # a unix socket: never the operator listener
    return None


def on_operator_listener() -> bool:
    """True when this request came in on the operator port (see the module docstring)."""
    environ = request.environ
    cached = environ.get(_ENVIRON_FLAG)
    if cached is not None:
        return cached
    ports = current_app.extensions["weather_consumer"].operator_ports
    port = local_port(environ)
    if port is None and current_app.testing and not any(k in environ for k in _SOCKET_KEYS):
        try:  # Flask's test client only: no socket at all
            port = int(environ.get("SERVER_PORT", ""))
        except ValueError:
            port = None
    result = port is not None and port in ports
    environ[_ENVIRON_FLAG] = result
    return result


def wants_html() -> bool:
    return not request.path.startswith(JSON_PREFIXES)


def _error(status: int, reason: str):
    if wants_html():
        return render_template("message.html", status=status, reason=reason,
                               title=TITLES.get(status, "Something went wrong")), status
    return jsonify({"error": reason}), status


def init_app(app: Flask, runtime) -> None:
    init_observability(app, service="weather-consumer", ready_check=runtime.readiness,
                       metrics=runtime.metrics.common,
                       log_level=str(app.config.get("LOG_LEVEL", "INFO")))

    @app.before_request
    def _operator_only():
        if request.endpoint in OPERATOR_ENDPOINTS and not on_operator_listener():
            abort(404)

    @app.context_processor
    def _listener():
        return {"operator_view": on_operator_listener()}

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", CSP)
            resp.headers.setdefault("X-Frame-Options", "DENY")
            resp.headers.setdefault("Referrer-Policy", "same-origin")
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = exc.code or 500
        if code >= 500:
            log.error("HTTP %s while serving %s %s", code, request.method, request.path)
            return _error(503, "The weather service is temporarily unavailable. Please try again.")
        return _error(code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unexpected error while serving %s %s: %s", request.method, request.path,
                  type(exc).__name__, exc_info=exc)
        return _error(503, "The weather service hit an unexpected problem. Please try again.")
