"""The producer's weather logic: fresh cache -> shared KV -> quota -> breaker -> OWM,
with a stale fallback, all inside ONE deadline.

:meth:`WeatherService.lookup` returns ``(status, body)`` and never raises: every outage,
every refusal (breaker, quota, spent budget), a configuration error and any unexpected
exception falls back to the last good answer for the location, or to a MARKED 503
(``body["reason"]`` set; the view adds ``X-Weather-Answer: no-data``) so the consumer can
tell "no data for this place" from a failing producer. OWM 404s are cached for
``CACHE_TTL`` (negative cache) and answered as a marked 404 (``not-found``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from weather_common.breaker import CircuitBreaker, CircuitOpenError
from weather_common.cache import Entry, FreshCache, LastGoodStore, location_key
from weather_common.deadline import Deadline
from weather_common.observability import Metrics
from weather_common.validation import validate_weather

from .owm import OwmAuthError, OwmClient, OwmError, OwmOutage, OwmQuota, OwmTimeout, UnknownZip
from .lease import BUSY, FAILED, MIN_LEASE_TIME, NOT_FOUND as LEASE_NOT_FOUND, SKIPPED, TAKEN, Lease, LeaseTable
from .quota import RateLimiter, SharedRateLimiter

__all__ = [
    "QuotaExceeded", "BudgetSpent", "RateLimiter", "WeatherService", "STALE_MESSAGE", "NOT_FOUND",
    "REASONS", "ANSWER_HEADER", "answer_header", "owm_failure", "PeerFailed", "LeaseWaitTimeout",
]

log = logging.getLogger("weather_producer")

STALE_MESSAGE = "CAUTION - Response out of date!"
#: response header marking a well-formed "nothing for this place" answer
ANSWER_HEADER = "X-Weather-Answer"
#: reason codes of marked answers (apps/CONTRACT.md)
REASONS = ("owm_outage", "owm_quota", "owm_config", "owm_slow", "breaker_open", "unknown_zip")
#: the fresh-cache value of a location OWM does not know (negative cache)
NOT_FOUND = {"_not_found": True}
#: an OWM call is not started with less budget than this (it could only time out)
MIN_OWM_BUDGET = 0.05
#: a lease is held this much past the end of the holder's OWM budget (its KV write)
LEASE_SLACK = 0.25
#: a follower stops waiting for another producer's answer this long before its deadline
#: (time for the stale fallback read)
LEASE_WAIT_MARGIN = 0.15


class QuotaExceeded(OwmError):
    """Our own guard refused to call OWM: the key's budget for the window is spent."""

    reason = "owm_quota"


class BudgetSpent(OwmError):
    """The request's deadline left no time to ask OWM (or to wait for another lookup)."""

    reason = "owm_slow"


class LeaseWaitTimeout(BudgetSpent):
    """Another producer holds the OWM call lease and its answer did not come in time."""


class PeerFailed(OwmError):
    """Another producer's OWM call for this location (which we waited for) failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"OpenWeatherMap call failed ({reason}, another producer)")
        self.reason = reason if reason in REASONS else "owm_outage"


def lease_outcome(exc: BaseException) -> str:
    """What a failed lease holder tells its followers: a reason code they may answer
    with, or "abandoned" (our own refusal: others may still try)."""
    if isinstance(exc, (BudgetSpent, CircuitOpenError)):
        return "abandoned"
    return _reason(exc)


def owm_failure(exc_type: type, exc: BaseException) -> bool:
    """The OWM breaker's failure predicate: everything but "OWM answered, the zip is
    unknown" and "our key is wrong" (those prove OWM is up). Unexpected exceptions count."""
    return not isinstance(exc, (UnknownZip, OwmAuthError))


