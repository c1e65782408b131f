"""A machine on the nodes' LAN that is not in the inventory, and what it gets.

The rogue is a container on the scenario's network (the LAN), started from this
machine with the image the nodes run Consul from. It is given the worst a stolen Pi SD
card or a leaked vault gives away short of a node's agent token: the gossip key, the
CA's public certificate and the apps' Consul tokens. It tries to join Consul as a
server (which, before RPC and Raft were in TLS, made the leader replicate the whole
Raft log to it: every ACL token and the KV), to read the KV and register a fake
producer through an agent of its own, and to reach the nodes' Consul API, Docker API
and the registry without credentials. Each attempt is denied, and the users' answers
go on meanwhile. Then a Pi taken over, with what it holds (its own agent token and the
producer token), tries to pose as another node.

They run last (after test_inputs.py) on the manager and the two Pis.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import tempfile
import time
from contextlib import contextmanager

import pytest
import requests

from cluster import (NETWORK, PRODUCER_APP, PRODUCERS, PROJECT, Consumer, Load, changed_tasks, consul_get,
                     inventory_value, node_ip, on_node, producers_on, recap, record, run_playbook, sh, wait_for)

ROGUE_IMAGE = "weather-lab/consul:1.8.7-amd64"  # what the nodes run as hashicorp/consul:1.8.7 (lab/mirror.sh)
NODES = ["manager", "pi1", "pi2"]
ZIPS = ["10001", "94103", "60601"]
REGISTRY_PORT = 5443  # private_registry_port
PULL_REGISTRY_PORT = 5444  # private_registry_pull_port
DATA = "/tmp/rogue-data"  # the rogue agent's data directory, in its container


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    apps = inventory_value("consul_kv_app_tokens")
    return {"management": inventory_value("consul_kv_acl_management_token"),
            "agent": agent_token("pi1"),
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


def agent_token(node: str) -> str:
    """The node's own agent token, as its configuration holds it."""
    match = re.search(r'^\s*agent\s*=\s*"([^"]+)"', on_node(node, "cat", "/etc/consul.d/consul.hcl"), re.M)
    assert match, f"no agent token in {node}'s consul.hcl"
    return match.group(1)


# Runs on a node with its own python3: a call to the node's own Consul agent, whose
# status code it prints (403 included).
_CONSUL_CALL = r"""
import sys, urllib.error, urllib.request
method, path, token, body = sys.argv[1:5]
req = urllib.request.Request("http://127.0.0.1:8500" + path, data=body.encode() or None, method=method,
                             headers={"X-Consul-Token": token})
try:
    print(urllib.request.urlopen(req, timeout=15).status)
except urllib.error.HTTPError as err:
    print(err.code)
"""


def consul_status(node: str, method: str, path: str, token: str, payload: dict | None = None) -> int:
    """The HTTP status of a Consul API call made through the node's own agent."""
    body = json.dumps(payload) if payload is not None else ""
    return int(on_node(node, "python3", "-c", _CONSUL_CALL, method, path, token, body))


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
    Docker's API listen on no node's LAN address, and neither registry (push, pull-only)
    lets anybody read or push without a login."""
    refused = {}
    for node in NODES:
        address = node_ip(node)
        for port in (8500, 2375, 2376):
            try:
                requests.get(f"http://{address}:{port}/", timeout=5)
                refused[f"{node}:{port}"] = False
            except requests.ConnectionError:
                refused[f"{node}:{port}"] = True
    answers = {}
    for port in (REGISTRY_PORT, PULL_REGISTRY_PORT):
        registry = f"https://{node_ip('manager')}:{port}"
        answers[port] = (requests.get(f"{registry}/v2/_catalog", verify=False, timeout=10).status_code,
                         requests.post(f"{registry}/v2/weather/weather-producer/blobs/uploads/", verify=False,
                                       timeout=10).status_code)
    record("a machine on the LAN without credentials", refused=refused,
           registry_catalog_push={str(port): list(codes) for port, codes in answers.items()})
    assert all(refused.values()), refused
    assert answers == {REGISTRY_PORT: (401, 401), PULL_REGISTRY_PORT: (401, 401)}


def docker_logins(node: str) -> dict[str, str]:
    """{registry address: user} of the logins root's Docker client keeps on the node."""
    found = on_node(node, "sh", "-c", "cat /root/.docker/config.json 2>/dev/null || echo '{}'")
    auths = json.loads(found).get("auths", {})
    return {address: base64.b64decode(entry.get("auth", "")).decode().partition(":")[0]
            for address, entry in auths.items()}


