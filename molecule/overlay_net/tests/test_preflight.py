"""Verify the encryption preflight: on this machine's kernel (no CONFIG_INET_ESP) the role
refuses an encrypted overlay with a clear message, before it touches the swarm."""

import json

import pytest

from helpers import MANAGER, WORKER, run_playbook

SECRET_NET = "lab_secret"


@pytest.fixture(scope="module")
def encrypted_run():
    """The real network playbook, asked for one encrypted overlay network (failures go to stderr)."""
    networks = [{"name": SECRET_NET, "subnet": "10.42.20.0/24", "encrypted": True}]
    return run_playbook(
        "../../playbooks/network.yml", "-e", json.dumps({"overlay_net_networks": networks})
    )


def test_encryption_refused(encrypted_run):
    """The play fails on both nodes at the preflight task."""
    out = encrypted_run.stdout + encrypted_run.stderr
    assert encrypted_run.returncode != 0, out
    assert "Refuse encrypted overlay networks where the kernel cannot encrypt" in out
    for name in (MANAGER, WORKER):
        assert f"Overlay encryption is not possible on {name}" in out


def test_refusal_says_why_and_what_to_do(encrypted_run):
    """The message names the missing kernel feature and the network to change."""
    out = encrypted_run.stdout + encrypted_run.stderr
    assert "CONFIG_INET_ESP" in out
    assert f"Set encrypted: false for {SECRET_NET}" in out


def test_refused_network_not_created(encrypted_run, manager):
    """Nothing was created: the preflight stops the role before the swarm tasks."""
    assert manager.run(f"docker network inspect {SECRET_NET}").rc != 0
