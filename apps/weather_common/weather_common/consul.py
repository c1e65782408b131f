"""A small Consul HTTP API client plus two background helpers.

* :class:`ConsulClient` - on :class:`~weather_common.deadline.HttpClient`: every call is
  bounded by ONE wall-clock deadline (``deadline=``; blocking queries get wait + wait/16 +
  a margin) and a body cap; token from a file (``X-Consul-Token``), agent service
  register/deregister, TTL check pass, blocking health queries, KV get/put/CAS of strict
  JSON values.
* :class:`ServiceRegistration` - keeps one service registered from a background thread:
  retries with backoff while Consul is down (never raises into the app), heartbeats the
  TTL check every ~TTL/3, re-registers when the agent lost the service (agent restart),
  deregisters on :meth:`ServiceRegistration.stop`.
* :class:`HealthWatcher` - background blocking queries on a service's passing instances;
  :meth:`HealthWatcher.instances` returns the last known list immediately, also while
  Consul is down; a bad catalog entry is skipped (and counted), not the whole answer.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import ipaddress
import logging
import re
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from . import strictjson
from .deadline import Deadline, HttpClient, HttpError, HttpResponse

__all__ = [
    "ConsulError",
    "ConsulUnavailable",
    "ConsulBadValue",
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
    """Consul could not be reached, did not answer by the deadline, or answered garbage.
    ``kind``: the :class:`~weather_common.deadline.HttpError` kind ("timeout",
    "connect", "too_large", "protocol")."""

    def __init__(self, message: str, status: int | None = None, kind: str = "connect") -> None:
        super().__init__(message, status)
        self.kind = kind


class ConsulBadValue(ConsulError):
    """Consul answered, but the KV value is not strict JSON (garbage in KV is not an
    outage: breakers should not count it)."""


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
    """Minimal Consul HTTP API client; every call ends by ONE deadline.

    Args:
        address: base URL, e.g. ``http://127.0.0.1:8500`` (``host:port`` gets ``http://``).
        token_file: path of a file holding an ACL token (re-read when it changes).
        connect_timeout: accepted for compatibility and ignored: the one deadline covers
            DNS, connect, send and the whole answer.
        read_timeout: the default deadline (seconds) of every non-blocking call, used
            when a method gets no ``deadline=``.
        deadline: same as ``read_timeout`` (wins when given).
        blocking_margin: extra seconds a blocking query gets on top of ``wait + wait/16``.
        max_body: body cap of every answer (bytes).
        http: an :class:`~weather_common.deadline.HttpClient` to use (tests inject one
            with a slow resolver).

    Every method takes ``deadline=`` (a :class:`Deadline` or seconds). Errors:
    :class:`ConsulUnavailable` (not reached, timed out, garbage answer; ``.kind`` is the
    HttpError kind) and :class:`ConsulError` (an unexpected HTTP status in ``.status``).
    """

    def __init__(
        self,
        address: str,
        token_file: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        *,
        deadline: float | None = None,
        blocking_margin: float = 2.0,
        max_body: int = 4 * 1024 * 1024,
        http: HttpClient | None = None,
    ) -> None:
        if "://" not in address:
            address = "http://" + address
        self.address = address.rstrip("/")
        self.token_file = token_file
        self.default_deadline = float(deadline) if deadline is not None else float(read_timeout)
        self.blocking_margin = float(blocking_margin)
        self.timeout = (connect_timeout, read_timeout)  # informational (old attribute)
        self.max_body = int(max_body)
        self.http = http or HttpClient(max_body=self.max_body, user_agent="weather-consul",
                                       default_deadline=self.default_deadline)
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

    def _deadline(self, deadline: Deadline | float | None) -> Deadline:
        return Deadline.coerce(deadline, self.default_deadline)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: bytes | str | None = None,
        deadline: Deadline | float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> HttpResponse:
        url = f"{self.address}{path}"
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            resp = self.http.request(
                method, url, params=params, body=data, headers=self._headers(),
                deadline=self._deadline(deadline), max_body=self.max_body,
            )
        except HttpError as exc:
            raise ConsulUnavailable(f"consul {method} {path}: {exc.kind} ({exc.phase})", kind=exc.kind) from None
        if resp.status not in ok:
            body = resp.body[:200].decode("utf-8", "replace").strip()
            raise ConsulError(f"consul {method} {path}: HTTP {resp.status} {body}", resp.status)
        return resp

    @staticmethod
    def _json(resp: HttpResponse, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise ConsulUnavailable(f"consul {what}: answer is not strict JSON", kind="protocol") from None

    def close(self) -> None:
        self.http.close()

    # --------------------------------------------------------------------- status
    def leader(self, deadline: Deadline | float | None = None) -> str:
        """The raft leader address ("" when there is none)."""
        value = self._json(self._request("GET", "/v1/status/leader", deadline=deadline), "leader")
        return value if isinstance(value, str) else ""

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
        deadline: Deadline | float | None = None,
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
        self._request("PUT", "/v1/agent/service/register", data=strictjson.dumps(payload), deadline=deadline)

    @staticmethod
    def check_id(service_id: str) -> str:
        return f"service:{service_id}"

    def deregister_service(self, service_id: str, deadline: Deadline | float | None = None) -> None:
        self._request("PUT", f"/v1/agent/service/deregister/{quote(service_id, safe='')}", deadline=deadline)

    def pass_check(self, check_id: str, note: str = "", deadline: Deadline | float | None = None) -> None:
        """``PUT /v1/agent/check/pass/<id>``; raises ConsulError if the agent lost it."""
        params = {"note": note} if note else None
        self._request("PUT", f"/v1/agent/check/pass/{quote(check_id, safe='')}", params=params, deadline=deadline)

    def agent_services(self, deadline: Deadline | float | None = None) -> dict[str, Any]:
        value = self._json(self._request("GET", "/v1/agent/services", deadline=deadline), "agent services")
        if not isinstance(value, dict):
            raise ConsulUnavailable("consul agent services: answer is not an object", kind="protocol")
        return value

    # --------------------------------------------------------------------- health
    def blocking_deadline(self, wait: str | float) -> float:
        """Seconds a blocking query with ``wait`` may take: wait + wait/16 (Consul's
        jitter) + ``blocking_margin``."""
        wait_s = parse_duration(wait)
        return wait_s + wait_s / 16 + self.blocking_margin

    def health_service(
        self,
        name: str,
        passing: bool = True,
        index: int | None = None,
        wait: str = "30s",
        deadline: Deadline | float | None = None,
    ) -> tuple[list[Any], int]:
        """``GET /v1/health/service/<name>``; a blocking query when ``index`` is given
        (then the default deadline is :meth:`blocking_deadline`).

        Returns ``(entries, X-Consul-Index)``. ``entries`` is the decoded JSON list as
        Consul sent it (not checked per entry: :class:`HealthWatcher` does that).
        """
        params: dict[str, Any] = {}
        if passing:
            params["passing"] = "true"
        if index:
            params["index"] = str(index)
            params["wait"] = wait
            if deadline is None:
                deadline = self.blocking_deadline(wait)
        resp = self._request("GET", f"/v1/health/service/{quote(name, safe='')}", params=params, deadline=deadline)
        try:
            new_index = int(resp.headers.get("x-consul-index", "0"))
        except ValueError:
            new_index = 0
        entries = self._json(resp, f"health {name}")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ConsulUnavailable(f"consul health {name}: answer is not a list", kind="protocol")
        return entries, max(0, new_index)

    # ------------------------------------------------------------------------- KV
    @staticmethod
    def _kv_path(key: str) -> str:
        return f"/v1/kv/{quote(key, safe='/')}"

    def kv_get(self, key: str, deadline: Deadline | float | None = None) -> Any | None:
        """JSON-decoded value of ``key``, or None when absent. A value that is not strict
        JSON raises ConsulError."""
        resp = self._request("GET", self._kv_path(key), params={"raw": ""}, ok=(200, 404), deadline=deadline)
        if resp.status == 404:
            return None
        try:
            return strictjson.loads(resp.body)
        except ValueError:
            raise ConsulBadValue(f"KV {key}: value is not strict JSON") from None

    def kv_get_index(self, key: str, deadline: Deadline | float | None = None) -> tuple[Any | None, int]:
        """``(decoded value | None, ModifyIndex)``; ``(None, 0)`` when the key is absent
        (``kv_cas(key, v, 0)`` then creates it only if nobody else did)."""
        resp = self._request("GET", self._kv_path(key), ok=(200, 404), deadline=deadline)
        if resp.status == 404:
            return None, 0
        items = self._json(resp, f"KV {key}")
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise ConsulUnavailable(f"consul KV {key}: unexpected answer shape", kind="protocol")
        item = items[0]
        index = item.get("ModifyIndex")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConsulUnavailable(f"consul KV {key}: bad ModifyIndex", kind="protocol")
        raw = item.get("Value")
        if raw is None:
            return None, index
        try:
            return strictjson.loads(base64.b64decode(raw, validate=True)), index
        except (ValueError, TypeError, binascii.Error):
            raise ConsulBadValue(f"KV {key}: value is not strict JSON") from None

    def kv_put(self, key: str, value: Any, deadline: Deadline | float | None = None) -> None:
        """Store ``value`` (strict JSON) under ``key``."""
        resp = self._request("PUT", self._kv_path(key), data=strictjson.dumps(value), deadline=deadline)
        if resp.body.strip() != b"true":
            raise ConsulError(f"KV put {key} was refused")

    def kv_cas(self, key: str, value: Any, index: int, deadline: Deadline | float | None = None) -> bool:
        """``PUT ?cas=<index>``: True if stored, False when another writer won (the
        key's ModifyIndex is no longer ``index``; 0 = only if absent)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError("cas index must be an int >= 0")
        resp = self._request("PUT", self._kv_path(key), params={"cas": str(index)},
                             data=strictjson.dumps(value), deadline=deadline)
        answer = resp.body.strip()
        if answer not in (b"true", b"false"):
            raise ConsulUnavailable(f"consul KV cas {key}: unexpected answer", kind="protocol")
        return answer == b"true"

    def kv_delete(self, key: str, recurse: bool = False, deadline: Deadline | float | None = None) -> None:
        params = {"recurse": ""} if recurse else None
        self._request("DELETE", self._kv_path(key), params=params, deadline=deadline)


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
            self.client.deregister_service(self.service_id, deadline=max(0.5, timeout))
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
    def from_entry(cls, entry: Any) -> "Instance":
        """Build an Instance from one ``/v1/health/service`` entry.

        Raises ``ValueError`` (with a short reason) for an entry we must not use: not an
        object, no service ID, an address that is neither an IP nor a host name, a port
        outside 1..65535 (booleans and strings are not ports).
        """
        if not isinstance(entry, dict):
            raise ValueError("entry is not an object")
        svc = entry.get("Service")
        node = entry.get("Node") or {}
        if not isinstance(svc, dict):
            raise ValueError("entry has no Service object")
        if not isinstance(node, dict):
            raise ValueError("entry Node is not an object")
        sid = svc.get("ID")
        if not isinstance(sid, str) or not sid or len(sid) > 256:
            raise ValueError("service ID missing or not a string")
        address = svc.get("Address") or node.get("Address")
        if not _valid_address(address):
            raise ValueError("address missing or not an IP / host name")
        port = svc.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError("port not an integer in 1..65535")
        tags = svc.get("Tags") or ()
        meta = svc.get("Meta") or {}
        return cls(
            id=sid,
            service=svc.get("Service") if isinstance(svc.get("Service"), str) else "",
            address=address,
            port=port,
            node=node.get("Node") if isinstance(node.get("Node"), str) else "",
            tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
            meta={k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(meta, dict) else {},
        )


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _valid_address(address: Any) -> bool:
    """An IPv4/IPv6 literal or a DNS host name (no scheme, port, path, spaces)."""
    if not isinstance(address, str) or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return bool(_HOSTNAME.match(address))
    return not (ip.is_unspecified or ip.is_multicast)


class HealthWatcher:
    """Follow the passing instances of a service with blocking queries.

    ``instances()`` never blocks on Consul: it returns the last known list (kept while
    Consul is down). ``on_change(list[Instance])`` is called from the watcher thread
    whenever the list changes. The list is sorted by (ID, node); Consul keeps service IDs
    unique per node only, so one ID may appear once per node (never dropped here: a
    copy registered on another node must not hide the real entry).

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
        self.skipped_entries = 0  # bad catalog entries skipped, all queries together
        self.last_skipped = 0  # ... in the last successful query
        self._logged_bad: set[str] = set()  # log each bad entry once (bounded)

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
        parsed = self._parse(entries)
        if entries and not parsed:
            # every entry is garbage: that is no evidence that no instance is up; keep
            # the last known list (counted in skipped_entries, logged once per entry)
            parsed = list(self._instances)
        new = tuple(sorted(parsed, key=lambda i: (i.id, i.node)))
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

    def _parse(self, entries: list[Any]) -> list[Instance]:
        """Usable instances; each bad entry is skipped, counted, and logged once."""
        good: dict[tuple[str, str], Instance] = {}
        skipped = 0
        for entry in entries:
            try:
                inst = Instance.from_entry(entry)
            except ValueError as exc:
                skipped += 1
                sid = entry.get("Service", {}).get("ID") if isinstance(entry, dict) and isinstance(entry.get("Service"), dict) else None
                label = sid if isinstance(sid, str) and len(sid) <= 256 else "<no id>"
                mark = f"{label}|{exc}"
                if mark not in self._logged_bad and len(self._logged_bad) < 1000:
                    self._logged_bad.add(mark)
                    log.warning("skipping bad catalog entry of %s (id %r): %s", self.service, label, exc)
                continue
            # A service ID is unique per node only: the same ID on two nodes is two
            # entries (a rogue copy of another node's ID must not hide the real one;
            # the caller decides which to trust). On one node: keep the first.
            good.setdefault((inst.node, inst.id), inst)
        self.skipped_entries += skipped
        self.last_skipped = skipped
        return list(good.values())

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