def test_no_node_keeps_a_login_that_can_push():
    """The push login (the images tier's) stays on no node after site.yml: a Pi taken
    over finds at most the pull-only login, which is what swarm hands every node for
    the producers' image. With that login the pull-only registry answers reads and
    refuses every write (405), and the push registry does not know it (401); the tag
    the stack runs is unchanged."""
    registry = json.loads(on_node("manager", "cat", "/etc/ansible/facts.d/private_registry.fact"))
    logins = {node: docker_logins(node) for node in NODES}
    pull = (registry["pull_username"], inventory_value("private_registry_pull_password"))
    published = json.loads(on_node("manager", "cat", "/etc/ansible/facts.d/weather_images.fact"))
    repo, _, tag = published["multiarch"]["producer"].partition("/")[2].rpartition(":")
    manager = node_ip("manager")
    answers = {}
    for name, port in (("pull", PULL_REGISTRY_PORT), ("push", REGISTRY_PORT)):
        base = f"https://{manager}:{port}/v2/{repo}"
        got = requests.get(f"{base}/manifests/{tag}", auth=pull, verify=False, timeout=10,
                           headers={"Accept": MANIFEST_LIST_TYPES})
        answers[name] = {
            "read": got.status_code,
            "put_tag": requests.put(f"{base}/manifests/{tag}", auth=pull, verify=False, timeout=10, data=got.content,
                                    headers={"Content-Type": got.headers.get("Content-Type", "")}).status_code,
            "upload": requests.post(f"{base}/blobs/uploads/", auth=pull, verify=False, timeout=10).status_code}
    still = requests.head(f"https://{manager}:{PULL_REGISTRY_PORT}/v2/{repo}/manifests/{tag}", auth=pull,
                          verify=False, timeout=10, headers={"Accept": MANIFEST_LIST_TYPES})
    record("the registry logins the nodes keep", logins=logins, pull_login_answers=answers)
    assert all(registry["address"] not in found and registry["username"] not in found.values()
               for found in logins.values()), logins
    assert logins["manager"].get(registry["pull_address"]) == registry["pull_username"], logins
    assert answers == {"pull": {"read": 200, "put_tag": 405, "upload": 405},
                       "push": {"read": 401, "put_tag": 401, "upload": 401}}, answers
    assert still.headers["Docker-Content-Digest"] == published["digests"][published["multiarch"]["producer"]]


def passing_producers(secrets) -> dict[str, dict[str, dict]]:
    """The passing producer instances in Consul's catalog: {node: {service ID: service}}."""
    by_node: dict[str, dict[str, dict]] = {}
    for entry in consul_get("manager", f"/v1/health/service/{PRODUCER_APP}?passing=true", secrets["management"]):
        by_node.setdefault(entry["Node"]["Node"], {})[entry["Service"]["ID"]] = entry["Service"]
    return by_node


