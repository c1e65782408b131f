"""Shared pytest fixtures for every package under apps/ (real processes, no mocks).

Fixtures
--------
``consul_bin`` (session)
    Path of the consul binary (1.8.7 from scripts/setup-host.sh). If /usr/bin/consul is
    missing, runs ``bash scripts/setup-host.sh`` once instead of skipping.
``consul_agent`` (session)
    A REAL ``consul agent -dev`` on free loopback ports, leader elected. Attributes:
    ``url`` (``http://127.0.0.1:<port>``), ``http_port``, ``client()`` ->
    ``weather_common.consul.ConsulClient``. Shared by the session: use unique service IDs
    / KV prefixes per test.
``consul_factory`` (function)
    ``consul_factory(start=True) -> ConsulAgent`` for tests that need their own agent, or
    one that is down at first (``start=False``, then ``.start()``), ``.stop()``,
    ``.restart()`` (same ports; a -dev agent forgets services and KV on restart).
    All agents are killed at teardown.
``owm_key`` / ``owm_key_file`` (function)
    A valid key for the fake OWM and a file holding it (secrets are files).
``wsgi_server`` (function)
    ``wsgi_server(app) -> ServerThread``: any WSGI app on a free loopback port in a
    thread (werkzeug ``make_server``, threaded). ``.url``, ``.port``, ``.stop()``;
    stopped at teardown.
``fake_owm`` (function)
    A REAL fake OWM HTTP server (apps/fake_owm) accepting ``owm_key``.
    ``.url``, ``.set_mode(mode, delay=None)`` (ok|error|slow|429|401|timeout),
    ``.stats()`` (its ``/_stats`` JSON), ``.reset_stats()``, ``.app``.
``run_producer`` (function)
    ``run_producer(**config) -> ProducerServer``: a REAL producer HTTP server (werkzeug,
    threaded) on a free port. Defaults: the ``fake_owm`` server, ``owm_key_file``, short
    OWM timeouts (connect 0.5 s, read 1 s), a unique INSTANCE_ID, no Consul; pass
    ``CONSUL_HTTP_ADDR=consul_agent.url`` etc. to override any config key.
    ``.url``, ``.app``, ``.instance``, ``.get(path, **params) -> requests.Response``,
    ``.stop()`` (also deregisters from Consul). Stopped at teardown.
``run_producer_gunicorn`` (function)
    ``run_producer_gunicorn(env: dict) -> GunicornProcess``: the producer under REAL
    gunicorn (``weather_producer/gunicorn.conf.py``) as a subprocess; ``env`` holds
    ``WEATHER_PRODUCER_*`` variables. ``.url``, ``.proc``, ``.terminate()`` (SIGTERM,
    waits), ``.output()``. Killed at teardown.

Helpers importable by tests (``from conftest import ...`` does not work with
importlib mode; use the fixtures): ``free_port()``, ``wait_until(pred, timeout)`` are
exposed as the fixtures ``free_port_fn`` and ``wait_until``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

# pytest's importlib mode names test modules after their path (``weather_producer.tests.
# test_x``) and registers placeholder parent modules. The project dirs have the same names
# as the packages, so import the real packages first or the placeholders would shadow them.
import importlib

for _pkg in ("weather_common", "weather_producer", "fake_owm", "weather_consumer"):
    try:
        importlib.import_module(_pkg)
    except ImportError:  # a package not installed yet: its own tests will say so
        pass

APPS_DIR = Path(__file__).resolve().parent
REPO_DIR = APPS_DIR.parent
CONSUL_BIN = "/usr/bin/consul"
OWM_TEST_KEY = "test-owm-key-5f2b9c0e7d"


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns a truthy value; raise AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # keep polling
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


@pytest.fixture
def wait_until():
    """``wait_until(pred, timeout=10, interval=0.05, what="...")``."""
    return _wait_until


@pytest.fixture
def free_port_fn():
    return free_port


# ---------------------------------------------------------------------------- consul
class ConsulAgent:
    """A real ``consul agent -dev`` on free loopback ports."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.http_port = free_port()
        self.ports = {
            "-dns-port": free_port(),
            "-serf-lan-port": free_port(),
            "-serf-wan-port": free_port(),
            "-server-port": free_port(),
            "-grpc-port": free_port(),
        }
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"consul-{self.http_port}.log"
        self.node = f"node-{self.http_port}"

    def start(self, timeout: float = 20.0) -> "ConsulAgent":
        cmd = [self.binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
               "-http-port", str(self.http_port), "-node", self.node, "-log-level", "warn"]
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def leader() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consul exited: {self.log_path.read_text()[-2000:]}")
            r = requests.get(f"{self.url}/v1/status/leader", timeout=1)
            return r.status_code == 200 and bool(r.json())

        _wait_until(leader, timeout, 0.1, "consul leader")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> "ConsulAgent":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self):
        from weather_common.consul import ConsulClient

        return ConsulClient(self.url)

    def passing(self, service: str) -> list[dict[str, Any]]:
        """Passing instances of ``service`` (plain HTTP call)."""
        r = requests.get(f"{self.url}/v1/health/service/{service}", params={"passing": "true"}, timeout=3)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="session")
