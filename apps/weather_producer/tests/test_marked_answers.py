"""Marked answers (issue 11): "nothing for this place" is a well-formed, MARKED answer.

A producer whose OWM is down still works: its 503s carry ``X-Weather-Answer: no-data`` and
a reason code, so the consumer does not count them as the producer failing. Real fake
OWM over HTTP (or no OWM at all: a closed port), no mocks.
"""

from __future__ import annotations

import collections
import json
import math
import time

import pytest

from weather_producer.service import REASONS

FIELDS_503 = {"error", "reason", "zip", "country", "instance"}


def _strict(text: bytes):
    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


def test_100_never_asked_zips_with_owm_stopped_are_all_marked_503s(run_producer, free_port_fn):
    # the scenario: the fake OWM is not running (connection refused)
    prod = run_producer(OWM_BASE_URL=f"http://127.0.0.1:{free_port_fn()}")
    reasons: collections.Counter = collections.Counter()
    t0 = time.monotonic()
    for i in range(100):
        r = prod.get(zip=f"7{i:04d}")
        assert r.status_code == 503, r.text
        assert r.headers["X-Weather-Answer"] == "no-data"
        body = _strict(r.content)
        assert set(body) == FIELDS_503 and body["reason"] in REASONS
        assert body["zip"] == f"7{i:04d}" and body["instance"] == prod.instance and body["error"]
        reasons[body["reason"]] += 1
    took = time.monotonic() - t0
    # 5 real failures open the breaker; the other 95 are refused without trying
    assert reasons == {"owm_outage": 5, "breaker_open": 95}, reasons
    assert took < 10, took
    assert prod.producer.service.breaker.state == "open"


@pytest.mark.parametrize("mode", ["garbage", "nan", "huge"])
def test_bad_payloads_are_outages_never_served_never_nan(run_producer, fake_owm, mode):
    prod = run_producer(CACHE_TTL=0.2, BREAKER_FAILURE_THRESHOLD=3)
    good = prod.get(zip="10001").json()
    time.sleep(0.3)
    fake_owm.set_mode(mode)
    svc = prod.producer.service
    t0 = time.monotonic()
    stale = prod.get(zip="10001")
    no_data = prod.get(zip="10002")
    took = time.monotonic() - t0
    assert stale.status_code == 200 and stale.json()["stale"] is True
    assert stale.json()["temperature_c"] == good["temperature_c"]
    assert no_data.status_code == 503 and no_data.json()["reason"] == "owm_outage"
    assert "unexpected answer" in no_data.json()["error"] or "too_large" in no_data.json()["error"]
    for r in (stale, no_data):
        assert b"NaN" not in r.content and b"Infinity" not in r.content
        _strict(r.content)
    assert svc.breaker.stats().failures == 2  # outages for the breaker
    assert took < 2, took  # a 4 MB body is refused at 64 KiB, not downloaded
    # nothing of the bad answers reached a cache
    assert svc.fresh.get("us/10002") is None and svc.store.get("us/10002") is None
    # three outages open the breaker: calls back off
    prod.get(zip="10003")
    assert svc.breaker.state == "open"
    assert fake_owm.stats()["by_mode"][mode] == 3


def test_owm_429_is_owm_quota_and_counts_for_the_breaker(run_producer, fake_owm):
    prod = run_producer(BREAKER_FAILURE_THRESHOLD=2)
    fake_owm.set_mode("429")
    bodies = [prod.get(zip=z).json() for z in ("10011", "10012", "10013")]
    assert [b["reason"] for b in bodies] == ["owm_quota", "owm_quota", "breaker_open"]
    assert fake_owm.stats()["total"] == 2  # backed off after two 429s


def test_unexpected_exception_is_an_outage_not_a_500(run_producer):
    # A misconfigured base URL: the HTTP client raises ValueError (not an OWM error class).
    prod = run_producer(OWM_BASE_URL="ftp://127.0.0.1:1", BREAKER_FAILURE_THRESHOLD=2)
    r1, r2, r3 = (prod.get(zip=z) for z in ("10021", "10022", "10023"))
    for r in (r1, r2, r3):
        assert r.status_code == 503 and r.headers["X-Weather-Answer"] == "no-data"
    assert [r.json()["reason"] for r in (r1, r2, r3)] == ["owm_outage", "owm_outage", "breaker_open"]
    assert prod.producer.service.breaker.stats().failures == 2


def test_owm_404_is_cached_for_the_ttl(run_producer, fake_owm):
    ttl = 1.0
    prod = run_producer(CACHE_TTL=ttl)
    for _ in range(2):
        r = prod.get(zip="00042")
        assert r.status_code == 404 and r.headers["X-Weather-Answer"] == "not-found"
        assert r.json()["reason"] == "unknown_zip"
    assert fake_owm.stats()["by_zip"] == {"00042": 1}  # one call for two lookups
    time.sleep(ttl + 0.1)
    assert prod.get(zip="00042").status_code == 404
    assert fake_owm.stats()["by_zip"] == {"00042": 2}  # expired: asked again
    # a cached 404 is not an outage and does not hide an outage of other zips
    assert prod.producer.service.breaker.stats().failures == 0


def test_zip_spellings_share_one_key_and_one_owm_call(run_producer, fake_owm):
    prod = run_producer()
    answers = [prod.get(zip=z, country="gb") for z in ("sw1a 1aa", "SW1A 1AA", "  Sw1a   1aA ")]
    assert all(r.status_code == 200 for r in answers)
    assert {r.json()["zip"] for r in answers} == {"SW1A 1AA"}
    assert {r.json()["temperature_c"] for r in answers} == {answers[0].json()["temperature_c"]}
    assert fake_owm.stats()["by_zip"] == {"SW1A 1AA": 1}


def test_implausible_payloads_are_refused():
    """A payload whose numbers are valid JSON but implausible is an outage too (checked by
    parse_payload); exercised directly, as the fake OWM only serves plausible weather."""
    from weather_producer.owm import parse_payload

    now = time.time()
    good = {"name": "X", "weather": [{"description": "rain"}], "main": {"temp": 10}, "dt": int(now)}
    assert parse_payload(good, now)["temperature_c"] == 10.0
    bad = [
        {**good, "main": {"temp": 71}}, {**good, "main": {"temp": -273.15}}, {**good, "main": {"temp": True}},
        {**good, "main": {"temp": "10"}}, {**good, "main": {"temp": math.inf}}, {**good, "main": {"temp": 10 ** 400}},
        {**good, "main": None}, {**good, "dt": 5}, {**good, "dt": int(now) + 2 * 86400}, {**good, "dt": 1.5e9},
        {**good, "dt": True}, {**good, "name": None}, {**good, "name": "x" * 201}, {**good, "weather": []},
        {**good, "weather": [{"description": 3}]}, {**good, "weather": "rain"}, [], None,
    ]
    for payload in bad:
        with pytest.raises(ValueError):
            parse_payload(payload, now)
