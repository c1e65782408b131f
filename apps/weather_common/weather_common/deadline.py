"""One wall-clock deadline per remote call, and an HTTP client that keeps it.

``requests``' ``timeout=(connect, read)`` bounds each socket operation, not the call: a
server that sends one byte every 0.8 s keeps a read timeout of 1 s from ever firing, and
DNS is not bounded at all. :class:`HttpClient` gives every step of a request (DNS,
connect, TLS handshake, send, status line, headers, body) only the REMAINING part of one
:class:`Deadline`, so the call returns by the deadline (plus a few ms) whatever the peer
does, and the body is capped (``max_body``).

Standard library only (``socket``, ``ssl``, ``http.client`` for the response parsing)
plus certifi's CA bundle for https (the same bundle ``requests`` uses).

Error messages never contain the URL's query string (it can hold an API key).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import math
import queue
import socket
import ssl
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from . import strictjson

__all__ = [
    "Deadline",
    "HttpError",
    "HttpTimeout",
    "HttpConnectError",
    "HttpBodyTooLarge",
    "HttpProtocolError",
    "HttpResponse",
    "HttpClient",
]

#: smallest socket timeout we set: 0.0 would switch the socket to non-blocking mode
_MIN_TIMEOUT = 0.001


class Deadline:
    """A point in time on a monotonic clock; ``remaining()`` is what is left of it."""

    __slots__ = ("_clock", "_at")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        seconds = float(seconds)
        if math.isnan(seconds) or math.isinf(seconds):
            raise ValueError("a deadline needs a finite number of seconds")
        self._clock = clock
        self._at = clock() + max(0.0, seconds)

    @classmethod
    def _at_time(cls, at: float, clock: Callable[[], float]) -> "Deadline":
        d = cls.__new__(cls)
        d._clock = clock
        d._at = at
        return d

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - self._clock())

    def remaining_ms(self) -> int:
        """Whole milliseconds left (rounded down), e.g. for an ``X-Deadline-Ms`` header."""
        return int(self.remaining() * 1000)

    def expired(self) -> bool:
        return self._clock() >= self._at

    def within(self, seconds: float) -> "Deadline":
        """The earlier of this deadline and ``now + seconds``."""
        seconds = float(seconds)
        if math.isnan(seconds):
            raise ValueError("a deadline needs a finite number of seconds")
        return Deadline._at_time(min(self._at, self._clock() + max(0.0, seconds)), self._clock)

    @classmethod
    def coerce(cls, d: "Deadline | float | int | None", default: float) -> "Deadline":
        """A Deadline as is; a number of seconds from now; None -> ``default`` seconds."""
        if isinstance(d, Deadline):
            return d
        if d is None:
            return cls(default)
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise TypeError(f"deadline must be a Deadline or seconds, not {type(d).__name__}")
        return cls(d)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


# ---------------------------------------------------------------------------- errors


class HttpError(Exception):
    """A request that did not produce a complete HTTP response. ``kind`` says why;
    ``phase`` where (dns, connect, tls, send, headers, body). The message names method,
    scheme, host, port and path, never the query string."""

    kind = "error"

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase


class HttpTimeout(HttpError):
    """The deadline was spent in DNS, connect, TLS, send, headers or body."""

    kind = "timeout"


class HttpConnectError(HttpError):
    """DNS failure, connection refused or reset, TLS failure, peer closed early."""

    kind = "connect"


class HttpBodyTooLarge(HttpError):
    """The body (or its declared Content-Length) is over ``max_body``."""

    kind = "too_large"


class HttpProtocolError(HttpError):
    """Not HTTP: bad status line, headers or chunking, body shorter than declared."""

    kind = "protocol"


class _Spent(Exception):
    """Internal: a socket operation found the deadline spent (converted to HttpTimeout)."""


# -------------------------------------------------------------------------- response


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def json(self) -> Any:
        """The body as strict JSON (``ValueError`` on bad JSON or NaN/Infinity)."""
        return strictjson.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


# ---------------------------------------------------------------------- DNS threads


class _DnsPool:
    """A few daemon threads for blocking resolver calls, so a caller can stop waiting at
    its deadline. A stuck lookup keeps its thread (at most ``max_threads``; further
    lookups queue and their callers still give up at their deadlines). Daemon threads:
    a hung resolver never blocks interpreter exit (unlike ThreadPoolExecutor)."""

    def __init__(self, max_threads: int = 8) -> None:
        self._max = max_threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args))
        with self._lock:
            if self._idle == 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name="weather-dns", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)


_DNS = _DnsPool()


def _system_resolver(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


# ------------------------------------------------------------------ socket plumbing


class _DeadlineReader(io.RawIOBase):
    """Raw reader over a socket: every recv gets the remaining budget as its timeout."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        rem = self._deadline.remaining()
        if rem <= 0:
            raise _Spent()
        self._sock.settimeout(max(rem, _MIN_TIMEOUT))
        try:
            return self._sock.recv_into(b)
        except (socket.timeout, ssl.SSLWantReadError):
            raise _Spent() from None


