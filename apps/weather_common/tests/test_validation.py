"""Zip and country validation, zip normalisation, and the weather-value shape check."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from weather_common.validation import (
    ValidationError,
    validate_country,
    validate_location,
    validate_weather,
    validate_zip,
)


@pytest.mark.parametrize("raw,expected", [
    ("10001", "10001"), (" 10001 ", "10001"), ("SW1A 1AA", "SW1A 1AA"), ("K1A-0B1", "K1A-0B1"),
    ("1", "1"), ("1234567890", "1234567890"),
    # normalisation: one location, one key, whatever the spelling
    ("sw1a 1aa", "SW1A 1AA"), ("  sw1A   1aA\t", "SW1A 1AA"), ("sw1a\t\n1aa", "SW1A 1AA"),
    ("k1a-0b1", "K1A-0B1"), ("a  b  c  d", "A B C D"),
])
def test_valid_zips(raw, expected):
    assert validate_zip(raw) == expected


@pytest.mark.parametrize("raw,reason", [
    (None, "zip is required"), ("", "zip is required"), ("   ", "zip is required"),
    ("12345678901", "at most 10"), ("10001;rm", "only letters"), ("１２３", "only letters"),
    ("ab/cd", "only letters"), (123, "must be a string"),
    # upper() would turn these non-ASCII letters into ASCII ones: rejected before that
    ("ı1", "only letters"), ("ſ1", "only letters"), ("ß1", "only letters"),
    # collapsing shortens: 11 characters after collapsing is still too long
    ("12345 678901", "at most 10"),
    # non-ASCII whitespace inside is not collapsed and not allowed
    ("10\u00a001", "only letters"),
])
def test_invalid_zips(raw, reason):
    with pytest.raises(ValidationError) as info:
        validate_zip(raw)
    assert reason in info.value.reason


def test_trailing_newline_is_whitespace_and_collapsing_can_make_a_zip_fit():
    assert validate_zip("10001\n") == "10001"
    # 12 characters raw, 10 after collapsing the inner run
    assert validate_zip("sw1a   1aa") == "SW1A 1AA"
    assert validate_zip("12345   6789") == "12345 6789"


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
    assert validate_location(" sw1a 1aa ", "GB") == ("SW1A 1AA", "gb")


@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=5)))
def test_property_either_clean_values_or_a_reason(zip_raw, country_raw):
    try:
        z, c = validate_location(zip_raw, country_raw)
    except ValidationError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    assert 1 <= len(z) <= 10 and z == z.strip()
    assert all(ch.isascii() and (ch.isalnum() or ch in " -") for ch in z)
    assert z == z.upper() and "  " not in z
    assert validate_zip(z) == z  # idempotent: a normalised zip is its own key
    assert len(c) == 2 and c.isascii() and c.isalpha() and c.islower()


@given(st.text(alphabet="abcXYZ019- \t", min_size=1, max_size=12))
def test_property_spellings_of_one_zip_share_one_key(raw):
    try:
        z = validate_zip(raw)
    except ValidationError:
        return
    assert validate_zip(raw.lower()) == validate_zip(raw.upper()) == z
    assert validate_zip(" " + raw.replace(" ", "  ") + "\t") == z  # length counts after collapsing


GOOD = {"city": "London", "description": "light rain", "temperature_c": 11.5,
        "observed_at": "2024-05-01T12:00:00Z"}


def test_validate_weather_accepts_and_normalises():
    assert validate_weather(GOOD) == GOOD
    v = validate_weather({**GOOD, "temperature_c": 12, "observed_at": None, "extra": "dropped"})
    assert v == {**GOOD, "temperature_c": 12.0, "observed_at": None}
    assert isinstance(v["temperature_c"], float)
    assert validate_weather({**GOOD, "city": ""})["city"] == ""  # OWM has nameless places
    assert validate_weather({**GOOD, "temperature_c": -100})["temperature_c"] == -100.0
    assert validate_weather({**GOOD, "temperature_c": 70})["temperature_c"] == 70.0


@pytest.mark.parametrize("bad", [
    None, [], "x", 1,
    {**GOOD, "temperature_c": math.nan}, {**GOOD, "temperature_c": math.inf},
    {**GOOD, "temperature_c": -math.inf}, {**GOOD, "temperature_c": "11.5"},
    {**GOOD, "temperature_c": True}, {**GOOD, "temperature_c": None}, {**GOOD, "temperature_c": 10 ** 400},
    {**GOOD, "temperature_c": 70.01}, {**GOOD, "temperature_c": -100.5}, {**GOOD, "temperature_c": 300.0},
    {k: v for k, v in GOOD.items() if k != "temperature_c"},
    {**GOOD, "city": None}, {**GOOD, "city": 5}, {**GOOD, "city": "x" * 201}, {**GOOD, "city": "a\x00b"},
    {**GOOD, "description": ["rain"]}, {k: v for k, v in GOOD.items() if k != "description"},
    {**GOOD, "observed_at": 1714564800}, {**GOOD, "observed_at": "yesterday"},
    {**GOOD, "observed_at": "2024-05-01T12:00:00+00:00"},
])
def test_validate_weather_rejects(bad):
    assert validate_weather(bad) is None


@given(st.dictionaries(st.sampled_from(["city", "description", "temperature_c", "observed_at", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                                 st.lists(st.integers(), max_size=2))))
def test_property_validate_weather_never_raises_and_output_is_finite(value):
    out = validate_weather(value)
    if out is not None:
        assert set(out) == {"city", "description", "temperature_c", "observed_at"}
        assert math.isfinite(out["temperature_c"]) and isinstance(out["temperature_c"], float)
