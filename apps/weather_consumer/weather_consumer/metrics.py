"""Consumer metrics, on top of weather_common's :class:`Metrics` (same registry).

From weather_common (prefix ``weather_``): ``http_requests_total``,
``http_request_duration_seconds``, ``circuit_breaker_state{breaker=<instance>}``,
``circuit_breaker_events_total``, ``cache_hits_total{cache="consumer-last-good"}``,
``cache_misses_total``, ``fallbacks_total{reason}``, ``upstream_requests_total{upstream,outcome}``.

Added here: ``weather_consumer_producer_attempt_seconds{instance}``,
``weather_consumer_lookups_total{outcome}``, ``weather_consumer_hedged_requests_total``,
and scrape-time gauges
``weather_consumer_producer_instances{healthy}`` and ``weather_consumer_cache_entries``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from weather_common.observability import Metrics

CACHE_LABEL = "consumer-last-good"


class _PoolCollector:
    def __init__(self, pool, cache):
        self.pool = pool
        self.cache = cache

    def describe(self):
        return []

    def collect(self):
        rows = self.pool.snapshot()
        k = GaugeMetricFamily("weather_consumer_producer_instances",
                              "Producer instances known to the consumer", labels=["healthy"])
        k.add_metric(["true"], sum(1 for r in rows if r["healthy"]))
        k.add_metric(["false"], sum(1 for r in rows if not r["healthy"]))
        yield k
        c = GaugeMetricFamily("weather_consumer_cache_entries",
                              "Last-good answers held by the consumer")
        c.add_metric([], len(self.cache))
        yield c


class ConsumerMetrics:
    def __init__(self, common: Metrics | None = None):
        self.common = common or Metrics()
        self.registry = self.common.registry
        r = self.registry
        self.attempt_seconds = Histogram("weather_consumer_producer_attempt_seconds",
                                         "Duration of calls to producer instances",
                                         ["instance"], registry=r,
                                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2, 5))
        self.outcomes = Counter("weather_consumer_lookups_total",
                                "Weather lookups by what the user got (fresh, producer_stale, "
                                "consumer_cache, no_data, not_found, bad_request, unavailable)",
                                ["outcome"], registry=r)
        self.hedges = Counter("weather_consumer_hedged_requests_total",
                              "Lookups that sent a second (hedged) call to another producer",
                              registry=r)

    def bind_pool(self, pool, cache) -> None:
        self.registry.register(_PoolCollector(pool, cache))

    def watch_breaker(self, breaker) -> None:
        self.common.watch_breaker(breaker)

    # callbacks used by the balancer and the service
    def observe_attempt(self, instance_id: str, outcome: str, seconds: float) -> None:
        self.common.upstream.labels(upstream=instance_id, outcome=outcome).inc()
        if outcome != "circuit_open":
            self.attempt_seconds.labels(instance_id).observe(seconds)

    def hedge(self) -> None:
        self.hedges.inc()

    def outcome(self, outcome: str) -> None:
        self.outcomes.labels(outcome).inc()
        if outcome in ("consumer_cache", "unavailable", "producer_stale", "no_data"):
            self.common.fallbacks.labels(reason=outcome).inc()

    def cache_lookup(self, hit: bool) -> None:
        counter = self.common.cache_hits if hit else self.common.cache_misses
        counter.labels(cache=CACHE_LABEL).inc()
