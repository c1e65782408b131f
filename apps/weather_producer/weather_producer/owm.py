"""OpenWeatherMap client and its error taxonomy.

* :class:`UnknownZip` - OWM 404: the client's problem; not an outage.
* :class:`OwmAuthError` - OWM 401 (or no key configured): a configuration error.
* :class:`OwmOutage` - 5xx, connection errors, garbage or implausible payloads (reason
  ``owm_outage``); subclasses :class:`OwmTimeout` (the deadline was spent: ``owm_slow``)
  and :class:`OwmQuota` (OWM said 429: ``owm_quota``). The breaker counts every outage
  (and any unexpected exception) as a failure, so a rate-limited OWM is backed off too.

Every call runs on :class:`weather_common.deadline.HttpClient` with ONE deadline for the
whole call (DNS, connect, TLS, send, headers, body): a server that drips one byte per
0.8 s or never answers is cut at the deadline. The body is capped (``MAX_BODY``, 64 KiB:
a real answer is under 1 KiB) and the payload is checked (:func:`parse_payload`) before
anything of it is cached or served.

No exception message ever contains the API key: HttpClient's messages never include the
query string, and OWM's own error bodies are not echoed.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import threading
import time
from typing import Any

from weather_common.deadline import Deadline, HttpClient, HttpError, HttpTimeout
from weather_common.observability import register_secret
from weather_common.validation import TEMP_MAX_C, TEMP_MIN_C, TEXT_MAX_LEN

__all__ = [
    "OwmError", "UnknownZip", "OwmAuthError", "OwmOutage", "OwmTimeout", "OwmQuota",
    "ApiKeyFile", "OwmClient", "parse_payload", "MAX_BODY",
]

#: cap on an OWM answer body (a real current-weather answer is ~500 bytes)
MAX_BODY = 64 * 1024
#: ``dt`` (observation time) must fall between this and now + DT_MAX_AHEAD
DT_MIN = 946_684_800  # 2000-01-01T00:00:00Z
DT_MAX_AHEAD = 86_400


class OwmError(Exception):
    """Base class of the OWM client errors (messages are safe to log and show).

    ``reason`` is the wire reason code of a marked "no data" answer (apps/CONTRACT.md).
    """

    reason = "owm_outage"


class UnknownZip(OwmError):
    """OWM does not know the zip (HTTP 404)."""

    reason = "unknown_zip"


class OwmAuthError(OwmError):
    """OWM rejected the API key (HTTP 401), or no key is configured."""

    reason = "owm_config"


class OwmOutage(OwmError):
    """OWM is unusable right now (5xx, connection error, bad or implausible payload)."""

    reason = "owm_outage"


class OwmTimeout(OwmOutage):
    """The call's deadline was spent (DNS, connect, headers or a dripping body)."""

    reason = "owm_slow"


class OwmQuota(OwmOutage):
    """OWM answered 429: our key is over its rate limit (still an outage: back off)."""

    reason = "owm_quota"


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


def _iso_utc(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > TEXT_MAX_LEN or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} is not a short printable string")
    return value


def parse_payload(data: Any, now: float | None = None) -> dict[str, Any]:
    """OWM's current-weather JSON -> ``{"city", "description", "temperature_c", "observed_at"}``.

    Raises ValueError unless: ``name`` and ``weather[0].description`` are strings of at
    most 200 printable characters; ``main.temp`` is a finite number (not a boolean) within
    -100..70 degrees C; ``dt`` is an integer between 2000-01-01 and now + 1 day.
    """
    if not isinstance(data, dict):
        raise ValueError("not an object")
    weather = data.get("weather")
    if not isinstance(weather, list) or not weather or not isinstance(weather[0], dict):
        raise ValueError("weather is not a non-empty list of objects")
    description = _text(weather[0].get("description"), "weather[0].description")
    city = _text(data.get("name"), "name")
    main = data.get("main")
    temp = main.get("temp") if isinstance(main, dict) else None
    if isinstance(temp, bool) or not isinstance(temp, (int, float)):
        raise ValueError("main.temp is not a number")
    try:
        temp = float(temp)
    except OverflowError:  # an int too large for a float
        raise ValueError("main.temp is out of range") from None
    if not math.isfinite(temp) or not TEMP_MIN_C <= temp <= TEMP_MAX_C:
        raise ValueError("main.temp is out of range")
    dt = data.get("dt")
    now = time.time() if now is None else now
    if isinstance(dt, bool) or not isinstance(dt, int) or not DT_MIN <= dt <= now + DT_MAX_AHEAD:
        raise ValueError("dt is not a plausible epoch")
    return {"city": city, "description": description, "temperature_c": temp, "observed_at": _iso_utc(dt)}


class OwmClient:
    """Calls ``/data/2.5/weather`` on :class:`HttpClient`, one deadline per call."""

    def __init__(self, base_url: str, key: ApiKeyFile, deadline: float = 1.5,
                 http: HttpClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.deadline = float(deadline)
        self.http = http or HttpClient(max_body=MAX_BODY, user_agent="weather-producer")

    def fetch(self, zip_code: str, country: str, deadline: Deadline | float | None = None) -> dict[str, Any]:
        """Current weather, normalised to the producer's fields.

        ``deadline``: the caller's budget; the call ends by the earlier of it and
        ``self.deadline`` seconds from now.
        Returns ``{"city", "description", "temperature_c", "observed_at"}``.
        Raises UnknownZip, OwmAuthError or OwmOutage (OwmTimeout, OwmQuota).
        """
        key = self.key.get()
        if not key:
            raise OwmAuthError(self.key.error or "no OWM API key configured")
        dl = Deadline.coerce(deadline, self.deadline).within(self.deadline)
        params = {"zip": f"{zip_code},{country}", "appid": key, "units": "metric"}
        try:
            resp = self.http.get(f"{self.base_url}/data/2.5/weather", params=params, deadline=dl,
                                 max_body=MAX_BODY, headers={"Accept": "application/json"})
        except HttpTimeout as exc:
            raise OwmTimeout(f"OpenWeatherMap timed out ({getattr(exc, 'phase', None) or 'deadline'})") from None
        except HttpError as exc:
            raise OwmOutage(f"OpenWeatherMap unreachable ({exc.kind})") from None
        status = resp.status
        if status == 404:
            raise UnknownZip("unknown zip")
        if status == 401:
            raise OwmAuthError("OpenWeatherMap rejected the API key (HTTP 401)")
        if status == 429:
            raise OwmQuota("OpenWeatherMap rate limit exceeded (HTTP 429)")
        if status != 200:
            raise OwmOutage(f"OpenWeatherMap error (HTTP {status})")
        try:
            return parse_payload(resp.json())
        except (ValueError, OverflowError, TypeError, RecursionError):
            raise OwmOutage("OpenWeatherMap sent an unexpected answer") from None

    def close(self) -> None:
        self.http.close()
