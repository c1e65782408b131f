"""Verify the consul_kv role: a server on an amd64 node, a client agent on an emulated arm64 Pi."""

import json
import time
import uuid

import pytest
from conftest import agent_token, http, node

SERVERS = {"manager"}
PREFIX = "weather/"


def consul_cli(host, args, token):
    """Run the consul CLI inside the node's agent container."""
    return host.check_output(f"docker exec consul consul {args} -token={token}")


def test_each_agent_has_a_token_of_its_own_node(host, tokens):
    """Each agent's token is a node identity for its own node, different on every node;
    the root secret it is derived from is on no node and is no token in Consul."""
    me, other = host.backend.hostname, ("pi1" if host.backend.hostname == "manager" else "manager")
    mine = agent_token(host)
    assert mine != agent_token(node(other))
    assert tokens["agent_root"] not in host.file("/etc/consul.d/consul.hcl").content_string
    datacenter = http(host, "GET", "/v1/agent/self", tokens["management"]).json()["Config"]["Datacenter"]
    self_ = http(host, "GET", "/v1/acl/token/self", mine).json()
    assert self_["NodeIdentities"] == [{"NodeName": me, "Datacenter": datacenter}]
    assert not self_.get("Policies")
    assert http(host, "GET", "/v1/acl/token/self", tokens["agent_root"]).status == 403


def test_an_agent_token_writes_no_other_node(host, tokens):
    """With its own agent token a node sees and may write only itself in the catalog: it
    cannot register another node, nor a service under another node."""
    me, other = host.backend.hostname, ("pi1" if host.backend.hostname == "manager" else "manager")
    mine = agent_token(host)
    visible = [n["Node"] for n in http(host, "GET", "/v1/catalog/nodes", mine).json()]
    assert visible == [me]
    forged = {"Node": other, "Address": "192.0.2.66",
              "Service": {"Service": "weather-producer", "ID": f"weather-producer-{other}-forged", "Port": 8000}}
    assert http(host, "PUT", "/v1/catalog/register", mine, body=json.dumps(forged)).status == 403
    assert http(host, "PUT", "/v1/catalog/register", mine,
                body=json.dumps({"Node": "intruder", "Address": "192.0.2.66"})).status == 403
    services = http(host, "GET", f"/v1/catalog/node/{other}", tokens["management"]).json()["Services"] or {}
    assert f"weather-producer-{other}-forged" not in services


def test_node_name_published_for_local_services(host):
    """The producers read the node name they register under from a file anyone may read."""
    published = host.file("/etc/consul-node-name")
    assert (published.content_string, published.mode) == (f"{host.backend.hostname}\n", 0o644)


def test_container_on_host_network(host):
    """The agent runs as a container on the host network and restarts with the node."""
    info = json.loads(host.check_output("docker inspect consul"))[0]
    assert info["State"]["Running"] is True
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def system_account(host, name):
    """(uid, gid, shell) of a host account, from the node's passwd."""
    _, _, uid, gid, _, _, shell = host.check_output(f"getent passwd {name}").split(":")
    return int(uid), int(gid), shell


def test_agent_runs_as_a_system_account_read_only(host):
    """The agent is /bin/consul run directly as the host's `consul` system account (not
    the image's 100:1000: gid 1000 is the first person's group on Raspberry Pi OS),
    which owns the data directory; read-only root, no capabilities.

    The image's own entry point (dumb-init, docker-entrypoint.sh, su-exec) is bypassed:
    it cannot run as a non-root user with a read-only config mount.
    """
    image_id = host.check_output("docker run --rm --entrypoint id hashicorp/consul:1.8.7 consul")
    assert image_id.startswith("uid=100(consul) gid=1000(consul)")  # what the role does not use
    uid, gid, shell = system_account(host, "consul")
    assert uid < 1000 and gid < 1000 and shell == "/usr/sbin/nologin"
    info = json.loads(host.check_output("docker inspect consul"))[0]
    assert info["Config"]["User"] == f"{uid}:{gid}"
    assert info["Config"]["Entrypoint"] == ["/bin/consul"]
    assert info["Config"]["Cmd"] == ["agent", "-config-dir=/consul/config"]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    status = host.check_output("docker exec consul cat /proc/1/status")
    assert "CapEff:\t0000000000000000" in status
    data = host.file("/var/lib/consul")
    assert (data.uid, data.gid) == (uid, gid)
    owners = host.check_output("find /var/lib/consul -printf '%u:%g\\n' | sort -u").split()
    assert owners == ["consul:consul"]
    assert host.file("/var/lib/consul/node-id").exists


