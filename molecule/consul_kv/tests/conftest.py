"""Helpers for the consul_kv tests: the inventory's secrets and HTTP calls made on a node."""

import json
import os
import re

import pytest
import testinfra

# Runs on the node with its own python3 (no curl there): prints the status code on the
# first line, then the body.
_HTTP = r"""
import sys, urllib.request, urllib.error
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
if token:
    req.add_header("X-Consul-Token", token)
try:
    with urllib.request.urlopen(req, timeout=15) as resp:
        status, data = resp.status, resp.read()
except urllib.error.HTTPError as err:
    status, data = err.code, err.read()
sys.stdout.write("%d\n%s" % (status, data.decode()))
"""

API = "http://127.0.0.1:8500"


class Response:
    def __init__(self, status, text):
        self.status = status
        self.text = text

    def json(self):
        return json.loads(self.text)


def http(host, method, path, token="", body=""):
    """Call the node's local agent from inside the node; returns a Response."""
    out = host.check_output("python3 -c %s %s %s %s %s", _HTTP, method, API + path, token, body)
    status, _, text = out.partition("\n")
    return Response(int(status), text)


def node(name):
    """A Testinfra host for a node by inventory name (tests that span two nodes)."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"],
                              sudo=True)


@pytest.fixture(scope="module")
def inventory_vars():
    """The scenario's inventory variables, as the inventory writes them (not templated)."""
    return node("manager").ansible.get_variables()


def resolved(name):
    """An inventory variable as the playbooks see it: templated (production's group_vars
    name the vault_* values that the lab's secrets file holds)."""
    return node("manager").ansible("debug", f"var={name}", check=False)[name]


@pytest.fixture(scope="module")
def tokens():
    app_tokens = resolved("consul_kv_app_tokens")
    return {
        "management": resolved("consul_kv_acl_management_token"),
        "agent_root": resolved("consul_kv_acl_agent_token"),
        "producer": app_tokens["producer"],
        "consumer": app_tokens["consumer"],
    }


def agent_token(host):
    """The agent token in a node's configuration (acl.tokens.agent)."""
    match = re.search(r'^\s*agent\s*=\s*"([^"]+)"', host.file("/etc/consul.d/consul.hcl").content_string, re.M)
    assert match, "no agent token in consul.hcl"
    return match.group(1)


@pytest.fixture()
def bridge_gateway(host):
    """The address of Docker's default bridge on this node (docker0)."""
    return host.check_output("docker network inspect bridge --format '{{ (index .IPAM.Config 0).Gateway }}'")
