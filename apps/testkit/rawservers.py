"""Misbehaving TCP servers on loopback for the apps' tests: raw sockets in daemon
threads, no HTTP library on the server side, so they can hang, drip, stall, lie about
lengths or speak garbage.

On the tests' path through pytest.ini (``pythonpath``); with importlib mode a test
cannot import from conftest.py, so shared helpers live here.

Every server binds 127.0.0.1 on a free port and exposes ``port``, ``url``
(``http://127.0.0.1:<port>``), ``connections`` (how many it accepted) and ``close()``,
which closes the listening socket and every accepted connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Callable


def refused_port() -> int:
    """A loopback port that was bound and closed again, never listened on: a connection
    to it is refused at once (nothing accepts on it now)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Listener:
    """The part every server shares: listen on 127.0.0.1, accept in a daemon thread,
    count and keep the connections; ``_on_connection`` decides what happens to each."""

    def __init__(self, backlog: int = 16) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            self._on_connection(conn)

    def _on_connection(self, conn: socket.socket) -> None:
        pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class Blackhole(_Listener):
    """Accepts and never reads nor answers, keeping every connection open until
    ``close()`` (a hung Consul or producer: SIGSTOP-like)."""

    def __init__(self, backlog: int = 64) -> None:
        super().__init__(backlog)


class DripServer(_Listener):
    """Reads the request (one ``recv``), sends ``head`` (an HTTP status line and headers),
    then ``byte`` every ``every`` seconds, ``count`` times. With ``head=None`` it reads
    the request and then says nothing at all. The connection stays open either way."""

    def __init__(self, head: bytes | None, every: float = 0.8, count: int = 100, byte: bytes = b" ",
                 backlog: int = 16) -> None:
        self.head = head
        self.every = every
        self.count = count
        self.byte = byte
        super().__init__(backlog)

    def _on_connection(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.head is None:
                return
            conn.sendall(self.head)
            for _ in range(self.count):
                time.sleep(self.every)
                conn.sendall(self.byte)
        except OSError:
            pass


class RawServer(_Listener):
    """Runs ``handler(conn, srv)`` for each connection in a thread (over TLS if
    ``tls_context`` is given) and closes the connection when the handler returns.
    ``requests`` holds the raw request heads (``read_request``); ``closed_at`` the
    monotonic times at which a handler saw the client close (``wait_closed``), which also
    sets ``closed_event``."""

    def __init__(self, handler: Callable[[socket.socket, RawServer], None],
                 tls_context: ssl.SSLContext | None = None, backlog: int = 16) -> None:
        self.handler = handler
        self.tls_context = tls_context
        self.requests: list[bytes] = []
        self.closed_at: list[float] = []
        self.closed_event = threading.Event()
        super().__init__(backlog)

    def _on_connection(self, conn: socket.socket) -> None:
        threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.tls_context is not None:
                conn.settimeout(5)
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    # helpers for handlers
    def read_request(self, conn: socket.socket, timeout: float = 5.0) -> bytes:
        """Read up to the end of the request head; record and return it."""
        conn.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        self.requests.append(data)
        return data

    def wait_closed(self, conn: socket.socket, timeout: float) -> bool:
        """True (and recorded) if the peer closes within ``timeout``."""
        conn.settimeout(timeout)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
        except socket.timeout:
            return False
        except OSError:
            pass
        self.closed_at.append(time.monotonic())
        self.closed_event.set()
        return True