def test_no_secret_readable_by_a_persons_group(host):
    """The configuration (gossip key, tokens) and the TLS files are readable by root and
    the agent's system group only: no group a person is in (gid >= 1000), nobody else."""
    _, gid, _ = system_account(host, "consul")
    config = host.file("/etc/consul.d/consul.hcl")
    assert config.mode == 0o640
    assert (config.uid, config.gid) == (0, gid)
    public = ("/etc/consul.d/tls/ca.pem", "/etc/consul.d/tls/server.pem")  # certificates: 0644 on purpose
    listing = host.check_output("find /etc/consul.d /etc/consul-ca -printf '%p %g %m\\n' 2>/dev/null || true")
    checked = 0
    for line in listing.splitlines():
        path, group, mode = line.split()
        assert group in ("root", "consul"), line
        if path not in public and not path.endswith("/ca.pem"):
            assert int(mode, 8) & 0o007 == 0, line
            checked += 1
    assert checked >= 2  # at least consul.d and consul.hcl


def test_management_token_only_on_servers(host, tokens):
    """Only servers carry the management token in their configuration."""
    content = host.file("/etc/consul.d/consul.hcl").content_string
    assert (tokens["management"] in content) is (host.backend.hostname in SERVERS)


def test_all_members_alive(host, tokens):
    """Every agent sees both nodes alive, the manager as server and the Pi as client."""
    lines = consul_cli(host, "members", tokens["management"]).splitlines()[1:]
    members = {line.split()[0]: line.split() for line in lines}
    assert set(members) == {"manager", "pi1"}
    assert all(fields[2] == "alive" for fields in members.values())
    assert members["manager"][3] == "server" and members["pi1"][3] == "client"


def test_exactly_one_leader(host, tokens):
    """The raft cluster has exactly one voter, the leader, and every agent agrees on it."""
    peers = consul_cli(host, "operator raft list-peers", tokens["management"]).splitlines()[1:]
    assert len(peers) == 1
    assert peers[0].split()[0] == "manager" and "leader" in peers[0].split()
    leader = http(host, "GET", "/v1/status/leader").json()
    assert leader.endswith(":8300")
    assert leader == http(node("manager"), "GET", "/v1/status/leader").json()


def test_gossip_encrypted(host, tokens):
    """Gossip between the agents is encrypted."""
    agent = http(host, "GET", "/v1/agent/self", tokens["management"])
    assert agent.status == 200
    assert agent.json()["Stats"]["serf_lan"]["encrypted"] == "true"


# Runs on the node with its own python3: dials a server's RPC port (8300) as an agent
# does, TLS first (Consul's RPCTLS byte, 0x03), verifying the server against the CA for
# a name, without a certificate of its own; then asks for RPC (RPCConsul, 0x00) inside it.
_RPC_PROBE = r"""
import socket, ssl, sys
address, ca, name = sys.argv[1:4]
sock = socket.create_connection((address, 8300), 10)
sock.settimeout(10)
try:
    sock.sendall(b"\x03")
    tls = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname=name)
    print("handshake", tls.version(), tls.getpeercert()["subjectAltName"])
    tls.sendall(b"\x00")
    print("read", repr(tls.recv(1)))
except (OSError, ssl.SSLError) as exc:
    print("refused", type(exc).__name__, exc)
"""


def server_facts():
    """What the server published about itself (ansible_local.consul_kv)."""
    return json.loads(node("manager").file("/etc/ansible/facts.d/consul_kv.fact").content_string)


