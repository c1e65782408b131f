"""A machine on the nodes' LAN that is not in the inventory, and what it gets.

The rogue is a container on the scenario's network (the LAN), started from this
machine with the image the nodes run Consul from. It is given the worst a stolen Pi SD
card or a leaked vault gives away short of a node's agent token: the gossip key, the
CA's public certificate and the apps' Consul tokens. It tries to join Consul as a
server (which, before RPC and Raft were in TLS, made the leader replicate the whole
Raft log to it: every ACL token and the KV), to read the KV and register a fake
producer through an agent of its own, and to reach the nodes' Consul API, Docker API
and the registry without credentials. Each attempt is denied, and the users' answers
go on meanwhile.

They run last (after test_inputs.py) on the manager and the two Pis.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager

import pytest
import requests

from cluster import NETWORK, Consumer, Load, consul_get, inventory_value, node_ip, on_node, record, sh, wait_for

ROGUE_IMAGE = "weather-lab/consul:1.8.7-amd64"  # what the nodes run as hashicorp/consul:1.8.7 (lab/mirror.sh)
NODES = ["manager", "pi1", "pi2"]
ZIPS = ["10001", "94103", "60601"]
REGISTRY_PORT = 5443  # private_registry_port
DATA = "/tmp/rogue-data"  # the rogue agent's data directory, in its container


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    apps = inventory_value("consul_kv_app_tokens")
    return {"management": inventory_value("consul_kv_acl_management_token"),
            "agent": inventory_value("consul_kv_acl_agent_token"),
            "producer": apps["producer"], "consumer": apps["consumer"],
            "gossip": inventory_value("consul_kv_gossip_key"),
            "datacenter": json.loads(on_node("manager", "cat", "/etc/ansible/facts.d/consul_kv.fact"))["datacenter"]}


@pytest.fixture(scope="module")
def ca_file():
    """The Consul CA's certificate (public: every node has it) as a file on this machine."""
    pem = on_node("manager", "cat", "/etc/consul.d/tls/ca.pem")
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(pem + "\n")
    return f.name


def members(secrets) -> dict[str, str]:
    """The gossip members as the manager sees them: {node: status} (1 = alive)."""
    return {m["Name"]: m["Status"] for m in consul_get("manager", "/v1/agent/members", secrets["management"])}


@contextmanager
def rogue(name: str, secrets, *agent_args: str, volumes: tuple[str, ...] = ()):
    """A Consul agent of the attacker's own on the LAN, joined to the manager with the
    gossip key; removed afterwards, and forced out of the cluster's member list."""
    sh("docker", "rm", "-f", name, check=False)
    mounts = [arg for volume in volumes for arg in ("--volume", volume)]
    sh("docker", "run", "--detach", "--name", name, "--network", NETWORK, "--user", "0", *mounts,
       "--entrypoint", "/bin/consul", ROGUE_IMAGE, "agent", f"-node={name}", f"-data-dir={DATA}",
       f"-datacenter={secrets['datacenter']}", f"-encrypt={secrets['gossip']}",
       f"-retry-join={node_ip('manager')}", "-client=127.0.0.1", *agent_args)
    try:
        yield name
    finally:
        logs = sh("sh", "-c", f"docker logs --tail 40 {name} 2>&1", check=False)
        sh("docker", "rm", "-f", name, check=False)
        on_node("manager", "docker", "exec", "consul", "consul", "force-leave", "-prune",
                f"-token={secrets['management']}", name, check=False)
        print(f"--- {name} (last lines)\n{logs}")


def rogue_sh(name: str, script: str) -> str:
    return sh("docker", "exec", name, "sh", "-c", script, check=False)


