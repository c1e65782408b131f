"""Quota protection: many concurrent clients, few OWM calls (counted by the fake's /_stats)."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import threading
import time
import uuid

import pytest
import requests


def _hammer(url: str, n_clients: int, zips: list[str], per_client: int) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(n_clients)

    def client(i: int) -> None:
        s = requests.Session()
        barrier.wait()
        for j in range(per_client):
            z = zips[(i + j) % len(zips)]
            r = s.get(f"{url}/weather", params={"zip": z, "country": "us"}, timeout=30)
            with lock:
                statuses[r.status_code] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_200_concurrent_clients_over_50_zips_stay_within_owm_quota(run_producer, fake_owm):
    # generous timeouts: this test is about call counts, not about a loaded CI machine
    prod = run_producer(CACHE_TTL=60, OWM_DEADLINE=10, PRODUCER_DEADLINE=20)
    fake_owm.set_mode("slow", 0.2)  # calls overlap: single-flight must collapse them
    zips = [f"{10000 + i}" for i in range(50)]
    statuses = _hammer(prod.url, 200, zips, per_client=3)
    assert statuses == {200: 600}
    stats = fake_owm.stats()
    assert stats["total"] == 50  # one call per zip: single-flight + fresh TTL
    assert stats["last_60s"] <= 60
    assert max(stats["by_zip"].values()) == 1
    cache = prod.producer.service.fresh
    assert cache.loads == 50


def test_quota_guard_caps_calls_per_minute(run_producer, fake_owm):
    # Generous timeouts, as above: 10 of the 25 calls must reach the fake and answer.
    # With the default 1 s read timeout a slow moment of this machine turned 6 of them
    # into timeouts (the cap held: the fake still counted exactly 10).
    prod = run_producer(OWM_MAX_CALLS_PER_MINUTE=10, OWM_DEADLINE=10, PRODUCER_DEADLINE=20)
    zips = [f"{30000 + i}" for i in range(25)]
    statuses = _hammer(prod.url, 25, zips, per_client=1)
    assert fake_owm.stats()["total"] == 10
    assert statuses[200] == 10 and statuses[503] == 15
    r = prod.get(zip="39999")
    assert r.status_code == 503 and "budget" in r.json()["error"]
    assert r.json()["reason"] == "owm_quota" and r.headers["X-Weather-Answer"] == "no-data"


def test_lookups_the_open_breaker_refuses_spend_no_quota(run_producer, fake_owm, wait_until):
    prod = run_producer(OWM_MAX_CALLS_PER_MINUTE=8, BREAKER_FAILURE_THRESHOLD=2,
                        BREAKER_RECOVERY_TIMEOUT=2)
    fake_owm.set_mode("error")
    # Two failed calls open the breaker; the other lookups are refused without a call
    # (a slow machine may let one half-open probe through after the recovery timeout).
    statuses = collections.Counter(prod.get(zip=f"4{i:04d}").status_code for i in range(30))
    assert statuses == {503: 30}
    spent = fake_owm.stats()["total"]
    assert 2 <= spent <= 4, fake_owm.stats()
    fake_owm.set_mode("ok")
    # Once the breaker lets calls through again, the budget left is 8 minus the calls
    # really made, not minus the 30 lookups.
    wait_until(lambda: prod.get(zip="45000").status_code == 200, timeout=10,
               what="the breaker to let a call through again")
    left = 8 - spent - 1
    assert [prod.get(zip=f"4510{i}").status_code for i in range(left)] == [200] * left
    assert fake_owm.stats()["total"] == 8
    # The ninth call in the minute is the guard's to refuse.
    r = prod.get(zip="45999")
    assert r.status_code == 503 and "budget" in r.json()["error"]


# ---------------------------------------------------------------- shared budget (issue 11)
def _flood(producers, seconds: float, threads_per_producer: int, prefix: str) -> collections.Counter:
    """Every thread asks its producer for never-asked zips until ``seconds`` passed."""
    outcomes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    counter = itertools.count()

    def worker(prod) -> None:
        s = requests.Session()
        while time.monotonic() < stop_at:
            z = f"{prefix}{next(counter):05d}"
            r = s.get(f"{prod.url}/weather", params={"zip": z}, timeout=10)
            key = str(r.status_code)
            if r.status_code == 503:
                assert r.headers["X-Weather-Answer"] == "no-data", r.text
                key += ":" + r.json()["reason"]
            with lock:
                outcomes[key] += 1

    threads = [threading.Thread(target=worker, args=(p,)) for p in producers for _ in range(threads_per_producer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def _max_in_window(fake, window: float) -> int:
    return requests.get(f"{fake.url}/_stats", params={"window": window}, timeout=5).json()["max_in_window"]


@pytest.mark.consul
def test_three_producers_share_one_key_budget_through_consul(run_producer, consul_agent, fake_owm, owm_key):
    limit, window = 10, 4.0
    common = dict(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False,
                  CACHE_KV_PREFIX=f"t/qc-{uuid.uuid4().hex[:6]}", OWM_QUOTA_KV_PREFIX=f"t/q-{uuid.uuid4().hex[:6]}",
                  OWM_MAX_CALLS_PER_MINUTE=limit, OWM_QUOTA_WINDOW=window)
    producers = [run_producer(**common) for _ in range(3)]
    fake_owm.reset_stats()
    outcomes = _flood(producers, 2.5 * window, threads_per_producer=4, prefix="5")
    stats = fake_owm.stats()
    # The fake counts when a call arrives, the limiter when it admits it: a few ms apart,
    # so the check uses a window 0.1 s shorter than the limiter's.
    worst = _max_in_window(fake_owm, window - 0.1)
    print(f"\nshared quota: {stats['total']} OWM calls in {2.5 * window:.0f}s, max {worst} in any "
          f"{window - 0.1}s window, {_max_in_window(fake_owm, window)} in any {window}s window "
          f"(limit {limit}/{window}s); outcomes {dict(outcomes)}")
    assert worst <= limit, (worst, stats)
    # the budget was used, by all three producers, and refusals are marked owm_quota
    assert stats["total"] >= 2 * limit, stats
    assert outcomes["200"] == stats["total"]
    assert set(outcomes) == {"200", "503:owm_quota"}, outcomes
    assert list(stats["by_key"]) == [hashlib.sha256(owm_key.encode()).hexdigest()[:12]]
    for p in producers:
        counts = p.producer.service.limiter.counts
        assert counts["admitted_shared"] >= 1 and counts["admitted_local"] == 0, counts
    # the window lives in KV under a hash of the key, never the key itself
    keys = requests.get(f"{consul_agent.url}/v1/kv/{common['OWM_QUOTA_KV_PREFIX']}", params={"keys": ""},
                        timeout=5).json()
    assert keys == [f"{common['OWM_QUOTA_KV_PREFIX']}/{hashlib.sha256(owm_key.encode()).hexdigest()[:16]}"]
    assert owm_key not in json.dumps(consul_agent.client().kv_get(keys[0]))


@pytest.mark.consul
def test_consul_down_each_producer_keeps_to_its_share(run_producer, consul_factory, fake_owm):
    agent = consul_factory()
    limit, window = 9, 3.0
    common = dict(CONSUL_HTTP_ADDR=agent.url, CONSUL_REGISTER=False,
                  CACHE_KV_PREFIX=f"t/qd-{uuid.uuid4().hex[:6]}", OWM_QUOTA_KV_PREFIX=f"t/q-{uuid.uuid4().hex[:6]}",
                  OWM_MAX_CALLS_PER_MINUTE=limit, OWM_QUOTA_WINDOW=window)
    producers = [run_producer(**common) for _ in range(3)]
    # Two rounds of one call each: every producer has seen the other two in the records.
    for rnd in range(2):
        for i, p in enumerate(producers):
            assert p.get(zip=f"6{rnd}{i}00").status_code == 200
    assert [p.producer.service.limiter.producers() for p in producers] == [3, 3, 3]
    agent.stop()
    time.sleep(window)  # the calls made through Consul have left the window
    fake_owm.reset_stats()
    t0 = time.monotonic()
    outcomes = _flood(producers, 2 * window, threads_per_producer=3, prefix="6")
    took = time.monotonic() - t0
    stats = fake_owm.stats()
    worst = _max_in_window(fake_owm, window - 0.1)
    print(f"\nlocal shares: {stats['total']} OWM calls in {2 * window:.0f}s, max {worst} in any "
          f"{window - 0.1}s window (limit {limit}, share {limit // 3} each); outcomes {dict(outcomes)}")
    assert worst <= limit, (worst, stats)
    assert stats["total"] >= limit  # each used its share
    for p in producers:
        lim = p.producer.service.limiter
        assert lim.share() == limit // 3
        assert lim.counts["admitted_local"] >= limit // 3, lim.counts
    assert took < 2 * window + 3  # a dead Consul does not stall the lookups


@pytest.mark.consul
def test_shared_slot_is_given_back_when_the_breaker_refuses(run_producer, consul_agent, fake_owm, owm_key):
    common = dict(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False,
                  CACHE_KV_PREFIX=f"t/qr-{uuid.uuid4().hex[:6]}", OWM_QUOTA_KV_PREFIX=f"t/q-{uuid.uuid4().hex[:6]}",
                  OWM_MAX_CALLS_PER_MINUTE=6, BREAKER_FAILURE_THRESHOLD=2, BREAKER_RECOVERY_TIMEOUT=30)
    prod = run_producer(**common)
    fake_owm.set_mode("error")
    reasons = [prod.get(zip=f"4600{i}").json()["reason"] for i in range(10)]
    assert reasons == ["owm_outage"] * 2 + ["breaker_open"] * 8
    key = f"{common['OWM_QUOTA_KV_PREFIX']}/{hashlib.sha256(owm_key.encode()).hexdigest()[:16]}"
    records = consul_agent.client().kv_get(key)
    # two calls reached OWM and spent budget; the eight refusals spent none
    assert len(records) == 2 and {r[1] for r in records} == {prod.instance}


@pytest.mark.consul
@pytest.mark.parametrize("raw", [
    b"not json", b'{"calls": 1}', b'[[1e400, "x"]]',
    json.dumps([[time.time() + 3600, "future"]] * 50).encode(),  # would block the key for an hour
    json.dumps([["yesterday", "x"], [True, "x"], [1.0], "x", None] * 20).encode(),
], ids=["garbage", "dict", "infinity", "future", "wrong-types"])
def test_poisoned_quota_key_is_ignored(run_producer, consul_agent, fake_owm, owm_key, raw):
    prefix = f"t/qp-{uuid.uuid4().hex[:6]}"
    key = f"{prefix}/{hashlib.sha256(owm_key.encode()).hexdigest()[:16]}"
    assert requests.put(f"{consul_agent.url}/v1/kv/{key}", data=raw, timeout=5).json() is True
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False,
                        CACHE_KV_PREFIX=f"t/qpc-{uuid.uuid4().hex[:6]}", OWM_QUOTA_KV_PREFIX=prefix,
                        OWM_MAX_CALLS_PER_MINUTE=3)
    assert [prod.get(zip=f"4700{i}").status_code for i in range(4)] == [200, 200, 200, 503]
    assert fake_owm.stats()["total"] == 3
    records = consul_agent.client().kv_get(key)
    assert [r[1] for r in records] == [prod.instance] * 3  # the poison is gone
    counts = prod.producer.service.limiter.counts
    assert counts["admitted_shared"] == 3 and counts["admitted_local"] == 0, counts
