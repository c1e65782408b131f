"""Client-side load balancing over producer instances (the Ribbon + Hystrix part).

One call of :meth:`Balancer.get_weather` tries the instances of :meth:`InstancePool.plan`
in order, each through its own circuit breaker, within ONE overall deadline:

* per-try timeout = min(``per_try_timeout``, time left); connect timeout is capped too;
* a connection error, a timeout, a 5xx (including 503), a 429 or a 200 that is not a
  weather answer is a *failure*: the breaker counts it and the NEXT instance is tried;
* a 4xx such as 404 (unknown zip) or 400 is an *answer*: it goes back to the user as is,
  no other instance is asked, and the breaker counts it as a success;
* a breaker that refuses the call (open, or a half-open trial already running) costs no
  time: the next instance is tried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import requests

from .pool import Instance, InstancePool

# Fields a 200 from a producer must carry to count as a weather answer.
REQUIRED_FIELDS = ("city", "description", "temperature_c", "observed_at")


class ProducerFailure(Exception):
    """An attempt that counts against the instance (and makes us try the next one)."""

    def __init__(self, reason: str, outcome: str):
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome  # short label for metrics


@dataclass
class Answer:
    """A producer answered (200, or a 4xx we pass through)."""

    status: int
    body: dict
    instance: Instance


@dataclass
class Unavailable:
    """No instance answered within the deadline."""

    reason: str
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (instance id, outcome)


class Balancer:
    def __init__(self, pool: InstancePool, session: requests.Session, *,
                 deadline: float = 4.0, per_try_timeout: float = 2.0,
                 connect_timeout: float = 0.25, max_attempts: int = 3,
                 circuit_open_errors: tuple[type[BaseException], ...] = (),
                 observe: Callable[[str, str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.pool = pool
        self.session = session
        self.deadline = float(deadline)
        self.per_try_timeout = float(per_try_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_attempts = max(1, int(max_attempts))
        self.circuit_open_errors = circuit_open_errors
        self.observe = observe or (lambda instance_id, outcome, seconds: None)
        self.clock = clock

    # One attempt; raises ProducerFailure for anything that should move us on.
    def _attempt(self, instance: Instance, params: dict, timeout: float) -> Answer:
        url = f"{instance.base_url}/weather"
        try:
            resp = self.session.get(url, params=params,
                                    timeout=(min(self.connect_timeout, timeout), timeout),
                                    allow_redirects=False)
        except requests.Timeout as exc:
            raise ProducerFailure(f"timed out after {timeout:.2f}s", "timeout") from exc
        except requests.ConnectionError as exc:
            raise ProducerFailure("connection failed", "connect_error") from exc
        except requests.RequestException as exc:
            raise ProducerFailure(f"request failed: {type(exc).__name__}", "error") from exc
        status = resp.status_code
        if status >= 500 or status == 429:
            raise ProducerFailure(f"HTTP {status}", f"http_{status}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise ProducerFailure(f"HTTP {status} without JSON", "bad_body") from exc
        if not isinstance(body, dict):
            raise ProducerFailure(f"HTTP {status} with a non-object body", "bad_body")
        if status == 200:
            missing = [f for f in REQUIRED_FIELDS if f not in body]
            if missing:
                raise ProducerFailure(f"answer lacks {', '.join(missing)}", "bad_body")
            return Answer(200, body, instance)
        if 400 <= status < 500:
            return Answer(status, body, instance)
        # 1xx/3xx and other oddities: not an answer we can give the user.
        raise ProducerFailure(f"unexpected HTTP {status}", f"http_{status}")

    def get_weather(self, zip_code: str, country: str) -> Answer | Unavailable:
        start = self.clock()
        plan = self.pool.plan()
        if not plan:
            if self.pool.healthy() or self.pool.known():
                return Unavailable("every producer instance is ejected after repeated failures")
            return Unavailable("no producer instance is known")
        params = {"zip": zip_code, "country": country}
        attempts: list[tuple[str, str]] = []
        tried = 0
        for instance in plan:
            if tried >= self.max_attempts:
                break
            left = self.deadline - (self.clock() - start)
            if left <= 0.01:
                attempts.append((instance.id, "deadline"))
                break
            timeout = min(self.per_try_timeout, left)
            breaker = self.pool.breaker(instance.id)
            t0 = self.clock()
            try:
                answer = breaker.call(self._attempt, instance, params, timeout)
            except ProducerFailure as exc:
                tried += 1
                attempts.append((instance.id, exc.outcome))
                self.observe(instance.id, exc.outcome, self.clock() - t0)
                continue
            except self.circuit_open_errors:
                attempts.append((instance.id, "circuit_open"))
                self.observe(instance.id, "circuit_open", 0.0)
                continue
            self.observe(instance.id, "ok" if answer.status == 200 else f"http_{answer.status}",
                         self.clock() - t0)
            return answer
        if attempts and all(o == "circuit_open" for _i, o in attempts):
            reason = "every producer instance is ejected after repeated failures"
        elif attempts and attempts[-1][1] == "deadline" or (self.clock() - start) >= self.deadline:
            reason = f"no producer answered within {self.deadline:g}s"
        else:
            reason = "no producer instance could answer"
        return Unavailable(reason, attempts)
