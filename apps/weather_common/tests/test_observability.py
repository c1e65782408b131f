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


# ------------------------------------------------------------ strict JSON (issue 11)
def test_nan_in_a_response_is_a_generic_503_never_nan_on_the_wire(app_and_log):
    app, _, _, stream = app_and_log
    from flask import jsonify

    @app.get("/nan-dict")
    def nan_dict():
        return {"temperature_c": float("nan")}

    @app.get("/inf-jsonify")
    def inf_jsonify():
        return jsonify(temperature_c=float("inf"))

    client = app.test_client()
    for path in ("/nan-dict", "/inf-jsonify"):
        r = client.get(path)
        assert r.status_code == 503, path
        assert r.get_json() == {"error": "service temporarily unavailable"}
        assert b"NaN" not in r.data and b"Infinity" not in r.data and b"Traceback" not in r.data
    errors = [line for line in _lines(stream) if line.get("level") == "error"]
    assert len(errors) >= 2
    access = [line for line in _lines(stream) if line["logger"] == "weather.access" and line["path"] == "/nan-dict"]
    assert access and access[-1]["status"] == 503


def test_request_bodies_with_nan_are_refused(app_and_log):
    app, *_ = app_and_log
    from flask import request

    @app.post("/echo")
    def echo():
        return {"got": request.get_json()}

    client = app.test_client()
    r = client.post("/echo", data='{"t": NaN}', content_type="application/json")
    assert r.status_code == 400 and r.get_json() == {"error": "bad request"}
    r = client.post("/echo", data='{"t": 1.5}', content_type="application/json")
    assert r.status_code == 200 and r.get_json() == {"got": {"t": 1.5}}


def test_log_lines_stay_strict_json_with_nan_fields():
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    record.fields = {"temp": float("nan"), "nested": [float("-inf")]}
    line = JsonFormatter().format(record)
    assert "NaN" not in line.replace('"nan"', "") and "Infinity" not in line.replace('"-inf"', "")
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite literal {c}"))
    assert parsed["temp"] == "nan" and parsed["nested"] == ["-inf"]