def test_a_taken_over_pi_poses_as_no_other_node(secrets):
    """pi1 taken over: it holds its own agent token and the producer token (every
    producer task has it). Neither writes pi2 into the catalog. What the producer token
    registers through pi1's own agent lands on node pi1, passing: a producer under pi2's
    producer ID pointing at pi1's producer (the consumer keys its pool by ID), and one
    at pi1's LAN address, off the overlay. The consumer routes to neither."""
    consumer = Consumer("manager")
    real, _ = wait_for(lambda: (lambda p: {"pi1", "pi2"} <= p.keys() and p)(passing_producers(secrets)),
                       timeout=120, what="a passing producer on pi1 and on pi2")
    victim, own = next(iter(real["pi2"].values())), next(iter(real["pi1"].values()))
    lan_id = f"{PRODUCER_APP}-pi1-lan"
    foreign_node = {"Node": "pi2", "Address": node_ip("pi2"),
                    "Service": {"Service": PRODUCER_APP, "ID": f"{PRODUCER_APP}-pi2-forged",
                                "Address": own["Address"], "Port": own["Port"]}}
    catalog = {kind: consul_status("pi1", "PUT", "/v1/catalog/register", secrets[kind], foreign_node)
               for kind in ("agent", "producer")}
    check = {"TTL": "600s", "Status": "passing"}
    forged = [{"Name": PRODUCER_APP, "ID": victim["ID"], "Address": own["Address"], "Port": own["Port"], "Check": check},
              {"Name": PRODUCER_APP, "ID": lan_id, "Address": node_ip("pi1"), "Port": own["Port"], "Check": check}]
    with Load(consumer, ZIPS) as load:
        try:
            registered = [consul_status("pi1", "PUT", "/v1/agent/service/register", secrets["producer"], body)
                          for body in forged]
            wait_for(lambda: {victim["ID"], lan_id} <= passing_producers(secrets).get("pi1", {}).keys(),
                     timeout=60, what="the forged producers passing on node pi1")
            _, seen = wait_for(lambda: (lambda r: r["node"] >= 1 and r["address"] >= 1)(
                consumer.status()["discovery"]["rejected"]), timeout=60, what="the consumer to reject them")
            time.sleep(5)  # users' requests meanwhile
            status = consumer.status()
        finally:
            for body in forged:
                consul_status("pi1", "PUT", f"/v1/agent/service/deregister/{body['ID']}", secrets["producer"])
    routed = {row["id"]: row["address"] for row in status["producers"]}
    record("a taken-over Pi poses as another node", catalog_register_as_pi2=catalog, agent_register=registered,
           consumer_rejected=status["discovery"]["rejected"], seconds_to_reject=round(seen, 1),
           requests=len(load.answers), failed=len(load.failures()))
    assert catalog == {"agent": 403, "producer": 403}, catalog
    assert registered == [200, 200], registered  # Consul takes them, on node pi1 ...
    assert lan_id not in routed, routed  # ... the consumer does not
    assert routed.get(victim["ID"]) == victim["Address"] != own["Address"], routed
    assert load.answers and not load.failures(), load.failures()[:5]


# Runs in the rogue container: a TCP connection to (address, port), "open" or the error.
_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()
    print("open")
except OSError as exc:
    print(exc)
"""


def test_a_lan_machine_routing_via_a_node_reaches_no_consul_api():
    """The agents listen on loopback and the Docker bridge's gateway, but a node answers
    for any of its addresses on any interface: a LAN machine that routes the gateway's
    address via the node reaches what listens there. A control server on the gateway
    (port 18500) is reached that way; the agent's API (8500) and DNS (8600) are refused
    by the role's firewall, on every node."""
    script, controls = [], {}
    for node in NODES:
        gateway = on_node(node, "docker", "network", "inspect", "bridge", "--format",
                          "{{ (index .IPAM.Config 0).Gateway }}")
        controls[node] = on_node(node, "sh", "-c", f"cd /tmp && python3 -m http.server --bind {gateway} 18500 "
                                 ">/dev/null 2>&1 & echo $!")
        script.append(f"ip route replace {gateway}/32 via {node_ip(node)}")
        script += [f"echo {node} {port} $(python3 -c {shlex.quote(_CONNECT)} {gateway} {port})"
                   for port in (18500, 8500, 8600)]
    try:
        wait_for(lambda: all(on_node(node, "sh", "-c", "ss -Hltn 'sport = :18500' | grep -q . && echo up",
                                     check=False) for node in NODES), timeout=30, what="the control servers")
        out = sh("docker", "run", "--rm", "--cap-add", "NET_ADMIN", "--network", NETWORK, "--entrypoint", "sh",
                 ROGUE_IMAGE, "-c", "; ".join(script), check=False)
    finally:
        for node, pid in controls.items():
            on_node(node, "kill", pid, check=False)
    seen = {":".join(line.split()[:2]): " ".join(line.split()[2:]) for line in out.splitlines() if line.strip()}
    record("a LAN machine that routes the Docker bridge's address via a node", answers=seen)
    for node in NODES:
        assert seen.get(f"{node}:18500") == "open", seen  # the route reaches the node's gateway address
        for port in (8500, 8600):
            assert "refused" in seen.get(f"{node}:{port}", ""), seen


