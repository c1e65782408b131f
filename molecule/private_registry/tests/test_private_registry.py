"""Verify the private_registry role: a TLS + htpasswd registry on the manager (amd64),
and a pull-only one on the same image data, trusted by every node, used by an
(emulated) arm64 Pi."""

import json
import os
import time

import pytest
import testinfra

MANAGER = "manager"
WORKER = "pi1"
REGISTRY = "manager:5443"
CONTAINER = "private-registry"
PULL_REGISTRY = "manager:5444"  # private_registry_pull_port
PULL_CONTAINER = "private-registry-pull"
CONTAINERS = [CONTAINER, PULL_CONTAINER]
PULL_HTPASSWD = "/etc/private-registry/auth-pull/htpasswd"
PULL_CONFIG = "/etc/private-registry/config-pull.yml"
CA = "/etc/private-registry/ca/ca.crt"
CA_KEY = "/etc/private-registry/ca/ca.key"
SERVER_CERT = "/etc/private-registry/tls/server.crt"
SERVER_KEY = "/etc/private-registry/tls/server.key"
HTPASSWD = "/etc/private-registry/auth/htpasswd"
CONFIG = "/etc/private-registry/config.yml"
CONFIG_DIR = "/etc/private-registry"
DATA_DIR = "/var/lib/private-registry"
# The files that must stay secret: keys, the password hash, the configuration.
SECRETS = [CA_KEY, SERVER_KEY, HTPASSWD, CONFIG, PULL_HTPASSWD, PULL_CONFIG]
ACCOUNT = "private-registry"  # private_registry_user / private_registry_group
# The first ids Debian and Raspberry Pi OS give to people (adduser's FIRST_UID/FIRST_GID).
FIRST_HUMAN_ID = 1000
CERTS_D_CA = f"/etc/docker/certs.d/{REGISTRY}/ca.crt"
PULL_CERTS_D_CA = f"/etc/docker/certs.d/{PULL_REGISTRY}/ca.crt"
SOURCE = "busybox:1.37.0"  # served by the lab mirror (manifest list amd64 + arm64)
PUSHED = f"{REGISTRY}/lab/busybox:test"
PULLED = f"{PULL_REGISTRY}/lab/busybox:test"  # the same tag through the pull-only registry

# A tiny HTTP client on the node (the nodes have python3, not curl): prints the
# status code and the start of the body, or the error.
HTTP_PROBE = """
import ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None
try:
    r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10)
    print(r.status, r.read(200).decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read(200).decode(errors="replace"))
"""

# The same with a method and basic auth: the password comes on stdin (never on a
# command line), the user and an optional body file as arguments.
AUTH_PROBE = """
import base64, ssl, sys, urllib.error, urllib.request
method, url, cafile, user = sys.argv[1:5]
body = open(sys.argv[5], "rb").read() if len(sys.argv) > 5 else None
token = base64.b64encode(f"{user}:{sys.stdin.read()}".encode()).decode()
headers = {"Authorization": f"Basic {token}", "Content-Type": "application/vnd.docker.distribution.manifest.v2+json",
           "Accept": "application/vnd.docker.distribution.manifest.v2+json"}
request = urllib.request.Request(url, data=body, method=method, headers=headers)
try:
    r = urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cafile), timeout=10)
    sys.stdout.write(f"{r.status} ")
    sys.stdout.flush()
    sys.stdout.buffer.write(r.read())
except urllib.error.HTTPError as e:
    print(e.code, e.read(200).decode(errors="replace"))
"""


def _node(name):
    """A node as the verifier reaches it: SSH as the admin user, commands with sudo."""
    return testinfra.get_host(
        f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}", sudo=True
    )


@pytest.fixture(scope="module")
def manager():
    return _node(MANAGER)


@pytest.fixture(scope="module")
def worker():
    return _node(WORKER)


@pytest.fixture(scope="module")
def account(manager):
    """The registry's account as the manager's passwd and group databases know it."""
    user = manager.user(ACCOUNT)
    assert user.exists
    return {"uid": user.uid, "gid": manager.group(ACCOUNT).gid, "user": user}


@pytest.fixture(scope="module", params=CONTAINERS)
def registry(request):
    """Each registry container: the one the images tier pushes to, the pull-only one."""
    return request.param


