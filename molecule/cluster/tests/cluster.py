"""Helpers for the whole-cluster tests: the nodes, the swarm stack's tasks on them, the
consumer's API, a background load that records every answer, and playbook runs.

The tests run on this machine (Molecule's verifier); the nodes are containers on the
`molecule-default` network, each with its own Docker daemon inside. The weather services
are the swarm stack `weather` (roles/weather_app): its tasks are containers labelled with
their service's name on the node swarm placed them on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import testinfra

STACK = "weather"  # weather_app_stack_name
PRODUCERS, CONSUMER, FAKE_OWM = f"{STACK}_producer", f"{STACK}_consumer", f"{STACK}_fake-owm"
PRODUCER_APP = "weather-producer"  # the producers' Consul service
CONSUMER_PORT = 8080
OPERATOR_PORT = 9080  # the consumer's operator listener: not published, reached inside its container
FAKE_OWM_PORT = 8090  # the fake OWM's control API, idem
NETWORK = "molecule-default"
PROJECT = Path(__file__).resolve().parents[3]
RESULTS = PROJECT / ".cache" / "resilience.json"


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    """Run a command on this machine; return its stdout."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def on_node(node: str, *argv: str, check: bool = True, timeout: float = 120) -> str:
    """Run a command inside a lab node (e.g. its own `docker`)."""
    return sh("docker", "exec", node, *argv, check=check, timeout=timeout)


def node_ip(node: str) -> str:
    return sh("docker", "inspect", "-f",
              "{{ (index .NetworkSettings.Networks \"%s\").IPAddress }}" % NETWORK, node)


def tasks_on(node: str, service: str) -> list[str]:
    """IDs of the running containers of a stack service on a node (its swarm tasks)."""
    return on_node(node, "docker", "ps", "-q", "--no-trunc",
                   "--filter", f"label=com.docker.swarm.service.name={service}").split()


def producers_on(node: str) -> dict[str, str]:
    """The node's running producer tasks: {container id: instance id}. The instance
    (<Consul node name>-<swarm task id>; the lab's node names are the inventory's) is
    part of the producer's Consul service ID and is what the consumer's answers name."""
    ids = tasks_on(node, PRODUCERS)
    if not ids:
        return {}
    out = on_node(node, "docker", "inspect", "-f", "{{ .Id }}{{ range .Config.Env }} {{ . }}{{ end }}", *ids)
    result = {}
    for line in out.splitlines():
        cid, *env = line.split()
        task = next(v.split("=", 1)[1] for v in env if v.startswith("WEATHER_PRODUCER_INSTANCE_ID="))
        result[cid] = f"{node}-{task}"
    return result


def container_ids(node: str) -> dict[str, str]:
    """Every container on the node (name -> id), to prove nothing was restarted."""
    out = on_node(node, "docker", "ps", "-a", "--no-trunc", "--format", "{{ .Names }} {{ .ID }} {{ .State }}")
    result = {}
    for line in out.splitlines():
        name, cid, state = line.split()
        result[name] = f"{cid} {state}"
    return result


