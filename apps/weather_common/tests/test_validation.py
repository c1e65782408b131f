"""Zip and country validation."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from weather_common.validation import ValidationError, validate_country, validate_location, validate_zip


@pytest.mark.parametrize("raw,expected", [
    ("10001", "10001"), (" 10001 ", "10001"), ("SW1A 1AA", "SW1A 1AA"), ("K1A-0B1", "K1A-0B1"),
    ("1", "1"), ("1234567890", "1234567890"),
])
def test_valid_zips(raw, expected):
    assert validate_zip(raw) == expected


@pytest.mark.parametrize("raw,reason", [
    (None, "zip is required"), ("", "zip is required"), ("   ", "zip is required"),
    ("12345678901", "at most 10"), ("10001;rm", "only letters"), ("１２３", "only letters"),
    ("10001\n", None), ("ab/cd", "only letters"), (123, "must be a string"),
])
def test_invalid_zips(raw, reason):
    if raw == "10001\n":  # trailing newline is whitespace: stripped, valid
        assert validate_zip(raw) == "10001"
        return
    with pytest.raises(ValidationError) as info:
        validate_zip(raw)
    assert reason in info.value.reason


@pytest.mark.parametrize("raw,expected", [(None, "us"), ("", "us"), (" GB ", "gb"), ("De", "de")])
def test_valid_countries(raw, expected):
    assert validate_country(raw) == expected


@pytest.mark.parametrize("raw", ["usa", "u", "1a", "é1", "ü s", "ÜS"])
def test_invalid_countries(raw):
    with pytest.raises(ValidationError) as info:
        validate_country(raw)
    assert "2-letter" in info.value.reason


def test_validate_location_default_country():
    assert validate_location("10001", None, "ca") == ("10001", "ca")


@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=5)))
def test_property_either_clean_values_or_a_reason(zip_raw, country_raw):
    try:
        z, c = validate_location(zip_raw, country_raw)
    except ValidationError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    assert 1 <= len(z) <= 10 and z == z.strip()
    assert all(ch.isascii() and (ch.isalnum() or ch in " -") for ch in z)
    assert len(c) == 2 and c.isascii() and c.isalpha() and c.islower()