@pytest.fixture
def registry_process(manager, registry):
    """/proc/<pid>/status of the registry's main process, as fields."""
    pid = manager.check_output(f"docker inspect -f '{{{{.State.Pid}}}}' {registry}")
    status = manager.file(f"/proc/{pid}/status").content_string
    return dict(line.split(":", 1) for line in status.splitlines())


@pytest.fixture(scope="module")
def credentials(manager):
    """The registry user (the role's default unless the inventory sets one) and password
    (templated: production's group_vars name the vault_* value the lab's secrets hold)."""
    user = manager.ansible.get_variables().get("private_registry_username", "weather")
    password = manager.ansible("debug", "var=private_registry_password", check=False)
    return user, password["private_registry_password"]


@pytest.fixture(scope="module")
def pull_credentials(manager):
    """The pull-only registry's user and password (the inventory's vaulted value)."""
    user = manager.ansible.get_variables().get("private_registry_pull_username", "weather-pull")
    password = manager.ansible("debug", "var=private_registry_pull_password", check=False)
    return user, password["private_registry_pull_password"]


def _login(node, credentials, registry=REGISTRY):
    user, password = credentials
    node.run_test(f"printf '%s' '{password}' | docker login -u {user} --password-stdin {registry}")


def _call(node, method, url, credentials, body=None):
    """An authenticated API call from the node: (status, body)."""
    user, password = credentials
    registry = url.split("/")[2]
    args = f"{method} {url} /etc/docker/certs.d/{registry}/ca.crt {user}" + (f" {body}" if body else "")
    out = node.check_output(f"printf '%s' '{password}' | python3 -c '{AUTH_PROBE}' {args}")
    status, _, text = out.partition(" ")
    return int(status), text


def _probe(node, url, cafile=None):
    args = f" {cafile}" if cafile else ""
    return node.check_output(f"python3 -c '{HTTP_PROBE}' {url}{args}")


def _repo_digest(node, image):
    digests = json.loads(node.check_output(f"docker image inspect -f '{{{{json .RepoDigests}}}}' {image}"))
    return [d for d in digests if d.startswith(f"{REGISTRY}/lab/busybox@")]


def _forget_image(node, image):
    """Remove the image and every tag of it, so a pull must fetch its layers again."""
    node.run(f"docker image rm -f $(docker image inspect -f '{{{{.Id}}}}' {image} 2>/dev/null) 2>/dev/null")


def _wait_until_answering(node):
    for _ in range(60):
        if _probe(node, f"https://{REGISTRY}/v2/", CERTS_D_CA).startswith("401"):
            return
        time.sleep(2)
    pytest.fail("the registry did not answer again")


@pytest.fixture(scope="module")
def pushed(manager, credentials):
    """The manager logs in, tags the arm64 busybox as <registry>/lab/busybox:test and pushes it."""
    _login(manager, credentials)
    manager.run_test(f"docker pull -q --platform linux/arm64 {SOURCE}")
    manager.run_test(f"docker tag {SOURCE} {PUSHED}")
    manager.run_test(f"docker push {PUSHED}")
    digests = _repo_digest(manager, PUSHED)
    assert len(digests) == 1
    return digests[0]


@pytest.mark.parametrize("path", [CERTS_D_CA, PULL_CERTS_D_CA])
def test_ca_installed_on_every_node(host, manager, path):
    """Every node trusts the registry's CA at /etc/docker/certs.d/<host:port>/ca.crt, for
    the push and the pull-only address."""
    installed = host.file(path)
    assert installed.is_file
    assert installed.user == "root"
    assert installed.mode == 0o644
    assert installed.content_string == manager.file(CA).content_string


def test_ca_key_stays_on_the_manager(host):
    """The CA key exists on the manager only, readable by root only."""
    key = host.file(CA_KEY)
    if host.backend.hostname == MANAGER:
        assert key.is_file
        assert key.user == "root"
        assert key.mode == 0o600
    else:
        assert not host.file("/etc/private-registry").exists


def test_server_cert_verifies_against_ca(manager):
    """The registry's certificate is signed by the CA."""
    out = manager.check_output(f"openssl verify -CAfile {CA} {SERVER_CERT}")
    assert out == f"{SERVER_CERT}: OK"


def test_server_cert_names(manager):
    """The certificate names the manager by hostname and by its IP address."""
    ip = manager.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"]["ansible_default_ipv4"]["address"]
    out = manager.check_output(f"openssl x509 -in {SERVER_CERT} -noout -ext subjectAltName")
    names = [n.strip() for n in out.splitlines()[1].split(",")]
    assert sorted(names) == sorted([f"DNS:{MANAGER}", f"IP Address:{ip}"])


