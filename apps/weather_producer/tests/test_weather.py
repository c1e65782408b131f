"""What a user of /weather gets, against a REAL fake OWM over HTTP (werkzeug servers)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from weather_common.cache import FreshCache
from weather_producer import healthcheck
from weather_producer.service import STALE_MESSAGE

FIELDS = {"zip", "country", "city", "description", "temperature_c", "observed_at", "instance", "stale",
          "age_seconds", "message"}


def _prime(prod, zip_code="10001", country="us"):
    r = prod.get(zip=zip_code, country=country)
    assert r.status_code == 200, r.text
    return r.json()


def test_fresh_answer_has_the_contract_fields(run_producer, fake_owm):
    prod = run_producer()
    body = _prime(prod, " 10001 ", "US")
    assert set(body) == FIELDS
    assert body["zip"] == "10001" and body["country"] == "us"
    assert body["city"] == "City 10001" and body["description"]
    assert isinstance(body["temperature_c"], float)
    assert body["observed_at"].endswith("Z") and "T" in body["observed_at"]
    assert body["instance"] == prod.instance
    assert body["stale"] is False and body["message"] is None and body["age_seconds"] == 0
    # default country
    assert prod.get(zip="10001").json()["country"] == "us"
    # second call within the TTL: served from the fresh cache, no second OWM call
    prod.get(zip="10001", country="us")
    assert fake_owm.stats()["total"] == 1


@pytest.mark.parametrize("mode,delay", [
    ("error", None), ("429", None), ("timeout", 5), ("slow", 3), ("drip", 0.8), ("hang", None),
    ("garbage", None), ("nan", None), ("huge", None),
])
def test_outage_serves_stale_last_good(run_producer, fake_owm, mode, delay):
    prod = run_producer(CACHE_TTL=0.2)
    good = _prime(prod)
    time.sleep(0.3)  # fresh entry expired
    fake_owm.set_mode(mode, delay)  # slow 3 s > OWM_DEADLINE 1.5 s
    t0 = time.monotonic()
    r = prod.get(zip="10001", country="us")
    assert time.monotonic() - t0 < 3
    assert r.status_code == 200, r.text
    assert b"NaN" not in r.content and "X-Weather-Answer" not in r.headers
    body = r.json()
    assert body["stale"] is True and body["message"] == STALE_MESSAGE == "CAUTION - Response out of date!"
    assert body["age_seconds"] >= 0 and isinstance(body["age_seconds"], int)
    assert {k: body[k] for k in ("city", "temperature_c", "observed_at")} == \
        {k: good[k] for k in ("city", "temperature_c", "observed_at")}


@pytest.mark.parametrize("mode,delay,words,reason", [
    ("error", None, "HTTP 500", "owm_outage"), ("429", None, "rate limit", "owm_quota"),
    ("timeout", 5, "timed out", "owm_slow"), ("garbage", None, "unexpected answer", "owm_outage"),
])
def test_outage_without_cache_is_a_marked_503_with_plain_reason(run_producer, fake_owm, mode, delay, words, reason):
    prod = run_producer()
    fake_owm.set_mode(mode, delay)
    r = prod.get(zip="10002", country="us")
    assert r.status_code == 503
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["X-Weather-Answer"] == "no-data"
    body = r.json()
    assert words in body["error"] and body["reason"] == reason
    assert (body["zip"], body["country"], body["instance"]) == ("10002", "us", prod.instance)


def test_slow_but_within_timeout_is_fresh(run_producer, fake_owm):
    prod = run_producer()
    fake_owm.set_mode("slow", 0.3)
    body = _prime(prod)
    assert body["stale"] is False


def test_unknown_zip_is_404_and_not_an_outage(run_producer, fake_owm):
    prod = run_producer(BREAKER_FAILURE_THRESHOLD=2)
    for _ in range(5):
        r = prod.get(zip="00000", country="us")
        assert r.status_code == 404 and r.headers["X-Weather-Answer"] == "not-found"
        assert r.json() == {"error": "unknown zip", "reason": "unknown_zip", "zip": "00000", "country": "us",
                            "instance": prod.instance}
    assert fake_owm.stats()["total"] == 1  # the 404 is cached for CACHE_TTL (negative cache)
    svc = prod.producer.service
    assert svc.breaker.state == "closed" and svc.breaker.stats().failures == 0
    assert svc.store.get("us/00000") is None
    # a known zip still works
    assert prod.get(zip="10001").status_code == 200


def test_401_is_a_config_error_ready_503_and_stale_served(run_producer, fake_owm):
    prod = run_producer(CACHE_TTL=0.2)
    _prime(prod)
    assert prod.get("/ready").status_code == 200
    time.sleep(0.3)
    fake_owm.set_mode("401")
    r = prod.get(zip="10001", country="us")
    assert r.status_code == 200 and r.json()["stale"] is True
    r = prod.get(zip="10009", country="us")  # nothing cached for this one
    assert r.status_code == 503 and "API key" in r.json()["error"]
    assert r.json()["reason"] == "owm_config" and r.headers["X-Weather-Answer"] == "no-data"
    ready = prod.get("/ready")
    assert ready.status_code == 503
    assert "401" in ready.json()["reason"]
    assert prod.producer.service.breaker.stats().failures == 0  # not an outage
    fake_owm.set_mode("ok")
    assert prod.get(zip="10009").status_code == 200
    assert prod.get("/ready").status_code == 200  # cleared by the next success


def test_missing_key_file_not_ready_and_no_owm_call(run_producer, fake_owm, tmp_path):
    prod = run_producer(OWM_API_KEY_FILE=str(tmp_path / "missing"))
    r = prod.get(zip="10001")
    assert r.status_code == 503 and "misconfigured" in r.json()["error"] and r.json()["reason"] == "owm_config"
    ready = prod.get("/ready")
    assert ready.status_code == 503 and "key file" in ready.json()["reason"]
    healthy, reason = healthcheck.check(f"{prod.url}/ready")
    assert not healthy and reason.startswith("not ready (503)") and "key file" in reason
    assert fake_owm.stats()["total"] == 0
    # the key file appears: picked up without a restart
    (tmp_path / "missing").write_text(fake_owm.app.config["API_KEYS"][0])
    assert prod.get(zip="10001").status_code == 200
    assert prod.get("/ready").status_code == 200
    assert healthcheck.check(f"{prod.url}/ready") == (True, "ready")  # no Consul configured


def test_healthcheck_runs_as_a_file_without_importing_the_app(run_producer, fake_owm):
    """The stack's command: the file, isolated. It must not import the app (Flask and
    the rest cost seconds per check on a Pi), only the standard library."""
    prod = run_producer()
    assert prod.get("/ready").status_code == 200
    port = prod.url.rsplit(":", 1)[-1]
    run = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", healthcheck.__file__],
                         capture_output=True, text=True, timeout=30,
                         env={"GUNICORN_BIND": f"127.0.0.1:{port}"})
    assert run.returncode == 0 and run.stdout.strip() == "ready", (run.stdout, run.stderr[-2000:])
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line}
    assert imported and not {m for m in imported if m.split(".")[0] in {"flask", "werkzeug", "requests",
                                                                           "weather_producer", "weather_common"}}


def test_breaker_opens_and_stops_calling_owm(run_producer, fake_owm):
    prod = run_producer(BREAKER_FAILURE_THRESHOLD=3, BREAKER_RECOVERY_TIMEOUT=30)
    fake_owm.set_mode("error")
    for i in range(3):
        assert prod.get(zip=f"2000{i}").status_code == 503
    assert fake_owm.stats()["total"] == 3
    r = prod.get(zip="20009")
    assert r.status_code == 503 and "retry in" in r.json()["error"]
    assert r.json()["reason"] == "breaker_open" and r.headers["X-Weather-Answer"] == "no-data"
    assert fake_owm.stats()["total"] == 3  # refused by the breaker, OWM not called
    metrics = prod.get("/metrics").text
    assert 'weather_circuit_breaker_state{breaker="owm"} 2.0' in metrics
    assert 'weather_fallbacks_total{reason="breaker_open_no_cache"} 1.0' in metrics


def test_bad_input_is_400_with_reason(run_producer, fake_owm):
    prod = run_producer()
    for params, reason in [({}, "zip is required"), ({"zip": "x" * 11}, "at most 10"),
                           ({"zip": "1;2"}, "only letters"), ({"zip": "1", "country": "usa"}, "2-letter")]:
        r = prod.get(**params)
        assert r.status_code == 400 and reason in r.json()["error"]
        assert "X-Weather-Answer" not in r.headers and "reason" not in r.json()  # not a "no data" answer
    assert fake_owm.stats()["total"] == 0


def test_api_key_never_logged(run_producer, fake_owm, owm_key, wsgi_server):
    # Capture raw log messages (before any redaction) across the failure modes.
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            # "werkzeug" is the fake OWM's own server log (the key is in ITS request line);
            # urllib3's DEBUG lines are not emitted at the apps' INFO level.
            if record.name not in ("werkzeug", "urllib3.connectionpool"):
                records.append(record.getMessage() + (self.format(record) if record.exc_info else ""))

    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        prod = run_producer(CACHE_TTL=0.1)
        _prime(prod)
        for mode in ("error", "429", "401", "timeout"):
            fake_owm.set_mode(mode, 2)
            time.sleep(0.15)
            prod.get(zip="10001")
        # connection refused: requests' exception message contains the full URL
        dead = run_producer(OWM_BASE_URL="http://127.0.0.1:9")
        dead.get(zip="10001")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    joined = "\n".join(records)
    assert "OWM outage" in joined and "401" in joined
    leaked = [r for r in records if owm_key in r]
    assert not leaked, leaked[:3]


def test_metrics_count_cache_hits_and_fallbacks(run_producer, fake_owm):
    # The fresh cache's clock is the test's: a hit within the TTL and the expiry after it
    # do not depend on how fast a loaded machine answers (a 0.2 s TTL raced a 278 ms call).
    shift = [0.0]
    prod = run_producer()
    svc = prod.producer.service
    svc.fresh = FreshCache(ttl=svc.fresh.ttl, max_entries=svc.fresh.max_entries,
                           clock=lambda: time.time() + shift[0])
    _prime(prod)
    prod.get(zip="10001")
    shift[0] = svc.fresh.ttl + 1  # the fresh entry expired
    fake_owm.set_mode("error")
    prod.get(zip="10001")
    text = prod.get("/metrics").text
    assert 'weather_cache_hits_total{cache="fresh"} 1.0' in text
    assert 'weather_fallbacks_total{reason="outage"} 1.0' in text
    assert 'weather_http_requests_total{endpoint="/weather",method="GET",status="200"} 3.0' in text


def test_caches_are_bounded_by_config(run_producer):
    prod = run_producer(CACHE_MAX_ENTRIES=2)
    for z in ("10001", "10002", "10003"):
        assert prod.get(zip=z).status_code == 200
    svc = prod.producer.service
    assert len(svc.fresh) == 2 and svc.fresh.get("us/10001") is None
    assert [k for k, _ in svc.store.items()] == ["us/10002", "us/10003"]
