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
    got = b.get("us/10001")
    assert got == Entry({"city": "New York"}, 1234.5)
    raw = consul_agent.client().kv_get(f"{prefix}/us/10001")
    assert raw == {"value": {"city": "New York"}, "fetched_at": 1234.5}
    # zips may contain spaces
    a.put(location_key("gb", "SW1A 1AA"), {"city": "London"})
    assert b.get("gb/SW1A 1AA").value == {"city": "London"}


@pytest.mark.consul
def test_consul_store_falls_back_to_memory_when_consul_is_down(consul_factory):
    agent = consul_factory()
    store = ConsulLastGoodStore(ConsulClient(agent.url, connect_timeout=0.3, read_timeout=1), prefix="p")
    store.put("us/1", {"v": 1}, fetched_at=10)
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
