"""An answer is not a failure (issue 11): what counts against a producer, what does not.

Stub producers are real HTTP servers in their own processes (stub_producer.py); the
last test runs REAL producers against the fake OWM switched off, the issue's scenario.
"""

from __future__ import annotations

import pytest
from weather_consumer.service import CONSUMER_STALE_MESSAGE, NO_DATA_STALE_MESSAGE


def api(client, zip_code="10001", **qs):
    return client.get("/api/weather", query_string={"zip": zip_code, **qs})


def breakers(app):
    return app.extensions["weather_consumer"].pool.breaker_states()


def failures(app, producer):
    return app.extensions["weather_consumer"].pool.breaker(producer.instance_id).stats().failures


def test_100_never_asked_zips_with_no_data_everywhere_open_no_breaker(stubs, make_app):
    producers = stubs(3)
    for p in producers:
        p.set("nodata", reason="owm_outage")
    app = make_app([p.url for p in producers], BREAKER_FAILURE_THRESHOLD=3)
    client = app.test_client()
    for n in range(100):
        r = api(client, f"{20000 + n}")
        assert r.status_code == 503, r.get_json()
        body = r.get_json()
        assert body["reason"] == "owm_outage"  # the producer's reason, passed on
        assert "The weather source is unavailable" in body["error"]
        assert "no saved answer" in body["error"]
    assert set(breakers(app).values()) == {"closed"}
    assert sum(failures(app, p) for p in producers) == 0
    # A no-data answer is final: no other producer was asked, and no hedges (all fast).
    assert sum(p.hits() for p in producers) == 100
    # The page says it too.
    page = client.get("/weather", query_string={"zip": "20000"})
    assert page.status_code == 503 and "The weather source is unavailable" in page.get_data(as_text=True)


def test_no_data_serves_the_saved_copy_stale_with_its_age_and_the_reason(stubs, make_app):
    producers = stubs(2)
    app = make_app([p.url for p in producers])
    client = app.test_client()
    fresh = api(client).get_json()
    assert fresh["source"] == "producer" and fresh["stale"] is False
    for p in producers:
        p.set("nodata", reason="owm_quota")
    cache = app.extensions["weather_consumer"].cache
    real = cache._clock
    cache._clock = lambda: real() + 42
    for _ in range(5):
        r = api(client)
        body = r.get_json()
        assert r.status_code == 200
        assert body["source"] == "consumer-cache" and body["stale"] is True
        assert body["message"] == NO_DATA_STALE_MESSAGE
        assert body["reason"] == "owm_quota" and body["detail"] == "The weather source is unavailable"
        assert 42 <= body["age_seconds"] <= 44
        assert body["temperature_c"] == fresh["temperature_c"] and body["city"] == fresh["city"]
    assert set(breakers(app).values()) == {"closed"}
    html = client.get("/weather", query_string={"zip": "10001"}).get_data(as_text=True)
    assert 'id="stale-banner"' in html and NO_DATA_STALE_MESSAGE in html
    assert "no current data: The weather source is unavailable" in html
    assert CONSUMER_STALE_MESSAGE not in html


def test_marked_not_found_is_an_answer_and_a_success(stubs, make_app):
    producers = stubs(2)
    for p in producers:
        p.set("notfound")
    app = make_app([p.url for p in producers], BREAKER_FAILURE_THRESHOLD=2)
    client = app.test_client()
    for _ in range(6):
        r = api(client, "99999")
        assert r.status_code == 404
        assert r.get_json()["error"] == "unknown zip" and r.get_json()["reason"] == "unknown_zip"
    assert sum(p.hits() for p in producers) == 6  # never a second producer for one request
    assert set(breakers(app).values()) == {"closed"}


