"""The pool of producer instances: who is known, who is routable, who is fastest now.

Discovery (Consul or a static list) calls :meth:`InstancePool.update` with the list of
healthy instances; request threads call :meth:`InstancePool.pick` (one instance at a
time: the first try, a hedge, a failover) or :meth:`InstancePool.plan` (the whole order).
Each instance has its own circuit breaker, kept across discovery updates (an instance
that flaps in Consul does not get a fresh, closed breaker).

An instance whose breaker is open is *ejected*: it is left out until the breaker's
recovery timeout has passed; then it comes FIRST in the order, so the breaker's single
half-open trial happens on the next request (a trial already in flight leaves it out:
the breaker would refuse a second call anyway).

Latency-aware choice (README "Load balancing"): every instance has a *cost*, a peak-EWMA
of its call latencies (a slower call raises it at once; faster calls pull it down with
time constant ``decay``; with no calls it decays towards 0, so an idle slow instance
gets an occasional trial), raised to the age of its oldest call still in flight (a call
that has been running 0.8 s proves the instance is slow before it answers), times
(calls in flight + 1); an instance whose first call is still running counts as 0.5 s
(its speed is unknown: one call at a time until it shows it). The instances whose score is within ``tolerance`` of the best
one are "as good as the best"; among those, the least recently picked goes first: equal
instances take turns (round robin), a slow one gets no traffic until its cost decays.
An instance whose last call failed is never "better than the best" (a refused
connection is fast but no good): it keeps its turn, so its breaker sees its failures
and ejects it as before.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

STATE_CLOSED = "closed"
STATE_OPEN = "open"
STATE_HALF_OPEN = "half_open"
#: expected latency (s) of an instance with a call in flight and none finished yet
UNKNOWN_BUSY_COST = 0.5


@dataclass(frozen=True)
class Instance:
    """One producer instance as discovery sees it."""

    id: str
    address: str
    port: int
    scheme: str = "http"
    #: the name users see (page, /api/weather "producer"): never an address. Consul
    #: instances: their service ID; static ones: "producer-<n>" (position in the list).
    label: str = ""

    @property
    def public_name(self) -> str:
        return self.label or self.id

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, label: str = "") -> "Instance":
        """An instance from a static URL such as ``http://127.0.0.1:8000``."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(id=f"{parts.hostname}:{port}", address=parts.hostname, port=port,
                   scheme=parts.scheme, label=label)


def parse_producer_urls(value) -> list[Instance]:
    """Accept a list of URLs or one comma/space separated string (from the environment).

    The id (breakers, metrics, operator status) is ``host:port``; the public label is
    ``producer-<n>``, n counting from 1 in the order given.
    """
    if not value:
        return []
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    urls = [u for u in value if str(u).strip()]
    return [Instance.from_url(u, label=f"producer-{n}") for n, u in enumerate(urls, 1)]


class _Load:
    """Latency bookkeeping of one instance (guarded by the pool's lock)."""

    __slots__ = ("cost", "stamp", "pending", "last_pick", "failing", "observed")

    def __init__(self, now: float) -> None:
        self.cost = 0.0  # peak-EWMA of call latency, seconds
        self.stamp = now  # when ``cost`` was last updated
        self.pending: dict[int, float] = {}  # call token -> start time
        self.last_pick = -1  # pick sequence number (LRU among equals)
        self.failing = False  # the last finished call was a failure
        self.observed = False  # a call has finished (its latency is known)


