"""Server-rendered pages: the form, the result (public); the status of the producers
(operator port only, see web.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, render_template, request

from .api import status_body
from .lookup import lookup_from_request

bp = Blueprint("pages", __name__)


def human_age(seconds) -> str:
    try:
        s = max(0, int(seconds))
    except (TypeError, ValueError):
        return "unknown age"
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min"
    return f"{h // 24} days {h % 24} h"


def human_time(iso) -> str:
    try:
        dt = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_filter("age")
def _age_filter(seconds):
    return human_age(seconds)


@bp.app_template_filter("when")
def _when_filter(iso):
    return human_time(iso)


@bp.app_template_filter("temp")
def _temp_filter(value):
    try:
        return f"{float(value):.1f} °C"
    except (TypeError, ValueError):
        return "unknown"


@bp.get("/")
def index():
    rt = current_app.extensions["weather_consumer"]
    return render_template("index.html", zip="", country="", default_country=rt.default_country)


@bp.get("/weather")
def weather():
    rt = current_app.extensions["weather_consumer"]
    result = lookup_from_request()
    return render_template(
        "weather.html",
        result=result,
        w=result.body,
        zip=request.args.get("zip", ""),
        country=request.args.get("country", ""),
        default_country=rt.default_country,
    ), result.status


@bp.get("/status")
def status():
    return render_template("status.html", s=status_body())
