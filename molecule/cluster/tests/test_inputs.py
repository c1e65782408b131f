"""Bad inventory values and configuration changes, as a user makes them on a running
cluster.

A typo in an inventory once took the control plane down: `consul_kv_http_port=99999`
was written into every node's consul.hcl and every Consul agent, the only server
included, went into a restart loop at the same moment. Now each kind of bad value
(port, size, address, choice) stops site.yml in playbooks/preflight.yml, before any
node changes; a value only Consul knows to refuse never replaces a working
consul.hcl; and a valid change of Consul's configuration restarts the agents one node
at a time, each back before the next.

They run after test_faults.py on the manager and the two Pis, and leave the cluster as
they found it.
"""

import json
import subprocess
import time
from contextlib import ExitStack

import pytest

from cluster import PROJECT, Consumer, Load, Poller, on_node, recap, record, run_playbook, wait_for

NODES = ["manager", "pi1", "pi2"]
CONSUL = "consul"  # consul_kv_container_name
CONSUL_PORT = 8500  # consul_kv_http_port
ZIPS = ["10001", "94103", "60601"]

# kind: (the value a user mistypes, what the error must say)
BAD_VALUES = {
    "port": ("consul_kv_http_port=99999", "consul_kv_http_port must be 1024-65535"),
    "size": ("weather_app_producer_memory=lots", "the _memory values a size like 128M"),
    "address": ("consul_kv_bind_address=10.77.0.300", "consul_kv_bind_address must be"),
    "choice": ("consul_kv_log_level=LOUD", "consul_kv_log_level"),
}


def node_state(node: str) -> str:
    """What a run would change on a node: the daemon's and Consul's configuration
    files, and the start time of the Consul agent."""
    return on_node(node, "sh", "-c",
                   "sha256sum /etc/docker/daemon.json /etc/consul.d/consul.hcl; "
                   f"docker inspect -f '{{{{.State.StartedAt}}}}' {CONSUL}")


def cluster_state() -> dict[str, str]:
    state = {node: node_state(node) for node in NODES}
    # Each swarm service's version moves with every update of its spec.
    state["services"] = on_node("manager", "sh", "-c",
                                "docker service ls -q | xargs docker service inspect -f '{{.Spec.Name}} {{.Version.Index}}'")
    return state


@pytest.mark.parametrize("kind", BAD_VALUES)
def test_a_bad_value_fails_site_yml_before_any_node_changes(kind):
    value, error = BAD_VALUES[kind]
    before = cluster_state()
    t0 = time.monotonic()
    run = run_playbook(PROJECT / "playbooks" / "site.yml", "-e", value)
    seconds = round(time.monotonic() - t0, 1)
    output = run.stdout + run.stderr
    record(f"bad inventory value ({kind}): {value}", exit_code=run.returncode, seconds_to_fail=seconds,
           changed=sum(h.get("changed", 0) for h in recap(run.stdout).values()))
    assert run.returncode != 0, output[-3000:]
    assert error in output, output[-3000:]
    # The preflight play stopped the run: tier 1's play never started.
    assert "PLAY [Check every tier's inputs before any node changes]" in output
    assert "PLAY [Install and configure Docker Engine]" not in output
    assert all(h.get("changed", 0) == 0 for h in recap(run.stdout).values()), recap(run.stdout)
    assert cluster_state() == before


def test_a_value_only_consul_refuses_never_reaches_an_agent():
    """No assert checks the datacenter's name; Consul refuses "dc 1". Its own `consul
    validate` reads the new consul.hcl before it replaces the old one: the run fails on
    every node, the files and the agents stay as they were."""
    before = cluster_state()
    run = run_playbook(PROJECT / "playbooks" / "consul.yml", "-e", json.dumps({"consul_kv_datacenter": "dc 1"}))
    output = run.stdout + run.stderr
    record("value only Consul refuses (datacenter 'dc 1')", exit_code=run.returncode,
           failed_hosts=sorted(h for h, c in recap(run.stdout).items() if c.get("failed")))
    assert run.returncode != 0, output[-3000:]
    assert "failed to validate" in output and "datacenter" in output, output[-3000:]
    assert sorted(h for h, c in recap(run.stdout).items() if c.get("failed")) == NODES, recap(run.stdout)
    assert cluster_state() == before


