"""Caches: a fresh-TTL cache with single-flight loading, and last-good stores.

* :class:`FreshCache` - answers younger than ``ttl`` seconds are served without calling
  the upstream; concurrent misses for the same key collapse into ONE loader call (the
  other callers wait for it and get the same result or the same exception).
* last-good stores keep the last successful answer per key with the time it was
  fetched, to serve stale answers during outages:
  :class:`MemoryLastGoodStore` (per process) and :class:`ConsulLastGoodStore` (Consul KV
  under a prefix, shared by all instances; short read budget, asynchronous writes,
  validated entries; falls back to memory when Consul is down or slow).
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

from .breaker import CircuitBreaker, CircuitOpenError
from .consul import ConsulBadValue, ConsulClient, ConsulError
from .deadline import Deadline

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

    Consul is kept off the request path:

    * :meth:`get` reads KV with a short budget (``min(read_budget, deadline.remaining())``)
      and falls back to the memory copy on any Consul error, timeout, open breaker or an
      entry that fails validation; it returns the newer of KV and memory.
    * :meth:`put` stores in memory and hands the entry to a background writer; it never
      waits on Consul. The writer keeps the LATEST entry per key (a newer put replaces a
      queued one); when ``queue_size`` keys are already waiting, a put for a new key is
      dropped from the KV side (memory still has it), counted in ``dropped_writes`` and
      logged (at most every 10 s). The writer only replaces a KV entry with a NEWER one
      (read ModifyIndex, then CAS), so a slow instance cannot overwrite a fresher answer
      written by another.
    * Decoded KV entries are untrusted: a dict with ``value`` and ``fetched_at``;
      ``fetched_at`` a finite number, > 0, not more than ``max_future`` (5 s) ahead of
      our clock; and ``validate(value)`` (from the app) returning the value to use, or
      None to refuse it. Refused entries are ignored (``invalid_entries``), logged once
      per key.

    A small circuit breaker (``consul-kv``) shared by reads and writes stops the request
    path from trying a dead Consul each time.
    """

    backend = "consul"

    def __init__(
        self,
        client: ConsulClient,
        prefix: str = "weather/cache",
        max_entries: int = 10_000,
        read_budget: float = 0.25,
        validate: Callable[[Any], Any | None] | None = None,
        breaker: CircuitBreaker | None = None,
        queue_size: int = 1000,
        write_deadline: float = 2.0,
        max_future: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.client = client
        self.prefix = prefix.strip("/")
        self.memory = MemoryLastGoodStore(max_entries=max_entries)
        self.read_budget = float(read_budget)
        self.validate = validate
        self.queue_size = int(queue_size)
        self.write_deadline = float(write_deadline)
        self.max_future = float(max_future)
        self._clock = clock
        self.breaker = breaker or CircuitBreaker(
            failure_threshold=3, recovery_timeout=5, expected_exception=_consul_outage, name="consul-kv"
        )
        # writer state
        self._pending: OrderedDict[str, Entry[Any]] = OrderedDict()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_drop_log = -1e9
        self._last_fail_log = -1e9
        self._logged_invalid: set[str] = set()
        # counters
        self.writes = 0  # entries written to KV
        self.skipped_writes = 0  # KV already held an entry as new or newer
        self.write_failures = 0  # Consul errors / open breaker while writing
        self.dropped_writes = 0  # queue full
        self.read_failures = 0  # Consul errors / timeouts / open breaker while reading
        self.invalid_entries = 0  # KV entries refused by validation
        _STORES.add(self)

    def _kv_key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    # ------------------------------------------------------------------------ read
    def get(self, key: str, deadline: Deadline | float | None = None) -> Entry[Any] | None:
        """The newer of KV and memory (memory alone when KV fails or has no budget)."""
        local = self.memory.get(key)
        budget = self.read_budget
        if deadline is not None:
            budget = min(budget, Deadline.coerce(deadline, self.read_budget).remaining())
        if budget < 0.005:
            return local
        try:
            raw = self.breaker.call(self.client.kv_get, self._kv_key(key), deadline=budget)
        except ConsulBadValue:
            self._refused(key, "value is not strict JSON")
            return local
        except (ConsulError, CircuitOpenError) as exc:
            self.read_failures += 1
            log.debug("last-good KV get %s failed: %s", key, exc)
            return local
        if raw is None:
            return local
        remote = self._decode(key, raw)
        if remote is None:
            return local
        if local is None or remote.fetched_at > local.fetched_at:
            self.memory.put(key, remote.value, remote.fetched_at)
            return remote
        return local

    def _decode(self, key: str, raw: Any) -> Entry[Any] | None:
        """A validated Entry from a decoded KV value, or None (counted, logged once)."""
        reason = self._check(raw)
        value = None
        if reason is None:
            value = raw["value"]
            if self.validate is not None:
                try:
                    value = self.validate(value)
                except Exception as exc:  # noqa: BLE001 - a validator must not break reads
                    reason = f"validator raised {type(exc).__name__}"
                    value = None
                else:
                    if value is None:
                        reason = "value refused by the validator"
        if reason is not None:
            self._refused(key, reason)
            return None
        return Entry(value, float(raw["fetched_at"]))

    def _refused(self, key: str, reason: str) -> None:
        self.invalid_entries += 1
        if key not in self._logged_invalid and len(self._logged_invalid) < 1000:
            self._logged_invalid.add(key)
            log.warning("ignoring last-good KV entry %s: %s", self._kv_key(key), reason)

    def _check(self, raw: Any) -> str | None:
        if not isinstance(raw, dict):
            return "not an object"
        if "value" not in raw or "fetched_at" not in raw:
            return "missing value or fetched_at"
        ts = raw["fetched_at"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            return "fetched_at is not a number"
        ts = float(ts)
        if not math.isfinite(ts) or ts <= 0:
            return "fetched_at is not a finite positive number"
        if ts > self._clock() + self.max_future:
            return "fetched_at is in the future"
        return None

    # ----------------------------------------------------------------------- write
    def put(self, key: str, value: Any, fetched_at: float | None = None) -> Entry[Any]:
        """Store in memory now; queue the KV write (never blocks on Consul)."""
        entry = self.memory.put(key, value, self._clock() if fetched_at is None else fetched_at)
        with self._cond:
            if self._closed:
                self.dropped_writes += 1
                return entry
            current = self._pending.get(key)
            if current is not None:
                if current.fetched_at <= entry.fetched_at:
                    self._pending[key] = entry
            elif len(self._pending) >= self.queue_size:
                self.dropped_writes += 1
                now = time.monotonic()
                if now - self._last_drop_log >= 10.0:
                    self._last_drop_log = now
                    log.warning("last-good KV write queue full (%d keys): dropped the write of %s "
                                "(kept in memory; %d dropped so far)", self.queue_size, key, self.dropped_writes)
                return entry
            else:
                self._pending[key] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._writer, name="consul-kv-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return entry

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._cond.notify_all()
                    return  # closed and drained
                key, entry = self._pending.popitem(last=False)
                self._busy = True
            try:
                self._write(key, entry)
            except Exception:  # noqa: BLE001 - the writer thread must not die
                self.write_failures += 1
                log.exception("unexpected error writing last-good KV entry %s", key)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, key: str, entry: Entry[Any]) -> None:
        kv_key = self._kv_key(key)
        payload = {"value": entry.value, "fetched_at": entry.fetched_at}
        dl = Deadline(self.write_deadline)
        try:
            for _ in range(3):  # CAS races with other instances: re-read and retry
                try:
                    raw, index = self.breaker.call(self.client.kv_get_index, kv_key, deadline=dl)
                except ConsulBadValue:  # garbage in KV: overwrite it (unconditionally)
                    raw, index = None, None
                if index is None:
                    self.breaker.call(self.client.kv_put, kv_key, payload, deadline=dl)
                    self.writes += 1
                    return
                if raw is not None and self._check(raw) is None and float(raw["fetched_at"]) >= entry.fetched_at:
                    self.skipped_writes += 1
                    return
                if self.breaker.call(self.client.kv_cas, kv_key, payload, index, deadline=dl):
                    self.writes += 1
                    return
            self.skipped_writes += 1  # lost three races: others are writing this key
        except (ConsulError, CircuitOpenError) as exc:
            self._write_failed(key, f"failed (kept in memory): {exc}")
        except ValueError as exc:  # not JSON-encodable (NaN...): a bug upstream, not Consul's
            self._write_failed(key, f"refused: {exc}")

    def _write_failed(self, key: str, what: str) -> None:
        """Count; log at most one line every 10 s (an outage must not flood the logs)."""
        self.write_failures += 1
        now = time.monotonic()
        if now - self._last_fail_log >= 10.0:
            self._last_fail_log = now
            log.warning("last-good KV put %s %s (%d write failures so far)", key, what, self.write_failures)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued write was attempted; False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> bool:
        """Write what is queued (up to ``timeout``), then stop the writer. Later puts
        only update memory. Returns False if writes were still pending."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            dropped = len(self._pending)
            self._pending.clear()
            self.dropped_writes += dropped
            self._cond.notify_all()
        _STORES.discard(self)
        return flushed and not dropped

    @property
    def pending_writes(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def items(self) -> list[tuple[str, Entry[Any]]]:
        """Entries known locally (this process's view)."""
        return self.memory.items()


def _consul_outage(exc_type: type, exc: BaseException) -> bool:
    """Breaker predicate: Consul errors count, a garbage KV value does not."""
    return issubclass(exc_type, ConsulError) and not issubclass(exc_type, ConsulBadValue)


_STORES: "weakref.WeakSet[ConsulLastGoodStore]" = weakref.WeakSet()


@atexit.register
def _flush_stores_at_exit() -> None:
    for store in list(_STORES):
        try:
            store.close(timeout=1.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
