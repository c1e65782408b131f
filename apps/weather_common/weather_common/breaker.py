"""A thread-safe circuit breaker built on the ``circuitbreaker`` package.

``circuitbreaker.CircuitBreaker`` gives the state machine and the failure-predicate
machinery; this subclass fixes what it lacks for a multi-threaded web server:

* every state transition and counter update happens under one lock, so no count is
  lost when many threads call through the breaker at once;
* half-open admits EXACTLY ONE trial call; every other caller is refused fast with
  :class:`CircuitOpenError` until the trial has finished;
* ``is_failure(exc_type, exc)`` decides which exceptions count as outages (a 404 is not
  one: it proves the upstream is alive, so it counts as a success for the breaker);
* counters (:class:`BreakerStats`) and listener hooks for metrics.

Fallbacks are deliberately the caller's business: catch the outage exceptions AND
:class:`CircuitOpenError` and fall back in both cases.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from time import monotonic
from typing import Any, Callable, Iterable, TypeVar

from circuitbreaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    CircuitBreaker as _BaseCircuitBreaker,
    CircuitBreakerError,
)

__all__ = [
    "CLOSED",
    "OPEN",
    "HALF_OPEN",
    "STATE_VALUES",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpenError",
]

log = logging.getLogger(__name__)

CLOSED = STATE_CLOSED  # "closed"
OPEN = STATE_OPEN  # "open"
HALF_OPEN = STATE_HALF_OPEN  # "half_open"
#: Numeric value of each state, for a Prometheus gauge.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

T = TypeVar("T")

#: ``listener(breaker, event, old_state, new_state)``; event is one of
#: "success", "failure", "ignored", "rejected", "state_change".
Listener = Callable[["CircuitBreaker", str, str, str], None]


class CircuitOpenError(CircuitBreakerError):
    """The breaker refused a call (open, or half-open with the trial call in flight).

    Attributes:
        name: the breaker's name.
        state: "open" or "half_open" at the moment of refusal.
        remaining: seconds until the breaker admits a trial call (0.0 while a
            half-open trial is in flight).
    """

    def __init__(self, breaker: "CircuitBreaker", state: str, remaining: float) -> None:
        super().__init__(breaker)
        self.name = breaker.name or "unnamed"
        self.state = state
        self.remaining = max(0.0, remaining)

    def __str__(self) -> str:
        if self.state == HALF_OPEN:
            return f'circuit "{self.name}" is half-open: a trial call is in flight'
        return f'circuit "{self.name}" is open: retry in {self.remaining:.1f}s'


@dataclass(frozen=True)
class BreakerStats:
    """A consistent snapshot of a breaker's counters (all taken under the lock)."""

    state: str
    calls: int  # admitted calls (success + failure + ignored + in flight)
    successes: int
    failures: int  # calls whose exception matched the failure predicate
    ignored: int  # calls that raised an exception NOT counted as a failure
    rejected: int  # calls refused with CircuitOpenError
    consecutive_failures: int
    opened_total: int  # how many times the breaker went to open
    remaining: float  # seconds until a trial call is allowed (0 when not open)