def answer_header(status: int, body: dict[str, Any]) -> str | None:
    """``X-Weather-Answer`` value for a lookup result (None for 200s and unmarked errors)."""
    if status == 404 and body.get("reason") == "unknown_zip":
        return "not-found"
    if status == 503 and body.get("reason") in REASONS:
        return "no-data"
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CircuitOpenError):
        return "breaker_open"
    if isinstance(exc, TimeoutError):  # a single-flight follower gave up waiting
        return "owm_slow"
    reason = getattr(exc, "reason", None) if isinstance(exc, OwmError) else None
    return reason if reason in REASONS else "owm_outage"


def _lease_counter(metrics: Metrics) -> Any:
    """``weather_owm_lease_total{outcome}`` on the metrics object's registry (one per registry)."""
    from prometheus_client import Counter

    cached = getattr(metrics, "_owm_lease", None)
    if cached is None:
        cached = Counter("owm_lease_total", "Cross-producer OWM call leases by outcome", ["outcome"],
                         namespace="weather", registry=metrics.registry)
        metrics._owm_lease = cached  # type: ignore[attr-defined]
    return cached


#: metric label of a fallback, by reason code (labels kept from before the reason codes)
_METRIC_REASON = {
    "breaker_open": "breaker_open",
    "owm_config": "config_error",
    "owm_slow": "timeout",
    "owm_outage": "outage",
}


