"""Fresh cache single-flight and last-good stores (memory and real Consul KV)."""

from __future__ import annotations

import threading
import time

import pytest

from weather_common.cache import ConsulLastGoodStore, Entry, FreshCache, MemoryLastGoodStore, location_key
from weather_common.consul import ConsulClient


def test_single_flight_collapses_concurrent_misses():
    cache: FreshCache[str] = FreshCache(ttl=60)
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(40)
    results: list[tuple[str, bool]] = []

    def loader() -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return "value"

    def worker() -> None:
        barrier.wait()
        entry, hit = cache.get_or_load("k", loader)
        with lock:
            results.append((entry.value, hit))

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1
    assert len(results) == 40 and all(v == "value" for v, _ in results)
    assert cache.loads == 1
    # Now fresh: a hit, no loader call
    entry, hit = cache.get_or_load("k", loader)
    assert hit and calls == 1


def test_loader_error_reaches_all_waiters_and_is_not_cached():
    cache: FreshCache[str] = FreshCache(ttl=60)
    barrier = threading.Barrier(10)
    errors: list[Exception] = []
    calls = 0

    def loader() -> str:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        raise ConnectionError("down")

    def worker() -> None:
        barrier.wait()
        try:
            cache.get_or_load("k", loader)
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1 and len(errors) == 10
    assert cache.get("k") is None
    entry, hit = cache.get_or_load("k", lambda: "back")
    assert entry.value == "back" and not hit


def test_ttl_expiry_with_injected_clock():
    now = [1000.0]
    cache: FreshCache[int] = FreshCache(ttl=60, clock=lambda: now[0])
    cache.get_or_load("a", lambda: 1)
    now[0] += 59
    assert cache.get_or_load("a", lambda: 2) == (Entry(1, 1000.0), True)
    now[0] += 2
    entry, hit = cache.get_or_load("a", lambda: 2)
    assert entry.value == 2 and not hit


def test_entry_age():
    e = Entry("x", time.time() - 42.5)
    assert e.age_seconds() == 42
    assert Entry("x", time.time() + 10).age() == 0.0


def test_memory_store_keeps_newest():
    store = MemoryLastGoodStore()
    store.put("us/1", {"t": 2}, fetched_at=200)
    store.put("us/1", {"t": 1}, fetched_at=100)  # older: ignored
    assert store.get("us/1") == Entry({"t": 2}, 200)
    assert store.get("us/2") is None


@pytest.mark.consul
def test_consul_store_is_shared_and_uses_the_contract_layout(consul_agent):
    prefix = f"test/{time.time_ns()}"
    a = ConsulLastGoodStore(consul_agent.client(), prefix=prefix)
    b = ConsulLastGoodStore(consul_agent.client(), prefix=prefix)
    a.put(location_key("us", "10001"), {"city": "New York"}, fetched_at=1234.5)
    assert a.flush(5)  # writes are asynchronous
    got = b.get("us/10001")
    assert got == Entry({"city": "New York"}, 1234.5)
    raw = consul_agent.client().kv_get(f"{prefix}/us/10001")
    assert raw == {"value": {"city": "New York"}, "fetched_at": 1234.5}
    # zips may contain spaces
    a.put(location_key("gb", "SW1A 1AA"), {"city": "London"})
    assert a.flush(5)
    assert b.get("gb/SW1A 1AA").value == {"city": "London"}
    assert a.writes == 2 and a.write_failures == 0


@pytest.mark.consul
def test_consul_store_falls_back_to_memory_when_consul_is_down(consul_factory):
    agent = consul_factory()
    store = ConsulLastGoodStore(ConsulClient(agent.url, connect_timeout=0.3, read_timeout=1), prefix="p")
    store.put("us/1", {"v": 1}, fetched_at=10)
    assert store.flush(5)
    agent.stop()
    t0 = time.monotonic()
    store.put("us/2", {"v": 2}, fetched_at=20)  # KV down: kept in memory, no exception
    assert store.get("us/1") == Entry({"v": 1}, 10)
    assert store.get("us/2") == Entry({"v": 2}, 20)
    for _ in range(10):  # the consul-kv breaker opens: no waiting on a dead Consul
        store.get("us/1")
    assert time.monotonic() - t0 < 5
    assert store.breaker.state == "open"


# ------------------------------------------------------------------ bounded size (LRU)
def test_fresh_cache_get_or_load_evicts_least_recently_used():
    cache: FreshCache[str] = FreshCache(ttl=60, max_entries=3)
    for k in ("a", "b", "c"):
        cache.get_or_load(k, lambda k=k: k.upper())
    cache.get_or_load("a", lambda: pytest.fail("a is fresh: no load"))  # a is now most recent
    cache.get_or_load("d", lambda: "D")  # evicts b, the least recently used
    assert len(cache) == 3 and cache.evictions == 1
    assert cache.get("b") is None
    assert [cache.get(k).value for k in ("a", "c", "d")] == ["A", "C", "D"]
    loads = cache.loads
    entry, hit = cache.get_or_load("b", lambda: "B2")  # reloaded, not served from nowhere
    assert (entry.value, hit, cache.loads) == ("B2", False, loads + 1)
    assert len(cache) == 3


