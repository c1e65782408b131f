"""The breaker under real threads: no lost counts, exactly one half-open trial."""

from __future__ import annotations

import threading
import time

import pytest
from circuitbreaker import CircuitBreakerError

from weather_common.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpenError


class Outage(Exception):
    pass


class NotFound(Exception):
    pass


def _run_threads(n: int, target) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            target(i)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_32_threads_x_10k_calls_lose_no_counts():
    br = CircuitBreaker(failure_threshold=10**9, recovery_timeout=30, expected_exception=Outage, name="count")
    n_threads, n_calls = 32, 10_000

    def ok() -> int:
        return 1

    def bad() -> None:
        raise Outage()

    def worker(i: int) -> None:
        call = br.call
        for j in range(n_calls):
            if (i + j) % 4 == 0:
                try:
                    call(bad)
                except Outage:
                    pass
            else:
                call(ok)

    _run_threads(n_threads, worker)
    s = br.stats()
    total = n_threads * n_calls
    assert s.calls == total
    assert s.failures == total // 4
    assert s.successes == total - total // 4
    assert s.rejected == 0 and s.state == CLOSED


def test_consecutive_failures_counted_exactly_under_contention():
    # All calls fail and the threshold is never reached: the consecutive count is exact.
    br = CircuitBreaker(failure_threshold=10**9, expected_exception=Outage, name="fails")

    def bad() -> None:
        raise Outage()

    def worker(_: int) -> None:
        for _ in range(2_000):
            try:
                br.call(bad)
            except Outage:
                pass

    _run_threads(16, worker)
    assert br.failure_count == 32_000
    assert br.stats().failures == 32_000


def _open(br: CircuitBreaker) -> None:
    for _ in range(br._failure_threshold):
        with pytest.raises(Outage):
            br.call(_raise, Outage())
    assert br.state == OPEN


def _raise(exc: Exception) -> None:
    raise exc


def test_half_open_admits_exactly_one_of_50_concurrent_callers():
    br = CircuitBreaker(failure_threshold=2, recovery_timeout=0.2, expected_exception=Outage, name="half")
    _open(br)
    time.sleep(0.25)
    assert br.state == HALF_OPEN

    upstream_calls = 0
    lock = threading.Lock()
    results: dict[str, int] = {"ok": 0, "refused": 0}

    def upstream() -> str:
        nonlocal upstream_calls
        with lock:
            upstream_calls += 1
        time.sleep(0.3)  # the trial is still in flight while the others arrive
        return "ok"

    def caller(_: int) -> None:
        try:
            br.call(upstream)
            key = "ok"
        except CircuitOpenError as exc:
            assert exc.state == HALF_OPEN and exc.remaining == 0
            key = "refused"
        with lock:
            results[key] += 1

    _run_threads(50, caller)
    assert upstream_calls == 1
    assert results == {"ok": 1, "refused": 49}
    assert br.state == CLOSED
    assert br.stats().rejected == 49


def test_failed_trial_reopens_for_a_full_timeout():
    br = CircuitBreaker(failure_threshold=1, recovery_timeout=0.3, expected_exception=Outage, name="reopen")
    _open(br)
    time.sleep(0.35)
    with pytest.raises(Outage):
        br.call(_raise, Outage())  # the trial fails
    assert br.state == OPEN
    with pytest.raises(CircuitOpenError) as info:
        br.call(lambda: 1)
    assert 0 < info.value.remaining <= 0.3
    assert "open" in str(info.value)
    assert br.stats().opened_total == 2


def test_open_error_carries_remaining_seconds_and_is_a_circuitbreaker_error():
    br = CircuitBreaker(failure_threshold=1, recovery_timeout=30, expected_exception=Outage, name="rem")
    _open(br)
    with pytest.raises(CircuitBreakerError) as info:
        br.call(lambda: 1)
    err = info.value
    assert isinstance(err, CircuitOpenError)
    assert err.state == OPEN and 29 < err.remaining <= 30
    assert err.name == "rem"


def test_predicate_decides_what_is_an_outage():
    br = CircuitBreaker(
        failure_threshold=2, expected_exception=lambda t, e: issubclass(t, Outage), name="pred"
    )
    for _ in range(10):
        with pytest.raises(NotFound):
            br.call(_raise, NotFound())
    assert br.state == CLOSED
    s = br.stats()
    assert s.ignored == 10 and s.failures == 0
    # a NotFound between failures resets the consecutive count: the upstream answered
    with pytest.raises(Outage):
        br.call(_raise, Outage())
    with pytest.raises(NotFound):
        br.call(_raise, NotFound())
    with pytest.raises(Outage):
        br.call(_raise, Outage())
    assert br.state == CLOSED
    with pytest.raises(Outage):
        br.call(_raise, Outage())
    assert br.state == OPEN


def test_listeners_see_state_changes_and_decorator_and_context_manager_work():
    events: list[tuple[str, str, str]] = []
    br = CircuitBreaker(failure_threshold=1, recovery_timeout=0.1, expected_exception=Outage, name="hooks",
                        listeners=[lambda b, ev, old, new: events.append((ev, old, new))])

    @br
    def flaky(fail: bool) -> str:
        if fail:
            raise Outage()
        return "fine"

    with pytest.raises(Outage):
        flaky(True)
    with pytest.raises(CircuitOpenError):
        with br:
            pass
    time.sleep(0.15)
    assert flaky(False) == "fine"
    changes = [(old, new) for ev, old, new in events if ev == "state_change"]
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert [ev for ev, _, _ in events].count("rejected") == 1


def test_broken_listener_does_not_break_calls():
    def bad_hook(*_):
        raise RuntimeError("hook bug")

    br = CircuitBreaker(name="badhook", listeners=[bad_hook])
    assert br.call(lambda: 42) == 42
    assert br.as_dict()["state"] == CLOSED
