"""The Consul client and helpers against a REAL consul agent -dev."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from weather_common.consul import (
    ConsulClient,
    ConsulError,
    ConsulUnavailable,
    HealthWatcher,
    ServiceRegistration,
    parse_duration,
)

pytestmark = pytest.mark.consul


def _name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_parse_duration():
    assert parse_duration("10s") == 10 and parse_duration("1m") == 60
    assert parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("10x")


def test_register_pass_health_deregister(consul_agent):
    c = consul_agent.client()
    name = _name()
    c.register_service(name, f"{name}-1", "10.1.2.3", 8000, ttl="10s", deregister_after="1m")
    entries, index = c.health_service(name)
    assert index > 0
    assert [(e["Service"]["ID"], e["Service"]["Address"], e["Service"]["Port"]) for e in entries] == [
        (f"{name}-1", "10.1.2.3", 8000)
    ]
    check = [ch for ch in entries[0]["Checks"] if ch["CheckID"] == f"service:{name}-1"][0]
    assert check["Status"] == "passing"
    assert check["Definition"].get("DeregisterCriticalServiceAfter", "1m0s") in ("1m0s", "1m")
    c.pass_check(ConsulClient.check_id(f"{name}-1"))
    c.deregister_service(f"{name}-1")
    assert c.health_service(name)[0] == []
    with pytest.raises(ConsulError):
        c.pass_check(ConsulClient.check_id(f"{name}-1"))  # the agent no longer knows it


def test_blocking_query_returns_on_change(consul_agent):
    c = consul_agent.client()
    name = _name()
    _, index = c.health_service(name)
    threading.Timer(0.5, lambda: c.register_service(name, f"{name}-1", "127.0.0.1", 1)).start()
    t0 = time.monotonic()
    entries, new_index = c.health_service(name, index=index, wait="10s")
    assert time.monotonic() - t0 < 5
    assert new_index > index and len(entries) == 1


def test_kv_json_roundtrip(consul_agent):
    c = consul_agent.client()
    key = f"test/{uuid.uuid4().hex}/us/10001"
    assert c.kv_get(key) is None
    c.kv_put(key, {"a": [1, 2], "b": None})
    assert c.kv_get(key) == {"a": [1, 2], "b": None}
    c.kv_delete(key)
    assert c.kv_get(key) is None


def test_token_is_read_from_file_and_sent(tmp_path, wsgi_server):
    # A tiny echo server shows the header the client sends.
    from flask import Flask, jsonify, request

    seen: list[str | None] = []
    app = Flask("echo")

    @app.get("/v1/status/leader")
    def leader():
        seen.append(request.headers.get("X-Consul-Token"))
        return jsonify("127.0.0.1:8300")

    srv = wsgi_server(app)
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    c = ConsulClient(srv.url, token_file=str(token))
    c.leader()
    time.sleep(0.01)
    token.write_text("tok-2\n")
    import os
    os.utime(token, (time.time() + 5, time.time() + 5))
    c.leader()
    assert seen == ["tok-1", "tok-2"]
    from weather_common.observability import redact

    assert "tok-2" not in redact("consul said tok-2")  # the token is masked in logs


def test_unreachable_consul_raises_consul_unavailable():
    with pytest.raises(ConsulUnavailable):
        ConsulClient("127.0.0.1:1", connect_timeout=0.2).leader()


def test_registration_survives_consul_down_at_start_and_agent_restart(consul_factory, wait_until):
    agent = consul_factory(start=False)  # Consul is down when the app starts
    name = _name()
    reg = ServiceRegistration(ConsulClient(agent.url, connect_timeout=0.2), name, f"{name}-a", "127.0.0.1", 8000,
                              ttl="3s", max_backoff=0.5).start()
    time.sleep(0.8)
    assert not reg.registered and reg.last_error
    agent.start()
    wait_until(lambda: len(agent.passing(name)) == 1, 10, what="registration once consul is up")
    # heartbeats keep the TTL check passing beyond one TTL
    time.sleep(3.5)
    assert len(agent.passing(name)) == 1
    # a -dev agent forgets everything on restart: the helper registers again
    agent.restart()
    wait_until(lambda: len(agent.passing(name)) == 1, 10, what="re-registration after agent restart")
    # Consul lists the service as passing once it is registered; the helper counts the
    # registration after its heartbeat call returns: wait for the count, not just Consul.
    wait_until(lambda: reg.registrations >= 2, 5, what="second registration counted")
    reg.stop()
    assert agent.passing(name) == []
    reg.stop()  # idempotent


def test_health_watcher_follows_changes_and_keeps_list_when_consul_down(consul_factory, wait_until):
    agent = consul_factory()
    c = agent.client()
    name = _name()
    changes: list[int] = []
    w = HealthWatcher(ConsulClient(agent.url, connect_timeout=0.2), name, wait="2s", max_backoff=0.5,
                      on_change=lambda inst: changes.append(len(inst))).start()
    assert w.wait_ready(5)
    assert w.instances() == []
    c.register_service(name, f"{name}-1", "10.0.0.1", 8000)
    c.register_service(name, f"{name}-2", "10.0.0.2", 8000)
    wait_until(lambda: len(w.instances()) == 2, 5, what="two instances")
    assert {(i.id, i.address, i.port) for i in w.instances()} == {(f"{name}-1", "10.0.0.1", 8000),
                                                                   (f"{name}-2", "10.0.0.2", 8000)}
    c.deregister_service(f"{name}-2")
    wait_until(lambda: [i.id for i in w.instances()] == [f"{name}-1"], 5, what="one instance")
    agent.stop()
    wait_until(lambda: not w.consul_ok, 5, what="watcher notices consul down")
    t0 = time.monotonic()
    assert [i.id for i in w.instances()] == [f"{name}-1"]  # last known list, immediately
    assert time.monotonic() - t0 < 0.05
    w.stop()
    assert changes[-1] == 1
