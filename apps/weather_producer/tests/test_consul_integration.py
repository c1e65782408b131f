"""The producer with a REAL consul agent: registration, KV last-good, SIGTERM under gunicorn."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from weather_producer import healthcheck

pytestmark = pytest.mark.consul

SERVICE = "weather-producer"


def _service_name() -> str:
    # a unique service name per test: the session agent is shared
    return f"weather-producer-{uuid.uuid4().hex[:6]}"


def test_registers_with_ttl_check_and_deregisters_on_stop(run_producer, consul_agent, wait_until):
    name = _service_name()
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_SERVICE_NAME=name, ADVERTISE_PORT=8123,
                        CONSUL_CHECK_TTL="10s", CONSUL_DEREGISTER_AFTER="1m")
    entries = wait_until(lambda: consul_agent.passing(name), 10, what="registration")
    svc = entries[0]["Service"]
    assert svc["ID"] == f"{name}-{prod.instance}"
    assert (svc["Address"], svc["Port"]) == ("127.0.0.1", 8123)
    check = [c for c in entries[0]["Checks"] if c["CheckID"] == f"service:{svc['ID']}"][0]
    assert check["Status"] == "passing"
    # Consul lists the service as passing as soon as it is registered (Status passing);
    # the helper's flag is set after its first heartbeat call returns: wait for that too.
    assert prod.producer.registration.wait_registered(5)
    ready = prod.get("/ready").json()
    assert ready["consul_registered"] is True and ready["cache_backend"] == "consul"
    assert healthcheck.check(f"{prod.url}/ready") == (True, "ready, registered in Consul")
    prod.stop()
    assert consul_agent.passing(name) == []


def test_node_name_file_puts_the_node_in_the_service_id(run_producer, consul_agent, wait_until, tmp_path):
    """With NODE_NAME_FILE the ID is <service>-<node>-<INSTANCE_ID>: the node it is on owns it."""
    name = _service_name()
    node_file = tmp_path / "node_name"
    node_file.write_text(f"{consul_agent.node}\n")
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_SERVICE_NAME=name,
                        NODE_NAME_FILE=str(node_file), INSTANCE_ID="task-1")
    entries = wait_until(lambda: consul_agent.passing(name), 10, what="registration")
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [
        (consul_agent.node, f"{name}-{consul_agent.node}-task-1")]
    assert entries[0]["Service"]["Meta"] == {"instance": f"{consul_agent.node}-task-1"}
    assert prod.get(zip="10001").json()["instance"] == f"{consul_agent.node}-task-1"


def test_consul_down_at_start_producer_serves_then_registers(run_producer, consul_factory, fake_owm, wait_until):
    agent = consul_factory(start=False)
    name = _service_name()
    t0 = time.monotonic()
    prod = run_producer(CONSUL_HTTP_ADDR=agent.url, CONSUL_SERVICE_NAME=name, CACHE_KV_PREFIX="t/down")
    assert time.monotonic() - t0 < 3  # start-up does not wait for Consul
    r = prod.get(zip="10001")
    assert r.status_code == 200 and r.json()["stale"] is False  # serves without Consul
    assert prod.get("/ready").status_code == 200
    assert prod.producer.registration.registered is False
    # ...but the container healthcheck (what swarm gates a rolling update on) says not yet
    assert healthcheck.check(f"{prod.url}/ready") == (False, "ready, but not registered in Consul (yet)")
    agent.start()
    wait_until(lambda: len(agent.passing(name)) == 1, 15, what="registration after consul came up")
    assert prod.producer.registration.wait_registered(5)  # flag set after the first heartbeat
    assert healthcheck.check(f"{prod.url}/ready")[0] is True


def test_kv_last_good_shared_between_instances_and_survives_restart(run_producer, consul_agent, fake_owm):
    prefix = f"weather/cache-{uuid.uuid4().hex[:6]}"
    common = dict(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False, CACHE_KV_PREFIX=prefix)
    a = run_producer(**common)
    # CACHE_TTL=0: for b and c, a's KV entry is no longer fresh (else they would serve it
    # as a fresh answer, see test_fresh_answers_are_shared_through_kv_no_second_owm_call).
    b = run_producer(**common, CACHE_TTL=0)
    good = a.get(zip="10001").json()
    assert a.producer.service.store.flush(5)  # KV writes are asynchronous
    stored = consul_agent.client().kv_get(f"{prefix}/us/10001")
    assert stored["value"]["city"] == good["city"] and stored["fetched_at"] > 0
    fake_owm.set_mode("error")
    # b never fetched 10001 itself: its stale answer comes from a's KV entry
    r = b.get(zip="10001")
    assert r.status_code == 200
    body = r.json()
    assert body["stale"] is True and body["instance"] == b.instance
    assert body["temperature_c"] == good["temperature_c"]
    # a producer restart (a new process = new app, empty memory) still has it
    a.stop()
    c = run_producer(**common, CACHE_TTL=0)
    body = c.get(zip="10001").json()
    assert body["stale"] is True and body["city"] == good["city"]
    # unknown location and OWM down: a marked 503
    r = c.get(zip="10002")
    assert r.status_code == 503 and r.headers["X-Weather-Answer"] == "no-data"


def test_gunicorn_sigterm_deregisters(run_producer_gunicorn, consul_agent, fake_owm, owm_key_file, owm_key, wait_until):
    name = _service_name()
    instance = f"gunicorn-{uuid.uuid4().hex[:6]}"
    g = run_producer_gunicorn({
        "WEATHER_PRODUCER_CONSUL_HTTP_ADDR": consul_agent.url,
        "WEATHER_PRODUCER_CONSUL_SERVICE_NAME": name,
        "WEATHER_PRODUCER_OWM_BASE_URL": fake_owm.url,
        "WEATHER_PRODUCER_OWM_API_KEY_FILE": str(owm_key_file),
        "WEATHER_PRODUCER_INSTANCE_ID": instance,
        "WEATHER_PRODUCER_ADVERTISE_ADDRESS": "127.0.0.1",
    })
    wait_until(lambda: consul_agent.passing(name), 15, what="gunicorn producer registration")
    r = requests.get(f"{g.url}/weather", params={"zip": "10001"}, timeout=5)
    assert r.status_code == 200 and r.json()["instance"] == instance
    rc = g.terminate()
    assert rc == 0, g.output()[-2000:]
    assert consul_agent.passing(name) == []  # gone immediately, not after the TTL
    assert requests.get(f"{consul_agent.url}/v1/agent/services", timeout=3).json().get(f"{name}-{instance}") is None
    out = g.output()
    assert "deregistered" in out
    assert owm_key not in out


def test_run_producer_registers_its_real_port(run_producer, consul_agent, wait_until):
    name = _service_name()
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_SERVICE_NAME=name)
    entries = wait_until(lambda: consul_agent.passing(name), 10, what="registration")
    svc = entries[0]["Service"]
    assert (svc["Address"], svc["Port"]) == ("127.0.0.1", prod.server.port)
    # What Consul advertises really serves the producer.
    r = requests.get(f"http://{svc['Address']}:{svc['Port']}/weather", params={"zip": "10001"}, timeout=5)
    assert r.status_code == 200 and r.json()["instance"] == prod.instance


def test_fresh_answers_are_shared_through_kv_no_second_owm_call(run_producer, consul_agent, fake_owm):
    prefix = f"t/share-{uuid.uuid4().hex[:6]}"
    a, b = (run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False, CACHE_KV_PREFIX=prefix)
            for _ in range(2))
    fake_owm.reset_stats()
    first = a.get(zip="10001").json()
    assert a.producer.service.store.flush(5)  # KV writes are asynchronous
    second = b.get(zip="10001").json()  # B's own fresh cache is empty: KV has A's answer
    assert first["stale"] is False and second["stale"] is False
    assert (second["instance"], second["temperature_c"]) == (b.instance, first["temperature_c"])
    assert fake_owm.stats()["total"] == 1
    # An answer older than the TTL is not fresh: B calls OWM itself.
    c = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False, CACHE_KV_PREFIX=prefix,
                     CACHE_TTL=0)
    assert c.get(zip="10001").json()["stale"] is False
    assert fake_owm.stats()["total"] == 2


NOW = time.time()
GOOD_VALUE = {"city": "Poisonville", "description": "clear sky", "temperature_c": 12.5,
              "observed_at": "2024-05-01T12:00:00Z"}


@pytest.mark.parametrize("raw", [
    # fetched_at an hour in the future: would be "fresh" forever
    json.dumps({"value": GOOD_VALUE, "fetched_at": NOW + 3600}),
    # NaN temperature (Consul stores any bytes; json.dumps writes the NaN literal)
    json.dumps({"value": {**GOOD_VALUE, "temperature_c": float("nan")}, "fetched_at": NOW}),
    json.dumps({"value": {**GOOD_VALUE, "temperature_c": 1e308 * 10}, "fetched_at": NOW}),
    # wrong types
    json.dumps({"value": {**GOOD_VALUE, "temperature_c": "hot"}, "fetched_at": NOW}),
    json.dumps({"value": {**GOOD_VALUE, "city": 5}, "fetched_at": NOW}),
    json.dumps({"value": {**GOOD_VALUE, "observed_at": 1714564800}, "fetched_at": NOW}),
    json.dumps({"value": "sunny", "fetched_at": NOW}),
    json.dumps({"value": GOOD_VALUE, "fetched_at": "yesterday"}),
    json.dumps([GOOD_VALUE]),
    "not json at all",
], ids=["future", "nan", "infinity", "temp-str", "city-int", "observed-int", "value-str", "fetched-str",
        "list", "garbage"])
def test_poisoned_kv_entry_is_ignored(run_producer, consul_agent, fake_owm, raw):
    prefix = f"t/poison-{uuid.uuid4().hex[:6]}"
    r = requests.put(f"{consul_agent.url}/v1/kv/{prefix}/us/10001", data=raw.encode(), timeout=5)
    assert r.status_code == 200 and r.text.strip() == "true"
    prod = run_producer(CONSUL_HTTP_ADDR=consul_agent.url, CONSUL_REGISTER=False, CACHE_KV_PREFIX=prefix,
                        OWM_QUOTA_KV_PREFIX=f"t/q-{uuid.uuid4().hex[:6]}")
    # OWM down: the poisoned entry is not served as the stale answer
    fake_owm.set_mode("error")
    r = prod.get(zip="10001")
    assert r.status_code == 503 and r.headers["X-Weather-Answer"] == "no-data", r.text
    assert b"Poisonville" not in r.content and b"NaN" not in r.content
    # OWM up: the poisoned entry is not taken as a fresh shared answer either: OWM is asked
    fake_owm.set_mode("ok")
    r = prod.get(zip="10001")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["city"] == "City 10001" and body["stale"] is False
    assert fake_owm.stats()["by_mode"].get("ok") == 1
    # ... and the good answer replaces the poisoned entry in KV
    assert prod.producer.service.store.flush(5)
    stored = consul_agent.client().kv_get(f"{prefix}/us/10001")
    assert stored["value"]["city"] == "City 10001" and stored["fetched_at"] <= time.time()
