"""Cross-producer single flight for OWM calls: a short lease per location in Consul KV.

Each producer's :class:`~weather_common.cache.FreshCache` already collapses concurrent
misses for one location inside ONE process. Several producers sharing one API key still
missed the same location at the same moment and each called OWM. Before calling OWM, a
producer therefore takes a lease ``<prefix>/<country>/<zip>`` with check-and-set:

* value of a held lease: ``{"instance", "id", "until"}`` (``until``: epoch seconds, the
  end of the holder's OWM budget plus a little slack for its KV write);
* value of a released lease: the same plus ``"outcome"`` (``"ok"``, ``"not_found"``, a
  reason code of a failed call, or ``"abandoned"``) and ``"at"`` (epoch of the release).

A key that is absent, expired (``until`` passed), released (except a recent ``ok`` /
``not_found``), ours, or garbage is FREE and taken by ``?cas=<ModifyIndex>`` (0 = only if
still absent): exactly one producer wins each round. Every Consul operation has a short
budget and goes through a small breaker; any Consul error means "no lease" (the caller
calls OWM as it did before leases existed).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from weather_common.breaker import CircuitBreaker
from weather_common.consul import ConsulBadValue
from weather_common.deadline import Deadline

__all__ = ["Lease", "LeaseState", "LeaseTable", "TAKEN", "BUSY", "FAILED", "NOT_FOUND", "SKIPPED"]

#: less time than this left for a lease round trip: give up (SKIPPED, "no time left")
MIN_LEASE_TIME = 0.005
log = logging.getLogger("weather_producer.lease")

#: acquire() results
TAKEN, BUSY, FAILED, NOT_FOUND, SKIPPED = "taken", "busy", "failed", "not_found", "skipped"
#: a released "ok" / "not_found" lease younger than this still means "the answer is there
#: (or on its way through the async KV writer)": wait for it instead of calling OWM
RESULT_GRACE = 2.0
#: a live lease whose ``until`` is further ahead than the longest legal hold plus this is
#: garbage (clock skew or a poisoned value): free
FUTURE_SLACK = 5.0
#: outcomes a follower does not inherit (the holder gave up for reasons of its own)
ABANDONED = "abandoned"


@dataclass(frozen=True)
class Lease:
    """A lease this producer holds."""

    kv_key: str
    lease_id: str
    until: float


@dataclass(frozen=True)
class LeaseState:
    """What a lease key says. ``kind``: "free", "busy" (live, held by ``instance``),
    "released" (``outcome`` at ``at``)."""

    kind: str
    instance: str | None = None
    until: float = 0.0
    outcome: str | None = None
    at: float = 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_lease(raw: Any, now: float, max_hold: float) -> LeaseState:
    """The state of a decoded lease value (untrusted: anything odd is free)."""
    if not isinstance(raw, dict):
        return LeaseState("free")
    until = _number(raw.get("until"))
    instance = raw.get("instance")
    if until is None or not isinstance(instance, str) or len(instance) > 200:
        return LeaseState("free")
    outcome = raw.get("outcome")
    if outcome is not None:
        at = _number(raw.get("at"))
        if not isinstance(outcome, str) or len(outcome) > 40 or at is None or at > now + FUTURE_SLACK:
            return LeaseState("free")
        return LeaseState("released", instance, until, outcome, at)
    if until <= now or until > now + max_hold + FUTURE_SLACK:
        return LeaseState("free", instance, until)
    return LeaseState("busy", instance, until)


class LeaseTable:
    """Leases in KV under ``prefix`` (see module docstring).

    Args:
        client: a ``weather_common.consul.ConsulClient`` (``kv_get_index``, ``kv_cas``, ``kv_put``).
        prefix: KV prefix (``weather/cache-inflight``); must be writable by the producer token.
        instance: this producer's instance id.
        budget: seconds one acquire may spend on Consul (also capped by the caller's deadline).
        max_hold: the longest hold a producer asks for (``OWM_DEADLINE`` + slack).
        result_grace: seconds a released ``ok`` / ``not_found`` lease still stands for
            "the answer is there" (keep it below ``CACHE_TTL``).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        instance: str,
        budget: float = 0.2,
        max_hold: float = 2.0,
        result_grace: float = RESULT_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix.strip("/")
        self.instance = instance
        self.budget = float(budget)
        self.max_hold = float(max_hold)
        self.result_grace = float(result_grace)
        self._clock = clock
        # Consul errors and timeouts count; a garbage value does not (it is replaced)
        self.breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=5.0, name="consul-lease",
                                      expected_exception=lambda _t, exc: not isinstance(exc, ConsulBadValue))
        self.counts: collections.Counter[str] = collections.Counter()
        self._releases: queue.Queue[tuple[Lease, str] | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        self._closed = False
        self._last_warning = 0.0

    def kv_key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def _warn(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning(text, *args)

    # --------------------------------------------------------------------- acquire
    def acquire(self, key: str, hold: float, deadline: Deadline | None = None,
                since: float | None = None) -> tuple[str, Any]:
        """Try to take the lease of ``key`` for ``hold`` seconds. Never raises.

        Returns ``(TAKEN, Lease)``, ``(BUSY, LeaseState)`` (another producer's live lease,
        or its fresh answer is on its way), ``(NOT_FOUND, at)`` (another producer just
        learned OWM does not know the zip), ``(FAILED, reason)`` (only when ``since`` is
        given: the holder released with a failure at or after ``since``), or
        ``(SKIPPED, error)`` (Consul failed or had no time: go on without a lease).
        """
        budget = deadline.within(self.budget) if deadline is not None else Deadline(self.budget)
        kv_key = self.kv_key(key)
        try:
            for _ in range(4):
                if budget.remaining() < MIN_LEASE_TIME:
                    raise TimeoutError("no time left for the lease")
                try:
                    raw, index = self.breaker.call(self.client.kv_get_index, kv_key, budget)
                except ConsulBadValue:
                    # not JSON: nothing to read; replace it by a released lease, then CAS as usual
                    self._warn("lease KV value %s is not JSON: replaced", kv_key)
                    self.counts["reset_bad_value"] += 1
                    now = self._clock()
                    self.breaker.call(self.client.kv_put, kv_key, {"instance": self.instance, "id": "",
                                      "until": now, "outcome": ABANDONED, "at": now}, budget)
                    continue
                now = self._clock()
                state = parse_lease(raw, now, self.max_hold)
                if state.kind == "busy" and state.instance != self.instance:
                    return BUSY, state
                if state.kind == "released" and now - state.at < self.result_grace:
                    if state.outcome == "ok":
                        return BUSY, state  # the answer is in KV or about to be
                    if state.outcome == "not_found":
                        return NOT_FOUND, state.at
                    if since is not None and state.outcome != ABANDONED and state.at >= since:
                        return FAILED, state.outcome
                # free (absent, expired, released, ours, garbage): take it over
                lease = Lease(kv_key, uuid.uuid4().hex[:16], round(now + hold, 3))
                value = {"instance": self.instance, "id": lease.lease_id, "until": lease.until}
                if self.breaker.call(self.client.kv_cas, kv_key, value, index, budget):
                    self.counts["taken" if index == 0 or state.kind != "busy" else "taken_own"] += 1
                    return TAKEN, lease
                self.counts["cas_conflicts"] += 1  # someone else won: read again
            raise TimeoutError("lease contention")
        except Exception as exc:  # Consul down, slow, breaker open, odd answer: no lease
            self.counts["skipped"] += 1
            self._warn("OWM call lease unusable (%s: %s): calling without it", type(exc).__name__, exc)
            return SKIPPED, exc

    # --------------------------------------------------------------------- release
    def release(self, lease: Lease, outcome: str) -> None:
        """Mark the lease released with ``outcome``, in the background (best effort:
        a lease that is not released expires at its ``until``). Never blocks."""
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._release_loop, name="lease-release", daemon=True)
                self._thread.start()
        with self._idle:
            try:
                self._releases.put_nowait((lease, outcome))
                self._pending += 1
            except queue.Full:
                self.counts["release_dropped"] += 1

    def _release_loop(self) -> None:
        while True:
            item = self._releases.get()
            if item is None:
                return
            lease, outcome = item
            try:
                self._release(lease, outcome)
            except Exception as exc:  # best effort: it expires anyway
                self.counts["release_failed"] += 1
                log.debug("lease release failed: %s", exc)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _release(self, lease: Lease, outcome: str, budget: float = 1.0) -> None:
        dl = Deadline(budget)
        for _ in range(3):
            raw, index = self.client.kv_get_index(lease.kv_key, dl)
            if not isinstance(raw, dict) or raw.get("id") != lease.lease_id or "outcome" in raw:
                self.counts["release_lost"] += 1  # taken over after it expired
                return
            now = self._clock()
            value = {"instance": self.instance, "id": lease.lease_id, "until": round(now, 3),
                     "outcome": outcome, "at": round(now, 3)}
            if self.client.kv_cas(lease.kv_key, value, index, dl):
                self.counts["released"] += 1
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

    def close(self) -> None:
        self.flush(1.0)
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            try:
                self._releases.put_nowait(None)
            except queue.Full:
                pass
