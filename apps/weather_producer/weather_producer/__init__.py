"""The weather producer: ``GET /weather?zip=&country=`` backed by OpenWeatherMap.

App factory ``create_app(test_config=None)``: :data:`DEFAULTS`, then the environment
(``WEATHER_PRODUCER_<KEY>``, values parsed as JSON when possible), then ``test_config``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from flask import Flask, current_app, jsonify, request

from weather_common.breaker import CircuitBreaker
from weather_common.cache import ConsulLastGoodStore, FreshCache, MemoryLastGoodStore
from weather_common.consul import ConsulClient, ServiceRegistration
from weather_common.observability import init_app
from weather_common.validation import ValidationError, validate_location

from .netaddr import detect_address
from .owm import ApiKeyFile, OwmClient, OwmOutage
from .service import RateLimiter, WeatherService

__all__ = ["create_app", "DEFAULTS", "EXTENSION"]

log = logging.getLogger("weather_producer")

EXTENSION = "weather_producer"

#: Configuration keys and defaults (env: ``WEATHER_PRODUCER_<KEY>``).
DEFAULTS: dict[str, Any] = {
    "OWM_BASE_URL": "https://api.openweathermap.org",
    "OWM_API_KEY_FILE": None,         # secret: a file, never an env value
    # OWM timeouts: their sum (1.5 s, the worst case of one OWM call) must stay below the
    # consumer's PER_TRY_TIMEOUT (2.0 s), or the consumer gives up on a producer that is
    # about to serve its stale answer (see README "Timeouts").
    "OWM_CONNECT_TIMEOUT": 0.5,
    "OWM_READ_TIMEOUT": 1.0,
    "OWM_MAX_CALLS_PER_MINUTE": 60,   # quota guard (0 = off)
    "CACHE_TTL": 60,                  # seconds an answer is fresh
    "CACHE_MAX_ENTRIES": 10_000,      # locations kept in memory (fresh and last-good, LRU)
    "DEFAULT_COUNTRY": "us",
    "BREAKER_FAILURE_THRESHOLD": 5,
    "BREAKER_RECOVERY_TIMEOUT": 30,
    "INSTANCE_ID": None,              # default: hostname
    "CONSUL_HTTP_ADDR": None,         # e.g. http://127.0.0.1:8500; unset = no Consul
    "CONSUL_TOKEN_FILE": None,
    "CONSUL_REGISTER": True,          # self-register when CONSUL_HTTP_ADDR is set
    "CONSUL_SERVICE_NAME": "weather-producer",
    "CONSUL_CHECK_TTL": "10s",
    "CONSUL_DEREGISTER_AFTER": "1m",
    "CONSUL_MAX_BACKOFF": 10.0,
    "CACHE_KV_PREFIX": "weather/cache",
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


def _ready(app: Flask):
    def check() -> tuple[bool, dict[str, Any]]:
        prod: Producer = app.extensions[EXTENSION]
        svc = prod.service
        details: dict[str, Any] = {
            "instance": svc.instance,
            "breaker": svc.breaker.state,
            "cache_backend": getattr(svc.store, "backend", "memory"),
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
    instance = str(cfg["INSTANCE_ID"] or socket.gethostname())

    metrics = init_app(app, service="weather-producer", ready_check=_ready(app), log_level=str(cfg["LOG_LEVEL"]))

    key = ApiKeyFile(cfg["OWM_API_KEY_FILE"])
    if key.get() is None:
        log.error("OWM API key unavailable: %s", key.error)
    owm = OwmClient(cfg["OWM_BASE_URL"], key, float(cfg["OWM_CONNECT_TIMEOUT"]), float(cfg["OWM_READ_TIMEOUT"]))
    breaker = CircuitBreaker(
        failure_threshold=int(cfg["BREAKER_FAILURE_THRESHOLD"]),
        recovery_timeout=float(cfg["BREAKER_RECOVERY_TIMEOUT"]),
        expected_exception=OwmOutage,
        name="owm",
    )
    metrics.watch_breaker(breaker)

    consul: ConsulClient | None = None
    registration: ServiceRegistration | None = None
    if cfg["CONSUL_HTTP_ADDR"]:
        consul = ConsulClient(str(cfg["CONSUL_HTTP_ADDR"]), token_file=cfg["CONSUL_TOKEN_FILE"])
        store = ConsulLastGoodStore(consul, prefix=str(cfg["CACHE_KV_PREFIX"]),
                                    max_entries=int(cfg["CACHE_MAX_ENTRIES"]))
        metrics.watch_breaker(store.breaker)
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

    service = WeatherService(
        owm=owm,
        breaker=breaker,
        fresh=FreshCache(ttl=float(cfg["CACHE_TTL"]), max_entries=int(cfg["CACHE_MAX_ENTRIES"])),
        store=store,
        limiter=RateLimiter(int(cfg["OWM_MAX_CALLS_PER_MINUTE"])),
        metrics=metrics,
        instance=instance,
    )
    app.extensions[EXTENSION] = Producer(service, key, consul, registration)

    @app.get("/weather")
    def weather():
        try:
            zip_code, country = validate_location(
                request.args.get("zip"), request.args.get("country"), current_app.config["DEFAULT_COUNTRY"]
            )
        except ValidationError as exc:
            return jsonify({"error": exc.reason}), 400
        status, body = service.lookup(zip_code, country)
        return jsonify(body), status

    return app
