"""The lab's stand-ins behave like the Docker Hub images whose names they are served
under (lab/images/consul, registry, python): entry point, user, paths. A role that
would fail with the real image must fail in the lab too.

Runs with the apps' tests (apps/pytest.ini lists this directory) on the images
lab/build-images.sh already built (amd64); skips when they are missing. Seconds each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

CONSUL = "weather-lab/consul:1.8.7-amd64"
REGISTRY = "weather-lab/registry:2.8.3-amd64"
PYTHON = "weather-lab/python:3.13-slim-trixie-amd64"


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: rc {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


def image_config(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


def need(image: str) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon answers (scripts/setup-host.sh starts one)")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.skip(f"{image} is not built: run `bash lab/build-images.sh seed amd64`")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("preparing host directories owned by other uids needs root")


@pytest.fixture
def container():
    """Names of containers to remove at the end of the test."""
    names: list[str] = []

    def new() -> str:
        names.append(f"standin-test-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield new
    for name in names:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def wait_for(what: str, probe, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        ok, last = probe()
        if ok:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout} s; last: {last[-800:]}")


# --- hashicorp/consul:1.8.7 ---------------------------------------------------------


# The host's `consul` system account that roles/consul_kv creates (a system id, below 1000).
ROLE_UID = ROLE_GID = 999


@pytest.fixture
def consul_dirs(tmp_path):
    """Host directories as roles/consul_kv prepares them: config root:consul 0750 (file
    0640), data consul:consul 0750; a single-server configuration without ACLs."""
    need_root()
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    (config / "consul.hcl").write_text(
        'data_dir = "/consul/data"\nserver = true\nbootstrap_expect = 1\n'
        'bind_addr = "127.0.0.1"\nclient_addr = "127.0.0.1"\ndisable_update_check = true\n'
    )
    os.chown(config, 0, ROLE_GID)
    os.chown(config / "consul.hcl", 0, ROLE_GID)
    os.chmod(config, 0o750)
    os.chmod(config / "consul.hcl", 0o640)
    os.chown(data, ROLE_UID, ROLE_GID)
    os.chmod(data, 0o750)
    return [f"{config}:/consul/config:ro", f"{data}:/consul/data"]


def test_consul_image_like_docker_hub():
    """Root, docker-entrypoint.sh under dumb-init, CMD agent -dev, /bin/consul, consul = 100:1000."""
    need(CONSUL)
    cfg = image_config(CONSUL)
    assert cfg["User"] == ""
    assert cfg["Entrypoint"] == ["docker-entrypoint.sh"]
    assert cfg["Cmd"] == ["agent", "-dev", "-client", "0.0.0.0"]
    assert "/consul/data" in cfg["Volumes"]
    out = docker("run", "--rm", "--entrypoint", "sh", CONSUL, "-c",
                 "head -n1 /usr/local/bin/docker-entrypoint.sh; id consul; /bin/consul version").stdout
    assert out.splitlines()[0] == "#!/usr/bin/dumb-init /bin/sh"
    assert "uid=100(consul) gid=1000(consul)" in out
    assert "Consul v1.8.7" in out


def test_consul_default_runs_agent_as_consul_under_dumb_init(container):
    """`docker run hashicorp/consul:1.8.7`: dumb-init is PID 1, the agent runs as consul
    with -data-dir and -config-dir added by the entry point."""
    need(CONSUL)
    name = container()
    docker("run", "-d", "--name", name, "--network", "none", CONSUL)

    def processes() -> dict[str, tuple[str, str]]:
        """First word of the command (basename) -> (uid, command line)."""
        top = docker("top", name, "-eo", "pid,uid,args", check=False).stdout
        lines = [line.split(None, 2) for line in top.splitlines()[1:]]
        return {args.split()[0].rsplit("/", 1)[-1]: (uid, args) for _, uid, args in lines}

    def probe():
        procs = processes()
        return "consul" in procs, repr(procs)

    wait_for("the dev agent (after su-exec)", probe, timeout=20)
    procs = processes()
    assert procs["dumb-init"][0] == "0"
    uid, args = procs["consul"]
    assert uid == "100"
    assert args.startswith("consul agent -data-dir=/consul/data -config-dir=/consul/config -dev")


def test_consul_old_role_way_fails_like_docker_hub(consul_dirs):
    """The role's old way, a non-root user through the image's entry point with a
    read-only config mount, fails: the entry point's chown of /consul/config stops it
    (set -e), as with HashiCorp's image."""
    need(CONSUL)
    volumes = sum((["-v", v] for v in consul_dirs), [])
    proc = docker("run", "--rm", "--user", f"{ROLE_UID}:{ROLE_GID}", *volumes, CONSUL, "agent", "-config-dir=/consul/config",
                  check=False, timeout=30)
    assert proc.returncode != 0
    assert "chown" in proc.stderr and ("Read-only file system" in proc.stderr or "not permitted" in proc.stderr)