def node_diagnosis(node: str) -> str:
    """What a node's Docker is doing, for a failure message."""
    parts = []
    for argv in (["systemctl", "is-system-running"],
                 ["systemctl", "status", "--no-pager", "docker", "containerd"],
                 ["journalctl", "-b", "--no-pager", "-n", "40", "-u", "docker", "-u", "containerd"],
                 ["docker", "ps", "-a"]):
        proc = subprocess.run(["docker", "exec", node, *argv], capture_output=True, text=True, timeout=60)
        parts.append(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


def inventory_value(name: str, node: str = "manager"):
    """A variable of a node as the playbooks see it, templated (production's group_vars
    name the vault_* values the lab's secrets file holds)."""
    host = testinfra.get_host(f"ansible://{node}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])
    return host.ansible("debug", f"var={name}", check=False)[name]


def consul_get(manager: str, path: str, token: str):
    """A Consul API GET on the manager's loopback (where its API listens), with a token."""
    return loopback_json(manager, 8500, path, headers={"X-Consul-Token": token})


def consul_producers(manager: str, token: str) -> dict[str, list[str]]:
    """Every producer instance registered in Consul, passing or not: {service ID: statuses}."""
    entries = consul_get(manager, f"/v1/health/service/{PRODUCER_APP}", token)
    return {entry["Service"]["ID"]: [c["Status"] for c in entry["Checks"]] for entry in entries}


def extra_inventory(workers: list[str] = (), retired: list[str] = ()) -> str:
    """An inventory file that adds lab Pis (containers on this machine, arm64) to the
    scenario's: the lines a user adds under `workers` or moves under `retired`, a Pi
    and its address. Login, key and sudo come from the inventory's group_vars, the
    host key from the lab's known_hosts (lab/tasks/start-nodes.yml records it)."""
    lines = ["all:", "  children:"]
    for group, hosts in (("workers", workers), ("retired", retired), ("lab_pis", [*workers, *retired])):
        if hosts:
            lines += [f"    {group}:", "      hosts:"]
            lines += [f"        {h}: {{ansible_host: {node_ip(h)}}}" for h in hosts]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    return f.name


@contextmanager
def service_stopped(service: str, manager: str = "manager"):
    """A replicated stack service scaled to 0 (its tasks stopped, its DNS name gone) and
    back to 1 afterwards: `docker stop` would only make swarm start a new task."""
    on_node(manager, "docker", "service", "scale", "--detach", f"{service}=0")
    wait_for(lambda: not tasks_on(manager, service), timeout=60, what=f"{service} to stop")
    try:
        yield
    finally:
        on_node(manager, "docker", "service", "scale", "--detach", f"{service}=1")


@dataclass
class Answer:
    at: float
    status: int
    body: dict = field(default_factory=dict)
    seconds: float = 0.0  # how long the user waited for it

    @property
    def producer(self) -> str | None:
        """The producer instance that answered (<node>-<swarm task id>).

        `producer` in the consumer's answer is the Consul service ID
        (weather-producer-<instance>); `instance` is the instance itself.
        """
        return self.body.get("instance")


# Runs inside the manager with the node's own python3: an HTTP call to one of the
# manager's loopback ports (the consumer's operator listener, the fake OWM's control API).
_LOOPBACK_CALL = r"""
import json, sys, urllib.request
method, url, data, headers = sys.argv[1], sys.argv[2], sys.argv[3].encode() or None, json.loads(sys.argv[4])
req = urllib.request.Request(url, data=data, method=method,
                             headers={"Content-Type": "application/json", **headers})
sys.stdout.write(urllib.request.urlopen(req, timeout=15).read().decode())
"""


def loopback_json(node: str, port: int, path: str, method: str = "GET", payload: dict | None = None,
                  headers: dict | None = None, service: str | None = None):
    """JSON from a port on a node's loopback (reached as an operator would, from a shell
    on that node; the node has python3 but no curl), or, with `service`, on the loopback
    of that service's task on the node (`docker exec`: the images have python3 too)."""
    where = ["docker", "exec", tasks_on(node, service)[0]] if service else []
    out = on_node(node, *where, "python3", "-c", _LOOPBACK_CALL, method, f"http://127.0.0.1:{port}{path}",
                  json.dumps(payload) if payload is not None else "", json.dumps(headers or {}))
    return json.loads(out)


class Consumer:
    """The consumer: its public API through the published port on the manager, its
    operator listener from inside its task (swarm cannot publish on loopback only)."""

    def __init__(self, manager: str):
        self.manager = manager
        self.base = f"http://{node_ip(manager)}:{CONSUMER_PORT}"
        self.session = requests.Session()

    def weather(self, zip_code: str, country: str = "us", timeout: float = 10,
                session: requests.Session | None = None) -> Answer:
        start = time.monotonic()
        try:
            resp = (session or self.session).get(f"{self.base}/api/weather",
                                    params={"zip": zip_code, "country": country}, timeout=timeout)
        except requests.RequestException as exc:  # a refused or dropped connection is a failure too
            now = time.monotonic()
            return Answer(now, 0, {"error": repr(exc)}, now - start)
        now = time.monotonic()
        try:
            body = resp.json()
        except ValueError:
            body = {"raw": resp.text[:200]}
        return Answer(now, resp.status_code, body, now - start)

    def status(self) -> dict:
        """The operator status (producers with addresses and breakers, cached places)."""
        return loopback_json(self.manager, OPERATOR_PORT, "/api/status", service=CONSUMER)


class FakeOwm:
    """The fake OpenWeatherMap on the manager, driven through its control API (inside its task)."""

    def __init__(self, manager: str):
        self.manager = manager

    def mode(self, mode: str, delay: float | None = None) -> dict:
        return loopback_json(self.manager, FAKE_OWM_PORT, "/_control", "POST",
                             {"mode": mode, **({"delay": delay} if delay is not None else {})}, service=FAKE_OWM)

    def stats(self) -> dict:
        return loopback_json(self.manager, FAKE_OWM_PORT, "/_stats", service=FAKE_OWM)


class Poller:
    """Calls :meth:`poll` on a background thread every ``interval`` seconds while its
    `with` block runs (the load, and the watches that measure a fault as it happens)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


class BreakerWatch(Poller):
    """Polls the consumer's operator status twice a second while a fault runs: the most
    producers that were passing in Consul AND had their breaker open at one moment (a
    healthy producer ejected), and every state seen."""

    def __init__(self, consumer: Consumer, healthy: set[str], interval: float = 0.5):
        super().__init__(interval)
        self.consumer, self.healthy = consumer, healthy
        self.max_open = 0
        self.open_seen: set[str] = set()
        self.polls = 0

    def poll(self) -> None:
        try:
            rows = self.consumer.status()["producers"]
        except (AssertionError, ValueError, KeyError, subprocess.SubprocessError):
            return
        opened = {r["id"] for r in rows if r["id"] in self.healthy and r["breaker"] != "closed"}
        self.open_seen |= opened
        self.max_open = max(self.max_open, len(opened))
        self.polls += 1


class ConsumerView(Poller):
    """What the consumer sees passing in Consul, twice a second: (time, instance IDs)."""

    def __init__(self, consumer: Consumer, interval: float = 0.5):
        super().__init__(interval)
        self.consumer = consumer
        self.seen: list[tuple[float, list[str]]] = []

    def poll(self) -> None:
        try:
            rows = self.consumer.status()["producers"]
        except (AssertionError, ValueError, KeyError, subprocess.SubprocessError):
            return
        self.seen.append((time.monotonic(), sorted(r["id"] for r in rows if r["healthy"])))


class ConsulWatch(Poller):
    """Polls Consul's view of the producers (every instance, passing or not, with each of
    its checks: the node's serfHealth and the producer's TTL) twice a second while a fault
    runs, and keeps every change: when a producer stopped passing, and which check said so."""

    def __init__(self, manager: str, token: str, interval: float = 0.5):
        super().__init__(interval)
        self.manager, self.token = manager, token
        self.samples: list[tuple[float, dict[str, dict[str, str]]]] = []  # (t, {id: {check: status}})

    def poll(self) -> None:
        try:
            entries = consul_get(self.manager, f"/v1/health/service/{PRODUCER_APP}", self.token)
            view = {e["Service"]["ID"]: {c["CheckID"]: c["Status"] for c in e["Checks"]} for e in entries}
        except (AssertionError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
            return
        self.samples.append((time.monotonic(), view))

    def passing_counts(self) -> list[int]:
        return [sum(all(s == "passing" for s in checks.values()) for checks in view.values())
                for _t, view in self.samples]

    def changes(self, since: float) -> list[str]:
        """Every change of an instance's checks, as `+12.3 s <id> <check>=<status>` lines."""
        lines, before = [], {}
        for t, view in self.samples:
            for iid in sorted(set(before) | set(view)):
                old, new = before.get(iid), view.get(iid)
                if new is None:
                    lines.append(f"+{t - since:.1f} s {iid} gone")
                elif old != new:
                    lines.append(f"+{t - since:.1f} s {iid} " + " ".join(f"{k}={v}" for k, v in sorted(new.items())))
            before = view
        return lines


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def burst(consumer: Consumer, zips: list[str], threads: int = 10) -> list[Answer]:
    """Ask for every zip at once from `threads` clients (new users arriving together)."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def ask(zip_code: str) -> Answer:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return consumer.weather(zip_code, session=local.session)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(ask, zips))


class HostFirewall:
    """iptables rules in this machine's FORWARD chain, where the lab nodes' bridge traffic
    passes (bridge-nf-call-iptables is on): the LAN between the nodes. Every rule carries
    a comment, and leaving the block deletes them all, pass or fail."""

    COMMENT = "weather-cluster-test"

    def __init__(self) -> None:
        self.rules: list[list[str]] = []

    def add(self, *rule: str) -> None:
        spec = [*rule, "-m", "comment", "--comment", self.COMMENT]
        sh("iptables", "-I", "FORWARD", "1", *spec)
        self.rules.append(spec)

    def __enter__(self) -> "HostFirewall":
        return self

    def __exit__(self, *exc) -> None:
        for spec in reversed(self.rules):
            sh("iptables", "-D", "FORWARD", *spec, check=False)
        self.rules.clear()


class Load(Poller):
    """Requests in a loop on a background thread, every answer kept, until stopped."""

    def __init__(self, consumer: Consumer, zips: list[str], interval: float = 0.1):
        super().__init__(interval)
        self.consumer, self.zips = consumer, zips
        self.answers: list[Answer] = []

    def poll(self) -> None:
        self.answers.append(self.consumer.weather(self.zips[len(self.answers) % len(self.zips)]))

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]

    def failures(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.since(since) if a.status != 200]

    def statuses(self, since: float = 0.0) -> Counter:
        return Counter(a.status for a in self.since(since))


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll until predicate() is truthy; return (value, seconds waited).

    An exception from the predicate (a node still booting, a daemon not up yet) counts
    as "not yet"; the last one is reported if time runs out.
    """
    start, last_error = time.monotonic(), None
    while True:
        try:
            value = predicate()
        except (AssertionError, OSError, subprocess.SubprocessError, requests.RequestException) as exc:
            value, last_error = None, exc
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def record(fault: str, **figures) -> None:
    """Keep a fault's measured outcome for docs/resilience.md (.cache/resilience.json)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[fault] = {**figures, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"[resilience] {fault}: {figures}")


# Settings a test changed, as a user changes the inventory (test_cluster's rolling
# update): every later playbook run of the session passes them, before its own -e, so
# that a run without them does not change the stack back (a rolling update of its own).
CHANGED_SETTINGS: dict = {}


def run_playbook(playbook: Path, *args: str, inventories: list[str] | None = None,
                 timeout: float = 3600) -> subprocess.CompletedProcess:
    """ansible-playbook with Molecule's configuration (the verifier's environment) and
    the settings the tests changed so far."""
    inventory = [os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])]
    argv = [str(Path(sys.executable).parent / "ansible-playbook")]
    for inv in inventory + (inventories or []):
        argv += ["-i", inv]
    changed = ["-e", json.dumps(CHANGED_SETTINGS)] if CHANGED_SETTINGS else []
    argv += [str(playbook), *changed, *args]
    # Only changed and failed results are printed, so a failed assertion shows what
    # changed; the whole output is kept next to the resilience figures.
    env = {**os.environ, "ANSIBLE_DISPLAY_OK_HOSTS": "false", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false"}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    log = RESULTS.parent / f"playbook-{Path(playbook).stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(run.stdout + run.stderr)
    return run


def changed_tasks(output: str) -> list[str]:
    """The tasks of an ansible-playbook run that reported a change, as `host: TASK [...]`."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.rstrip("* ")
        elif line.startswith("changed: ["):
            found.append(f"{line.split(']')[0][10:]}: {task}")
    return found


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of an ansible-playbook run: {host: {ok, changed, failed, ...}}."""
    hosts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line:
            host, _, counts = line.partition(":")
            hosts[host.strip()] = {k: int(v) for k, v in
                                   (item.split("=") for item in counts.split())}
    return hosts