def rpc_probe(host, name):
    """What a caller without a client certificate gets from the server's RPC port."""
    return host.check_output("python3 -c %s %s %s %s", _RPC_PROBE, server_facts()["bind_address"],
                             "/etc/consul.d/tls/ca.pem", name)


def test_server_proves_its_identity_over_tls(host):
    """Any node can check that 8300 is a server of this datacenter: its certificate,
    from the role's CA, is for server.<dc>.consul (what verify_server_hostname checks)."""
    name = f"server.{server_facts()['datacenter']}.consul"
    out = rpc_probe(host, name)
    assert out.startswith("handshake TLSv1."), out
    assert f"('DNS', '{name}')" in out, out


def test_server_refuses_rpc_without_a_client_certificate(host):
    """verify_incoming: a caller with the CA but no certificate of its own gets no RPC
    (before TLS, a plain RPCConsul byte, 0x00, was answered)."""
    out = rpc_probe(host, f"server.{server_facts()['datacenter']}.consul")
    assert "refused" in out and "CERTIFICATE" in out.upper(), out


def test_server_certificate_is_for_no_other_name(host):
    """The certificate names servers of this datacenter only: a caller asking for
    another datacenter's server refuses it."""
    out = rpc_probe(host, "server.elsewhere.consul")
    assert out.startswith("refused SSLCertVerificationError"), out


def test_plain_rpc_refused(host):
    """Plain RPC (RPCConsul, 0x00, no TLS first) is closed by the server at once."""
    server = server_facts()["bind_address"]
    probe = ("import socket, sys; s = socket.create_connection((sys.argv[1], 8300), 10); s.settimeout(10); "
             "s.sendall(b'\\x00'); print(repr(s.recv(1)))")
    assert host.check_output("python3 -c %s %s", probe, server) == "b''"


def test_client_agents_hold_a_certificate_from_the_servers(host):
    """Client agents carry no key or certificate on disk: they get one from the servers
    at start (auto_encrypt). Servers keep their key readable by the agent's group only."""
    tls = host.file("/etc/consul.d/tls")
    assert tls.mode == 0o750
    assert host.file("/etc/consul.d/tls/ca.pem").exists
    key = host.file("/etc/consul.d/tls/server-key.pem")
    if host.backend.hostname in SERVERS:
        assert key.mode == 0o640 and key.uid == 0
        assert not host.file("/etc/consul-ca/ca-key.pem").mode & 0o077
    else:
        assert not key.exists and not host.file("/etc/consul-ca").exists


def test_kv_write_without_token_denied(host):
    """Default deny: an anonymous KV write is refused with 403."""
    assert http(host, "PUT", f"/v1/kv/{PREFIX}verify/anonymous", body="x").status == 403


def test_anonymous_cannot_list_members(host):
    """Default deny: without a token the catalog shows no nodes."""
    resp = http(host, "GET", "/v1/catalog/nodes")
    assert resp.status == 200 and resp.json() == []


def test_producer_writes_under_prefix(host, tokens):
    """The producer's token may write KV under the app prefix."""
    key = f"{PREFIX}cache/verify-{host.backend.hostname}"
    resp = http(host, "PUT", f"/v1/kv/{key}", tokens["producer"], body="ok")
    assert (resp.status, resp.text.strip()) == (200, "true")
    assert http(host, "GET", f"/v1/kv/{key}?raw", tokens["producer"]).text == "ok"
    http(host, "DELETE", f"/v1/kv/{key}", tokens["producer"])


def test_producer_denied_outside_prefix(host, tokens):
    """The producer's token may not write KV outside the app prefix."""
    assert http(host, "PUT", "/v1/kv/other/verify", tokens["producer"], body="x").status == 403


def test_consumer_reads_health(host, tokens):
    """The consumer's token may read the producers' health."""
    resp = http(host, "GET", "/v1/health/service/weather-producer", tokens["consumer"])
    assert resp.status == 200 and isinstance(resp.json(), list)