class CircuitBreaker(_BaseCircuitBreaker):
    """Thread-safe circuit breaker with a single half-open trial call.

    Args:
        failure_threshold: consecutive failures that open the circuit.
        recovery_timeout: seconds the circuit stays open before one trial call.
        expected_exception: exception type(s) or predicate ``(exc_type, exc) -> bool``
            deciding what counts as a failure (as in ``circuitbreaker``).
        name: breaker name (metrics label).
        listeners: callables ``(breaker, event, old_state, new_state)``, called
            OUTSIDE the lock; their exceptions are logged and swallowed.
        clock: monotonic clock (tests may inject one).

    Use ``breaker.call(func, *args, **kwargs)``, the ``@breaker`` decorator or
    ``with breaker: ...``.
    """

    def __init__(
        self,
        failure_threshold: int | None = None,
        recovery_timeout: float | None = None,
        expected_exception: Any = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        super().__init__(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            expected_exception=expected_exception,
            name=name,
            fallback_function=None,
        )
        self._opened = clock()
        self._trial_in_flight = False
        self._listeners: list[Listener] = list(listeners)
        self._local = threading.local()
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        self._rejected = 0
        self._opened_total = 0

    # ----------------------------------------------------------------- listeners
    def add_listener(self, listener: Listener) -> None:
        """Register a metrics/logging hook (see :data:`Listener`)."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, events: list[tuple[str, str, str]]) -> None:
        for event, old, new in events:
            for listener in list(self._listeners):
                try:
                    listener(self, event, old, new)
                except Exception:  # a broken hook must never break the call path
                    log.exception("circuit breaker listener failed")

    # -------------------------------------------------------------- state (locked)
    def _remaining_locked(self) -> float:
        return (self._opened + self._recovery_timeout) - self._clock()

    def _state_locked(self) -> str:
        if self._state == OPEN and self._remaining_locked() <= 0:
            return HALF_OPEN
        return self._state

    def _admit(self) -> bool:
        """Admit a call or raise CircuitOpenError. Returns True for the half-open trial."""
        events: list[tuple[str, str, str]] = []
        with self._lock:
            state = self._state_locked()
            if state == CLOSED:
                self._calls += 1
                return False
            if state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                self._calls += 1
                if self._state != HALF_OPEN:
                    events.append(("state_change", self._state, HALF_OPEN))
                    self._state = HALF_OPEN
                trial = True
            else:
                self._rejected += 1
                remaining = 0.0 if state == HALF_OPEN else self._remaining_locked()
                error = CircuitOpenError(self, state, remaining)
                events.append(("rejected", state, state))
                trial = None
        if events:
            self._notify(events)
        if trial is None:
            raise error
        return True

    def _record(self, trial: bool, exc: BaseException | None) -> None:
        """Record the outcome of an admitted call.

        Only the half-open trial, or a call finishing while the circuit is closed, may
        change the state: a straggler admitted before the circuit opened just counts.
        """
        events: list[tuple[str, str, str]] = []
        with self._lock:
            old = self._state
            if trial:
                self._trial_in_flight = False
            may_transition = trial or old == CLOSED
            failed = (
                exc is not None
                and isinstance(exc, Exception)
                and self.is_failure(type(exc), exc)
            )
            if failed:
                self._failures += 1
                events.append(("failure", old, old))
                if may_transition:
                    self._failure_count += 1
                    self._last_failure = exc
                    if trial or self._failure_count >= self._failure_threshold:
                        self._opened_total += 1
                        self._state = OPEN
                        self._opened = self._clock()
            else:
                # Success, or an exception that is not an outage (e.g. a 404): either
                # way the upstream answered.
                if exc is None:
                    self._successes += 1
                    events.append(("success", old, old))
                else:
                    self._ignored += 1
                    events.append(("ignored", old, old))
                if may_transition:
                    self._state = CLOSED
                    self._failure_count = 0
                    self._last_failure = None
            new = self._state
        if old != new:
            events.append(("state_change", old, new))
        self._notify(events)

    # ------------------------------------------------------------------ call API
    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` through the breaker; raises CircuitOpenError when refused."""
        trial = self._admit()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._record(trial, exc)
            raise
        self._record(trial, None)
        return result

    def __enter__(self) -> None:
        stack = getattr(self._local, "trials", None)
        if stack is None:
            stack = self._local.trials = []
        stack.append(self._admit())
        return None

    def __exit__(self, exc_type, exc_value, _traceback) -> bool:
        trial = self._local.trials.pop()
        self._record(trial, exc_value if exc_type else None)
        return False

    def _decorate_sync(self, function):  # used by the base class' decorate()
        import functools

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return self.call(function, *args, **kwargs)

        return wrapper

    def _decorate_async(self, function):  # pragma: no cover - not supported
        raise TypeError("weather_common.breaker.CircuitBreaker supports sync functions only")

    # --------------------------------------------------------------- inspection
    def reset(self) -> None:
        """Force the circuit closed and clear the consecutive-failure count."""
        with self._lock:
            old = self._state
            self._state = CLOSED
            self._failure_count = 0
            self._last_failure = None
            self._trial_in_flight = False
        if old != CLOSED:
            self._notify([("state_change", old, CLOSED)])

    @property
    def state(self) -> str:
        """'closed' | 'open' | 'half_open' (open turns half_open once the timeout passed)."""
        with self._lock:
            return self._state_locked()

    @property
    def open_remaining(self) -> float:
        """Seconds until a trial call is admitted (<= 0 when it would be admitted)."""
        with self._lock:
            if self._state != OPEN:
                return 0.0
            return self._remaining_locked()

    @property
    def failure_count(self) -> int:
        with self._lock:
            return self._failure_count

    def stats(self) -> BreakerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            state = self._state_locked()
            return BreakerStats(
                state=state,
                calls=self._calls,
                successes=self._successes,
                failures=self._failures,
                ignored=self._ignored,
                rejected=self._rejected,
                consecutive_failures=self._failure_count,
                opened_total=self._opened_total,
                remaining=max(0.0, self._remaining_locked()) if state == OPEN else 0.0,
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for /api/status pages and /ready)."""
        s = self.stats()
        return {
            "name": self.name,
            "state": s.state,
            "failures": s.failures,
            "consecutive_failures": s.consecutive_failures,
            "rejected": s.rejected,
            "remaining_seconds": round(s.remaining, 1),
        }
