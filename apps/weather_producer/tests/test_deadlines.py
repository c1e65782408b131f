"""Deadlines: whatever OWM does (drip, hang), the producer answers within its deadline.

Real servers: the fake OWM dripping one byte every 0.8 s or hanging, the producer under
werkzeug, timings measured from the client. Tolerance: the deadline + 100 ms.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

TOLERANCE = 0.1
PRODUCER_DEADLINE = 1.8  # the default
OWM_DEADLINE = 1.5  # the default


def _timed(prod, zip_code: str, headers: dict | None = None):
    t0 = time.monotonic()
    r = prod.session.get(f"{prod.url}/weather", params={"zip": zip_code}, headers=headers or {}, timeout=30)
    return r, time.monotonic() - t0


def _check_marked_503(r, reason: str):
    assert r.status_code == 503, r.text
    assert r.headers["X-Weather-Answer"] == "no-data"
    assert r.json()["reason"] == reason


def test_defaults_nest_inside_each_other():
    from weather_producer import DEFAULTS

    assert DEFAULTS["OWM_DEADLINE"] == OWM_DEADLINE and DEFAULTS["PRODUCER_DEADLINE"] == PRODUCER_DEADLINE
    assert DEFAULTS["OWM_DEADLINE"] + DEFAULTS["OWM_QUOTA_BUDGET"] <= DEFAULTS["PRODUCER_DEADLINE"]


@pytest.mark.parametrize("mode", ["drip", "hang"])
def test_drip_and_hang_answer_stale_or_marked_503_within_the_deadline(run_producer, fake_owm, mode, record_property):
    prod = run_producer(CACHE_TTL=0.2, BREAKER_FAILURE_THRESHOLD=10)
    assert prod.get(zip="10001").status_code == 200
    time.sleep(0.3)  # the fresh entry expired: the next lookup asks OWM
    fake_owm.set_mode(mode, 0.8 if mode == "drip" else None)

    r, stale_took = _timed(prod, "10001")
    assert r.status_code == 200 and r.json()["stale"] is True, r.text
    r, no_data_took = _timed(prod, "10002")  # never asked: nothing to fall back to
    _check_marked_503(r, "owm_slow")
    assert "too slow" in r.json()["error"] or "timed out" in r.json()["error"]
    record_property("stale_seconds", round(stale_took, 3))
    record_property("no_data_seconds", round(no_data_took, 3))
    print(f"\n{mode}: stale answer in {stale_took:.3f}s, marked 503 in {no_data_took:.3f}s")
    for took in (stale_took, no_data_took):
        # the OWM call is cut at OWM_DEADLINE; the whole answer within PRODUCER_DEADLINE
        assert OWM_DEADLINE - 0.05 <= took <= PRODUCER_DEADLINE + TOLERANCE, took
    assert fake_owm.stats()["by_mode"][mode] == 2


def test_x_deadline_ms_shortens_the_lookup(run_producer, fake_owm):
    prod = run_producer()
    fake_owm.set_mode("hang")
    r, took = _timed(prod, "10003", {"X-Deadline-Ms": "600"})
    _check_marked_503(r, "owm_slow")
    # 600 ms minus the 50 ms margin for the way back
    assert 0.5 <= took <= 0.55 + TOLERANCE, took
    # a header larger than the producer's own deadline does not extend it
    r, took = _timed(prod, "10004", {"X-Deadline-Ms": "60000"})
    _check_marked_503(r, "owm_slow")
    assert took <= PRODUCER_DEADLINE + TOLERANCE, took
    assert fake_owm.stats()["total"] == 2


def test_a_spent_budget_answers_at_once_without_calling_owm(run_producer, fake_owm):
    prod = run_producer()
    for header in ("0", "40", "-5"):
        r, took = _timed(prod, "10005", {"X-Deadline-Ms": header})
        _check_marked_503(r, "owm_slow")
        assert took < 0.3, (header, took)
    assert fake_owm.stats()["total"] == 0
    # a malformed header is ignored: the producer's own deadline applies
    for header in ("abc", "1.5", "", "9" * 40):
        r, _ = _timed(prod, "10006", {"X-Deadline-Ms": header})
        assert r.status_code == 200 and r.json()["stale"] is False, header


def test_single_flight_follower_waits_only_for_its_own_budget(run_producer, fake_owm):
    prod = run_producer()
    fake_owm.set_mode("hang")
    leader: dict = {}

    def lead():
        leader["r"], leader["took"] = _timed(prod, "10007")  # 1.8 s budget, OWM hangs

    t = threading.Thread(target=lead)
    t.start()
    time.sleep(0.2)  # the leader's OWM call is in flight
    s = requests.Session()
    t0 = time.monotonic()
    r = s.get(f"{prod.url}/weather", params={"zip": "10007"}, headers={"X-Deadline-Ms": "500"}, timeout=10)
    took = time.monotonic() - t0
    _check_marked_503(r, "owm_slow")
    assert took <= 0.45 + TOLERANCE, took
    assert "r" not in leader  # the leader is still waiting on OWM
    t.join(5)
    _check_marked_503(leader["r"], "owm_slow")
    assert leader["took"] <= PRODUCER_DEADLINE + TOLERANCE
    assert fake_owm.stats()["total"] == 1  # the follower did not make its own call


def test_drip_with_consul_kv_store_keeps_the_deadline(run_producer, fake_owm, consul_agent):
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False,
                        CACHE_KV_PREFIX=f"t/dl-{uuid.uuid4().hex[:6]}", OWM_QUOTA_KV_PREFIX=f"t/q-{uuid.uuid4().hex[:6]}",
                        CACHE_TTL=0.2, BREAKER_FAILURE_THRESHOLD=10)
    assert prod.get(zip="10001").status_code == 200
    assert prod.producer.service.store.flush(5)
    time.sleep(0.3)
    fake_owm.set_mode("drip", 0.8)
    r, took = _timed(prod, "10001")
    assert r.status_code == 200 and r.json()["stale"] is True
    assert took <= PRODUCER_DEADLINE + TOLERANCE, took
    r, took = _timed(prod, "10008", {"X-Deadline-Ms": "700"})
    _check_marked_503(r, "owm_slow")
    assert took <= 0.65 + TOLERANCE, took
