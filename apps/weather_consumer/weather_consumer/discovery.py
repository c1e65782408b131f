"""Where the producer instances come from: a static list, or Consul's health API.

Both feed :meth:`InstancePool.update`. The Consul variant runs blocking queries
(``GET /v1/health/service/<name>?passing=true&index=..&wait=..``) in a background
thread, so a request never waits on Consul; when Consul is unreachable the pool keeps
the last known list and the watcher retries with a capped backoff. Consul's entries
are untrusted: only those :class:`~weather_consumer.admission.ProducerPolicy` admits
reach the pool.
"""

from __future__ import annotations

import logging

from .admission import REASONS, ProducerPolicy, Rejection
from .pool import Instance, InstancePool

log = logging.getLogger(__name__)


class StaticDiscovery:
    """A fixed list of producer URLs (tests, benchmarks, set-ups without Consul)."""

    kind = "static"

    def __init__(self, pool: InstancePool, instances: list[Instance]):
        self.pool = pool
        self.instances = instances

    def start(self) -> None:
        self.pool.update(self.instances)

    def stop(self) -> None:
        pass

    def status(self) -> dict:
        return {"kind": self.kind, "ok": True}


class ConsulDiscovery:
    """Producer instances from weather_common's :class:`HealthWatcher`.

    The watcher runs blocking queries on ``/v1/health/service/<name>?passing=true`` in
    its own thread and calls back on every change; while Consul is down it keeps (and we
    keep) the last known list.

    Each entry goes through two filters:

    1. *Garbage* (no ID, no usable address or port, not an instance): skipped and counted
       (``skipped_entries``). If EVERY entry of a non-empty list is garbage, the pool keeps
       its last known list: a broken answer is no news about the producers.
    2. *Policy* (:class:`~weather_consumer.admission.ProducerPolicy`: an ID the entry's
       node does not own, an address outside ``PRODUCER_CIDRS``, a duplicate ID): left
       out, counted by reason in ``status()["rejected"]`` (the current list), and logged
       at WARNING when the set of rejected entries changes. Such entries are simply
       excluded, never a reason to keep an old list: if the only passing entries are
       rogue, the pool becomes empty and the consumer does what it does when no producer
       is passing (panic routing to the recently known ones, then the saved answers).
    """

    kind = "consul"

    def __init__(self, pool: InstancePool, watcher, *, initial_wait: float = 1.0,
                 policy: ProducerPolicy | None = None):
        self.pool = pool
        self.initial_wait = initial_wait
        self.watcher = watcher
        self.policy = policy or ProducerPolicy(watcher.service)
        self.skipped = 0  # bad catalog entries skipped
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)  # in the current list
        self._rejections: frozenset[Rejection] = frozenset()
        watcher.on_change = self._on_change

    def _on_change(self, instances) -> None:
        """A new passing list: bad entries are skipped, rejected ones left out (see the
        class docstring); the rest goes to the pool."""
        try:
            entries = list(instances)
        except Exception:
            log.exception("discovery: unreadable instance list ignored; keeping the last known")
            return
        parsed: list[tuple[Instance, str]] = []
        for entry in entries:
            inst = self._convert(entry)
            if inst is None:
                self.skipped += 1
                log.warning("discovery: skipped a bad catalog entry (%s)", type(entry).__name__)
            else:
                parsed.append((inst, self._node(entry)))
        if entries and not parsed:
            # Every entry is garbage: that is not "no producer is passing". Keep the
            # last known list rather than emptying the pool.
            log.warning("discovery: every catalog entry was bad; keeping the last known list")
            return
        good, rejected = self.policy.admit(parsed)
        self._note_rejections(rejected)
        self.pool.update(good)

    def _note_rejections(self, rejected: list[Rejection]) -> None:
        current = frozenset(rejected)
        for r in sorted(current - self._rejections, key=lambda r: (r.id, r.node)):
            log.warning("discovery: rejected producer entry %r on node %r at %s (%s)",
                        r.id, r.node, r.address, REASONS[r.reason])
        if self._rejections and not current:
            log.info("discovery: no producer entry is rejected any more")
        self._rejections = current
        counts = dict.fromkeys(REASONS, 0)
        for r in current:
            counts[r.reason] += 1
        self.rejected = counts

    @staticmethod
    def _node(entry) -> str:
        """The Consul node an entry is registered on ("" when unknown)."""
        try:
            node = entry.node
        except Exception:
            return ""
        return node if isinstance(node, str) and len(node) <= 255 else ""

    @staticmethod
    def _convert(entry) -> Instance | None:
        try:
            iid, address, port = entry.id, entry.address, entry.port
        except Exception:
            return None
        if not (isinstance(iid, str) and iid.strip() and len(iid) <= 200):
            return None
        if not (isinstance(address, str) and address.strip() and len(address) <= 255
                and not any(c in address for c in "/?#@ \t\r\n")):
            return None
        if isinstance(port, bool):
            return None
        try:
            port = int(port)
        except (TypeError, ValueError, OverflowError):
            return None
        if not 0 < port < 65536:
            return None
        return Instance(id=iid.strip(), address=address.strip(), port=port)

    def start(self) -> None:
        self.watcher.start()
        # Bounded wait for the first answer so the first requests have instances;
        # requests themselves never wait on Consul.
        self.watcher.wait_ready(self.initial_wait)

    def stop(self) -> None:
        self.watcher.stop(timeout=0.5)
        self.watcher.client.close()

    def status(self) -> dict:
        return {"kind": self.kind, "ok": bool(self.watcher.consul_ok),
                "last_error": self.watcher.last_error, "skipped_entries": self.skipped,
                "rejected": dict(self.rejected)}

