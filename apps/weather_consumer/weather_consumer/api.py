"""JSON twins of the pages: /api/weather and /api/status."""

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
    rt = current_app.extensions["weather_consumer"]
    return {
        "producers": rt.pool.snapshot(),
        "cache": rt.cache.snapshot(),
        "discovery": rt.discovery_status(),
    }


@bp.get("/status")
def status():
    return jsonify(status_body())