def test_consumer_cannot_write_kv(host, tokens):
    """The consumer's token may not write KV, not even under the app prefix."""
    assert http(host, "PUT", f"/v1/kv/{PREFIX}verify/consumer", tokens["consumer"], body="x").status == 403


def test_consumer_cannot_register_service(host, tokens):
    """The consumer's token may not register a producer."""
    body = json.dumps({"Name": "weather-producer", "ID": "weather-producer-intruder", "Port": 8000})
    assert http(host, "PUT", "/v1/agent/service/register", tokens["consumer"], body=body).status == 403


def test_seeded_values_present(host, tokens, inventory_vars):
    """The inventory's settings are in KV under the prefix, readable with the consumer's token."""
    for key, value in inventory_vars["consul_kv_seed"].items():
        resp = http(host, "GET", f"/v1/kv/{PREFIX}{key}?raw", tokens["consumer"])
        assert (resp.status, resp.text) == (200, value if isinstance(value, str) else json.dumps(value))


def test_http_api_not_on_lan(host, bridge_gateway):
    """Port 8500 listens on loopback and the Docker bridge gateway only, never on the LAN or 0.0.0.0."""
    listeners = host.check_output("ss -Hltn 'sport = :8500' | awk '{print $4}'").split()
    assert sorted(addr.rsplit(":", 1)[0] for addr in listeners) == sorted(["127.0.0.1", bridge_gateway])
    lan = json.loads(host.file("/etc/ansible/facts.d/consul_kv.fact").content_string)["bind_address"]
    refused = host.run(f"python3 -c 'import socket; socket.create_connection((\"{lan}\", 8500), 5)'")
    assert refused.rc != 0 and "Connection refused" in refused.stderr


def test_http_api_reachable_from_containers(host):
    """A container on the node's default bridge reaches the agent through `host-gateway`."""
    host.run_test(
        "docker image inspect lab/busybox:latest >/dev/null 2>&1 || "
        "tar -C /opt/lab/busybox-rootfs -c . | docker import - lab/busybox:latest"
    )
    leader = host.check_output(
        "docker run --rm --add-host consul-agent:host-gateway lab/busybox:latest "
        "wget -qO- http://consul-agent:8500/v1/status/leader"
    )
    assert leader.endswith(':8300"')


def test_ui_only_on_servers(host):
    """The web UI is served by the server and not by client agents."""
    status = http(host, "GET", "/ui/").status
    assert (status == 200) is (host.backend.hostname in SERVERS)


def test_local_facts_published(host, bridge_gateway):
    """Other roles find the agent's container-facing address in local facts, and no secret."""
    raw = host.file("/etc/ansible/facts.d/consul_kv.fact").content_string
    facts = json.loads(raw)
    assert facts["http_addr"] == f"http://{bridge_gateway}:8500"
    assert facts["server"] is (host.backend.hostname in SERVERS)
    assert facts["kv_prefix"] == PREFIX
    assert "token" not in raw.lower()


def test_service_from_pi_healthy_on_manager(tokens):
    """A producer registered through the Pi's agent, TTL check passed, is seen healthy from the manager."""
    pi, manager = node("pi1"), node("manager")
    service_id = "weather-producer-verify"
    registration = {
        "Name": "weather-producer",
        "ID": service_id,
        "Port": 8000,
        "Check": {"CheckID": f"{service_id}-ttl", "TTL": "60s", "DeregisterCriticalServiceAfter": "5m"},
    }
    resp = http(pi, "PUT", "/v1/agent/service/register", tokens["producer"], body=json.dumps(registration))
    assert resp.status == 200, resp.text
    try:
        assert http(pi, "PUT", f"/v1/agent/check/pass/{service_id}-ttl", tokens["producer"]).status == 200
        seen = []
        for _ in range(30):
            seen = http(manager, "GET", "/v1/health/service/weather-producer?passing", tokens["consumer"]).json()
            if any(entry["Service"]["ID"] == service_id for entry in seen):
                break
            time.sleep(2)
        entry = next(entry for entry in seen if entry["Service"]["ID"] == service_id)
        assert entry["Node"]["Node"] == "pi1"
        assert all(check["Status"] == "passing" for check in entry["Checks"])
    finally:
        http(pi, "PUT", f"/v1/agent/service/deregister/{service_id}", tokens["producer"])


