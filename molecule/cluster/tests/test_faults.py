"""Slow, partial and hostile failures, through the consumer's published port.

test_cluster.py proves the clean faults (a killed producer, a stopped OWM, a Pi
switched off); these are the ones that hurt users in practice: a burst of new users
while OpenWeatherMap is down, an OWM that drips bytes or never answers, Consul
restarting and stopping under load, OWM's quota spent, a Pi cut off by the network and
a producer that is slow but alive. Each test records what users saw
(.cache/resilience.json, quoted in docs/resilience.md): requests, failures, healthy
producers wrongly ejected, the slowest answer, and seconds until fresh answers again.

They run after test_cluster.py (pytest takes the files in name order) on the manager
and the two Pis; each leaves the cluster healthy for the next.
"""

import time

import pytest

from cluster import (
    FAKE_OWM, BreakerWatch, Consumer, FakeOwm, HostFirewall, Load, burst, consul_get, inventory_value,
    node_ip, on_node, percentile, producers_on, record, service_stopped, wait_for,
)
from netdelay import PacketDelay

MANAGER, PIS = "manager", ["pi1", "pi2"]
CACHED = ["10001", "94103", "60601", "73301", "98101", "02108"]
CONSUL = "consul"  # consul_kv_container_name
# Answers stay fresh this long in the scenario (weather_app_producer_env CACHE_TTL).
CACHE_TTL = 10
VXLAN_PORT = "4789"


@pytest.fixture(scope="module")
def consumer():
    return Consumer(MANAGER)


@pytest.fixture(scope="module")
def owm():
    return FakeOwm(MANAGER)


@pytest.fixture(scope="module")
def deadline(consumer):
    """The consumer's own request deadline, as it reports it to operators."""
    return float(consumer.status()["settings"]["request_deadline"])


def healthy_producers(consumer) -> set[str]:
    return {p["id"] for p in consumer.status()["producers"] if p["healthy"]}


def fresh(answer):
    return answer.status == 200 and answer.body.get("stale") is False


def stale_with_age(answer):
    body = answer.body
    return (answer.status == 200 and body.get("stale") is True and isinstance(body.get("age_seconds"), int)
            and body["age_seconds"] >= 0 and "out of date" in (body.get("message") or ""))


def plain_503(answer):
    return answer.status == 503 and isinstance(answer.body.get("error"), str) and answer.body.get("reason")


def warm(consumer):
    """Every cached zip answered fresh once (producers, KV and the consumer keep it)."""
    wait_for(lambda: all(fresh(consumer.weather(z)) for z in CACHED), timeout=120, interval=2,
             what="fresh answers for every cached zip")


def until_fresh(consumer, since_fault_end: float, timeout: float = 180) -> float:
    wait_for(lambda: fresh(consumer.weather(CACHED[0])) and fresh(consumer.weather(CACHED[1])),
                         timeout=timeout, interval=0.5, what="fresh answers again")
    return round(time.monotonic() - since_fault_end, 1)


def latency_figures(answers) -> dict:
    seconds = [a.seconds for a in answers]
    return {"max_latency_s": round(max(seconds, default=0.0), 3),
            "p50_latency_s": round(percentile(seconds, 50), 3),
            "p99_latency_s": round(percentile(seconds, 99), 3)}


def owm_stopped():
    return service_stopped(FAKE_OWM, MANAGER)


def test_a_burst_of_new_users_during_an_owm_outage_ejects_no_healthy_producer(consumer):
    """OWM stopped, 100 never-asked zips from 10 clients at once, then the cached zips:
    the producers' "nothing for this place" is an answer, not a failure."""
    warm(consumer)
    healthy = healthy_producers(consumer)
    assert len(healthy) >= 2, healthy
    new_zips = [f"2{n:04d}" for n in range(100)]  # nobody asked these before
    with BreakerWatch(consumer, healthy) as watch, owm_stopped():
        time.sleep(CACHE_TTL + 1)  # the producers' fresh answers have expired
        t0 = time.monotonic()
        new = burst(consumer, new_zips)
        cached = [consumer.weather(z) for z in CACHED * 3]
        took = time.monotonic() - t0
        t_end = time.monotonic()
    back = until_fresh(consumer, t_end)
    answers = new + cached
    record("OWM stopped, a burst of 100 never-asked zips (10 clients), then cached zips",
           requests=len(answers), failed=sum(1 for a in answers if a.status not in (200, 503)),
           new_zip_statuses=sorted({a.status for a in new}), new_zip_reasons=sorted({a.body.get("reason") for a in new}),
           cached_stale_with_age=sum(1 for a in cached if stale_with_age(a)), cached=len(cached),
           healthy_producers_ejected=len(watch.open_seen), breaker_polls=watch.polls,
           burst_seconds=round(took, 1), seconds_until_fresh_after_restore=back, **latency_figures(answers))
    assert watch.polls > 0
    assert watch.open_seen == set(), watch.open_seen
    assert all(plain_503(a) for a in new), [a.body for a in new if not plain_503(a)][:3]
    assert all(stale_with_age(a) for a in cached), [a.body for a in cached if not stale_with_age(a)][:3]


