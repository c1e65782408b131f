"""The pool of producer instances: who is known, who is routable, round robin.

Discovery (Consul or a static list) calls :meth:`InstancePool.update` with the list of
healthy instances; request threads call :meth:`InstancePool.plan` to get the order in
which to try them. Each instance has its own circuit breaker, kept across discovery
updates (an instance that flaps in Consul does not get a fresh, closed breaker).

An instance whose breaker is open is *ejected*: it is left out of the plan until the
breaker's recovery timeout has passed; then it appears again and the breaker lets
exactly one trial request through (half-open). Round robin runs over the instances that
are routable right now, so the others share the traffic evenly while one is ejected.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

STATE_CLOSED = "closed"
STATE_OPEN = "open"
STATE_HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Instance:
    """One producer instance as discovery sees it."""

    id: str
    address: str
    port: int
    scheme: str = "http"

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> "Instance":
        """An instance from a static URL such as ``http://127.0.0.1:8000``."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(id=f"{parts.hostname}:{port}", address=parts.hostname, port=port,
                   scheme=parts.scheme)


def parse_producer_urls(value) -> list[Instance]:
    """Accept a list of URLs or one comma/space separated string (from the environment)."""
    if not value:
        return []
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return [Instance.from_url(u) for u in value if str(u).strip()]


class InstancePool:
    """Thread-safe set of producer instances with one breaker each.

    ``breaker_factory(instance_id)`` returns a breaker object with a ``state`` attribute
    (``closed`` / ``open`` / ``half_open``) and a ``call(func, *args)`` method that raises
    the breaker's own "circuit open" error when it refuses the call.
    """

    def __init__(self, breaker_factory: Callable[[str], object], *,
                 forget_after: float = 300.0, panic_routing: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self._breaker_factory = breaker_factory
        self._panic_routing = panic_routing
        self._forget_after = forget_after
        self._clock = clock
        self._lock = threading.Lock()
        self._healthy: list[Instance] = []
        # id -> (instance, healthy now?, monotonic time last seen healthy)
        self._known: dict[str, tuple[Instance, bool, float]] = {}
        self._breakers: dict[str, object] = {}
        self._rr = itertools.count()
        self._updated = False

    # --- discovery side -------------------------------------------------------------
    def update(self, instances: Iterable[Instance]) -> None:
        """Replace the list of healthy instances (what discovery says is passing)."""
        now = self._clock()
        fresh = sorted({i.id: i for i in instances}.values(), key=lambda i: i.id)
        with self._lock:
            self._healthy = fresh
            ids = {i.id for i in fresh}
            for inst in fresh:
                self._known[inst.id] = (inst, True, now)
                if inst.id not in self._breakers:
                    self._breakers[inst.id] = self._breaker_factory(inst.id)
            for iid, (inst, _healthy, seen) in list(self._known.items()):
                if iid in ids:
                    continue
                if now - seen > self._forget_after:
                    del self._known[iid]
                    self._breakers.pop(iid, None)
                else:
                    self._known[iid] = (inst, False, seen)
            self._updated = True

    @property
    def panic_routing(self) -> bool:
        return self._panic_routing

    @property
    def has_been_updated(self) -> bool:
        """True once discovery has delivered at least one list (even an empty one)."""
        return self._updated

    # --- request side ---------------------------------------------------------------
    def breaker(self, instance_id: str):
        with self._lock:
            return self._breakers[instance_id]

    def healthy(self) -> list[Instance]:
        with self._lock:
            return list(self._healthy)

    def known(self) -> list[Instance]:
        """Every instance still listed (passing now, or seen passing recently)."""
        with self._lock:
            return [inst for inst, _h, _s in self._known.values()]

    def plan(self) -> list[Instance]:
        """The order in which one request should try the instances.

        Ejected instances (breaker open, recovery timeout not over) are left out; the
        rest is rotated by a shared round-robin counter.

        Panic routing (like Envoy's panic threshold): when discovery says NO instance is
        passing, the instances seen passing within ``forget_after`` are tried instead -
        a broken heartbeat path must not take healthy producers out of service. Their
        breakers still eject the ones that are really gone.
        """
        with self._lock:
            candidates = self._healthy
            if not candidates and self._panic_routing:
                candidates = sorted((inst for inst, _h, _s in self._known.values()),
                                    key=lambda i: i.id)
            routable = [i for i in candidates
                        if getattr(self._breakers[i.id], "state", STATE_CLOSED) != STATE_OPEN]
            if not routable:
                return []
            start = next(self._rr) % len(routable)
        return routable[start:] + routable[:start]

    def snapshot(self) -> list[dict]:
        """What /api/status shows: every known instance, its health and breaker state."""
        with self._lock:
            rows = []
            for iid in sorted(self._known):
                inst, healthy, _seen = self._known[iid]
                br = self._breakers.get(iid)
                rows.append({
                    "id": inst.id,
                    "address": inst.address,
                    "port": inst.port,
                    "healthy": healthy,
                    "breaker": getattr(br, "state", STATE_CLOSED) if br else STATE_CLOSED,
                })
            return rows

    def breaker_states(self) -> dict[str, str]:
        with self._lock:
            return {iid: getattr(br, "state", STATE_CLOSED) for iid, br in self._breakers.items()}
