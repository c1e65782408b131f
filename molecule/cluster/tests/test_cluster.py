"""The whole cluster, end to end, through the consumer's published port on the manager.

Each fault test starts a background load (a request every 0.1 s), injects the fault,
checks what users saw, undoes the fault, and records the measured outcome in
.cache/resilience.json (docs/resilience.md quotes it). The tests run in file order;
each leaves the cluster healthy for the next.
"""

import hashlib
import json
import time
from collections import Counter
from contextlib import contextmanager

import pytest

from cluster import (
    CHANGED_SETTINGS, CONSUMER, FAKE_OWM, NETWORK, PRODUCER_APP, PRODUCERS, PROJECT, Consumer, ConsulWatch,
    ConsumerView, Load,
    consul_producers, container_ids, extra_inventory, inventory_value, node_diagnosis, on_node,
    producers_on, record, recap, run_playbook, service_stopped, sh, tasks_on, wait_for,
)

MANAGER, PIS = "manager", ["pi1", "pi2"]
THIRD = "pi3"  # started and added by the third-Pi test; the tests after it use it
ZIPS = ["10001", "94103", "60601", "73301", "98101", "02108"]


@pytest.fixture(scope="module")
def consumer():
    return Consumer(MANAGER)


def instances(nodes):
    return {inst: node for node in nodes for inst in producers_on(node).values()}


def fresh(answer):
    return answer.status == 200 and answer.body.get("stale") is False


def serving_instances(consumer, rounds=24):
    """Producer instances that answered fresh in some rounds of requests."""
    seen = set()
    for i in range(rounds):
        a = consumer.weather(ZIPS[i % len(ZIPS)])
        if fresh(a):
            seen.add(a.producer)
    return seen


def test_every_pi_runs_a_registered_producer(consumer):
    by_instance = instances(PIS)
    assert {node for node in by_instance.values()} == set(PIS)
    status = consumer.status()
    healthy = {p["id"] for p in status["producers"] if p["healthy"]}
    for inst in by_instance:
        assert any(inst in pid for pid in healthy), (inst, status["producers"])


def test_fresh_weather_from_a_producer_on_an_arm64_pi(consumer):
    by_instance = instances(PIS)
    answers, _ = wait_for(lambda: [a for a in (consumer.weather(z) for z in ZIPS) if fresh(a)],
                          timeout=60, what="a fresh answer")
    answer = answers[0]
    assert answer.body["source"] == "producer"
    assert answer.body["city"] == f"City {answer.body['zip']}"
    node = by_instance[answer.producer]
    assert on_node(node, "uname", "-m") == "aarch64"
    # Client-side balancing: both Pis serve. The balancer is latency-aware: a Pi that
    # answered one call slowly (qemu, a busy host) gets no traffic until its cost decays
    # (LATENCY_DECAY, 5 s), so both must serve within a minute of steady traffic, not
    # within any one burst of requests.
    seen = set()

    def both_pis_served():
        seen.update(by_instance[i] for i in serving_instances(consumer, rounds=12) if i in by_instance)
        return seen == set(PIS)

    try:
        wait_for(both_pis_served, timeout=60, interval=1, what="fresh answers from both Pis")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; served: {sorted(seen)}; "
                             f"the consumer's producers: {consumer.status().get('producers')}") from exc


def test_every_node_runs_the_published_multiarch_image_of_its_architecture():
    """The images tier published one multi-architecture tag per app (a manifest list);
    the amd64 manager and the arm64 Pis run that same reference, each its own platform,
    pinned by the digest the images tier recorded when it published the tag, and pulled
    through the pull-only registry (same store, another address)."""
    published = json.loads(on_node(MANAGER, "cat", "/etc/ansible/facts.d/weather_images.fact"))
    registry = json.loads(on_node(MANAGER, "cat", "/etc/ansible/facts.d/private_registry.fact"))
    multiarch = published["multiarch"]
    assert set(published["images"]["producer"]) == {"amd64", "arm64"}
    running = {MANAGER: ("consumer", tasks_on(MANAGER, CONSUMER)[0], "amd64")}
    running.update({pi: ("producer", next(iter(producers_on(pi))), "arm64") for pi in PIS})
    for node, (app, container, arch) in running.items():
        image = on_node(node, "docker", "inspect", "-f", "{{ .Config.Image }}", container)
        tag, _, digest = image.partition("@")
        address, _, path = tag.partition("/")
        as_published = f"{registry['address']}/{path}"
        assert address == registry["pull_address"], (node, image, registry)
        assert as_published == multiarch[app] and digest == published["digests"][as_published], \
            (node, image, published)
        assert on_node(node, "docker", "image", "inspect", "-f", "{{ .Architecture }}", image) == arch


