"""Request plumbing.

weather_common's ``init_app`` gives the JSON access log (one line per request),
the metrics registry, ``/health``, ``/ready``, ``/metrics`` and JSON error handlers.
The consumer then replaces the error handlers with ones that answer HTML on its pages
and JSON everywhere else - still never a 500 and never a stack trace.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
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
