"""Helpers for the apps' IMAGE tests (apps/*/tests/test_*image.py): the real Docker
daemon, the app images built exactly as the weather_app role builds them, and
containers on a private network that are removed at the end.

On the tests' path through pytest.ini (``pythonpath``); with importlib mode a test
cannot import from conftest.py, so shared helpers live here.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parents[1]
REPO = APPS.parent
#: The apps' build stage: Docker Hub's name (lab/build-images.sh tags its stand-in, amd64, here).
BASE_IMAGE = "python:3.13-slim-trixie"
#: The budget of each app image (measured: about 47 MB on the python:3.13-slim-trixie stand-in).
MAX_IMAGE_BYTES = 80 * 1000 * 1000

_wheelhouse_built = False


def docker(*args: str, check: bool = True, timeout: float = 600) -> str:
    """Run the docker CLI; return stdout. A failure is an AssertionError with stderr."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def build_app_image(app_dir: str, tag: str) -> str:
    """Build the image of apps/<app_dir> (apps/Dockerfile, its stage ``app_dir``) for x86_64 as ``tag``.

    The Docker daemon and the lab's base image come from the project's own scripts
    (``make test-apps`` runs scripts/setup-host.sh; the base image is built here with
    lab/build-images.sh when it is missing). The wheelhouse is built once per session.
    """
    global _wheelhouse_built
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker daemon answers (scripts/setup-host.sh starts one; make test-apps runs it)")
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(REPO / "lab" / "build-images.sh"), "seed", "amd64"],
                       check=True, capture_output=True, timeout=1800)
    if not _wheelhouse_built:
        subprocess.run(["bash", str(APPS / "build-wheelhouse.sh"), "x86_64"], check=True,
                       capture_output=True, timeout=600)
        _wheelhouse_built = True
    docker("build", "-q", "-f", str(APPS / "Dockerfile"), "--target", app_dir, "--build-arg", f"APP={app_dir}",
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "WHEEL_ARCH=x86_64", "-t", tag, str(APPS))
    return tag


class DockerNetwork:
    """A private Docker network and the containers started on it; ``close()`` removes both."""

    def __init__(self, prefix: str = "wtest"):
        self.net = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.containers: list[str] = []
        docker("network", "create", self.net)

    def run(self, name: str, *args: str) -> str:
        """``docker run -d`` on the network, reachable there as ``name``; returns the container name."""
        full = f"{self.net}-{name}"
        self.containers.append(full)
        docker("run", "-d", "--name", full, "--network", self.net, "--network-alias", name, *args)
        return full

    @staticmethod
    def host_port(container: str, port: int) -> int:
        """The loopback port Docker published for the container's ``port``."""
        return int(docker("port", container, f"{port}/tcp").splitlines()[0].rsplit(":", 1)[1])

    def close(self) -> None:
        for name in self.containers:
            docker("rm", "-f", name, check=False)
        docker("network", "rm", self.net, check=False)
