"""The producer and fake OWM IMAGES: read-only, non-root, against a consul agent (slow).

Builds both images (testkit/dockerkit.py: wheelhouse, context apps/), then runs, on a private
Docker network: consul (the host's /usr/bin/consul mounted into the base image), the fake
OWM image and the producer image with ``--read-only --tmpfs /tmp``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest
import requests
from dockerkit import BASE_IMAGE, MAX_IMAGE_BYTES, DockerNetwork, build_app_image, docker

pytestmark = [pytest.mark.slow, pytest.mark.consul]

PRODUCER_IMAGE = "weather-lab/weather-producer:test"
FAKE_IMAGE = "weather-lab/fake-owm:test"


@pytest.fixture(scope="module")
def images():
    return build_app_image("weather_producer", PRODUCER_IMAGE), build_app_image("fake_owm", FAKE_IMAGE)


@pytest.fixture
def lab():
    net = DockerNetwork("wtest")
    yield net
    net.close()


def _wait(url: str, timeout: float = 30) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_images_size(images):
    for image in images:
        size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
        assert size <= MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.1f} MB"


def test_producer_container_read_only_non_root_with_consul(images, lab, tmp_path, owm_key):
    producer_image, fake_image = images
    key = tmp_path / "owm_api_key"
    key.write_text(owm_key + "\n")
    shutil.chown(key, 10001, 10001)
    key.chmod(0o400)
    keys = tmp_path / "owm_api_keys"
    keys.write_text(owm_key + "\n")
    keys.chmod(0o444)

    consul = lab.run("consul", "-p", "127.0.0.1::8500", "-v", "/usr/bin/consul:/usr/bin/consul:ro", BASE_IMAGE,
                     "consul", "agent", "-dev", "-client", "0.0.0.0", "-log-level", "warn")
    lab.run("fake-owm", "--read-only", "--tmpfs", "/tmp", "-v", f"{keys}:/run/secrets/owm_api_keys:ro", fake_image)
    instance = f"img-{uuid.uuid4().hex[:6]}"
    prod = lab.run("producer", "--read-only", "--tmpfs", "/tmp", "-p", "127.0.0.1::8000",
                   "-v", f"{key}:/run/secrets/owm_api_key:ro",
                   "-e", "WEATHER_PRODUCER_OWM_BASE_URL=http://fake-owm:8090",
                   "-e", "WEATHER_PRODUCER_CONSUL_HTTP_ADDR=http://consul:8500",
                   "-e", f"WEATHER_PRODUCER_INSTANCE_ID={instance}",
                   producer_image)
    consul_url = f"http://127.0.0.1:{lab.host_port(consul, 8500)}"
    url = f"http://127.0.0.1:{lab.host_port(prod, 8000)}"

    r = _wait(f"{url}/weather?zip=10001&country=us")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stale"] is False and body["city"] == "City 10001" and body["instance"] == instance
    assert requests.get(f"{url}/ready", timeout=5).json()["cache_backend"] == "consul"

    # read-only, non-root
    info = json.loads(docker("inspect", prod))[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"] == "10001:10001"
    uid = docker("exec", prod, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert uid == "10001 10001"
    write = subprocess.run(["docker", "exec", prod, "python3", "-c", "open('/app/x', 'w')"], capture_output=True)
    assert write.returncode != 0 and b"Read-only file system" in write.stderr
    # the healthcheck command works in the image (no curl: python)
    hc = info["Config"]["Healthcheck"]["Test"]
    assert hc[0] == "CMD" and hc[1] == "python3"
    docker("exec", prod, *hc[1:])

    # no API key anywhere in the container's or the image's configuration
    assert owm_key not in docker("inspect", prod)
    assert owm_key not in docker("image", "inspect", producer_image)
    assert owm_key not in docker("history", "--no-trunc", producer_image)
    assert owm_key not in docker("logs", prod)

    # registered in Consul with the container's own address on the network
    ip = info["NetworkSettings"]["Networks"][lab.net]["IPAddress"]
    deadline = time.monotonic() + 20
    while True:
        entries = requests.get(f"{consul_url}/v1/health/service/weather-producer", params={"passing": "true"},
                               timeout=3).json()
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [(e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"]) for e in entries] == [
        (f"weather-producer-{instance}", ip, 8000)
    ]
    # last-good KV writes are asynchronous: give the writer a moment
    deadline = time.monotonic() + 5
    while True:
        r = requests.get(f"{consul_url}/v1/kv/weather/cache/us/10001", params={"raw": ""}, timeout=3)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.json()["value"]["city"] == "City 10001"

    # docker stop = SIGTERM: deregistered at once
    docker("stop", "-t", "20", prod)
    entries = requests.get(f"{consul_url}/v1/health/service/weather-producer", timeout=3).json()
    assert entries == []
    assert "deregistered" in docker("logs", prod)