def test_the_key_and_tokens_are_swarm_secrets_never_in_inspect_output():
    """The OWM key and the Consul tokens reach the tasks as swarm secrets (a tmpfs file,
    the images' user, 0400); neither the services, the task containers nor the compose
    file on the manager show them."""
    secrets = [inventory_value("weather_app_owm_api_key"), *inventory_value("consul_kv_app_tokens").values()]
    container = next(iter(producers_on("pi1")))
    shown = [on_node(MANAGER, "docker", "service", "inspect", PRODUCERS, CONSUMER),
             on_node("pi1", "docker", "inspect", container),
             on_node(MANAGER, "cat", "/etc/weather-app/stack.yml")]
    assert not [value for value in secrets for text in shown if value in text]
    mounted = on_node("pi1", "docker", "exec", container, "python3", "-c",
                      "import hashlib, os; p = '/run/secrets/owm_api_key'; s = os.stat(p);"
                      "print(s.st_uid, s.st_gid, oct(s.st_mode & 0o777),"
                      " hashlib.sha256(open(p, 'rb').read().strip()).hexdigest())")
    uid, gid, mode, digest = mounted.split()
    assert digest == hashlib.sha256(str(secrets[0]).strip().encode()).hexdigest()
    assert (uid, gid, mode) == ("10001", "10001", "0o400")


def test_a_crashed_producer_fails_no_request(consumer):
    victim_node = "pi1"
    container, instance = next(iter(producers_on(victim_node).items()))
    pid = on_node(victim_node, "docker", "inspect", "-f", "{{ .State.Pid }}", container)
    with Load(consumer, ZIPS) as load:
        time.sleep(3)
        t0 = time.monotonic()
        on_node(victim_node, "kill", "-9", pid)  # a crash, not `docker stop`
        time.sleep(8)
        during = load.since(t0)
        others = {a.producer for a in during if fresh(a)}
        # Swarm starts a new task on the node (restart policy) and it registers in Consul.
        _, back = wait_for(lambda: (set(producers_on(victim_node).values()) - {instance})
                           & serving_instances(consumer, rounds=12),
                           timeout=180, interval=1, what=f"a new producer on {victim_node} to serve")
    failures = load.failures(t0)
    record("producer crash (kill -9)", requests=len(load.since(t0)),
           failed=len(failures), seconds_until_it_served_again=round(back + 8, 1))
    assert failures == [], failures[:5]
    # The other producers took the traffic while the victim was down.
    assert others - {instance}, others
    assert container not in producers_on(victim_node)


def test_owm_down_serves_stale_answers_with_their_age(consumer):
    for z in ZIPS:  # every zip cached (last good) by some producer
        consumer.weather(z)
    with Load(consumer, ZIPS) as load:
        t0 = time.monotonic()
        with service_stopped(FAKE_OWM, MANAGER):
            stale, to_stale = wait_for(
                lambda: [a for a in load.since(t0) if a.status == 200 and a.body.get("stale")],
                timeout=120, what="a stale answer")
            time.sleep(5)
            t1 = time.monotonic()
        _, to_fresh = wait_for(lambda: [a for a in load.since(t1 + 2) if fresh(a)],
                               timeout=180, what="fresh answers after OWM is back")
    failures = load.failures(t0)
    record("OpenWeatherMap down", requests=len(load.since(t0)), failed=len(failures),
           statuses=dict(load.statuses(t0)), seconds_until_first_stale=round(to_stale, 1),
           seconds_until_fresh_after_restore=round(to_fresh, 1))
    answer = stale[0].body
    assert answer["age_seconds"] >= 0 and "out of date" in answer["message"]
    assert all(a.status != 500 for a in load.since(t0))
    # Everything that was asked while OWM was down had a cached answer: no failures.
    assert failures == [], failures[:5]


@contextmanager
def producers_stopped():
    """Every producer task stopped: a placement constraint no node meets (the way to stop
    a global service; `docker stop` would only make swarm start a new task), removed after."""
    update = ["docker", "service", "update", "--detach"]
    on_node(MANAGER, *update, "--constraint-add", "node.labels.weather-test == stopped", PRODUCERS)
    try:
        wait_for(lambda: not any(tasks_on(node, PRODUCERS) for node in PIS), timeout=90,
                 what="every producer to stop")
        yield
    finally:
        on_node(MANAGER, *update, "--constraint-rm", "node.labels.weather-test == stopped", PRODUCERS)


