"""A small Consul HTTP API client plus two background helpers.

* :class:`ConsulClient` - one ``requests.Session``, timeouts on every call, token from a
  file (``X-Consul-Token``), agent service register/deregister, TTL check pass, blocking
  health queries, KV get/put of JSON values.
* :class:`ServiceRegistration` - keeps one service registered from a background thread:
  retries with backoff while Consul is down (never raises into the app), heartbeats the
  TTL check every ~TTL/3, re-registers when the agent lost the service (agent restart),
  deregisters on :meth:`ServiceRegistration.stop`.
* :class:`HealthWatcher` - background blocking queries on a service's passing instances;
  :meth:`HealthWatcher.instances` returns the last known list immediately, also while
  Consul is down.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import requests

__all__ = [
    "ConsulError",
    "ConsulUnavailable",
    "ConsulClient",
    "Instance",
    "ServiceRegistration",
    "HealthWatcher",
    "parse_duration",
    "stop_all_registrations",
]

log = logging.getLogger(__name__)


class ConsulError(Exception):
    """Consul answered with an unexpected HTTP status (``status`` attribute)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnavailable(ConsulError):
    """Consul could not be reached (connection refused, timeout, ...)."""


def parse_duration(value: str | int | float) -> float:
    """Parse a Consul/Go duration such as "10s", "1m", "500ms", "1m30s" into seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number, i, text = 0.0, "", 0, value.strip()
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(f"bad duration: {value!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:  # bare number: seconds
        total += float(number)
    return total


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        log.warning("cannot read Consul token file %s: %s", path, exc.strerror)
        return None
    return token or None


class ConsulClient:
    """Minimal Consul HTTP API client.

    Args:
        address: base URL, e.g. ``http://127.0.0.1:8500`` (``host:port`` gets ``http://``).
        token_file: path of a file holding an ACL token (re-read when it changes).
        connect_timeout / read_timeout: seconds, for every non-blocking call.
    """

    def __init__(
        self,
        address: str,
        token_file: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
    ) -> None:
        if "://" not in address:
            address = "http://" + address
        self.address = address.rstrip("/")
        self.token_file = token_file
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self._token_mtime: float | None = None
        self._token: str | None = None
        self._token_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _headers(self) -> dict[str, str]:
        if not self.token_file:
            return {}
        with self._token_lock:
            try:
                mtime = os.stat(self.token_file).st_mtime
            except OSError:
                mtime = None
            if mtime != self._token_mtime:
                self._token_mtime = mtime
                self._token = _read_token(self.token_file)
                if self._token:
                    from .observability import register_secret  # lazy: no Flask import cycle

                    register_secret(self._token)
            token = self._token
        return {"X-Consul-Token": token} if token else {}

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: bytes | str | None = None,
        timeout: tuple[float, float] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> requests.Response:
        url = f"{self.address}{path}"
        try:
            resp = self.session.request(
                method, url, params=params, data=data, headers=self._headers(),
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as exc:
            raise ConsulUnavailable(f"consul {method} {path}: {type(exc).__name__}") from exc
        if resp.status_code not in ok:
            body = resp.text[:200].strip()
            raise ConsulError(f"consul {method} {path}: HTTP {resp.status_code} {body}", resp.status_code)
        return resp

    def close(self) -> None:
        self.session.close()

    # --------------------------------------------------------------------- status
    def leader(self) -> str:
        """The raft leader address ("" when there is none)."""
        return self._request("GET", "/v1/status/leader").json() or ""

    # ---------------------------------------------------------------------- agent
    def register_service(
        self,
        name: str,
        service_id: str,
        address: str,
        port: int,
        ttl: str = "10s",
        deregister_after: str = "1m",
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        """``PUT /v1/agent/service/register`` with a TTL check, initially passing.

        The check's ID is ``service:<service_id>`` (see :meth:`check_id`).
        """
        payload = {
            "Name": name,
            "ID": service_id,
            "Address": address,
            "Port": int(port),
            "Tags": tags or [],
            "Meta": meta or {},
            "Check": {
                "CheckID": self.check_id(service_id),
                "Name": f"{name} TTL",
                "TTL": ttl,
                "Status": "passing",
                "DeregisterCriticalServiceAfter": deregister_after,
            },
        }
        self._request("PUT", "/v1/agent/service/register", data=json.dumps(payload))

    @staticmethod
    def check_id(service_id: str) -> str:
        return f"service:{service_id}"

    def deregister_service(self, service_id: str) -> None:
        self._request("PUT", f"/v1/agent/service/deregister/{quote(service_id, safe='')}")

    def pass_check(self, check_id: str, note: str = "") -> None:
        """``PUT /v1/agent/check/pass/<id>``; raises ConsulError if the agent lost it."""
        params = {"note": note} if note else None
        self._request("PUT", f"/v1/agent/check/pass/{quote(check_id, safe='')}", params=params)

    def agent_services(self) -> dict[str, Any]:
        return self._request("GET", "/v1/agent/services").json()

    # --------------------------------------------------------------------- health
    def health_service(
        self,
        name: str,
        passing: bool = True,
        index: int | None = None,
        wait: str = "30s",
    ) -> tuple[list[dict[str, Any]], int]:
        """``GET /v1/health/service/<name>``; a blocking query when ``index`` is given.

        Returns ``(entries, X-Consul-Index)``.
        """
        params: dict[str, Any] = {}
        if passing:
            params["passing"] = "true"
        timeout = self.timeout
        if index:
            params["index"] = str(index)
            params["wait"] = wait
            # Consul adds up to wait/16 of jitter; leave room for it.
            wait_s = parse_duration(wait)
            timeout = (self.timeout[0], wait_s + wait_s / 16 + self.timeout[1])
        resp = self._request("GET", f"/v1/health/service/{quote(name, safe='')}", params=params, timeout=timeout)
        try:
            new_index = int(resp.headers.get("X-Consul-Index", "0"))
        except ValueError:
            new_index = 0
        return resp.json() or [], new_index

    # ------------------------------------------------------------------------- KV
    def kv_get(self, key: str) -> Any | None:
        """JSON-decoded value of ``key``, or None when absent."""
        resp = self._request("GET", f"/v1/kv/{quote(key, safe='/')}", params={"raw": ""}, ok=(200, 404))
        if resp.status_code == 404:
            return None
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise ConsulError(f"KV {key}: value is not JSON") from exc

    def kv_put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-encoded) under ``key``."""
        resp = self._request("PUT", f"/v1/kv/{quote(key, safe='/')}", data=json.dumps(value))
        if resp.text.strip() != "true":
            raise ConsulError(f"KV put {key} was refused")

    def kv_delete(self, key: str, recurse: bool = False) -> None:
        params = {"recurse": ""} if recurse else None
        self._request("DELETE", f"/v1/kv/{quote(key, safe='/')}", params=params)