def test_server_cert_is_for_servers_only(manager):
    """The certificate is a leaf for TLS servers, not a CA."""
    out = manager.check_output(
        f"openssl x509 -in {SERVER_CERT} -noout -ext basicConstraints,extendedKeyUsage"
    )
    assert "CA:FALSE" in out
    assert "TLS Web Server Authentication" in out


def test_registry_account_is_a_system_account(manager, account):
    """The registry's account is a system account: uid and gid below the human range, no
    home, no login shell, in its own group only, and no one else is in that group."""
    assert 0 < account["uid"] < FIRST_HUMAN_ID
    assert 0 < account["gid"] < FIRST_HUMAN_ID
    assert account["user"].gid == account["gid"]
    assert account["user"].shell == "/usr/sbin/nologin"
    assert account["user"].home == "/nonexistent"
    assert account["user"].groups == [ACCOUNT]
    assert manager.group(ACCOUNT).members == []


def test_registry_container_hardened(manager, account, registry):
    """Each registry runs as the system account, restarts unless stopped, config read-only,
    on the same image data: the pull-only one cannot write it."""
    info = json.loads(manager.check_output(f"docker inspect {registry}"))[0]
    assert info["State"]["Running"]
    assert info["Config"]["User"] == f"{account['uid']}:{account['gid']}"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/etc/docker/registry/config.yml"]["RW"] is False
    assert mounts["/var/lib/registry"]["Source"] == DATA_DIR
    assert mounts["/var/lib/registry"]["RW"] is (registry == CONTAINER)


def test_registry_process_runs_as_the_account(registry_process, account):
    """The registry's process itself (seen from the host) has the account's uid and gid,
    real, effective, saved and filesystem, and no group besides its own."""
    assert registry_process["Uid"].split() == [str(account["uid"])] * 4
    assert registry_process["Gid"].split() == [str(account["gid"])] * 4
    # Docker lists the primary group as the one supplementary group.
    assert registry_process["Groups"].split() == [str(account["gid"])]


def test_registry_has_no_capabilities(manager, registry, registry_process):
    """Every capability is dropped (even from the bounding set) and exec cannot gain any."""
    info = json.loads(manager.check_output(f"docker inspect {registry}"))[0]
    assert info["HostConfig"]["CapDrop"] == ["ALL"]
    assert not info["HostConfig"]["CapAdd"]
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(registry_process[field], 16) == 0, field
    assert registry_process["NoNewPrivs"].strip() == "1"