class AgentProbe(Poller):
    """Polls whether a node's Consul agent accepts connections on the HTTP port (one
    probe at a time, every ``interval``), and keeps the node's down intervals."""

    def __init__(self, node: str, port: int, interval: float = 0.2):
        super().__init__(interval)
        self.probe = ["docker", "exec", node, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
        self.samples: list[tuple[float, bool]] = []

    def poll(self) -> None:
        t = time.monotonic()
        self.samples.append((t, subprocess.run(self.probe, capture_output=True, timeout=30).returncode == 0))

    def down_intervals(self) -> list[tuple[float, float]]:
        """[first sample down, first sample up again) for each outage of the node."""
        intervals, start = [], None
        for t, up in self.samples:
            if not up and start is None:
                start = t
            elif up and start is not None:
                intervals.append((start, t))
                start = None
        if start is not None:
            intervals.append((start, float("inf")))
        return intervals


def overlapping(intervals: dict[str, list[tuple[float, float]]]) -> list[tuple[str, str]]:
    pairs = []
    for i, a in enumerate(NODES):
        for b in NODES[i + 1:]:
            pairs += [(a, b) for (s1, e1) in intervals[a] for (s2, e2) in intervals[b] if s1 < e2 and s2 < e1]
    return pairs


def test_a_consul_configuration_change_restarts_one_agent_at_a_time_under_load():
    """consul.yml with a new log level changes consul.hcl on every node: each agent is
    restarted in turn, the next only once the previous answers and knows the leader;
    at no moment are two agents down, and cached requests keep being answered. A second
    run puts the inventory's value back (the same rolling restart)."""
    consumer = Consumer("manager")
    wait_for(lambda: all(consumer.weather(z).status == 200 for z in ZIPS), timeout=120, interval=2,
             what="answers for every zip of the load")
    figures = {}
    # DEBUG, then the inventory's own value back (no -e: the role's default).
    for new_level in ("DEBUG", None):
        started = {n: on_node(n, "docker", "inspect", "-f", "{{.State.StartedAt}}", CONSUL) for n in NODES}
        with Load(consumer, ZIPS, interval=0.1) as load, ExitStack() as probing:
            probes = {n: probing.enter_context(AgentProbe(n, CONSUL_PORT)) for n in NODES}
            time.sleep(2)
            t0 = time.monotonic()
            extra = ["-e", f"consul_kv_log_level={new_level}"] if new_level else []
            run = run_playbook(PROJECT / "playbooks" / "consul.yml", *extra)
            seconds = round(time.monotonic() - t0, 1)
            time.sleep(2)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        restarted = [n for n in NODES
                     if on_node(n, "docker", "inspect", "-f", "{{.State.StartedAt}}", CONSUL) != started[n]]
        intervals = {n: probes[n].down_intervals() for n in NODES}
        failures = load.failures(t0)
        figures[new_level or "back"] = {
            "run_seconds": seconds, "restarted": restarted, "requests": len(load.since(t0)),
            "failed": len(failures),
            "down_seconds": {n: round(sum(e - s for s, e in intervals[n]), 1) for n in NODES},
            "samples_per_node": min(len(probes[n].samples) for n in NODES),
        }
        assert restarted == NODES, figures
        # Every node was seen down once (else the watch is too coarse to prove anything)
        # and no two outages overlap.
        assert all(len(intervals[n]) >= 1 for n in NODES), figures
        assert overlapping(intervals) == [], (overlapping(intervals), intervals)
        assert failures == [], [a.body for a in failures][:5]
    record("Consul configuration changed on every node (rolling agent restart)", **figures)
