"""Fallbacks: the consumer's own last good answer, the producer's stale answer, 503."""

from __future__ import annotations

import pytest
from weather_consumer.service import CONSUMER_STALE_MESSAGE, PRODUCER_STALE_MESSAGE


def api(client, zip_code="10001", country=None):
    qs = {"zip": zip_code, **({"country": country} if country else {})}
    return client.get("/api/weather", query_string=qs)


def shift_cache_clock(app, seconds):
    cache = app.extensions["weather_consumer"].cache
    real = cache._clock
    cache._clock = lambda: real() + seconds


def test_all_producers_down_serves_own_last_good_answer_marked_stale(stubs, make_app):
    producers = stubs(3)
    app = make_app([p.url for p in producers])
    client = app.test_client()
    fresh = api(client).get_json()
    assert fresh["stale"] is False and fresh["source"] == "producer"
    for p in producers:
        p.kill()
    shift_cache_clock(app, 125)
    r = api(client)
    assert r.status_code == 200
    body = r.get_json()
    assert body["stale"] is True
    assert body["source"] == "consumer-cache"
    assert body["message"] == CONSUMER_STALE_MESSAGE
    assert 125 <= body["age_seconds"] <= 127
    assert body["producer"] == fresh["producer"]
    for field in ("city", "description", "temperature_c", "observed_at", "zip", "country"):
        assert body[field] == fresh[field]
    # The page shows the banner with the age.
    page = client.get("/weather", query_string={"zip": "10001"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'id="stale-banner"' in html and CONSUMER_STALE_MESSAGE in html
    assert "2 min 5 s" in html or "2 min 6 s" in html


def test_cache_is_per_zip_and_country(stubs, make_app):
    (p,) = stubs(1)
    client = make_app([p.url]).test_client()
    assert api(client, "10001", "us").status_code == 200
    p.kill()
    assert api(client, "10001", "US").get_json()["source"] == "consumer-cache"  # same place
    r = api(client, "10001", "de")
    assert r.status_code == 503
    assert api(client, "10002", "us").status_code == 503


def test_nothing_cached_and_no_producer_gives_a_clear_503(stubs, make_app):
    (p,) = stubs(1)
    p.kill()
    client = make_app([p.url]).test_client()
    r = api(client)
    assert r.status_code == 503
    body = r.get_json()
    assert "unavailable" in body["error"] and "no saved answer" in body["error"]
    page = client.get("/weather", query_string={"zip": "10001"})
    html = page.get_data(as_text=True)
    assert page.status_code == 503
    assert "Weather unavailable" in html and "no saved answer" in html
    assert "Traceback" not in html


def test_no_producer_configured_gives_503_not_500(make_app):
    client = make_app([]).test_client()
    r = api(client)
    assert r.status_code == 503
    assert "no producer instance is known" in r.get_json()["error"]


def test_producer_stale_answer_is_passed_through_and_does_not_replace_a_newer_copy(
        stubs, make_app):
    (p,) = stubs(1)
    app = make_app([p.url])
    client = app.test_client()
    p.set("ok", temperature=10.0)
    assert api(client).get_json()["temperature_c"] == 10.0  # fresh: saved
    p.set("stale", temperature=30.0)
    r = api(client)
    body = r.get_json()
    assert r.status_code == 200
    assert body["stale"] is True and body["source"] == "producer"
    assert body["message"] == PRODUCER_STALE_MESSAGE
    assert body["age_seconds"] == 900 and body["temperature_c"] == 30.0
    page = client.get("/weather", query_string={"zip": "10001"}).get_data(as_text=True)
    assert PRODUCER_STALE_MESSAGE in page and "15 min 0 s" in page
    assert CONSUMER_STALE_MESSAGE not in page
    # Producer gone: the consumer's copy is the NEWER fresh answer (the 900 s old stale
    # answer did not replace it).
    p.kill()
    body = api(client).get_json()
    assert body["source"] == "consumer-cache" and body["temperature_c"] == 10.0
    assert body["age_seconds"] < 60


def test_producer_stale_answer_is_saved_back_dated_by_its_age(stubs, make_app, operator):
    (p,) = stubs(1)
    p.set("stale", temperature=12.5)
    app = make_app([p.url])
    client = app.test_client()
    assert api(client).get_json()["stale"] is True
    (row,) = operator(client).get("/api/status").get_json()["cache"]
    assert row["zip"] == "10001" and 900 <= row["age_seconds"] <= 903
    p.kill()
    body = api(client).get_json()
    assert body["source"] == "consumer-cache" and body["temperature_c"] == 12.5
    assert body["stale"] is True and body["message"] == CONSUMER_STALE_MESSAGE
    assert 900 <= body["age_seconds"] <= 903


def test_saved_copy_keeps_the_newer_answer_whatever_the_order(stubs, make_app):
    (p,) = stubs(1)
    app = make_app([p.url])
    cache = app.extensions["weather_consumer"].cache
    value = {"city": "X", "description": "d", "temperature_c": 1.0,
             "observed_at": "2026-11-22T00:00:00Z", "stale": False, "age_seconds": 300}
    cache.put("99999", "us", value, "p9")
    p.kill()
    body = api(app.test_client(), "99999").get_json()
    assert 300 <= body["age_seconds"] <= 301  # the producer's age is kept
    # An older stale copy does not replace it; a newer one does.
    cache.put("99999", "us", dict(value, temperature_c=2.0, stale=True, age_seconds=900), "p9")
    assert cache.get("99999", "us").body["temperature_c"] == 1.0
    cache.put("99999", "us", dict(value, temperature_c=3.0, stale=True, age_seconds=5), "p9")
    saved = cache.get("99999", "us")
    assert saved.body["temperature_c"] == 3.0 and 5 <= saved.age_seconds < 8