def test_all_producers_down_gives_stale_or_a_clear_503_never_500(consumer):
    for z in ZIPS:
        consumer.weather(z)  # the consumer keeps these as its last good answers
    with Load(consumer, ZIPS) as load:
        with producers_stopped():
            t_down = time.monotonic()  # every producer has stopped (and deregistered)
            time.sleep(10)
            # A zip nobody asked before: nothing cached anywhere, so a plain 503.
            unknown = [consumer.weather("33101") for _ in range(3)]
            time.sleep(5)
            during = load.since(t_down + 1)
        t1 = time.monotonic()
        _, back = wait_for(lambda: [a for a in load.since(t1) if fresh(a)], timeout=180,
                           what="fresh answers after the producers are back")
    statuses = {a.status for a in during}
    record("all producers stopped", requests=len(during),
           statuses=dict(Counter(a.status for a in during)),
           stale_answers=sum(1 for a in during if a.body.get("stale")),
           never_asked_zip=[a.status for a in unknown],
           seconds_until_fresh_after_restart=round(back, 1))
    # Every zip asked before has a last good answer: served, marked stale, never a 500.
    assert statuses == {200}, statuses
    assert all(a.body["stale"] and a.body.get("age_seconds", -1) >= 0 and a.body.get("message")
               for a in during)
    # Nothing cached: a clear 503 with a reason, not a 500.
    assert all(a.status == 503 and a.body.get("error") for a in unknown), [a.body for a in unknown]


def test_a_whole_pi_down_keeps_the_cluster_answering(consumer):
    victim = "pi2"
    survivors = set(producers_on("pi1").values())
    with Load(consumer, ZIPS) as load:
        time.sleep(3)
        t0 = time.monotonic()
        sh("docker", "stop", "-t", "0", victim)  # the plug pulled
        time.sleep(20)
        t1 = time.monotonic()
        served = {a.producer for a in load.since(t1 - 10) if fresh(a)}
        sh("docker", "start", victim)
        try:
            _, back = wait_for(lambda: set(producers_on(victim).values()) & serving_instances(consumer, 12),
                               timeout=420, interval=3, what=f"{victim}'s producer to serve again")
        except AssertionError as exc:  # say why: the node's Docker and its journal
            raise AssertionError(f"{exc}\n{node_diagnosis(victim)}") from None
    failures = load.failures(t0)
    record("a Pi powered off", requests=len(load.since(t0)), failed=len(failures),
           statuses=dict(load.statuses(t0)), seconds_until_its_producer_served_again=round(back, 1))
    assert failures == [], failures[:5]
    assert served and served <= survivors, served


def test_adding_a_third_pi_joins_and_serves_and_restarts_nothing(consumer):
    """One line in the inventory, site.yml limited to the managers and the new Pi (as
    the README says): it joins and serves, and nothing that ran before restarts."""
    before = {node: container_ids(node) for node in [MANAGER, *PIS]}
    nodes = {"lab_network": NETWORK, "lab_labels": {"owner": "molecule", "molecule.scenario": "cluster"},
             "lab_nodes": [{"name": THIRD, "image": "weather-lab/node-engine:trixie-arm64"}]}
    started = run_playbook(PROJECT / "lab" / "start-nodes.yml", "-e", json.dumps(nodes))
    assert started.returncode == 0, started.stdout[-3000:]
    # The one line a user adds under workers (and the lab's arm64 group for the emulation shim).
    t0 = time.monotonic()
    run = run_playbook(PROJECT / "playbooks" / "site.yml", "--limit", f"managers:{THIRD}",
                       inventories=[extra_inventory(workers=[THIRD])])
    converge = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-3000:]
    counts = recap(run.stdout)
    # Swarm places the global producer on the new node once it carries the label (no deploy).
    new_instances, to_serve = wait_for(lambda: set(producers_on(THIRD).values()) & serving_instances(consumer, 12),
                                       timeout=300, interval=2, what=f"{THIRD}'s producer to serve")
    after = {node: container_ids(node) for node in [MANAGER, *PIS]}
    record("a third Pi added (site.yml --limit managers:pi3)", converge_seconds=round(converge),
           changed_per_host={h: c["changed"] for h, c in counts.items()},
           seconds_until_it_served=round(to_serve, 1))
    assert new_instances
    assert on_node(THIRD, "uname", "-m") == "aarch64"
    assert counts[MANAGER]["changed"] == 0, (counts[MANAGER], run.stdout[-3000:])
    for node in [MANAGER, *PIS]:
        assert after[node] == before[node], node