def test_snapshot_timer_and_restore_drill(tokens):
    """Nothing lost: the timer's service saves a snapshot; the server's data directory
    is wiped (a dead SD card: a new node ID too); `consul-snapshot restore` brings back
    what only the snapshot held: a KV key, an ACL token, a catalog entry no agent owns.
    Runs last: it restarts the server."""
    manager = node("manager")
    assert manager.service("consul-snapshot.timer").is_enabled
    assert manager.service("consul-snapshot.timer").is_running
    marker, secret = f"drill-{time.time_ns()}", str(uuid.uuid4())
    manage = tokens["management"]
    assert http(manager, "PUT", f"/v1/kv/{PREFIX}drill/marker", manage, body=marker).status == 200
    token = {"SecretID": secret, "Description": "restore drill", "Policies": [{"Name": "weather-consumer"}]}
    assert http(manager, "PUT", "/v1/acl/token", manage, body=json.dumps(token)).status == 200
    external = {"Node": "drill-external", "Address": "192.0.2.10",
                "Service": {"ID": "drill", "Service": "drill", "Port": 80}}
    assert http(manager, "PUT", "/v1/catalog/register", manage, body=json.dumps(external)).status == 200
    old_id = manager.file("/var/lib/consul/node-id").content_string.strip()
    before = set(manager.file("/var/backups/consul").listdir())
    manager.run_test("systemctl start consul-snapshot.service")
    saved = sorted(set(manager.file("/var/backups/consul").listdir()) - before)
    assert len(saved) == 1 and saved[0].startswith("consul-") and saved[0].endswith(".snap"), saved

    manager.run_test("docker stop consul && find /var/lib/consul -mindepth 1 -delete && docker start consul")
    leader = wait_until(lambda: http(manager, "GET", "/v1/status/leader").json(), "a leader after the wipe")
    # A new, empty cluster (once its ACLs are up: the management token from the config).
    wait_until(lambda: http(manager, "GET", f"/v1/kv/{PREFIX}drill/marker", manage).status == 404,
               "the wiped server to answer with the management token")
    assert http(manager, "GET", "/v1/acl/token/self", secret).status == 403
    new_id = manager.file("/var/lib/consul/node-id").content_string.strip()
    assert new_id != old_id

    manager.run_test(f"/usr/local/sbin/consul-snapshot restore /var/backups/consul/{saved[0]}")
    try:
        assert http(manager, "GET", f"/v1/kv/{PREFIX}drill/marker?raw", manage).text == marker
        assert http(manager, "GET", "/v1/acl/token/self", secret).status == 200
        assert http(manager, "GET", "/v1/catalog/node/drill-external", manage).json()["Services"]["drill"]
        assert http(manager, "GET", f"/v1/kv/{PREFIX}verify/after-restore", tokens["producer"]).status == 404
        # The server registers again under its new ID; the Pi's agent is a member again.
        wait_until(lambda: http(manager, "GET", "/v1/catalog/node/manager", manage).json()["Node"]["ID"] == new_id,
                   "the server in the catalog under its new node ID")
        wait_until(lambda: {m["Name"]: m["Status"] for m in
                            http(manager, "GET", "/v1/agent/members", manage).json()}.get("pi1") == 1, "pi1 alive")
        assert leader
    finally:
        http(manager, "DELETE", f"/v1/kv/{PREFIX}drill/marker", manage)
        http(manager, "PUT", "/v1/catalog/deregister", manage, body=json.dumps({"Node": "drill-external"}))
        mine = http(manager, "GET", "/v1/acl/token/self", secret)
        if mine.status == 200:
            http(manager, "DELETE", f"/v1/acl/token/{mine.json()['AccessorID']}", manage)


def wait_until(predicate, what, timeout=120):
    """Poll predicate() every 2 s until truthy (an exception counts as not yet)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (AssertionError, ValueError, KeyError, TypeError) as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")