@pytest.mark.parametrize("mode", ["drip", "hang"])
def test_an_owm_that_drips_or_never_answers_holds_no_answer_past_the_deadline(consumer, owm, deadline, mode):
    """OWM sends one byte every 0.8 s (drip), or accepts and never answers (hang): every
    answer, cached zip or new, arrives within the consumer's deadline + 100 ms."""
    warm(consumer)
    healthy = healthy_producers(consumer)
    with BreakerWatch(consumer, healthy) as watch:
        owm.mode(mode, 0.8 if mode == "drip" else None)
        try:
            time.sleep(CACHE_TTL + 1)
            t0 = time.monotonic()
            answers = [consumer.weather(z) for z in CACHED]
            answers += burst(consumer, [f"3{n:04d}" for n in range(30)], threads=6)
            answers += [consumer.weather(z) for z in CACHED]
        finally:
            owm.mode("ok")
            t_end = time.monotonic()
    back = until_fresh(consumer, t_end)
    late = [a for a in answers if a.seconds > deadline + 0.1]
    record(f"OWM {'drips one byte every 0.8 s' if mode == 'drip' else 'accepts and never answers'}",
           requests=len(answers), failed=sum(1 for a in answers if a.status not in (200, 503)),
           statuses=sorted({a.status for a in answers}), consumer_deadline_s=deadline,
           later_than_deadline_plus_100ms=len(late), healthy_producers_ejected=len(watch.open_seen),
           seconds=round(t_end - t0, 1), seconds_until_fresh_after_restore=back, **latency_figures(answers))
    assert late == [], [(a.seconds, a.status) for a in late][:5]
    assert all(a.status in (200, 503) for a in answers), [a.body for a in answers if a.status not in (200, 503)][:3]
    assert all(stale_with_age(a) or fresh(a) for a in answers if a.body.get("zip") in CACHED)
    assert watch.open_seen == set(), watch.open_seen


def test_consul_restarting_and_stopped_under_load_fails_no_cached_request(consumer):
    """The Consul server restarted under load (leader election), then stopped for 60 s:
    every request for a cached zip is answered; p99 latency recorded per phase."""
    warm(consumer)
    with Load(consumer, CACHED, interval=0.05) as load:
        time.sleep(3)
        t0 = time.monotonic()
        on_node(MANAGER, "docker", "restart", CONSUL)
        time.sleep(20)
        t1 = time.monotonic()
        on_node(MANAGER, "docker", "stop", CONSUL)
        try:
            time.sleep(60)
        finally:
            on_node(MANAGER, "docker", "start", CONSUL)
        t2 = time.monotonic()
        time.sleep(15)
    restart, stopped, after = load.since(t0), [a for a in load.since(t1) if a.at < t2], load.since(t2)
    failures = load.failures(t0)
    record("Consul server restarted under load, then stopped for 60 s",
           requests=len(restart), failed=len(failures), statuses=dict(load.statuses(t0)),
           restart_phase_p99_s=round(percentile([a.seconds for a in restart if a.at < t1], 99), 3),
           stopped_phase_p99_s=round(percentile([a.seconds for a in stopped], 99), 3),
           after_phase_p99_s=round(percentile([a.seconds for a in after], 99), 3),
           **latency_figures(restart))
    assert failures == [], [a.body for a in failures][:5]


def test_owm_quota_spent_for_a_minute_serves_stale_and_backs_off(consumer, owm):
    """OWM answers 429 for a minute: cached zips stale with their age, new zips a plain
    503 with the reason, no producer ejected, and the producers back off (OWM calls
    counted during the minute)."""
    warm(consumer)
    healthy = healthy_producers(consumer)
    zips = CACHED + [f"4{n:04d}" for n in range(20)]
    with BreakerWatch(consumer, healthy) as watch:
        calls_before = owm.stats()["total"]
        owm.mode("429")
        try:
            with Load(consumer, zips, interval=0.1) as load:
                t0 = time.monotonic()
                time.sleep(60)
        finally:
            owm.mode("ok")
            t_end = time.monotonic()
        calls = owm.stats()["total"] - calls_before
    back = until_fresh(consumer, t_end)
    answers = load.since(t0 + CACHE_TTL + 1)  # once the fresh answers have expired
    cached = [a for a in answers if a.body.get("zip") in CACHED]
    new = [a for a in answers if a.body.get("zip") not in CACHED]
    record("OWM answers 429 (quota spent) for 60 s", requests=len(load.since(t0)),
           failed=sum(1 for a in load.since(t0) if a.status not in (200, 503)), owm_calls_during_the_minute=calls,
           cached_stale_with_age=sum(1 for a in cached if stale_with_age(a)), cached=len(cached),
           new_zip_reasons=sorted({str(a.body.get("reason")) for a in new if a.status == 503}),
           healthy_producers_ejected=len(watch.open_seen), seconds_until_fresh_after_restore=back,
           **latency_figures(load.since(t0)))
    assert watch.open_seen == set(), watch.open_seen
    assert all(stale_with_age(a) for a in cached), [a.body for a in cached if not stale_with_age(a)][:3]
    assert new and all(plain_503(a) or stale_with_age(a) for a in new), [a.body for a in new][:3]
    # Breakers back off: far fewer calls than requests, and within the key's budget.
    assert calls <= 60, calls
    # That budget is the key's, shared through Consul KV (not a per-producer fallback):
    # the producers' call window is there, under the apps' prefix.
    token = inventory_value("consul_kv_app_tokens", MANAGER)["consumer"]
    assert consul_get(MANAGER, "/v1/kv/weather/quota/?keys", token), "no shared OWM call window in KV"


