"""Verify that a worker which left the swarm rejoins on the next converge.

Runs last (pytest takes files in name order): it makes the worker leave the swarm, then
runs the tier playbook that owns swarm membership (playbooks/network.yml, the second half
of converge.yml) again, with Molecule's inventory and configuration, and checks the
cluster it leaves behind. Docker Engine's tier is left out: it cannot affect membership,
and under arm64 emulation it would add minutes.
"""

import json

import pytest

from helpers import LAB_IMAGE, MANAGER, NETWORK, WORKER, import_lab_image, run_playbook

WATCHER = "ov-attached-watcher"


def node_entries(manager, hostname):
    out = manager.check_output("docker node ls --format '{{json .}}'")
    return [e for e in map(json.loads, out.splitlines()) if e["Hostname"] == hostname]


@pytest.fixture(scope="module")
def rejoin(manager, worker):
    """Worker leaves; a container stays attached to the overlay on the manager; the role runs again."""
    import_lab_image(manager)
    manager.run(f"docker rm -f {WATCHER}")
    manager.check_output(f"docker run -d --name {WATCHER} --network {NETWORK} {LAB_IMAGE} sleep 3600")
    old_id = worker.check_output("docker info --format '{{ .Swarm.NodeID }}'")
    worker.check_output("docker swarm leave --force")
    left_state = worker.check_output("docker info --format '{{ .Swarm.LocalNodeState }}'")
    run = run_playbook("../../playbooks/network.yml")
    yield {"old_id": old_id, "left_state": left_state, "run": run}
    manager.run(f"docker rm -f {WATCHER}")


def test_worker_had_left(rejoin):
    """The worker really was out of the swarm before the re-run."""
    assert rejoin["left_state"] == "inactive"


def test_rerun_succeeds_and_reports_the_join(rejoin):
    """The re-run succeeds and reports a change for the join task on the worker."""
    run = rejoin["run"]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"changed: [{WORKER}]" in run.stdout.split("TASK [overlay_net : Join the swarm", 1)[1].split("TASK [", 1)[0]


def test_worker_is_member_again(rejoin, worker):
    """The worker is an active swarm member again, under a new node ID."""
    swarm = json.loads(worker.check_output("docker info --format '{{json .Swarm}}'"))
    assert swarm["LocalNodeState"] == "active"
    assert swarm["NodeID"] != rejoin["old_id"]


def test_old_worker_entry_pruned(rejoin, manager):
    """The swarm lists the worker once, ready: its old, down entry was removed."""
    entries = node_entries(manager, WORKER)
    assert [(e["Status"], e["Availability"]) for e in entries] == [("Ready", "Active")]


def test_labels_reapplied(rejoin, manager):
    """The rejoined worker (a new node to the swarm) has its inventory labels again."""
    labels = json.loads(manager.check_output(f"docker node inspect {WORKER} --format '{{{{ json .Spec.Labels }}}}'"))
    assert labels == {"tier": "edge", "board": "rpi4"}


def test_reconverge_keeps_attached_containers(rejoin, manager):
    """Re-running the role leaves containers that others attached to the overlay connected."""
    nets = manager.check_output(f"docker inspect {WATCHER} --format '{{{{ json .NetworkSettings.Networks }}}}'")
    assert NETWORK in json.loads(nets)