@pytest.mark.parametrize("mode, outcome", [
    ("unavailable", "http_503"),   # an UNMARKED 503 is a failure
    ("error", "http_500"),
    ("ratelimited", "http_429"),
    ("garbage", "bad_body"),       # HTML
    ("nan", "bad_body"),           # temperature NaN (invalid JSON for strict readers)
    ("badfields", "bad_body"),     # temperature as a string
    ("booltemp", "bad_body"),      # true is not a number
    ("huge", "too_large"),         # 1 MiB body over the 64 KiB cap
])
def test_failures_count_against_the_instance_and_fail_over(stubs, make_app, operator, mode,
                                                           outcome):
    bad, good = stubs(2)
    bad.set(mode)
    app = make_app([bad.url, good.url], BREAKER_FAILURE_THRESHOLD=2, BREAKER_RECOVERY_TIMEOUT=30)
    client = app.test_client()
    for _ in range(6):
        r = api(client)
        body = r.get_json()
        assert r.status_code == 200 and body["instance"] == good.name and body["stale"] is False
        assert body["temperature_c"] == 21.5  # never the garbage value
    assert breakers(app)[bad.instance_id] == "open"
    assert bad.hits() == 2  # ejected after 2 failures
    metrics = operator(client).get("/metrics").get_data(as_text=True)
    assert f'weather_upstream_requests_total{{outcome="{outcome}",upstream="{bad.instance_id}"}} 2.0' in metrics
    assert "NaN" not in r.get_data(as_text=True)


def test_unexpected_exception_on_the_call_path_is_a_failure_not_a_500(stubs, make_app):
    """Fault injection: the HTTP client raises something nobody expected (a bug)."""
    flaky, good = stubs(2)
    app = make_app([flaky.url, good.url], BREAKER_FAILURE_THRESHOLD=2, BREAKER_RECOVERY_TIMEOUT=30)
    rt = app.extensions["weather_consumer"]
    real_client = rt.balancer.client

    class Buggy:
        def get(self, url, **kw):
            if str(flaky.port) in url:
                raise KeyError("surprise")
            return real_client.get(url, **kw)

    rt.balancer.client = Buggy()
    client = app.test_client()
    for _ in range(4):
        r = api(client)
        assert r.status_code == 200 and r.get_json()["instance"] == good.name
    assert breakers(app)[flaky.instance_id] == "open"
    assert rt.pool.breaker(flaky.instance_id).stats().successes == 0
    # Every producer broken that way: a plain 503 (or the saved copy), never a 500.
    rt.balancer.client = type("AllBuggy", (), {"get": lambda self, url, **kw: 1 / 0})()
    r = api(client, "10002")
    assert r.status_code == 503 and "no saved answer" in r.get_json()["error"]
    r = api(client, "10001")
    assert r.status_code == 200 and r.get_json()["source"] == "consumer-cache"


def test_real_producers_with_owm_down_never_asked_zips_open_no_breaker(run_producer, make_app,
                                                                       fake_owm, operator):
    """The issue's scenario with REAL producers: OWM down, new zips -> the producers' marked
    no-data 503s are answers; no breaker opens; cached zips stay served (stale, with age)."""
    producers = [run_producer(CACHE_TTL=0) for _ in range(3)]
    app = make_app([p.url for p in producers], BREAKER_FAILURE_THRESHOLD=3)
    client = app.test_client()
    fresh = api(client, "10001").get_json()
    assert fresh["stale"] is False
    fake_owm.set_mode("error")
    for n in range(12):
        r = api(client, f"3{n:04d}")
        body = r.get_json()
        assert r.status_code == 503, body
        assert body["reason"] in ("owm_outage", "breaker_open"), body
        assert "ejected" not in body["error"]
    assert set(breakers(app).values()) == {"closed"}
    r = api(client, "10001")
    body = r.get_json()
    assert r.status_code == 200 and body["stale"] is True
    assert body["temperature_c"] == fresh["temperature_c"] and body["age_seconds"] >= 0
    # Either the producer's own stale copy or ours (with the producer's reason) - never
    # "producer unreachable": every producer is reachable.
    assert body["message"] != CONSUMER_STALE_MESSAGE
    status = operator(client).get("/api/status").get_json()
    assert {p["breaker"] for p in status["producers"]} == {"closed"}