def test_a_rogue_server_with_the_gossip_key_receives_no_raft_data(secrets):
    """It joins the gossip (it has the key) and the leader sees a server. Without TLS the
    leader added it to Raft and replicated every token and key to it, and after
    autopilot's 10 s it voted. Now its RPC carries no certificate from the CA: it is
    never a voter, and its Raft store holds no token of the cluster."""
    consumer = Consumer("manager")
    leader = consul_get("manager", "/v1/status/leader", secrets["management"])
    acl = '-hcl=acl { enabled = true default_policy = "deny" }'
    with Load(consumer, ZIPS) as load, rogue("rogue-server", secrets, "-server", acl) as name:
        _, joined = wait_for(lambda: members(secrets).get(name) == 1, timeout=90, what="the rogue in the gossip")
        time.sleep(40)  # autopilot promotes a stable server after 10 s: well past that
        peers = consul_get("manager", "/v1/operator/raft/configuration", secrets["management"])["Servers"]
        stolen = {kind: rogue_sh(name, f"grep -a -c '{secrets[kind]}' {DATA}/raft/raft.db || true")
                  for kind in ("management", "agent", "producer")}
        kv = sh("docker", "exec", name, "consul", "kv", "get", "-stale", "-recurse",
                f"-token={secrets['management']}", "weather/", check=False)
        leader_after = consul_get("manager", "/v1/status/leader", secrets["management"])
    record("rogue Consul server with the gossip key", requests=len(load.answers), failed=len(load.failures()),
           seconds_to_join_gossip=round(joined, 1), raft_peers=[p["Node"] for p in peers],
           tokens_in_its_raft_store=stolen)
    assert name not in {p["Node"] for p in peers if p["Voter"]}, peers
    assert all(count in ("", "0") for count in stolen.values()), stolen
    assert kv == "", kv
    assert leader_after == leader
    assert load.answers and not load.failures(), load.failures()[:5]


def test_a_rogue_agent_with_stolen_app_tokens_reads_and_registers_nothing(secrets, ca_file):
    """An agent of the attacker's own, with the gossip key, the CA's certificate and the
    apps' tokens but no agent token: the servers sign no certificate for it
    (auto_encrypt needs the agent's node:write), so no RPC reaches them. It reads no
    KV with the consumer's token and registers no producer with the producer's."""
    tls = ('-hcl=verify_outgoing = true verify_server_hostname = true '
           'ca_file = "/rogue/ca.pem" auto_encrypt { tls = true }')
    tokens = f'-hcl=acl {{ enabled = true tokens {{ agent = "{secrets["producer"]}" }} }}'
    with rogue("rogue-agent", secrets, tls, tokens, volumes=(f"{ca_file}:/rogue/ca.pem:ro",)) as name:
        # auto_encrypt holds the agent's start until a server signs: it never joins.
        time.sleep(30)
        denied = "AutoEncrypt.Sign RPC failed" in sh("sh", "-c", f"docker logs {name} 2>&1", check=False)
        kv = sh("docker", "exec", name, "consul", "kv", "get", "-recurse",
                f"-token={secrets['consumer']}", "weather/", check=False)
        registered = sh("docker", "exec", name, "consul", "services", "register", f"-token={secrets['producer']}",
                        "-name=weather-producer", "-id=weather-producer-rogue", "-port=8000", check=False)
        time.sleep(15)  # anti-entropy would have synced it by now
        catalog = consul_get("manager", "/v1/catalog/service/weather-producer", secrets["management"])
        nodes = [n["Node"] for n in consul_get("manager", "/v1/catalog/nodes", secrets["management"])]
    record("rogue Consul agent with the gossip key and the apps' tokens", certificate_refused=denied,
           kv_read=kv[:80], register_answer=registered[:80], in_catalog=name in nodes)
    assert kv == "", kv
    assert "weather-producer-rogue" not in {s["ServiceID"] for s in catalog}
    assert name not in nodes


def test_the_lan_reaches_no_api_without_credentials():
    """From the LAN (this machine is on the nodes' network): Consul's HTTP API and
    Docker's API listen on no node's LAN address, and the registry lets nobody read or
    push without its login."""
    refused = {}
    for node in NODES:
        address = node_ip(node)
        for port in (8500, 2375, 2376):
            try:
                requests.get(f"http://{address}:{port}/", timeout=5)
                refused[f"{node}:{port}"] = False
            except requests.ConnectionError:
                refused[f"{node}:{port}"] = True
    registry = f"https://{node_ip('manager')}:{REGISTRY_PORT}"
    catalog = requests.get(f"{registry}/v2/_catalog", verify=False, timeout=10)
    push = requests.post(f"{registry}/v2/weather/weather-producer/blobs/uploads/", verify=False, timeout=10)
    record("a machine on the LAN without credentials", refused=refused,
           registry_catalog=catalog.status_code, registry_push=push.status_code)
    assert all(refused.values()), refused
    assert (catalog.status_code, push.status_code) == (401, 401)
