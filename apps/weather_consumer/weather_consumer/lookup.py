"""Shared by the page and the JSON API: validate the query, ask the service."""

from __future__ import annotations

from flask import current_app, request
from weather_common.validation import ValidationError, validate_country, validate_zip

from .service import Result


def lookup_from_request() -> Result:
    rt = current_app.extensions["weather_consumer"]
    try:
        zip_code = validate_zip(request.args.get("zip", ""))
        country = validate_country(request.args.get("country"), rt.default_country)
    except ValidationError as exc:
        rt.metrics.outcome("bad_request")
        return Result(400, {"error": exc.reason}, "bad_request")
    return rt.service.lookup(zip_code, country)
