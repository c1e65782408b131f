"""The fake OWM over real HTTP: shape, keys, modes, stats."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests


def _get(fake, zip_code="10001", key=None, cc="us", timeout=5):
    return requests.get(f"{fake.url}/data/2.5/weather",
                        params={"zip": f"{zip_code},{cc}", "appid": key, "units": "metric"}, timeout=timeout)


def test_owm_shaped_and_deterministic(fake_owm, owm_key):
    a, b = _get(fake_owm, key=owm_key).json(), _get(fake_owm, key=owm_key).json()
    assert a["cod"] == 200 and a["name"] == "City 10001"
    assert isinstance(a["main"]["temp"], float) and a["weather"][0]["description"]
    assert isinstance(a["dt"], int)
    assert a["main"]["temp"] == b["main"]["temp"]


def test_unknown_zip_and_bad_key(fake_owm, owm_key):
    r = _get(fake_owm, "00000", key=owm_key)
    assert r.status_code == 404 and r.json() == {"cod": "404", "message": "city not found"}
    r = _get(fake_owm, key="wrong")
    assert r.status_code == 401 and r.json()["cod"] == 401


@pytest.mark.parametrize("mode,status", [("error", 500), ("429", 429), ("401", 401)])
def test_failure_modes(fake_owm, owm_key, mode, status):
    fake_owm.set_mode(mode)
    assert _get(fake_owm, key=owm_key).status_code == status
    fake_owm.set_mode("ok")
    assert _get(fake_owm, key=owm_key).status_code == 200


def test_slow_and_timeout_modes(fake_owm, owm_key):
    fake_owm.set_mode("slow", 0.3)
    t0 = time.monotonic()
    assert _get(fake_owm, key=owm_key).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    fake_owm.set_mode("timeout")  # hangs 60 s by default: longer than any client timeout
    with pytest.raises(requests.Timeout):
        _get(fake_owm, key=owm_key, timeout=0.5)
    # switching the mode releases hung requests
    result = {}
    t = threading.Thread(target=lambda: result.update(r=_get(fake_owm, key=owm_key, timeout=10)))
    t.start()
    time.sleep(0.3)
    fake_owm.set_mode("ok")
    t.join(5)
    assert result["r"].status_code == 504


def test_control_validation_and_stats(fake_owm, owm_key):
    r = requests.post(f"{fake_owm.url}/_control", json={"mode": "nope"}, timeout=5)
    assert r.status_code == 400 and "mode" in r.json()["error"]
    fake_owm.reset_stats()
    for z in ("1", "1", "2"):
        _get(fake_owm, z, key=owm_key)
    fake_owm.set_mode("error")
    _get(fake_owm, "3", key=owm_key)
    s = fake_owm.stats()
    assert s["total"] == 4 and s["last_60s"] == 4
    assert s["by_zip"] == {"1": 2, "2": 1, "3": 1}
    assert s["by_mode"] == {"ok": 3, "error": 1}
    assert s["by_status"] == {"200": 3, "500": 1}
    fake_owm.reset_stats()
    assert fake_owm.stats()["total"] == 0


def test_keys_from_file(tmp_path, wsgi_server):
    from fake_owm import create_app

    keys = tmp_path / "keys"
    keys.write_text("k-one\nk-two\n")
    srv = wsgi_server(create_app({"API_KEYS_FILE": str(keys)}))
    ok = requests.get(f"{srv.url}/data/2.5/weather", params={"zip": "1,us", "appid": "k-two"}, timeout=5)
    bad = requests.get(f"{srv.url}/data/2.5/weather", params={"zip": "1,us", "appid": "k-three"}, timeout=5)
    assert ok.status_code == 200 and bad.status_code == 401
    assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200


# ------------------------------------------------------------------ failure modes of issue 11
def _raw_get(url: str, key: str, zip_code: str = "10001"):
    """http.client GET: returns (connection, response) once the status line and the headers
    are in, the body unread."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"/data/2.5/weather?zip={zip_code},us&appid={key}&units=metric")
    return conn, conn.getresponse()


def _check_drip(url: str, key: str, set_mode) -> None:
    set_mode("drip", 0.1)
    t0 = time.monotonic()
    conn, resp = _raw_get(url, key)
    headers_after = time.monotonic() - t0
    assert resp.status == 200 and headers_after < 0.5, headers_after
    length = int(resp.getheader("Content-Length"))
    assert length > 100  # the whole OWM answer is announced ...
    got = b""
    while time.monotonic() - t0 < 0.65:
        got += resp.read(1)
    # ... but arrives one byte per 0.1 s: about 7 bytes in 0.65 s, far from the whole body
    assert 3 <= len(got) <= 12, (len(got), got)
    assert got.startswith(b"{")
    set_mode("ok")  # ends the drip: the rest never comes
    conn.close()


def test_drip_mode_sends_headers_then_one_byte_per_delay(fake_owm, owm_key):
    _check_drip(fake_owm.url, owm_key, fake_owm.set_mode)


