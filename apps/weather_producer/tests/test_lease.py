"""Cross-producer single flight: one OWM call per location for ALL producers (lease in
Consul KV), with a real consul agent, real producers and the fake OWM."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import requests


def _common(consul_url: str, **extra):
    tag = uuid.uuid4().hex[:8]
    cfg = dict(CONSUL_HTTP_ADDR=consul_url, CONSUL_REGISTER=False,
               CACHE_KV_PREFIX=f"t-{tag}/cache", OWM_QUOTA_KV_PREFIX=f"t-{tag}/quota")
    cfg.update(extra)
    return cfg


def _lease_count(prod, outcome: str) -> float:
    return prod.producer.service.lease_metric.labels(outcome=outcome)._value.get()


def _burst(prods, zip_code: str, n: int, headers=None):
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        s = requests.Session()
        barrier.wait()
        t0 = time.monotonic()
        r = s.get(f"{prods[i % len(prods)].url}/weather", params={"zip": zip_code}, headers=headers or {},
                  timeout=30)
        results[i] = (r, time.monotonic() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_30_concurrent_requests_on_3_producers_make_one_owm_call(run_producer, consul_agent, fake_owm):
    # Generous budgets: a loaded test machine must not turn a slow Consul answer into a
    # "no lease" (that is the documented bound: 1 + lookups whose lease check failed).
    common = _common(consul_agent.url, OWM_LEASE_BUDGET=2.0, OWM_DEADLINE=4, PRODUCER_DEADLINE=6)
    prods = [run_producer(**common) for _ in range(3)]
    fake_owm.set_mode("slow", 0.3)  # the call is still in flight when the others miss
    results = _burst(prods, "12345", 30)
    bodies = [r.json() for r, _ in results]
    assert [r.status_code for r, _ in results] == [200] * 30, bodies
    assert all(b["stale"] is False and b["temperature_c"] is not None for b in bodies)
    assert fake_owm.stats()["by_zip"] == {"12345": 1}
    taken = sum(_lease_count(p, "taken") for p in prods)
    served = sum(_lease_count(p, "waited_served") for p in prods)
    assert taken == 1
    assert sum(_lease_count(p, o) for p in prods for o in ("skipped_consul", "taken_over", "waited_fallback")) == 0
    # the two other producers' local leaders waited for the lease holder's KV copy (or,
    # if their flight started after it landed, served the shared fresh copy directly)
    assert served + sum(p.producer.service.metrics.cache_hits.labels(cache="shared")._value.get()
                        for p in prods) >= 2
    # all 30 answers carry the one observation
    assert len({(b["temperature_c"], b["observed_at"]) for b in bodies}) == 1


def test_burst_over_many_zips_on_3_producers_is_one_call_per_zip(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url, OWM_LEASE_BUDGET=2.0, OWM_DEADLINE=4, PRODUCER_DEADLINE=6)
    prods = [run_producer(**common) for _ in range(3)]
    fake_owm.set_mode("slow", 0.2)
    zips = [f"{20000 + i}" for i in range(10)]
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def client(i: int) -> None:
        s = requests.Session()
        barrier.wait()
        for j in range(3):
            prod = prods[(i + j) % 3]
            r = s.get(f"{prod.url}/weather", params={"zip": zips[(i // 3 + j) % 10]}, timeout=30)
            with lock:
                statuses[(r.status_code, r.json().get("stale"))] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == {(200, False): 90}
    by_zip = fake_owm.stats()["by_zip"]
    assert sorted(by_zip) == zips and set(by_zip.values()) == {1}, by_zip


def test_unknown_zip_is_asked_once_for_all_producers(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url, OWM_LEASE_BUDGET=2.0, OWM_DEADLINE=4, PRODUCER_DEADLINE=6)
    prods = [run_producer(**common) for _ in range(3)]
    fake_owm.set_mode("slow", 0.3)
    results = _burst(prods, "00042", 12)
    assert [r.status_code for r, _ in results] == [404] * 12
    assert all(r.headers["X-Weather-Answer"] == "not-found" for r, _ in results)
    assert fake_owm.stats()["by_zip"] == {"00042": 1}


def test_dead_holder_blocks_only_until_its_until(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url)
    prod = run_producer(**common)
    kv = consul_agent.client()
    lease_key = f"{common['CACHE_KV_PREFIX']}-inflight/us/13579"
    until = time.time() + 0.8
    kv.kv_put(lease_key, {"instance": "dead-producer", "id": "gone", "until": until})
    t0 = time.monotonic()
    r = prod.get(zip="13579")
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["stale"] is False, r.text
    assert 0.7 <= took <= 1.8 + 0.1, took  # waited for the dead lease, then called OWM
    assert time.time() >= until
    assert fake_owm.stats()["by_zip"] == {"13579": 1}
    assert _lease_count(prod, "taken_over") == 1
    prod.producer.service.leases.flush(5)
    released = kv.kv_get(lease_key)
    assert released["instance"] == prod.instance and released["outcome"] == "ok"


def test_poisoned_lease_is_taken_over_at_once(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url)
    prod = run_producer(**common)
    prefix = f"{common['CACHE_KV_PREFIX']}-inflight/us"
    for zip_code, raw in (("14001", b"not json"), ("14002", b'{"instance": "x", "until": 1e12}'),
                          ("14003", b'[1, 2]'), ("14004", b'{"instance": "x", "until": "soon"}')):
        assert requests.put(f"{consul_agent.url}/v1/kv/{prefix}/{zip_code}", data=raw, timeout=5).json() is True
        t0 = time.monotonic()
        r = prod.get(zip=zip_code)
        assert r.status_code == 200 and r.json()["stale"] is False, (zip_code, r.text)
        assert time.monotonic() - t0 < 0.6, zip_code
    assert fake_owm.stats()["total"] == 4
    assert _lease_count(prod, "taken") == 4


def test_live_lease_that_never_answers_gives_the_outage_fallback(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url)
    prod = run_producer(**common)
    kv = consul_agent.client()
    # a stale last-good copy, and a live lease of a producer that will not answer in time
    kv.kv_put(f"{common['CACHE_KV_PREFIX']}/us/15001", {
        "value": {"city": "Old Town", "description": "fog", "temperature_c": 3.5, "observed_at": None},
        "fetched_at": time.time() - 600})
    for zip_code in ("15001", "15002"):
        kv.kv_put(f"{common['CACHE_KV_PREFIX']}-inflight/us/{zip_code}",
                  {"instance": "busy-producer", "id": "x", "until": time.time() + 5})
    t0 = time.monotonic()
    r = prod.get(zip="15001")
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["stale"] is True and r.json()["city"] == "Old Town", r.text
    assert 1.5 <= took <= 1.8 + 0.1, took
    t0 = time.monotonic()
    r = prod.get(zip="15002", headers=None)
    took = time.monotonic() - t0
    assert r.status_code == 503 and r.headers["X-Weather-Answer"] == "no-data", r.text
    assert r.json()["reason"] == "owm_slow"
    assert took <= 1.8 + 0.1, took
    assert fake_owm.stats()["total"] == 0
    assert _lease_count(prod, "waited_fallback") == 2


def test_follower_inherits_the_holders_failure(run_producer, consul_agent, fake_owm):
    common = _common(consul_agent.url)
    prod = run_producer(**common)
    svc = prod.producer.service
    kv = consul_agent.client()
    lease_key = f"{common['CACHE_KV_PREFIX']}-inflight/us/16001"
    kv.kv_put(lease_key, {"instance": "other", "id": "abc", "until": time.time() + 5})

    def fail_soon():
        time.sleep(0.3)
        now = time.time()
        kv.kv_put(lease_key, {"instance": "other", "id": "abc", "until": now, "outcome": "owm_quota", "at": now})

    threading.Thread(target=fail_soon).start()
    t0 = time.monotonic()
    status, body = svc.lookup("16001", "us")
    took = time.monotonic() - t0
    assert status == 503 and body["reason"] == "owm_quota", body
    assert 0.25 <= took <= 0.8, took
    assert fake_owm.stats()["total"] == 0


def test_consul_stopped_lookups_still_call_owm_within_the_deadline(run_producer, consul_factory, fake_owm):
    agent = consul_factory()
    prod = run_producer(**_common(agent.url))
    assert prod.get(zip="17001").status_code == 200
    agent.stop()
    for i in range(5):
        t0 = time.monotonic()
        r = prod.get(zip=f"1710{i}")
        took = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["stale"] is False, r.text
        assert took <= 1.0, took
    assert fake_owm.stats()["total"] == 6
    assert _lease_count(prod, "skipped_consul") == 5
    assert _lease_count(prod, "taken") == 1


def test_memory_store_takes_no_lease(run_producer, fake_owm):
    prod = run_producer()
    assert prod.producer.service.leases is None
    assert prod.get(zip="18001").status_code == 200
    assert _lease_count(prod, "taken") == 0