def consul_bin() -> str:
    if not os.access(CONSUL_BIN, os.X_OK):
        subprocess.run(["bash", str(REPO_DIR / "scripts" / "setup-host.sh")], check=True)
    path = CONSUL_BIN if os.access(CONSUL_BIN, os.X_OK) else shutil.which("consul")
    if not path:
        pytest.fail("consul is not installed and scripts/setup-host.sh did not install it")
    return path


@pytest.fixture(scope="session")
def consul_agent(consul_bin, tmp_path_factory):
    agent = ConsulAgent(consul_bin, tmp_path_factory.mktemp("consul")).start()
    yield agent
    agent.stop()


@pytest.fixture
def consul_factory(consul_bin, tmp_path):
    agents: list[ConsulAgent] = []

    def make(start: bool = True) -> ConsulAgent:
        agent = ConsulAgent(consul_bin, tmp_path)
        agents.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in agents:
        agent.stop()


# --------------------------------------------------------------------------- servers
class ServerThread:
    """A WSGI app served by werkzeug on a free loopback port, in a daemon thread."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server(host, 0, app, threaded=True)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def wsgi_server():
    servers: list[ServerThread] = []

    def start(app) -> ServerThread:
        srv = ServerThread(app)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def owm_key() -> str:
    return OWM_TEST_KEY


@pytest.fixture
def owm_key_file(tmp_path, owm_key) -> Path:
    path = tmp_path / "owm_api_key"
    path.write_text(owm_key + "\n")
    path.chmod(0o600)
    return path


class FakeOwm:
    """Handle on a running fake OWM server."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.app = server.app
        self.url = server.url

    def set_mode(self, mode: str, delay: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if delay is not None:
            body["delay"] = delay
        r = requests.post(f"{self.url}/_control", json=body, timeout=5)
        r.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_stats", timeout=5).json()

    def reset_stats(self) -> None:
        requests.post(f"{self.url}/_stats/reset", timeout=5).raise_for_status()


@pytest.fixture
def fake_owm(wsgi_server, owm_key):
    from fake_owm import create_app

    fake = FakeOwm(wsgi_server(create_app({"API_KEYS": [owm_key], "TESTING": True})))
    yield fake
    try:  # release requests hung in "timeout"/"slow" mode before the server stops
        fake.set_mode("ok")
    except requests.RequestException:
        pass


class ProducerServer:
    """Handle on a running producer (werkzeug server in a thread)."""

    def __init__(self, app, server: ServerThread) -> None:
        self.app = app
        self.server = server
        self.url = server.url
        self.instance = app.extensions["weather_producer"].service.instance  # with NODE_NAME_FILE: "<node>-<INSTANCE_ID>"
        self.session = requests.Session()

    @property
    def producer(self):
        return self.app.extensions["weather_producer"]

    def get(self, path: str = "/weather", timeout: float = 10, **params: Any) -> requests.Response:
        return self.session.get(f"{self.url}{path}", params=params, timeout=timeout)

    def stop(self) -> None:
        self.server.stop()
        self.producer.close()


_instance_counter = itertools.count(1)


@pytest.fixture
def run_producer(request, wsgi_server, owm_key_file):
    started: list[ProducerServer] = []

    def start(**config: Any) -> ProducerServer:
        from weather_producer import create_app

        if "OWM_BASE_URL" not in config:
            config["OWM_BASE_URL"] = request.getfixturevalue("fake_owm").url
        # Bind the socket first, so the app (and its Consul registration) knows the real
        # port: ADVERTISE_PORT defaults to it. Requests wait until the app exists.
        holder: dict[str, Any] = {}
        app_ready = threading.Event()

        def dispatch(environ, start_response):
            app_ready.wait(10)
            return holder["app"](environ, start_response)

        server = wsgi_server(dispatch)
        defaults = {
            "TESTING": True,
            "OWM_API_KEY_FILE": str(owm_key_file),
            "OWM_CONNECT_TIMEOUT": 0.5,
            "OWM_READ_TIMEOUT": 1.0,
            "INSTANCE_ID": f"test-{os.getpid()}-{next(_instance_counter)}-{uuid.uuid4().hex[:6]}",
            "ADVERTISE_ADDRESS": "127.0.0.1",
            "ADVERTISE_PORT": server.port,
            "CONSUL_MAX_BACKOFF": 1.0,
        }
        defaults.update(config)
        try:
            app = create_app(defaults)
        except BaseException:
            server.stop()
            raise
        holder["app"] = server.app = app
        app_ready.set()
        prod = ProducerServer(app, server)
        started.append(prod)
        return prod

    yield start
    for prod in started:
        prod.stop()


class GunicornProcess:
    """The producer under real gunicorn, as a subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        conf = APPS_DIR / "weather_producer" / "weather_producer" / "gunicorn.conf.py"
        full_env = {**os.environ, **env, "GUNICORN_BIND": f"127.0.0.1:{self.port}", "GUNICORN_THREADS": "4"}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", str(conf), "weather_producer.wsgi:app"],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(log_path.parent),
            start_new_session=True,
        )
        log.close()
        _wait_until(lambda: requests.get(f"{self.url}/health", timeout=1).status_code == 200,
                    20, 0.1, f"gunicorn producer on {self.url}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def run_producer_gunicorn(tmp_path):
    procs: list[GunicornProcess] = []

    def start(env: dict[str, str]) -> GunicornProcess:
        proc = GunicornProcess(env, tmp_path / f"gunicorn-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
