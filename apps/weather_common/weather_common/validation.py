"""Input validation for zip codes and country codes, and the shape of a weather value.

Both apps turn :class:`ValidationError` into ``400 {"error": reason}``.

Zip codes are normalised (surrounding whitespace stripped, inner whitespace collapsed to one
space, upper-cased): ``"sw1a  1aa"`` and ``"SW1A 1AA"`` are one location, one cache key and
one OWM call, in both apps.

:func:`validate_weather` checks a weather value read back from somewhere we do not fully
trust (Consul KV, another producer): the producer hands it to the last-good store so a
poisoned entry is ignored instead of served (or turned into a NaN in JSON).
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "ValidationError",
    "validate_zip",
    "validate_country",
    "validate_location",
    "validate_weather",
    "TEMP_MIN_C",
    "TEMP_MAX_C",
    "TEXT_MAX_LEN",
]

ZIP_MAX_LEN = 10
_ZIP_RE = re.compile(r"[A-Za-z0-9 \-]+")
_ASCII_SPACE_RUN = re.compile(r"[ \t\r\n\f\v]+")
_COUNTRY_RE = re.compile(r"[A-Za-z]{2}")

#: plausible air temperatures in degrees Celsius (records: -89.2 and 56.7)
TEMP_MIN_C = -100.0
TEMP_MAX_C = 70.0
#: longest city name / description we accept from upstream or KV
TEXT_MAX_LEN = 200
_ISO_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class ValidationError(ValueError):
    """Bad user input; ``reason`` is a short human-readable explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_zip(raw: object) -> str:
    """Return the normalised zip code, or raise ValidationError.

    Normalisation: surrounding whitespace stripped, each inner run of ASCII whitespace
    collapsed to one space, upper-cased (``" sw1a \t1aa "`` -> ``"SW1A 1AA"``).
    Rules (after normalisation): 1-10 characters; only ASCII letters, digits, spaces and
    hyphens.
    """
    if raw is None:
        raise ValidationError("zip is required")
    if not isinstance(raw, str):
        raise ValidationError("zip must be a string")
    value = _ASCII_SPACE_RUN.sub(" ", raw.strip())
    if not value:
        raise ValidationError("zip is required")
    if len(value) > ZIP_MAX_LEN:
        raise ValidationError(f"zip must be at most {ZIP_MAX_LEN} characters")
    if not _ZIP_RE.fullmatch(value):
        raise ValidationError("zip may contain only letters, digits, spaces and hyphens")
    # upper() only after the ASCII-only check: "ı".upper() is "I" and "ß".upper() is "SS"
    return value.upper()


def validate_country(raw: object, default: str | None = "us") -> str:
    """Return the lowercased 2-letter country code, or raise ValidationError.

    ``None`` or a blank string gives ``default`` (raise if default is None).
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if default is None:
            raise ValidationError("country is required")
        return validate_country(default, default=None)
    if not isinstance(raw, str):
        raise ValidationError("country must be a string")
    value = raw.strip()
    if not _COUNTRY_RE.fullmatch(value):
        raise ValidationError("country must be a 2-letter code such as 'us'")
    return value.lower()


def validate_location(zip_raw: object, country_raw: object, default_country: str = "us") -> tuple[str, str]:
    """Validate both; returns ``(zip, country)``."""
    return validate_zip(zip_raw), validate_country(country_raw, default_country)


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > TEXT_MAX_LEN:
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return None
    return value


def validate_weather(value: Any) -> dict[str, Any] | None:
    """The weather value normalised, or None when it is not one.

    A weather value is a dict with ``city`` and ``description`` (strings of at most
    :data:`TEXT_MAX_LEN` printable characters), ``temperature_c`` (a finite number within
    :data:`TEMP_MIN_C`..:data:`TEMP_MAX_C`; booleans are not numbers) and ``observed_at``
    (``"YYYY-MM-DDTHH:MM:SSZ"`` or None). Returns a new dict with exactly those four keys,
    ``temperature_c`` as a float. Never raises.
    """
    if not isinstance(value, dict):
        return None
    city, description = _text(value.get("city")), _text(value.get("description"))
    if city is None or description is None:
        return None
    temp = value.get("temperature_c")
    if isinstance(temp, bool) or not isinstance(temp, (int, float)):
        return None
    try:
        temp = float(temp)
    except (OverflowError, ValueError):  # an int too large for a float
        return None
    if not math.isfinite(temp) or not TEMP_MIN_C <= temp <= TEMP_MAX_C:
        return None
    observed = value.get("observed_at")
    if observed is not None and not (isinstance(observed, str) and _ISO_UTC_RE.fullmatch(observed)):
        return None
    return {"city": city, "description": description, "temperature_c": temp, "observed_at": observed}