def test_fresh_cache_stays_bounded_under_many_keys_and_threads():
    cache: FreshCache[int] = FreshCache(ttl=60, max_entries=50)

    def worker(base: int) -> None:
        for i in range(500):
            cache.get_or_load(f"{base}-{i}", lambda i=i: i)
            cache.put(f"p{base}-{i}", i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
    assert cache.evictions == 4 * 1000 - 50


def test_fresh_cache_rejects_a_zero_bound():
    with pytest.raises(ValueError):
        FreshCache(ttl=1, max_entries=0)


def test_memory_last_good_store_is_bounded_lru():
    store = MemoryLastGoodStore(max_entries=2)
    store.put("us/1", {"v": 1})
    store.put("us/2", {"v": 2})
    assert store.get("us/1").value == {"v": 1}  # us/1 now most recently used
    store.put("us/3", {"v": 3})  # evicts us/2
    assert store.get("us/2") is None
    assert [k for k, _ in store.items()] == ["us/1", "us/3"]
    assert len(store) == 2 and store.evictions == 1
    # An older answer for a known key does not replace the newer one, but counts as a use.
    store.put("us/1", {"v": "old"}, fetched_at=0)
    store.put("us/4", {"v": 4})  # evicts us/3
    assert store.get("us/1").value == {"v": 1} and store.get("us/3") is None


def test_memory_last_good_store_bounded_under_threads():
    store = MemoryLastGoodStore(max_entries=100)

    def worker(base: int) -> None:
        for i in range(1000):
            store.put(f"{base}/{i}", i)
            store.get(f"{base}/{i // 2}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 100 and len(store.items()) == 100


# --------------------------------------------- Consul off the hot path (issue 11)
import logging
import math

import requests
from rawservers import Blackhole, refused_port

from weather_common.breaker import CircuitBreaker
from weather_common.consul import ConsulError
from weather_common.deadline import Deadline


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


def test_consul_store_reads_within_the_read_budget_and_puts_never_block(blackhole):
    store = ConsulLastGoodStore(ConsulClient(blackhole.url), prefix="p", read_budget=0.2,
                                breaker=CircuitBreaker(failure_threshold=100, expected_exception=ConsulError,
                                                       name="kv-test"))
    t0 = time.monotonic()
    for i in range(50):
        store.put(f"us/{i}", {"v": i}, fetched_at=100 + i)
    assert time.monotonic() - t0 < 0.05  # 50 puts on a hung Consul: no waiting
    t0 = time.monotonic()
    assert store.get("us/3") == Entry({"v": 3}, 103)  # memory, after the 0.2 s budget
    elapsed = time.monotonic() - t0
    assert 0.19 <= elapsed <= 0.3, elapsed
    # a caller with less time left gives KV less
    t0 = time.monotonic()
    assert store.get("us/4", deadline=Deadline(0.05)) == Entry({"v": 4}, 104)
    assert time.monotonic() - t0 <= 0.15
    # a spent deadline: memory only, Consul is not even asked
    before = blackhole.connections
    assert store.get("us/5", deadline=0) == Entry({"v": 5}, 105)
    time.sleep(0.05)
    assert blackhole.connections == before
    assert store.read_failures == 2
    assert store.close(timeout=0.1) is False  # the writer is stuck on the hung Consul
    assert store.dropped_writes > 0


def test_consul_store_write_queue_is_bounded_and_keeps_the_latest_per_key(blackhole):
    store = ConsulLastGoodStore(ConsulClient(blackhole.url, read_timeout=0.5), prefix="p",
                                queue_size=2, write_deadline=0.5)
    for i in range(4):
        store.put(f"us/{i}", {"v": i}, fetched_at=100 + i)
    # one key may be in flight, two wait; the rest are dropped (kept in memory)
    assert store.dropped_writes in (1, 2)
    dropped = store.dropped_writes
    store.put("us/2", {"v": "newer"}, fetched_at=500)  # already queued or dropped: no new drop if queued
    assert store.dropped_writes in (dropped, dropped + 1)
    assert [store.memory.get(f"us/{i}").value for i in range(4)] == [{"v": 0}, {"v": 1}, {"v": "newer"}, {"v": 3}]
    store.close(timeout=0.1)


@pytest.mark.consul
def test_consul_store_coalesces_writes_and_never_overwrites_a_newer_entry(consul_agent):
    prefix = f"test/{time.time_ns()}"
    client = consul_agent.client()
    a = ConsulLastGoodStore(client, prefix=prefix)
    for i in range(200):
        a.put("us/10001", {"n": i}, fetched_at=1000 + i)
    assert a.flush(5)
    assert client.kv_get(f"{prefix}/us/10001") == {"value": {"n": 199}, "fetched_at": 1199}
    assert 1 <= a.writes < 50  # latest value per key, not 200 writes
    # another instance holds a NEWER answer: an older one does not replace it
    b = ConsulLastGoodStore(client, prefix=prefix)
    b.put("us/10001", {"n": "old"}, fetched_at=500)
    assert b.flush(5)
    assert b.skipped_writes == 1 and b.writes == 0
    assert client.kv_get(f"{prefix}/us/10001")["value"] == {"n": 199}
    assert b.get("us/10001") == Entry({"n": 199}, 1199)  # and b reads the newer one back
    a.close()
    b.close()


@pytest.mark.consul
def test_consul_store_ignores_invalid_kv_entries(consul_agent, caplog):
    prefix = f"test/{time.time_ns()}"
    client = consul_agent.client()
    now = time.time()

    def validate(v):
        ok = isinstance(v, dict) and isinstance(v.get("temperature_c"), float) and math.isfinite(v["temperature_c"])
        return v if ok else None

    good = {"temperature_c": 21.5}
    bad_values = {
        "not-object": [1, 2],
        "no-fetched-at": {"value": good},
        "no-value": {"fetched_at": now},
        "string-ts": {"value": good, "fetched_at": str(now)},
        "bool-ts": {"value": good, "fetched_at": True},
        "zero-ts": {"value": good, "fetched_at": 0},
        "future-ts": {"value": good, "fetched_at": now + 60},
        "huge-ts": {"value": good, "fetched_at": 1e300},
        "refused-value": {"value": {"temperature_c": "hot"}, "fetched_at": now},
    }
    for name, raw in bad_values.items():
        client.kv_put(f"{prefix}/x/{name}", raw)
    # not even JSON / non-finite literals: written raw, bypassing our strict encoder
    for name, body in (("nan", b'{"value": {"temperature_c": NaN}, "fetched_at": 1}'), ("garbage", b"\x00\xffzz")):
        requests.put(f"{consul_agent.url}/v1/kv/{prefix}/x/{name}", data=body, timeout=5).raise_for_status()
    client.kv_put(f"{prefix}/x/ok", {"value": good, "fetched_at": now - 10})
    client.kv_put(f"{prefix}/x/ok-soon", {"value": good, "fetched_at": now + 2})  # clock skew within 5 s

    store = ConsulLastGoodStore(client, prefix=prefix, validate=validate)
    names = list(bad_values) + ["nan", "garbage"]
    with caplog.at_level(logging.WARNING, logger="weather_common.cache"):
        for _ in range(3):
            for name in names:
                assert store.get(f"x/{name}") is None, name
    assert store.invalid_entries == 3 * len(names)
    warned = [r for r in caplog.records if "ignoring last-good KV entry" in r.getMessage()]
    assert len(warned) == len(names)  # once per key
    assert store.breaker.state == "closed"  # garbage in KV is not a Consul outage
    assert store.get("x/ok") == Entry(good, now - 10)
    assert store.get("x/ok-soon").value == good
    # a local entry is still served when KV holds garbage for the key
    store.put("x/garbage", {"temperature_c": 3.0}, fetched_at=now)
    assert store.get("x/garbage") == Entry({"temperature_c": 3.0}, now)
    assert store.flush(5)
    assert client.kv_get(f"{prefix}/x/garbage") == {"value": {"temperature_c": 3.0}, "fetched_at": now}
    store.close()


@pytest.mark.consul
def test_consul_store_does_not_write_nan(consul_factory):
    agent = consul_factory()
    store = ConsulLastGoodStore(agent.client(), prefix="p")
    store.put("us/1", {"t": float("nan")}, fetched_at=10)
    assert store.flush(5)
    assert store.write_failures == 1 and store.writes == 0
    assert agent.client().kv_get("p/us/1") is None
    store.close()


def test_consul_store_outage_does_not_flood_the_logs(caplog):
    refused = f"http://127.0.0.1:{refused_port()}"  # nothing listens: every write is refused at once
    store = ConsulLastGoodStore(ConsulClient(refused), prefix="p")
    with caplog.at_level(logging.WARNING, logger="weather_common.cache"):
        for i in range(200):
            store.put(f"us/{i}", {"v": i}, fetched_at=10 + i)
        assert store.flush(5)
    assert store.write_failures == 200 and store.writes == 0
    assert store.breaker.state == "open"
    lines = [r for r in caplog.records if "last-good KV put" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert len(store.items()) == 200  # all kept in memory
    store.close()