def test_a_pi_cut_off_by_the_network_fails_no_request(consumer, deadline):
    """Every packet between pi1 and the manager dropped on the LAN for 30 s (not a clean
    kill: the producer still runs and still looks registered at first)."""
    victim, survivor = "pi1", "pi2"
    victim_instances = set(producers_on(victim).values())
    manager_ip, victim_ip = node_ip(MANAGER), node_ip(victim)
    warm(consumer)
    with Load(consumer, CACHED, interval=0.05) as load:
        time.sleep(3)
        t0 = time.monotonic()
        with HostFirewall() as fw:
            fw.add("-s", victim_ip, "-d", manager_ip, "-j", "DROP")
            fw.add("-s", manager_ip, "-d", victim_ip, "-j", "DROP")
            time.sleep(30)
            t1 = time.monotonic()
        served_during = {a.producer for a in load.since(t0 + 10) if fresh(a) and a.at < t1}
        # Swarm saw the node down and may replace its producer once it is back: any
        # producer of that node counts.
        _, back = wait_for(lambda: any(fresh(a) and a.producer in victim_instances | set(producers_on(victim).values())
                                       for a in load.since(t1)),
                           timeout=240, interval=1, what=f"{victim}'s producer to serve again")
    during = [a for a in load.since(t0) if a.at < t1]
    failures = load.failures(t0)
    record("a Pi cut off from the manager (packets dropped both ways, 30 s)", requests=len(load.since(t0)),
           failed=len(failures), statuses=dict(load.statuses(t0)),
           seconds_until_its_producer_served_again=round(back, 1), **latency_figures(during))
    assert failures == [], [a.body for a in failures][:5]
    assert max(a.seconds for a in during) <= deadline + 0.1
    assert served_during and not served_during & victim_instances, served_during
    assert set(producers_on(survivor).values()) & served_during


def test_a_producer_slowed_by_1_5_s_does_not_set_the_tail(consumer, deadline):
    """Every answer packet from pi2's producer to the manager held 1.5 s on the LAN
    (an NFQUEUE delay: this kernel has no netem): the consumer's latency-aware balancing
    sends it less traffic and hedges, so p99 stays far below the injected 1.5 s."""
    slow, other = "pi2", "pi1"
    manager_ip, slow_ip = node_ip(MANAGER), node_ip(slow)
    slow_instances = set(producers_on(slow).values())
    warm(consumer)
    with Load(consumer, CACHED, interval=0.05) as base:
        time.sleep(20)
    # VXLAN packets big enough to carry an HTTP answer (handshakes and ACKs pass at once).
    rule = ["-s", slow_ip, "-d", manager_ip, "-p", "udp", "--dport", VXLAN_PORT, "-m", "length",
            "--length", "200:65535", "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"]
    with PacketDelay(queue=7, delay=1.5) as held, HostFirewall() as fw:
        fw.add(*rule)
        with Load(consumer, CACHED, interval=0.05) as load:
            time.sleep(40)
    during = load.since(0)
    base_p99 = percentile([a.seconds for a in base.since(0)], 99)
    slow_p99 = percentile([a.seconds for a in during], 99)
    from_slow = sum(1 for a in during if a.producer in slow_instances)
    record("one producer slowed by 1.5 s (pi2, answer packets held on the LAN)",
           requests=len(during), failed=len(load.failures()), packets_held=held.delayed,
           answered_by_the_slow_producer=from_slow, baseline_p99_s=round(base_p99, 3),
           p99_ratio=round(slow_p99 / base_p99, 2) if base_p99 else None, **latency_figures(during))
    assert held.delayed > 0  # the fault was real: answers were held
    assert load.failures() == [], [a.body for a in load.failures()][:5]
    assert max(a.seconds for a in during) <= deadline + 0.1
    assert slow_p99 < 1.0, (slow_p99, base_p99)
    assert set(producers_on(other).values()) & {a.producer for a in during}