class WeatherService:
    """Answers ``/weather`` lookups (see module docstring).

    Args:
        deadline: seconds a whole lookup may take when the caller gives none
            (``PRODUCER_DEADLINE``).
        owm_deadline: seconds one OWM call may take (``OWM_DEADLINE``); also capped by
            what is left of the lookup's deadline.
    """

    def __init__(
        self,
        owm: OwmClient,
        breaker: CircuitBreaker,
        fresh: FreshCache,
        store: LastGoodStore,
        limiter: RateLimiter | SharedRateLimiter,
        metrics: Metrics,
        instance: str,
        deadline: float = 1.8,
        owm_deadline: float = 1.5,
        leases: LeaseTable | None = None,
        lease_poll: float = 0.05,
    ) -> None:
        self.owm = owm
        self.breaker = breaker
        self.fresh = fresh
        self.store = store
        self.limiter = limiter
        self.metrics = metrics
        self.instance = instance
        self.deadline = float(deadline)
        self.owm_deadline = float(owm_deadline)
        # with Consul, keep a moment for the stale read from KV after a failed OWM call
        self.fallback_reserve = 0.1 if getattr(store, "backend", "memory") == "consul" else 0.0
        # cross-producer single flight (Consul only): see lease.py and _single_flight
        self.leases = leases if getattr(store, "backend", "memory") == "consul" else None
        self.lease_poll = float(lease_poll)
        self.lease_metric = _lease_counter(metrics)
        self.config_error: str | None = None  # set on OWM 401 / missing key; cleared on success
        self._config_lock = threading.Lock()

    # ------------------------------------------------------------------- stores
    def _store_get(self, key: str, deadline: Deadline) -> Entry[dict[str, Any]] | None:
        """Last good entry (validated), or None; never raises."""
        try:
            if getattr(self.store, "backend", "memory") == "consul":
                entry = self.store.get(key, deadline)
            else:
                entry = self.store.get(key)
        except Exception:  # the store must never turn an outage into an error
            log.exception("last-good store failed")
            return None
        if entry is None:
            return None
        value = validate_weather(entry.value)
        if value is None:
            log.warning("ignoring an invalid last-good entry for %s", key)
            return None
        return Entry(value, entry.fetched_at)

    def _shared_fresh(self, key: str, deadline: Deadline) -> Entry[dict[str, Any]] | None:
        """A fresh answer another producer stored in the shared (Consul KV) store, if any.

        With several producers, each one's fresh cache is private; without this, every
        producer would call OWM for every location once per TTL (N x the calls). The KV
        read has a short budget (the store's ``read_budget``, at most the deadline).
        """
        if getattr(self.store, "backend", "memory") != "consul":
            return None
        entry = self._store_get(key, deadline)
        if entry is not None and entry.age() < self.fresh.ttl:
            self.metrics.cache_hits.labels(cache="shared").inc()
            return entry
        return None

    # ------------------------------------------------------------------ upstream
    def _owm_budget(self, deadline: Deadline) -> float:
        return min(self.owm_deadline, deadline.remaining() - self.fallback_reserve)

    def _load(self, zip_code: str, country: str, deadline: Deadline) -> Entry[dict[str, Any]]:
        """A fresh answer (or the NOT_FOUND marker): from the shared store when another
        producer just fetched it, else one real OWM call (lease, quota guard, breaker)."""
        key = location_key(country, zip_code)
        shared = self._shared_fresh(key, deadline)
        if shared is not None:
            return shared
        self._precheck(deadline)
        lease = self._single_flight(key, deadline)
        if isinstance(lease, Entry):
            return lease
        try:
            entry = self._call_owm(zip_code, country, key, deadline)
        except BaseException as exc:
            if lease is not None:
                self.leases.release(lease, lease_outcome(exc))
            raise
        if lease is not None:
            self.leases.release(lease, "not_found" if entry.value is NOT_FOUND else "ok")
        return entry

    def _precheck(self, deadline: Deadline) -> None:
        """Refuse before any quota or Consul round trip: no key, open breaker, no time."""
        if not self.owm.key.get():
            raise OwmAuthError(self.owm.key.error or "no OWM API key configured")
        remaining = self.breaker.open_remaining
        if remaining > 0:  # open: refuse before spending any quota or Consul round trip
            self.metrics.upstream.labels(upstream="owm", outcome="breaker_open").inc()
            raise CircuitOpenError(self.breaker, "open", remaining)
        if self._owm_budget(deadline) < MIN_OWM_BUDGET:
            self.metrics.upstream.labels(upstream="owm", outcome="no_budget").inc()
            raise BudgetSpent("no time left to ask OpenWeatherMap")

    # ------------------------------------------------------- cross-producer flight
    def _lease_hold(self, deadline: Deadline) -> float:
        return max(0.0, self._owm_budget(deadline)) + LEASE_SLACK

    def _single_flight(self, key: str, deadline: Deadline) -> Lease | Entry[dict[str, Any]] | None:
        """Take the location's OWM call lease (a Lease: call OWM, then release it), or
        wait for the producer holding it (an Entry: its answer), or None (no lease:
        memory store, or Consul failed; call OWM as without leases). Raises the
        fallback's exception when the holder failed or its answer did not come in time."""
        if self.leases is None:
            return None
        result, detail = self.leases.acquire(key, self._lease_hold(deadline), deadline)
        if result == TAKEN:
            self.lease_metric.labels(outcome="taken").inc()
            return detail
        if result == SKIPPED:
            self.lease_metric.labels(outcome="skipped_consul").inc()
            return None
        if result == LEASE_NOT_FOUND:
            self.lease_metric.labels(outcome="waited_served").inc()
            return Entry(NOT_FOUND, detail)
        return self._follow(key, deadline)

    def _follow(self, key: str, deadline: Deadline) -> Lease | Entry[dict[str, Any]] | None:
        """Another producer holds the lease: poll the shared KV copy (and the lease)
        every ``lease_poll`` s until the answer is there, the lease frees up (expired
        or abandoned: take it over), the holder reports a failure, or our budget
        (minus LEASE_WAIT_MARGIN for the fallback) is spent."""
        since = time.time() - 0.05
        while True:
            left = deadline.remaining() - LEASE_WAIT_MARGIN
            if left <= 0:
                break
            time.sleep(min(self.lease_poll, left))
            left = deadline.remaining() - LEASE_WAIT_MARGIN
            if left <= 0:
                break
            shared = self._shared_fresh(key, Deadline(left))
            if shared is not None:
                self.lease_metric.labels(outcome="waited_served").inc()
                return shared
            left = deadline.remaining() - LEASE_WAIT_MARGIN
            if left < MIN_LEASE_TIME:
                break
            result, detail = self.leases.acquire(key, self._lease_hold(deadline), Deadline(left), since=since)
            if result == BUSY:
                continue
            if result == TAKEN:  # the holder died or gave up: we call OWM ourselves
                self.lease_metric.labels(outcome="taken_over").inc()
                return detail
            if result == SKIPPED:
                # The lease read only failed for lack of time (acquire gives up below
                # MIN_LEASE_TIME): the wait is over, not Consul. Judged on the same
                # threshold, or a read refused with 3 ms left would call OWM unleased.
                if deadline.remaining() - LEASE_WAIT_MARGIN < MIN_LEASE_TIME:
                    break
                self.lease_metric.labels(outcome="skipped_consul").inc()
                return None
            if result == LEASE_NOT_FOUND:
                self.lease_metric.labels(outcome="waited_served").inc()
                return Entry(NOT_FOUND, detail)
            if result == FAILED:
                self.lease_metric.labels(outcome="waited_fallback").inc()
                raise PeerFailed(detail)
        self.lease_metric.labels(outcome="waited_fallback").inc()
        raise LeaseWaitTimeout("OpenWeatherMap answer (asked by another producer) did not come in time")

    def _call_owm(self, zip_code: str, country: str, key: str, deadline: Deadline) -> Entry[dict[str, Any]]:
        """One real OWM call: quota slot, breaker, validation, last-good copy."""
        if self._owm_budget(deadline) < MIN_OWM_BUDGET:  # a follower that took over late
            self.metrics.upstream.labels(upstream="owm", outcome="no_budget").inc()
            raise BudgetSpent("no time left to ask OpenWeatherMap")
        slot = self.limiter.try_acquire(deadline)
        if slot is None:
            self.metrics.upstream.labels(upstream="owm", outcome="quota_guard").inc()
            raise QuotaExceeded("OpenWeatherMap call budget for this minute is spent")
        budget = self._owm_budget(deadline)
        if budget < MIN_OWM_BUDGET:  # the quota check ate the rest
            self.limiter.release(slot)
            self.metrics.upstream.labels(upstream="owm", outcome="no_budget").inc()
            raise BudgetSpent("no time left to ask OpenWeatherMap")
        try:
            value = self.breaker.call(self.owm.fetch, zip_code, country, Deadline(budget))
        except CircuitOpenError:
            # Refused without calling OWM (half-open, trial in flight): no budget spent.
            self.limiter.release(slot)
            self.metrics.upstream.labels(upstream="owm", outcome="breaker_open").inc()
            raise
        except UnknownZip:
            self.metrics.upstream.labels(upstream="owm", outcome="not_found").inc()
            self._set_config_error(None)
            return Entry(NOT_FOUND, time.time())  # cached for the TTL like an answer
        except OwmAuthError as exc:
            self.metrics.upstream.labels(upstream="owm", outcome="unauthorized").inc()
            self._set_config_error(str(exc))
            raise
        except OwmOutage as exc:
            outcome = "timeout" if isinstance(exc, OwmTimeout) else "rate_limited" if isinstance(exc, OwmQuota) else "outage"
            self.metrics.upstream.labels(upstream="owm", outcome=outcome).inc()
            log.warning("OWM outage for %s,%s: %s", zip_code, country, exc)
            raise
        except Exception as exc:  # counted by the breaker (owm_failure); never a 500
            self.metrics.upstream.labels(upstream="owm", outcome="error").inc()
            log.exception("unexpected error calling OWM for %s,%s", zip_code, country)
            raise OwmOutage(f"unexpected error ({type(exc).__name__})") from None
        checked = validate_weather(value)
        if checked is None:  # OwmClient validates; this guards the cache against a bug
            raise OwmOutage("OpenWeatherMap sent an unexpected answer")
        self.metrics.upstream.labels(upstream="owm", outcome="ok").inc()
        self._set_config_error(None)
        entry = Entry(checked, time.time())
        try:
            self.store.put(key, checked, entry.fetched_at)
        except Exception:  # the answer is good; only its copy for later failed
            log.exception("last-good store put failed")
        return entry

    def _set_config_error(self, error: str | None) -> None:
        with self._config_lock:
            if error and error != self.config_error:
                log.error("OWM configuration error: %s - check OWM_API_KEY_FILE", error)
            elif not error and self.config_error:
                log.info("OWM configuration error cleared")
            self.config_error = error

    # ------------------------------------------------------------------- answers
    def _body(self, zip_code: str, country: str, entry: Entry[dict[str, Any]], stale: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"zip": zip_code, "country": country}
        body.update({k: entry.value.get(k) for k in ("city", "description", "temperature_c", "observed_at")})
        body.update({
            "instance": self.instance,
            "stale": stale,
            "age_seconds": entry.age_seconds(),
            "message": STALE_MESSAGE if stale else None,
        })
        return body

    def lookup(self, zip_code: str, country: str, deadline: Deadline | float | None = None) -> tuple[int, dict[str, Any]]:
        """``(http_status, json_body)`` for validated ``zip_code`` / ``country``.

        ``deadline``: the caller's budget (Deadline or seconds); at most ``self.deadline``.
        Never raises.
        """
        key = location_key(country, zip_code)
        try:
            dl = Deadline.coerce(deadline, self.deadline).within(self.deadline)
        except (TypeError, ValueError):
            dl = Deadline(self.deadline)
        try:
            entry, hit = self.fresh.get_or_load(key, lambda: self._load(zip_code, country, dl),
                                                timeout=dl.remaining())
            if entry.value is NOT_FOUND:
                (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache="negative").inc()
                return 404, self._not_found(zip_code, country)
            value = validate_weather(entry.value)
            if value is None:
                raise OwmOutage("cached answer failed validation")
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache="fresh").inc()
            return 200, self._body(zip_code, country, Entry(value, entry.fetched_at), stale=False)
        except Exception as exc:  # every failure, expected or not: the stale fallback
            if not isinstance(exc, (OwmError, CircuitOpenError, TimeoutError)):
                log.exception("unexpected error in the lookup of %s", key)
            return self._fallback(zip_code, country, key, exc, dl)

    def _not_found(self, zip_code: str, country: str) -> dict[str, Any]:
        return {"error": "unknown zip", "reason": "unknown_zip", "zip": zip_code, "country": country,
                "instance": self.instance}

    def _fallback(self, zip_code: str, country: str, key: str, exc: BaseException,
                  deadline: Deadline) -> tuple[int, dict[str, Any]]:
        reason = _reason(exc)
        label = "quota_guard" if isinstance(exc, QuotaExceeded) else _METRIC_REASON.get(reason, "outage")
        try:
            self.metrics.cache_misses.labels(cache="fresh").inc()
            last = self._store_get(key, deadline)
            if last is not None:
                self.metrics.fallbacks.labels(reason=label).inc()
                return 200, self._body(zip_code, country, last, stale=True)
            self.metrics.fallbacks.labels(reason=f"{label}_no_cache").inc()
        except Exception:  # never a 500, not even from metrics
            log.exception("fallback failed for %s", key)
        return 503, {"error": self._no_data_text(exc), "reason": reason, "zip": zip_code, "country": country,
                     "instance": self.instance}

    @staticmethod
    def _no_data_text(exc: BaseException) -> str:
        if isinstance(exc, CircuitOpenError):
            return f"weather data unavailable: OpenWeatherMap is failing, retry in {int(exc.remaining) + 1}s"
        if isinstance(exc, OwmAuthError):
            return "weather data unavailable: the service is misconfigured (OpenWeatherMap API key rejected or missing)"
        if isinstance(exc, QuotaExceeded):
            return "weather data unavailable: OpenWeatherMap call budget exhausted, retry in a minute"
        if isinstance(exc, (TimeoutError, BudgetSpent)):
            return "weather data unavailable: OpenWeatherMap is too slow"
        if isinstance(exc, OwmError):
            return f"weather data unavailable: {exc}"
        return "weather data unavailable: OpenWeatherMap lookup failed"
