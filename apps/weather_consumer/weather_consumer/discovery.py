"""Where the producer instances come from: a static list, or Consul's health API.

Both feed :meth:`InstancePool.update`. The Consul variant runs blocking queries
(``GET /v1/health/service/<name>?passing=true&index=..&wait=..``) in a background
thread, so a request never waits on Consul; when Consul is unreachable the pool keeps
the last known list and the watcher retries with a capped backoff.
"""

from __future__ import annotations

import logging

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
    """

    kind = "consul"

    def __init__(self, pool: InstancePool, watcher, *, initial_wait: float = 1.0):
        self.pool = pool
        self.initial_wait = initial_wait
        self.watcher = watcher
        self.skipped = 0  # bad catalog entries skipped
        watcher.on_change = self._on_change

    def _on_change(self, instances) -> None:
        """A new passing list: one bad entry is skipped (and logged); the rest is used.

        If the list as a whole cannot be read, the pool keeps what it had.
        """
        try:
            entries = list(instances)
        except Exception:
            log.exception("discovery: unreadable instance list ignored; keeping the last known")
            return
        good: list[Instance] = []
        for entry in entries:
            inst = self._convert(entry)
            if inst is None:
                self.skipped += 1
                log.warning("discovery: skipped a bad catalog entry (%s)", type(entry).__name__)
            else:
                good.append(inst)
        if entries and not good:
            # Every entry is garbage: that is not "no producer is passing". Keep the
            # last known list rather than emptying the pool.
            log.warning("discovery: every catalog entry was bad; keeping the last known list")
            return
        self.pool.update(good)

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
                "last_error": self.watcher.last_error, "skipped_entries": self.skipped}
