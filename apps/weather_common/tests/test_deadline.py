"""weather_common.deadline against REAL misbehaving servers on loopback.

Each server is a raw socket server in a thread (testkit/rawservers.py: no HTTP library on
the server side, so it can drip, stall, lie about lengths or speak garbage). Every failure test measures the
call's elapsed time against its deadline and checks that the server saw the connection
closed, i.e. the client really let go.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from rawservers import RawServer, refused_port

from weather_common.deadline import (
    Deadline,
    HttpBodyTooLarge,
    HttpClient,
    HttpConnectError,
    HttpError,
    HttpProtocolError,
    HttpResponse,
    HttpTimeout,
)

SLACK = 0.100  # the call must return within deadline + 100 ms
SECRET = "appid-SECRET-3f9a"


# ----------------------------------------------------------------- raw test servers


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(handler, tls_context=None) -> RawServer:
        srv = RawServer(handler, tls_context)
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.close()


def _respond(conn, status="200 OK", headers=(), body=b""):
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    conn.sendall(head.encode() + body)


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    try:
        return fn(*a, **kw), None, time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001 - returned for the assertions
        return None, exc, time.monotonic() - t0


def assert_cut(exc, elapsed, deadline, kind=HttpTimeout):
    assert isinstance(exc, kind), repr(exc)
    assert elapsed <= deadline + SLACK, f"returned {elapsed * 1000:.0f} ms, deadline {deadline * 1000:.0f} ms"


# ------------------------------------------------------------------------- Deadline


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_deadline_remaining_never_negative_and_expires():
    clock = FakeClock()
    d = Deadline(2.0, clock=clock)
    assert d.remaining() == 2.0 and not d.expired()
    clock.t += 1.5
    assert d.remaining() == pytest.approx(0.5) and d.remaining_ms() == 500
    clock.t += 1.0
    assert d.remaining() == 0.0 and d.expired()


def test_deadline_within_is_the_earlier():
    clock = FakeClock()
    d = Deadline(2.0, clock=clock)
    assert d.within(0.5).remaining() == 0.5
    assert d.within(10).remaining() == 2.0
    clock.t += 1.9
    assert d.within(0.5).remaining() == pytest.approx(0.1)


def test_deadline_coerce_and_bad_values():
    d = Deadline(1.0)
    assert Deadline.coerce(d, 5) is d
    assert 4.9 < Deadline.coerce(None, 5).remaining() <= 5
    assert 0.2 < Deadline.coerce(0.25, 5).remaining() <= 0.25
    assert Deadline.coerce(-3, 5).expired()
    with pytest.raises(ValueError):
        Deadline(float("nan"))
    with pytest.raises(ValueError):
        Deadline(float("inf"))
    with pytest.raises(TypeError):
        Deadline.coerce("1", 5)


# ---------------------------------------------------------------------- good answers


def test_normal_json_answer_and_request_shape(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        body = json.dumps({"temp": 21.5, "name": "Köln"}).encode()
        _respond(conn, headers=[("Content-Type", "application/json"), ("Content-Length", len(body)),
                                ("X-Multi", "a"), ("x-multi", "b")], body=body)

    srv = raw_server(handler)
    client = HttpClient(user_agent="weather-test")
    r = client.get(srv.url + "/data/2.5/weather?units=metric", deadline=2.0,
                   params={"zip": "10001,us", "appid": "k y&z"}, headers={"X-Deadline-Ms": 1500})
    assert isinstance(r, HttpResponse)
    assert r.status == 200 and r.ok
    assert r.json() == {"temp": 21.5, "name": "Köln"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-multi"] == "a, b"
    head = srv.requests[0].decode("latin-1")
    request_line = head.split("\r\n")[0]
    assert request_line == "GET /data/2.5/weather?units=metric&zip=10001%2Cus&appid=k+y%26z HTTP/1.1"
    lines = {ln.split(":", 1)[0].lower(): ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:] if ":" in ln}
    assert lines["host"] == f"127.0.0.1:{srv.port}"
    assert lines["user-agent"] == "weather-test"
    assert lines["x-deadline-ms"] == "1500"
    assert lines["connection"] == "close"


def test_put_sends_body_and_content_length(raw_server):
    got = {}

    def handler(conn, srv):
        head = srv.read_request(conn)
        _, _, rest = head.partition(b"\r\n\r\n")
        while len(rest) < 11:
            rest += conn.recv(100)
        got["body"] = rest
        _respond(conn, "200 OK", [("Content-Length", 4)], b"true")

    srv = raw_server(handler)
    r = HttpClient().request("PUT", srv.url + "/v1/kv/a", deadline=2, body=b'{"a": true}')
    assert r.json() is True
    assert got["body"] == b'{"a": true}'
    assert b"Content-Length: 11\r\n" in srv.requests[0]


def test_chunked_answer_is_read(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Transfer-Encoding", "chunked")])
        for piece in (b'{"a": ', b"[1, 2, ", b"3]}"):
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.05)
        conn.sendall(b"0\r\n\r\n")

    srv = raw_server(handler)
    r = HttpClient().get(srv.url + "/", deadline=2)
    assert r.json() == {"a": [1, 2, 3]}


def test_body_until_close_without_length(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, "404 Not Found", [("Connection", "close")], b'{"cod":"404"}')

    srv = raw_server(handler)
    r = HttpClient().get(srv.url + "/", deadline=2)
    assert r.status == 404 and not r.ok and r.json() == {"cod": "404"}


def test_json_is_strict(raw_server):
    bodies = iter([b'{"t": NaN}', b'{"t": -Infinity}', b'{"t": 1e999}', b'{"t": 1.5}'])

    def handler(conn, srv):
        srv.read_request(conn)
        b = next(bodies)
        _respond(conn, headers=[("Content-Length", len(b))], body=b)

    srv = raw_server(handler)
    client = HttpClient()
    for _ in range(3):
        r = client.get(srv.url, deadline=2)
        with pytest.raises(ValueError):
            r.json()
    assert client.get(srv.url, deadline=2).json() == {"t": 1.5}


# ---------------------------------------------------------------- drips and stalls


def test_body_drip_is_cut_at_the_deadline(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Content-Length", 1000), ("Content-Type", "application/json")])
        while True:  # one byte every 0.8 s; a recv timeout of 0.8 s would never fire
            if srv.wait_closed(conn, 0.8):
                return
            conn.sendall(b" ")

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient().get, srv.url + "/slow", deadline=1.5)
    assert_cut(exc, elapsed, 1.5)
    assert exc.phase == "body"
    assert elapsed >= 1.5 - 0.01
    assert srv.closed_event.wait(0.5), "the server never saw the client close"


def test_header_drip_is_cut_at_the_deadline(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Slow: " + b"a" * 1000:
            if srv.wait_closed(conn, 0.8):
                return
            conn.sendall(bytes([byte]))

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient().get, srv.url, deadline=1.2)
    assert_cut(exc, elapsed, 1.2)
    assert exc.phase == "headers"
    assert srv.closed_event.wait(0.5)


def test_blackhole_is_cut_at_the_deadline(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        srv.wait_closed(conn, 10)

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient().get, srv.url + "/x", deadline=0.4, params={"appid": SECRET})
    assert_cut(exc, elapsed, 0.4)
    assert elapsed >= 0.39
    assert exc.kind == "timeout" and exc.phase == "headers"
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    assert "/x" in str(exc) and str(srv.port) in str(exc)
    assert srv.closed_event.wait(0.5)


def test_send_stall_is_cut_at_the_deadline(raw_server):
    """The server never reads: a large request body fills the socket buffers."""

    def handler(conn, srv):
        srv.closed_event.wait(10)  # never reads

    srv = raw_server(handler)
    body = b"x" * (64 * 1024 * 1024)
    res, exc, elapsed = timed(HttpClient().request, "PUT", srv.url, deadline=0.5, body=body)
    assert_cut(exc, elapsed, 0.5)
    assert exc.phase == "send"


def test_many_concurrent_drips_all_end_by_the_deadline(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Content-Length", 100)])
        while not srv.wait_closed(conn, 0.8):
            conn.sendall(b"x")

    srv = raw_server(handler)
    client = HttpClient()
    results: list = []

    def one():
        results.append(timed(client.get, srv.url, deadline=1.0))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 8
    for _, exc, elapsed in results:
        assert_cut(exc, elapsed, 1.0)


# ------------------------------------------------------------------ DNS and connect


def test_slow_resolver_is_bounded_by_the_deadline(raw_server):
    release = threading.Event()
    calls = []

    def slow_resolver(host, port):
        calls.append((host, port))
        release.wait(5)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    client = HttpClient(resolver=slow_resolver)
    try:
        res, exc, elapsed = timed(client.get, "http://api.weather.test:8123/x", deadline=0.3)
        assert_cut(exc, elapsed, 0.3)
        assert exc.phase == "dns" and calls == [("api.weather.test", 8123)]
    finally:
        release.set()


def test_injected_resolver_is_used_and_its_errors_are_connect_errors(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Content-Length", 2)], body=b"{}")

    srv = raw_server(handler)

    def resolver(host, port):
        if host == "producer.weather.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    client = HttpClient(resolver=resolver)
    r = client.get(f"http://producer.weather.test:{srv.port}/", deadline=2)
    assert r.json() == {}
    assert f"Host: producer.weather.test:{srv.port}\r\n".encode() in srv.requests[0]
    res, exc, elapsed = timed(client.get, "http://nowhere.weather.test/", deadline=2)
    assert isinstance(exc, HttpConnectError) and exc.phase == "dns"
    assert elapsed < 0.5

    def broken_resolver(host, port):
        raise RuntimeError("resolver bug")

    res, exc, elapsed = timed(HttpClient(resolver=broken_resolver).get, "http://x.weather.test/", deadline=2)
    assert isinstance(exc, HttpConnectError) and exc.phase == "dns"


def test_refused_port_is_a_connect_error():
    port = refused_port()  # bound, never listened: nothing accepts on it now
    res, exc, elapsed = timed(HttpClient().get, f"http://127.0.0.1:{port}/?appid={SECRET}", deadline=2)
    assert isinstance(exc, HttpConnectError) and exc.kind == "connect" and exc.phase == "connect"
    assert elapsed < 0.5
    assert SECRET not in str(exc)


def test_expired_deadline_fails_without_connecting(raw_server):
    srv = raw_server(lambda conn, s: None)
    res, exc, elapsed = timed(HttpClient().get, srv.url, deadline=0)
    assert isinstance(exc, HttpTimeout)
    time.sleep(0.1)
    assert srv.connections == 0


# ------------------------------------------------------------------- size and garbage


def test_declared_oversized_body_is_refused_without_reading(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Content-Length", 50_000_000)], body=b"x" * 1000)
        srv.wait_closed(conn, 5)

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient(max_body=64 * 1024).get, srv.url, deadline=2)
    assert isinstance(exc, HttpBodyTooLarge) and exc.kind == "too_large"
    assert elapsed < 0.5
    assert srv.closed_event.wait(0.5)


def test_chunked_oversized_body_stops_at_the_cap(raw_server):
    sent = {"bytes": 0}

    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Transfer-Encoding", "chunked")])
        piece = b"y" * 8192
        try:
            for _ in range(10_000):  # 80 MB if nobody stops reading
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent["bytes"] += len(piece)
        except OSError:
            srv.closed_at.append(time.monotonic())
            srv.closed_event.set()

    srv = raw_server(handler)
    client = HttpClient()
    res, exc, elapsed = timed(client.get, srv.url, deadline=5, max_body=100_000)
    assert isinstance(exc, HttpBodyTooLarge)
    assert elapsed < 1.0
    assert srv.closed_event.wait(2)
    assert sent["bytes"] < 20_000_000


def test_body_within_cap_is_fine_and_cap_is_exact(raw_server):
    body = b"z" * 1000

    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Connection", "close")], body=body)  # no length: until close

    srv = raw_server(handler)
    assert HttpClient(max_body=1000).get(srv.url, deadline=2).body == body
    with pytest.raises(HttpBodyTooLarge):
        HttpClient(max_body=999).get(srv.url, deadline=2)


@pytest.mark.parametrize("garbage", [
    b"hello there, this is not http\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
    b"HTTP/1.1 abc OK\r\n\r\n",
])
def test_garbage_is_a_protocol_error(raw_server, garbage):
    def handler(conn, srv):
        srv.read_request(conn)
        conn.sendall(garbage)

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient().get, srv.url, deadline=2)
    assert isinstance(exc, HttpProtocolError) and exc.kind == "protocol", repr(exc)
    assert elapsed < 0.5


def test_bad_chunking_and_short_body_are_protocol_errors(raw_server):
    answers = iter([
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"short",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    ])

    def handler(conn, srv):
        srv.read_request(conn)
        conn.sendall(next(answers))

    srv = raw_server(handler)
    for _ in range(3):
        with pytest.raises(HttpProtocolError):
            HttpClient().get(srv.url, deadline=2)


def test_close_without_answer_is_a_connect_error(raw_server):
    def handler(conn, srv):
        srv.read_request(conn)

    srv = raw_server(handler)
    with pytest.raises(HttpConnectError):
        HttpClient().get(srv.url, deadline=2)


def test_all_errors_are_http_errors_and_bad_input_is_value_error():
    for cls in (HttpTimeout, HttpConnectError, HttpBodyTooLarge, HttpProtocolError):
        assert issubclass(cls, HttpError)
    client = HttpClient()
    for url in ("ftp://x/", "http:///nohost", "http://h:99999/"):
        with pytest.raises(ValueError):
            client.get(url, deadline=1)
    with pytest.raises(ValueError):
        client.get("http://127.0.0.1:1/", deadline=1, headers={"X-Evil": "a\r\nInjected: 1"})


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=weather.test", "-addext", "subjectAltName=DNS:weather.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _loopback_resolver(host, port):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_https_verifies_and_works_with_a_trusted_ca(raw_server, tls_cert):
    cert, key = tls_cert
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def handler(conn, srv):
        srv.read_request(conn)
        _respond(conn, headers=[("Content-Length", 11)], body=b'{"tls": 1}\n')

    srv = raw_server(handler, tls_context=server_ctx)
    url = f"https://weather.test:{srv.port}/x"
    trusting = HttpClient(resolver=_loopback_resolver, ssl_context=ssl.create_default_context(cafile=str(cert)))
    assert trusting.get(url, deadline=3).json() == {"tls": 1}
    # the default context (certifi's bundle) must refuse a self-signed certificate
    res, exc, elapsed = timed(HttpClient(resolver=_loopback_resolver).get, url, deadline=3)
    assert isinstance(exc, HttpConnectError) and exc.phase == "tls", repr(exc)


def test_tls_handshake_stall_is_cut_at_the_deadline(raw_server):
    def handler(conn, srv):  # accepts TCP, never answers the ClientHello
        srv.wait_closed(conn, 10)

    srv = raw_server(handler)
    res, exc, elapsed = timed(HttpClient(resolver=_loopback_resolver).get,
                              f"https://weather.test:{srv.port}/", deadline=0.5)
    assert_cut(exc, elapsed, 0.5)
    assert exc.phase == "tls"
    assert srv.closed_event.wait(0.5)


def test_https_to_a_plain_http_server_is_a_connect_error(raw_server):
    def handler(conn, srv):
        conn.settimeout(2)
        conn.recv(4096)
        _respond(conn, "400 Bad Request", [("Content-Length", 0)])

    srv = raw_server(handler)
    with pytest.raises(HttpConnectError):
        HttpClient().get(f"https://127.0.0.1:{srv.port}/", deadline=2)
