"""The long-lived parts of one consumer process, wired from the Flask config."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from weather_common.breaker import CircuitBreaker, CircuitOpenError
from weather_common.consul import ConsulClient, HealthWatcher
from weather_common.deadline import HttpClient

from .admission import ProducerPolicy, parse_cidrs
from .balancer import Balancer, ProducerFailure
from .cache import LastGoodCache
from .discovery import ConsulDiscovery, StaticDiscovery
from .metrics import ConsumerMetrics
from .pool import InstancePool, parse_producer_urls
from .service import WeatherService

log = logging.getLogger(__name__)


def _producer_urls(value):
    # from_prefixed_env turns a JSON list into a list already; a plain string stays.
    if isinstance(value, str) and value.strip().startswith("["):
        value = json.loads(value)
    return parse_producer_urls(value)


@dataclass
class Runtime:
    pool: InstancePool
    cache: LastGoodCache
    balancer: Balancer
    service: WeatherService
    discovery: object | None
    metrics: ConsumerMetrics
    client: HttpClient
    default_country: str = "us"
    operator_ports: frozenset = frozenset()

    @classmethod
    def from_config(cls, cfg) -> "Runtime":
        threshold = int(cfg["BREAKER_FAILURE_THRESHOLD"])
        recovery = float(cfg["BREAKER_RECOVERY_TIMEOUT"])

        def breaker_factory(instance_id: str) -> CircuitBreaker:
            breaker = CircuitBreaker(failure_threshold=threshold, recovery_timeout=recovery,
                                     expected_exception=ProducerFailure, name=instance_id)
            metrics.watch_breaker(breaker)
            return breaker

        metrics = ConsumerMetrics()
        per_try = float(cfg["PER_TRY_TIMEOUT"])
        pool = InstancePool(breaker_factory, forget_after=float(cfg["INSTANCE_FORGET_AFTER"]),
                            panic_routing=bool(cfg["PANIC_ROUTING"]),
                            decay=float(cfg["LATENCY_DECAY"]))
        cache = LastGoodCache(max_entries=int(cfg["CACHE_MAX_ENTRIES"]))
        metrics.bind_pool(pool, cache)

        max_body = int(cfg["MAX_BODY"])
        client = HttpClient(max_body=max_body, user_agent="weather-consumer")
        balancer = Balancer(pool, client,
                            deadline=float(cfg["REQUEST_DEADLINE"]),
                            per_try_timeout=per_try,
                            max_attempts=int(cfg["MAX_ATTEMPTS"]),
                            hedge_delay=float(cfg["HEDGE_DELAY"]),
                            hedge_budget=float(cfg["HEDGE_BUDGET"]),
                            hedge_burst=float(cfg["HEDGE_BURST"]),
                            slow_call_threshold=float(cfg["SLOW_CALL_THRESHOLD"] or 0),
                            max_body=max_body,
                            circuit_open_errors=(CircuitOpenError,),
                            observe=metrics.observe_attempt,
                            on_hedge=metrics.hedge)
        service = WeatherService(balancer, cache, metrics)

        static = _producer_urls(cfg["PRODUCER_URLS"])
        policy = producer_policy(cfg)  # checked even when unused: a typo fails at start
        discovery = None
        if static:
            discovery = StaticDiscovery(pool, static)
        elif cfg["CONSUL_HTTP_ADDR"]:
            discovery = ConsulDiscovery(pool, _consul_watcher(cfg), policy=policy,
                                        initial_wait=float(cfg["DISCOVERY_INITIAL_WAIT"]))
        return cls(pool, cache, balancer, service, discovery, metrics, client,
                   default_country=str(cfg["DEFAULT_COUNTRY"]).lower(),
                   operator_ports=parse_ports(cfg["OPERATOR_PORT"]))

    def start(self) -> None:
        if self.discovery is not None:
            self.discovery.start()

    def close(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        self.client.close()

    def discovery_status(self) -> dict:
        if self.discovery is None:
            return {"kind": "none", "ok": False}
        return self.discovery.status()

    def readiness(self) -> tuple[bool, dict]:
        """Ready when a producer instance is known or the cache can serve something.

        (weather_common's ``ready_check`` signature: ``(ok, details)``.)
        """
        # Counts only: /ready is served on the public port too (no addresses, no places,
        # no Consul error text - those are on the operator status).
        discovery = self.discovery_status()
        details = {"producers": len(self.pool.healthy()), "cache_entries": len(self.cache),
                   "discovery": {"kind": discovery.get("kind"), "ok": discovery.get("ok")}}
        if details["producers"]:
            details["reason"] = "producer instances known"
            return True, details
        if self.pool.known() and self.pool.panic_routing:
            details["reason"] = "no producer passing in Consul; trying the recently known ones"
            return True, details
        if details["cache_entries"]:
            details["reason"] = "no producer instance known; serving saved answers"
            return True, details
        if self.discovery is None:
            details["reason"] = ("no producer discovery configured "
                                 "(set PRODUCER_URLS or CONSUL_HTTP_ADDR)")
        else:
            details["reason"] = "no producer instance known yet and nothing cached"
        return False, details


def parse_ports(value) -> frozenset:
    """OPERATOR_PORT: one port, a list, or "9080,9081" (from the environment)."""
    if value in (None, "", False):
        return frozenset()
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = str(value).replace(",", " ").split()
    ports = set()
    for item in value:
        port = int(item)
        if not 0 < port < 65536:
            raise ValueError(f"OPERATOR_PORT: {port} is not a TCP port")
        ports.add(port)
    return frozenset(ports)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_bool(value, setting: str) -> bool:
    """true/false (JSON from the environment), 1/0, or yes/no/on/off; anything else
    raises ``ValueError`` naming ``setting`` (a typo must not flip a security check)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (int, str)) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{setting}: {value!r} is not a boolean (true/false)")


def producer_policy(cfg) -> ProducerPolicy:
    """PRODUCER_CIDRS and PRODUCER_REQUIRE_NODE_ID as a policy (admission.py)."""
    return ProducerPolicy(str(cfg["PRODUCER_SERVICE"]), parse_cidrs(cfg["PRODUCER_CIDRS"]),
                          parse_bool(cfg["PRODUCER_REQUIRE_NODE_ID"], "PRODUCER_REQUIRE_NODE_ID"))


def _consul_watcher(cfg) -> HealthWatcher:
    client = ConsulClient(cfg["CONSUL_HTTP_ADDR"], token_file=cfg.get("CONSUL_TOKEN_FILE") or None)
    return HealthWatcher(client, cfg["PRODUCER_SERVICE"], wait=str(cfg["CONSUL_WAIT"]))