def test_consul_role_way_runs(consul_dirs, container):
    """The role's way (entrypoint /bin/consul, the host's system account, read-only config
    and root, no capabilities) starts a server that elects itself leader."""
    need(CONSUL)
    name = container()
    volumes = sum((["-v", v] for v in consul_dirs), [])
    docker("run", "-d", "--name", name, "--network", "none", "--user", f"{ROLE_UID}:{ROLE_GID}",
           "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "/bin/consul",
           *volumes, CONSUL, "agent", "-config-dir=/consul/config")

    def probe():
        proc = docker("exec", name, "/bin/consul", "operator", "raft", "list-peers", check=False)
        return "leader" in proc.stdout, proc.stdout + proc.stderr

    wait_for("a raft leader", probe, timeout=30)
    assert docker("exec", name, "id", "-u").stdout.strip() == str(ROLE_UID)


# --- registry:2.8.3 -----------------------------------------------------------------


def test_registry_image_like_docker_hub():
    """Root, /entrypoint.sh, CMD the config path, VOLUME and port as Docker Hub's; Alpine-
    like tools: busybox sh and wget, no python3."""
    need(REGISTRY)
    cfg = image_config(REGISTRY)
    assert cfg["User"] == ""
    assert cfg["Entrypoint"] == ["/entrypoint.sh"]
    assert cfg["Cmd"] == ["/etc/docker/registry/config.yml"]
    assert "/var/lib/registry" in cfg["Volumes"]
    assert "5000/tcp" in cfg["ExposedPorts"]
    out = docker("run", "--rm", "--entrypoint", "/bin/sh", REGISTRY, "-c",
                 "command -v wget; command -v python3 || echo no-python; /bin/registry --version").stdout
    assert "no-python" in out
    assert "2.8.3" in out


def test_registry_entrypoint_dispatch():
    """/entrypoint.sh sends options to the registry and runs anything else as given."""
    need(REGISTRY)
    assert "2.8.3" in docker("run", "--rm", REGISTRY, "--version").stdout
    assert docker("run", "--rm", REGISTRY, "sh", "-c", "echo as-given").stdout.strip() == "as-given"


# The host's `private-registry` system account that roles/private_registry creates (a
# system id, below 1000).
REGISTRY_UID = REGISTRY_GID = 998


def test_registry_role_way_runs(tmp_path, container):
    """The private_registry role's way: entrypoint /bin/registry, `serve <config>`, the
    host's system account, read-only, no capabilities, data owned by it; the API answers,
    an upload lands in the data directory (no tmpfs needed), the healthcheck's wget works."""
    need(REGISTRY)
    need_root()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, REGISTRY_UID, REGISTRY_GID)
    name = container()
    docker("run", "-d", "--name", name, "--network", "none", "--user", f"{REGISTRY_UID}:{REGISTRY_GID}",
           "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "/bin/registry",
           "-v", f"{data}:/var/lib/registry", REGISTRY, "serve", "/etc/docker/registry/config.yml")

    def probe():
        proc = docker("exec", name, "wget", "-q", "-O", "-", "http://127.0.0.1:5000/v2/", check=False)
        return proc.returncode == 0, proc.stdout + proc.stderr

    assert wait_for("the registry's /v2/", probe, timeout=20).strip() == "{}"
    # Starting an upload writes into the storage (repositories/<name>/_uploads/).
    docker("exec", name, "wget", "-q", "-O", "/dev/null", "--post-data", "",
           "http://127.0.0.1:5000/v2/lab/probe/blobs/uploads/")
    uploads = list(data.glob("docker/registry/v2/repositories/lab/probe/_uploads/*"))
    assert uploads
    assert all(p.stat().st_uid == REGISTRY_UID for p in uploads)


# --- python:3.13-slim-trixie --------------------------------------------------------


def test_python_layout_like_docker_hub():
    """Python under /usr/local (prefix, stdlib, links), no Debian python3, no
    EXTERNALLY-MANAGED; root, PATH with /usr/local/bin first, LANG, CMD python3."""
    need(PYTHON)
    cfg = image_config(PYTHON)
    assert cfg["User"] == ""
    assert cfg["Cmd"] == ["python3"]
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["PATH"].split(":")[0] == "/usr/local/bin"
    assert env["LANG"] == "C.UTF-8"
    script = (
        "import sys, sysconfig, os, shutil; "
        "print(sys.prefix, sys.base_prefix, sysconfig.get_path('stdlib'), os.path.realpath(sys.executable), "
        "shutil.which('python3'), os.path.realpath('/usr/local/bin/python'), "
        "os.path.exists('/usr/bin/python3'), "
        "os.path.exists(sysconfig.get_path('stdlib') + '/EXTERNALLY-MANAGED'))"
    )
    out = docker("run", "--rm", PYTHON, "python3", "-c", script).stdout.split()
    assert out == ["/usr/local", "/usr/local", "/usr/local/lib/python3.13", "/usr/local/bin/python3.13",
                   "/usr/local/bin/python3", "/usr/local/bin/python3.13", "False", "False"]
    assert docker("run", "--rm", PYTHON, "dpkg", "-s", "python3", check=False).returncode != 0
