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
    # Which Consul entries may be used (weather_consumer/admission.py: a stolen Pi holds
    # the producer token and can register entries with any ID and address on its node).
    # PRODUCER_CIDRS: "10.0.9.0/24,fd00::/64": only IP addresses inside these ("": any).
    # PRODUCER_REQUIRE_NODE_ID: only service IDs "<PRODUCER_SERVICE>-<the entry's node>-..."
    # (producers with NODE_NAME_FILE register so).
    "PRODUCER_CIDRS": "",
    "PRODUCER_REQUIRE_NODE_ID": True,
    "CONSUL_WAIT": "30s",  # blocking-query wait
    "DISCOVERY_INITIAL_WAIT": 1.0,  # s the factory waits for Consul's first answer
    # One overall deadline per user request; each producer call gets ONE deadline of
    # min(PER_TRY_TIMEOUT, what is left) covering DNS, connect, send, headers and body.
    # PER_TRY_TIMEOUT must exceed the producer's own deadline (PRODUCER_DEADLINE, 1.8 s)
    # plus a margin, so a producer whose OWM hangs can still answer from its stale copy
    # without being counted as failed: 2.0 s left too little on a loaded emulated Pi (a
    # healthy producer's breaker opened during the cluster's OWM-hang test); 2.5 s.
    "REQUEST_DEADLINE": 5.0,  # two full tries (a hung first instance leaves the next one 2.5 s)
    "PER_TRY_TIMEOUT": 2.5,
    "MAX_ATTEMPTS": 3,  # producer calls per request, hedges and failovers included
    # Hedging: a second call to another instance when the first has not answered after
    # HEDGE_DELAY s (0 switches hedging off); at most HEDGE_BUDGET hedges per request on
    # average (token bucket, bursts of HEDGE_BURST), so a slow weather source everywhere
    # cannot double the load on the producers and on OWM.
    "HEDGE_DELAY": 0.25,
    "HEDGE_BUDGET": 0.1,
    "HEDGE_BURST": 10.0,
    # Latency-aware balancing: time constant (s) of the peak-EWMA latency per instance.
    "LATENCY_DECAY": 5.0,
    # A successful call slower than this counts as a failure for the instance's breaker
    # (its answer is still used). 0: off (README "Load balancing" says why).
    "SLOW_CALL_THRESHOLD": 0,
    # Largest producer answer read (bytes); a bigger one is a failure.
    "MAX_BODY": 64 * 1024,
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
    # Local port(s) of the operator listener (a second gunicorn bind): only requests that
    # arrived on it see /status, /api/status and /metrics (404 on the public port).
    # Decided by the accepted socket's local port, never by the Host header.
    "OPERATOR_PORT": 9080,
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
