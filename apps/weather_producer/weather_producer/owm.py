"""OpenWeatherMap client and its error taxonomy.

* :class:`UnknownZip` - OWM 404: the client's problem; not an outage.
* :class:`OwmAuthError` - OWM 401 (or no key configured): a configuration error.
* :class:`OwmOutage` - 429, 5xx, timeouts, connection errors, garbage: an outage
  (the only exceptions the breaker counts as failures).

No exception message ever contains the API key: requests' exceptions embed the URL
(with ``appid=``), so they are summarised by type, never ``str()``-ed.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
from typing import Any

import requests

from weather_common.observability import register_secret

__all__ = ["OwmError", "UnknownZip", "OwmAuthError", "OwmOutage", "ApiKeyFile", "OwmClient"]


class OwmError(Exception):
    """Base class of the OWM client errors (messages are safe to log and show)."""


class UnknownZip(OwmError):
    """OWM does not know the zip (HTTP 404)."""


class OwmAuthError(OwmError):
    """OWM rejected the API key (HTTP 401), or no key is configured."""


class OwmOutage(OwmError):
    """OWM is unusable right now (429, 5xx, timeout, connection error, bad payload)."""


class ApiKeyFile:
    """The OWM key, read from a file and re-read when the file changes.

    The key is registered with the log redactor; it is never logged.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._key: str | None = None
        self.error: str | None = "OWM_API_KEY_FILE is not set" if not path else None

    def get(self) -> str | None:
        """The current key, or None (``error`` says why)."""
        if not self.path:
            return None
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError as exc:
                self._key, self._mtime = None, None
                self.error = f"cannot read the OWM API key file ({exc.strerror})"
                return None
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    with open(self.path, encoding="utf-8") as fh:
                        key = fh.read().strip()
                except OSError as exc:
                    self._key = None
                    self.error = f"cannot read the OWM API key file ({exc.strerror})"
                    return None
                self._key = key or None
                self.error = None if key else "the OWM API key file is empty"
                register_secret(key)
            return self._key


def _iso_utc(epoch: Any) -> str | None:
    try:
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


class OwmClient:
    """Calls ``/data/2.5/weather`` on one ``requests.Session`` with timeouts."""

    def __init__(self, base_url: str, key: ApiKeyFile, connect_timeout: float = 0.5, read_timeout: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()

    def fetch(self, zip_code: str, country: str) -> dict[str, Any]:
        """Current weather, normalised to the producer's fields.

        Returns ``{"city", "description", "temperature_c", "observed_at"}``.
        Raises UnknownZip, OwmAuthError or OwmOutage.
        """
        key = self.key.get()
        if not key:
            raise OwmAuthError(self.key.error or "no OWM API key configured")
        params = {"zip": f"{zip_code},{country}", "appid": key, "units": "metric"}
        try:
            resp = self.session.get(f"{self.base_url}/data/2.5/weather", params=params, timeout=self.timeout)
        except requests.Timeout as exc:
            raise OwmOutage(f"OpenWeatherMap timed out ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise OwmOutage(f"OpenWeatherMap unreachable ({type(exc).__name__})") from None
        status = resp.status_code
        if status == 404:
            raise UnknownZip("unknown zip")
        if status == 401:
            raise OwmAuthError("OpenWeatherMap rejected the API key (HTTP 401)")
        if status == 429:
            raise OwmOutage("OpenWeatherMap rate limit exceeded (HTTP 429)")
        if status != 200:
            raise OwmOutage(f"OpenWeatherMap error (HTTP {status})")
        try:
            data = resp.json()
            weather = (data.get("weather") or [{}])[0]
            return {
                "city": data.get("name") or "",
                "description": weather.get("description") or "",
                "temperature_c": float(data["main"]["temp"]),
                "observed_at": _iso_utc(data.get("dt")),
            }
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise OwmOutage("OpenWeatherMap sent an unexpected answer") from None
