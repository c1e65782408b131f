"""weather_consumer: the front end of the weather services.

Flask app factory in the style of Flask's tutorial: defaults, then the environment
(``WEATHER_CONSUMER_*``), then ``test_config``.
"""

from __future__ import annotations

from flask import Flask

from .runtime import Runtime

#: Every setting with its default; override with WEATHER_CONSUMER_<NAME> in the environment.
DEFAULTS = {
    # Country used when the form / query leaves it empty.
    "DEFAULT_COUNTRY": "us",
    # Static producer list ("http://h1:8000,http://h2:8000" or a JSON list). When set,
    # Consul is not used at all (tests, benchmarks, set-ups without Consul).
    "PRODUCER_URLS": "",
    # Consul discovery (used when PRODUCER_URLS is empty; "" switches discovery off).
    "CONSUL_HTTP_ADDR": "http://127.0.0.1:8500",
    "CONSUL_TOKEN_FILE": None,
    "PRODUCER_SERVICE": "weather-producer",
    "CONSUL_WAIT": "30s",  # blocking-query wait
    "DISCOVERY_INITIAL_WAIT": 1.0,  # s the factory waits for Consul's first answer
    # Load balancing: one overall deadline per user request, per-try timeouts within it.
    # PER_TRY_TIMEOUT must exceed the producer's worst OWM call (connect 0.5 + read 1.0 s)
    # plus a margin, so a producer whose OWM hangs can still answer from its stale copy;
    # the deadline leaves a second full try when the first instance hangs (README "Timeouts").
    "REQUEST_DEADLINE": 4.0,
    "PER_TRY_TIMEOUT": 2.0,
    "CONNECT_TIMEOUT": 0.25,
    "MAX_ATTEMPTS": 3,
    # Outlier ejection: breaker per producer instance.
    "BREAKER_FAILURE_THRESHOLD": 3,
    "BREAKER_RECOVERY_TIMEOUT": 10.0,
    # How long an instance that left Consul's passing list is still shown on /status
    # (and, with PANIC_ROUTING, still tried when NO instance is passing).
    "INSTANCE_FORGET_AFTER": 300.0,
    "PANIC_ROUTING": True,
    # Last-good answers kept in memory (one per zip + country; least recently used evicted).
    "CACHE_MAX_ENTRIES": 10_000,
    "LOG_LEVEL": "INFO",
    # Start discovery in create_app (tests may start it by hand).
    "START_DISCOVERY": True,
}


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("WEATHER_CONSUMER")
    if test_config:
        app.config.from_mapping(test_config)

    runtime = Runtime.from_config(app.config)
    app.extensions["weather_consumer"] = runtime

    from . import api, pages, web

    web.init_app(app, runtime)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)

    if app.config["START_DISCOVERY"]:
        runtime.start()
    return app
