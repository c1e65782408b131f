"""Quota protection: many concurrent clients, few OWM calls (counted by the fake's /_stats)."""

from __future__ import annotations

import collections
import threading

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
    prod = run_producer(CACHE_TTL=60, OWM_READ_TIMEOUT=10, OWM_CONNECT_TIMEOUT=5)
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
    prod = run_producer(OWM_MAX_CALLS_PER_MINUTE=10, OWM_READ_TIMEOUT=10, OWM_CONNECT_TIMEOUT=5)
    zips = [f"{30000 + i}" for i in range(25)]
    statuses = _hammer(prod.url, 25, zips, per_client=1)
    assert fake_owm.stats()["total"] == 10
    assert statuses[200] == 10 and statuses[503] == 15
    r = prod.get(zip="39999")
    assert r.status_code == 503 and "budget" in r.json()["error"]


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
