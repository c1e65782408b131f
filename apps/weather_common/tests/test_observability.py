"""Logs, metrics, health endpoints and JSON errors on a real Flask app."""

from __future__ import annotations

import io
import json
import logging

import pytest
from flask import Flask

from weather_common.breaker import CircuitBreaker
from weather_common.observability import JsonFormatter, init_app, redact, register_secret


@pytest.fixture
def app_and_log():
    app = Flask("obs-test")
    ready = {"ok": True}
    metrics = init_app(app, service="obs-test",
                       ready_check=lambda: (ready["ok"], {} if ready["ok"] else {"reason": "owm key rejected"}))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret-ish internals")

    @app.get("/ok")
    def ok():
        return {"fine": True}

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    yield app, metrics, ready, stream
    logging.getLogger().removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_unexpected_exception_is_503_json_and_logged(app_and_log):
    app, _, _, stream = app_and_log
    r = app.test_client().get("/boom")
    assert r.status_code == 503
    assert r.get_json() == {"error": "service temporarily unavailable"}
    assert b"Traceback" not in r.data and b"secret-ish" not in r.data
    assert any(line.get("level") == "error" and "RuntimeError" in line.get("exc", "") for line in _lines(stream))


def test_unknown_route_and_method_are_json(app_and_log):
    app, *_ = app_and_log
    client = app.test_client()
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json() == {"error": "not found"}
    r = client.post("/ok")
    assert r.status_code == 405 and r.get_json() == {"error": "method not allowed"}


def test_access_log_has_no_query_string(app_and_log):
    app, _, _, stream = app_and_log
    app.test_client().get("/ok?appid=SUPERSECRET&zip=1")
    access = [line for line in _lines(stream) if line["logger"] == "weather.access"]
    assert access, stream.getvalue()
    line = access[-1]
    assert line["path"] == "/ok" and line["method"] == "GET" and line["status"] == 200
    assert isinstance(line["duration_ms"], float) and "remote_addr" in line
    assert "SUPERSECRET" not in stream.getvalue()


def test_redaction_of_registered_secrets_and_url_params():
    register_secret("k3y-abcdef123")
    text = redact("GET https://x/?zip=1&appid=other-key url=k3y-abcdef123 X-Consul-Token: tok123")
    assert "k3y-abcdef123" not in text and "other-key" not in text and "tok123" not in text
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed %s", ("appid=k3y-abcdef123",), None)
    assert "k3y-abcdef123" not in JsonFormatter().format(record)


def test_health_ready_metrics(app_and_log):
    app, metrics, ready, _ = app_and_log
    client = app.test_client()
    assert client.get("/health").get_json()["status"] == "ok"
    assert client.get("/ready").status_code == 200
    ready["ok"] = False
    r = client.get("/ready")
    assert r.status_code == 503 and r.get_json()["reason"] == "owm key rejected"
    br = CircuitBreaker(failure_threshold=1, name="obs-br")
    metrics.watch_breaker(br)
    metrics.cache_hits.labels(cache="fresh").inc()
    client.get("/ok")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'weather_http_requests_total{endpoint="/ok",method="GET",status="200"} 1.0' in text
    assert 'weather_circuit_breaker_state{breaker="obs-br"} 0.0' in text
    assert 'weather_cache_hits_total{cache="fresh"} 1.0' in text
    try:
        br.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    text = client.get("/metrics").get_data(as_text=True)
    assert 'weather_circuit_breaker_state{breaker="obs-br"} 2.0' in text
