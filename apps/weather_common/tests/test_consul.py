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


# ------------------------------------------------- deadlines, CAS, bad entries (issue 11)
import json

from flask import Flask, Response
from rawservers import DripServer

from weather_common.consul import ConsulBadValue, Instance
from weather_common.deadline import Deadline


#: What the dripping "Consul" sends before its body bytes (one every 0.8 s).
_DRIP_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
              b"X-Consul-Index: 7\r\n\r\n")


def _stall(drip: bool) -> DripServer:
    """Loopback server that sends an HTTP status line and headers, then one body byte
    every 0.8 s (``drip=True``), or nothing at all."""
    return DripServer(_DRIP_HEAD if drip else None)


@pytest.mark.parametrize("drip", [True, False])
def test_every_call_ends_by_its_deadline(drip):
    srv = _stall(drip)
    try:
        c = ConsulClient(srv.url, read_timeout=0.6)
        for call in (lambda: c.leader(), lambda: c.kv_get("a"), lambda: c.agent_services(),
                     lambda: c.pass_check("service:x", deadline=0.3), lambda: c.kv_put("a", 1, deadline=Deadline(0.3))):
            t0 = time.monotonic()
            with pytest.raises(ConsulUnavailable) as info:
                call()
            elapsed = time.monotonic() - t0
            assert info.value.kind == "timeout"
            assert elapsed <= 0.6 + 0.1, elapsed
    finally:
        srv.close()


def test_blocking_query_deadline_is_wait_plus_jitter_plus_margin():
    srv = _stall(drip=True)
    try:
        c = ConsulClient(srv.url, blocking_margin=0.2)
        assert c.blocking_deadline("1s") == pytest.approx(1 + 1 / 16 + 0.2)
        t0 = time.monotonic()
        with pytest.raises(ConsulUnavailable):
            c.health_service("x", index=5, wait="1s")
        elapsed = time.monotonic() - t0
        assert 1.2 <= elapsed <= 1.2625 + 0.1, elapsed
    finally:
        srv.close()


def test_blocking_query_without_change_returns_normally(consul_agent):
    c = ConsulClient(consul_agent.url, blocking_margin=0.5)
    name = _name()
    _, index = c.health_service(name)
    t0 = time.monotonic()
    entries, new_index = c.health_service(name, index=index, wait="1s")
    assert 0.9 <= time.monotonic() - t0 <= 1 + 1 / 16 + 0.5
    assert entries == [] and new_index >= index


def test_kv_get_index_and_cas(consul_agent):
    c = consul_agent.client()
    key = f"test/{uuid.uuid4().hex}/cas"
    assert c.kv_get_index(key) == (None, 0)
    assert c.kv_cas(key, {"v": 1}, 0) is True  # create only if absent
    assert c.kv_cas(key, {"v": "other"}, 0) is False  # someone created it first
    value, index = c.kv_get_index(key)
    assert value == {"v": 1} and index > 0
    assert c.kv_cas(key, {"v": 2}, index) is True
    assert c.kv_cas(key, {"v": 3}, index) is False  # stale index: another writer won
    value2, index2 = c.kv_get_index(key)
    assert value2 == {"v": 2} and index2 > index
    with pytest.raises(ValueError):
        c.kv_cas(key, {"v": 4}, -1)
    with pytest.raises(ValueError):
        c.kv_put(key, {"v": float("inf")})  # never written: strict JSON
    assert c.kv_get(key) == {"v": 2}


def test_kv_garbage_values_raise_consul_bad_value(consul_agent):
    import requests

    c = consul_agent.client()
    key = f"test/{uuid.uuid4().hex}/bad"
    requests.put(f"{consul_agent.url}/v1/kv/{key}", data=b'{"t": NaN}', timeout=5).raise_for_status()
    with pytest.raises(ConsulBadValue):
        c.kv_get(key)
    with pytest.raises(ConsulBadValue):
        c.kv_get_index(key)


def _fake_consul(wsgi_server, state):
    """A Consul impostor serving whatever ``state["body"]`` holds for health queries
    (real Consul cannot be made to send these entries)."""
    app = Flask("fake-consul")

    @app.get("/v1/health/service/<name>")
    def health(name):
        state["calls"] += 1
        if "wait" in __import__("flask").request.args:
            time.sleep(0.05)
        return Response(state["body"], headers={"X-Consul-Index": str(state["calls"] + 10)},
                        mimetype="application/json")

    return wsgi_server(app)


def _entry(sid, address="10.0.0.1", port=8000, node_addr="10.9.9.9", node="n1"):
    return {"Node": {"Node": node, "Address": node_addr},
            "Service": {"ID": sid, "Service": "weather-producer", "Address": address, "Port": port,
                        "Tags": [], "Meta": {"v": "1"}}}