class _SockShim:
    """What ``http.client.HTTPResponse`` needs from a socket: ``makefile('rb')``."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kw: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline), 16 * 1024)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _check_header(name: str, value: str) -> None:
    for text in (name, value):
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError("header names and values must not contain CR, LF or NUL")
    if not name or ":" in name or " " in name:
        raise ValueError(f"bad header name {name!r}")


# --------------------------------------------------------------------------- client


class HttpClient:
    """HTTP/1.1 client where each request ends by ONE deadline.

    ``request()`` raises :class:`HttpTimeout`, :class:`HttpConnectError`,
    :class:`HttpBodyTooLarge` or :class:`HttpProtocolError` (all :class:`HttpError`);
    any HTTP status is a normal :class:`HttpResponse`. No redirects, no pooling
    (``Connection: close``), so the client is stateless and thread-safe.
    """

    def __init__(
        self,
        *,
        max_body: int = 256 * 1024,
        user_agent: str = "weather",
        resolver: Callable[[str, int], list[tuple]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        default_deadline: float = 3.0,
    ) -> None:
        self.max_body = int(max_body)
        self.user_agent = user_agent
        self._resolver = resolver or _system_resolver
        self._ssl_context = ssl_context
        self._ssl_lock = threading.Lock()
        self.default_deadline = float(default_deadline)

    # -- public -------------------------------------------------------------------
    def get(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("GET", url, **kw)

    def put(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> HttpResponse:
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        """Nothing is pooled (one connection per request): a no-op kept for symmetry.
        The client stays usable (a background thread may still be finishing a call)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline | float | None = None,
        params: dict | None = None,
        headers: dict | None = None,
        body: bytes | None = None,
        max_body: int | None = None,
    ) -> HttpResponse:
        dl = Deadline.coerce(deadline, self.default_deadline)
        limit = self.max_body if max_body is None else int(max_body)
        method = method.upper()
        if not method.isalpha():
            raise ValueError("bad HTTP method")

        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError("only http and https URLs are supported")
        host = parts.hostname
        if not host:
            raise ValueError("URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError("URL has a bad port") from None
        path = parts.path or "/"
        query = parts.query
        if params:
            extra = urlencode(
                [(k, v) for k, v in params.items() if v is not None], doseq=True
            )
            query = f"{query}&{extra}" if query else extra
        target = f"{path}?{query}" if query else path
        if any(c in target for c in "\r\n\0 ") or any(c in host for c in "\r\n\0 /"):
            raise ValueError("bad characters in URL")
        # what error messages may say: no query string, no userinfo
        where = f"{method} {scheme}://{host}:{port}{path}"

        request_bytes = self._build_request(method, target, host, port, parts.port, headers, body)
        sock = None
        phase = "dns"
        try:
            addrs = self._resolve(host, port, dl, where)
            phase = "connect"
            sock = self._connect(addrs, dl, where)
            if scheme == "https":
                phase = "tls"
                sock = self._tls(sock, host, dl, where)
            phase = "send"
            self._send(sock, request_bytes, dl)
            phase = "headers"
            resp = http.client.HTTPResponse(_SockShim(sock, dl), method=method)  # type: ignore[arg-type]
            resp.begin()
            phase = "body"
            hdrs: dict[str, str] = {}
            for name, value in resp.getheaders():
                key = name.lower()
                hdrs[key] = f"{hdrs[key]}, {value}" if key in hdrs else value
            data = self._read_body(resp, limit, where)
            return HttpResponse(status=resp.status, headers=hdrs, body=data)
        except _Spent:
            raise HttpTimeout(f"{where}: deadline spent in {phase}", phase=phase) from None
        except HttpError:
            raise
        except http.client.RemoteDisconnected:
            raise HttpConnectError(f"{where}: peer closed the connection before a response", phase=phase) from None
        except http.client.IncompleteRead:
            raise HttpProtocolError(f"{where}: body shorter than declared", phase=phase) from None
        except http.client.HTTPException as exc:
            raise HttpProtocolError(f"{where}: not a valid HTTP response ({type(exc).__name__})", phase=phase) from None
        except ssl.SSLError as exc:
            raise HttpConnectError(f"{where}: TLS error in {phase} ({exc.__class__.__name__})", phase=phase) from None
        except socket.timeout:
            raise HttpTimeout(f"{where}: deadline spent in {phase}", phase=phase) from None
        except OSError as exc:
            raise HttpConnectError(f"{where}: {phase} failed ({exc.__class__.__name__}: {exc.strerror or exc})", phase=phase) from None
        except ValueError as exc:
            # e.g. a chunk-size line http.client cannot parse surfaces as ValueError in places
            raise HttpProtocolError(f"{where}: bad HTTP framing ({type(exc).__name__})", phase=phase) from None
        finally:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    # -- steps --------------------------------------------------------------------
    def _resolve(self, host: str, port: int, dl: Deadline, where: str) -> list[tuple]:
        if _is_ip(host):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 0, "", (host, port))]
        rem = dl.remaining()
        if rem <= 0:
            raise HttpTimeout(f"{where}: deadline spent before DNS", phase="dns")
        fut = _DNS.submit(self._resolver, host, port)
        try:
            addrs = fut.result(timeout=rem)
        except FutureTimeout:
            fut.cancel()
            raise HttpTimeout(f"{where}: deadline spent in DNS", phase="dns") from None
        except Exception as exc:  # socket.gaierror, or whatever an injected resolver raised
            raise HttpConnectError(f"{where}: DNS lookup failed ({exc.__class__.__name__})", phase="dns") from None
        addrs = [a for a in (addrs or []) if a and a[0] in (socket.AF_INET, socket.AF_INET6)]
        if not addrs:
            raise HttpConnectError(f"{where}: DNS lookup returned no address", phase="dns")
        return addrs

    def _connect(self, addrs: list[tuple], dl: Deadline, where: str) -> socket.socket:
        last: OSError | None = None
        for family, _type, proto, _canon, sockaddr in addrs:
            rem = dl.remaining()
            if rem <= 0:
                raise _Spent()
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            try:
                sock.settimeout(max(rem, _MIN_TIMEOUT))
                sock.connect(sockaddr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except socket.timeout:
                sock.close()
                raise _Spent() from None
            except OSError as exc:
                sock.close()
                last = exc
        assert last is not None
        raise HttpConnectError(
            f"{where}: connect failed ({last.__class__.__name__}: {last.strerror or last})", phase="connect"
        )

    def _context(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl_context is None:
                import certifi  # comes with requests

                self._ssl_context = ssl.create_default_context(cafile=certifi.where())
            return self._ssl_context

    def _tls(self, sock: socket.socket, host: str, dl: Deadline, where: str) -> socket.socket:
        tls = self._context().wrap_socket(
            sock, server_hostname=host, do_handshake_on_connect=False
        )
        rem = dl.remaining()
        if rem <= 0:
            tls.close()
            raise _Spent()
        tls.settimeout(max(rem, _MIN_TIMEOUT))
        try:
            tls.do_handshake()  # CPython bounds the whole handshake by one timeout
        except (socket.timeout, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            tls.close()
            raise _Spent() from None
        except ssl.SSLCertVerificationError as exc:
            tls.close()
            raise HttpConnectError(f"{where}: TLS certificate not accepted ({exc.verify_message})", phase="tls") from None
        except (ssl.SSLError, OSError):
            tls.close()
            raise
        return tls

    def _build_request(
        self,
        method: str,
        target: str,
        host: str,
        port: int,
        explicit_port: int | None,
        headers: dict | None,
        body: bytes | None,
    ) -> bytes:
        host_hdr = f"[{host}]" if ":" in host else host
        if explicit_port:
            host_hdr = f"{host_hdr}:{port}"
        hdrs: dict[str, str] = {
            "Host": host_hdr,
            "User-Agent": self.user_agent,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        lower = {k.lower(): k for k in hdrs}
        for name, value in (headers or {}).items():
            if value is None:
                continue
            name, value = str(name), str(value)
            _check_header(name, value)
            if name.lower() in lower:
                del hdrs[lower[name.lower()]]
            hdrs[name] = value
            lower[name.lower()] = name
        if body is not None:
            if isinstance(body, str):
                body = body.encode("utf-8")
            hdrs["Content-Length"] = str(len(body))
        elif method in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = "0"
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        return head.encode("latin-1") + (body or b"")

    def _send(self, sock: socket.socket, data: bytes, dl: Deadline) -> None:
        view = memoryview(data)
        while view:
            rem = dl.remaining()
            if rem <= 0:
                raise _Spent()
            sock.settimeout(max(rem, _MIN_TIMEOUT))
            try:
                n = sock.send(view)
            except (socket.timeout, ssl.SSLWantWriteError):
                raise _Spent() from None
            view = view[n:]

    def _read_body(self, resp: http.client.HTTPResponse, limit: int, where: str) -> bytes:
        if resp.length is not None and resp.length > limit:
            raise HttpBodyTooLarge(
                f"{where}: declared body of {resp.length} bytes is over the {limit}-byte limit", phase="body"
            )
        declared = resp.length
        chunks: list[bytes] = []
        got = 0
        while True:
            piece = resp.read(min(64 * 1024, limit + 1 - got))
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
            if got > limit:
                raise HttpBodyTooLarge(f"{where}: body over the {limit}-byte limit", phase="body")
        if declared is not None and got < declared:
            raise HttpProtocolError(f"{where}: body shorter than declared", phase="body")
        return b"".join(chunks)
