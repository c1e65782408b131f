"""Client-side load balancing over producer instances (the Ribbon + Hystrix part).

One call of :meth:`Balancer.get_weather` runs within ONE request deadline
(``REQUEST_DEADLINE``):

* the instance comes from :meth:`InstancePool.pick` (latency-aware, see pool.py);
* every call goes through that instance's circuit breaker and weather_common's
  :class:`~weather_common.deadline.HttpClient` with ONE deadline: ``PER_TRY_TIMEOUT``,
  never past what is left of the request's; the producer is told that budget in
  ``X-Deadline-Ms``; the body is capped (``MAX_BODY``). DNS, connect, send, headers and
  body all end by that deadline, so a producer that drips or hangs cannot hold the
  request;
* **hedging**: when the call has not answered after ``HEDGE_DELAY`` a second call goes to
  another instance; the first *answer* wins and the other call is abandoned (its own
  deadline frees its thread; its breaker and latency score still learn from it). Hedges
  are limited by a budget (``HEDGE_BUDGET`` hedges per request on average, with a burst of
  ``HEDGE_BURST``) so a slow weather source everywhere does not double the load;
* **failover**: a failure starts a call to the next instance at once (at most
  ``MAX_ATTEMPTS`` calls per request, hedges included).

What is an answer and what is a failure (README "What counts against a producer"):

* answers (a SUCCESS for the breaker; no other instance is asked after them):
  a 200 whose body is a valid weather value; a 503 marked ``X-Weather-Answer: no-data``
  with a valid ``{"error", "reason"}`` body (the producer is fine, the weather source is
  not: asking the next producer would only spend more of the same quota); any other 4xx
  with a JSON object body, except 429 (404 unknown zip, 400);
* failures (counted by the breaker; the next instance is tried): timeouts, connection
  errors, bodies over the cap, not-HTTP, bodies that are not JSON / fail validation
  (NaN, a bool for a number, missing fields ...), an unmarked 5xx, a 429, 1xx/3xx, and
  ANY unexpected exception on the call path;
* a call the breaker refuses (open, or a half-open trial already running) costs no time
  and is not counted as an attempt.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from weather_common.deadline import (
    Deadline,
    HttpBodyTooLarge,
    HttpClient,
    HttpConnectError,
    HttpError,
    HttpProtocolError,
    HttpTimeout,
)
from weather_common.validation import validate_weather

from .pool import Instance, InstancePool

log = logging.getLogger(__name__)

#: response header of the producer's well-formed "nothing for this place" answers
ANSWER_HEADER = "x-weather-answer"
#: request header telling the producer how many ms the caller will wait
DEADLINE_HEADER = "X-Deadline-Ms"
_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_TEXT_MAX = 300
_MAX_AGE = 10 * 365 * 24 * 3600  # an age beyond 10 years is garbage


class ProducerFailure(Exception):
    """An attempt that counts against the instance (and makes us try the next one).

    ``answer`` is set only for a usable answer that still counts as a failure (a call
    slower than ``SLOW_CALL_THRESHOLD``).
    """

    def __init__(self, reason: str, outcome: str, answer: "Answer | None" = None):
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome  # short label for metrics
        self.answer = answer


@dataclass
class Answer:
    """A producer answered: weather (200), no data (503, marked) or a 4xx we pass on.

    ``body`` is already validated and holds only the fields we pass on.
    """

    status: int
    body: dict
    instance: Instance
    kind: str = "weather"  # weather | no_data | client_error


@dataclass
class Unavailable:
    """No instance answered within the deadline."""

    reason: str
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (instance id, outcome)


# ----------------------------------------------------------------------- validation
def _text(value: Any, limit: int = _TEXT_MAX) -> str | None:
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    if not value or len(value) > limit or not value.isprintable():
        return None
    return value


def validate_weather_body(body: Any) -> dict | None:
    """The fields of a producer's 200 we pass on, validated; None when it is garbage.

    city/description strings, temperature_c a finite number in a plausible range (a
    bool is not a number), observed_at ISO-8601 UTC or null (weather_common's
    ``validate_weather``), plus stale (bool), age_seconds (int >= 0), instance and
    message (string or null).
    """
    core = validate_weather(body)
    if core is None:
        return None
    stale = body.get("stale")
    age = body.get("age_seconds")
    if not isinstance(stale, bool):
        return None
    if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= _MAX_AGE:
        return None
    out = dict(core)
    out["stale"] = stale
    out["age_seconds"] = age
    for key in ("instance", "message"):
        value = body.get(key)
        if value is None:
            out[key] = None
            continue
        text = _text(value, 200)
        if text is None:
            return None
        out[key] = text
    return out


def validate_problem_body(body: Any, *, need_reason: bool) -> dict | None:
    """``{"error", "reason"}`` of a no-data / 4xx answer; None when it is garbage."""
    if not isinstance(body, dict):
        return None
    out: dict[str, Any] = {}
    error = body.get("error")
    if error is not None:
        error = _text(error)
        if error is None:
            return None
        out["error"] = error
    reason = body.get("reason")
    if reason is not None:
        if not (isinstance(reason, str) and _REASON_RE.fullmatch(reason)):
            return None
        out["reason"] = reason
    if need_reason and ("reason" not in out or "error" not in out):
        return None
    instance = _text(body.get("instance"), 200)
    if instance is not None:
        out["instance"] = instance
    return out


# --------------------------------------------------------------------- hedge budget
class HedgeBudget:
    """Token bucket: every request earns ``ratio`` tokens (up to ``burst``); a hedge costs 1."""

    def __init__(self, ratio: float, burst: float):
        self.ratio = max(0.0, float(ratio))
        self.burst = max(0.0, float(burst))
        self._tokens = self.burst
        self._lock = threading.Lock()

    def earn(self) -> None:
        with self._lock:
            self._tokens = min(self.burst, self._tokens + self.ratio)

    def available(self) -> bool:
        with self._lock:
            return self._tokens >= 1.0

    def take(self) -> bool:
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


# -------------------------------------------------------------------------- balancer
@dataclass
class _Outcome:
    kind: str  # answer | failure | refused
    instance: Instance
    answer: Answer | None = None
    label: str = ""


class Balancer:
    def __init__(self, pool: InstancePool, client: HttpClient, *,
                 deadline: float = 4.0, per_try_timeout: float = 2.0,
                 max_attempts: int = 3, hedge_delay: float = 0.25,
                 hedge_budget: float = 0.1, hedge_burst: float = 10.0,
                 slow_call_threshold: float = 0.0, max_body: int = 64 * 1024,
                 circuit_open_errors: tuple[type[BaseException], ...] = (),
                 observe: Callable[[str, str, float], None] | None = None,
                 on_hedge: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.pool = pool
        self.client = client
        self.deadline = float(deadline)
        self.per_try_timeout = float(per_try_timeout)
        self.max_attempts = max(1, int(max_attempts))
        self.hedge_delay = float(hedge_delay)  # <= 0: no hedging
        self.hedges = HedgeBudget(hedge_budget, hedge_burst)
        self.slow_call_threshold = float(slow_call_threshold or 0.0)
        self.max_body = int(max_body)
        self.circuit_open_errors = circuit_open_errors
        self.observe = observe or (lambda instance_id, outcome, seconds: None)
        self.on_hedge = on_hedge or (lambda: None)
        self.clock = clock

    # ------------------------------------------------------------------ one attempt
    def _attempt(self, instance: Instance, params: dict, deadline: Deadline) -> Answer:
        """One call; raises ProducerFailure for anything that should move us on.

        Every exception is turned into a ProducerFailure here, inside the breaker's call:
        nothing unexpected escapes as a silent success or a 500.
        """
        try:
            return self._attempt_inner(instance, params, deadline)
        except ProducerFailure:
            raise
        except Exception as exc:  # a bug or a surprise: a failure, never a success
            log.warning("unexpected error calling producer %s: %s", instance.id,
                        type(exc).__name__, exc_info=exc)
            raise ProducerFailure(f"unexpected error ({type(exc).__name__})", "error") from None

    def _attempt_inner(self, instance: Instance, params: dict, deadline: Deadline) -> Answer:
        t0 = self.clock()
        try:
            resp = self.client.get(
                f"{instance.base_url}/weather", params=params, deadline=deadline,
                headers={DEADLINE_HEADER: str(deadline.remaining_ms()),
                         "Accept": "application/json"},
                max_body=self.max_body)
        except HttpTimeout:
            raise ProducerFailure(f"timed out after {self.clock() - t0:.2f}s", "timeout") from None
        except HttpConnectError:
            raise ProducerFailure("connection failed", "connect_error") from None
        except HttpBodyTooLarge:
            raise ProducerFailure(f"answer larger than {self.max_body} bytes", "too_large") from None
        except HttpProtocolError:
            raise ProducerFailure("not a valid HTTP answer", "bad_http") from None
        except HttpError as exc:
            raise ProducerFailure(f"request failed ({exc.kind})", "error") from None
        status = resp.status
        marker = (resp.headers.get(ANSWER_HEADER) or "").strip().lower()
        if status == 429 or (status >= 500 and not (status == 503 and marker == "no-data")):
            raise ProducerFailure(f"HTTP {status}", f"http_{status}")
        if not (status == 200 or status == 503 or 400 <= status < 500):
            raise ProducerFailure(f"unexpected HTTP {status}", f"http_{status}")
        try:
            body = resp.json()
        except ValueError:
            raise ProducerFailure(f"HTTP {status} without valid JSON", "bad_body") from None
        if status == 200:
            weather = validate_weather_body(body)
            if weather is None:
                raise ProducerFailure("answer is not a valid weather value", "bad_body")
            answer = Answer(200, weather, instance, "weather")
        elif status == 503:
            problem = validate_problem_body(body, need_reason=True)
            if problem is None:
                raise ProducerFailure("no-data answer with a bad body", "bad_body")
            answer = Answer(503, problem, instance, "no_data")
        else:
            problem = validate_problem_body(body, need_reason=False)
            if problem is None:
                raise ProducerFailure(f"HTTP {status} with a bad body", "bad_body")
            answer = Answer(status, problem, instance, "client_error")
        took = self.clock() - t0
        if 0 < self.slow_call_threshold < took:
            raise ProducerFailure(f"answered after {took:.2f}s", "slow", answer=answer)
        return answer

    def _run(self, instance: Instance, params: dict, deadline: Deadline, token: int,
             results: "queue.SimpleQueue[_Outcome]") -> None:
        """Worker thread: one attempt through the breaker; reports to ``results``."""
        t0 = self.clock()
        outcome = _Outcome("failure", instance, label="error")
        failed = True
        try:
            breaker = self.pool.breaker(instance.id)
            answer = breaker.call(self._attempt, instance, params, deadline)
            label = "ok" if answer.status == 200 else (
                "no_data" if answer.kind == "no_data" else f"http_{answer.status}")
            outcome, failed = _Outcome("answer", instance, answer, label), False
        except ProducerFailure as exc:
            if exc.answer is not None:  # usable, but slow enough to count against it
                outcome, failed = _Outcome("answer", instance, exc.answer, exc.outcome), False
            else:
                outcome = _Outcome("failure", instance, label=exc.outcome)
        except self.circuit_open_errors:
            outcome, failed = _Outcome("refused", instance, label="circuit_open"), False
        except Exception as exc:  # e.g. the instance left the pool meanwhile
            log.warning("producer call to %s failed: %s", instance.id, type(exc).__name__)
        finally:
            self.pool.end(instance.id, token, failed=failed, record=outcome.kind != "refused")
            try:
                self.observe(instance.id, outcome.label,
                             0.0 if outcome.kind == "refused" else self.clock() - t0)
            except Exception:  # metrics must never break the call path
                log.exception("observe hook failed")
            results.put(outcome)

    # ------------------------------------------------------------------ one request
    def get_weather(self, zip_code: str, country: str) -> Answer | Unavailable:
        request_deadline = Deadline(self.deadline, clock=self.clock)
        params = {"zip": zip_code, "country": country}
        results: "queue.SimpleQueue[_Outcome]" = queue.SimpleQueue()
        tried: set[str] = set()
        attempts: list[tuple[str, str]] = []
        state = {"in_flight": 0, "last_start": 0.0, "hedged": 0}
        self.hedges.earn()

        def launch(max_cost: float | None = None) -> bool:
            if request_deadline.remaining() <= 0.01:
                return False
            picked = self.pool.pick(tried, max_cost)
            if picked is None:
                return False
            instance, token = picked
            tried.add(instance.id)
            per_try = request_deadline.within(self.per_try_timeout)
            try:
                threading.Thread(target=self._run, name=f"producer-call-{instance.id}",
                                 args=(instance, params, per_try, token, results),
                                 daemon=True).start()
            except RuntimeError:  # cannot start a thread: count it, try no further
                self.pool.end(instance.id, token, failed=False)
                attempts.append((instance.id, "no_thread"))
                return False
            state["in_flight"] += 1
            state["last_start"] = self.clock()
            return True

        if not launch():
            if self.pool.healthy() or self.pool.known():
                return Unavailable("every producer instance is ejected after repeated failures")
            return Unavailable("no producer instance is known")
        while state["in_flight"]:
            remaining = request_deadline.remaining()
            if remaining <= 0:
                break
            can_hedge = (self.hedge_delay > 0 and not state["hedged"]
                         and len(tried) < self.max_attempts + self._refused(attempts))
            wait = remaining
            if can_hedge:
                wait = min(wait, max(0.0, state["last_start"] + self.hedge_delay - self.clock()))
            try:
                got = results.get(timeout=wait)
            except queue.Empty:
                if can_hedge and self.clock() >= state["last_start"] + self.hedge_delay:
                    state["hedged"] = 1  # one hedge per request (taken or not)
                    # Only to an instance known to answer within the hedge delay.
                    if self.hedges.available() and launch(max_cost=self.hedge_delay):
                        self.hedges.take()
                        try:
                            self.on_hedge()
                        except Exception:
                            log.exception("hedge hook failed")
                continue
            state["in_flight"] -= 1
            attempts.append((got.instance.id, got.label))
            if got.kind == "answer":
                return got.answer
            admitted = len(tried) - self._refused(attempts)
            if got.kind == "refused" or admitted < self.max_attempts:
                launch()  # failover (or replace a refused call) at once
        if request_deadline.remaining() <= 0.01:
            reason = f"no producer answered within {self.deadline:g}s"
        elif attempts and all(o == "circuit_open" for _i, o in attempts):
            reason = "every producer instance is ejected after repeated failures"
        else:
            reason = "no producer instance could answer"
        return Unavailable(reason, attempts)

    @staticmethod
    def _refused(attempts: list[tuple[str, str]]) -> int:
        return sum(1 for _i, o in attempts if o == "circuit_open")
