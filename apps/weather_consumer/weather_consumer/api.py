"""JSON twins of the pages: /api/weather (public) and /api/status (operator port only)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .lookup import lookup_from_request

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/weather")
def weather():
    result = lookup_from_request()
    resp = jsonify(result.body)
    resp.headers["Cache-Control"] = "no-store"
    return resp, result.status


def status_body() -> dict:
    """Operator status: instance addresses and the places users looked up (never public)."""
    rt = current_app.extensions["weather_consumer"]
    load = rt.pool.load_snapshot()
    names = {i.id: i.public_name for i in rt.pool.known()}
    producers = [{**row, "name": names.get(row["id"], row["id"]),
                  **load.get(row["id"], {"latency_ms": 0.0, "in_flight": 0})}
                 for row in rt.pool.snapshot()]
    return {
        "producers": producers,
        "cache": rt.cache.snapshot(),
        "discovery": rt.discovery_status(),
        # What the balancer works with, so operators (and the cluster tests) read the
        # deadline instead of restating it.
        "settings": {
            "request_deadline": rt.balancer.deadline,
            "per_try_timeout": rt.balancer.per_try_timeout,
            "hedge_delay": rt.balancer.hedge_delay if rt.balancer.hedge_delay > 0 else None,
        },
    }


@bp.get("/status")
def status():
    return jsonify(status_body())
