"""Ops endpoints, status, metrics, input validation (with a hypothesis property)."""

from __future__ import annotations

import string
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from weather_common.validation import validate_zip


@pytest.fixture
def producer(stubs):
    return stubs(1)[0]


@pytest.fixture
def client(make_app, producer):
    return make_app([producer.url]).test_client()


def test_health_is_always_ok(make_app):
    r = make_app([]).test_client().get("/health")
    assert r.status_code == 200 and r.get_json()["status"] == "ok"


def test_ready_when_a_producer_is_known(client):
    r = client.get("/ready")
    assert r.status_code == 200 and r.get_json()["producers"] == 1


def test_not_ready_without_producers_or_cache(make_app):
    r = make_app([]).test_client().get("/ready")
    assert r.status_code == 503
    assert "no producer" in r.get_json()["reason"]


def test_ready_with_cache_only(make_app):
    app = make_app([])
    app.extensions["weather_consumer"].cache.put(
        "10001", "us", {"city": "X", "stale": False}, "p1")
    r = app.test_client().get("/ready")
    assert r.status_code == 200 and "saved answers" in r.get_json()["reason"]


def test_status_api_has_the_contract_shape(client, producer, operator):
    client.get("/api/weather?zip=10001")
    body = operator(client).get("/api/status").get_json()
    (row,) = body["producers"]
    assert isinstance(row.pop("latency_ms"), float) and row.pop("in_flight") == 0
    assert row == {"id": producer.instance_id, "name": "producer-1", "address": "127.0.0.1",
                   "port": producer.port, "healthy": True, "breaker": "closed"}
    assert [(c["zip"], c["country"]) for c in body["cache"]] == [("10001", "us")]
    assert isinstance(body["cache"][0]["age_seconds"], int)


def test_status_page_lists_instances_breakers_and_cache(client, producer, operator):
    client.get("/api/weather?zip=10001")
    html = operator(client).get("/status").get_data(as_text=True)
    assert producer.instance_id in html and "healthy" in html and "closed" in html
    assert "10001" in html


def test_weather_page_shows_the_answer(client, producer):
    r = client.get("/weather?zip=10001&country=us")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "Town 10001" in html and "light rain" in html and "21.5 °C" in html
    assert "2026-11-22 12:00 UTC" in html and "producer-1" in html and producer.name in html
    assert producer.instance_id not in html and str(producer.port) not in html  # no address
    assert 'id="stale-banner"' not in html


def test_form_has_labelled_fields(client):
    resp = client.get("/")
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    html = resp.get_data(as_text=True)
    assert '<label for="zip">' in html and 'id="zip"' in html
    assert '<label for="country">' in html and 'id="country"' in html


def test_metrics_expose_requests_breakers_cache_and_fallbacks(client, producer, operator):
    client.get("/api/weather?zip=10001")
    producer.kill()
    client.get("/api/weather?zip=10001")
    text = operator(client).get("/metrics").get_data(as_text=True)
    assert 'weather_http_requests_total{endpoint="/api/weather",method="GET",status="200"} 2.0' in text
    assert f'weather_circuit_breaker_state{{breaker="{producer.instance_id}"}}' in text
    assert 'weather_cache_hits_total{cache="consumer-last-good"} 1.0' in text
    assert 'weather_fallbacks_total{reason="consumer_cache"} 1.0' in text
    assert f'weather_upstream_requests_total{{outcome="connect_error",upstream="{producer.instance_id}"}}' in text
    assert "weather_http_request_duration_seconds_bucket" in text
    assert 'weather_consumer_lookups_total{outcome="fresh"} 1.0' in text


@pytest.mark.parametrize("qs, reason", [
    ("", "zip is required"),
    ("zip=", "zip is required"),
    ("zip=%20%20", "zip is required"),
    ("zip=12345678901", "at most 10"),
    ("zip=10001;drop", "only letters"),
    ("zip=<script>", "only letters"),
    ("zip=10001&country=usa", "2-letter"),
    ("zip=10001&country=u1", "2-letter"),
    ("zip=%ff%fe", "only letters"),
])
def test_bad_input_is_a_400_with_a_reason(client, producer, qs, reason):
    r = client.get(f"/api/weather?{qs}")
    assert r.status_code == 400 and reason in r.get_json()["error"]
    page = client.get(f"/weather?{qs}")
    assert page.status_code == 400 and reason in page.get_data(as_text=True)
    assert producer.hits() == 0