# ---------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------
_ACTIVE: "weakref.WeakSet[ServiceRegistration]" = weakref.WeakSet()


def stop_all_registrations(timeout: float = 2.0) -> None:
    """Stop (and deregister) every running ServiceRegistration of this process.

    Called from gunicorn's ``worker_exit`` hook and from ``atexit``; idempotent.
    """
    for reg in list(_ACTIVE):
        reg.stop(timeout=timeout)


atexit.register(stop_all_registrations)


class ServiceRegistration:
    """Keep a service registered in Consul from a background thread.

    Args:
        client: the ConsulClient.
        name / service_id / address / port: the service (``address`` may be a callable
            returning it, evaluated at each (re-)registration).
        ttl: TTL of the check (heartbeat every ``ttl/3``).
        deregister_after: ``DeregisterCriticalServiceAfter`` (crash clean-up by Consul).
        max_backoff: cap of the retry backoff while Consul is down (seconds).
    """

    def __init__(
        self,
        client: ConsulClient,
        name: str,
        service_id: str,
        address: str | Callable[[], str],
        port: int,
        ttl: str = "10s",
        deregister_after: str = "1m",
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
        max_backoff: float = 10.0,
    ) -> None:
        self.client = client
        self.name = name
        self.service_id = service_id
        self._address = address
        self.port = port
        self.ttl = ttl
        self.deregister_after = deregister_after
        self.tags = tags or []
        self.meta = meta or {}
        self.max_backoff = max_backoff
        self.interval = max(0.2, parse_duration(ttl) / 3)
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._stop_lock = threading.Lock()
        self.registrations = 0  # successful (re-)registrations
        self.last_error: str | None = None

    @property
    def address(self) -> str:
        return self._address() if callable(self._address) else self._address

    @property
    def registered(self) -> bool:
        """True while the last register/heartbeat succeeded."""
        return self._registered.is_set()

    def wait_registered(self, timeout: float) -> bool:
        return self._registered.wait(timeout)

    def start(self) -> "ServiceRegistration":
        """Start the background thread (returns immediately)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"consul-reg-{self.service_id}", daemon=True)
            self._thread.start()
            _ACTIVE.add(self)
        return self

    def _register(self) -> None:
        self.client.register_service(
            self.name, self.service_id, self.address, self.port,
            ttl=self.ttl, deregister_after=self.deregister_after, tags=self.tags, meta=self.meta,
        )
        self.client.pass_check(self.client.check_id(self.service_id), note="registered")
        self.registrations += 1
        self._registered.set()
        log.info("registered %s in consul as %s", self.name, self.service_id)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self._registered.is_set():
                    self._register()
                else:
                    self.client.pass_check(self.client.check_id(self.service_id))
                backoff = 0.5
                self.last_error = None
                wait = self.interval
            except ConsulError as exc:
                # Down, or the agent forgot us (restart): register again when it's back.
                if self._registered.is_set():
                    log.warning("consul heartbeat for %s failed (%s); re-registering", self.service_id, exc)
                else:
                    log.warning("consul registration of %s failed (%s); retrying in %.1fs", self.service_id, exc, backoff)
                self.last_error = str(exc)
                self._registered.clear()
                wait = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self.max_backoff)
            except Exception:  # never let the thread die
                log.exception("unexpected error in consul registration thread")
                self._registered.clear()
                wait = self.max_backoff
            self._stop.wait(wait)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop heartbeating and deregister (best effort, bounded by ``timeout``)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.client.deregister_service(self.service_id)
            log.info("deregistered %s from consul", self.service_id)
        except ConsulError as exc:
            log.warning("consul deregistration of %s failed: %s", self.service_id, exc)
        self._registered.clear()
        _ACTIVE.discard(self)


# ---------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """One passing instance of a service, as seen by Consul."""

    id: str
    service: str
    address: str
    port: int
    node: str = ""
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "Instance":
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        return cls(
            id=svc.get("ID", ""),
            service=svc.get("Service", ""),
            address=svc.get("Address") or node.get("Address", ""),
            port=int(svc.get("Port") or 0),
            node=node.get("Node", ""),
            tags=tuple(svc.get("Tags") or ()),
            meta=dict(svc.get("Meta") or {}),
        )


class HealthWatcher:
    """Follow the passing instances of a service with blocking queries.

    ``instances()`` never blocks on Consul: it returns the last known list (kept while
    Consul is down). ``on_change(list[Instance])`` is called from the watcher thread
    whenever the list changes.

    Args:
        client: the ConsulClient.
        service: service name to watch.
        wait: blocking-query wait (Consul duration).
        max_backoff: cap of the retry backoff while Consul is down (seconds).
    """

    def __init__(
        self,
        client: ConsulClient,
        service: str,
        wait: str = "30s",
        max_backoff: float = 10.0,
        on_change: Callable[[list[Instance]], None] | None = None,
    ) -> None:
        self.client = client
        self.service = service
        self.wait = wait
        self.max_backoff = max_backoff
        self.on_change = on_change
        self._instances: tuple[Instance, ...] = ()
        self._index = 0
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.consul_ok = False  # last query succeeded
        self.last_success: float | None = None  # time.time() of the last success
        self.last_error: str | None = None

    def instances(self) -> list[Instance]:
        """The last known passing instances (a copy; never blocks)."""
        return list(self._instances)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the first query has completed (successfully or not)."""
        return self._first.wait(timeout)

    def start(self) -> "HealthWatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"consul-watch-{self.service}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_once(self) -> None:
        """One (blocking) query; updates the list. Raises ConsulError on failure."""
        entries, index = self.client.health_service(self.service, passing=True, index=self._index or None, wait=self.wait)
        # Reset if the index went backwards (e.g. Consul restarted), per Consul's docs.
        self._index = index if index > 0 and index >= self._index else 0
        new = tuple(sorted((Instance.from_entry(e) for e in entries), key=lambda i: i.id))
        changed = new != self._instances
        self._instances = new
        self.consul_ok = True
        self.last_success = time.time()
        self.last_error = None
        if changed and self.on_change is not None:
            try:
                self.on_change(list(new))
            except Exception:
                log.exception("HealthWatcher on_change hook failed")

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
                backoff = 0.5
                # Guard against hot loops when Consul returns immediately.
                pause = 0.1 if time.monotonic() - started < 0.1 else 0.0
            except ConsulError as exc:
                self.consul_ok = False
                self.last_error = str(exc)
                self._index = 0
                log.warning("consul health query for %s failed: %s (keeping %d known instances)",
                            self.service, exc, len(self._instances))
                pause = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self.max_backoff)
            except Exception:
                log.exception("unexpected error in HealthWatcher")
                self.consul_ok = False
                pause = self.max_backoff
            self._first.set()
            if pause:
                self._stop.wait(pause)
