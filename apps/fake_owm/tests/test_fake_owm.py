"""The fake OWM over real HTTP: shape, keys, modes, stats."""

from __future__ import annotations

import threading
import time

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