MANIFEST_LIST_TYPES = ("application/vnd.docker.distribution.manifest.list.v2+json, "
                       "application/vnd.oci.image.index.v1+json")
IMAGE_MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                        "application/vnd.oci.image.manifest.v1+json")


def test_a_tag_pushed_over_in_the_registry_changes_nothing_deployed():
    """Someone with the push login (the images tier's; no node keeps it) pushes over the
    producers' published multi-architecture tag: the amd64 image alone, which the Pis
    would run under emulation or not at all. The stack pins the digest the images tier
    recorded, so deploying again changes no producer; the images tier refuses to go on
    and names the tag. With the published list put back, it passes again."""
    published = json.loads(on_node("manager", "cat", "/etc/ansible/facts.d/weather_images.fact"))
    ref, amd64 = published["multiarch"]["producer"], published["images"]["producer"]["amd64"]
    digest = published["digests"][ref]
    address, _, path = ref.partition("/")
    repo, _, tag = path.rpartition(":")
    registry = f"https://{node_ip('manager')}:{address.rpartition(':')[2]}/v2/{repo}/manifests"
    username = json.loads(on_node("manager", "cat", "/etc/ansible/facts.d/private_registry.fact"))["username"]
    auth = (username, inventory_value("private_registry_password"))

    def call(method: str, reference: str, **kwargs) -> requests.Response:
        # verify=False per call: with REQUESTS_CA_BUNDLE set, requests ignores a session's
        return requests.request(method, f"{registry}/{reference}", auth=auth, verify=False, timeout=10, **kwargs)

    original = call("GET", digest, headers={"Accept": MANIFEST_LIST_TYPES})
    image = call("GET", amd64.rpartition(":")[2], headers={"Accept": IMAGE_MANIFEST_TYPES})
    assert original.status_code == image.status_code == 200
    before = {pi: set(producers_on(pi)) for pi in ("pi1", "pi2")}
    try:
        pushed = call("PUT", tag, data=image.content, headers={"Content-Type": image.headers["Content-Type"]})
        assert pushed.status_code == 201, pushed.text
        now = call("HEAD", tag, headers={"Accept": f"{MANIFEST_LIST_TYPES}, {IMAGE_MANIFEST_TYPES}"}
                   ).headers["Docker-Content-Digest"]
        apps = run_playbook(PROJECT / "playbooks" / "apps.yml")
        spec = on_node("manager", "docker", "service", "inspect", "-f",
                       "{{ .Spec.TaskTemplate.ContainerSpec.Image }}", PRODUCERS)
        after = {pi: set(producers_on(pi)) for pi in ("pi1", "pi2")}
        images = run_playbook(PROJECT / "playbooks" / "images.yml")
    finally:
        restored = call("PUT", tag, data=original.content, headers={"Content-Type": original.headers["Content-Type"]})
    again = run_playbook(PROJECT / "playbooks" / "images.yml")
    record("a tag pushed over in the registry", tag=ref, published=digest, pushed_over_with=now,
           apps_rc=apps.returncode, apps_changed=recap(apps.stdout).get("manager", {}).get("changed"),
           producers_replaced=before != after, images_rc=images.returncode, restored_digest=restored.headers.get(
               "Docker-Content-Digest"), images_rc_after_restore=again.returncode)
    assert now != digest
    assert apps.returncode == 0 and recap(apps.stdout)["manager"]["changed"] == 0, \
        (changed_tasks(apps.stdout), apps.stdout[-2000:])
    assert spec.endswith(f"@{digest}"), spec
    assert after == before
    # ansible-playbook prints a failed task's message on stderr, folded at 80 columns by
    # the YAML result format: compare the words, not the lines
    words = (word.strip("\\") for word in (images.stdout + images.stderr).split())
    refusal = " ".join(word for word in words if word)
    assert images.returncode != 0 and f"{ref} names {now}, not {digest}" in refusal, refusal[-2000:]
    assert restored.status_code == 201 and restored.headers["Docker-Content-Digest"] == digest
    assert again.returncode == 0, again.stdout[-2000:]
