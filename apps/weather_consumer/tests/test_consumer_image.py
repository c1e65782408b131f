"""The consumer IMAGE: read-only, non-root, healthy, balancing, stale fallback, Consul (slow).

Builds the image (testkit/dockerkit.py: wheelhouse, context apps/), then runs on a private
Docker network: two stub producers (tests/stub_producer.py, stdlib only, run with the
consumer image's own python3), a consul agent (the host's /usr/bin/consul in the base
image) and the consumer with ``--read-only --tmpfs /tmp``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from dockerkit import BASE_IMAGE, MAX_IMAGE_BYTES, DockerNetwork, build_app_image, docker

pytestmark = [pytest.mark.slow, pytest.mark.consul]

STUB = Path(__file__).with_name("stub_producer.py")
IMAGE = "weather-lab/weather-consumer:test"
CONSUMER_STALE = "CAUTION - Response out of date, producer unreachable!"


@pytest.fixture(scope="module")
def image():
    return build_app_image("weather_consumer", IMAGE)


@pytest.fixture
def lab():
    net = DockerNetwork("wctest")
    yield net
    net.close()


def _stub(lab: DockerNetwork, image: str, name: str) -> str:
    return lab.run(name, "--read-only", "-v", f"{STUB}:/stub/stub_producer.py:ro",
                   "--entrypoint", "python3", image, "/stub/stub_producer.py", name, "8000", "0.0.0.0")


def _wait(url: str, timeout: float = 30, status: int = 200) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.get(url, timeout=3)
            if r.status_code == status or time.monotonic() > deadline:
                return r
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def test_image_size(image):
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    assert size <= MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.1f} MB"


def test_consumer_container_balances_falls_back_and_runs_locked_down(image, lab):
    _stub(lab, image, "p1")
    _stub(lab, image, "p2")
    cons = lab.run("consumer", "--read-only", "--tmpfs", "/tmp", "-p", "127.0.0.1::8080",
                   "-e", "WEATHER_CONSUMER_PRODUCER_URLS=http://p1:8000,http://p2:8000", image)
    url = f"http://127.0.0.1:{lab.host_port(cons, 8080)}"
    assert _wait(f"{url}/ready").status_code == 200

    bodies = [requests.get(f"{url}/api/weather", params={"zip": "10001"}, timeout=5).json()
              for _ in range(6)]
    assert sorted(b["instance"] for b in bodies) == ["p1"] * 3 + ["p2"] * 3
    page = requests.get(f"{url}/weather", params={"zip": "10001"}, timeout=5)
    assert page.status_code == 200 and "Town 10001" in page.text
    assert requests.get(f"{url}/static/style.css", timeout=5).status_code == 200

    docker("kill", f"{lab.net}-p1")
    for _ in range(6):
        b = requests.get(f"{url}/api/weather", params={"zip": "10001"}, timeout=5).json()
        assert b["instance"] == "p2" and b["stale"] is False
    docker("kill", f"{lab.net}-p2")
    r = requests.get(f"{url}/weather", params={"zip": "10001"}, timeout=5)
    assert r.status_code == 200 and CONSUMER_STALE in r.text and 'id="stale-banner"' in r.text
    r = requests.get(f"{url}/api/weather", params={"zip": "20002"}, timeout=5)
    assert r.status_code == 503 and r.json()["error"]

    info = json.loads(docker("inspect", cons))[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"] == "10001:10001"
    assert docker("exec", cons, "python3", "-c",
                  "import os; print(os.getuid(), os.getgid())") == "10001 10001"
    hc = info["Config"]["Healthcheck"]["Test"]
    assert hc[:2] == ["CMD", "python3"]
    docker("exec", cons, *hc[1:])
    logs = docker("logs", cons)
    access = [json.loads(line) for line in logs.splitlines()
              if line.startswith("{") and '"weather.access"' in line]
    assert any(a["path"] == "/api/weather" and a["status"] == 503 for a in access)
    assert "Traceback" not in logs and "Read-only file system" not in logs

    t0 = time.monotonic()
    docker("stop", "-t", "20", cons)
    assert time.monotonic() - t0 < 10, "SIGTERM must stop the consumer promptly"


def test_consumer_container_discovers_producers_in_consul(image, lab):
    # Node "lab-consul": the IDs name it, as the consumer requires by default
    # (PRODUCER_REQUIRE_NODE_ID; producers with NODE_NAME_FILE register so).
    consul = lab.run("consul", "-p", "127.0.0.1::8500", "-v",
                     "/usr/bin/consul:/usr/bin/consul:ro", BASE_IMAGE,
                     "consul", "agent", "-dev", "-client", "0.0.0.0", "-node", "lab-consul",
                     "-log-level", "warn")
    consul_url = f"http://127.0.0.1:{lab.host_port(consul, 8500)}"
    _wait(f"{consul_url}/v1/status/leader")
    for name in ("p1", "p2"):
        stub = _stub(lab, image, name)
        ip = json.loads(docker("inspect", stub))[0]["NetworkSettings"]["Networks"][lab.net]["IPAddress"]
        requests.put(f"{consul_url}/v1/agent/service/register", timeout=5, json={
            "Name": "weather-producer", "ID": f"weather-producer-lab-consul-{name}", "Address": ip,
            "Port": 8000}).raise_for_status()
    cons = lab.run("consumer", "--read-only", "--tmpfs", "/tmp", "-p", "127.0.0.1::8080",
                   "-p", "127.0.0.1::9080",
                   "-e", "WEATHER_CONSUMER_CONSUL_HTTP_ADDR=http://consul:8500", image)
    url = f"http://127.0.0.1:{lab.host_port(cons, 8080)}"
    ops = f"http://127.0.0.1:{lab.host_port(cons, 9080)}"
    assert _wait(f"{url}/ready").status_code == 200
    # The operator status is on the second listener only.
    assert requests.get(f"{url}/api/status", timeout=5).status_code == 404
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 404
    status = requests.get(f"{ops}/api/status", timeout=5).json()
    assert sorted(p["id"] for p in status["producers"]) == ["weather-producer-lab-consul-p1",
                                                             "weather-producer-lab-consul-p2"]
    answered = {requests.get(f"{url}/api/weather", params={"zip": "10001"}, timeout=5)
                .json()["producer"] for _ in range(4)}
    assert answered == {"weather-producer-lab-consul-p1", "weather-producer-lab-consul-p2"}
    # Consul goes away: the consumer keeps serving from the last known list.
    docker("kill", consul)
    time.sleep(1)
    for _ in range(4):
        r = requests.get(f"{url}/api/weather", params={"zip": "10001"}, timeout=5)
        assert r.status_code == 200 and r.json()["source"] == "producer"
