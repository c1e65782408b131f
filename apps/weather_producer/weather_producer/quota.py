"""OWM call budget: one sliding window per API key, shared by every producer.

OWM's free plan allows ``limit`` calls per minute PER KEY, not per process. With N
producers each holding a private limiter the key could see N x ``limit`` calls, so:

* :class:`SharedRateLimiter` (when Consul is configured) keeps the window in Consul KV
  under ``<prefix>/<sha256(key)[:16]>`` (never the key itself): a JSON list of
  ``[epoch_seconds, instance]`` pairs, one per call in the window. A call is admitted by a
  check-and-set (``?cas=<ModifyIndex>``) that appends its record; a producer that loses
  the race reads again. The whole admission is bounded by ``budget`` seconds (0.3 s) and
  by the request's deadline. A full window is remembered until its oldest record expires,
  so a flood of refused lookups does not turn into a flood of KV reads.
* When Consul is unreachable or slow (errors trip a small breaker, then no KV call is
  tried for a few seconds) the limiter falls back to a LOCAL window whose share keeps
  the total within the budget: ``limit // producers``, where ``producers`` is the number
  of instances seen in the shared records during the last ``peer_memory`` seconds (at
  least ``expected_producers``, at least 1), and it also counts the other producers'
  calls it last saw in the shared window. Every producer in fallback stays within its
  share, so N producers stay within N x (limit // N) <= limit once the calls made
  before the fallback have left the window.

Only calls that reach OWM should spend the budget: :meth:`release` gives a slot back
(the producer calls it when the open breaker refused the call); for a shared slot the
KV record is removed in the background so the refusal stays instant.

:class:`RateLimiter` is the plain per-process window (no Consul: one producer).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from weather_common.breaker import CircuitBreaker, CircuitOpenError
from weather_common.consul import ConsulBadValue
from weather_common.deadline import Deadline

__all__ = ["Slot", "RateLimiter", "SharedRateLimiter", "quota_kv_key"]

log = logging.getLogger("weather_producer.quota")

#: records further in the future than this are garbage (clock skew or a poisoned entry)
FUTURE_SLACK = 5.0
#: at most this many records are read from the KV value (a poisoned huge list)
MAX_RECORDS = 10_000


@dataclass(frozen=True)
class Slot:
    """An admitted call. ``mode``: "off" (no limit), "local" or "shared"."""

    mode: str
    at: float = 0.0
    kv_key: str | None = None
    instance: str | None = None

    def __bool__(self) -> bool:  # a slot is always truthy (None means refused)
        return True


def quota_kv_key(prefix: str, api_key: str) -> str:
    """``<prefix>/<first 16 hex digits of sha256(api_key)>``."""
    return f"{prefix.strip('/')}/{hashlib.sha256(api_key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


class RateLimiter:
    """Sliding-window limit in this process: at most ``limit`` slots per ``window`` s."""

    backend = "local"

    def __init__(self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = int(limit)
        self.window = float(window)
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def try_acquire(self, deadline: Deadline | None = None) -> Slot | None:  # noqa: ARG002 - same API
        """Take a slot (truthy), or None when the window is full."""
        now = self._clock()
        if self.limit <= 0:
            return Slot("off", now)
        with self._lock:
            while self._times and now - self._times[0] >= self.window:
                self._times.popleft()
            if len(self._times) >= self.limit:
                return None
            self._times.append(now)
            return Slot("local", now)

    def release(self, slot: Slot) -> None:
        """Give a slot back: the call it was taken for never reached the upstream."""
        if slot.mode != "local":
            return
        with self._lock:
            try:
                self._times.remove(slot.at)
            except ValueError:  # already out of the window
                pass

    def in_window(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for t in self._times if now - t < self.window)

    def close(self) -> None:
        pass


def _records(raw: Any, now: float, window: float) -> list[tuple[float, str]] | None:
    """The sane, current records of a KV value; None when the value is not a list at all."""
    if not isinstance(raw, list):
        return None
    out: list[tuple[float, str]] = []
    for item in raw[:MAX_RECORDS]:
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            continue
        ts, inst = item[0], item[1]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(inst, str) or len(inst) > 200:
            continue
        ts = float(ts)
        if not math.isfinite(ts) or ts > now + FUTURE_SLACK or now - ts >= window:
            continue
        out.append((ts, inst))
    return out


class SharedRateLimiter:
    """The per-key window in Consul KV with a local fallback (see module docstring).

    Args:
        client: a ``weather_common.consul.ConsulClient`` (``kv_get_index``, ``kv_cas``).
        api_key: ``() -> str | None``, the current OWM key (the KV key derives from it).
        limit / window: at most ``limit`` calls per ``window`` seconds for the key.
        instance: this producer's instance id (written into its records).
        prefix: KV prefix (``weather/quota``).
        budget: seconds one admission may spend on Consul (also capped by the deadline).
        expected_producers: floor of the producer count used for the fallback share.
        peer_memory: seconds a producer seen in the records still counts as a peer.
    """

    backend = "consul"

    def __init__(
        self,
        client: Any,
        api_key: Callable[[], str | None],
        limit: int,
        window: float = 60.0,
        instance: str = "producer",
        prefix: str = "weather/quota",
        budget: float = 0.3,
        expected_producers: int = 1,
        peer_memory: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.api_key = api_key
        self.limit = int(limit)
        self.window = float(window)
        self.instance = instance
        self.prefix = prefix.strip("/")
        self.budget = float(budget)
        self.expected_producers = max(1, int(expected_producers))
        self.peer_memory = float(peer_memory) if peer_memory is not None else max(600.0, 10 * self.window)
        self._clock = clock
        self._lock = threading.Lock()
        self._own: collections.deque[float] = collections.deque()  # this process's calls (any mode)
        self._others: list[tuple[float, str]] = []  # the others' records at the last read
        self._peers: dict[str, float] = {}  # instance -> last time seen in the records
        self._full_until: dict[str, float] = {}  # kv key -> window known full until
        # Consul errors and timeouts count; a garbage value in the key does not (it is reset)
        self.breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=5.0, name="consul-quota",
                                      expected_exception=lambda _t, exc: not isinstance(exc, ConsulBadValue))
        self.counts: collections.Counter[str] = collections.Counter()
        self._releases: queue.Queue[Slot | None] = queue.Queue(maxsize=1000)
        self._release_thread: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False
        self._last_warning = 0.0

    # ---------------------------------------------------------------- bookkeeping
    def _prune_locked(self, now: float) -> None:
        while self._own and now - self._own[0] >= self.window:
            self._own.popleft()
        self._others = [(ts, i) for ts, i in self._others if now - ts < self.window]
        for inst, seen in list(self._peers.items()):
            if now - seen > self.peer_memory:
                del self._peers[inst]

    def producers(self) -> int:
        """Producers counted for the fallback share (this one included)."""
        now = self._clock()
        with self._lock:
            self._prune_locked(now)
            return max(self.expected_producers, len(set(self._peers) | {self.instance}))

    def share(self) -> int:
        """This producer's local budget while Consul is unusable: ``limit // producers``, >= 1."""
        return max(1, self.limit // self.producers())

    def _note(self, records: list[tuple[float, str]], now: float) -> None:
        with self._lock:
            for ts, inst in records:
                if ts > self._peers.get(inst, 0.0):
                    self._peers[inst] = min(ts, now)
            self._peers[self.instance] = now
            self._others = [(ts, i) for ts, i in records if i != self.instance]
            self._prune_locked(now)

    def _warn(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning(text, *args)

    # --------------------------------------------------------------------- acquire
    def try_acquire(self, deadline: Deadline | None = None) -> Slot | None:
        """Take a slot (truthy) or None when the key's budget is spent (or could not be
        checked in time: refusing is the safe side of a quota)."""
        now = self._clock()
        if self.limit <= 0:
            return Slot("off", now)
        api_key = self.api_key()
        if not api_key:
            return self._local(now)
        kv_key = quota_kv_key(self.prefix, api_key)
        with self._lock:
            if self._full_until.get(kv_key, 0.0) > now:
                self.counts["refused_known_full"] += 1
                return None
        budget = deadline.within(self.budget) if deadline is not None else Deadline(self.budget)
        try:
            return self._shared(kv_key, budget)
        except CircuitOpenError:
            self.counts["fallback_breaker_open"] += 1
            return self._local(self._clock())
        except Exception as exc:  # Consul down, slow, or an odd answer: the local share
            self.counts["fallback_error"] += 1
            self._warn("shared OWM quota unusable (%s: %s); local share %d of %d per %.0fs",
                       type(exc).__name__, exc, self.share(), self.limit, self.window)
            return self._local(self._clock())

    def _shared(self, kv_key: str, budget: Deadline) -> Slot | None:
        attempt = 0
        while True:
            if budget.expired():
                self.counts["refused_contention"] += 1
                return None
            try:
                raw, index = self.breaker.call(self.client.kv_get_index, kv_key, budget)
            except ConsulBadValue:
                # not JSON at all: nothing in it can be trusted or kept; start the window anew
                self._warn("quota KV value %s is not JSON: reset", kv_key)
                self.counts["reset_bad_value"] += 1
                self.breaker.call(self.client.kv_put, kv_key, [], budget)
                continue
            now = self._clock()
            records = _records(raw, now, self.window)
            if records is None:
                if raw is not None:
                    self._warn("quota KV value %s is not a list: replaced", kv_key)
                records = []
            self._note(records, now)
            if len(records) >= self.limit:
                with self._lock:
                    self._full_until[kv_key] = min(ts for ts, _ in records) + self.window
                self.counts["refused_full"] += 1
                return None
            records.append((round(now, 6), self.instance))
            value = [[ts, inst] for ts, inst in records]
            if self.breaker.call(self.client.kv_cas, kv_key, value, index, budget):
                with self._lock:
                    self._own.append(records[-1][0])
                self.counts["admitted_shared"] += 1
                return Slot("shared", records[-1][0], kv_key, self.instance)
            # another writer won: read again after a short, jittered pause
            attempt += 1
            self.counts["cas_conflicts"] += 1
            pause = min(budget.remaining(), random.uniform(0.001, 0.004 * min(attempt, 5)))
            if pause > 0:
                time.sleep(pause)

    def _local(self, now: float) -> Slot | None:
        with self._lock:
            self._prune_locked(now)
            producers = max(self.expected_producers, len(set(self._peers) | {self.instance}))
            share = max(1, self.limit // producers)
            own = len(self._own)
            known = own + len(self._others)
            if own >= share or known >= self.limit:
                self.counts["refused_local"] += 1
                return None
            self._own.append(now)
        self.counts["admitted_local"] += 1
        return Slot("local", now)

    # --------------------------------------------------------------------- release
    def release(self, slot: Slot) -> None:
        """Give a slot back (its call never reached OWM). Never blocks on Consul."""
        if slot.mode == "off":
            return
        with self._lock:
            try:
                self._own.remove(slot.at)
            except ValueError:
                pass
        if slot.mode != "shared":
            return
        self._start_release_thread()
        with self._idle:
            try:
                self._releases.put_nowait(slot)
                self._pending += 1
            except queue.Full:
                self.counts["release_dropped"] += 1

    def _start_release_thread(self) -> None:
        with self._lock:
            if self._release_thread is None and not self._closed:
                self._release_thread = threading.Thread(target=self._release_loop, name="quota-release", daemon=True)
                self._release_thread.start()

    def _release_loop(self) -> None:
        while True:
            slot = self._releases.get()
            if slot is None:
                return
            try:
                self._remove_record(slot)
            except Exception as exc:  # best effort: the record expires with the window anyway
                self.counts["release_failed"] += 1
                log.debug("quota release failed: %s", exc)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _remove_record(self, slot: Slot, budget: float = 1.0) -> None:
        dl = Deadline(budget)
        while not dl.expired():
            raw, index = self.client.kv_get_index(slot.kv_key, dl)
            if not isinstance(raw, list):
                return
            kept = [item for item in raw
                    if not (isinstance(item, (list, tuple)) and len(item) >= 2
                            and item[0] == slot.at and item[1] == slot.instance)]
            if len(kept) == len(raw):
                return  # already gone
            if self.client.kv_cas(slot.kv_key, kept, index, dl):
                with self._lock:
                    self._full_until.pop(slot.kv_key, None)
                self.counts["released_shared"] += 1
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queued releases are done (tests); False on timeout."""
        end = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def in_window(self) -> int:
        """Calls of this process in the current window."""
        now = self._clock()
        with self._lock:
            self._prune_locked(now)
            return len(self._own)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._release_thread
        if thread is not None:
            try:
                self._releases.put_nowait(None)
            except queue.Full:
                pass
