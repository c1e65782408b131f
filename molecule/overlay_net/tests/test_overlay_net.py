"""Verify overlay_net: a swarm of an amd64 manager and an (emulated) arm64 worker,
node labels, and an attachable overlay that carries traffic between the two by alias."""

import json

import pytest

from helpers import LAB_IMAGE, MANAGER, NETWORK, WORKER, import_lab_image

ALIAS = "echo"
LABELS = {MANAGER: {"tier": "core", "board": "nuc"}, WORKER: {"tier": "edge", "board": "rpi4"}}


def swarm_nodes(manager):
    """`docker node ls` on the manager, keyed by hostname (a list per hostname)."""
    nodes = {}
    out = manager.check_output("docker node ls --format '{{json .}}'")
    for line in out.splitlines():
        entry = json.loads(line)
        nodes.setdefault(entry["Hostname"], []).append(entry)
    return nodes


def test_docker_sdk_installed(host):
    """The Docker SDK for Python, which the swarm modules need, is on every node."""
    assert host.package("python3-docker").is_installed


def test_node_is_active_swarm_member(host):
    """Every node is an active member of the swarm, with the control plane only on the manager."""
    state = json.loads(host.check_output("docker info --format '{{json .Swarm}}'"))
    assert state["LocalNodeState"] == "active"
    assert state["ControlAvailable"] is (host.backend.hostname == MANAGER)


def test_node_advertises_its_default_ipv4(host):
    """Each node advertises the address of its default route (the lab network)."""
    addr = host.check_output("docker info --format '{{ .Swarm.NodeAddr }}'")
    default_src = host.check_output("ip -4 -o route get 192.0.2.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")
    assert addr == default_src


def test_manager_is_leader(manager):
    """The manager is the swarm's leader, ready and active."""
    (entry,) = swarm_nodes(manager)[MANAGER]
    assert (entry["ManagerStatus"], entry["Status"], entry["Availability"]) == ("Leader", "Ready", "Active")


def test_worker_is_ready_and_active(manager):
    """The worker is listed once, as a ready, active worker (no manager status)."""
    (entry,) = swarm_nodes(manager)[WORKER]
    assert (entry["ManagerStatus"], entry["Status"], entry["Availability"]) == ("", "Ready", "Active")


def test_worker_platform_is_arm64(manager):
    """The swarm records the worker's architecture, so services can be placed by platform."""
    arch = manager.check_output(f"docker node inspect {WORKER} --format '{{{{ .Description.Platform.Architecture }}}}'")
    assert arch == "aarch64"


@pytest.mark.parametrize("name", [MANAGER, WORKER])
def test_node_labels_applied(manager, name):
    """The inventory's overlay_net_node_labels are the node's labels in the swarm."""
    labels = json.loads(manager.check_output(f"docker node inspect {name} --format '{{{{ json .Spec.Labels }}}}'"))
    assert labels == LABELS[name]


def test_overlay_is_attachable_swarm_overlay(manager):
    """The network is a swarm-scoped overlay that standalone containers may attach to."""
    net = json.loads(manager.check_output(f"docker network inspect {NETWORK}"))[0]
    assert (net["Driver"], net["Scope"], net["Attachable"]) == ("overlay", "swarm", True)


def test_overlay_has_configured_subnet(manager):
    """The overlay uses the subnet and gateway from the inventory."""
    net = json.loads(manager.check_output(f"docker network inspect {NETWORK}"))[0]
    assert net["IPAM"]["Config"] == [{"Subnet": "10.42.10.0/24", "Gateway": "10.42.10.1"}]


def test_overlay_not_encrypted(manager):
    """Encryption is off, as configured (this kernel has no ESP; see molecule.yml)."""
    net = json.loads(manager.check_output(f"docker network inspect {NETWORK}"))[0]
    assert "encrypted" not in (net["Options"] or {})


def test_local_facts_published(host):
    """Other roles can read the node's swarm role and ID and the overlay networks from local facts."""
    facts = json.loads(host.file("/etc/ansible/facts.d/overlay_net.fact").content_string)
    assert facts["swarm_role"] == ("manager" if host.backend.hostname == MANAGER else "worker")
    assert facts["node_id"] == host.check_output("docker info -f '{{ .Swarm.NodeID }}'")
    assert facts["networks"] == [NETWORK]


@pytest.fixture(scope="module")
def echo_servers(manager, worker):
    """One busybox httpd per node on the overlay, both with the alias `echo` and each
    with its own alias (`echo-<node>`); each serves its node's name."""
    started = {}
    for name, node in ((MANAGER, manager), (WORKER, worker)):
        import_lab_image(node)
        container = f"ov-echo-{name}"
        node.run(f"docker rm -f {container}")
        node.check_output(
            f"docker run -d --name {container} --network {NETWORK} "
            f"--network-alias {ALIAS} --network-alias echo-{name} {LAB_IMAGE} "
            f"sh -c 'busybox mkdir -p /www && echo {name} > /www/index.html "
            f"&& exec busybox httpd -f -p 8080 -h /www'"
        )
        ip = node.check_output(
            f"docker inspect {container} --format "
            f"'{{{{ (index .NetworkSettings.Networks \"{NETWORK}\").IPAddress }}}}'"
        )
        started[name] = {"node": node, "container": container, "ip": ip}
    yield started
    for entry in started.values():
        entry["node"].run(f"docker rm -f {entry['container']}")


def fetch(server, url):
    """wget from inside a running echo container; retried while the overlay's DNS settles."""
    cmd = (
        f"for i in $(seq 20); do docker exec {server['container']} wget -q -T 3 -O- {url} && exit 0; "
        "sleep 1; done; exit 1"
    )
    return server["node"].check_output(cmd)


def test_echo_containers_on_overlay_subnet(echo_servers):
    """Both containers got addresses in the overlay's subnet."""
    for entry in echo_servers.values():
        assert entry["ip"].startswith("10.42.10.")


def test_worker_container_reaches_manager_container_by_alias(echo_servers):
    """The arm64 worker's container reaches the amd64 manager's container across the overlay, by alias."""
    assert fetch(echo_servers[WORKER], f"http://echo-{MANAGER}:8080/") == MANAGER


def test_manager_container_reaches_worker_container_by_alias(echo_servers):
    """The amd64 manager's container reaches the arm64 worker's container across the overlay, by alias."""
    assert fetch(echo_servers[MANAGER], f"http://echo-{WORKER}:8080/") == WORKER


@pytest.mark.parametrize("asking", [MANAGER, WORKER])
def test_shared_alias_resolves_to_every_container(echo_servers, asking):
    """The alias both containers carry resolves, from either node, to both of their addresses."""
    server = echo_servers[asking]
    out = server["node"].check_output(f"docker exec {server['container']} nslookup {ALIAS} 127.0.0.11")
    answers = out.split("Name:", 1)[-1]
    assert echo_servers[MANAGER]["ip"] in answers
    assert echo_servers[WORKER]["ip"] in answers
