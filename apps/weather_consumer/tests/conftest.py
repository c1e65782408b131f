"""Fixtures of the consumer's own tests: real stub producers and real consumer servers.

The shared fixtures (``consul_agent``, ``fake_owm``, ``run_producer``) come from
apps/conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from weather_consumer import DEFAULTS, create_app

STUB = Path(__file__).with_name("stub_producer.py")


class StubProducer:
    """Handle on one stub producer process (see stub_producer.py)."""

    def __init__(self, name: str, port: int = 0):
        self.name = name
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(STUB), self.name, str(self.port)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"stub producer {self.name} did not start")
        self.port = int(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance_id(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, mode: str = "ok", delay: float = 0.0, **extra) -> None:
        requests.post(f"{self.url}/_mode", json={"mode": mode, "delay": delay, **extra},
                      timeout=2).raise_for_status()

    def hits(self) -> int:
        return requests.get(f"{self.url}/_hits", timeout=2).json()["weather"]

    def deadlines(self) -> list:
        """The X-Deadline-Ms header of every /weather request so far (None: not sent)."""
        return requests.get(f"{self.url}/_hits", timeout=2).json()["deadline_ms"]

    def kill(self) -> None:
        """SIGKILL, like a crashed producer: connections are refused from now on."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def stubs():
    """``stubs(n)`` starts n stub producers; all are killed at the end."""
    started: list[StubProducer] = []

    def factory(n: int = 1) -> list[StubProducer]:
        new = [StubProducer(f"stub-{len(started) + i + 1}") for i in range(n)]
        started.extend(new)
        return new

    yield factory
    for s in started:
        s.close()


#: Fast settings for tests: quick ejection and recovery. The try budget keeps the
#: production nesting (try 2.0 s > a real producer's OWM budget of connect 0.5 + read 1.0 s):
#: a real producer's first lookup goes to the fake OWM, and under CPU load that can outlast
#: a short try - the consumer would abandon a healthy producer and tests asserting who
#: answered would fail at random. Tests about hanging producers set short tries themselves.
TEST_CONFIG = {
    "TESTING": True,
    "CONSUL_HTTP_ADDR": "",
    "REQUEST_DEADLINE": 4.0,
    "PER_TRY_TIMEOUT": 2.0,
    "BREAKER_FAILURE_THRESHOLD": 2,
    "BREAKER_RECOVERY_TIMEOUT": 1.0,
}


#: What makes Flask's test client count as the operator listener (TESTING only; real
#: servers are judged by the accepted socket's local port, see weather_consumer/web.py).
OPERATOR_ENVIRON = {"SERVER_PORT": str(DEFAULTS["OPERATOR_PORT"])}


class OperatorClient(FlaskClient):
    """Flask's test client, every request "arriving" on the operator port."""

    def open(self, *args, **kwargs):
        kwargs["environ_overrides"] = {**OPERATOR_ENVIRON, **(kwargs.get("environ_overrides") or {})}
        return super().open(*args, **kwargs)


def operator_client(app_or_client):
    """A test client of the same app that arrives on the operator port."""
    app = getattr(app_or_client, "application", app_or_client)
    return OperatorClient(app, app.response_class, use_cookies=True)


@pytest.fixture
def operator():
    """``operator(app_or_client)`` -> a Flask test client on the operator listener."""
    return operator_client


@pytest.fixture
def make_app():
    """``make_app(producer_urls, **config)`` -> a started consumer app (closed at the end)."""
    apps = []

    def factory(urls=(), **config):
        cfg = dict(TEST_CONFIG)
        cfg["PRODUCER_URLS"] = ",".join(urls)
        cfg.update(config)
        app = create_app(cfg)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["weather_consumer"].close()


@pytest.fixture
def live_consumer(make_app, wsgi_server):
    """``live_consumer(producer_urls, **config)`` -> a consumer on real HTTP: ``.url`` (the
    public listener) and ``.operator_url`` (a second server of the same app whose local
    port is the app's operator port)."""

    def factory(urls=(), **config):
        app = make_app(urls, **config)
        public, ops = wsgi_server(app), wsgi_server(app)
        app.extensions["weather_consumer"].operator_ports = frozenset({ops.port})
        public.operator_url = ops.url
        return public

    return factory


class ConsumerGunicorn:
    """The consumer under REAL gunicorn (its gunicorn.conf.py): a public and an operator
    listener on free loopback ports. ``.public``, ``.operator`` (base URLs), ``.ports``."""

    def __init__(self, env: dict[str, str], log_path: Path, free_port) -> None:
        self.public_port, self.operator_port = free_port(), free_port()
        self.public = f"http://127.0.0.1:{self.public_port}"
        self.operator = f"http://127.0.0.1:{self.operator_port}"
        self.log_path = log_path
        conf = Path(__file__).resolve().parents[1] / "weather_consumer" / "gunicorn.conf.py"
        full_env = {**os.environ, **env,
                    "GUNICORN_BIND": f"127.0.0.1:{self.public_port}",
                    "WEATHER_CONSUMER_OPERATOR_PORT": str(self.operator_port),
                    "GUNICORN_THREADS": "4"}
        full_env["GUNICORN_OPERATOR_BIND"] = f"127.0.0.1:{self.operator_port}"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("gunicorn")), "-c", str(conf),
                 "weather_consumer.wsgi:app"], env=full_env, stdout=log,
                stderr=subprocess.STDOUT, cwd=str(log_path.parent), start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                if all(requests.get(f"{u}/health", timeout=1).status_code == 200
                       for u in (self.public, self.operator)):
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"consumer gunicorn did not start: {self.output()[-2000:]}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def consumer_gunicorn(tmp_path, free_port_fn):
    """``consumer_gunicorn(env) -> ConsumerGunicorn`` (``env``: WEATHER_CONSUMER_* etc.)."""
    started: list[ConsumerGunicorn] = []

    def start(env: dict[str, str]) -> ConsumerGunicorn:
        proc = ConsumerGunicorn(env, tmp_path / f"consumer-{len(started)}.log", free_port_fn)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
