"""Input validation for zip codes and country codes.

Both apps turn :class:`ValidationError` into ``400 {"error": reason}``.
"""

from __future__ import annotations

import re

__all__ = ["ValidationError", "validate_zip", "validate_country", "validate_location"]

ZIP_MAX_LEN = 10
_ZIP_RE = re.compile(r"[A-Za-z0-9 \-]+")
_COUNTRY_RE = re.compile(r"[A-Za-z]{2}")


class ValidationError(ValueError):
    """Bad user input; ``reason`` is a short human-readable explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_zip(raw: object) -> str:
    """Return the stripped zip code, or raise ValidationError.

    Rules: a string; surrounding whitespace stripped; 1-10 characters; only ASCII
    letters, digits, spaces and hyphens.
    """
    if raw is None:
        raise ValidationError("zip is required")
    if not isinstance(raw, str):
        raise ValidationError("zip must be a string")
    value = raw.strip()
    if not value:
        raise ValidationError("zip is required")
    if len(value) > ZIP_MAX_LEN:
        raise ValidationError(f"zip must be at most {ZIP_MAX_LEN} characters")
    if not _ZIP_RE.fullmatch(value):
        raise ValidationError("zip may contain only letters, digits, spaces and hyphens")
    return value


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
