"""Helpers for the overlay_net tests: the nodes, the lab image on them, playbook runs."""

import os
import subprocess
import sys
from pathlib import Path

import testinfra

MANAGER = "manager"
WORKER = "pi1"
NETWORK = "weather"  # overlay_net_networks in the inventory (production's name)
LAB_IMAGE = "lab/busybox:latest"


def node(name):
    """A Testinfra host for a lab node, reached as the verifier reaches it: SSH as the admin
    user, commands with sudo."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"],
                              sudo=True)


def import_lab_image(host):
    """Import the node's busybox rootfs (its own architecture) into its daemon, once."""
    host.run_expect([0],
        f"docker image inspect {LAB_IMAGE} >/dev/null 2>&1 || "
        f"tar -C /opt/lab/busybox-rootfs -c . | docker import - {LAB_IMAGE}"
    )
    return LAB_IMAGE


def run_playbook(playbook, *extra_args):
    """Run a playbook against this scenario's nodes, as Molecule's converge does.

    Molecule gives the verifier its environment (ANSIBLE_CONFIG, ANSIBLE_ROLES_PATH,
    MOLECULE_*), so this is the same inventory and configuration as converge.
    """
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(ansible_playbook), "-i", str(inventory), str((scenario / playbook).resolve()), *extra_args],
        capture_output=True,
        text=True,
        timeout=900,
        # One line per result: messages are matched as plain substrings.
        env={**os.environ, "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_FORCE_COLOR": "false"},
        check=False,
    )
