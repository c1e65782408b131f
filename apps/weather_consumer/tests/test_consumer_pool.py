"""InstancePool: round robin over routable instances, ejection, re-admission, status."""

from __future__ import annotations

import pytest
from weather_common.breaker import CircuitBreaker, CircuitOpenError
from weather_consumer.pool import Instance, InstancePool, parse_producer_urls


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Boom(Exception):
    pass


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def pool(clock):
    def factory(iid):
        return CircuitBreaker(failure_threshold=2, recovery_timeout=5, expected_exception=Boom,
                              name=iid, clock=clock)
    p = InstancePool(factory, forget_after=60, clock=clock)
    p.update([Instance("c", "10.0.0.3", 8000), Instance("a", "10.0.0.1", 8000),
              Instance("b", "10.0.0.2", 8000)])
    return p


def fail(pool, iid, times):
    for _ in range(times):
        with pytest.raises(Boom):
            pool.breaker(iid).call(lambda: (_ for _ in ()).throw(Boom()))


def test_round_robin_starts_each_request_at_the_next_instance(pool):
    firsts = [pool.plan()[0].id for _ in range(9)]
    assert firsts == ["a", "b", "c"] * 3
    assert [i.id for i in pool.plan()] == ["a", "b", "c"]  # every instance once per plan


def test_ejected_instance_is_left_out_and_the_others_share_evenly(pool):
    fail(pool, "b", 2)
    assert pool.breaker("b").state == "open"
    plans = [pool.plan() for _ in range(10)]
    assert all("b" not in [i.id for i in p] for p in plans)
    firsts = [p[0].id for p in plans]
    assert firsts.count("a") == firsts.count("c") == 5


def test_ejected_instance_comes_back_for_exactly_one_trial_after_recovery(pool, clock):
    fail(pool, "b", 2)
    clock.now += 5.1
    assert "b" in [i.id for i in pool.plan()]
    br = pool.breaker("b")
    assert br.state == "half_open"
    # While the trial runs, a second caller is refused (and would move on).
    seen = []

    def trial():
        with pytest.raises(CircuitOpenError):
            br.call(lambda: None)
        seen.append("refused")
        return "ok"

    assert br.call(trial) == "ok"
    assert seen == ["refused"]
    assert br.state == "closed"


def test_failed_trial_ejects_again(pool, clock):
    fail(pool, "b", 2)
    clock.now += 5.1
    fail(pool, "b", 1)
    assert pool.breaker("b").state == "open"
    assert "b" not in [i.id for i in pool.plan()]


def test_all_ejected_gives_an_empty_plan(pool):
    for iid in "abc":
        fail(pool, iid, 2)
    assert pool.plan() == []
    assert len(pool.healthy()) == 3


def test_update_keeps_breakers_and_marks_missing_instances_unhealthy(pool, clock):
    fail(pool, "a", 2)
    pool.update([Instance("a", "10.0.0.1", 8000), Instance("c", "10.0.0.3", 8000)])
    assert pool.breaker("a").state == "open"  # kept across discovery updates
    rows = {r["id"]: r for r in pool.snapshot()}
    assert rows["b"]["healthy"] is False and rows["a"]["breaker"] == "open"
    assert [i.id for i in pool.healthy()] == ["a", "c"]
    clock.now += 61
    pool.update([Instance("a", "10.0.0.1", 8000), Instance("c", "10.0.0.3", 8000)])
    assert "b" not in {r["id"] for r in pool.snapshot()}


def test_snapshot_has_the_contract_fields(pool):
    row = pool.snapshot()[0]
    assert set(row) == {"id", "address", "port", "healthy", "breaker"}
    assert row == {"id": "a", "address": "10.0.0.1", "port": 8000, "healthy": True,
                   "breaker": "closed"}


@pytest.mark.parametrize("value, ids", [
    ("http://h1:8000,http://h2:8001", ["h1:8000", "h2:8001"]),
    ("http://h1:8000 http://h2", ["h1:8000", "h2:80"]),
    (["http://[::1]:8000"], ["::1:8000"]),
    ("", []),
])
def test_parse_producer_urls(value, ids):
    assert [i.id for i in parse_producer_urls(value)] == ids