def test_registry_root_is_read_only(manager):
    """The container's root file system is read-only: writing outside the data directory
    fails, writing is left to the registry's own storage."""
    info = json.loads(manager.check_output(f"docker inspect {CONTAINER}"))[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/probe", "/etc/probe", "/etc/docker/registry/probe"):
        cmd = manager.run(f"docker exec {CONTAINER} touch {path}")
        assert cmd.rc != 0, path
        assert "Read-only file system" in cmd.stderr, path
    manager.run_test(f"docker exec {CONTAINER} sh -c 'touch /var/lib/registry/probe && rm /var/lib/registry/probe'")


def test_registry_healthy(manager, registry):
    """Docker's healthcheck (the registry's own /debug/health) reports healthy."""
    for _ in range(30):
        status = manager.check_output(f"docker inspect -f '{{{{.State.Health.Status}}}}' {registry}")
        if status == "healthy":
            return
        time.sleep(2)
    pytest.fail(f"registry health: {status}")


def test_data_belongs_to_the_registry_account(manager, account, pushed):
    """The image data directory and everything in it (what earlier versions of the role
    left owned by uid 1001, converge.yml's seed, and what the registry wrote since)
    belong to the registry's account; the directory is closed to others."""
    data = manager.file(DATA_DIR)
    assert data.is_directory
    assert (data.uid, data.gid) == (account["uid"], account["gid"])
    assert data.mode == 0o750
    seed = manager.file(f"{DATA_DIR}/upgrade-seed")
    assert seed.exists
    assert (seed.uid, seed.gid) == (account["uid"], account["gid"])
    # The pushed image is stored under the account's ids too.
    assert manager.check_output(f"find {DATA_DIR} -path '*/repositories/lab/busybox*' | head -1")
    foreign = manager.check_output(f"find {DATA_DIR} ! -uid {account['uid']} -o ! -gid {account['gid']}")
    assert foreign == ""


def test_htpasswd_holds_a_bcrypt_hash(manager, credentials, pull_credentials, account):
    """Each registry's htpasswd file has its own user's bcrypt hash only, not the
    password, and only the registry can read it."""
    for path, (user, password) in ((HTPASSWD, credentials), (PULL_HTPASSWD, pull_credentials)):
        htpasswd = manager.file(path)
        assert htpasswd.mode == 0o640
        assert htpasswd.user == "root"
        assert htpasswd.gid == account["gid"]
        assert htpasswd.content_string.startswith(f"{user}:$2b$12$")
        assert len(htpasswd.content_string.splitlines()) == 1, path
        assert password not in htpasswd.content_string


@pytest.mark.parametrize("path", SECRETS)
def test_secret_not_readable_by_people_or_others(manager, path):
    """No secret is readable by others, nor through a group of the human range (gid >=
    1000); its owner is root."""
    secret = manager.file(path)
    assert secret.is_file
    assert secret.user == "root"
    assert secret.mode & 0o007 == 0
    if secret.mode & 0o040:
        assert secret.gid < FIRST_HUMAN_ID


def test_no_file_in_the_configuration_open_to_people(manager):
    """Nothing under the configuration directory belongs to, or is group-readable by,
    an id of the human range (what uid/gid 1001 was)."""
    found = manager.check_output(
        f"find {CONFIG_DIR} -uid +{FIRST_HUMAN_ID - 1} -o -gid +{FIRST_HUMAN_ID - 1} -perm -g=r"
    )
    assert found == ""


@pytest.mark.parametrize("human", ["1000:1000", "1001:1001"])
def test_human_accounts_cannot_read_the_secrets(manager, account, human):
    """The first human accounts of a Debian or Raspberry Pi OS host (uid/gid 1000 and
    1001) cannot read the key, htpasswd or configuration; the registry's account can
    (so the check itself can tell the two apart)."""
    registry = f"{account['uid']}:{account['gid']}"
    for path in SECRETS:
        if path == CA_KEY:
            continue  # root only: not even the registry reads it
        assert _readable_as(manager, registry, path), path
    for path in SECRETS:
        assert not _readable_as(manager, human, path), (human, path)


def _readable_as(node, ids, path):
    """Whether uid:gid (no supplementary groups) can open the file for reading."""
    uid, gid = ids.split(":")
    cmd = node.run(f"setpriv --reuid={uid} --regid={gid} --clear-groups head -c1 {path} >/dev/null")
    return cmd.rc == 0


def test_plain_http_refused(worker):
    """A plain-HTTP client is refused: the registry speaks TLS only."""
    out = _probe(worker, f"http://{REGISTRY}/v2/")
    assert out.startswith("400")
    assert "Client sent an HTTP request to an HTTPS server" in out


def test_anonymous_api_refused(worker):
    """Over TLS (verified against the installed CA), the API without credentials answers 401."""
    out = _probe(worker, f"https://{REGISTRY}/v2/", CERTS_D_CA)
    assert out.startswith("401")


def test_wrong_password_refused(worker, credentials):
    """docker login with a wrong password is refused."""
    user, _ = credentials
    cmd = worker.run(f"printf wrong-password | docker login -u {user} --password-stdin {REGISTRY}")
    assert cmd.rc != 0
    assert "unauthorized" in cmd.stderr.lower()


def test_unauthenticated_push_refused(worker):
    """A node that has not logged in cannot push."""
    worker.run_test(f"docker logout {REGISTRY}")
    worker.run_test(f"docker pull -q {SOURCE}")
    worker.run_test(f"docker tag {SOURCE} {REGISTRY}/lab/busybox:anonymous")
    cmd = worker.run(f"docker push {REGISTRY}/lab/busybox:anonymous")
    assert cmd.rc != 0
    # Docker's wording for a 401 from a registry with basic auth.
    assert "no basic auth credentials" in cmd.stderr or "unauthorized" in cmd.stderr.lower()


def test_push_from_manager_pull_on_pi_same_digest(worker, credentials, pushed):
    """An image pushed from the manager is pulled by the arm64 Pi with the same digest."""
    _login(worker, credentials)
    _forget_image(worker, PUSHED)
    worker.run_test(f"docker pull {PUSHED}")
    assert _repo_digest(worker, PUSHED) == [pushed]


def test_pulled_image_runs_on_pi(worker, credentials, pushed):
    """The image pulled from the registry runs natively on the Pi."""
    _login(worker, credentials)
    worker.run_test(f"docker image inspect {PUSHED} >/dev/null 2>&1 || docker pull -q {PUSHED}")
    assert worker.check_output(f"docker run --rm {PUSHED} uname -m") == "aarch64"


def test_data_survives_registry_restart(manager, worker, credentials, pushed):
    """After the registry container restarts, the pushed image is still there to pull."""
    manager.run_test(f"docker restart {CONTAINER}")
    _wait_until_answering(worker)
    _login(worker, credentials)
    _forget_image(worker, PUSHED)
    worker.run_test(f"docker pull {PUSHED}")
    assert _repo_digest(worker, PUSHED) == [pushed]


def test_local_facts_published(manager):
    """Other roles can read the registry's address and CA path from local facts."""
    facts = json.loads(manager.file("/etc/ansible/facts.d/private_registry.fact").content_string)
    assert facts == {"address": REGISTRY, "ca_cert_path": CA, "username": "weather",
                     "pull_address": PULL_REGISTRY, "pull_username": "weather-pull"}


def test_pull_login_pulls_what_was_pushed(worker, pull_credentials, pushed):
    """The Pi, logged in to the pull-only registry, pulls the tag pushed to the other one
    at once, with the same digest (one image store)."""
    _login(worker, pull_credentials, PULL_REGISTRY)
    _forget_image(worker, PULLED)
    worker.run_test(f"docker pull {PULLED}")
    digests = json.loads(worker.check_output(f"docker image inspect -f '{{{{json .RepoDigests}}}}' {PULLED}"))
    assert f"{PULL_REGISTRY}/lab/busybox@{pushed.partition('@')[2]}" in digests


def test_pull_login_cannot_write(worker, pull_credentials, pushed):
    """With the pull-only login nothing can be written: a manifest put over the tag or a
    blob upload on the pull-only registry is refused (405), the push registry does not
    know the user (401), docker push fails, and the tag still names the pushed image."""
    manifest_url = f"https://{PULL_REGISTRY}/v2/lab/busybox/manifests/test"
    status, manifest = _call(worker, "GET", manifest_url, pull_credentials)
    assert status == 200
    worker.run_test(f"printf '%s' '{manifest}' > /tmp/manifest.json")
    assert _call(worker, "PUT", manifest_url, pull_credentials, "/tmp/manifest.json")[0] == 405
    assert _call(worker, "POST", f"https://{PULL_REGISTRY}/v2/lab/busybox/blobs/uploads/", pull_credentials)[0] == 405
    assert _call(worker, "DELETE", f"https://{PULL_REGISTRY}/v2/lab/busybox/manifests/{pushed.partition('@')[2]}",
                 pull_credentials)[0] == 405
    on_push_registry = f"https://{REGISTRY}/v2/lab/busybox/manifests/test"
    assert _call(worker, "GET", on_push_registry, pull_credentials)[0] == 401
    assert _call(worker, "PUT", on_push_registry, pull_credentials, "/tmp/manifest.json")[0] == 401
    _login(worker, pull_credentials, PULL_REGISTRY)
    worker.run_test(f"docker pull -q {SOURCE} && docker tag {SOURCE} {PULL_REGISTRY}/lab/busybox:overwritten")
    assert worker.run(f"docker push {PULL_REGISTRY}/lab/busybox:overwritten").rc != 0
    assert _call(worker, "GET", f"https://{PULL_REGISTRY}/v2/lab/busybox/manifests/overwritten", pull_credentials)[0] == 404


def test_push_login_opens_nothing_on_the_pull_registry(worker, credentials):
    """The pull-only registry knows its own user only: the push login gets 401 there."""
    assert _call(worker, "GET", f"https://{PULL_REGISTRY}/v2/", credentials)[0] == 401


def test_pull_registry_cannot_write_its_data(manager):
    """The pull-only registry's image data is a read-only mount, and its configuration
    keeps the registry in read-only mode with no upload purging."""
    cmd = manager.run(f"docker exec {PULL_CONTAINER} touch /var/lib/registry/probe")
    assert cmd.rc != 0 and "Read-only file system" in cmd.stderr
    config = manager.file(PULL_CONFIG).content_string
    assert "readonly:\n      enabled: true" in config
    assert "uploadpurging:\n      enabled: false" in config
