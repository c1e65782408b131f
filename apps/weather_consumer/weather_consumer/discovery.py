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
        watcher.on_change = self._on_change

    def _on_change(self, instances) -> None:
        self.pool.update(Instance(id=i.id, address=i.address, port=int(i.port))
                         for i in instances if i.id and i.address and i.port)

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
                "last_error": self.watcher.last_error}