def test_ipv6_base_url():
    assert Instance.from_url("http://[::1]:8000").base_url == "http://[::1]:8000"


@pytest.mark.parametrize("bad", ["ftp://x:1", "h1:8000", "http://"])
def test_parse_producer_urls_rejects_non_http(bad):
    with pytest.raises(ValueError):
        parse_producer_urls(bad)


def test_panic_routing_uses_recently_known_instances_when_none_is_passing(pool, clock):
    fail(pool, "c", 2)
    pool.update([])
    assert pool.healthy() == []
    assert sorted(i.id for i in pool.plan()) == ["a", "b"]  # c stays ejected
    clock.now += 61
    pool.update([])
    assert pool.plan() == [] and pool.known() == []


def test_without_panic_routing_no_passing_means_no_plan(clock):
    p = InstancePool(lambda iid: CircuitBreaker(name=iid, clock=clock), panic_routing=False,
                     clock=clock)
    p.update([Instance("a", "10.0.0.1", 8000)])
    p.update([])
    assert p.plan() == []


def test_consul_discovery_skips_only_the_bad_catalog_entries(pool):
    """ConsulDiscovery._on_change: one bad entry skips only itself; all bad keeps the list."""
    from types import SimpleNamespace

    from weather_common.consul import ConsulClient, HealthWatcher
    from weather_common.consul import Instance as ConsulInstance
    from weather_consumer.discovery import ConsulDiscovery

    watcher = HealthWatcher(ConsulClient("http://127.0.0.1:9"), "weather-producer")
    disco = ConsulDiscovery(pool, watcher)
    good = ConsulInstance(id="weather-producer-pi1-t1", service="weather-producer",
                          address="10.0.0.11", port=8000, node="pi1")
    bad = [
        ConsulInstance(id="weather-producer-pi2", service="s", address="10.0.0.12", port=0),
        SimpleNamespace(id="weather-producer-pi3", address="10.0.0.13", port=70000),
        SimpleNamespace(id="weather-producer-pi4", address="", port=8000),
        SimpleNamespace(id="", address="10.0.0.15", port=8000),
        SimpleNamespace(id="weather-producer-pi6", address="10.0.0.16/evil?x=", port=8000),
        SimpleNamespace(id="weather-producer-pi7", address="10.0.0.17", port=True),
        SimpleNamespace(id="weather-producer-pi8", address="10.0.0.18", port="80a"),
        {"ID": "not an instance object"},
        None,
    ]
    watcher.on_change(bad[:4] + [good] + bad[4:])
    assert [i.id for i in pool.healthy()] == ["weather-producer-pi1-t1"]
    assert pool.healthy()[0].base_url == "http://10.0.0.11:8000"
    assert disco.skipped == len(bad)
    # Every entry bad: not "nothing passing" - the last known list stays.
    watcher.on_change(bad)
    assert [i.id for i in pool.healthy()] == ["weather-producer-pi1-t1"]
    # An unreadable list (not iterable) is ignored too.
    watcher.on_change(42)
    assert [i.id for i in pool.healthy()] == ["weather-producer-pi1-t1"]
    assert disco.status()["skipped_entries"] == 2 * len(bad)
    # A real empty list still means "no instance passing" (panic routing decides then).
    watcher.on_change([])
    assert pool.healthy() == []


def test_hedge_candidates_must_be_known_fast(pool, clock):
    """pick(max_cost=...) only offers instances expected to answer within that time."""
    picked = pool.pick()
    assert picked is not None
    inst, token = picked
    clock.now += 1.2
    pool.end(inst.id, token, failed=False)  # 1.2 s: slow
    others = {i.id for i in pool.healthy()} - {inst.id}
    for iid in others:
        _i, t = pool.pick(exclude={inst.id} | (others - {iid}))
        clock.now += 0.01
        pool.end(iid, t, failed=False)
    assert pool.pick(exclude=others, max_cost=0.25) is None  # only the slow one is left
    got, _t = pool.pick(exclude={inst.id}, max_cost=0.25)
    assert got.id in others
    # The slow one is last in the order until its cost decays (time constant 5 s).
    assert pool.plan()[-1].id == inst.id
    clock.now += 30
    assert inst.id in [i.id for i in pool.plan()[:2]]
