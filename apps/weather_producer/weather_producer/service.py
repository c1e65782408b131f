"""The producer's weather logic: fresh cache -> breaker -> OWM, with stale fallback.

:meth:`WeatherService.lookup` returns ``(status, body)`` and never raises for upstream
trouble: every outage (and a refusal by the breaker, the quota guard, or a configuration
error) falls back to the last good answer for the location, or a 503 with a plain reason.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from weather_common.breaker import CircuitBreaker, CircuitOpenError
from weather_common.cache import Entry, FreshCache, LastGoodStore, location_key
from weather_common.observability import Metrics

from .owm import OwmAuthError, OwmClient, OwmError, OwmOutage, UnknownZip

__all__ = ["QuotaExceeded", "RateLimiter", "WeatherService", "STALE_MESSAGE"]

log = logging.getLogger("weather_producer")

STALE_MESSAGE = "CAUTION - Response out of date!"


class QuotaExceeded(OwmError):
    """Our own guard refused to call OWM: the per-minute budget is spent."""


class RateLimiter:
    """Sliding-window limit: at most ``limit`` acquisitions per ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def try_acquire(self) -> float | None:
        """Take a slot: its token (truthy), or None when the window is full."""
        now = time.monotonic()
        if self.limit <= 0:
            return now
        with self._lock:
            while self._times and now - self._times[0] >= self.window:
                self._times.popleft()
            if len(self._times) >= self.limit:
                return None
            self._times.append(now)
            return now

    def release(self, token: float) -> None:
        """Give a slot back: the call it was taken for never reached the upstream."""
        with self._lock:
            try:
                self._times.remove(token)
            except ValueError:  # already out of the window
                pass


class WeatherService:
    """Answers ``/weather`` lookups (see module docstring)."""

    def __init__(
        self,
        owm: OwmClient,
        breaker: CircuitBreaker,
        fresh: FreshCache,
        store: LastGoodStore,
        limiter: RateLimiter,
        metrics: Metrics,
        instance: str,
    ) -> None:
        self.owm = owm
        self.breaker = breaker
        self.fresh = fresh
        self.store = store
        self.limiter = limiter
        self.metrics = metrics
        self.instance = instance
        self.config_error: str | None = None  # set on OWM 401 / missing key; cleared on success
        self._config_lock = threading.Lock()

    # ------------------------------------------------------------------ upstream
    def _shared_fresh(self, key: str) -> Entry[dict[str, Any]] | None:
        """A fresh answer another producer stored in the shared (Consul KV) store, if any.

        With several producers, each one's fresh cache is private; without this, every
        producer would call OWM for every location once per TTL (N x the calls).
        """
        if getattr(self.store, "backend", "memory") != "consul":
            return None
        try:
            entry = self.store.get(key)
        except Exception:  # the shared store must never break a lookup
            log.exception("last-good store failed")
            return None
        if entry is not None and entry.age() < self.fresh.ttl:
            self.metrics.cache_hits.labels(cache="shared").inc()
            return entry
        return None

    def _load(self, zip_code: str, country: str) -> Entry[dict[str, Any]]:
        """A fresh answer: from the shared store when another producer just fetched it,
        else one real OWM call (through quota guard and breaker), stored as the last good."""
        shared = self._shared_fresh(location_key(country, zip_code))
        if shared is not None:
            return shared
        if not self.owm.key.get():
            raise OwmAuthError(self.owm.key.error or "no OWM API key configured")
        slot = self.limiter.try_acquire()
        if slot is None:
            self.metrics.upstream.labels(upstream="owm", outcome="quota_guard").inc()
            raise QuotaExceeded("OpenWeatherMap call budget for this minute is spent")
        try:
            value = self.breaker.call(self.owm.fetch, zip_code, country)
        except CircuitOpenError:
            # The open breaker refused without calling OWM: that spent none of the budget.
            self.limiter.release(slot)
            self.metrics.upstream.labels(upstream="owm", outcome="breaker_open").inc()
            raise
        except UnknownZip:
            self.metrics.upstream.labels(upstream="owm", outcome="not_found").inc()
            self._set_config_error(None)
            raise
        except OwmAuthError as exc:
            self.metrics.upstream.labels(upstream="owm", outcome="unauthorized").inc()
            self._set_config_error(str(exc))
            raise
        except OwmOutage as exc:
            self.metrics.upstream.labels(upstream="owm", outcome="outage").inc()
            log.warning("OWM outage for %s,%s: %s", zip_code, country, exc)
            raise
        self.metrics.upstream.labels(upstream="owm", outcome="ok").inc()
        self._set_config_error(None)
        entry = Entry(value, time.time())
        self.store.put(location_key(country, zip_code), value, entry.fetched_at)
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

    def lookup(self, zip_code: str, country: str) -> tuple[int, dict[str, Any]]:
        """``(http_status, json_body)`` for validated ``zip_code`` / ``country``."""
        key = location_key(country, zip_code)
        try:
            entry, hit = self.fresh.get_or_load(key, lambda: self._load(zip_code, country), timeout=30)
        except UnknownZip:
            return 404, {"error": "unknown zip", "zip": zip_code, "country": country}
        except (OwmOutage, CircuitOpenError, QuotaExceeded, OwmAuthError, TimeoutError) as exc:
            return self._fallback(zip_code, country, key, exc)
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache="fresh").inc()
        return 200, self._body(zip_code, country, entry, stale=False)

    def _fallback(self, zip_code: str, country: str, key: str, exc: Exception) -> tuple[int, dict[str, Any]]:
        self.metrics.cache_misses.labels(cache="fresh").inc()
        reason = {
            CircuitOpenError: "breaker_open",
            QuotaExceeded: "quota_guard",
            OwmAuthError: "config_error",
            TimeoutError: "timeout",
        }.get(type(exc), "outage")
        try:
            last = self.store.get(key)
        except Exception:  # the store must never turn an outage into a 500
            log.exception("last-good store failed")
            last = None
        if last is not None:
            self.metrics.fallbacks.labels(reason=reason).inc()
            return 200, self._body(zip_code, country, last, stale=True)
        self.metrics.fallbacks.labels(reason=f"{reason}_no_cache").inc()
        if isinstance(exc, CircuitOpenError):
            text = f"weather data unavailable: OpenWeatherMap is failing, retry in {int(exc.remaining) + 1}s"
        elif isinstance(exc, OwmAuthError):
            text = "weather data unavailable: the service is misconfigured (OpenWeatherMap API key rejected or missing)"
        elif isinstance(exc, QuotaExceeded):
            text = "weather data unavailable: OpenWeatherMap call budget exhausted, retry in a minute"
        elif isinstance(exc, TimeoutError):
            text = "weather data unavailable: OpenWeatherMap is too slow"
        else:
            text = f"weather data unavailable: {exc}"
        return 503, {"error": text, "zip": zip_code, "country": country, "instance": self.instance}
