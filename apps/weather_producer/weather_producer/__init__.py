"""The weather producer: ``GET /weather?zip=&country=`` backed by OpenWeatherMap.

App factory ``create_app(test_config=None)``: :data:`DEFAULTS`, then the environment
(``WEATHER_PRODUCER_<KEY>``, values parsed as JSON when possible), then ``test_config``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, jsonify, request

from weather_common.breaker import CircuitBreaker
from weather_common.cache import ConsulLastGoodStore, FreshCache, MemoryLastGoodStore
from weather_common.consul import ConsulClient, ServiceRegistration
from weather_common.deadline import Deadline
from weather_common.observability import init_app
from weather_common.validation import ValidationError, validate_location, validate_weather

from .identity import instance_name
from .lease import LeaseTable
from .netaddr import detect_address
from .owm import ApiKeyFile, OwmClient
from .quota import RateLimiter, SharedRateLimiter
from .service import ANSWER_HEADER, WeatherService, answer_header, owm_failure

__all__ = ["create_app", "DEFAULTS", "EXTENSION"]

log = logging.getLogger("weather_producer")

EXTENSION = "weather_producer"

#: Configuration keys and defaults (env: ``WEATHER_PRODUCER_<KEY>``).
DEFAULTS: dict[str, Any] = {
    "OWM_BASE_URL": "https://api.openweathermap.org",
    "OWM_API_KEY_FILE": None,         # secret: a file, never an env value
    # Deadlines (see README "Deadlines"): one OWM call (DNS to last body byte) ends within
    # OWM_DEADLINE; a whole lookup within PRODUCER_DEADLINE, or sooner when the caller's
    # X-Deadline-Ms header says so (minus DEADLINE_HEADER_MARGIN for the way back).
    "OWM_DEADLINE": 1.5,
    "PRODUCER_DEADLINE": 1.8,
    "DEADLINE_HEADER_MARGIN": 0.05,
    "OWM_MAX_CALLS_PER_MINUTE": 60,   # OWM calls per OWM_QUOTA_WINDOW for the KEY, all producers (0 = off)
    "OWM_QUOTA_WINDOW": 60,           # seconds
    "OWM_QUOTA_KV_PREFIX": "weather/quota",
    "OWM_QUOTA_BUDGET": 0.3,          # seconds one quota check may spend on Consul
    "OWM_QUOTA_PRODUCERS": 1,         # floor of the producer count for the fallback share
    "CACHE_TTL": 60,                  # seconds an answer is fresh
    "CACHE_MAX_ENTRIES": 10_000,      # locations kept in memory (fresh and last-good, LRU)
    "DEFAULT_COUNTRY": "us",
    "BREAKER_FAILURE_THRESHOLD": 5,
    "BREAKER_RECOVERY_TIMEOUT": 30,
    "INSTANCE_ID": None,              # default: hostname
    "NODE_NAME_FILE": None,           # file with the host's Consul node name: instance "<node>-<INSTANCE_ID>"
    "CONSUL_HTTP_ADDR": None,         # e.g. http://127.0.0.1:8500; unset = no Consul
    "CONSUL_TOKEN_FILE": None,
    "CONSUL_REGISTER": True,          # self-register when CONSUL_HTTP_ADDR is set
    "CONSUL_SERVICE_NAME": "weather-producer",
    "CONSUL_CHECK_TTL": "10s",
    "CONSUL_DEREGISTER_AFTER": "1m",
    "CONSUL_MAX_BACKOFF": 10.0,
    "CACHE_KV_PREFIX": "weather/cache",
    # cross-producer single flight for OWM calls (Consul only; README "Quota protection")
    "OWM_LEASE": True,
    "OWM_LEASE_KV_PREFIX": None,      # default: <CACHE_KV_PREFIX>-inflight
    "OWM_LEASE_BUDGET": 0.2,          # seconds one lease check may spend on Consul
    "OWM_LEASE_POLL": 0.05,           # seconds between a waiting producer's KV polls
    "ADVERTISE_ADDRESS": None,        # default: detected (see ADVERTISE_INTERFACE / _CIDR)
    "ADVERTISE_INTERFACE": None,      # e.g. "eth1"
    "ADVERTISE_CIDR": None,           # e.g. the overlay subnet "10.0.9.0/24"
    "ADVERTISE_PORT": 8000,
    "LOG_LEVEL": "INFO",
}


class Producer:
    """What the app holds on to: the service, the Consul parts; ``close()`` stops them."""

    def __init__(self, service: WeatherService, key: ApiKeyFile, consul: ConsulClient | None,
                 registration: ServiceRegistration | None) -> None:
        self.service = service
        self.key = key
        self.consul = consul
        self.registration = registration

    def close(self) -> None:
        if self.registration is not None:
            self.registration.stop()
        for part in (self.service.leases, self.service.limiter, self.service.store, self.service.owm):
            if part is None:
                continue
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # best effort at shutdown
                    log.exception("closing %s failed", type(part).__name__)


def request_budget(header: str | None, configured: float, margin: float) -> float:
    """Seconds a lookup may take: ``configured``, or less when the caller's
    ``X-Deadline-Ms`` (its remaining budget, whole ms) minus ``margin`` is smaller.
    A missing or malformed header is ignored; a spent one gives 0 (fallback at once)."""
    if header is None:
        return configured
    text = header.strip()
    if not text or len(text) > 12 or not text.lstrip("-").isdigit():
        return configured
    return max(0.0, min(configured, int(text) / 1000.0 - margin))


def _ready(app: Flask):
    def check() -> tuple[bool, dict[str, Any]]:
        prod: Producer = app.extensions[EXTENSION]
        svc = prod.service
        details: dict[str, Any] = {
            "instance": svc.instance,
            "breaker": svc.breaker.state,
            "cache_backend": getattr(svc.store, "backend", "memory"),
            "quota_backend": getattr(svc.limiter, "backend", "local"),
        }
        if prod.registration is not None:
            details["consul_registered"] = prod.registration.registered
        key = prod.key.get()
        if not key:
            details["reason"] = prod.key.error or "no OWM API key"
            return False, details
        if svc.config_error:
            details["reason"] = svc.config_error
            return False, details
        return True, details

    return check


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the producer app (see module docstring for configuration order)."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("WEATHER_PRODUCER")
    if test_config:
        app.config.from_mapping(test_config)
    cfg = app.config
    instance = instance_name(cfg["NODE_NAME_FILE"], cfg["INSTANCE_ID"])  # ValueError: bad file

    metrics = init_app(app, service="weather-producer", ready_check=_ready(app), log_level=str(cfg["LOG_LEVEL"]))

    key = ApiKeyFile(cfg["OWM_API_KEY_FILE"])
    if key.get() is None:
        log.error("OWM API key unavailable: %s", key.error)
    owm = OwmClient(cfg["OWM_BASE_URL"], key, deadline=float(cfg["OWM_DEADLINE"]))
    breaker = CircuitBreaker(
        failure_threshold=int(cfg["BREAKER_FAILURE_THRESHOLD"]),
        recovery_timeout=float(cfg["BREAKER_RECOVERY_TIMEOUT"]),
        expected_exception=owm_failure,  # outages AND unexpected exceptions; not 404/401
        name="owm",
    )
    metrics.watch_breaker(breaker)

    consul: ConsulClient | None = None
    leases: LeaseTable | None = None
    registration: ServiceRegistration | None = None
    if cfg["CONSUL_HTTP_ADDR"]:
        consul = ConsulClient(str(cfg["CONSUL_HTTP_ADDR"]), token_file=cfg["CONSUL_TOKEN_FILE"])
        store = ConsulLastGoodStore(consul, prefix=str(cfg["CACHE_KV_PREFIX"]),
                                    max_entries=int(cfg["CACHE_MAX_ENTRIES"]), validate=validate_weather)
        metrics.watch_breaker(store.breaker)
        limiter: RateLimiter | SharedRateLimiter = SharedRateLimiter(
            consul, key.get, int(cfg["OWM_MAX_CALLS_PER_MINUTE"]), window=float(cfg["OWM_QUOTA_WINDOW"]),
            instance=instance, prefix=str(cfg["OWM_QUOTA_KV_PREFIX"]), budget=float(cfg["OWM_QUOTA_BUDGET"]),
            expected_producers=int(cfg["OWM_QUOTA_PRODUCERS"]),
        )
        metrics.watch_breaker(limiter.breaker)
        if cfg["OWM_LEASE"]:
            lease_prefix = cfg["OWM_LEASE_KV_PREFIX"] or f"{str(cfg['CACHE_KV_PREFIX']).rstrip('/')}-inflight"
            leases = LeaseTable(consul, str(lease_prefix), instance, budget=float(cfg["OWM_LEASE_BUDGET"]),
                                max_hold=float(cfg["OWM_DEADLINE"]) + 1.0,
                                result_grace=min(2.0, float(cfg["CACHE_TTL"]) / 2))
            metrics.watch_breaker(leases.breaker)
        if cfg["CONSUL_REGISTER"]:
            address = detect_address(cfg["ADVERTISE_ADDRESS"], cfg["ADVERTISE_INTERFACE"], cfg["ADVERTISE_CIDR"])
            registration = ServiceRegistration(
                consul,
                name=str(cfg["CONSUL_SERVICE_NAME"]),
                service_id=f"{cfg['CONSUL_SERVICE_NAME']}-{instance}",
                address=address,
                port=int(cfg["ADVERTISE_PORT"]),
                ttl=str(cfg["CONSUL_CHECK_TTL"]),
                deregister_after=str(cfg["CONSUL_DEREGISTER_AFTER"]),
                meta={"instance": instance},
                max_backoff=float(cfg["CONSUL_MAX_BACKOFF"]),
            ).start()
    else:
        store = MemoryLastGoodStore(max_entries=int(cfg["CACHE_MAX_ENTRIES"]))
        limiter = RateLimiter(int(cfg["OWM_MAX_CALLS_PER_MINUTE"]), window=float(cfg["OWM_QUOTA_WINDOW"]))

    service = WeatherService(
        owm=owm,
        breaker=breaker,
        fresh=FreshCache(ttl=float(cfg["CACHE_TTL"]), max_entries=int(cfg["CACHE_MAX_ENTRIES"])),
        store=store,
        limiter=limiter,
        metrics=metrics,
        instance=instance,
        deadline=float(cfg["PRODUCER_DEADLINE"]),
        owm_deadline=float(cfg["OWM_DEADLINE"]),
        leases=leases,
        lease_poll=float(cfg["OWM_LEASE_POLL"]),
    )
    app.extensions[EXTENSION] = Producer(service, key, consul, registration)

    producer_deadline = float(cfg["PRODUCER_DEADLINE"])
    header_margin = float(cfg["DEADLINE_HEADER_MARGIN"])

    @app.get("/weather")
    def weather():
        # the budget starts now, before validation: the caller's clock is already running
        deadline = Deadline(request_budget(request.headers.get("X-Deadline-Ms"), producer_deadline, header_margin))
        try:
            zip_code, country = validate_location(
                request.args.get("zip"), request.args.get("country"), current_app.config["DEFAULT_COUNTRY"]
            )
        except ValidationError as exc:
            return jsonify({"error": exc.reason}), 400
        status, body = service.lookup(zip_code, country, deadline)
        response = jsonify(body)
        response.status_code = status
        mark = answer_header(status, body)
        if mark is not None:
            response.headers[ANSWER_HEADER] = mark
        return response

    return app