def test_health_watcher_skips_only_the_bad_entries(wsgi_server, wait_until, caplog):
    good = [_entry("p-1"), _entry("p-2", address="", node_addr="10.0.0.2"), _entry("p-3", address="producer-3.lan")]
    bad = [
        "not an object", None, 42, [1],
        {"Service": "nope"},
        {"Node": {}, "Service": {"Address": "10.0.0.5", "Port": 8000}},  # no ID
        _entry("b-port0", port=0), _entry("b-port-big", port=70000), _entry("b-port-str", port="8000"),
        _entry("b-port-bool", port=True), _entry("b-port-float", port=8000.5),
        _entry("b-addr", address="", node_addr=""), _entry("b-addr-garbage", address="10.0.0.1:80/x"),
        _entry("b-addr-space", address="a b"), _entry("b-addr-type", address=["10.0.0.1"]),
        _entry("b-addr-any", address="0.0.0.0"),
    ]
    state = {"calls": 0, "body": json.dumps(bad[:6] + good + bad[6:])}
    srv = _fake_consul(wsgi_server, state)
    with caplog.at_level("WARNING", logger="weather_common.consul"):
        w = HealthWatcher(ConsulClient(srv.url), "weather-producer", wait="1s", max_backoff=0.2).start()
        try:
            assert w.wait_ready(5)
            wait_until(lambda: state["calls"] >= 4, 5, what="several polls")
            got = w.instances()
            assert [(i.id, i.address, i.port) for i in got] == [
                ("p-1", "10.0.0.1", 8000), ("p-2", "10.0.0.2", 8000), ("p-3", "producer-3.lan", 8000)]
            assert w.consul_ok and w.last_skipped == len(bad)
            assert w.skipped_entries >= 3 * len(bad)
        finally:
            w.stop()
    skipped_logs = [r for r in caplog.records if "skipping bad catalog entry" in r.getMessage()]
    # once per distinct (id, reason), not once per poll: the four non-objects share one line
    messages = [r.getMessage() for r in skipped_logs]
    assert len(messages) == len(set(messages)) == len(bad) - 3


def test_health_watcher_keeps_last_list_on_garbage_answers(wsgi_server, wait_until):
    state = {"calls": 0, "body": json.dumps([_entry("p-1"), _entry("p-2", address="10.0.0.2")])}
    srv = _fake_consul(wsgi_server, state)
    w = HealthWatcher(ConsulClient(srv.url), "weather-producer", wait="1s", max_backoff=0.2).start()
    try:
        wait_until(lambda: len(w.instances()) == 2, 5, what="two instances")
        for body in ('{"not": "a list"}', "<html>oops</html>", '[{"Service": {"Port": NaN}}]',
                     json.dumps([_entry("x", port=0)])):
            state["body"] = body
            calls = state["calls"]
            wait_until(lambda: state["calls"] >= calls + 2, 5, what="polls on garbage")
            assert [i.id for i in w.instances()] == ["p-1", "p-2"], body
        # an EMPTY list from Consul is real news: no instance is passing
        state["body"] = "[]"
        wait_until(lambda: w.instances() == [], 5, what="empty list")
    finally:
        w.stop()


def test_health_watcher_keeps_one_id_per_node_not_per_catalog(wsgi_server, wait_until):
    """Consul service IDs are unique per node only: a copy of a producer's ID registered on
    another node (listed first) must not hide the real entry; on one node the first wins."""
    state = {"calls": 0, "body": json.dumps([
        _entry("p-n2-1", address="192.0.2.66", node="a-rogue"), _entry("p-n2-1", address="10.0.0.2", node="n2"),
        _entry("p-n1-1", node="n1"), _entry("p-n1-1", address="10.0.0.9", node="n1")])}
    seen = []
    w = HealthWatcher(ConsulClient(_fake_consul(wsgi_server, state).url), "weather-producer", wait="1s",
                      max_backoff=0.2, on_change=seen.append).start()
    try:
        wait_until(lambda: seen, 5, what="first list")
        assert [(i.id, i.node, i.address) for i in w.instances()] == [
            ("p-n1-1", "n1", "10.0.0.1"), ("p-n2-1", "a-rogue", "192.0.2.66"), ("p-n2-1", "n2", "10.0.0.2")]
        assert [(i.id, i.node) for i in seen[0]] == [(i.id, i.node) for i in w.instances()]
    finally:
        w.stop()


def test_instance_from_entry_validates():
    inst = Instance.from_entry(_entry("a", address="::1", port=65535))
    assert (inst.id, inst.address, inst.port, inst.node, inst.meta) == ("a", "::1", 65535, "n1", {"v": "1"})
    for bad in (_entry("a", port=-1), _entry("", port=1), {"Service": {"ID": "x", "Port": 1}}):
        with pytest.raises(ValueError):
            Instance.from_entry(bad)
