"""Caches: a fresh-TTL cache with single-flight loading, and last-good stores.

* :class:`FreshCache` - answers younger than ``ttl`` seconds are served without calling
  the upstream; concurrent misses for the same key collapse into ONE loader call (the
  other callers wait for it and get the same result or the same exception).
* last-good stores keep the last successful answer per key with the time it was
  fetched, to serve stale answers during outages:
  :class:`MemoryLastGoodStore` (per process) and :class:`ConsulLastGoodStore` (Consul KV
  under a prefix, shared by all instances; falls back to memory when Consul is down).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

from .breaker import CircuitBreaker, CircuitOpenError
from .consul import ConsulClient, ConsulError

__all__ = [
    "Entry",
    "FreshCache",
    "LastGoodStore",
    "MemoryLastGoodStore",
    "ConsulLastGoodStore",
    "location_key",
]

log = logging.getLogger(__name__)

V = TypeVar("V")


def location_key(country: str, zip_code: str) -> str:
    """The cache key of a location: ``<country>/<zip>`` (the KV layout of the contract)."""
    return f"{country}/{zip_code}"


@dataclass(frozen=True)
class Entry(Generic[V]):
    """A cached value and the wall-clock time (``time.time()``) it was fetched."""

    value: V
    fetched_at: float

    def age(self, now: float | None = None) -> float:
        """Age in seconds (never negative)."""
        return max(0.0, (time.time() if now is None else now) - self.fetched_at)

    def age_seconds(self, now: float | None = None) -> int:
        """Age in whole seconds."""
        return int(self.age(now))


class _Flight:
    __slots__ = ("done", "entry", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None
        self.error: BaseException | None = None


class FreshCache(Generic[V]):
    """A TTL cache with single-flight loading, bounded in size (LRU).

    Args:
        ttl: seconds an entry stays fresh.
        clock: wall clock (``time.time``); tests may inject one.
        max_entries: at most this many entries are kept; storing one more evicts the
            least recently used (read or written) entry.

    ``hits`` / ``misses`` / ``loads`` count lookups and loader calls; ``evictions`` counts
    entries dropped to stay within ``max_entries``.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.ttl = float(ttl)
        self._clock = clock
        self.max_entries = int(max_entries)
        self._data: OrderedDict[Hashable, Entry[V]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Entry[V] | None:
        """The fresh entry for ``key`` or None (does not count hits/misses)."""
        with self._lock:
            return self._fresh_locked(key)

    def _fresh_locked(self, key: Hashable) -> Entry[V] | None:
        entry = self._data.get(key)
        if entry is not None and self._clock() - entry.fetched_at < self.ttl:
            self._data.move_to_end(key)
            return entry
        return None

    def _store_locked(self, key: Hashable, entry: Entry[V]) -> None:
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self.evictions += 1

    def put(self, key: Hashable, value: V, fetched_at: float | None = None) -> Entry[V]:
        entry = Entry(value, self._clock() if fetched_at is None else fetched_at)
        with self._lock:
            self._store_locked(key, entry)
        return entry

    def get_or_load(self, key: Hashable, loader: Callable[[], V | Entry[V]], timeout: float | None = None) -> tuple[Entry[V], bool]:
        """Return ``(entry, hit)``: the fresh entry, or load it once for all callers.

        ``loader()`` returns the value (or an :class:`Entry` to set ``fetched_at``).
        If it raises, every caller waiting on this flight gets the same exception and
        nothing is cached. ``timeout`` bounds how long a follower waits for the leader
        (then it raises TimeoutError).
        """
        with self._lock:
            entry = self._fresh_locked(key)
            if entry is not None:
                self.hits += 1
                return entry, True
            self.misses += 1
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
                self.loads += 1
        if not leader:
            if not flight.done.wait(timeout):
                raise TimeoutError(f"timed out waiting for the load of {key!r}")
            if flight.error is not None:
                raise flight.error
            assert flight.entry is not None
            return flight.entry, False
        try:
            result = loader()
            entry = result if isinstance(result, Entry) else Entry(result, self._clock())
            with self._lock:
                self._store_locked(key, entry)
            flight.entry = entry
            return entry, False
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class LastGoodStore(Protocol):
    """Where the last good answer per key is kept."""

    def get(self, key: str) -> Entry[Any] | None: ...

    def put(self, key: str, value: Any, fetched_at: float | None = None) -> Entry[Any]: ...

    def items(self) -> list[tuple[str, Entry[Any]]]: ...


class MemoryLastGoodStore:
    """Process-local last-good store (thread-safe), bounded in size (LRU).

    Args:
        max_entries: at most this many keys are kept; storing a new key beyond it evicts
            the least recently used one (read by :meth:`get` or written by :meth:`put`).
    """

    backend = "memory"

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = int(max_entries)
        self._data: OrderedDict[str, Entry[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> Entry[Any] | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._data.move_to_end(key)
            return entry

    def put(self, key: str, value: Any, fetched_at: float | None = None) -> Entry[Any]:
        entry = Entry(value, time.time() if fetched_at is None else fetched_at)
        with self._lock:
            current = self._data.get(key)
            if current is None or current.fetched_at <= entry.fetched_at:
                self._data[key] = entry
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self.evictions += 1
        return entry

    def items(self) -> list[tuple[str, Entry[Any]]]:
        with self._lock:
            return sorted(self._data.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class ConsulLastGoodStore:
    """Last-good store in Consul KV: ``<prefix>/<key>`` = ``{"value": ..., "fetched_at": epoch}``.

    Writes go to memory AND to Consul; reads prefer the newer of the two. While Consul
    is unreachable (guarded by a small circuit breaker so the request path does not
    wait on it each time) the memory copy is used.
    """

    backend = "consul"

    def __init__(
        self,
        client: ConsulClient,
        prefix: str = "weather/cache",
        breaker: CircuitBreaker | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.client = client
        self.prefix = prefix.strip("/")
        self.memory = MemoryLastGoodStore(max_entries=max_entries)
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=3, recovery_timeout=5, expected_exception=ConsulError, name="consul-kv"
        )

    def _kv_key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def get(self, key: str) -> Entry[Any] | None:
        local = self.memory.get(key)
        try:
            raw = self.breaker.call(self.client.kv_get, self._kv_key(key))
        except (ConsulError, CircuitOpenError) as exc:
            log.debug("last-good KV get %s failed: %s", key, exc)
            return local
        remote = self._decode(raw)
        if remote is None:
            return local
        if local is None or remote.fetched_at > local.fetched_at:
            self.memory.put(key, remote.value, remote.fetched_at)
            return remote
        return local

    def put(self, key: str, value: Any, fetched_at: float | None = None) -> Entry[Any]:
        entry = self.memory.put(key, value, fetched_at)
        try:
            self.breaker.call(self.client.kv_put, self._kv_key(key), {"value": entry.value, "fetched_at": entry.fetched_at})
        except (ConsulError, CircuitOpenError) as exc:
            log.warning("last-good KV put %s failed (kept in memory): %s", key, exc)
        return entry

    def items(self) -> list[tuple[str, Entry[Any]]]:
        """Entries known locally (this process's view)."""
        return self.memory.items()

    @staticmethod
    def _decode(raw: Any) -> Entry[Any] | None:
        if not isinstance(raw, dict) or "value" not in raw:
            return None
        try:
            return Entry(raw["value"], float(raw["fetched_at"]))
        except (KeyError, TypeError, ValueError):
            return None
