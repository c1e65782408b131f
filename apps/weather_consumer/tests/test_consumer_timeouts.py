"""The producer's OWM timeouts and the consumer's per-try timeout / deadline line up.

When OpenWeatherMap hangs, a producer answers from its last good copy once its OWM read
timeout fires. The consumer must wait for that answer: if it gives up first, the user
gets no producer answer and the consumer's breakers eject producers that are healthy.

Real producers (their DEFAULT OWM timeouts), the real fake OWM in ``timeout`` mode, a
real consumer with its DEFAULT timeouts and breaker settings.
"""

from __future__ import annotations

import requests
import weather_consumer
import weather_producer
from weather_consumer.service import PRODUCER_STALE_MESSAGE

PRODUCER_DEFAULTS = weather_producer.DEFAULTS
CONSUMER_DEFAULTS = weather_consumer.DEFAULTS

# The consumer settings under test, straight from its DEFAULTS (the test fixture's
# short timeouts would hide the problem).
CONSUMER_TIMEOUTS = {k: CONSUMER_DEFAULTS[k] for k in (
    "REQUEST_DEADLINE", "PER_TRY_TIMEOUT", "MAX_ATTEMPTS", "HEDGE_DELAY",
    "BREAKER_FAILURE_THRESHOLD", "BREAKER_RECOVERY_TIMEOUT")}
PRODUCER_TIMEOUTS = {k: PRODUCER_DEFAULTS[k] for k in ("OWM_DEADLINE", "PRODUCER_DEADLINE")}


def test_default_budgets_nest():
    """A producer's worst OWM call fits in one consumer try, with room to spare."""
    producer_worst = max(PRODUCER_TIMEOUTS["OWM_DEADLINE"], PRODUCER_TIMEOUTS["PRODUCER_DEADLINE"])
    per_try = CONSUMER_TIMEOUTS["PER_TRY_TIMEOUT"]
    assert producer_worst + 0.15 <= per_try, (producer_worst, per_try)
    # A hung first instance must leave the next one a full try.
    assert CONSUMER_TIMEOUTS["REQUEST_DEADLINE"] >= 2 * per_try


def test_owm_hanging_consumer_gets_the_producers_stale_answer(fake_owm, run_producer, make_app):
    n_producers = 2
    # CACHE_TTL=0: every lookup goes to OWM (no fresh copy hides the outage).
    producers = [run_producer(CACHE_TTL=0, **PRODUCER_TIMEOUTS) for _ in range(n_producers)]
    app = make_app([p.url for p in producers], **CONSUMER_TIMEOUTS)
    client = app.test_client()
    pool = app.extensions["weather_consumer"].pool

    # Every producer holds a last good answer for the zip.
    for p in producers:
        assert p.get(zip="10001").json()["stale"] is False

    fake_owm.set_mode("timeout")  # OWM accepts and never answers (60 s)
    # More lookups than the consumer's breaker threshold, on every producer.
    n = CONSUMER_TIMEOUTS["BREAKER_FAILURE_THRESHOLD"] * n_producers + 1
    bodies = []
    for _ in range(n):
        r = client.get("/api/weather?zip=10001")
        assert r.status_code == 200, r.get_data(as_text=True)
        bodies.append(r.get_json())

    for b in bodies:
        assert b["source"] == "producer", b  # not the consumer's own cache
        assert b["stale"] is True
        assert b["message"] == PRODUCER_STALE_MESSAGE
    assert {b["instance"] for b in bodies} == {p.instance for p in producers}
    # No producer was ejected and no try counted as a failure.
    assert set(pool.breaker_states().values()) == {"closed"}
    for p in producers:
        stats = pool.breaker(p.url.removeprefix("http://")).stats()
        assert stats.failures == 0 and stats.opened_total == 0, stats
    # The producers did hit the hanging OWM (this was not served from a fresh cache).
    assert fake_owm.stats()["by_mode"].get("timeout", 0) >= 1


def test_x_deadline_ms_makes_a_slow_configured_producer_answer_in_time(fake_owm, run_producer,
                                                                       make_app, stubs):
    """Producers configured with a far longer OWM budget (5 s) than the consumer's try (1 s):
    the consumer's X-Deadline-Ms makes them answer from their stale copy in time, so the
    user gets the producer's answer and no healthy producer is counted as failing
    (before the header, the consumer gave up first and ejected them)."""
    producers = [run_producer(CACHE_TTL=0, OWM_DEADLINE=5.0, PRODUCER_DEADLINE=6.0)
                 for _ in range(2)]
    app = make_app([p.url for p in producers], REQUEST_DEADLINE=2.0, PER_TRY_TIMEOUT=1.0,
                   BREAKER_FAILURE_THRESHOLD=3, HEDGE_DELAY=0)
    client = app.test_client()
    pool = app.extensions["weather_consumer"].pool
    for p in producers:
        assert p.get(zip="10001").json()["stale"] is False
    fake_owm.set_mode("timeout")
    for _ in range(4):
        body = client.get("/api/weather?zip=10001").get_json()
        assert body["source"] == "producer" and body["stale"] is True, body
    assert sum(pool.breaker(p.url.removeprefix("http://")).stats().failures for p in producers) == 0
    # The header the consumer sent: its remaining try budget in ms.
    (stub,) = stubs(1)
    app2 = make_app([stub.url], REQUEST_DEADLINE=2.0, PER_TRY_TIMEOUT=1.0)
    app2.test_client().get("/api/weather?zip=10001")
    (sent,) = requests.get(f"{stub.url}/_hits", timeout=2).json()["deadline_ms"]
    assert 900 <= sent <= 1000, sent
