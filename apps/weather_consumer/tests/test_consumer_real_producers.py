"""End to end with REAL producers (apps/weather_producer) backed by the fake OWM."""

from __future__ import annotations

import os
import threading
import time

import requests
from weather_consumer.service import CONSUMER_STALE_MESSAGE, PRODUCER_STALE_MESSAGE


def api(client, zip_code="10001", **qs):
    return client.get("/api/weather", query_string={"zip": zip_code, **qs})




def test_three_real_producers_share_the_traffic(run_producer, make_app):
    producers = [run_producer() for _ in range(3)]
    # A short latency memory: this is about equal producers sharing, and on a loaded
    # machine one call's 60 ms hiccup would keep its producer out for the default 5 s
    # decay's ~4 s, longer than the 30 requests take (seen once in a rehearsal: 14/15/1).
    client = make_app([p.url for p in producers], LATENCY_DECAY=0.1).test_client()
    bodies = [api(client, f"1000{i % 5}").get_json() for i in range(30)]
    by_producer = {p.instance: 0 for p in producers}
    contract = {"zip", "country", "city", "description", "temperature_c", "observed_at",
                "instance", "stale", "age_seconds", "message", "source", "producer"}
    for b in bodies:
        assert contract <= set(b)
        assert b["stale"] is False and b["source"] == "producer" and b["message"] is None
        by_producer[b["instance"]] += 1
    # Equally fast instances take turns; one slowed by a cold OWM lookup gets a bit less.
    assert sum(by_producer.values()) == 30 and min(by_producer.values()) >= 5, by_producer
    # The producer's own instance name is passed through too.
    # Users see "producer-<n>" (the position in PRODUCER_URLS), never an address.
    instances = {b["producer"]: b["instance"] for b in bodies}
    assert instances == {f"producer-{n}": p.instance for n, p in enumerate(producers, 1)}
    page = client.get("/weather?zip=10001").get_data(as_text=True)
    assert "City 10001" in page


def test_real_producer_killed_mid_traffic_no_failed_request(run_producer_gunicorn, fake_owm,
                                                            owm_key_file, make_app, wait_until):
    """SIGKILL one of three producers running under gunicorn while traffic flows."""
    procs = [run_producer_gunicorn({
        "WEATHER_PRODUCER_OWM_BASE_URL": fake_owm.url,
        "WEATHER_PRODUCER_OWM_API_KEY_FILE": str(owm_key_file),
        "WEATHER_PRODUCER_INSTANCE_ID": f"g{i}",
        "WEATHER_PRODUCER_CACHE_TTL": "0",  # every request goes through to OWM
    }) for i in range(3)]
    client = make_app([p.url for p in procs]).test_client()
    results, stop = [], threading.Event()

    def traffic(n):
        while not stop.is_set():
            r = api(client, f"2000{n}")
            results.append((r.status_code, r.get_json().get("source"), r.get_json().get("instance")))

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) > 30, what="traffic before the kill")
    procs[0].kill()
    n_at_kill = len(results)
    wait_until(lambda: len(results) > n_at_kill + 60, what="traffic after the kill")
    stop.set()
    for t in threads:
        t.join(10)
    assert {(s, src) for s, src, _i in results} == {(200, "producer")}
    after = {i for _s, _src, i in results[n_at_kill + 20:]}
    assert after == {"g1", "g2"}, f"traffic must move to the survivors, saw {after}"


def test_all_real_producers_down_stale_answer_then_503_for_unknown(run_producer, make_app):
    producers = [run_producer() for _ in range(2)]
    client = make_app([p.url for p in producers]).test_client()
    fresh = api(client).get_json()
    for p in producers:
        p.stop()
    r = api(client)
    body = r.get_json()
    assert r.status_code == 200 and body["stale"] is True
    assert body["source"] == "consumer-cache" and body["message"] == CONSUMER_STALE_MESSAGE
    assert body["temperature_c"] == fresh["temperature_c"] and body["age_seconds"] >= 0
    r = api(client, "10002")
    assert r.status_code == 503 and r.get_json()["error"]


def test_unknown_zip_from_real_producer_is_404(run_producer, make_app, fake_owm):
    producers = [run_producer() for _ in range(3)]
    client = make_app([p.url for p in producers]).test_client()
    fake_owm.reset_stats()
    r = api(client, "00042")
    assert r.status_code == 404 and r.get_json()["error"] == "unknown zip"
    assert fake_owm.stats()["total"] == 1  # one producer asked, once
    assert client.get("/weather?zip=00042").status_code == 404


def test_real_producer_stale_answer_passed_through_not_replacing_the_newer_copy(
        run_producer, make_app, fake_owm):
    prod = run_producer(CACHE_TTL=0, BREAKER_FAILURE_THRESHOLD=100)
    app = make_app([prod.url])
    client = app.test_client()
    fresh = api(client).get_json()
    assert fresh["stale"] is False
    cache = app.extensions["weather_consumer"].cache
    saved_before = cache.get("10001", "us")
    time.sleep(1.1)
    fake_owm.set_mode("error")
    r = api(client)
    body = r.get_json()
    assert r.status_code == 200 and body["stale"] is True
    assert body["source"] == "producer" and body["message"] == PRODUCER_STALE_MESSAGE
    page = client.get("/weather?zip=10001").get_data(as_text=True)
    assert PRODUCER_STALE_MESSAGE in page and 'id="stale-banner"' in page
    # The consumer's own copy is still the FRESH answer, now older (not reset by the stale one).
    saved_after = cache.get("10001", "us")
    assert saved_after.body == saved_before.body
    assert saved_after.age_seconds >= 1.0


def test_consumer_under_gunicorn_logs_one_json_line_per_request(tmp_path, run_producer,
                                                                free_port_fn, wait_until):
    import json
    import subprocess
    import sys
    from pathlib import Path

    prod = run_producer()
    port = free_port_fn()
    conf = Path(__file__).resolve().parents[1] / "weather_consumer" / "gunicorn.conf.py"
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_THREADS": "4",
           "GUNICORN_OPERATOR_BIND": f"127.0.0.1:{free_port_fn()}",
           "WEATHER_CONSUMER_PRODUCER_URLS": prod.url}
    log = tmp_path / "consumer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", str(conf),
                                 "weather_consumer.wsgi:app"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/ready", timeout=1).status_code == 200, 20)
        assert requests.get(f"{url}/api/weather?zip=10001", timeout=5).json()["city"] == "City 10001"
        assert requests.get(f"{url}/weather?zip=abc!", timeout=5).status_code == 400
        assert requests.get(f"{url}/", timeout=5).status_code == 200
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(15)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("message") == "request"]
    paths = [(a["path"], a["status"]) for a in access]
    assert ("/api/weather", 200) in paths and ("/weather", 400) in paths and ("/", 200) in paths
    assert sum(1 for p, _s in paths if p == "/api/weather") == 1