class InstancePool:
    """Thread-safe set of producer instances with one breaker and a latency score each.

    ``breaker_factory(instance_id)`` returns a breaker object with a ``state`` attribute
    (``closed`` / ``open`` / ``half_open``) and a ``call(func, *args)`` method that raises
    the breaker's own "circuit open" error when it refuses the call.
    """

    def __init__(self, breaker_factory: Callable[[str], object], *,
                 forget_after: float = 300.0, panic_routing: bool = True,
                 decay: float = 5.0, tolerance: tuple[float, float] = (1.5, 0.02),
                 clock: Callable[[], float] = time.monotonic):
        self._breaker_factory = breaker_factory
        self._panic_routing = panic_routing
        self._forget_after = forget_after
        self._decay = max(0.001, float(decay))
        self._tol_factor, self._tol_abs = float(tolerance[0]), float(tolerance[1])
        self._clock = clock
        self._lock = threading.Lock()
        self._healthy: list[Instance] = []
        # id -> (instance, healthy now?, monotonic time last seen healthy)
        self._known: dict[str, tuple[Instance, bool, float]] = {}
        self._breakers: dict[str, object] = {}
        self._load: dict[str, _Load] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
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
                if inst.id not in self._load:
                    self._load[inst.id] = _Load(now)
            for iid, (inst, _healthy, seen) in list(self._known.items()):
                if iid in ids:
                    continue
                if now - seen > self._forget_after:
                    del self._known[iid]
                    self._breakers.pop(iid, None)
                    self._load.pop(iid, None)
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

    def _cost_locked(self, iid: str, now: float) -> float:
        """Expected latency (s): the decayed peak-EWMA, or the age of the oldest call in flight."""
        load = self._load.get(iid)
        if load is None:
            return 0.0
        cost = load.cost * math.exp(-max(0.0, now - load.stamp) / self._decay)
        if load.pending:
            cost = max(cost, now - min(load.pending.values()))
            if not load.observed:
                # Unknown latency and already busy (Finagle's "penalty"): no second call
                # until the first one shows how fast it is, unless everyone is like that.
                cost = max(cost, UNKNOWN_BUSY_COST)
        return cost

    def _score_locked(self, iid: str, now: float) -> float:
        load = self._load.get(iid)
        return self._cost_locked(iid, now) * ((len(load.pending) if load else 0) + 1)

    def _order_locked(self, exclude: frozenset | set = frozenset(),
                      max_cost: float | None = None) -> list[Instance]:
        """Routable instances, best first (see the module docstring)."""
        candidates = self._healthy
        if not candidates and self._panic_routing:
            # Panic routing (like Envoy's panic threshold): when discovery says NO
            # instance is passing, the instances seen passing within ``forget_after`` are
            # tried instead - a broken heartbeat path must not take healthy producers out
            # of service. Their breakers still eject the ones that are really gone.
            candidates = sorted((inst for inst, _h, _s in self._known.values()),
                                key=lambda i: i.id)
        now = self._clock()
        trials, scored = [], []
        for inst in candidates:
            if inst.id in exclude:
                continue
            state = getattr(self._breakers[inst.id], "state", STATE_CLOSED)
            if state == STATE_OPEN:
                continue
            load = self._load.get(inst.id)
            busy = bool(load and load.pending)
            if max_cost is not None and self._cost_locked(inst.id, now) > max_cost:
                continue  # (hedges) not known to be fast
            if state == STATE_HALF_OPEN:
                if not busy:  # the breaker's single trial call is still to be made
                    trials.append(inst)
                continue  # a trial is running: the breaker would refuse this call
            scored.append((self._score_locked(inst.id, now), inst))
        if not scored:
            return trials
        healthy_scores = [s for s, i in scored if not self._load[i.id].failing]
        best = min(healthy_scores or [s for s, _i in scored])
        # A failing instance is not better than the best: it takes its turn.
        scored = [(max(s, best) if self._load[i.id].failing else s, i) for s, i in scored]
        limit = best * self._tol_factor + self._tol_abs

        def last_pick(inst: Instance) -> int:
            load = self._load.get(inst.id)
            return load.last_pick if load else -1

        near = sorted((i for s, i in scored if s <= limit), key=last_pick)
        far = [i for _s, i in sorted((p for p in scored if p[0] > limit), key=lambda p: p[0])]
        return trials + near + far

    def plan(self) -> list[Instance]:
        """The order in which one request would try the instances (first one marked picked).

        Ejected instances (breaker open, recovery timeout not over) are left out; an
        instance due for its half-open trial comes first; then the instances as good as
        the best in turn (least recently picked first), then the slower ones.
        """
        with self._lock:
            order = self._order_locked()
            if order:
                self._mark_picked_locked(order[0].id)
            return order

    def pick(self, exclude: set[str] | frozenset = frozenset(),
             max_cost: float | None = None) -> tuple[Instance, int] | None:
        """The best routable instance not in ``exclude`` and the token of the call to it
        (already counted in flight, in the same locked step, so concurrent picks see it;
        finish it with :meth:`end`), or None.

        ``max_cost``: only instances whose expected latency is at most that (hedges go
        only to instances known to be fast: when every instance is slow, a hedge would
        only add load).
        """
        with self._lock:
            order = self._order_locked(exclude, max_cost)
            if not order:
                return None
            inst = order[0]
            self._mark_picked_locked(inst.id)
            token = next(self._tokens)
            load = self._load.get(inst.id)
            if load is not None:
                load.pending[token] = self._clock()
            return inst, token

    def _mark_picked_locked(self, iid: str) -> None:
        load = self._load.get(iid)
        if load is not None:
            load.last_pick = next(self._seq)

    # --- call bookkeeping (the balancer) --------------------------------------------
    def begin(self, instance_id: str) -> int:
        """A call to the instance starts; returns the token for :meth:`end`."""
        token = next(self._tokens)
        with self._lock:
            load = self._load.get(instance_id)
            if load is not None:
                load.pending[token] = self._clock()
        return token

    def end(self, instance_id: str, token: int, *, failed: bool, record: bool = True) -> float:
        """The call ``token`` finished; fold its latency into the cost (unless ``record``
        is false: a call the breaker refused says nothing about latency). Returns it."""
        with self._lock:
            now = self._clock()
            load = self._load.get(instance_id)
            if load is None:
                return 0.0
            started = load.pending.pop(token, now)
            rtt = max(0.0, now - started)
            if not record:
                return rtt
            sample = rtt
            if not failed and load.failing:
                load.cost = rtt  # answering again: start afresh
            elif sample > load.cost:
                load.cost = sample  # peak: a slower call counts at once
            else:
                w = math.exp(-max(0.0, now - load.stamp) / self._decay)
                load.cost = load.cost * w + sample * (1 - w)
            load.stamp = now
            load.failing = failed
            load.observed = True
            return rtt

    def load_snapshot(self) -> dict[str, dict]:
        """Per instance: current score inputs (operator status)."""
        with self._lock:
            now = self._clock()
            out = {}
            for iid, load in self._load.items():
                out[iid] = {
                    "latency_ms": round(load.cost * math.exp(-max(0.0, now - load.stamp)
                                                             / self._decay) * 1000, 1),
                    "in_flight": len(load.pending),
                }
            return out

    def snapshot(self) -> list[dict]:
        """What the operator status shows: every known instance, health and breaker state."""
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
