"""The producer's OWM timeouts and the consumer's per-try timeout / deadline line up.

When OpenWeatherMap hangs, a producer answers from its last good copy once its OWM read
timeout fires. The consumer must wait for that answer: if it gives up first, the user
gets no producer answer and the consumer's breakers eject producers that are healthy.

Real producers (their DEFAULT OWM timeouts), the real fake OWM in ``timeout`` mode, a
real consumer with its DEFAULT timeouts and breaker settings.
"""

from __future__ import annotations

import weather_consumer
import weather_producer
from weather_consumer.service import PRODUCER_STALE_MESSAGE

PRODUCER_DEFAULTS = weather_producer.DEFAULTS
CONSUMER_DEFAULTS = weather_consumer.DEFAULTS

# The consumer settings under test, straight from its DEFAULTS (the test fixture's
# short timeouts would hide the problem).
CONSUMER_TIMEOUTS = {k: CONSUMER_DEFAULTS[k] for k in (
    "REQUEST_DEADLINE", "PER_TRY_TIMEOUT", "CONNECT_TIMEOUT", "MAX_ATTEMPTS",
    "BREAKER_FAILURE_THRESHOLD", "BREAKER_RECOVERY_TIMEOUT")}
PRODUCER_TIMEOUTS = {k: PRODUCER_DEFAULTS[k] for k in ("OWM_CONNECT_TIMEOUT", "OWM_READ_TIMEOUT")}


def test_default_budgets_nest():
    """A producer's worst OWM call fits in one consumer try, with room to spare."""
    owm_worst = PRODUCER_TIMEOUTS["OWM_CONNECT_TIMEOUT"] + PRODUCER_TIMEOUTS["OWM_READ_TIMEOUT"]
    per_try = CONSUMER_TIMEOUTS["PER_TRY_TIMEOUT"]
    assert owm_worst + 0.25 <= per_try, (owm_worst, per_try)
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
    assert {b["producer"] for b in bodies} == {p.url.removeprefix("http://") for p in producers}
    # No producer was ejected and no try counted as a failure.
    assert set(pool.breaker_states().values()) == {"closed"}
    for p in producers:
        stats = pool.breaker(p.url.removeprefix("http://")).stats()
        assert stats.failures == 0 and stats.opened_total == 0, stats
    # The producers did hit the hanging OWM (this was not served from a fresh cache).
    assert fake_owm.stats()["by_mode"].get("timeout", 0) >= 1


def test_old_mismatched_timeouts_eject_healthy_producers(fake_owm, run_producer, make_app):
    """Control: the previous defaults (OWM 3.05/5 s vs consumer 1 s per try, 2 s deadline)."""
    producers = [run_producer(CACHE_TTL=0, OWM_CONNECT_TIMEOUT=3.05, OWM_READ_TIMEOUT=5.0)
                 for _ in range(2)]
    app = make_app([p.url for p in producers], REQUEST_DEADLINE=2.0, PER_TRY_TIMEOUT=1.0,
                   BREAKER_FAILURE_THRESHOLD=3)
    client = app.test_client()
    pool = app.extensions["weather_consumer"].pool
    for p in producers:
        assert p.get(zip="10001").json()["stale"] is False
    assert client.get("/api/weather?zip=10001").get_json()["stale"] is False  # consumer saves it
    fake_owm.set_mode("timeout")
    body = client.get("/api/weather?zip=10001").get_json()
    # The consumer gave up on both producers before either could serve its stale copy.
    assert body["source"] == "consumer-cache"
    assert sum(pool.breaker(p.url.removeprefix("http://")).stats().failures for p in producers) == 2