def test_an_update_rolls_one_pi_at_a_time_and_fails_no_request(consumer):
    """A change to the producers' settings makes swarm replace every producer, one node at
    a time, the new one healthy (registered in Consul) before the old one stops: no request
    fails. (A new image tag takes the same path: both are the service's spec. A settings
    change is used because a new arm64 image costs minutes of emulated build.)"""
    pis = [*PIS, THIRD]
    before = {node: container_ids(node) for node in pis}
    consumer_before = container_ids(MANAGER)
    rolled = {inst for node in pis for inst in producers_on(node).values()}
    # Toggle the producers' cache size (harmless to the fault tests' timing; the cache TTL
    # stays the scenario's 10 s), so a re-run changes it again.
    env = on_node(pis[0], "docker", "inspect", "-f", "{{ range .Config.Env }}{{ println . }}{{ end }}",
                  next(iter(producers_on(pis[0]))))
    size = "10000" if "WEATHER_PRODUCER_CACHE_MAX_ENTRIES=10001" in env.splitlines() else "10001"
    settings = {"weather_app_producer_env": {"CACHE_TTL": "10", "CACHE_MAX_ENTRIES": size}}
    token = inventory_value("consul_kv_app_tokens", MANAGER)["consumer"]
    with Load(consumer, ZIPS) as load, ConsulWatch(MANAGER, token) as consul_view:
        time.sleep(3)
        t0 = time.monotonic()
        with ConsumerView(consumer) as consumer_view:
            run = run_playbook(PROJECT / "playbooks" / "apps.yml", "-e", json.dumps(settings),
                               inventories=[extra_inventory(workers=[THIRD])])
        rollout = time.monotonic() - t0
        time.sleep(3)
    seen = consumer_view.seen
    healthy_counts = [len(ids) for _t, ids in seen]
    # When the consumer's view was short, what Consul said, check by check, and when.
    timeline = "\n".join([*(f"+{t - t0:.1f} s consumer sees {ids}" for t, ids in seen
                             if len(ids) < len(rolled)), *consul_view.changes(t0)])
    assert run.returncode == 0, run.stdout[-3000:]
    CHANGED_SETTINGS.update(settings)
    failures = load.failures(t0)
    after = {node: container_ids(node) for node in pis}
    record("a rolling update of every producer (apps.yml, settings changed)", requests=len(load.since(t0)),
           failed=len(failures), rollout_seconds=round(rollout), producers=len(rolled),
           fewest_passing_during_rollout=min(healthy_counts, default=None),
           fewest_passing_in_consul=min(consul_view.passing_counts(), default=None))
    assert failures == [], failures[:5]
    for node in pis:  # every producer was re-created...
        assert after[node] != before[node], node
    assert container_ids(MANAGER) == consumer_before  # ...and nothing else
    assert not rolled & {i for node in pis for i in producers_on(node).values()}
    # ...never two at once: the consumer always saw all but at most one passing.
    assert healthy_counts and min(healthy_counts) >= len(rolled) - 1, (healthy_counts, timeline)


def test_a_pi_moved_to_retired_loses_its_producers_and_they_leave_consul(consumer):
    """Its line moved from workers to retired, site.yml limited to the managers and that
    Pi: the node is drained, its producer deregisters and stops, no request fails, nothing
    else restarts."""
    token = inventory_value("consul_kv_app_tokens", MANAGER)["consumer"]
    leaving = set(producers_on(THIRD).values())
    leaving_ids = {f"{PRODUCER_APP}-{i}" for i in leaving}  # their Consul service IDs
    assert leaving
    registered = consul_producers(MANAGER, token)
    assert leaving_ids <= set(registered), registered
    before = {node: container_ids(node) for node in [MANAGER, *PIS]}
    with Load(consumer, ZIPS) as load:
        time.sleep(3)
        t0 = time.monotonic()
        run = run_playbook(PROJECT / "playbooks" / "site.yml", "--limit", f"managers:{THIRD}",
                           inventories=[extra_inventory(retired=[THIRD])])
        took = time.monotonic() - t0
        time.sleep(5)
    assert run.returncode == 0, run.stdout[-3000:]
    failures = load.failures(t0)
    served_after = {a.producer for a in load.since(t0 + took) if fresh(a)}
    record("a Pi moved to retired (site.yml --limit managers:pi3)", requests=len(load.since(t0)),
           failed=len(failures), run_seconds=round(took))
    assert producers_on(THIRD) == {}
    registered = consul_producers(MANAGER, token)
    assert not leaving_ids & set(registered), registered
    assert failures == [], failures[:5]
    assert served_after and not served_after & leaving, served_after
    assert {node: container_ids(node) for node in [MANAGER, *PIS]} == before
