"""Privacy on the public port (issue 11): nobody sees what other users looked up, nor the
producers' addresses, nor /metrics. Operators use the second listener (OPERATOR_PORT).

The listener is decided by the LOCAL port of the accepted socket, so a forged Host header
changes nothing. Tested under REAL gunicorn (both binds of gunicorn.conf.py) and with
werkzeug's server; Flask's test client (no socket) goes by SERVER_PORT in TESTING only.
"""

from __future__ import annotations

import socket

import pytest
import requests

OPERATOR_PATHS = ("/status", "/api/status", "/metrics")
SECRET_ZIP = "SW1A 2AA"  # what "another user" looked up


def raw_get(port: int, path: str, host: str) -> tuple[int, str]:
    """A hand-written request, so the Host header is exactly what we say."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_public_port_under_gunicorn_hides_places_addresses_and_metrics(stubs, consumer_gunicorn):
    producers = stubs(2)
    cons = consumer_gunicorn({"WEATHER_CONSUMER_PRODUCER_URLS": ",".join(p.url for p in producers)})
    r = requests.get(f"{cons.public}/api/weather", params={"zip": SECRET_ZIP, "country": "gb"},
                     timeout=5)
    assert r.status_code == 200 and r.json()["zip"] == SECRET_ZIP
    addresses = [p.instance_id for p in producers] + [str(p.port) for p in producers]

    # Public listener: the operator paths do not exist, whatever the Host header says.
    for path in OPERATOR_PATHS:
        for host in (f"127.0.0.1:{cons.public_port}", f"127.0.0.1:{cons.operator_port}",
                     "localhost:9080", "operator", f"[::1]:{cons.operator_port}"):
            status, body = raw_get(cons.public_port, path, host)
            assert status == 404, (path, host, status)
            assert SECRET_ZIP not in body and "weather_http_requests_total" not in body
            assert not any(a in body for a in addresses), (path, host)
    # The public pages and API: no other user's place, no address.
    for path in ("/", "/weather?zip=10001", "/api/weather?zip=10001", "/ready", "/health",
                 "/weather?zip=%3Cx%3E", "/nope"):
        status, body = raw_get(cons.public_port, path, f"127.0.0.1:{cons.operator_port}")
        assert status in (200, 400, 404), (path, status)
        assert "SW1A" not in body, path
        assert not any(a in body for a in addresses), (path, body[:300])
        assert 'href="/status"' not in body

    # Operator listener: everything is there.
    status = requests.get(f"{cons.operator}/api/status", timeout=5).json()
    assert {p["id"] for p in status["producers"]} == {p.instance_id for p in producers}
    assert {p["address"] for p in status["producers"]} == {"127.0.0.1"}
    assert {(c["zip"], c["country"]) for c in status["cache"]} == {(SECRET_ZIP, "gb"),
                                                                   ("10001", "us")}
    page = requests.get(f"{cons.operator}/status", timeout=5)
    assert page.status_code == 200 and SECRET_ZIP in page.text and producers[0].instance_id in page.text
    metrics = requests.get(f"{cons.operator}/metrics", timeout=5)
    assert metrics.status_code == 200 and "weather_http_requests_total" in metrics.text
    home = requests.get(f"{cons.operator}/", timeout=5)
    assert home.status_code == 200 and 'href="/status"' in home.text
    assert "Traceback" not in cons.output()


def test_werkzeug_server_goes_by_the_local_port_too(stubs, make_app, wsgi_server):
    (p,) = stubs(1)
    app = make_app([p.url], TESTING=False)
    public, operator = wsgi_server(app), wsgi_server(app)
    app.config["OPERATOR_PORT"] = operator.port
    app.extensions["weather_consumer"].operator_ports = frozenset({operator.port})
    requests.get(f"{public.url}/api/weather", params={"zip": SECRET_ZIP}, timeout=5)
    for path in OPERATOR_PATHS:
        r = requests.get(f"{public.url}{path}", headers={"Host": f"127.0.0.1:{operator.port}"},
                         timeout=5)
        assert r.status_code == 404, path
        assert requests.get(f"{operator.url}{path}", timeout=5).status_code == 200, path


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_test_client_public_by_default_operator_by_server_port(make_app, stubs, operator, path):
    (p,) = stubs(1)
    app = make_app([p.url])
    client = app.test_client()
    client.get("/api/weather", query_string={"zip": SECRET_ZIP})
    public = client.get(path, headers={"Host": "localhost:9080"})  # Host is not trusted
    assert public.status_code == 404 and SECRET_ZIP not in public.get_data(as_text=True)
    ops = operator(app).get(path)
    assert ops.status_code == 200
    if path != "/metrics":
        assert SECRET_ZIP in ops.get_data(as_text=True)


def test_without_testing_the_test_client_is_never_operator(make_app, stubs):
    (p,) = stubs(1)
    app = make_app([p.url], TESTING=False)
    r = app.test_client().get("/api/status", environ_overrides={"SERVER_PORT": "9080"})
    assert r.status_code == 404  # no socket and not TESTING: public