@contextmanager
def gunicorn_fake(tmp_path, owm_key, port, threads):
    """The fake as its image runs it (gunicorn gthread, its own config), on a local
    port; yields (url, set_mode)."""
    url = f"http://127.0.0.1:{port}"
    conf = Path(__file__).resolve().parents[1] / "fake_owm" / "gunicorn.conf.py"
    log = open(tmp_path / "gunicorn.log", "wb")
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_THREADS": str(threads),
           "FAKE_OWM_API_KEYS": json.dumps([owm_key])}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", str(conf), "fake_owm.wsgi:app"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.1)

        def set_mode(mode, delay=None):
            requests.post(f"{url}/_control", json={"mode": mode, "delay": delay}, timeout=5).raise_for_status()

        yield url, set_mode
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_drip_mode_streams_under_gunicorn_gthread(tmp_path, owm_key, free_port_fn):
    with gunicorn_fake(tmp_path, owm_key, free_port_fn(), threads=4) as (url, set_mode):
        _check_drip(url, owm_key, set_mode)
        # after the mode change the server is usable at once (the drip thread was freed)
        assert requests.get(f"{url}/data/2.5/weather", params={"zip": "1,us", "appid": owm_key},
                            timeout=5).status_code == 200


def test_hung_calls_their_clients_left_free_the_control_api(tmp_path, owm_key, free_port_fn):
    """In hang mode, three times as many calls as gunicorn has threads, each given up by
    its client after 0.3 s (a producer's deadline): the control API still answers, so
    the outage can be ended. Held until the mode changed, they took every thread."""
    with gunicorn_fake(tmp_path, owm_key, free_port_fn(), threads=2) as (url, set_mode):
        set_mode("hang")
        for _ in range(6):
            with pytest.raises(requests.Timeout):
                requests.get(f"{url}/data/2.5/weather", params={"zip": "1,us", "appid": owm_key}, timeout=0.3)
        t0 = time.monotonic()
        set_mode("ok")
        assert time.monotonic() - t0 < 3
        assert requests.get(f"{url}/data/2.5/weather", params={"zip": "1,us", "appid": owm_key},
                            timeout=5).status_code == 200


def test_hang_mode_sends_nothing_until_the_mode_changes(fake_owm, owm_key):
    fake_owm.set_mode("hang")
    with pytest.raises(requests.Timeout):
        _get(fake_owm, key=owm_key, timeout=0.5)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=_get(fake_owm, key=owm_key, timeout=10)))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    assert "r" not in result  # still nothing after 0.5 s
    fake_owm.set_mode("ok")
    t.join(5)
    assert result["r"].status_code == 504 and time.monotonic() - t0 < 3


def test_garbage_nan_and_huge_modes(fake_owm, owm_key):
    fake_owm.set_mode("garbage")
    r = _get(fake_owm, key=owm_key)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(r.content)

    fake_owm.set_mode("nan")
    r = _get(fake_owm, key=owm_key)
    assert r.status_code == 200 and b'"temp": NaN' in r.content
    assert math.isnan(json.loads(r.content)["main"]["temp"])  # Python's lenient parser takes it ...

    def strict(text):
        raise ValueError(f"not JSON: {text}")

    with pytest.raises(ValueError):  # ... a strict one does not
        json.loads(r.content, parse_constant=strict)

    fake_owm.set_mode("huge")
    r = _get(fake_owm, key=owm_key, timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content) >= 4 * 1024 * 1024
    body = r.json()
    assert body["name"] == "City 10001" and isinstance(body["main"]["temp"], float) and len(body["stations"]) > 1000

    fake_owm.set_mode("huge", 0.5)  # delay = size in MB
    assert 0.5 * 1024 * 1024 <= len(_get(fake_owm, key=owm_key).content) < 1024 * 1024
    # the failure modes spoil only good answers: an unknown zip and a bad key keep their status
    for mode in ("garbage", "nan", "huge", "drip"):
        fake_owm.set_mode(mode)
        assert _get(fake_owm, "00000", key=owm_key).status_code == 404
        assert _get(fake_owm, key="wrong").status_code == 401


def test_stats_per_key_and_per_minute_never_the_key(fake_owm, owm_key):
    fake_owm.reset_stats()
    for key in (owm_key, owm_key, "other-key"):
        _get(fake_owm, key=key)
    s = fake_owm.stats()
    mine = hashlib.sha256(owm_key.encode()).hexdigest()[:12]
    other = hashlib.sha256(b"other-key").hexdigest()[:12]
    assert s["by_key"] == {mine: 2, other: 1}
    assert sum(s["by_minute"].values()) == 3
    assert all(abs(int(m) - time.time() // 60) <= 1 for m in s["by_minute"])  # epoch minutes
    raw = requests.get(f"{fake_owm.url}/_stats", timeout=5).text
    assert owm_key not in raw and "other-key" not in raw


def test_stats_max_in_window(fake_owm, owm_key):
    fake_owm.reset_stats()
    for _ in range(3):
        _get(fake_owm, key=owm_key)
    time.sleep(0.6)
    for _ in range(2):
        _get(fake_owm, key=owm_key)
    r = requests.get(f"{fake_owm.url}/_stats", params={"window": 0.5}, timeout=5).json()
    assert r["max_in_window"] == 3 and r["window"] == 0.5
    assert requests.get(f"{fake_owm.url}/_stats", params={"window": 5}, timeout=5).json()["max_in_window"] == 5
    assert requests.get(f"{fake_owm.url}/_stats", params={"window": "x"}, timeout=5).status_code == 400
    assert requests.get(f"{fake_owm.url}/_stats", params={"window": 0}, timeout=5).status_code == 400