def test_unknown_routes_and_methods_are_not_500(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/api/nope").get_json()["error"]
    assert client.post("/api/weather?zip=1").status_code == 405


text_without_surrogates = st.text(alphabet=st.characters(exclude_categories=("Cs",)),
                                  max_size=30)
zipish = st.one_of(text_without_surrogates,
                   st.text(alphabet=string.ascii_letters + string.digits + " -", max_size=12))
countryish = st.one_of(st.none(), text_without_surrogates,
                       st.text(alphabet=string.ascii_letters, min_size=0, max_size=3))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zip_code=zipish, country=countryish)
def test_property_never_500_and_400s_carry_a_reason(client, zip_code, country):
    qs = {"zip": zip_code} if country is None else {"zip": zip_code, "country": country}
    for path in ("/api/weather", "/weather"):
        r = client.get(path, query_string=qs)
        assert r.status_code in (200, 400, 404, 503), (path, qs, r.status_code)
        if r.status_code == 400:
            if path == "/api/weather":
                reason = r.get_json()["error"]
                assert isinstance(reason, str) and len(reason) > 5
            else:
                assert 'id="reason"' in r.get_data(as_text=True)
        if r.status_code == 200 and path == "/api/weather":
            assert r.get_json()["zip"] == validate_zip(zip_code)  # normalised (upper-case)


def test_configuration_from_the_environment(monkeypatch, stubs):
    from weather_consumer import create_app

    p = stubs(1)[0]
    monkeypatch.setenv("WEATHER_CONSUMER_PRODUCER_URLS", f'["{p.url}"]')
    monkeypatch.setenv("WEATHER_CONSUMER_REQUEST_DEADLINE", "0.7")
    monkeypatch.setenv("WEATHER_CONSUMER_DEFAULT_COUNTRY", "de")
    app = create_app({"TESTING": True})
    try:
        rt = app.extensions["weather_consumer"]
        assert rt.balancer.deadline == 0.7
        body = app.test_client().get("/api/weather?zip=10115").get_json()
        assert body["country"] == "de" and body["instance"] == p.name
        assert body["producer"] == "producer-1"
    finally:
        app.extensions["weather_consumer"].close()
    # test_config wins over the environment
    app = create_app({"REQUEST_DEADLINE": 1.1, "PRODUCER_URLS": p.url})
    try:
        assert app.extensions["weather_consumer"].balancer.deadline == 1.1
    finally:
        app.extensions["weather_consumer"].close()


def test_saved_answers_are_bounded(make_app, producer, operator):
    client = make_app([producer.url], CACHE_MAX_ENTRIES=2).test_client()
    for z in ("10001", "10002", "10003"):
        assert client.get(f"/api/weather?zip={z}").status_code == 200
    saved = operator(client).get("/api/status").get_json()["cache"]
    assert sorted(row["zip"] for row in saved) == ["10002", "10003"]


# Raw query strings against a REAL producer (backed by the fake OWM, which fails at times):
# broken escapes, arbitrary bytes, repeated / empty / missing keys.
_raw_piece = st.one_of(
    st.binary(max_size=12).map(quote_from_bytes),
    st.sampled_from(["zip=", "zip=10001", "zip=00000", "country=", "country=us", "country=USA",
                     "%", "%zz", "%ff", "%00", "&", "&&", "=", "zip", "zip=%C0%AF", "zip=+",
                     "country=%FF%FE", "zip=10001&zip=10002", "zip=1;2", "zip=" + "9" * 40]),
)
_raw_query = st.lists(_raw_piece, max_size=6).map("&".join)


def test_property_raw_queries_through_a_real_producer(make_app, run_producer, fake_owm):
    producer = run_producer()
    client = make_app([producer.url], PER_TRY_TIMEOUT=2.0, REQUEST_DEADLINE=4.0).test_client()
    current = {"mode": "ok"}

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(qs=_raw_query, mode=st.sampled_from(["ok", "ok", "error", "429"]))
    def check(qs, mode):
        if current["mode"] != mode:
            fake_owm.set_mode(mode)
            current["mode"] = mode
        for path in ("/api/weather", "/weather"):
            r = client.get(path, query_string=qs)
            assert r.status_code in (200, 400, 404, 503), (path, qs, r.status_code)
            if path == "/api/weather":
                body = r.get_json()
                assert isinstance(body, dict), (qs, r.data[:200])
                if r.status_code in (400, 503):
                    assert isinstance(body.get("error"), str) and len(body["error"]) > 5, body
                if r.status_code == 200:
                    assert body["source"] in ("producer", "consumer-cache") and body["zip"]
            elif r.status_code == 400:
                assert 'id="reason"' in r.get_data(as_text=True)

    check()
